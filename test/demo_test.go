package test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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
	cmd := exec.Command(bin, args...)
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// A failed run must not leave the demo's children behind: stop it
		// like a user would, then kill whatever it recorded.
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
	lines := make(chan string, 1000)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var out []string
	deadline := time.After(3 * time.Minute)
	up := false
	for !up {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("demo exited before it was up:\n%s", strings.Join(out, "\n"))
			}
			out = append(out, l)
			if strings.Contains(l, "Press Ctrl-C") {
				up = true
			}
		case <-deadline:
			t.Fatalf("demo not up after 3 minutes:\n%s", strings.Join(out, "\n"))
		}
	}
	text := strings.Join(out, "\n")
	for _, want := range []string{"is up", "primary.demo.service.consul", "Group: n1", "Group: n2", "Leader",
		"Multi-master (" + repl + " replication between groups): a row written on n1", "was read back on n2 after"} {
		if !strings.Contains(text, want) {
			t.Errorf("demo output lacks %q:\n%s", want, text)
		}
	}
	// Every group's leader takes a write.
	writable := map[string]bool{}
	for _, l := range out {
		i := strings.Index(l, "psql \"")
		if i < 0 {
			continue
		}
		dsn := l[i+6:]
		dsn = dsn[:strings.Index(dsn, "\"")]
		group := strings.Fields(l)[0]
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
	cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() {
		for range lines {
		}
		done <- cmd.Wait()
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("demo exit: %v", err)
		}
	case <-time.After(90 * time.Second):
		t.Fatal("demo did not stop within 90s of Ctrl-C")
	}
	// Nothing it started may be left running.
	if out, _ := exec.Command("pgrep", "-f", work).Output(); len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("processes left after the demo stopped: %s", out)
	}
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
