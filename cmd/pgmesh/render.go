package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/internal/logging"
	"github.com/pgmesh/pgmesh/routing"
	"github.com/pgmesh/pgmesh/templates"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/urfave/cli/v2"
	"go.uber.org/zap"
)

const renderDescription = `Renders routing configuration from the live mesh and keeps it current: it
watches Consul with blocking queries (the cluster's KV tree and the health of
its service), builds the mesh model (groups, members, roles, health, lag, the
local group) and executes Go text/template templates with it. A changed output
is written next to the destination, checked with the validate command, renamed
into place atomically and followed by the reload command — only when it
changed, and never when validation failed (the last good file stays). Bursts
of changes are debounced (200ms quiet, at most 2s). With haproxy_socket set,
primary changes also go straight to HAProxy's runtime API.

Shipped templates (--list, --show NAME): builtin:haproxy.cfg.tmpl,
builtin:pg_service.conf.tmpl; haproxy.ctmpl is for consul-template.

Configuration file (--config), every key optional unless noted:

  cluster: mesh1                 # required here, with --cluster or PGMESH_CLUSTER
  local_group: n1                # the group this router sits beside
  datacenters: [dc1, dc2, dc3]   # a mesh across Consul datacenters (see below)
  consul: {address: 127.0.0.1:8500, token: "", prefix: pgmesh, datacenter: "",
           ca_file: "", cert_file: "", key_file: "", tls_server_name: ""}
  debounce: 200ms                # quiet period before installing a change
  allow_empty: false             # install even a config with no servers (see below)
  max_delay: 2s                  # longest wait while changes keep coming
  log: {level: info, format: json}
  data:                          # template data (RenderData) for all templates
    bind: ""                     # listen address, "" = all
    socket: /run/haproxy/admin.sock   # stats socket line in haproxy.cfg
    max_lag: 16MB                # replica lag bound (/replica?lag=)
    ports: {write: 5000, read: 5001, stats: 7000, group_base: 5100}
    dbname: postgres
    user: postgres
    sslmode: ""
    connect_timeout: 2
    vars: {log: "stdout format raw local0"}   # free-form, .Vars.<key>
  templates:                     # required (or --template/--dest)
    - template: builtin:haproxy.cfg.tmpl     # or a file path
      destination: /etc/haproxy/haproxy.cfg  # "-" = standard output
      perms: "0644"              # for a new file; an existing one keeps its own
      validate: haproxy -c -f {{file}}       # candidate also in $PGMESH_RENDER_FILE
      reload: systemctl reload haproxy
      haproxy_socket: /run/haproxy/admin.sock
      haproxy_backends: [write, read_primaries, "group_*"]
      data: {ports: {write: 6000}}           # per-template overrides

A mesh read with no member address at all (no token or one that cannot read the
cluster, a wrong --cluster or --prefix, Consul answering nothing) is never
installed: the last good file stays, --once exits 1 and the continuous mode
logs why until the mesh is back. allow_empty / --allow-empty turns that off.

A mesh across Consul datacenters: every datacenter in datacenters (or
--datacenters; default the cluster config's datacenters, else every datacenter
Consul knows when it knows more than one) is read through the local agent
(?dc=). Groups are ordered local group first, then the local datacenter's other
groups, then the other datacenters nearest first by round-trip time (Consul's
WAN coordinates, re-read every 30s; an order changes only for a difference of
20 % and at least 2ms). A datacenter that cannot be read keeps the groups last
read from it (HAProxy checks the agents directly) and is logged as unreachable.

Flags win over the file, the file over the environment (CONSUL_HTTP_ADDR,
CONSUL_HTTP_TOKEN, PGMESH_CLUSTER, PGMESH_LOCAL_GROUP, PGMESH_DATACENTERS). --template/--dest add
one more template to those of the file.`

