package agent

import (
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
)

func TestChangeGateWritesOnlyWhatChanged(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	m := func(lsn uint64, at time.Time) *consulkv.MemberStatus {
		return &consulkv.MemberStatus{Name: "a", Role: consulkv.RoleReplica, ReplayLSN: lsn, UpdatedAt: at}
	}
	var g changeGate
	if !g.due("s1", m(1, t0), true, t0) {
		t.Fatal("first write must be due")
	}
	g.done("s1", m(1, t0), t0)
	cases := []struct {
		name    string
		session string
		v       *consulkv.MemberStatus
		present bool
		at      time.Time
		want    bool
	}{
		{"only the timestamp changed", "s1", m(1, t0.Add(time.Second)), true, t0.Add(time.Second), false},
		{"content changed", "s1", m(2, t0.Add(time.Second)), true, t0.Add(time.Second), true},
		{"new session (old key went with the old one)", "s2", m(1, t0), true, t0.Add(time.Second), true},
		{"key missing or unreadable in Consul", "s1", m(1, t0), false, t0.Add(time.Second), true},
		{"refresh interval passed", "s1", m(1, t0), true, t0.Add(keyRefresh), true},
		{"just before the refresh", "s1", m(1, t0), true, t0.Add(keyRefresh - time.Millisecond), false},
	}
	for _, c := range cases {
		if got := g.due(c.session, c.v, c.present, c.at); got != c.want {
			t.Errorf("%s: due = %v, want %v", c.name, got, c.want)
		}
	}
	g.forget()
	if !g.due("s1", m(1, t0), true, t0) {
		t.Error("after forget the next write must be due")
	}
}

func TestAcquireRetryWaitsForLockDelay(t *testing.T) {
	a := &Agent{}
	a.dyn.LoopWait = consulkv.Duration(2 * time.Second)
	a.dyn.LockDelay = consulkv.Duration(time.Second)
	now := time.Now()
	a.leaderGoneAt.Store(now.Add(-300 * time.Millisecond).UnixNano())
	a.scheduleAcquireRetry(now)
	want := now.Add(700*time.Millisecond + 20*time.Millisecond)
	if d := a.retryAcquireAt.Sub(want); d < -time.Millisecond || d > time.Millisecond {
		t.Fatalf("retry at %s after now, want %s", a.retryAcquireAt.Sub(now), want.Sub(now))
	}
	if s := a.sleepTime(); s > 720*time.Millisecond || s < 600*time.Millisecond {
		t.Fatalf("sleepTime %s, want about the lock-delay's remaining 0.72s (not loop_wait)", s)
	}
	// Lock-delay long over: retry shortly, not at once in a tight loop.
	a.leaderGoneAt.Store(now.Add(-time.Minute).UnixNano())
	a.scheduleAcquireRetry(now)
	if got := a.retryAcquireAt.Sub(now); got != 100*time.Millisecond {
		t.Fatalf("retry after %s, want 100ms", got)
	}
	// Bounded: after maxQuickRetries refusals it falls back to loop_wait.
	a.retryAcquireAt = time.Time{}
	a.quickRetries = maxQuickRetries
	a.scheduleAcquireRetry(now)
	if !a.retryAcquireAt.IsZero() || a.sleepTime() != 2*time.Second {
		t.Fatalf("after %d quick retries: retry at %v, sleep %s; want loop_wait", maxQuickRetries, a.retryAcquireAt, a.sleepTime())
	}
}
