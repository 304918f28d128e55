package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
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
			&cli.IntFlag{Name: "datacenters", Value: 1, Usage: "Consul datacenters dc1..dcN, one Consul server each, WAN-joined on loopback (at most --groups); groups go round-robin (n1 in dc1, n2 in dc2, …) and their agents use their datacenter's Consul; the cluster config lists every datacenter, so status and the prepared queries <cluster>-write/-read span them"},
			&cli.IntFlag{Name: "consul-port", Value: 18500, Usage: "Consul HTTP port (the next three ports are Consul's server/serf ports); with --datacenters N, dcK uses this port + 4(K-1) and the next three (by default dc1 18500-18503, dc2 18504-18507, dc3 18508-18511)"},
			&cli.IntFlag{Name: "dns-port", Value: 18600, Usage: "Consul DNS port; with --datacenters N, dcK answers on this port + K-1 (by default dc1 18600, dc2 18601, dc3 18602)"},
			&cli.IntFlag{Name: "pg-port", Value: 15432, Usage: "first PostgreSQL port (one per member)"},
			&cli.IntFlag{Name: "api-port", Value: 18008, Usage: "first agent REST API port (one per member)"},
			&cli.IntFlag{Name: "haproxy-port", Value: 15000, Usage: "HAProxy write port; read = +1, stats = +2, per-group listeners from +10"},
			&cli.StringFlag{Name: "replication", Usage: "replication between groups: spock, native or none (default: spock when the Spock kit scripts/setup builds is present, else native)"},
			&cli.BoolFlag{Name: "secure", Usage: "REST APIs over HTTPS (a CA made for the demo), basic auth and client certificates for changes, HAProxy and Consul checking over TLS"},
			&cli.StringFlag{Name: "pg-bin-dir", Usage: "PostgreSQL bin directory (default: the Spock kit for --replication spock, else /usr/lib/postgresql/15/bin)"},
		},
		Action: func(c *cli.Context) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			repl, binDir, err := demoReplication(c.String("replication"), c.String("pg-bin-dir"))
			if err != nil {
				return cli.Exit("demo: "+err.Error(), 2)
			}
			if n := c.Int("datacenters"); n < 1 || n > c.Int("groups") {
				return cli.Exit(fmt.Sprintf("demo: --datacenters %d: use 1 to --groups (%d); every datacenter needs a group", n, c.Int("groups")), 2)
			}
			mesh, err := demo.Start(ctx, demo.Options{
				WorkDir: c.String("workdir"), Groups: c.Int("groups"), Members: c.Int("members"),
				ConsulBin: c.String("consul-bin"), OSUser: c.String("os-user"), Out: c.App.Writer,
				ConsulHTTPPort: c.Int("consul-port"), ConsulDNSPort: c.Int("dns-port"), PGBasePort: c.Int("pg-port"), APIBasePort: c.Int("api-port"),
				Replication: repl, BinDir: binDir, Secure: c.Bool("secure"), Datacenters: c.Int("datacenters"),
			})
			if err != nil {
				return cli.Exit("demo: "+err.Error(), 1)
			}
			proof := ""
			if repl != consulkv.ReplicationNone {
				if err := mesh.SetupReplication(ctx); err != nil {
					mesh.Stop()
					return cli.Exit("demo: replication between groups: "+err.Error(), 1)
				}
				if proof, err = mesh.ProveReplication(ctx); err != nil {
					mesh.Stop()
					return cli.Exit("demo: replication between groups: "+err.Error(), 1)
				}
				fmt.Fprintf(c.App.Writer, "[+] waiting until every standby has current copies of its group's logical slots (a switchover is refused before)\n")
				took, err := mesh.WaitSlotCopies(ctx, 150*time.Second)
				if err != nil {
					mesh.Stop()
					return cli.Exit("demo: logical slot copies on the standbys: "+err.Error(), 1)
				}
				fmt.Fprintf(c.App.Writer, "      ready after %s\n", took.Round(100*time.Millisecond))
			}
			if dcs := mesh.DatacenterNames(); len(dcs) > 1 {
				fmt.Fprintf(c.App.Writer, "[+] starting HAProxy fed by `pgmesh render` (local group n1 in dc1; it reads %s)\n", strings.Join(dcs, ", "))
			} else {
				fmt.Fprintf(c.App.Writer, "[+] starting HAProxy fed by `pgmesh render` (local group n1)\n")
			}
			apiCA := ""
			if sec := mesh.Secure(); sec != nil {
				apiCA = sec.CAFile
			}
			routing, err := startDemoRouting(ctx, c.String("workdir"), mesh.Consul, mesh.Options().Cluster, "n1", c.Int("haproxy-port"), apiCA, mesh.DatacenterNames())
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
			printDemoSummary(c, mesh, routing, repl, proof)
			<-ctx.Done()
			return nil
		},
	}
}

