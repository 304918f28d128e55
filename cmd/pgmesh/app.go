package main

import (
	"fmt"
	"runtime"

	"github.com/pgmesh/pgmesh/internal/version"
	"github.com/urfave/cli/v2"
)

func newApp() *cli.App {
	app := &cli.App{
		Name:                 "pgmesh",
		Usage:                "keep a multi-master PostgreSQL mesh highly available with Consul",
		Version:              version.Version,
		EnableBashCompletion: true,
		// Connection flags are accepted before the command too, as in
		// `pgmesh --cluster prod status`.
		Flags: connFlags(),
		Commands: []*cli.Command{
			agentCommand(),
			statusCommand(),
			switchoverCommand(),
			failoverCommand(),
			pauseCommand(true),
			pauseCommand(false),
			configCommand(),
			historyCommand(),
			restartCommand(),
			reloadCommand(),
			reinitCommand(),
			renderCommand(),
			consulPolicyCommand(),
			demoCommand(),
			completionCommand(),
			versionCommand(),
			fenceWatchdogCommand(),
		},
		// main prints errors and picks the exit code, so every failure has
		// the same "pgmesh: " shape whatever part of cli produced it.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError:   onUsageError,
		CommandNotFound: func(c *cli.Context, name string) {
			fmt.Fprintf(c.App.ErrWriter, "pgmesh: unknown command %q; see pgmesh --help\n", name)
			cli.OsExiter(exitUsage)
		},
	}
	setUsageHandler(app.Commands)
	return app
}

// onUsageError makes flag parsing errors exit 2, apart from operation
// failures (1), as scripts expect of a CLI.
func onUsageError(c *cli.Context, err error, _ bool) error {
	return cli.Exit(err.Error(), exitUsage)
}

func setUsageHandler(cmds []*cli.Command) {
	for _, c := range cmds {
		if c.OnUsageError == nil {
			c.OnUsageError = onUsageError
		}
		setUsageHandler(c.Subcommands)
	}
}

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the pgmesh version",
		Action: func(c *cli.Context) error {
			fmt.Fprintf(c.App.Writer, "pgmesh %s (%s, %s/%s)\n", version.Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return nil
		},
	}
}
