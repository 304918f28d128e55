package agent

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
)

func dur(d time.Duration) consulkv.Duration { return consulkv.Duration(d) }

// TestAdoptConfig is the decision table for adopting a stored cluster
// config (issue: a config was validated only where it was seeded).
func TestAdoptConfig(t *testing.T) {
	plain := consulkv.MemberSettings{Member: "n1-a"}
	checks := consulkv.MemberSettings{Member: "n1-a", SessionChecks: []string{"liveness"}}
	base := consulkv.ClusterConfig{Version: 1, TTL: dur(10 * time.Second), LoopWait: dur(time.Second), RetryTimeout: dur(2 * time.Second)}
	with := func(f func(*consulkv.ClusterConfig)) *consulkv.ClusterConfig { c := base; f(&c); return &c }
	cases := []struct {
		name    string
		stored  *consulkv.ClusterConfig
		readErr error
		member  consulkv.MemberSettings
		adopt   bool
		problem string // substring of the reported problem
	}{
		{name: "safe config is adopted", stored: &base, member: plain, adopt: true},
		{name: "lock_delay 0 without session checks is safe", stored: with(func(c *consulkv.ClusterConfig) { c.LockDelay = 0 }), member: plain, adopt: true},
		{name: "lock_delay 0 (automatic) with session checks is adopted", stored: with(func(c *consulkv.ClusterConfig) { c.LockDelay = 0 }), member: checks, adopt: true},
		{name: "0 < lock_delay < 1s with session checks: not adopted, rule named", stored: with(func(c *consulkv.ClusterConfig) { c.LockDelay = dur(500 * time.Millisecond) }), member: checks, problem: "session-checks-lock-delay rule broken for member n1-a: lock_delay 500ms"},
		{name: "lock_delay just below 1s: not adopted", stored: with(func(c *consulkv.ClusterConfig) { c.LockDelay = dur(999 * time.Millisecond) }), member: checks, problem: "must be 0 (automatic: 2.5s) or at least 1s"},
		{name: "lock_delay exactly 1s: adopted", stored: with(func(c *consulkv.ClusterConfig) { c.LockDelay = dur(time.Second) }), member: checks, adopt: true},
		{name: "lock_delay 1s stays safe whatever loop_wait (the keepalive renews on its own timer)", stored: with(func(c *consulkv.ClusterConfig) {
			c.LockDelay = dur(time.Second)
			c.LoopWait = dur(2 * time.Second)
		}), member: checks, adopt: true},
		{name: "loop_wait beyond the lease: not adopted", stored: with(func(c *consulkv.ClusterConfig) { c.LoopWait = dur(5 * time.Second) }), member: plain, problem: "timing rule broken"},
		{name: "unreadable config: not adopted, key named", readErr: &consulkv.DecodeError{Key: "pgmesh/c/config", Err: errors.New("invalid JSON")}, member: plain, problem: "pgmesh/c/config"},
		{name: "Consul unreachable: nothing to adopt, no problem", readErr: consulkv.ErrUnreachable, member: plain},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, problem := adoptConfig(tc.stored, tc.readErr, tc.member)
			if (got != nil) != tc.adopt {
				t.Fatalf("adopted = %v, want %v (problem %q)", got != nil, tc.adopt, problem)
			}
			if tc.problem == "" && problem != "" || !strings.Contains(problem, tc.problem) {
				t.Fatalf("problem %q, want one containing %q", problem, tc.problem)
			}
		})
	}
}

// For every config ValidateFor accepts, the keepalive of a leader whose
// session is tied to checks renews at least four times within its fence
// window (lock_delay - 0.2s after the last renew), so one renew that fails
// or is given up after its interval never fences a healthy primary.
func TestValidatedConfigsLeaveRenewsInTheFenceWindow(t *testing.T) {
	for _, lw := range []time.Duration{100 * time.Millisecond, time.Second, 3 * time.Second} {
		for _, ld := range []time.Duration{0, consulkv.MinChecksLockDelay, 1500 * time.Millisecond, 7500 * time.Millisecond, 60 * time.Second} {
			c := consulkv.ClusterConfig{Version: 1, TTL: dur(60 * time.Second), LoopWait: dur(lw), RetryTimeout: dur(time.Second), LockDelay: dur(ld)}
			if err := c.ValidateFor([]consulkv.MemberSettings{{Member: "m", SessionChecks: []string{"serfHealth"}}}); err != nil {
				t.Fatalf("loop_wait %s lock_delay %s: %v", lw, ld, err)
			}
			eff := c.LockDelayFor(true)
			lease := consulkv.LockOptions{TTL: c.TTL.D()}.LeaseDuration()
			every := consulkv.KeepaliveInterval(eff, lease, lw, true)
			window := min(eff-consulkv.FenceMargin, lease)
			if 4*every > window {
				t.Fatalf("loop_wait %s lock_delay %s (in force %s): renew every %s, only %.1f renews in the %s fence window", lw, ld, eff, every, float64(window)/float64(every), window)
			}
		}
	}
	if got := (consulkv.ClusterConfig{}).LockDelayFor(false); got != 0 {
		t.Errorf("automatic lock_delay of a TTL-only session = %s, want 0", got)
	}
}
