package test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/test/testbed"
)

// hostKillBound is how long after a host's death its replica may take to
// become writable on pgmesh's defaults with a Consul client agent per host
// (automatic session checks: serfHealth, lock-delay 2.5 s): serf's failure
// detection (5.05–8.55 s, median 5.6 s, docs/benchmarks.md) + 2.5 s + the
// acquire and promotion, with margin for a loaded machine. A TTL-only
// session would hold the lock until ≥ 18 s after the kill.
const hostKillBound = 12 * time.Second

// TestHostKillSerfHealth runs a group of two hosts — each its own Consul
// client agent, pgmesh agent and PostgreSQL (testbed.Host) — on a
// three-server Consul cluster, on pgmesh's defaults: no session_checks and
// no lock_delay set, so automatic failure detection ties the sessions to
// the host's serfHealth with a 2.5 s lock-delay. It kills the primary's host
// (all three at once, kill -9) and checks that
//   - the replica is writable within hostKillBound;
//   - Consul invalidated the old leader's session because serf marked the
//     dead node's serfHealth critical, not by TTL: the session vanished
//     when serfHealth went critical, long before its TTL could run out, a
//     TTL-only session on the same node outlived it, and the Consul leader
//     logged the member failure;
//   - the host, restarted, rejoins as a streaming replica.
func TestHostKillSerfHealth(t *testing.T) {
	cl := testbed.StartConsulCluster(t, testbed.ConsulOptions{})
	const name = "hk"
	kv, err := consulkv.New(consulkv.Config{Address: cl.Servers[0].HTTPAddr, Cluster: "itest"})
	if err != nil {
		t.Fatal(err)
	}
	g := &hostGroup{group: &group{t: t, consul: cl.Servers[0].Consul, kv: kv, name: name, members: map[string]*testbed.Agent{}}, hosts: map[string]*testbed.Host{}}
	for i := 0; i < 2; i++ {
		m := fmt.Sprintf("%s-%c", name, 'a'+i)
		h := testbed.StartHost(t, cl, testbed.AgentSpec{Cluster: "itest", Group: name, Name: m,
			TTL: consulkv.DefaultTTL, LoopWait: consulkv.DefaultLoopWait, RetryTimeout: consulkv.DefaultRetryTimeout})
		g.hosts[m], g.members[m] = h, h.Agent
		g.order = append(g.order, m)
	}
	leader := g.waitHealthy(120 * time.Second)
	replica := g.order[0]
	if replica == leader {
		replica = g.order[1]
	}
	dead := g.hosts[leader]
	capi := cl.Servers[0].Client()

	// The leader's session belongs to its host's node and is tied to
	// serfHealth (and nothing else), with the automatic 2.5 s lock-delay.
	pair, _, err := capi.KV().Get(kv.LeaderKey(name), nil)
	if err != nil || pair == nil || pair.Session == "" {
		t.Fatalf("leader key: %+v %v", pair, err)
	}
	sess := pair.Session
	info, _, err := capi.Session().Info(sess, nil)
	if err != nil || info == nil {
		t.Fatalf("leader session %s: %+v %v", sess, info, err)
	}
	if info.Node != dead.Node() || strings.Join(info.NodeChecks, ",") != "serfHealth" || len(info.ServiceChecks) != 0 || info.LockDelay != consulkv.DefaultChecksLockDelay {
		t.Fatalf("leader session %s: node %s, node checks %v, service checks %v, lock-delay %s; want node %s, [serfHealth], none, 2.5s",
			sess, info.Node, info.NodeChecks, info.ServiceChecks, info.LockDelay, dead.Node())
	}
	// Control: a TTL-only session on the same node, created through the
	// host's own client agent. Dying with the node would mean the node was
	// deregistered; only a check-tied session may go.
	hostKV, err := consulkv.New(consulkv.Config{Address: dead.Consul.HTTPAddr, Cluster: "itest"})
	if err != nil {
		t.Fatal(err)
	}
	control, err := hostKV.CreateSession(context.Background(), consulkv.SessionOptions{Name: "hosts-test-control", TTL: 120 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { capi.Session().Destroy(control, nil) })

	// Watch the session and the node's serfHealth from a server.
	var mu sync.Mutex
	var goneAt, criticalAt time.Time
	serfAtGone := ""
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			select {
			case <-stop:
				return
			case <-time.After(25 * time.Millisecond):
			}
			// Session first, then the check: Consul invalidates the session
			// in the same write that marks the check critical, so a gone
			// session read before a passing check would not be serfHealth's
			// doing.
			e, _, err := capi.Session().Info(sess, nil)
			st, serr := cl.NodeCheckStatus(dead.Node(), "serfHealth")
			now := time.Now()
			mu.Lock()
			if err == nil && e == nil && goneAt.IsZero() {
				goneAt, serfAtGone = now, st
			}
			if serr == nil && st == api.HealthCritical && criticalAt.IsZero() {
				criticalAt = now
			}
			mu.Unlock()
		}
	}()
	t0 := dead.KillHost()
	t.Logf("killed host %s (Consul node %s, pgmesh agent, PostgreSQL) at t0", leader, dead.Node())

	var writable time.Duration
	testbed.Eventually(t, hostKillBound+5*time.Second, "replica "+replica+" writable", func() error {
		w, err := g.members[replica].IsWritable(context.Background())
		if err != nil || !w {
			return fmt.Errorf("writable %v, %v", w, err)
		}
		writable = time.Since(t0)
		return nil
	})
	testbed.Eventually(t, 5*time.Second, "session watch saw the session gone", func() error {
		mu.Lock()
		defer mu.Unlock()
		if goneAt.IsZero() || criticalAt.IsZero() {
			return fmt.Errorf("session gone at %v, serfHealth critical at %v", goneAt, criticalAt)
		}
		return nil
	})
	close(stop)
	<-watched
	gone, crit := goneAt.Sub(t0), criticalAt.Sub(t0)
	t.Logf("after the kill: serfHealth critical +%.2fs, leader session gone +%.2fs (serfHealth then %q), %s writable +%.2fs",
		crit.Seconds(), gone.Seconds(), serfAtGone, replica, writable.Seconds())
	if writable > hostKillBound {
		t.Errorf("replica writable %.2fs after the kill; bound %s", writable.Seconds(), hostKillBound)
	}
	if serfAtGone != api.HealthCritical {
		t.Errorf("the leader session was gone while the node's serfHealth was %q: not serfHealth's doing", serfAtGone)
	}
	// Consul frees a TTL-only session no earlier than 2 × its TTL (ttl/2
	// = 10 s) after the last renew, which was at most a loop (2 s) before
	// the kill.
	sessionTTL := consulkv.DefaultTTL / 2
	if ttlEarliest := 2*sessionTTL - consulkv.DefaultLoopWait - 500*time.Millisecond; gone >= ttlEarliest {
		t.Errorf("leader session gone +%.2fs: as late as a TTL expiry (from +%s)", gone.Seconds(), ttlEarliest)
	}
	if d := gone - crit; d < -100*time.Millisecond || d > time.Second {
		t.Errorf("leader session gone +%.2fs, serfHealth critical +%.2fs: not together", gone.Seconds(), crit.Seconds())
	}
	if e, _, err := capi.Session().Info(control, nil); err != nil || e == nil {
		t.Errorf("the TTL-only control session on %s is gone too (%v): the node was deregistered, not its serfHealth failed", dead.Node(), err)
	}
	failed := "member failed, marking health critical: member=" + dead.Node()
	logged := false
	for _, s := range cl.Servers {
		if data, err := os.ReadFile(filepath.Join(s.Dir, "consul.log")); err == nil && strings.Contains(string(data), failed) {
			logged = true
		}
	}
	if !logged {
		t.Errorf("no Consul server logged %q", failed)
	}

	// The host comes back (Consul client agent, then pgmesh) and rejoins
	// as a replica of the new leader.
	if err := dead.Restart(cl, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	if l := g.waitHealthy(90 * time.Second); l != replica {
		t.Errorf("leader after the restart: %s, want %s", l, replica)
	}
}

// hostGroup is a group whose members are hosts.
type hostGroup struct {
	*group
	hosts map[string]*testbed.Host
}
