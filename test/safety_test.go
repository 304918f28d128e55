package test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/pgmesh/pgmesh/test/testbed"
)

// The safety tests reproduce, against real processes, the lease and
// fencing defects of the "safety first" issue, and keep them fixed: a live
// ttl or lock_delay change, an unsafe config written past the CLI, a slow
// crash recovery, and an agent frozen right before it starts a primary.
// Each one samples every member's pg_is_in_recovery() (the fault suite's
// sampler) and fails on two writable members beyond the lease margin.

// sessionOf returns what Consul holds for the session of member m (the
// session its member key is locked with).
func sessionOf(g *group, m string) (*api.SessionEntry, error) {
	cl, err := api.NewClient(&api.Config{Address: g.consul.HTTPAddr})
	if err != nil {
		return nil, err
	}
	p, _, err := cl.KV().Get(g.kv.MemberKey(g.name, m), nil)
	if err != nil {
		return nil, err
	}
	if p == nil || p.Session == "" {
		return nil, fmt.Errorf("member key of %s not held by a session", m)
	}
	e, _, err := cl.Session().Info(p.Session, nil)
	if err != nil || e == nil {
		return nil, fmt.Errorf("session %s of %s: %v", p.Session, m, err)
	}
	return e, nil
}

// waitSessions waits until every member's session is the one the new
// settings ask for (the agents rolled their sessions over).
func waitSessions(t *testing.T, g *group, ttl, lockDelay time.Duration) {
	t.Helper()
	if err := sessionsRolled(g, ttl, lockDelay, 30*time.Second); err != nil {
		t.Fatal(err)
	}
}

// sessionsRolled is waitSessions without failing the test.
func sessionsRolled(g *group, ttl, lockDelay, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		err := func() error {
			for _, m := range g.order {
				e, err := sessionOf(g, m)
				if err != nil {
					return err
				}
				if e.TTL != ttl.String() || e.LockDelay != lockDelay {
					return fmt.Errorf("%s: session %s has TTL %s lock-delay %s", m, e.ID, e.TTL, e.LockDelay)
				}
			}
			return nil
		}()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sessions not rolled to TTL %s lock-delay %s within %s: %v", ttl, lockDelay, within, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// freezeLeader SIGSTOPs the leader's agent only (its postmaster and fence
// watchdog run on) until another member leads and the old primary is no
// longer writable, then resumes it; it fails on two writable members
// beyond margin and returns how long the group had no writable primary.
func freezeLeader(t *testing.T, g *group, margin, bound time.Duration) (newLeader string) {
	t.Helper()
	leader := g.waitHealthy(60 * time.Second)
	s := startOverlapSampler(g)
	a := g.members[leader]
	start := time.Now()
	a.Signal(syscall.SIGSTOP)
	newLeader = g.waitNewLeader(leader, bound)
	elected := time.Since(start)
	testbed.Eventually(t, 30*time.Second, "new leader "+newLeader+" writable", func() error {
		if w, err := g.members[newLeader].IsWritable(context.Background()); err != nil || !w {
			return fmt.Errorf("not writable yet: %v", err)
		}
		return nil
	})
	time.Sleep(time.Second) // keep sampling past the promotion
	a.Signal(syscall.SIGCONT)
	windows, rounds := s.finish()
	t.Logf("froze the agent of leader %s: %s elected after %s; sampler %d rounds", leader, newLeader, elected.Round(10*time.Millisecond), rounds)
	for _, w := range windows {
		if w.length() > margin {
			t.Errorf("two writable members for %s (lease margin %s): %s", w.length().Round(time.Millisecond), margin, w)
		} else {
			t.Logf("two writable members within the lease margin: %s", w)
		}
	}
	if rounds < 20 {
		t.Errorf("the sampler ran only %d rounds", rounds)
	}
	g.waitHealthy(90 * time.Second)
	return newLeader
}

// TestLeaseFollowsLiveTTLChange: ttl 4s → 20s → 4s on a running group; each
// time the leader's agent is frozen after the change. Before the fix the
// old session (TTL 2s) was freed ~4s after the last renew while the local
// lease had grown to 8s: two members writable from 3.2s to 6.96s.
func TestLeaseFollowsLiveTTLChange(t *testing.T) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	g := startGroup(t, c, "lt", 3, nil, nil) // ttl 4s, loop_wait 1s, retry_timeout 1.5s
	g.waitHealthy(120 * time.Second)
	p := newPgmeshCLI(t, c.HTTPAddr, "itest")

	p.ok("config", "set", "ttl=20s", "--force")
	waitSessions(t, g, 10*time.Second, time.Millisecond)
	// Lease 8s; Consul frees the session 10–20s after the last renew.
	freezeLeader(t, g, fsLeaseMargin, 60*time.Second)

	p.ok("config", "set", "ttl=4s", "--force")
	waitSessions(t, g, 2*time.Second, time.Millisecond)
	start := time.Now()
	freezeLeader(t, g, fsLeaseMargin, 30*time.Second)
	t.Logf("failover at ttl 4s after rolling back took %s (incl. recovery)", time.Since(start).Round(100*time.Millisecond))
}

