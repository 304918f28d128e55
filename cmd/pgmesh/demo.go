package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/pgmesh/pgmesh/internal/demo"
	"github.com/urfave/cli/v2"
)

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "bring up a local demo mesh (Consul + groups of PostgreSQL with pgmesh agents) until Ctrl-C",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "workdir", Value: "/tmp/pgmesh-demo", Usage: "where data dirs, configs and logs go (wiped at start)"},
			&cli.IntFlag{Name: "groups", Value: 3, Usage: "number of groups (Spock nodes)"},
			&cli.IntFlag{Name: "members", Value: 2, Usage: "members per group (1 primary + standbys)"},
			&cli.StringFlag{Name: "consul-bin", Usage: "Consul binary (default: beside pgmesh, then PATH)"},
			&cli.StringFlag{Name: "os-user", Value: "postgres", Usage: "when run as root, PostgreSQL and the agents run as this user"},
			&cli.IntFlag{Name: "consul-port", Value: 18500, Usage: "Consul HTTP port (the next three ports are Consul's server/serf ports)"},
			&cli.IntFlag{Name: "dns-port", Value: 18600, Usage: "Consul DNS port"},
			&cli.IntFlag{Name: "pg-port", Value: 15432, Usage: "first PostgreSQL port (one per member)"},
			&cli.IntFlag{Name: "api-port", Value: 18008, Usage: "first agent REST API port (one per member)"},
			&cli.IntFlag{Name: "haproxy-port", Value: 15000, Usage: "HAProxy write port; read = +1, stats = +2, per-group listeners from +10"},
		},
		Action: func(c *cli.Context) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			mesh, err := demo.Start(ctx, demo.Options{
				WorkDir: c.String("workdir"), Groups: c.Int("groups"), Members: c.Int("members"),
				ConsulBin: c.String("consul-bin"), OSUser: c.String("os-user"), Out: c.App.Writer,
				ConsulHTTPPort: c.Int("consul-port"), ConsulDNSPort: c.Int("dns-port"), PGBasePort: c.Int("pg-port"), APIBasePort: c.Int("api-port"),
			})
			if err != nil {
				return cli.Exit("demo: "+err.Error(), 1)
			}
			fmt.Fprintf(c.App.Writer, "[+] starting HAProxy fed by `pgmesh render` (local group n1)\n")
			routing, err := startDemoRouting(ctx, c.String("workdir"), mesh.Consul, mesh.Options().Cluster, "n1", c.Int("haproxy-port"))
			if err != nil {
				mesh.Stop()
				return cli.Exit("demo: "+err.Error(), 1)
			}
			defer func() {
				fmt.Fprintln(c.App.Writer, "\nstopping the demo (agents stop PostgreSQL cleanly)…")
				routing.stop()
				mesh.Stop()
				fmt.Fprintln(c.App.Writer, "stopped.")
			}()
			printDemoSummary(c, mesh, routing)
			<-ctx.Done()
			return nil
		},
	}
}

func printDemoSummary(c *cli.Context, mesh *demo.Mesh, r *demoRouting) {
	w := c.App.Writer
	o := mesh.Options()
	fmt.Fprintf(w, "\nThe demo mesh %q is up.\n\n", o.Cluster)
	fmt.Fprintf(w, "HAProxy (rendered by pgmesh render into %s):\n", r.dir)
	fmt.Fprintf(w, "  writes, every group's primary (n1 first):  psql \"host=127.0.0.1 port=%d user=postgres password=demo-superuser\"\n", r.write)
	fmt.Fprintf(w, "  reads, replicas (primaries as fallback):   psql \"host=127.0.0.1 port=%d user=postgres password=demo-superuser\"\n", r.read)
	for i, g := range groupsOf(mesh) {
		fmt.Fprintf(w, "  group %s's primary:                       psql \"host=127.0.0.1 port=%d user=postgres password=demo-superuser\"\n", g, r.groupBase+i)
	}
	fmt.Fprintf(w, "  stats page:                                http://127.0.0.1:%d/\n", r.stats)
	fmt.Fprintf(w, "  libpq services:                            PGSERVICEFILE=%s/pg_service.conf psql \"service=%s-n1 password=demo-superuser\"\n\n", r.dir, o.Cluster)
	fmt.Fprintf(w, "Consul:      http://%s/ui   (export CONSUL_HTTP_ADDR=%s)\n", mesh.Consul, mesh.Consul)
	fmt.Fprintf(w, "PostgreSQL:  user postgres, password demo-superuser\n")
	for _, m := range mesh.Members() {
		fmt.Fprintf(w, "  %-6s %-6s psql \"host=127.0.0.1 port=%d user=postgres password=demo-superuser\"   REST http://127.0.0.1:%d/patroni\n", m.Group, m.Name, m.PGPort, m.APIPort)
	}
	fmt.Fprintf(w, "\nDNS (every writable primary, one group's primary, healthy replicas):\n")
	fmt.Fprintf(w, "  dig @127.0.0.1 -p %d primary.%s.service.consul SRV\n", o.ConsulDNSPort, o.Cluster)
	fmt.Fprintf(w, "  dig @127.0.0.1 -p %d n1-primary.%s.service.consul SRV\n", o.ConsulDNSPort, o.Cluster)
	fmt.Fprintf(w, "  dig @127.0.0.1 -p %d replica.%s.service.consul SRV\n", o.ConsulDNSPort, o.Cluster)
	fmt.Fprintf(w, "\nLogs: %s/<member>/agent.log   Configs: %s/<member>/pgmesh.yml\n", o.WorkDir, o.WorkDir)
	fmt.Fprintf(w, "Try: kill -9 a leader's postmaster and agent, then watch `pgmesh status` fail over.\n\n")
	exe, err := os.Executable()
	if err == nil {
		cmd := exec.Command(exe, "status", "--consul", mesh.Consul, "--cluster", o.Cluster)
		cmd.Stdout, cmd.Stderr = w, os.Stderr
		cmd.Run()
	}
	fmt.Fprintf(w, "\nWatch it live: %s status --consul %s --cluster %s --watch 2\nPress Ctrl-C to stop everything the demo started.\n", exe, mesh.Consul, o.Cluster)
}

func groupsOf(mesh *demo.Mesh) []string {
	var out []string
	seen := map[string]bool{}
	for _, m := range mesh.Members() {
		if !seen[m.Group] {
			seen[m.Group] = true
			out = append(out, m.Group)
		}
	}
	return out
}