// demoReplication resolves --replication and --pg-bin-dir: Spock needs
// the PostgreSQL + Spock kit scripts/setup builds (.cache/pg15spock beside
// the pgmesh binary's .cache/bin).
func demoReplication(repl, binDir string) (string, string, error) {
	kit := ""
	if exe, err := os.Executable(); err == nil {
		cand := filepath.Join(filepath.Dir(exe), "..", "pg15spock", "bin")
		if _, err := os.Stat(filepath.Join(cand, "postgres")); err == nil {
			kit = cand
		}
	}
	switch repl {
	case "":
		repl = consulkv.ReplicationNative
		if kit != "" || binDir != "" {
			repl = consulkv.ReplicationSpock
		}
	case consulkv.ReplicationSpock, consulkv.ReplicationNative, consulkv.ReplicationNone:
	default:
		return "", "", fmt.Errorf("--replication %q: use spock, native or none", repl)
	}
	if repl == consulkv.ReplicationSpock && binDir == "" {
		if kit == "" {
			return "", "", fmt.Errorf("--replication spock needs a PostgreSQL with Spock: run scripts/setup (it builds the kit when ../shared/spock is there) or pass --pg-bin-dir")
		}
		binDir = kit
	}
	if binDir != "" {
		// The kit lives in a shared cache the checkout links to; PostgreSQL
		// runs as another user who may not traverse the checkout.
		if abs, err := filepath.Abs(binDir); err == nil {
			binDir = abs
		}
		if real, err := filepath.EvalSymlinks(binDir); err == nil {
			binDir = real
		}
	}
	return repl, binDir, nil
}

// routedGroups are the groups HAProxy lists, in name order: the order of
// its per-group listeners (RenderData.GroupPort). The renderer reads every
// datacenter of a --datacenters demo, so that is every group.
func routedGroups(mesh *demo.Mesh) []string {
	out := append([]string(nil), mesh.Groups()...)
	sort.Strings(out)
	return out
}

