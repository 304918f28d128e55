package test

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/pgmesh/pgmesh/test/testbed"
)

// TestPrimaryCutOffAndFrozen checks fencing: a primary cut off from Consul,
// and a primary whose agent is frozen (SIGSTOP) longer than the ttl, must
// stop accepting writes before another member is promoted. A sampler checks
// all members' pg_is_in_recovery() every few milliseconds throughout.
func TestPrimaryCutOffAndFrozen(t *testing.T) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	proxies := map[string]*testbed.Proxy{}
	g := startGroup(t, c, "g2", 3, func(m string) string {
		proxies[m] = testbed.StartProxy(t, c.HTTPAddr)
		return proxies[m].Addr
	}, nil)
	ctx := context.Background()
	leader := g.waitHealthy(90 * time.Second)
	if err := g.members[leader].Exec(ctx, "CREATE TABLE t(id int primary key)"); err != nil {
		t.Fatal(err)
	}
	s := g.startSampler()

	// 1. Cut the primary off from Consul (blackholed: its requests hang).
	cut := time.Now()
	proxies[leader].Cut()
	fencedAfter := g.waitReadOnly(leader, cut, 15*time.Second)
	next := g.waitNewLeader(leader, 30*time.Second)
	t.Logf("primary %s cut off from Consul: read-only after %s, %s writable after %s (lease %s)", leader, fencedAfter.Round(10*time.Millisecond), next, time.Since(cut).Round(10*time.Millisecond), 1600*time.Millisecond)
	if fencedAfter > 2*time.Second+time.Second {
		t.Errorf("cut-off primary stayed writable %s, longer than its 1.6s lease plus 1s", fencedAfter)
	}
	proxies[leader].Restore()
	g.waitHealthy(90 * time.Second)
	if err := g.members[next].Exec(ctx, "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	g.waitRows(leader, "t", 1, 30*time.Second)

	// 2. Freeze the new primary's agent for three ttls. Its fence watchdog
	// must stop PostgreSQL when the lease runs out.
	frozen := next
	g.members[frozen].Signal(syscall.SIGSTOP)
	stopAt := time.Now()
	frozenFenced := g.waitReadOnly(frozen, stopAt, 15*time.Second)
	third := g.waitNewLeader(frozen, 30*time.Second)
	t.Logf("agent of %s frozen: read-only after %s, %s writable after %s", frozen, frozenFenced.Round(10*time.Millisecond), third, time.Since(stopAt).Round(10*time.Millisecond))
	for time.Since(stopAt) < 12*time.Second {
		time.Sleep(100 * time.Millisecond) // keep it frozen for 3 ttls, the sampler keeps watching
	}
	g.members[frozen].Signal(syscall.SIGCONT)
	// It must not regain the lock, and must come back as a replica.
	g.waitHealthy(90 * time.Second)
	if l, _ := g.leader(); l != third {
		t.Fatalf("leader is %s after the frozen agent resumed, want %s", l, third)
	}
	overlaps, longest := s.finish()
	if len(overlaps) > 0 {
		t.Fatalf("two writable members at once (longest %s): %v", longest, overlaps)
	}
	t.Logf("sampler saw no instant with two writable members")
}

