package test

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/test/testbed"
)

// TestFailsafeQuorumLoss takes two of the three Consul servers away under
// write load, three times (issue 15, item 4). Each member is a host with
// its own Consul client agent, so quorum loss reaches every member alike.
//  1. failsafe_mode on: the primary asks its replica over REST (POST
//     /failsafe, with the REST credentials), the replica cannot reach
//     Consul either and confirms, and the primary stays writable for the
//     whole outage (three times its ttl) without a failed write; when the
//     servers return, the same member leads and every acknowledged write
//     is there.
//  2. failsafe_mode off: the primary stops accepting writes when its lease
//     runs out (today's behaviour), the replica never promotes, and the
//     group comes back when quorum does.
//  3. failsafe_mode on but the replica's agent frozen (the leader cannot
//     reach it over REST) during quorum loss: no confirmation, so the
//     primary stops at the end of its lease.
//  4. failsafe_mode on and the leader alone cut off from Consul (its
//     host's client agent killed): the replica still reaches Consul and
//     refuses, and the group fails over as it would without failsafe.
//
// A sampler checks throughout that two members are never writable at once.
func TestFailsafeQuorumLoss(t *testing.T) {
	const ttl = 8 * time.Second
	cl := testbed.StartConsulCluster(t, testbed.ConsulOptions{})
	hosts := map[string]*testbed.Host{}
	g := &group{t: t, name: "fs", members: map[string]*testbed.Agent{}}
	for _, m := range []string{"fs-a", "fs-b"} {
		spec := testbed.AgentSpec{Cluster: "itest", Group: "fs", Name: m,
			TTL: ttl, LoopWait: time.Second, RetryTimeout: 2 * time.Second,
			DCSExtra:     "failsafe_mode: true",
			RestAPIExtra: "username: admin\npassword: fs-secret"}
		hosts[m] = testbed.StartHost(t, cl, spec)
		g.members[m] = hosts[m].Agent
		g.order = append(g.order, m)
	}
	useServer := func(s *testbed.ConsulNode) {
		kv, err := consulkv.New(consulkv.Config{Address: s.HTTPAddr, Cluster: "itest"})
		if err != nil {
			t.Fatal(err)
		}
		g.kv = kv
	}
	useServer(cl.Servers[0])
	leader := g.waitHealthy(120 * time.Second)
	if err := g.members[leader].Exec(context.Background(), "CREATE TABLE fs(id int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	replica := "fs-a"
	if leader == replica {
		replica = "fs-b"
	}
	s := g.startSampler()

	// Servers 1 and 2 go; server 0 stays up alone, without a quorum.
	loseQuorum := func() {
		for _, n := range cl.Servers[1:] {
			n.Kill()
		}
	}
	regainQuorum := func() {
		for _, n := range cl.Servers[1:] {
			if err := n.Restart(60 * time.Second); err != nil {
				t.Fatal(err)
			}
		}
		if err := cl.WaitHealthy(60 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	setFailsafe := func(on bool) {
		testbed.Eventually(t, 30*time.Second, fmt.Sprintf("failsafe_mode %v stored", on), func() error {
			cfg, idx, err := g.kv.ReadConfig(context.Background())
			if err != nil || cfg == nil {
				return fmt.Errorf("config %v %v", cfg, err)
			}
			cfg.FailsafeMode = &on
			if ok, err := g.kv.CAS(context.Background(), g.kv.ConfigKey(), cfg, idx); err != nil || !ok {
				return fmt.Errorf("CAS %v %v", ok, err)
			}
			return nil
		})
		want := 200
		if !on {
			want = 502
		}
		for _, m := range g.order {
			testbed.Eventually(t, 30*time.Second, m+" adopts failsafe_mode", func() error {
				if code, _, _ := g.members[m].APIStatus("/failsafe"); code != want {
					return fmt.Errorf("GET /failsafe = %d, want %d", code, want)
				}
				return nil
			})
		}
	}

	// 1. Failsafe on: the primary rides out the outage.
	w := g.startWriter("fs")
	time.Sleep(2 * time.Second) // some writes before the outage
	lost := time.Now()
	loseQuorum()
	sawActive := false
	for time.Since(lost) < 3*ttl {
		if r, err := g.members[replica].IsWritable(context.Background()); err == nil && r {
			t.Fatalf("%s became writable without Consul", replica)
		}
		if time.Since(lost) > ttl+2*time.Second {
			// Past the lease: only failsafe keeps the primary writable.
			code, body, err := g.members[leader].APIStatus("/primary")
			if code != 200 {
				t.Fatalf("%.1fs into quorum loss with failsafe on: %s /primary = %d (%v, %v)\n%s", time.Since(lost).Seconds(), leader, code, body, err, tail(g.members[leader].Log(), 30))
			}
			if body["failsafe_mode_is_active"] == true {
				sawActive = true
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	acked, gap := w.finish()
	if !sawActive {
		t.Errorf("%s never reported failsafe_mode_is_active during the outage", leader)
	}
	if !strings.Contains(g.members[replica].Log(), "promising not to take over") {
		t.Errorf("%s did not log its failsafe promise", replica)
	}
	regainQuorum()
	after := g.waitHealthy(120 * time.Second)
	if after != leader {
		t.Errorf("failsafe on: leader changed %s -> %s across the quorum loss", leader, after)
	}
	missing, err := g.missing(after, "fs", acked)
	if err != nil || len(missing) > 0 {
		t.Errorf("failsafe on: %d acknowledged writes missing on %s (%v)", len(missing), after, err)
	}
	t.Logf("failsafe on: %.0fs without quorum, %d writes acknowledged, longest write gap %s, leader %s -> %s",
		(3 * ttl).Seconds(), len(acked), gap.Round(time.Millisecond), leader, after)
	if gap > 2*time.Second {
		t.Errorf("failsafe on: writes stopped for %s during the quorum loss", gap)
	}
	leader = after

	// 2. Failsafe off: the primary stops at the end of its lease.
	setFailsafe(false)
	lost = time.Now()
	loseQuorum()
	stopped := g.waitReadOnly(leader, lost, ttl+10*time.Second)
	t.Logf("failsafe off: %s stopped accepting writes %.1fs into the quorum loss (ttl %s)", leader, stopped.Seconds(), ttl)
	if stopped > ttl+3*time.Second {
		t.Errorf("failsafe off: primary writable for %s without Consul, beyond its lease", stopped)
	}
	if r, err := g.members[replica].IsWritable(context.Background()); err == nil && r {
		t.Errorf("failsafe off: %s became writable without Consul", replica)
	}
	regainQuorum()
	leader = g.waitHealthy(120 * time.Second)
	replica = "fs-a"
	if leader == replica {
		replica = "fs-b"
	}

	// 3. Failsafe on, but the leader cannot reach its replica's agent.
	setFailsafe(true)
	confirmed := strings.Count(g.members[leader].Log(), "every member of the group confirmed")
	g.members[replica].Signal(syscall.SIGSTOP)
	lost = time.Now()
	loseQuorum()
	stopped = g.waitReadOnly(leader, lost, ttl+15*time.Second)
	t.Logf("failsafe on, replica's agent frozen: %s stopped accepting writes %.1fs into the quorum loss", leader, stopped.Seconds())
	time.Sleep(3 * time.Second) // a failsafe round in flight must end unanswered
	if n := strings.Count(g.members[leader].Log(), "every member of the group confirmed"); n != confirmed {
		t.Errorf("%s reported a confirmed failsafe round while its replica's agent was frozen", leader)
	}
	if r, err := g.members[leader].IsWritable(context.Background()); err == nil && r {
		t.Errorf("%s writable again without Consul and without its replica's confirmation", leader)
	}
	// Quorum first: a replica thawed during the outage may still answer
	// the last request in flight, which is a valid confirmation then.
	regainQuorum()
	g.members[replica].Signal(syscall.SIGCONT)
	leader = g.waitHealthy(120 * time.Second)

	// 4. Failsafe on, the leader cut off from Consul alone (its host's
	// Consul client agent killed): the replica still reaches Consul and
	// refuses, so failsafe does not hold a primary the rest of the group
	// can replace; the group fails over as without failsafe mode.
	cut := time.Now()
	hosts[leader].Consul.Kill()
	moved := g.waitNewLeader(leader, 60*time.Second)
	t.Logf("failsafe on, %s cut off from Consul alone: %s leads %.1fs later", leader, moved, time.Since(cut).Seconds())
	if !strings.Contains(g.members[leader].Log(), "consul is reachable from") {
		t.Errorf("%s's failsafe round was not refused by a member that reaches Consul", leader)
	}
	if err := hosts[leader].Consul.Restart(60 * time.Second); err != nil {
		t.Fatal(err)
	}
	g.waitHealthy(120 * time.Second)

	overlaps, maxBoth := s.finish()
	if len(overlaps) > 0 {
		t.Errorf("two members writable at once (longest %s): %v", maxBoth, overlaps)
	}
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
