package main

import (
	"context"
	"fmt"
	"github.com/pgmesh/pgmesh/consulkv"
	"io"
	"math"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/pgmesh/pgmesh/internal/demo"
)

var outMu sync.Mutex

// printf writes to stdout (serialised: several goroutines report).
func printf(format string, args ...any) {
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Fprintf(os.Stdout, format, args...)
}

func runCmd(dir, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// profile is a set of HA timings.
type profile struct {
	Name                                   string
	TTL, LoopWait, RetryTimeout, LockDelay time.Duration
	SessionChecks                          []string
}

var profiles = map[string]profile{
	// pgmesh's defaults (consulkv.Default*; session_checks unset:
	// automatic, so serfHealth with a 2.5s lock-delay on -hosts and TTL only
	// against the single dev-mode Consul server).
	"default": {Name: "default", TTL: 20 * time.Second, LoopWait: 2 * time.Second, RetryTimeout: 5 * time.Second, LockDelay: 0},
	// The integration tests' timings: a dead leader's session expires
	// 2-4s after its last renew.
	"fast": {Name: "fast", TTL: 4 * time.Second, LoopWait: time.Second, RetryTimeout: 1500 * time.Millisecond, LockDelay: time.Second, SessionChecks: []string{}},
	// pgmesh's default timings with a TTL-only session (the default before
	// automatic failure detection; what the default still is against a
	// Consul server or a remote agent).
	"ttl-only": {Name: "ttl-only", TTL: 20 * time.Second, LoopWait: 2 * time.Second, RetryTimeout: 5 * time.Second, LockDelay: 0, SessionChecks: []string{}},
	// The session tied to the agent's liveness check: a dead host frees the
	// lock when the check fails (checks run every 1s), whatever the ttl;
	// lock_delay must be >= loop_wait + retry_timeout + 0.5s.
	"checks": {Name: "checks", TTL: 20 * time.Second, LoopWait: time.Second, RetryTimeout: 1500 * time.Millisecond, LockDelay: 3 * time.Second, SessionChecks: []string{"liveness"}},
	// The fastest safe setting with the session tied to the liveness check:
	// loop_wait 0.5s + retry_timeout 1s + 0.5s = lock_delay 2s. A dead host
	// is noticed by the next check (<= 1s, Consul's shortest interval), and
	// the lock is free lock_delay later.
	"checks-fast": {Name: "checks-fast", TTL: 20 * time.Second, LoopWait: 500 * time.Millisecond, RetryTimeout: time.Second, LockDelay: 2 * time.Second, SessionChecks: []string{"liveness"}},
	// The session tied to the node's serfHealth (Consul's own failure
	// detector; only meaningful with -hosts, where every member has its
	// own Consul client agent) on pgmesh's default timings with the
	// lock_delay the rule asked for before the leader keepalive (loop_wait
	// 2s + retry_timeout 5s + 0.5s), kept for comparison with "default".
	"node": {Name: "node", TTL: 20 * time.Second, LoopWait: 2 * time.Second, RetryTimeout: 5 * time.Second, LockDelay: 7500 * time.Millisecond, SessionChecks: []string{"serfHealth"}},
	// The fast profile for hosts: serfHealth with the smallest lock_delay
	// (1s; the leader keepalive renews every 0.2s). Only fast with
	// -fast-gossip: on Consul's default gossip serf alone takes ~5.6s.
	"fast-serf": {Name: "fast-serf", TTL: 20 * time.Second, LoopWait: 2 * time.Second, RetryTimeout: 5 * time.Second, LockDelay: time.Second, SessionChecks: []string{"serfHealth"}},
	// serfHealth (a dead host) plus the liveness check (a dead agent on a
	// live host) on checks-fast's timings.
	"node-fast": {Name: "node-fast", TTL: 20 * time.Second, LoopWait: 500 * time.Millisecond, RetryTimeout: time.Second, LockDelay: 2 * time.Second, SessionChecks: []string{"serfHealth", "liveness"}},
	// Patroni's timings (DESIGN.md §8 measured Patroni with them), run by
	// pgmesh, for a like-for-like comparison: Patroni's defaults (ttl 30,
	// loop_wait 10, retry_timeout 10) and its tuned setting (ttl 10,
	// loop_wait 1, retry_timeout 3).
	"patroni-defaults": {Name: "patroni-defaults", TTL: 30 * time.Second, LoopWait: 10 * time.Second, RetryTimeout: 10 * time.Second, LockDelay: 0, SessionChecks: []string{}},
	"patroni-tuned":    {Name: "patroni-tuned", TTL: 10 * time.Second, LoopWait: time.Second, RetryTimeout: 3 * time.Second, LockDelay: 0, SessionChecks: []string{}},
}

func (p profile) String() string {
	checks := "automatic"
	if p.SessionChecks != nil {
		checks = "[" + strings.Join(p.SessionChecks, ",") + "]"
	}
	return fmt.Sprintf("%s (ttl %s, loop_wait %s, retry_timeout %s, lock_delay %s, session_checks %s)",
		p.Name, p.TTL, p.LoopWait, p.RetryTimeout, p.LockDelay, checks)
}

// profileFlags holds -profile plus the per-timing overrides.
type profileFlags struct {
	name                                   string
	ttl, loopWait, retryTimeout, lockDelay time.Duration
	checks                                 string
}

func (pf *profileFlags) register(fs interface {
	StringVar(*string, string, string, string)
	DurationVar(*time.Duration, string, time.Duration, string)
}, def string) {
	fs.StringVar(&pf.name, "profile", def, "HA timings: default | fast | checks | checks-fast | node | node-fast | patroni-defaults | patroni-tuned (see docs/benchmarks.md)")
	fs.DurationVar(&pf.ttl, "ttl", 0, "override the profile's ttl")
	fs.DurationVar(&pf.loopWait, "loop-wait", 0, "override the profile's loop_wait")
	fs.DurationVar(&pf.retryTimeout, "retry-timeout", 0, "override the profile's retry_timeout")
	fs.DurationVar(&pf.lockDelay, "lock-delay", 0, "override the profile's lock_delay")
	fs.StringVar(&pf.checks, "session-checks", "", "override the profile's consul.session_checks (comma-separated; \"none\" for none)")
}

// resolve returns the named profile with the overrides applied.
func (pf *profileFlags) resolve(name string) (profile, error) {
	p, ok := profiles[name]
	if !ok {
		names := make([]string, 0, len(profiles))
		for n := range profiles {
			names = append(names, n)
		}
		sort.Strings(names)
		return p, fmt.Errorf("unknown profile %q (have %s)", name, strings.Join(names, ", "))
	}
	custom := false
	set := func(dst *time.Duration, v time.Duration) {
		if v != 0 {
			*dst, custom = v, true
		}
	}
	set(&p.TTL, pf.ttl)
	set(&p.LoopWait, pf.loopWait)
	set(&p.RetryTimeout, pf.retryTimeout)
	set(&p.LockDelay, pf.lockDelay)
	switch pf.checks {
	case "":
	case "none":
		p.SessionChecks, custom = []string{}, true
	default:
		p.SessionChecks, custom = strings.Split(pf.checks, ","), true
	}
	if custom {
		p.Name += "+custom"
	}
	if p.LoopWait+2*p.RetryTimeout > p.TTL {
		return p, fmt.Errorf("profile %s: loop_wait + 2*retry_timeout must be <= ttl", p)
	}
	// The agents refuse such a config (consulkv's session-checks-lock-delay
	// rule); say so before starting anything.
	if len(p.SessionChecks) > 0 && p.LockDelay != 0 && p.LockDelay < consulkv.MinChecksLockDelay {
		return p, fmt.Errorf("profile %s: with session checks lock_delay must be 0 (automatic) or >= %s", p, consulkv.MinChecksLockDelay)
	}
	return p, nil
}

// prefixWriter prefixes every line (the demo's progress output).
type prefixWriter struct {
	prefix string
	w      io.Writer
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	outMu.Lock()
	defer outMu.Unlock()
	for _, line := range strings.SplitAfter(string(b), "\n") {
		if line == "" {
			continue
		}
		io.WriteString(p.w, p.prefix+line)
	}
	return len(b), nil
}

// meshOptions is the demo configuration for a 1-group benchmark mesh.
func (e *env) meshOptions(p profile, members int) (demo.Options, error) {
	bin, err := e.pgmesh()
	if err != nil {
		return demo.Options{}, err
	}
	var out io.Writer = io.Discard
	if e.verbose {
		out = &prefixWriter{prefix: "#   demo: ", w: os.Stdout}
	}
	return demo.Options{
		WorkDir: e.workDir, Cluster: "bench", Groups: 1, Members: members,
		ConsulBin: e.consulBin, PgmeshBin: bin, OSUser: "postgres", Out: out,
		ConsulHTTPPort: e.portBase + 500, ConsulDNSPort: e.portBase + 600,
		PGBasePort: e.portBase + 432, APIBasePort: e.portBase + 8,
		TTL: p.TTL, LoopWait: p.LoopWait, RetryTimeout: p.RetryTimeout, LockDelay: p.LockDelay,
		SessionChecks: p.SessionChecks,
	}, nil
}

// startMesh starts a demo mesh and registers its Stop as a cleanup.
func (e *env) startMesh(ctx context.Context, o demo.Options) (*demo.Mesh, error) {
	m, _, err := e.startMeshStop(ctx, o)
	return m, err
}

// startMeshStop is startMesh that also returns the (idempotent) stop.
func (e *env) startMeshStop(ctx context.Context, o demo.Options) (*demo.Mesh, func(), error) {
	start := time.Now()
	printf("# starting Consul + %d group(s) x %d members in %s …\n", o.Groups, o.Members, o.WorkDir)
	m, err := demo.Start(ctx, o)
	if err != nil {
		return nil, nil, err
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			m.Stop()
		}
	}
	e.cleanups = append(e.cleanups, stop)
	printf("# mesh up after %s\n", time.Since(start).Round(100*time.Millisecond))
	return m, stop, nil
}