// TestLeaseFollowsLiveLockDelayChange: with the session tied to the
// liveness check the fence deadline is lock_delay after the last renew.
// lock_delay 3s → 6s → 3s at ttl 20s (lease 8s, so lock-delay decides);
// each time the leader's agent is frozen. Before the fix the fence waited
// for the new lock_delay while the session still had the old one.
func TestLeaseFollowsLiveLockDelayChange(t *testing.T) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	g := startGroup(t, c, "ld", 3, nil, func(s *testbed.AgentSpec) {
		s.TTL, s.LockDelay = 20*time.Second, 3*time.Second
		s.ConsulExtra = "session_checks: [liveness]"
	})
	g.waitHealthy(120 * time.Second)
	p := newPgmeshCLI(t, c.HTTPAddr, "itest")

	p.ok("config", "set", "lock_delay=6s", "--force")
	waitSessions(t, g, 10*time.Second, 6*time.Second)
	freezeLeader(t, g, fsLeaseMargin, 60*time.Second)

	p.ok("config", "set", "lock_delay=3s", "--force")
	waitSessions(t, g, 10*time.Second, 3*time.Second)
	freezeLeader(t, g, fsLeaseMargin, 60*time.Second)
}

// TestUnsafeConfigIsNeverAdopted: with session checks, a lock_delay below
// 1s (0 is automatic: 2.5s) would leave the leader's keepalive too little
// room and, before the fence deadline followed lock-delay, let a successor
// take the lock while the old primary kept writing.
// config set and PATCH /config refuse it naming the rule; a value written
// straight into Consul is not adopted (status says so) and a freeze still
// fails over safely.
func TestUnsafeConfigIsNeverAdopted(t *testing.T) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	g := startGroup(t, c, "uc", 2, nil, func(s *testbed.AgentSpec) {
		s.LockDelay = 3 * time.Second
		s.ConsulExtra = "session_checks: [liveness]"
	})
	leader := g.waitHealthy(120 * time.Second)
	p := newPgmeshCLI(t, c.HTTPAddr, "itest")

	// Member keys publish the session checks the rule depends on.
	testbed.Eventually(t, 20*time.Second, "member keys publish session_checks", func() error {
		v, err := g.kv.ReadGroup(context.Background(), g.name)
		if err != nil {
			return err
		}
		for _, m := range g.order {
			if mk := v.Members[m]; mk == nil || len(mk.SessionChecks) == 0 {
				return fmt.Errorf("member key of %s: %+v", m, mk)
			}
		}
		return nil
	})
	r := p.fails(1, []string{"session-checks-lock-delay rule broken", "must be 0 (automatic: 2.5s) or at least 1s", "nothing written"}, "config", "set", "lock_delay=500ms", "--force")
	t.Logf("config set refused: %s", strings.TrimSpace(r.stderr))
	p.fails(1, []string{"session-checks-lock-delay rule broken"}, "config", "set", "lock_delay=900ms", "--force")
	code, body, err := patchJSON(g.members[leader].APIAddr, "/config", `{"lock_delay":"0.5s"}`)
	if err != nil || code != 400 || !strings.Contains(body, "session-checks-lock-delay rule broken") {
		t.Fatalf("PATCH /config lock_delay 0.5s: %d %q %v", code, body, err)
	}

	// Written past every check (an older pgmesh, a hand edit): not adopted.
	cl, err := api.NewClient(&api.Config{Address: c.HTTPAddr})
	if err != nil {
		t.Fatal(err)
	}
	pair, _, err := cl.KV().Get(g.kv.ConfigKey(), nil)
	if err != nil || pair == nil {
		t.Fatalf("config key: %v", err)
	}
	unsafe := strings.Replace(string(pair.Value), `"lock_delay":"3s"`, `"lock_delay":"500ms"`, 1)
	if unsafe == string(pair.Value) {
		t.Fatalf("config value has no lock_delay 3s: %s", pair.Value)
	}
	if _, err := cl.KV().Put(&api.KVPair{Key: g.kv.ConfigKey(), Value: []byte(unsafe)}, nil); err != nil {
		t.Fatal(err)
	}
	testbed.Eventually(t, 20*time.Second, "status names the refused config", func() error {
		r := p.run("status")
		for _, m := range g.order {
			if !strings.Contains(r.stdout, "Member "+m+": not adopting the stored cluster config") {
				return fmt.Errorf("no config problem for %s:\n%s", m, r.stdout)
			}
		}
		if _, st, err := g.members[leader].APIStatus("/patroni"); err != nil || !strings.Contains(fmt.Sprint(st["config_problem"]), "session-checks-lock-delay") {
			return fmt.Errorf("REST status config_problem = %v (%v)", st["config_problem"], err)
		}
		return nil
	})
	for _, m := range g.order {
		if e, err := sessionOf(g, m); err != nil || e.LockDelay != 3*time.Second {
			t.Fatalf("%s: session lock-delay changed to an unsafe value: %+v %v", m, e, err)
		}
	}
	if !strings.Contains(readFile(t, g.members[leader].LogPath), "not adopting the stored cluster config") {
		t.Fatal("the leader did not log why it kept its config")
	}
	// The leader still fails over safely.
	freezeLeader(t, g, fsLeaseMargin, 60*time.Second)
}

