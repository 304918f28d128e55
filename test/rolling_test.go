package test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/test/testbed"
)

// TestRollingRestart is docs/deploy.md's upgrade procedure on one machine:
// two groups behind HAProxy's mesh write endpoint (rendered by pgmesh
// render), and under write load every agent is restarted in turn —
// replicas first, then a switchover away from each leader and a restart of
// the old leader — as an upgrade of the pgmesh binary would. A write is one
// connection and one INSERT through the write endpoint. A switchover stops
// the old primary, and HAProxy takes up to two fast checks (0.5s) to notice,
// so a write in that gap fails: it is retried with backoff (0.1, 0.2, 0.4,
// 0.8s), as an application with a retry policy does, and a write counts as
// failed only when all attempts failed (the first-attempt errors are
// reported too).
func TestRollingRestart(t *testing.T) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	groups := []*group{startGroup(t, c, "ra", 2, nil, nil), startGroup(t, c, "rb", 2, nil, nil)}
	ctx := context.Background()
	for _, g := range groups {
		l := g.waitHealthy(90 * time.Second)
		if err := g.members[l].Exec(ctx, "CREATE TABLE routing_probe(id bigserial PRIMARY KEY, at timestamptz DEFAULT now())"); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	ports := newRouterPorts(t, 2)
	hcfg, masterPid := filepath.Join(dir, "haproxy.cfg"), filepath.Join(dir, "haproxy.master.pid")
	renderCfg := filepath.Join(dir, "render.yml")
	if err := os.WriteFile(renderCfg, []byte(fmt.Sprintf(`cluster: itest
local_group: ra
consul: {address: %s}
data:
  bind: 127.0.0.1
  socket: %s
  ports: {write: %d, read: %d, stats: %d, group_base: %d}
templates:
  - template: builtin:haproxy.cfg.tmpl
    destination: %s
    validate: haproxy -c -q -f {{file}}
    reload: '[ ! -s %s ] || kill -USR2 "$(cat %s)"'
    haproxy_socket: %s
`, c.HTTPAddr, filepath.Join(dir, "admin.sock"), ports.write, ports.read, ports.stats, ports.groupBase, hcfg, masterPid, masterPid, filepath.Join(dir, "admin.sock"))), 0o644); err != nil {
		t.Fatal(err)
	}
	startRenderer(t, renderCfg)
	testbed.Eventually(t, 30*time.Second, "haproxy.cfg lists four members", func() error {
		if n := countServers(section(readText(hcfg), "listen write")); n != 4 {
			return fmt.Errorf("%d servers", n)
		}
		return nil
	})
	hp := testbed.StartHAProxy(t, hcfg)
	if err := os.WriteFile(masterPid, []byte(fmt.Sprint(hp.Pid())), 0o644); err != nil {
		t.Fatal(err)
	}
	testbed.Eventually(t, 30*time.Second, "a write through the mesh endpoint", func() error {
		_, err := pgVia(ctx, ports.write, probeInsert)
		return err
	})

	var ok, retried, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if _, err := pgVia(ctx, ports.write, probeInsert); err == nil {
				ok.Add(1)
				continue
			}
			retried.Add(1)
			var err error
			for _, wait := range []time.Duration{100, 200, 400, 800} {
				time.Sleep(wait * time.Millisecond)
				if _, err = pgVia(ctx, ports.write, probeInsert); err == nil {
					break
				}
			}
			if err == nil {
				ok.Add(1)
			} else {
				failed.Add(1)
				t.Logf("write failed after 1.5s of retries: %v", err)
			}
		}
	}()

	start := time.Now()
	restart := func(g *group, m string) {
		t.Helper()
		g.members[m].Stop()
		g.members[m].Start()
		g.waitHealthy(120 * time.Second)
	}
	for _, g := range groups {
		leader := g.waitHealthy(60 * time.Second)
		for _, m := range g.order {
			if m != leader {
				restart(g, m)
			}
		}
		code, body := post(t, g.members[leader].APIAddr, "/switchover", fmt.Sprintf(`{"leader":%q}`, leader))
		if code != 200 {
			t.Fatalf("switchover of %s: %d %s", g.name, code, body)
		}
		g.waitNewLeader(leader, 60*time.Second)
		restart(g, leader)
	}
	close(stop)
	wg.Wait()
	t.Logf("rolling restart of 4 agents (2 switchovers) under write load through the mesh endpoint in %s: %d writes ok, %d needed a retry, %d failed",
		time.Since(start).Round(100*time.Millisecond), ok.Load(), retried.Load(), failed.Load())
	if failed.Load() != 0 {
		t.Fatalf("%d writes failed through the mesh endpoint during the rolling restart", failed.Load())
	}
	if ok.Load() < 30 {
		t.Fatalf("only %d writes went through", ok.Load())
	}
}

func countServers(section string) int {
	n := 0
	for _, l := range splitLines(section) {
		if len(l) > 11 && l[:11] == "    server " {
			n++
		}
	}
	return n
}

func splitLines(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}
