package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/routing"
	"github.com/pgmesh/pgmesh/templates"
	"github.com/pgmesh/pgmesh/test/testbed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// routerPorts are the listener ports of one test HAProxy.
type routerPorts struct {
	write, read, stats, groupBase int
}

// newRouterPorts picks free ports; the group listeners need groups
// consecutive ports from groupBase.
func newRouterPorts(t *testing.T, groups int) routerPorts {
	t.Helper()
	p := routerPorts{write: testbed.FreePort(t), read: testbed.FreePort(t), stats: testbed.FreePort(t)}
	for i := 0; i < 50 && p.groupBase == 0; i++ {
		base := testbed.FreePort(t)
		ok := true
		for j := 1; j < groups; j++ {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", base+j))
			if err != nil {
				ok = false
				break
			}
			l.Close()
		}
		if ok {
			p.groupBase = base
		}
	}
	if p.groupBase == 0 {
		t.Fatal("no run of free ports for the group listeners")
	}
	return p
}

// pgVia runs one statement on a fresh connection to 127.0.0.1:port (a
// router listener) and returns the first column of the first row.
func pgVia(ctx context.Context, port int, sql string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password='super secret' dbname=postgres sslmode=disable connect_timeout=2", port)
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return "", err
	}
	defer c.Close(context.Background())
	var out string
	if err := c.QueryRow(ctx, sql).Scan(&out); err != nil {
		return "", err
	}
	return out, nil
}

const probeInsert = "INSERT INTO routing_probe DEFAULT VALUES RETURNING inet_server_port()::text"

// memberByPort names the member whose PostgreSQL listens on port.
func memberByPort(port string, groups ...*group) string {
	for _, g := range groups {
		for name, a := range g.members {
			if fmt.Sprint(a.PGPort) == port {
				return name
			}
		}
	}
	return "port " + port
}

// renderer is a running `pgmesh render` (the built binary once the command
// is registered, else the routing package in-process, which is what the
// command runs).
type renderer struct {
	logPath string
	stop    func()
}

func (r *renderer) log() string {
	b, _ := os.ReadFile(r.logPath)
	return string(b)
}

// binaryHasRender reports whether the built pgmesh has the render command.
func binaryHasRender(t *testing.T) bool {
	return exec.Command(testbed.PgmeshBinary(t), "render", "--help").Run() == nil
}

func startRenderer(t *testing.T, cfgPath string) *renderer {
	t.Helper()
	r := &renderer{logPath: filepath.Join(t.TempDir(), "render.log")}
	testbed.DumpOnFailure(t, "pgmesh render", r.logPath)
	if binaryHasRender(t) {
		logf, err := os.Create(r.logPath)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(testbed.PgmeshBinary(t), "render", "--config", cfgPath, "--log-level", "debug")
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); logf.Close(); close(done) }()
		r.stop = func() {
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-done
			}
		}
		t.Logf("renderer: %s render --config (binary)", testbed.PgmeshBinary(t))
	} else {
		cfg, err := routing.LoadConfig(cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		entries, err := cfg.Entries()
		if err != nil {
			t.Fatal(err)
		}
		kv, err := consulkv.New(consulkv.Config{Address: cfg.Consul.Address, Cluster: cfg.Cluster})
		if err != nil {
			t.Fatal(err)
		}
		zc := zap.NewProductionConfig()
		zc.EncoderConfig.TimeKey = "ts"
		zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder // as pgmesh's own logs
		zc.OutputPaths, zc.ErrorOutputPaths = []string{r.logPath}, []string{r.logPath}
		zc.Level = zap.NewAtomicLevelAt(zap.DebugLevel)
		log, err := zc.Build()
		if err != nil {
			t.Fatal(err)
		}
		d, m := cfg.DebounceDurations()
		rr, err := routing.New(routing.Options{Client: kv, LocalGroup: cfg.LocalGroup, Entries: entries, Data: cfg.Data, Debounce: d, MaxDelay: m, Log: log})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { rr.Run(ctx); close(done) }()
		r.stop = func() { cancel(); <-done; log.Sync() }
		t.Logf("renderer: routing package in-process (the binary has no render command yet)")
	}
	t.Cleanup(r.stop)
	return r
}

// section returns the lines of an ini/HAProxy section from its header to
// the next blank line.
func section(text, head string) string {
	i := strings.Index(text, "\n"+head+"\n")
	if i < 0 {
		return ""
	}
	rest := text[i+1:]
	if j := strings.Index(rest, "\n\n"); j >= 0 {
		rest = rest[:j]
	}
	return rest
}

