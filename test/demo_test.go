package test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgmesh/pgmesh/test/testbed"
)

// TestDemo runs `pgmesh demo` the way the README tells a newcomer to, on a
// small shape and free ports: it must come up, print the endpoints and
// status, answer a write on every group's primary, and stop everything on
// Ctrl-C. It runs the demo with --secure (REST APIs over HTTPS with auth
// and client certificates for changes), and uses the printed exports for a
// switchover from the CLI.
func TestDemo(t *testing.T) {
	bin := testbed.PgmeshBinary(t)
	consulBin, err := testbed.ConsulBinary()
	if err != nil {
		t.Fatal(err)
	}
	work := filepath.Join(testbed.OwnedDir(t), "demo")
	cport := testbed.FreePortBlock(t, 4) // HTTP, then Consul's server and serf ports
	args := []string{"demo", "--workdir", work, "--groups", "2", "--members", "2", "--consul-bin", consulBin,
		"--consul-port", fmt.Sprint(cport), "--dns-port", fmt.Sprint(testbed.FreePort(t)),
		"--pg-port", fmt.Sprint(testbed.FreePortBlock(t, 4)), "--api-port", fmt.Sprint(testbed.FreePortBlock(t, 4))}
	haproxyBase := testbed.FreePortBlock(t, 13)
	args = append(args, "--haproxy-port", fmt.Sprint(haproxyBase), "--secure")
	// The demo shows the multi-master: with Spock when the kit is there (as
	// on the project's machines and in CI), else native replication.
	repl := "native"
	if dir, ok := testbed.SpockKit(); ok {
		repl = "spock"
		args = append(args, "--replication", "spock", "--pg-bin-dir", dir)
	}
	d := startDemo(t, bin, work, args)
	out := d.out
	text := strings.Join(out, "\n")
	for _, want := range []string{"is up", "primary.demo.service.consul", "Group: n1", "Group: n2", "Leader",
		"Multi-master (" + repl + " replication between groups): a row written on n1", "was read back on n2 after"} {
		if !strings.Contains(text, want) {
			t.Errorf("demo output lacks %q:\n%s", want, text)
		}
	}
	// Every group's leader takes a write.
	writable := map[string]bool{}
	for _, ml := range demoMemberLines(out) {
		dsn, group := ml.dsn, ml.group
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, err := pgx.Connect(ctx, dsn+" sslmode=disable")
		if err == nil {
			var inRecovery bool
			if conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery) == nil && !inRecovery {
				if _, err := conn.Exec(ctx, "CREATE TABLE demo_check(id int)"); err == nil {
					writable[group] = true
				}
			}
			conn.Close(ctx)
		}
		cancel()
	}
	if len(writable) != 2 {
		t.Fatalf("writable groups %v, want n1 and n2", writable)
	}
	// The HAProxy write endpoint reaches the local group's (n1's) primary.
	testbed.Eventually(t, 30*time.Second, "write through HAProxy", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=demo-superuser dbname=postgres sslmode=disable connect_timeout=2", haproxyBase))
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		var port int
		if err := conn.QueryRow(ctx, "INSERT INTO demo_check VALUES (1) RETURNING inet_server_port()").Scan(&port); err != nil {
			return err
		}
		return nil
	})
	status := exec.Command(bin, "status", "--consul", fmt.Sprintf("127.0.0.1:%d", cport), "--cluster", "demo", "-o", "json")
	js, err := status.Output()
	if err != nil || !strings.Contains(string(js), "\"n2\"") {
		t.Fatalf("status -o json: %v\n%s", err, js)
	}
	demoSecureSwitchover(t, bin, cport, out)
	d.stop(t)
}