// TestSwitchoverGarbageAndShutdown covers the operator's planned paths on
// one group: a switchover under write load (no acknowledged write lost),
// garbage values in Consul (logged, ignored), a clean stop of the leader
// (fails over in about one loop), and a foreign data dir (refused).
func TestSwitchoverGarbageAndShutdown(t *testing.T) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	g := startGroup(t, c, "g3", 3, nil, nil)
	ctx := context.Background()
	leader := g.waitHealthy(90 * time.Second)
	if err := g.members[leader].Exec(ctx, "CREATE TABLE w(id int primary key)"); err != nil {
		t.Fatal(err)
	}

	// Switchover to a named candidate while a client writes.
	candidate := g.order[0]
	if candidate == leader {
		candidate = g.order[1]
	}
	w := g.startWriter("w")
	time.Sleep(time.Second)
	code, body := post(t, g.members[leader].APIAddr, "/switchover", fmt.Sprintf(`{"leader":%q,"candidate":%q}`, leader, candidate))
	if code != 200 {
		t.Fatalf("switchover: %d %s", code, body)
	}
	if l, _ := g.leader(); l != candidate {
		t.Fatalf("leader after switchover is %q, want %s", l, candidate)
	}
	time.Sleep(2 * time.Second)
	acked, gap := w.finish()
	if len(acked) < 50 {
		t.Fatalf("only %d writes acknowledged", len(acked))
	}
	miss, err := g.missing(candidate, "w", acked)
	if err != nil {
		t.Fatal(err)
	}
	if len(miss) > 0 {
		t.Fatalf("acknowledged writes lost in the switchover: %v", miss)
	}
	t.Logf("switchover %s -> %s: %d acknowledged writes, none lost, longest write gap %s", leader, candidate, len(acked), gap.Round(10*time.Millisecond))
	g.waitHealthy(60 * time.Second)
	g.waitRows(leader, "w", len(acked), 30*time.Second)
	leader = candidate

	// Garbage in member, config and failover keys: logged and ignored.
	kv := c.Client().KV()
	for _, key := range []string{g.kv.MemberKey("g3", "ghost"), g.kv.ConfigKey(), g.kv.FailoverKey("g3")} {
		if _, err := kv.Put(&api.KVPair{Key: key, Value: []byte(`{"version":1,"garbage`)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(3 * time.Second)
	for _, m := range g.order {
		if _, exited := g.members[m].Wait(0); exited {
			t.Fatalf("agent %s exited after garbage in Consul", m)
		}
	}
	if err := g.members[leader].Exec(ctx, "INSERT INTO w VALUES (-1)"); err != nil {
		t.Fatalf("leader not writable after garbage: %v", err)
	}
	testbed.Eventually(t, 10*time.Second, "garbage logged with its key", func() error {
		log := g.members[leader].Log()
		for _, key := range []string{g.kv.MemberKey("g3", "ghost"), g.kv.ConfigKey(), g.kv.FailoverKey("g3")} {
			if !containsStr(log, key) {
				return fmt.Errorf("log does not name %s", key)
			}
		}
		return nil
	})
	for _, key := range []string{g.kv.MemberKey("g3", "ghost"), g.kv.FailoverKey("g3")} {
		kv.Delete(key, nil)
	}
	g.waitHealthy(30 * time.Second)

	// A clean stop of the leader hands over within about one loop.
	stopped := leader
	stopAt := time.Now()
	g.members[stopped].Stop()
	var next string
	testbed.Eventually(t, 30*time.Second, "a replica takes over after a clean stop", func() error {
		for _, m := range g.order {
			if m == stopped {
				continue
			}
			if w, err := g.members[m].IsWritable(ctx); err == nil && w {
				next = m
				return nil
			}
		}
		return errors.New("no writable member")
	})
	took := time.Since(stopAt)
	t.Logf("clean stop of leader %s: %s writable after %s", stopped, next, took.Round(10*time.Millisecond))
	if took > 8*time.Second {
		t.Errorf("planned stop took %s to fail over, want about one loop", took)
	}

	// A member whose data dir belongs to another cluster refuses to run.
	foreign := testbed.NewAgent(t, testbed.AgentSpec{Cluster: "itest", Group: "g3", Name: "g3-x", ConsulAddr: c.HTTPAddr})
	foreign.InitDataDir()
	foreign.Start()
	code2, exited := foreign.Wait(30 * time.Second)
	if !exited || code2 != 3 {
		t.Fatalf("foreign data dir: agent exited=%v code=%d, want exit code 3", exited, code2)
	}
	if !containsStr(foreign.Log(), "foreign data directory") {
		t.Fatalf("foreign data dir: log does not say why:\n%s", foreign.Log())
	}
}

// TestSessionTiedToLiveness: with consul.session_checks [liveness] a dead
// primary host frees the lock as soon as its liveness check fails, long
// before the ttl (20s here); a frozen agent's primary is fenced within
// lock_delay so the faster takeover stays safe.
func TestSessionTiedToLiveness(t *testing.T) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	g := startGroup(t, c, "g5", 3, nil, func(s *testbed.AgentSpec) {
		s.TTL = 20 * time.Second
		s.LoopWait = time.Second
		s.RetryTimeout = time.Second
		s.LockDelay = 2500 * time.Millisecond
		s.ConsulExtra = "session_checks: [liveness]"
	})
	ctx := context.Background()
	leader := g.waitHealthy(90 * time.Second)
	s := g.startSampler()

	killed := time.Now()
	g.members[leader].KillHost()
	var next string
	testbed.Eventually(t, 30*time.Second, "a replica becomes writable", func() error {
		for _, m := range g.order {
			if m == leader {
				continue
			}
			if w, err := g.members[m].IsWritable(ctx); err == nil && w {
				next = m
				return nil
			}
		}
		return errors.New("none writable")
	})
	took := time.Since(killed)
	t.Logf("session tied to liveness, ttl 20s: kill -9 of %s's host -> %s writable after %s", leader, next, took.Round(10*time.Millisecond))
	if took > 10*time.Second {
		t.Errorf("failover took %s; the liveness check should free the lock well before the 20s ttl", took)
	}

	frozen := next
	g.members[frozen].Signal(syscall.SIGSTOP)
	stopAt := time.Now()
	third := g.waitNewLeader(frozen, 30*time.Second)
	t.Logf("frozen agent %s: %s writable after %s", frozen, third, time.Since(stopAt).Round(10*time.Millisecond))
	g.members[frozen].Signal(syscall.SIGCONT)
	overlaps, longest := s.finish()
	if len(overlaps) > 0 {
		t.Fatalf("two writable members at once (longest %s): %v", longest, overlaps)
	}
}