// TestSlowCrashRecoveryIsNotAborted: kill -9 of a lone primary's
// postmaster with a lot of WAL to replay. Before the fix the watchdog,
// armed once with the lease (1.6s), aborted crash recovery on every
// attempt and the group stayed without a primary. PGMESH_SAFETY_WAL_MB
// sets the WAL to replay (default 1024).
func TestSlowCrashRecoveryIsNotAborted(t *testing.T) {
	walMB := 1024
	if v := os.Getenv("PGMESH_SAFETY_WAL_MB"); v != "" {
		fmt.Sscanf(v, "%d", &walMB)
	}
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	g := startGroup(t, c, "sr", 1, nil, func(s *testbed.AgentSpec) {
		// No checkpoint while the WAL is written: recovery replays it all.
		s.DCSExtra = "parameters:\n  max_wal_size: 8GB\n  checkpoint_timeout: 1h\n  full_page_writes: \"on\""
	})
	leader := g.waitHealthy(120 * time.Second)
	a := g.members[leader]
	ctx := context.Background()
	if err := a.Exec(ctx, "CHECKPOINT"); err != nil {
		t.Fatal(err)
	}
	if err := a.Exec(ctx, "CREATE TABLE big(id bigint, pad text)"); err != nil {
		t.Fatal(err)
	}
	genStart := time.Now()
	rows := walMB * 1024 * 1024 / 1200
	conn, err := a.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const chunk = 50000
	for from := 1; from <= rows; from += chunk {
		to := min(from+chunk-1, rows)
		if _, err := conn.Exec(ctx, "INSERT INTO big SELECT g, repeat(md5(g::text), 32) FROM generate_series($1::int, $2::int) g", from, to); err != nil {
			t.Fatal(err)
		}
	}
	var walBytes int64
	err = conn.QueryRow(ctx, "SELECT pg_current_wal_lsn() - redo_lsn FROM pg_control_checkpoint()").Scan(&walBytes)
	conn.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %d MB of WAL since the last checkpoint in %s", walBytes>>20, time.Since(genStart).Round(100*time.Millisecond))

	killedAt := time.Now()
	a.KillPostmaster()
	testbed.Eventually(t, 5*time.Minute, "primary back after crash recovery", func() error {
		if w, err := a.IsWritable(ctx); err != nil || !w {
			return fmt.Errorf("not writable: %v", err)
		}
		return nil
	})
	back := time.Since(killedAt)
	// It must stay up: the old code let the watchdog abort it right after.
	for end := time.Now().Add(2 * fsTTL); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if w, err := a.IsWritable(ctx); err != nil || !w {
			t.Fatalf("primary went away %s after it came back (watchdog fired %d times): %v",
				time.Since(killedAt)-back, strings.Count(readFile(t, a.LogPath), "lease ran out without renewal"), err)
		}
	}
	// ~900k rows right after crash recovery, on a loaded machine under
	// -race: counting them took over 3s in one CI run.
	n, err := g.countWithin(leader, "big", time.Minute)
	if err != nil || n != rows {
		t.Fatalf("rows after recovery: %d (%v), want %d", n, err, rows)
	}
	log := readFile(t, a.LogPath)
	fenced := strings.Count(log, "lease ran out without renewal")
	t.Logf("crash recovery of %d MB took %s (lease 1.6s); watchdog fired %d times", walBytes>>20, back.Round(100*time.Millisecond), fenced)
	if fenced > 0 {
		t.Fatalf("the fence watchdog aborted crash recovery %d times", fenced)
	}
	if l, err := g.leader(); err != nil || l != leader {
		t.Fatalf("leader after recovery: %q %v", l, err)
	}
}