// stats of a sample.
type stats struct {
	n                      int
	median, min, max, mean float64
}

func summarize(xs []float64) stats {
	if len(xs) == 0 {
		return stats{median: math.NaN(), min: math.NaN(), max: math.NaN(), mean: math.NaN()}
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	st := stats{n: len(s), min: s[0], max: s[len(s)-1]}
	if len(s)%2 == 1 {
		st.median = s[len(s)/2]
	} else {
		st.median = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	sum := 0.0
	for _, x := range s {
		sum += x
	}
	st.mean = sum / float64(len(s))
	return st
}

// percentile is the nearest-rank percentile (p in 0..100).
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(s) {
		i = len(s) - 1
	}
	return s[i]
}

func secs(d time.Duration) float64 { return d.Seconds() }

// table prints rows as aligned columns.
func table(header []string, rows [][]string) {
	widths := make([]int, len(header))
	for i, h := range header {
		widths[i] = len(h)
	}
	for _, r := range rows {
		for i, c := range r {
			if i < len(widths) && len(c) > widths[i] {
				widths[i] = len(c)
			}
		}
	}
	line := func(cells []string) {
		var b strings.Builder
		for i, c := range cells {
			if i > 0 {
				b.WriteString("  ")
			}
			if i == 0 {
				fmt.Fprintf(&b, "%-*s", widths[i], c)
			} else {
				fmt.Fprintf(&b, "%*s", widths[i], c)
			}
		}
		printf("%s\n", strings.TrimRight(b.String(), " "))
	}
	line(header)
	sep := make([]string, len(header))
	for i := range sep {
		sep[i] = strings.Repeat("-", widths[i])
	}
	line(sep)
	for _, r := range rows {
		line(r)
	}
}

// statRow formats a metric's median/min/max with unit formatting f.
func statRow(name string, xs []float64, f func(float64) string) []string {
	st := summarize(xs)
	if st.n == 0 {
		return []string{name, "-", "-", "-", "0"}
	}
	return []string{name, f(st.median), f(st.min), f(st.max), fmt.Sprint(st.n)}
}

func fmtSecs(x float64) string {
	if math.IsNaN(x) {
		return "-"
	}
	return fmt.Sprintf("%.2fs", x)
}

func fmtMs(x float64) string {
	if math.IsNaN(x) {
		return "-"
	}
	return fmt.Sprintf("%.0fms", x*1000)
}
