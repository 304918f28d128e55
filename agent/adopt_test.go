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
		{name: "lock_delay 0 with session checks: not adopted, rule named", stored: with(func(c *consulkv.ClusterConfig) { c.LockDelay = 0 }), member: checks, problem: "session-checks-lock-delay rule broken for member n1-a"},
		{name: "0.2s < lock_delay < loop_wait with session checks: not adopted", stored: with(func(c *consulkv.ClusterConfig) { c.LockDelay = dur(500 * time.Millisecond) }), member: checks, problem: "at least loop_wait + retry_timeout + 0.5s = 3.5s"},
		{name: "lock_delay just below loop_wait + retry_timeout + 0.5s: not adopted", stored: with(func(c *consulkv.ClusterConfig) { c.LockDelay = dur(3499 * time.Millisecond) }), member: checks, problem: "session-checks-lock-delay"},
		{name: "lock_delay exactly loop_wait + retry_timeout + 0.5s: adopted", stored: with(func(c *consulkv.ClusterConfig) { c.LockDelay = dur(3500 * time.Millisecond) }), member: checks, adopt: true},
		{name: "raising loop_wait makes the stored lock_delay unsafe", stored: with(func(c *consulkv.ClusterConfig) {
			c.LockDelay = dur(3500 * time.Millisecond)
			c.LoopWait = dur(2 * time.Second)
		}), member: checks, problem: "4.5s"},
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

// The fence deadline can never be armed non-positive for a config that
// ValidateFor accepts: with session checks it is lock_delay - 0.2s after
// the last renew, and lock_delay covers a whole loop plus a slow renew.
func TestValidatedConfigsGivePositiveFenceDeadlines(t *testing.T) {
	for _, lw := range []time.Duration{100 * time.Millisecond, time.Second, 3 * time.Second} {
		for _, rt := range []time.Duration{100 * time.Millisecond, time.Second, 5 * time.Second} {
			c := consulkv.ClusterConfig{Version: 1, TTL: dur(60 * time.Second), LoopWait: dur(lw), RetryTimeout: dur(rt)}
			c.LockDelay = dur(c.SessionChecksLockDelay())
			if err := c.ValidateFor([]consulkv.MemberSettings{{Member: "m", SessionChecks: []string{"serfHealth"}}}); err != nil {
				t.Fatalf("loop_wait %s retry_timeout %s: %v", lw, rt, err)
			}
			// The watchdog is re-armed after at most one loop plus a slow renew.
			if slack := c.LockDelay.D() - consulkv.FenceMargin - lw - rt; slack <= 0 {
				t.Fatalf("loop_wait %s retry_timeout %s: fence deadline leaves %s", lw, rt, slack)
			}
		}
	}
}
