package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

type benchmark struct {
	name, usage string
	run         func(ctx context.Context, env *env, args []string) error
}

var benchmarks = []benchmark{
	{name: "failover", usage: "unplanned failover: kill -9 of the primary host -> first write (direct, via DNS, through HAProxy)", run: runFailover},
	{name: "switchover", usage: "planned switchover: longest gap between writes of clients writing every 10ms (direct, HAProxy)", run: runSwitchover},
	{name: "footprint", usage: "idle agent RSS, CPU and Consul requests/s (counting proxy), per profile", run: runFootprint},
	{name: "scale", usage: "SIMULATED agents: Consul requests/s and renderer latency for 10/50/100 groups", run: runScale},
	{name: "datacenters", usage: "3 Consul datacenters: write availability through <cluster>-write.query.consul (group failover, datacenter loss, a Consul lost)", run: runDatacenters},
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "usage: go run ./bench <benchmark> [flags]   (flags: go run ./bench <benchmark> -h)\n\n")
	for _, b := range benchmarks {
		fmt.Fprintf(w, "  %-11s %s\n", b.name, b.usage)
	}
}

func main() {
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage(os.Stdout)
		return
	}
	name := os.Args[1]
	var b *benchmark
	for i := range benchmarks {
		if benchmarks[i].name == name {
			b = &benchmarks[i]
		}
	}
	if b == nil {
		fmt.Fprintf(os.Stderr, "unknown benchmark %q\n\n", name)
		usage(os.Stderr)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		// After the first Ctrl-C the benchmark cleans up; a second one
		// kills it (the next run cleans what is left).
		<-ctx.Done()
		stop()
	}()
	env := &env{name: name}
	defer env.close()
	err := b.run(ctx, env, os.Args[2:])
	switch {
	case errors.Is(err, flag.ErrHelp):
	case err != nil:
		fmt.Fprintf(os.Stderr, "bench %s: %v\n", name, err)
		env.fail()
		env.close()
		os.Exit(1)
	}
}

// env is what every benchmark shares: the repository, binaries, work dir and
// the common flags.
type env struct {
	name string
	// flags
	pgmeshBin, consulBin, workDir string
	portBase                      int
	verbose, keep                 bool
	timeout                       time.Duration

	root     string
	tmpBin   string
	failed   bool
	cleanups []func()
}

// commonFlags registers the flags every benchmark has.
func (e *env) commonFlags(fs *flag.FlagSet, timeout time.Duration) {
	fs.StringVar(&e.pgmeshBin, "pgmesh", "", "pgmesh binary the agents run (default: build ./cmd/pgmesh from this repository)")
	fs.StringVar(&e.consulBin, "consul", "", "Consul binary (default: <repo>/.cache/bin/consul, then PATH)")
	fs.StringVar(&e.workDir, "workdir", "/tmp/pgmesh-bench/"+e.name, "work dir (wiped at start; removed at the end unless -keep or a failure)")
	fs.IntVar(&e.portBase, "port-base", 27000, "loopback ports: Consul HTTP base+500 (+1..3 server/serf), DNS base+600, PostgreSQL base+432.., REST base+8..")
	fs.BoolVar(&e.verbose, "v", false, "show the demo's progress output")
	fs.BoolVar(&e.keep, "keep", false, "keep the work dir (logs, data dirs) after the run")
	fs.DurationVar(&e.timeout, "timeout", timeout, "bound on the whole run; everything is stopped when it passes")
}

// parseProfile is parse for a program that runs one profile: it adds the
// -profile and timing flags (default profile "default") and the common
// flags, parses, and resolves the profile.
func (e *env) parseProfile(ctx context.Context, fs *flag.FlagSet, args []string, timeout time.Duration) (context.Context, profile, error) {
	var pf profileFlags
	pf.register(fs, "default")
	e.commonFlags(fs, timeout)
	ctx, err := e.parse(ctx, fs, args)
	if err != nil {
		return nil, profile{}, err
	}
	p, err := pf.resolve(pf.name)
	return ctx, p, err
}

// parse parses args and returns a context bounded by -timeout.
func (e *env) parse(ctx context.Context, fs *flag.FlagSet, args []string) (context.Context, error) {
	fs.SetOutput(os.Stdout)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	e.cleanups = append(e.cleanups, cancel)
	root, err := repoRoot()
	if err != nil {
		return nil, err
	}
	e.root = root
	if e.consulBin == "" {
		e.consulBin = filepath.Join(root, ".cache", "bin", "consul")
		if _, err := os.Stat(e.consulBin); err != nil {
			e.consulBin = "" // the demo looks in PATH
		}
	}
	if err := os.MkdirAll(filepath.Dir(e.workDir), 0o755); err != nil {
		return nil, err
	}
	os.Chmod(filepath.Dir(e.workDir), 0o755)
	printf("# pgmesh bench %s — %s, %d CPUs, %s/%s, %s\n", e.name, time.Now().UTC().Format(time.RFC3339), runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, cpuModel())
	printf("# command: bench %s %s\n", e.name, strings.Join(args, " "))
	printf("# load average at start: %s (other work on this machine skews the figures)\n", loadAvg())
	return ctx, nil
}

// pgmesh returns the pgmesh binary, building it on first use into a
// directory the PostgreSQL OS user can read.
func (e *env) pgmesh() (string, error) {
	if e.pgmeshBin != "" {
		return e.pgmeshBin, nil
	}
	dir, err := os.MkdirTemp("", "pgmesh-bench-bin-")
	if err != nil {
		return "", err
	}
	os.Chmod(dir, 0o755)
	e.tmpBin = dir
	bin := filepath.Join(dir, "pgmesh")
	printf("# building pgmesh from %s …\n", e.root)
	if out, err := runCmd(e.root, "go", "build", "-o", bin, "./cmd/pgmesh"); err != nil {
		return "", fmt.Errorf("build pgmesh (pass -pgmesh PATH to use a prebuilt binary): %v\n%s", err, out)
	}
	e.pgmeshBin = bin
	return bin, nil
}

// fail marks the run failed: the work dir is kept for the logs.
func (e *env) fail() { e.failed = true }

func (e *env) close() {
	for i := len(e.cleanups) - 1; i >= 0; i-- {
		e.cleanups[i]()
	}
	e.cleanups = nil
	if e.tmpBin != "" {
		os.RemoveAll(e.tmpBin)
		e.tmpBin = ""
	}
	if e.root != "" {
		printf("# load average at end: %s\n", loadAvg())
	}
	if e.workDir != "" && e.root != "" {
		if e.keep || e.failed {
			printf("# work dir kept: %s\n", e.workDir)
		} else {
			os.RemoveAll(e.workDir)
		}
		e.root = ""
	}
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(data), "module github.com/pgmesh/pgmesh\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run the benchmarks from inside the pgmesh repository (go run ./bench …)")
		}
		dir = parent
	}
}

func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func cpuModel() string {
	data, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}
