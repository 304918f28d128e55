package consulkv_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/test/testbed"
)

// The lease follows the session Consul holds: a changed ttl or lock_delay
// counts only after Roll, and Roll hands the leader key and the member key
// over without the lock ever being free.
func TestRollHandsTheLockToANewSession(t *testing.T) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	cl := newClient(t, c)
	ctx := context.Background()
	l := cl.NewLock("g1", "a", consulkv.LockOptions{TTL: 4 * time.Second, LockDelay: 3 * time.Second})
	if _, err := l.EnsureSession(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, err := l.Acquire(ctx); !ok || err != nil {
		t.Fatalf("acquire: %v %v", ok, err)
	}
	m := &consulkv.MemberStatus{Version: consulkv.ValueVersion, Name: "a", Group: "g1", Role: consulkv.RolePrimary, State: "running"}
	if err := cl.PutMember(ctx, "g1", l.Session(), m); err != nil {
		t.Fatal(err)
	}
	held := l.Held()
	if held.TTL != 2*time.Second || held.LockDelay != 3*time.Second {
		t.Fatalf("session as Consul holds it: ttl %s lock-delay %s, want 2s and 3s", held.TTL, held.LockDelay)
	}
	if l.NeedsRoll() {
		t.Fatal("a fresh session needs no roll")
	}

	// ttl 4s → 20s: nothing changes until the roll.
	l.SetOptions(consulkv.LockOptions{TTL: 20 * time.Second, LockDelay: 8 * time.Second})
	if !l.NeedsRoll() {
		t.Fatal("changed options must ask for a roll")
	}
	if lease := l.LeaseUntil().Sub(held.RenewedAt); lease > 2*time.Second {
		t.Fatalf("lease %s before the roll is longer than the session TTL 2s Consul enforces", lease)
	}
	if fence := l.FenceUntil().Sub(held.RenewedAt); fence > 2*time.Second {
		t.Fatalf("fence %s before the roll", fence)
	}

	// A watcher sees the leader key's session at every change: it must
	// never be free.
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	freed := make(chan struct{}, 1)
	go cl.WatchKey(wctx, cl.LeaderKey("g1"), consulkv.WatchOptions{Wait: time.Minute}, func(_ uint64, p *api.KVPair) {
		if p == nil || p.Session == "" {
			select {
			case freed <- struct{}{}:
			default:
			}
		}
	})
	old, next, err := l.Roll(ctx, []string{cl.LeaderKey("g1"), cl.MemberKey("g1", "a")})
	if err != nil {
		t.Fatal(err)
	}
	if next.TTL != 10*time.Second || next.LockDelay != 8*time.Second || l.Session() != next.ID || next.ID == old.ID {
		t.Fatalf("after roll: session %s (was %s) ttl %s lock-delay %s", next.ID, old.ID, next.TTL, next.LockDelay)
	}
	if l.NeedsRoll() {
		t.Fatal("still needs a roll after rolling")
	}
	g, err := cl.ReadGroup(ctx, "g1")
	if err != nil {
		t.Fatal(err)
	}
	if g.Leader == nil || g.Leader.Session != next.ID || g.Leader.Member != "a" {
		t.Fatalf("leader key after roll: %+v, want held by %s", g.Leader, next.ID)
	}
	if g.Members["a"] == nil {
		t.Fatal("member key lost in the roll")
	}
	if ok, err := cl.SessionExists(ctx, old.ID); err != nil || ok {
		t.Fatalf("old session still exists (%v %v)", ok, err)
	}
	time.Sleep(300 * time.Millisecond)
	select {
	case <-freed:
		t.Fatal("the leader key was free during the roll")
	default:
	}
	// Another member cannot take it (no lock-delay window either).
	other := cl.NewLock("g1", "b", consulkv.LockOptions{TTL: 4 * time.Second})
	if _, err := other.EnsureSession(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, err := other.Acquire(ctx); ok || err != nil {
		t.Fatalf("another member acquired the rolled lock: %v %v", ok, err)
	}

	// And back down: 20s → 4s shortens the lease at once.
	l.SetOptions(consulkv.LockOptions{TTL: 4 * time.Second})
	if _, _, err := l.Roll(ctx, []string{cl.LeaderKey("g1"), cl.MemberKey("g1", "a")}); err != nil {
		t.Fatal(err)
	}
	h := l.Held()
	if h.TTL != 2*time.Second || h.LockDelay != time.Millisecond {
		t.Fatalf("after rolling back: ttl %s lock-delay %s", h.TTL, h.LockDelay)
	}
	if lease := l.LeaseUntil().Sub(h.RenewedAt); lease > 2*time.Second {
		t.Fatalf("lease %s after rolling back to TTL 2s", lease)
	}
	// The lock still follows the session: stop renewing and it expires.
	testbed.Eventually(t, 15*time.Second, "rolled session expires without renewals", func() error {
		g, err := cl.ReadGroup(ctx, "g1")
		if err != nil {
			return err
		}
		if g.Leader != nil {
			return errors.New("still held")
		}
		return nil
	})
}

// Roll of a member that holds no lock moves only its member key.
func TestRollWithoutTheLock(t *testing.T) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	cl := newClient(t, c)
	ctx := context.Background()
	l := cl.NewLock("g1", "b", consulkv.LockOptions{TTL: 4 * time.Second})
	if _, err := l.EnsureSession(ctx); err != nil {
		t.Fatal(err)
	}
	m := &consulkv.MemberStatus{Version: consulkv.ValueVersion, Name: "b", Group: "g1", Role: consulkv.RoleReplica, State: "running"}
	if err := cl.PutMember(ctx, "g1", l.Session(), m); err != nil {
		t.Fatal(err)
	}
	l.SetOptions(consulkv.LockOptions{TTL: 6 * time.Second})
	_, next, err := l.Roll(ctx, []string{cl.LeaderKey("g1"), cl.MemberKey("g1", "b")})
	if err != nil {
		t.Fatal(err)
	}
	if next.TTL != 3*time.Second {
		t.Fatalf("new session TTL %s", next.TTL)
	}
	g, err := cl.ReadGroup(ctx, "g1")
	if err != nil {
		t.Fatal(err)
	}
	if g.Leader != nil {
		t.Fatalf("roll created a leader key: %+v", g.Leader)
	}
	if g.Members["b"] == nil {
		t.Fatal("member key lost in the roll")
	}
}