func renderCommand() *cli.Command {
	return &cli.Command{
		Name:  "render",
		Usage: "render routing templates (HAProxy, pg_service.conf, …) from the live mesh and keep them current",
		UsageText: "pgmesh render --config render.yml [--once]\n" +
			"   pgmesh render --cluster C [--local-group G] --template builtin:haproxy.cfg.tmpl --dest FILE [--validate CMD] [--reload CMD] [--once]\n" +
			"   pgmesh render --list | --show NAME",
		Description: renderDescription,
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "render configuration `FILE` (YAML, see the description)"},
			&cli.BoolFlag{Name: "once", Usage: "render once and exit (exit 1 if any template failed or the mesh read was empty)"},
			&cli.BoolFlag{Name: "allow-empty", Usage: "install outputs even when the mesh read from Consul has no member address (config allow_empty)"},
			&cli.StringFlag{Name: "local-group", Usage: "the `GROUP` this router sits beside (env PGMESH_LOCAL_GROUP)"},
			&cli.StringFlag{Name: "datacenters", Usage: "Consul `DCS` the mesh spans, comma-separated (env PGMESH_DATACENTERS; default: the cluster config's)", EnvVars: []string{"PGMESH_DATACENTERS"}},
			&cli.StringFlag{Name: "template", Aliases: []string{"t"}, Usage: "template: builtin:`NAME` or a file", Category: "Single template"},
			&cli.StringFlag{Name: "dest", Usage: "destination `FILE` (- = stdout)", Category: "Single template"},
			&cli.StringFlag{Name: "validate", Usage: "validate `CMD` ({{file}} = candidate file)", Category: "Single template"},
			&cli.StringFlag{Name: "reload", Usage: "reload `CMD`, run after a changed output was installed", Category: "Single template"},
			&cli.StringFlag{Name: "perms", Usage: "octal `MODE` of a new destination file (default 0644)", Category: "Single template"},
			&cli.StringFlag{Name: "haproxy-socket", Usage: "HAProxy stats socket `PATH` for runtime updates", Category: "Single template"},
			&cli.StringFlag{Name: "bind", Usage: "listen `ADDRESS` for the HAProxy listeners", Category: "Template data"},
			&cli.IntFlag{Name: "write-port", Usage: "write listener `PORT` (default 5000)", Category: "Template data"},
			&cli.IntFlag{Name: "read-port", Usage: "read listener `PORT` (default 5001)", Category: "Template data"},
			&cli.IntFlag{Name: "stats-port", Usage: "stats page `PORT` (default 7000)", Category: "Template data"},
			&cli.IntFlag{Name: "group-base-port", Usage: "first per-group listener `PORT` (default 5100)", Category: "Template data"},
			&cli.StringFlag{Name: "max-lag", Usage: "replica lag bound, bytes or `SIZE` like 16MB", Category: "Template data"},
			&cli.StringFlag{Name: "socket", Usage: "stats socket `PATH` written into haproxy.cfg", Category: "Template data"},
			&cli.StringFlag{Name: "dbname", Usage: "libpq `DBNAME` (default postgres)", Category: "Template data"},
			&cli.StringFlag{Name: "user", Usage: "libpq `USER` (default postgres)", Category: "Template data"},
			&cli.StringSliceFlag{Name: "var", Usage: "template variable `KEY=VALUE` (.Vars.KEY), repeatable", Category: "Template data"},
			&cli.StringFlag{Name: "metrics-listen", Usage: "serve Prometheus metrics (renders, reloads, failures) on `ADDRESS` (host:port) at /metrics", EnvVars: []string{"PGMESH_RENDER_METRICS_LISTEN"}},
			&cli.StringFlag{Name: "log-level", Usage: "debug, info, warn or error (default info)"},
			&cli.StringFlag{Name: "log-format", Usage: "json or console (default json)"},
			&cli.BoolFlag{Name: "list", Usage: "list the shipped templates and exit"},
			&cli.StringFlag{Name: "show", Usage: "print the shipped template `NAME` and exit"},
		}, renderConnFlags()...),
		Action: runRender,
	}
}