// demoSecureSwitchover follows the secure demo's printed instructions: the
// exports it shows let `pgmesh switchover` through; without the password
// the agent refuses (401) and nothing changes.
func demoSecureSwitchover(t *testing.T, bin string, cport int, out []string) {
	t.Helper()
	env := []string{}
	for _, l := range out {
		l = strings.TrimSpace(l)
		if !strings.HasPrefix(l, "export PGMESH_") {
			continue
		}
		kv := strings.TrimPrefix(l, "export ")
		if k, v, ok := strings.Cut(kv, "=$(cat "); ok {
			b, err := os.ReadFile(strings.TrimSuffix(v, ")"))
			if err != nil {
				t.Fatal(err)
			}
			kv = k + "=" + strings.TrimSpace(string(b))
		}
		env = append(env, kv)
	}
	if len(env) != 5 {
		t.Fatalf("the secure demo printed %d exports, want 5:\n%s", len(env), strings.Join(out, "\n"))
	}
	run := func(env []string) (string, error) {
		cmd := exec.Command(bin, "switchover", "--consul", fmt.Sprintf("127.0.0.1:%d", cport), "--cluster", "demo", "--group", "n2", "--force", "--timeout", "60s")
		cmd.Env = append(os.Environ(), env...)
		b, err := cmd.CombinedOutput()
		return string(b), err
	}
	var noPassword []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, "PGMESH_RESTAPI_PASSWORD=") {
			noPassword = append(noPassword, kv)
		}
	}
	if text, err := run(noPassword); err == nil || !strings.Contains(text, "401") {
		t.Fatalf("switchover without the password: %v\n%s", err, text)
	}
	text, err := run(env)
	if err != nil {
		t.Fatalf("switchover with the demo's exports: %v\n%s", err, text)
	}
	t.Logf("secure demo switchover: %s", strings.TrimSpace(text))
}

// runningDemo is a `pgmesh demo` the test started, up (its summary
// printed).
type runningDemo struct {
	cmd   *exec.Cmd
	work  string
	lines chan string
	// out is what it printed until it was up.
	out []string
}

// startDemo runs `pgmesh demo args…` and waits until it prints "Press
// Ctrl-C" (3 minutes at most). A failed test stops it like a user would
// and then kills whatever it recorded in its work dir.
func startDemo(t *testing.T, bin, work string, args []string) *runningDemo {
	t.Helper()
	cmd := exec.Command(bin, args...)
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if syscall.Kill(cmd.Process.Pid, 0) == nil {
			cmd.Process.Signal(syscall.SIGINT)
			for i := 0; i < 600 && syscall.Kill(cmd.Process.Pid, 0) == nil; i++ {
				time.Sleep(100 * time.Millisecond)
			}
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
		if data, err := os.ReadFile(filepath.Join(work, "pids")); err == nil {
			for _, f := range strings.Fields(string(data)) {
				var pid int
				fmt.Sscanf(f, "%d", &pid)
				if pid > 1 {
					syscall.Kill(-pid, syscall.SIGKILL)
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		exec.Command("pkill", "-9", "-f", work).Run()
	})
	d := &runningDemo{cmd: cmd, work: work, lines: make(chan string, 1000)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			d.lines <- sc.Text()
		}
		close(d.lines)
	}()
	deadline := time.After(3 * time.Minute)
	for {
		select {
		case l, ok := <-d.lines:
			if !ok {
				t.Fatalf("demo exited before it was up:\n%s", strings.Join(d.out, "\n"))
			}
			d.out = append(d.out, l)
			if strings.Contains(l, "Press Ctrl-C") {
				return d
			}
		case <-deadline:
			t.Fatalf("demo not up after 3 minutes:\n%s", strings.Join(d.out, "\n"))
		}
	}
}

// stop sends Ctrl-C and waits for the demo to exit cleanly, leaving no
// process that runs from its work dir.
func (d *runningDemo) stop(t *testing.T) {
	t.Helper()
	d.cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() {
		for range d.lines {
		}
		done <- d.cmd.Wait()
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("demo exit: %v", err)
		}
	case <-time.After(90 * time.Second):
		t.Fatal("demo did not stop within 90s of Ctrl-C")
	}
	if out, _ := exec.Command("pgrep", "-f", d.work).Output(); len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("processes left after the demo stopped: %s", out)
	}
}

// demoMember is one member line of the demo's summary:
// "  <group> <member> [<datacenter>] psql "<dsn>"   REST <url>/patroni".
type demoMember struct {
	group, name, datacenter, dsn string
	port                         int
}

func demoMemberLines(out []string) []demoMember {
	var ms []demoMember
	for _, l := range out {
		i := strings.Index(l, "psql \"")
		f := strings.Fields(l)
		if i < 0 || len(f) < 3 || !strings.HasPrefix(f[1], f[0]+"-") {
			continue
		}
		m := demoMember{group: f[0], name: f[1]}
		if !strings.HasPrefix(f[2], "psql") {
			m.datacenter = f[2]
		}
		m.dsn = l[i+6:]
		m.dsn = m.dsn[:strings.Index(m.dsn, "\"")]
		for _, kv := range strings.Fields(m.dsn) {
			if v, ok := strings.CutPrefix(kv, "port="); ok {
				m.port, _ = strconv.Atoi(v)
			}
		}
		ms = append(ms, m)
	}
	return ms
}

