package agent

import (
	"context"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"go.uber.org/zap"
)

// leaderKeepalive renews a leader's session between loops when it is tied
// to health checks. Such a session can be freed the moment a check goes
// critical, and a successor may take the lock lock-delay later, so the
// leader is fenced lock-delay − 0.2s after the renew that last confirmed
// it. Renewing only once per loop would force lock_delay above loop_wait +
// retry_timeout (7.5s on the defaults), which adds directly to every
// failover; renewing every quarter of the fence window, each renew given up
// after one interval, keeps a 2.5s lock-delay safe (a 1.5s freeze of the agent included) and lets one slow or failed
// renew pass without fencing a healthy primary. Each renew pushes the
// fence watchdog's deadline out (only while the loop keeps it armed). A
// TTL-only session needs no renews of its own (its lease is ttl/2 − margin
// and the loop's renew suffices), but when the loop's renew is overdue (half
// the lease gone — the loop stuck in a Consul call that hangs while the
// servers restart or elect) the keepalive renews, and if that fails runs the
// failsafe round, which the loop would reach only after its lease ran out.
// Only a failed renew leads to a round: asking the members while Consul
// answers would only make them refuse.
func (a *Agent) leaderKeepalive(ctx context.Context) {
	failing := false
	for {
		held := a.lock.Held()
		every := time.Second
		var lease time.Duration
		if held != nil {
			lease = held.LeaseUntil().Sub(held.RenewedAt)
			every = consulkv.KeepaliveInterval(held.LockDelay, lease, a.loopWait(), held.Checks != "")
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
		// A start or promotion renews on its own (asLeader).
		if held == nil || a.leaderStarting.Load() {
			continue
		}
		// Leading from the acquire on, not only once the loop has marked
		// PostgreSQL writable at its end: the rest of a promoting loop
		// (housekeeping, synchronous_standby_names) can outlast a short
		// lease (seen: ttl 4s, fenced 1.6s after the acquire's renew).
		leading := a.holdsLock.Load()
		cur := a.lock.Held()
		if cur == nil {
			continue
		}
		// A leader with a session tied to checks renews every interval;
		// anyone else only when the loop's renew is overdue.
		if !(leading && held.Checks != "") && time.Since(cur.RenewedAt) <= lease/2 {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, every)
		_, err := a.lock.RenewHeld(rctx)
		cancel()
		if err != nil {
			if !failing && ctx.Err() == nil {
				a.log.Warn("leader keepalive: renew failed; the fence watchdog stops PostgreSQL if no renew succeeds before the fence deadline",
					zap.Duration("fence_in", time.Until(a.lock.FenceUntil()).Round(time.Millisecond)), zap.Error(err))
			}
			failing = true
			if leading {
				a.keepaliveFailsafe(ctx)
			}
			continue
		}
		if failing {
			a.log.Info("leader keepalive: renewing again")
			failing = false
		}
		if err := a.fw.extend(a.fenceDeadline(time.Now())); err != nil {
			a.log.Warn("leader keepalive: could not extend the fence watchdog's deadline", zap.Error(err))
		}
	}
}

// keepaliveFailsafe runs a failsafe round from the keepalive when renews
// fail: the fence window of a session tied to checks (2.3s by default) is
// shorter than a loop, so waiting for the loop's round would fence the
// primary first. It asks again only when less than half the hold is left.
func (a *Agent) keepaliveFailsafe(ctx context.Context) {
	enabled, ttl := a.failsafe.settings()
	if !enabled || time.Until(a.failsafe.holdUntil()) > ttl*2/5 {
		return
	}
	st := a.State()
	until, why := a.failsafeRound(ctx, st.Timeline)
	if why != "" {
		return // the loop's own round logs and decides
	}
	if !a.State().Writable {
		return
	}
	if !time.Now().Before(a.failsafe.holdUntil()) {
		a.log.Warn("failsafe: renews fail; every member of the group confirmed, staying primary", zap.Time("hold_until", until))
	}
	a.failsafe.setHold(until)
	if err := a.fw.extend(a.fenceDeadline(time.Now())); err != nil {
		a.log.Warn("failsafe: could not extend the fence watchdog's deadline", zap.Error(err))
	}
}

// loopWait is the loop interval as last adopted (read by the keepalive).
func (a *Agent) loopWait() time.Duration {
	if d := time.Duration(a.loopWaitNs.Load()); d > 0 {
		return d
	}
	return consulkv.DefaultLoopWait
}