// logTime returns the time of the first JSON log line with message msg
// that contains every one of subs and is not before after.
func logTime(log, msg string, after time.Time, subs ...string) (time.Time, bool) {
next:
	for _, line := range strings.Split(log, "\n") {
		var rec struct {
			TS  string `json:"ts"`
			Msg string `json:"msg"`
		}
		if json.Unmarshal([]byte(line), &rec) != nil || rec.Msg != msg {
			continue
		}
		for _, s := range subs {
			if !strings.Contains(line, s) {
				continue next
			}
		}
		ts, err := time.Parse("2006-01-02T15:04:05.000Z0700", rec.TS)
		if err == nil && !ts.Before(after.Truncate(time.Millisecond)) {
			return ts, true
		}
	}
	return time.Time{}, false
}

func readText(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

type writeResult struct {
	at     time.Time
	member string
	err    error
}

// TestRoutingHAProxy runs the native renderer against a live 2×2 mesh and a
// real HAProxy: writes go to the local group's primary; when its host dies,
// the other group's primary takes the writes until the group has a new
// primary, and the group's own listener comes back on it.
func TestRoutingHAProxy(t *testing.T) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	g1 := startGroup(t, c, "g1", 2, nil, nil)
	g2 := startGroup(t, c, "g2", 2, nil, nil)
	ctx := context.Background()
	l1 := g1.waitHealthy(90 * time.Second)
	l2 := g2.waitHealthy(90 * time.Second)
	for _, x := range []struct {
		g *group
		l string
	}{{g1, l1}, {g2, l2}} {
		if err := x.g.members[x.l].Exec(ctx, "CREATE TABLE routing_probe(id bigserial PRIMARY KEY, at timestamptz DEFAULT now())"); err != nil {
			t.Fatal(err)
		}
	}

	dir := t.TempDir()
	ports := newRouterPorts(t, 2)
	hcfg, svc := filepath.Join(dir, "haproxy.cfg"), filepath.Join(dir, "pg_service.conf")
	sock, masterPid := filepath.Join(dir, "admin.sock"), filepath.Join(dir, "haproxy.master.pid")
	cfgPath := filepath.Join(dir, "render.yml")
	renderCfg := fmt.Sprintf(`cluster: itest
local_group: g1
consul: {address: %s}
log: {level: debug}
data:
  bind: 127.0.0.1
  socket: %s
  max_lag: 16MB
  ports: {write: %d, read: %d, stats: %d, group_base: %d}
  vars: {log: "stdout format raw daemon"}
templates:
  - template: builtin:haproxy.cfg.tmpl
    destination: %s
    validate: haproxy -c -q -f {{file}}
    reload: '[ ! -s %s ] || kill -USR2 "$(cat %s)"'
    haproxy_socket: %s
  - template: builtin:pg_service.conf.tmpl
    destination: %s
`, c.HTTPAddr, sock, ports.write, ports.read, ports.stats, ports.groupBase, hcfg, masterPid, masterPid, sock, svc)
	if err := os.WriteFile(cfgPath, []byte(renderCfg), 0o644); err != nil {
		t.Fatal(err)
	}
	rend := startRenderer(t, cfgPath)
	allMembers := []string{"g1.g1-a", "g1.g1-b", "g2.g2-a", "g2.g2-b"}
	testbed.Eventually(t, 30*time.Second, "haproxy.cfg lists every member", func() error {
		cfg := readText(hcfg)
		for _, m := range allMembers {
			if !strings.Contains(section(cfg, "listen write"), "server "+m+" ") {
				return fmt.Errorf("no %s in the write listener:\n%s", m, cfg)
			}
		}
		return nil
	})
	hp := testbed.StartHAProxy(t, hcfg)
	if err := os.WriteFile(masterPid, []byte(fmt.Sprint(hp.Pid())), 0o644); err != nil {
		t.Fatal(err)
	}

	// Writes land on the local group's primary, reads on a replica, and each
	// group listener on that group's primary.
	expectVia := func(what string, port int, sql, want string) {
		t.Helper()
		testbed.Eventually(t, 20*time.Second, what, func() error {
			got, err := pgVia(ctx, port, sql)
			if err != nil {
				return err
			}
			if m := memberByPort(got, g1, g2); m != want {
				return fmt.Errorf("served by %s, want %s", m, want)
			}
			return nil
		})
	}
	expectVia("write listener -> local primary", ports.write, probeInsert, l1)
	expectVia("group g2 listener -> g2's primary", ports.groupBase+1, probeInsert, l2)
	expectVia("group g1 listener -> g1's primary", ports.groupBase, probeInsert, l1)
	r1 := g1.order[0]
	if r1 == l1 {
		r1 = g1.order[1]
	}
	expectVia("read listener -> local replica", ports.read, "SELECT inet_server_port()::text", r1)
	if got, err := pgVia(ctx, ports.read, "SELECT pg_is_in_recovery()::text"); err != nil || got != "true" {
		t.Fatalf("read listener: in recovery = %q, %v", got, err)
	}
	svcBefore := readText(svc)
	if !strings.Contains(section(svcBefore, "[itest-g1]"), fmt.Sprintf("port=%d,%d", g1.members[l1].PGPort, g1.members[r1].PGPort)) {
		t.Fatalf("pg_service.conf does not list g1's primary first:\n%s", svcBefore)
	}
	cfgBefore := readText(hcfg)
	loadsBefore := hp.Loads()

	// Write through the write listener every 50ms while g1's primary host
	// dies and g1 fails over.
	var mu sync.Mutex
	var results []writeResult
	stopWriter := make(chan struct{})
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for {
			select {
			case <-stopWriter:
				return
			default:
			}
			got, err := pgVia(ctx, ports.write, probeInsert)
			mu.Lock()
			results = append(results, writeResult{at: time.Now(), member: memberByPort(got, g1, g2), err: err})
			mu.Unlock()
			time.Sleep(50 * time.Millisecond)
		}
	}()
	// Watch pg_service.conf for the new primary to come first in g1's entry.
	newLeader := r1
	wantSvc := fmt.Sprintf("# primary: %s\nhost=127.0.0.1,127.0.0.1\nport=%d,", newLeader, g1.members[newLeader].PGPort)
	svcChanged := make(chan time.Time, 1)
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go func() {
		for watchCtx.Err() == nil {
			if strings.Contains(section(readText(svc), "[itest-g1]"), wantSvc) {
				svcChanged <- time.Now()
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()

	time.Sleep(500 * time.Millisecond)
	killed := time.Now()
	g1.members[l1].KillHost()
	var promoted time.Time
	testbed.Eventually(t, 60*time.Second, "g1's replica is promoted", func() error {
		if l, err := g1.leader(); err != nil || l != newLeader {
			return fmt.Errorf("leader %q %v", l, err)
		}
		if w, err := g1.members[newLeader].IsWritable(ctx); err != nil || !w {
			return fmt.Errorf("%s not writable yet (%v)", newLeader, err)
		}
		promoted = time.Now()
		return nil
	})
	var groupBack time.Time
	testbed.Eventually(t, 30*time.Second, "g1 listener serves the new primary", func() error {
		got, err := pgVia(ctx, ports.groupBase, probeInsert)
		if err != nil {
			return err
		}
		if m := memberByPort(got, g1, g2); m != newLeader {
			return fmt.Errorf("served by %s", m)
		}
		groupBack = time.Now()
		return nil
	})
	var writeBack time.Time
	testbed.Eventually(t, 30*time.Second, "writes return to the local group", func() error {
		mu.Lock()
		defer mu.Unlock()
		if n := len(results); n > 0 && results[n-1].err == nil && results[n-1].member == newLeader {
			writeBack = results[n-1].at
			return nil
		}
		return errors.New("last write not on " + newLeader)
	})
	var rendered time.Time
	select {
	case rendered = <-svcChanged:
	case <-time.After(20 * time.Second):
		t.Fatalf("pg_service.conf never listed %s first:\n%s", newLeader, readText(svc))
	}
	time.Sleep(time.Second)
	close(stopWriter)
	<-writerDone

	mu.Lock()
	defer mu.Unlock()
	var ok, failed int
	served := map[string]int{}
	var firstFail, lastFail time.Time
	var failures []string
	for _, r := range results {
		if r.at.Before(killed) {
			continue
		}
		if r.err != nil {
			failed++
			if firstFail.IsZero() {
				firstFail = r.at
			}
			lastFail = r.at
			failures = append(failures, fmt.Sprintf("+%s: %v", r.at.Sub(killed).Round(time.Millisecond), r.err))
			continue
		}
		ok++
		served[r.member]++
	}
	total := ok + failed
	ratio := float64(ok) / float64(total)
	t.Logf("failover through HAProxy: %d/%d writes succeeded (%.1f%%) from the kill until %s after writes returned; served by %v",
		ok, total, 100*ratio, time.Since(writeBack).Round(10*time.Millisecond), served)
	if failed > 0 {
		t.Logf("failed writes between +%s and +%s after the kill:\n%s", firstFail.Sub(killed).Round(time.Millisecond), lastFail.Sub(killed).Round(time.Millisecond), strings.Join(failures, "\n"))
	}
	t.Logf("kill -> %s promoted (leader key + writable) %s; g1 listener on it %s; writes back on g1 %s",
		newLeader, promoted.Sub(killed).Round(10*time.Millisecond), groupBack.Sub(killed).Round(10*time.Millisecond), writeBack.Sub(killed).Round(10*time.Millisecond))
	t.Logf("pg_service.conf listed the new primary %s after the promotion was observed (%s after the kill)",
		rendered.Sub(promoted).Round(time.Millisecond), rendered.Sub(killed).Round(10*time.Millisecond))
	if seen, ok := logTime(rend.log(), "writable primaries", killed, `"g1":"`+newLeader+`"`); ok {
		t.Logf("render latency: the renderer's model had %s as g1's primary %s after the kill (%s after the promotion was observed); the file changed %s later (debounce 200ms)",
			newLeader, seen.Sub(killed).Round(time.Millisecond), seen.Sub(promoted).Round(time.Millisecond), rendered.Sub(seen).Round(time.Millisecond))
	} else {
		t.Errorf("renderer never logged %s as g1's primary", newLeader)
	}
	if served[l2] == 0 {
		t.Errorf("no write went to g2's primary while g1 had none: %v", served)
	}
	if ratio < 0.9 {
		t.Errorf("only %.1f%% of writes succeeded through the failover", 100*ratio)
	}
	// The routing change needed no HAProxy reload: the file lists members,
	// not roles.
	if readText(hcfg) != cfgBefore || hp.Loads() != loadsBefore {
		t.Errorf("haproxy.cfg changed (or HAProxy reloaded) on a failover")
	}
	// The runtime-API hook ran on the change; whether it had anything left
	// to do depends on who was first, HAProxy's checks or Consul's.
	switch log := rend.log(); {
	case strings.Contains(log, "HAProxy runtime: pushed the primary change"):
		t.Logf("runtime API hook: pushed the primary change to HAProxy before its checks saw it")
	case strings.Contains(log, "HAProxy runtime: HAProxy's checks already had the primary change"):
		t.Logf("runtime API hook: ran; HAProxy's own checks had already switched")
	default:
		t.Errorf("the runtime API hook did not run")
	}
}

// TestRoutingConsulTemplate renders the shipped consul-template template
// with the real consul-template against a live group and checks HAProxy
// accepts it and routes writes to the primary; and renders pg_service.conf
// natively and connects with psql through its services.
func TestRoutingConsulTemplate(t *testing.T) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	g := startGroup(t, c, "g1", 2, nil, nil)
	ctx := context.Background()
	leader := g.waitHealthy(90 * time.Second)
	replica := g.order[0]
	if replica == leader {
		replica = g.order[1]
	}
	if err := g.members[leader].Exec(ctx, "CREATE TABLE routing_probe(id bigserial PRIMARY KEY, at timestamptz DEFAULT now())"); err != nil {
		t.Fatal(err)
	}
	// consul-template lists passing instances only: wait until Consul has
	// both roles passing.
	cl := c.Client()
	testbed.Eventually(t, 30*time.Second, "Consul sees a passing primary and replica", func() error {
		for _, tag := range []string{"primary", "replica"} {
			es, _, err := cl.Health().Service("itest", tag, true, nil)
			if err != nil {
				return err
			}
			if len(es) != 1 {
				return fmt.Errorf("%d passing %s instances", len(es), tag)
			}
		}
		return nil
	})

	dir := t.TempDir()
	ctBin, err := testbed.ConsulTemplateBinary()
	if err != nil {
		t.Fatal(err)
	}
	src, err := templates.FS.ReadFile("haproxy.ctmpl")
	if err != nil {
		t.Fatal(err)
	}
	in, out := filepath.Join(dir, "haproxy.ctmpl"), filepath.Join(dir, "haproxy.cfg")
	os.WriteFile(in, src, 0o644)
	ports := newRouterPorts(t, 1)
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, ctBin, "-once", "-consul-addr", c.HTTPAddr, "-log-level", "warn", "-template", in+":"+out)
	cmd.Env = append(os.Environ(),
		"PGMESH_CLUSTER=itest", "PGMESH_LOCAL_GROUP=g1", "PGMESH_BIND=127.0.0.1",
		fmt.Sprintf("PGMESH_WRITE_PORT=%d", ports.write), fmt.Sprintf("PGMESH_READ_PORT=%d", ports.read),
		fmt.Sprintf("PGMESH_STATS_PORT=%d", ports.stats), fmt.Sprintf("PGMESH_GROUP_BASE_PORT=%d", ports.groupBase),
		"PGMESH_MAX_LAG=16MB", "PGMESH_HAPROXY_SOCKET="+filepath.Join(dir, "admin.sock"))
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("consul-template: %v\n%s", err, b)
	}
	cfg := readText(out)
	if b, err := exec.Command("haproxy", "-c", "-f", out).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c rejects consul-template's output: %v\n%s\n---\n%s", err, b, cfg)
	}
	lead := g.members[leader]
	wantServer := fmt.Sprintf("server g1.%s 127.0.0.1:%d check port %s addr 127.0.0.1", leader, lead.PGPort, strings.Split(lead.APIAddr, ":")[1])
	if w := section(cfg, "listen write"); !strings.Contains(w, wantServer) || strings.Contains(w, replica) {
		t.Fatalf("write listener should hold exactly %q:\n%s", wantServer, cfg)
	}
	if r := section(cfg, "backend read_replicas"); !strings.Contains(r, "server g1."+replica+" ") || !strings.Contains(r, "GET /replica?lag=16MB") {
		t.Fatalf("read_replicas should hold %s:\n%s", replica, cfg)
	}
	if gl := section(cfg, "listen group_g1"); !strings.Contains(gl, fmt.Sprintf("bind 127.0.0.1:%d", ports.groupBase)) || !strings.Contains(gl, "server g1."+leader+" ") {
		t.Fatalf("group listener:\n%s", cfg)
	}
	testbed.StartHAProxy(t, out)
	testbed.Eventually(t, 20*time.Second, "write through consul-template's HAProxy", func() error {
		got, err := pgVia(ctx, ports.write, probeInsert)
		if err != nil {
			return err
		}
		if m := memberByPort(got, g); m != leader {
			return fmt.Errorf("served by %s", m)
		}
		return nil
	})

	// pg_service.conf, rendered once by the native renderer.
	svc := filepath.Join(dir, "pg_service.conf")
	if binaryHasRender(t) {
		b, err := exec.Command(testbed.PgmeshBinary(t), "render", "--once", "--consul", c.HTTPAddr, "--cluster", "itest",
			"--local-group", "g1", "--template", "builtin:pg_service.conf.tmpl", "--dest", svc).CombinedOutput()
		if err != nil {
			t.Fatalf("pgmesh render --once: %v\n%s", err, b)
		}
	} else {
		kv, err := consulkv.New(consulkv.Config{Address: c.HTTPAddr, Cluster: "itest"})
		if err != nil {
			t.Fatal(err)
		}
		r, err := routing.New(routing.Options{Client: kv, LocalGroup: "g1", Entries: []routing.Entry{{Template: "builtin:pg_service.conf.tmpl", Destination: svc}}})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.RenderOnce(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// A read of a cluster that is not there (a typo, or a token that may
	// not read it) must never replace the rendered file with one that
	// routes nowhere: --once exits 1, names the cause, the file stays.
	if binaryHasRender(t) {
		before := readText(svc)
		b, err := exec.Command(testbed.PgmeshBinary(t), "render", "--once", "--consul", c.HTTPAddr, "--cluster", "itset",
			"--local-group", "g1", "--template", "builtin:pg_service.conf.tmpl", "--dest", svc).CombinedOutput()
		if err == nil || !strings.Contains(string(b), "the mesh read from Consul is empty") || !strings.Contains(string(b), "keeping what is installed") {
			t.Fatalf("render --once of an empty mesh: %v\n%s", err, b)
		}
		if readText(svc) != before {
			t.Fatal("an empty mesh replaced the rendered pg_service.conf")
		}
	}
	psql := func(service, sql string) string {
		t.Helper()
		cmd := exec.Command("psql", "-X", "-At", "-c", sql, "service="+service)
		cmd.Env = append(os.Environ(), "PGSERVICEFILE="+svc, "PGPASSWORD=super secret", "PGSSLMODE=disable")
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("psql service=%s: %v\n%s\n---\n%s", service, err, b, readText(svc))
		}
		return strings.TrimSpace(string(b))
	}
	for service, want := range map[string]string{"itest-g1": "f", "itest-any-writable": "f", "itest-read": "t"} {
		if got := psql(service, "SELECT pg_is_in_recovery()"); got != want {
			t.Errorf("service=%s: pg_is_in_recovery() = %q, want %q\n%s", service, got, want, readText(svc))
		}
	}
	if got := psql("itest-g1", "SELECT inet_server_port()"); got != fmt.Sprint(lead.PGPort) {
		t.Errorf("service=itest-g1 reached port %s, want the primary's %d", got, lead.PGPort)
	}
}