// TestDemoDatacenters runs `pgmesh demo --datacenters 3` (3 groups x 2
// members, one group per datacenter): three Consul servers WAN-joined on
// loopback, each group's agents on their datacenter's Consul. Asked in each
// datacenter, <cluster>-write.query.consul answers that datacenter's
// primary; `pgmesh status` lists the groups with their datacenters; with
// dc3's Consul stopped as the summary says, status marks dc3 unreachable
// and dc1 and dc2 still answer their primaries; started again with the
// printed command, dc3 is back (n3 still led, its query answering) and
// Ctrl-C stops everything, that Consul included.
func TestDemoDatacenters(t *testing.T) {
	bin := testbed.PgmeshBinary(t)
	consulBin, err := testbed.ConsulBinary()
	if err != nil {
		t.Fatal(err)
	}
	work := filepath.Join(testbed.OwnedDir(t), "dcdemo")
	cport := testbed.FreePortBlock(t, 12) // 4 per datacenter: HTTP, server, serf LAN, serf WAN
	dnsPort := testbed.FreePortBlock(t, 3)
	args := []string{"demo", "--datacenters", "3", "--workdir", work, "--groups", "3", "--members", "2", "--consul-bin", consulBin,
		"--consul-port", fmt.Sprint(cport), "--dns-port", fmt.Sprint(dnsPort),
		"--pg-port", fmt.Sprint(testbed.FreePortBlock(t, 6)), "--api-port", fmt.Sprint(testbed.FreePortBlock(t, 6)),
		"--haproxy-port", fmt.Sprint(testbed.FreePortBlock(t, 13))}
	// Replication between the datacenters' groups as the demo chooses it:
	// Spock when the kit is there, else native.
	repl := "native"
	if dir, ok := testbed.SpockKit(); ok {
		repl = "spock"
		args = append(args, "--replication", "spock", "--pg-bin-dir", dir)
	}
	start := time.Now()
	d := startDemo(t, bin, work, args)
	t.Logf("3-datacenter demo up after %.1fs", time.Since(start).Seconds())
	text := strings.Join(d.out, "\n")
	dcs := []string{"dc1", "dc2", "dc3"}
	wants := []string{"is up", "Group: n1 (datacenter dc1", "Group: n2 (datacenter dc2", "Group: n3 (datacenter dc3",
		"kill $(cat " + filepath.Join(work, "consul-dc3", "consul.pid") + ")", "status --consul " + fmt.Sprintf("127.0.0.1:%d", cport),
		"Multi-master (" + repl + " replication between groups): a row written on n1", "was read back on n2 after", "on n3 after"}
	for k := range dcs {
		wants = append(wants, fmt.Sprintf("dig @127.0.0.1 -p %d demo-write.query.consul SRV", dnsPort+k))
	}
	for _, want := range wants {
		if !strings.Contains(text, want) {
			t.Errorf("demo output lacks %q:\n%s", want, text)
		}
	}
	members := demoMemberLines(d.out)
	if len(members) != 6 {
		t.Fatalf("%d member lines, want 6:\n%s", len(members), text)
	}
	groupOf := map[int]demoMember{}
	for _, m := range members {
		if want := fmt.Sprintf("dc%s", strings.TrimPrefix(m.group, "n")); m.datacenter != want {
			t.Errorf("member %s in %q, want %s", m.name, m.datacenter, want)
		}
		groupOf[m.port] = m
	}
	// Asked in dcK, the write query answers nK's primary: one port of that
	// group, a PostgreSQL that takes writes.
	writable := func(port int) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, groupOf[port].dsn+" sslmode=disable")
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		var inRecovery bool
		if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil || inRecovery {
			return fmt.Errorf("port %d in recovery %v (%v)", port, inRecovery, err)
		}
		return nil
	}
	answer := func(k int) (int, error) {
		ports, err := srvPorts(fmt.Sprintf("127.0.0.1:%d", dnsPort+k), "demo-write.query.consul")
		if err != nil || len(ports) != 1 {
			return 0, fmt.Errorf("demo-write.query.consul in %s: %v %v", dcs[k], ports, err)
		}
		if m := groupOf[ports[0]]; m.datacenter != dcs[k] {
			return 0, fmt.Errorf("demo-write.query.consul in %s answers port %d (%s in %q)", dcs[k], ports[0], m.name, m.datacenter)
		}
		return ports[0], writable(ports[0])
	}
	for k, dc := range dcs {
		testbed.Eventually(t, 30*time.Second, "demo-write.query.consul in "+dc, func() error {
			_, err := answer(k)
			return err
		})
	}
	// status (through dc1's Consul) reads every datacenter.
	type statusJSON struct {
		Datacenters []string `json:"datacenters"`
		Groups      []struct {
			Name, Datacenter, Leader string
		} `json:"groups"`
		Unreachable map[string]string `json:"unreachable_datacenters"`
	}
	status := func() (statusJSON, string, error) {
		var st statusJSON
		out, err := exec.Command(bin, "status", "--consul", fmt.Sprintf("127.0.0.1:%d", cport), "--cluster", "demo", "-o", "json").Output()
		if err != nil {
			return st, string(out), err
		}
		return st, string(out), json.Unmarshal(out, &st)
	}
	st, raw, err := status()
	if err != nil || fmt.Sprint(st.Datacenters) != "[dc1 dc2 dc3]" || len(st.Groups) != 3 || len(st.Unreachable) != 0 {
		t.Fatalf("status -o json: %v\n%s", err, raw)
	}
	for _, g := range st.Groups {
		if want := "dc" + strings.TrimPrefix(g.Name, "n"); g.Datacenter != want || g.Leader == "" {
			t.Errorf("status: group %s in %q led by %q, want %s with a leader", g.Name, g.Datacenter, g.Leader, want)
		}
	}
	// Lose dc3 the way the summary says: its Consul server stops.
	pid, err := os.ReadFile(filepath.Join(work, "consul-dc3", "consul.pid"))
	if err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("kill", strings.TrimSpace(string(pid))).Run(); err != nil {
		t.Fatal(err)
	}
	lost := time.Now()
	testbed.Eventually(t, 30*time.Second, "status marks dc3 unreachable", func() error {
		st, raw, err := status()
		if err != nil {
			return fmt.Errorf("%v: %s", err, raw)
		}
		if _, ok := st.Unreachable["dc3"]; !ok || len(st.Unreachable) != 1 {
			return fmt.Errorf("unreachable %v", st.Unreachable)
		}
		var names []string
		for _, g := range st.Groups {
			if g.Leader != "" {
				names = append(names, g.Name)
			}
		}
		if fmt.Sprint(names) != "[n1 n2]" {
			return fmt.Errorf("groups with a leader %v", names)
		}
		return nil
	})
	t.Logf("dc3's Consul stopped: status marked it unreachable after %.1fs", time.Since(lost).Seconds())
	for k := range dcs[:2] {
		if _, err := answer(k); err != nil {
			t.Errorf("with dc3's Consul down: %v", err)
		}
	}
	// Bring it back with the printed command: dc3 is read again, n3 still
	// led, and Ctrl-C stops this Consul too (the demo did not start it).
	var again string
	for _, l := range d.out {
		if strings.Contains(l, " agent -config-file "+filepath.Join(work, "consul-dc3")) {
			again = strings.TrimSpace(l)
		}
	}
	if again == "" {
		t.Fatalf("no command to start dc3's Consul again in:\n%s", text)
	}
	if out, err := exec.Command("sh", "-c", again).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", again, err, out)
	}
	back := time.Now()
	testbed.Eventually(t, 60*time.Second, "dc3 read again with n3 led", func() error {
		st, raw, err := status()
		if err != nil {
			return fmt.Errorf("%v: %s", err, raw)
		}
		var led []string
		for _, g := range st.Groups {
			if g.Leader != "" {
				led = append(led, g.Name)
			}
		}
		if len(st.Unreachable) != 0 || fmt.Sprint(led) != "[n1 n2 n3]" {
			return fmt.Errorf("unreachable %v, groups with a leader %v", st.Unreachable, led)
		}
		return nil
	})
	t.Logf("dc3's Consul started again: status read dc3 with n3 led after %.1fs", time.Since(back).Seconds())
	testbed.Eventually(t, 30*time.Second, "demo-write.query.consul in dc3", func() error {
		_, err := answer(2)
		return err
	})
	d.stop(t)
}