// renderConnFlags are the connection flags that concern Consul (the
// renderer never calls the agents' REST API).
func renderConnFlags() []cli.Flag {
	var out []cli.Flag
	for _, f := range connFlags() {
		if n := f.Names()[0]; n != "api-user" && n != "api-password" {
			out = append(out, f)
		}
	}
	return out
}

// pick resolves a setting: a flag (on the command or before it), then the
// file, then the environment/default of the connection settings.
func pick(c *cli.Context, name, fromFile string) string {
	for _, p := range c.Lineage() {
		if p.IsSet(name) {
			return p.String(name)
		}
	}
	if fromFile != "" {
		return fromFile
	}
	return setting(c, name)
}

func runRender(c *cli.Context) error {
	if c.Bool("list") {
		for _, n := range templates.Names() {
			switch {
			case strings.HasSuffix(n, ".ctmpl"):
				fmt.Fprintf(c.App.Writer, "%-30s for consul-template: pgmesh render --show %s > %s\n", n, n, n)
			case strings.HasPrefix(n, "haproxy"):
				fmt.Fprintf(c.App.Writer, "%-30s HAProxy: write, read and per-group listeners\n", routing.BuiltinPrefix+n)
			case strings.HasPrefix(n, "pg_service"):
				fmt.Fprintf(c.App.Writer, "%-30s libpq service file: per group, any-writable, read\n", routing.BuiltinPrefix+n)
			default:
				fmt.Fprintln(c.App.Writer, routing.BuiltinPrefix+n)
			}
		}
		return nil
	}
	if name := c.String("show"); name != "" {
		b, err := templates.FS.ReadFile(strings.TrimPrefix(name, routing.BuiltinPrefix))
		if err != nil {
			return usageErr("render: no shipped template %q (have %s)", name, strings.Join(templates.Names(), ", "))
		}
		c.App.Writer.Write(b)
		return nil
	}
	if c.NArg() > 0 {
		return usageErr("render: unexpected argument %q (the configuration file goes with --config)", c.Args().First())
	}

	cfg := &routing.Config{}
	if path := c.String("config"); path != "" {
		var err error
		if cfg, err = routing.LoadConfig(path); err != nil {
			return usageErr("render: %s: %v", path, err)
		}
	}
	cluster := pick(c, "cluster", cfg.Cluster)
	if cluster == "" {
		return usageErr("render: the cluster is required (--cluster, cluster: in the file, or PGMESH_CLUSTER)")
	}
	if err := consulkv.ValidName("cluster", cluster); err != nil {
		return usageErr("render: --cluster: %v", err)
	}
	local := c.String("local-group")
	if local == "" {
		local = cfg.LocalGroup
	}
	if local == "" {
		local = os.Getenv("PGMESH_LOCAL_GROUP")
	}
	if local != "" {
		if err := consulkv.ValidName("local group", local); err != nil {
			return usageErr("render: --local-group: %v", err)
		}
	}
	datacenters := cfg.Datacenters
	if v := c.String("datacenters"); v != "" {
		var err error
		if datacenters, err = parseDatacenters(v); err != nil {
			return usageErr("render: --datacenters: %v", err)
		}
	}

	entries, err := cfg.Entries()
	if err != nil {
		return usageErr("render: %v", err)
	}
	if t := c.String("template"); t != "" || c.String("dest") != "" {
		ec := routing.EntryConfig{
			Template: t, Destination: c.String("dest"), Validate: c.String("validate"), Reload: c.String("reload"),
			Perms: c.String("perms"), HAProxySocket: c.String("haproxy-socket"),
		}
		e, err := ec.Entry()
		if err != nil {
			return usageErr("render: --template/--dest: %v", err)
		}
		entries = append(entries, e)
	} else if c.IsSet("validate") || c.IsSet("reload") || c.IsSet("perms") || c.IsSet("haproxy-socket") {
		return usageErr("render: --validate, --reload, --perms and --haproxy-socket go with --template and --dest")
	}
	if len(entries) == 0 {
		return usageErr("render: nothing to render: give --config with templates, or --template and --dest")
	}

	data, err := flagData(c)
	if err != nil {
		return err
	}
	data = data.Over(cfg.Data)
	if _, err := data.Resolve(); err != nil {
		return usageErr("render: %v", err)
	}

	level, format := cfg.Log.Level, cfg.Log.Format
	if v := c.String("log-level"); v != "" {
		level = v
	}
	if v := c.String("log-format"); v != "" {
		format = v
	}
	if level == "" {
		level = "info"
	}
	log, err := logging.New(format, level)
	if err != nil {
		return usageErr("render: %v", err)
	}
	defer log.Sync()

	kv, err := consulkv.New(consulkv.Config{
		Address: pick(c, "consul", cfg.Consul.Address), Token: pick(c, "token", cfg.Consul.Token),
		Prefix: pick(c, "prefix", cfg.Consul.Prefix), Datacenter: cfg.Consul.Datacenter,
		CAFile: cfg.Consul.CAFile, CertFile: cfg.Consul.CertFile, KeyFile: cfg.Consul.KeyFile, TLSServerName: cfg.Consul.TLSServerName,
		Cluster: cluster,
	})
	if err != nil {
		return usageErr("render: %v", err)
	}
	debounce, maxDelay := cfg.DebounceDurations()
	var metrics *routing.Metrics
	if addr := c.String("metrics-listen"); addr != "" && !c.Bool("once") {
		reg := prometheus.NewRegistry()
		metrics = routing.NewMetrics(reg)
		srv, err := serveMetrics(addr, reg, log)
		if err != nil {
			return failErr("render: --metrics-listen %s: %v", addr, err)
		}
		defer srv.Close()
	}
	r, err := routing.New(routing.Options{
		Client: kv, Cluster: cluster, LocalGroup: local, Entries: entries, Data: data,
		Debounce: debounce, MaxDelay: maxDelay, Log: log, Stdout: c.App.Writer,
		AllowEmpty: cfg.AllowEmpty || c.Bool("allow-empty"), Metrics: metrics, Datacenters: datacenters,
	})
	if err != nil {
		return usageErr("render: %s", strings.TrimPrefix(err.Error(), "routing: "))
	}

	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	if c.Bool("once") {
		if err := r.RenderOnce(ctx); err != nil {
			if errors.Is(err, consulkv.ErrUnreachable) {
				return failErr("render: cannot read the mesh from Consul at %s: %s", pick(c, "consul", cfg.Consul.Address), rootCause(err))
			}
			return failErr("render: %s", strings.TrimPrefix(err.Error(), "routing: "))
		}
		return nil
	}
	log.Info("rendering", zap.String("cluster", cluster), zap.String("local_group", local), zap.Int("templates", len(entries)))
	return r.Run(ctx)
}

// serveMetrics serves reg's metrics at http://addr/metrics in the
// background; the listen error is returned at once.
func serveMetrics(addr string, reg *prometheus.Registry, log *zap.Logger) (*http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics endpoint stopped", zap.Error(err))
		}
	}()
	log.Info("serving metrics", zap.String("addr", ln.Addr().String()))
	return srv, nil
}

// flagData collects the template data given as flags.
func flagData(c *cli.Context) (routing.DataConfig, error) {
	d := routing.DataConfig{
		Bind: c.String("bind"), Socket: c.String("socket"), MaxLag: c.String("max-lag"),
		DBName: c.String("dbname"), DBUser: c.String("user"),
		Ports: routing.PortConfig{Write: c.Int("write-port"), Read: c.Int("read-port"), Stats: c.Int("stats-port"), GroupBase: c.Int("group-base-port")},
	}
	for _, kv := range c.StringSlice("var") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return d, usageErr("render: --var %q: want KEY=VALUE", kv)
		}
		if d.Vars == nil {
			d.Vars = map[string]string{}
		}
		d.Vars[k] = v
	}
	return d, nil
}
