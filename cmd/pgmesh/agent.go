package main

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"syscall"

	"github.com/pgmesh/pgmesh/agent"
	"github.com/pgmesh/pgmesh/internal/logging"
	"github.com/urfave/cli/v2"
)

func agentCommand() *cli.Command {
	return &cli.Command{
		Name:      "agent",
		Usage:     "run the HA agent beside one PostgreSQL",
		ArgsUsage: "CONFIG.yml",
		Description: "Runs until SIGINT/SIGTERM, then stops PostgreSQL cleanly and, if it led its group,\n" +
			"releases the leader lock so a replica takes over at once. Every setting can be\n" +
			"overridden from the environment: PGMESH_<SECTION>_<KEY>, e.g. PGMESH_POSTGRESQL_PORT.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "agent configuration file", EnvVars: []string{"PGMESH_CONFIG"}},
		},
		Action: func(c *cli.Context) error {
			path := c.String("config")
			if path == "" {
				path = c.Args().First()
			}
			if path == "" {
				return cli.Exit("agent: a configuration file is required (pgmesh agent CONFIG.yml)", 2)
			}
			cfg, err := agent.LoadConfig(path)
			if err != nil {
				return cli.Exit(err.Error(), 2)
			}
			log, err := logging.New(cfg.Log.Format, cfg.Log.Level)
			if err != nil {
				return cli.Exit("config: log: "+err.Error(), 2)
			}
			defer log.Sync()
			a, err := agent.New(cfg, log)
			if err != nil {
				return cli.Exit(err.Error(), 2)
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if err := a.Run(ctx); err != nil {
				if errors.Is(err, agent.ErrRefused) {
					return cli.Exit(err.Error(), 3)
				}
				return cli.Exit(err.Error(), 1)
			}
			return nil
		},
	}
}

func fenceWatchdogCommand() *cli.Command {
	return &cli.Command{
		Name:   "fence-watchdog",
		Usage:  "internal: the fencing watchdog process the agent starts",
		Hidden: true,
		Flags:  []cli.Flag{&cli.StringFlag{Name: "data-dir", Required: true}},
		Action: func(c *cli.Context) error {
			log, err := logging.New("json", "info")
			if err != nil {
				return err
			}
			// The agent's Ctrl-C reaches the whole terminal's process group;
			// the watchdog outlives it on purpose and ends when its stdin does.
			signal.Ignore(os.Interrupt, syscall.SIGTERM)
			return agent.RunFenceWatchdog(c.String("data-dir"), os.Stdin, log.Named("watchdog"))
		},
	}
}
