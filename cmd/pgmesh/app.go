package main

import (
	"fmt"
	"runtime"

	"github.com/pgmesh/pgmesh/internal/version"
	"github.com/urfave/cli/v2"
)

func newApp() *cli.App {
	return &cli.App{
		Name:                 "pgmesh",
		Usage:                "keep a multi-master PostgreSQL mesh highly available with Consul",
		Version:              version.Version,
		EnableBashCompletion: true,
		Commands: []*cli.Command{
			agentCommand(),
			versionCommand(),
			fenceWatchdogCommand(),
		},
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