func printDemoSummary(c *cli.Context, mesh *demo.Mesh, r *demoRouting, repl, proof string) {
	w := c.App.Writer
	o := mesh.Options()
	dcs := mesh.Datacenters()
	multiDC := len(dcs) > 1
	exe, exeErr := os.Executable()
	if exeErr != nil {
		exe = "pgmesh"
	}
	fmt.Fprintf(w, "\nThe demo mesh %q is up.\n\n", o.Cluster)
	if proof != "" {
		groups := mesh.Groups()
		fmt.Fprintf(w, "Multi-master (%s replication between groups): %s.\n", repl, proof)
		fmt.Fprintf(w, "  try it:  psql \"%s\" -c \"INSERT INTO %s(k, v) VALUES ('mine', 'hello')\"\n", mesh.GroupDSN(groups[0]), mesh.ReplicationTable(groups[0]))
		fmt.Fprintf(w, "           psql \"%s\" -c \"SELECT * FROM %s\"\n\n", mesh.GroupDSN(groups[len(groups)-1]), mesh.ReplicationTable(groups[0]))
	} else {
		fmt.Fprintf(w, "No replication between groups (--replication none).\n\n")
	}
	fmt.Fprintf(w, "HAProxy (rendered by pgmesh render into %s):\n", r.dir)
	if multiDC {
		fmt.Fprintf(w, "  (the renderer reads every datacenter: n1 first, then dc1's other groups, then the other datacenters nearest first)\n")
	}
	fmt.Fprintf(w, "  writes, every group's primary (n1 first):  psql \"host=127.0.0.1 port=%d user=postgres password=demo-superuser\"\n", r.write)
	fmt.Fprintf(w, "  reads, replicas (primaries as fallback):   psql \"host=127.0.0.1 port=%d user=postgres password=demo-superuser\"\n", r.read)
	for i, g := range routedGroups(mesh) {
		fmt.Fprintf(w, "  group %s's primary:                       psql \"host=127.0.0.1 port=%d user=postgres password=demo-superuser\"\n", g, r.groupBase+i)
	}
	fmt.Fprintf(w, "  stats page:                                http://127.0.0.1:%d/\n", r.stats)
	fmt.Fprintf(w, "  libpq services:                            PGSERVICEFILE=%s/pg_service.conf psql \"service=%s-n1 password=demo-superuser\"\n\n", r.dir, o.Cluster)
	if multiDC {
		fmt.Fprintf(w, "Consul datacenters (one server each, WAN-joined on loopback; each group's agents use their datacenter's Consul):\n")
		for _, d := range dcs {
			fmt.Fprintf(w, "  %-4s groups %-10s http://%s/ui   DNS %s   pid %d\n", d.Name, strings.Join(d.Groups, ","), d.HTTPAddr(), d.DNSAddr(), mesh.ConsulPIDOf(d))
		}
		fmt.Fprintf(w, "  (export CONSUL_HTTP_ADDR=%s for dc1; Consul's UI switches between datacenters)\n", mesh.Consul)
	} else {
		fmt.Fprintf(w, "Consul:      http://%s/ui   (export CONSUL_HTTP_ADDR=%s)\n", mesh.Consul, mesh.Consul)
	}
	fmt.Fprintf(w, "PostgreSQL:  user postgres, password demo-superuser\n")
	for _, m := range mesh.Members() {
		dc := ""
		if multiDC {
			dc = fmt.Sprintf("%-4s ", m.Datacenter)
		}
		fmt.Fprintf(w, "  %-6s %-6s %spsql \"host=127.0.0.1 port=%d user=postgres password=demo-superuser\"   REST %s/patroni\n", m.Group, m.Name, dc, m.PGPort, mesh.APIURL(m))
	}
	statusEnv := os.Environ()
	if sec := mesh.Secure(); sec != nil {
		fmt.Fprintf(w, "\nREST APIs speak HTTPS (CA %s); changes need the password and a client certificate.\n", sec.CAFile)
		fmt.Fprintf(w, "For switchover, restart, pause… from this shell:\n")
		exports := []string{
			"PGMESH_API_CACERT=" + sec.CAFile, "PGMESH_API_CERT=" + sec.CertFile, "PGMESH_API_KEY=" + sec.KeyFile,
			"PGMESH_RESTAPI_USERNAME=" + sec.Username, "PGMESH_RESTAPI_PASSWORD=$(cat " + sec.PasswordFile + ")",
		}
		for _, e := range exports {
			fmt.Fprintf(w, "  export %s\n", e)
		}
		fmt.Fprintf(w, "  curl --cacert %s %s/patroni\n", sec.CAFile, mesh.APIURL(mesh.Members()[0]))
		statusEnv = append(statusEnv, "PGMESH_API_CACERT="+sec.CAFile)
	}
	if multiDC {
		fmt.Fprintf(w, "\nDNS in dc1 (services are per datacenter: dcX's DNS lists dcX's groups):\n")
	} else {
		fmt.Fprintf(w, "\nDNS (every writable primary, one group's primary, healthy replicas):\n")
	}
	fmt.Fprintf(w, "  dig @127.0.0.1 -p %d primary.%s.service.consul SRV\n", o.ConsulDNSPort, o.Cluster)
	fmt.Fprintf(w, "  dig @127.0.0.1 -p %d n1-primary.%s.service.consul SRV\n", o.ConsulDNSPort, o.Cluster)
	fmt.Fprintf(w, "  dig @127.0.0.1 -p %d replica.%s.service.consul SRV\n", o.ConsulDNSPort, o.Cluster)
	if multiDC {
		printDatacenterSummary(w, mesh, exe, o)
	}
	fmt.Fprintf(w, "\nLogs: %s/<member>/agent.log   Configs: %s/<member>/pgmesh.yml\n", o.WorkDir, o.WorkDir)
	fmt.Fprintf(w, "Try: kill -9 a leader's postmaster and agent, then watch `pgmesh status` fail over.\n\n")
	if exeErr == nil {
		// The demo's agents talk to Consul servers, not to a client agent
		// on their host, so every session is TTL only: say so once here
		// instead of a slow-detection warning per group.
		fmt.Fprintf(w, "The demo's agents talk to Consul servers directly (no Consul client agent per host), so sessions are\n"+
			"TTL only (see each group's failure-detection line); on hosts with a client agent they follow serfHealth (docs/deploy.md).\n\n")
		cmd := exec.Command(exe, "status", "--consul", mesh.Consul, "--cluster", o.Cluster, "--detection-goal", "0")
		cmd.Stdout, cmd.Stderr, cmd.Env = w, os.Stderr, statusEnv
		cmd.Run()
	}
	fmt.Fprintf(w, "\nWatch it live: %s status --consul %s --cluster %s --watch 2\nPress Ctrl-C to stop everything the demo started.\n", exe, mesh.Consul, o.Cluster)
}