// TestFrozenBeforeStartStaysFenced: the leader's postmaster is killed and
// its agent freezes right before pg_ctl start (a fault point, because a
// SIGSTOP from outside hits that instant only by luck). Another member is
// promoted meanwhile; when the agent resumes, its lease is long gone, so
// the start must not produce a second writable primary, and the member must
// come back as a replica by itself.
func TestFrozenBeforeStartStaysFenced(t *testing.T) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	g := startGroup(t, c, "fz", 3, nil, func(s *testbed.AgentSpec) {
		if strings.HasSuffix(s.Name, "-a") {
			s.Env = []string{"PGMESH_FAULT_POINT=before-start=stop"}
		}
	})
	leader := g.waitHealthy(120 * time.Second)
	if leader != "fz-a" {
		// Only fz-a carries the fault point: hand the lock to it.
		p := newPgmeshCLI(t, c.HTTPAddr, "itest")
		p.ok("switchover", "--group", g.name, "--to", "fz-a", "--force")
		testbed.Eventually(t, 60*time.Second, "fz-a leads", func() error {
			if l, _ := g.leader(); l != "fz-a" {
				return fmt.Errorf("leader %s", l)
			}
			return nil
		})
		leader = g.waitHealthy(60 * time.Second)
	}
	a := g.members[leader]
	s := startOverlapSampler(g)
	a.KillPostmaster()
	testbed.Eventually(t, 30*time.Second, "agent stopped at the fault point", func() error {
		if !processStopped(a.AgentPID()) {
			return errors.New("agent still running")
		}
		return nil
	})
	newLeader := g.waitNewLeader(leader, 60*time.Second)
	testbed.Eventually(t, 30*time.Second, newLeader+" writable", func() error {
		if w, err := g.members[newLeader].IsWritable(context.Background()); err != nil || !w {
			return fmt.Errorf("not writable: %v", err)
		}
		return nil
	})
	resumedAt := time.Now()
	a.Signal(syscall.SIGCONT)
	time.Sleep(5 * time.Second)
	windows, rounds := s.finish()
	for _, w := range windows {
		t.Errorf("two writable members after the frozen agent resumed: %s", w)
	}
	t.Logf("agent resumed %s after %s was elected; sampler %d rounds, %d overlaps", resumedAt.Format("15:04:05.000"), newLeader, rounds, len(windows))
	log := readFile(t, a.LogPath)
	if !strings.Contains(log, "not starting PostgreSQL: the lease ran out just before the start") {
		t.Fatalf("the resumed agent did not refuse the start")
	}
	g.waitHealthy(120 * time.Second)
}

func patchJSON(addr, path, body string) (int, string, error) {
	req, err := http.NewRequest(http.MethodPatch, "http://"+addr+path, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// processStopped reports whether pid is in the stopped state (T).
func processStopped(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(data)
	i := strings.LastIndex(s, ")")
	return i > 0 && len(s) > i+2 && (s[i+2] == 'T' || s[i+2] == 't')
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}