// printDatacenterSummary tells how to see a --datacenters demo at work:
// the prepared query asked in every datacenter, and losing one
// datacenter's Consul.
func printDatacenterSummary(w io.Writer, mesh *demo.Mesh, exe string, o demo.Options) {
	dcs := mesh.Datacenters()
	fmt.Fprintf(w, "\nThe nearest writable primary, asked in each datacenter (prepared queries %s-write; %s-read for replicas):\n", o.Cluster, o.Cluster)
	for _, d := range dcs {
		fmt.Fprintf(w, "  dig @127.0.0.1 -p %d %s-write.query.consul SRV   # %s: %s's primary\n", d.DNSPort, o.Cluster, d.Name, strings.Join(d.Groups, "/"))
	}
	fmt.Fprintf(w, "  While a datacenter's group fails over (kill -9 its primary's agent and postmaster), its %s-write answers\n", o.Cluster)
	fmt.Fprintf(w, "  another datacenter's primary, and its own again once the group has a new leader.\n")
	last := dcs[len(dcs)-1]
	var others []string
	for _, d := range dcs[:len(dcs)-1] {
		others = append(others, d.Groups...)
	}
	fmt.Fprintf(w, "\nLose a datacenter: stop %s's Consul server (pid %d). %s keep their leaders and take writes;\n", last.Name, mesh.ConsulPIDOf(last), strings.Join(others, ", "))
	fmt.Fprintf(w, "%s's own primary stays writable while its members confirm each other over REST (failsafe mode);\n", strings.Join(last.Groups, "/"))
	fmt.Fprintf(w, "`pgmesh status` (which reads every datacenter) marks %s unreachable:\n", last.Name)
	fmt.Fprintf(w, "  kill $(cat %s)\n", last.PIDFile)
	fmt.Fprintf(w, "  %s status --consul %s --cluster %s\n", exe, mesh.Consul, o.Cluster)
	fmt.Fprintf(w, "  dig @127.0.0.1 -p %d %s-write.query.consul SRV\n", dcs[0].DNSPort, o.Cluster)
	fmt.Fprintf(w, "Bring it back (it rejoins the WAN pool; Ctrl-C stops it with the rest):\n")
	fmt.Fprintf(w, "  %s agent -config-file %s >>%s 2>&1 &\n", o.ConsulBin, last.Config, last.Log)
}
