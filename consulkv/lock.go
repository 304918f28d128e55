package consulkv

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-multierror"
)

// LockOptions configure a member's session and the leader lock: what the
// next session is created with. The lease is never derived from them but
// from the session Consul actually holds (see Lock).
type LockOptions struct {
	// TTL is the cluster's ttl: the longest a dead leader keeps the lock.
	// The Consul session TTL is TTL/2, because Consul may wait up to twice
	// the session TTL before it invalidates an expired session.
	TTL time.Duration
	// LockDelay is the session's lock-delay (see SessionOptions).
	LockDelay time.Duration
	// Margin is subtracted from the session TTL to get the local lease, to
	// cover clock-rate differences and the time a demotion takes. Default:
	// a fifth of the session TTL, at least 200ms.
	Margin time.Duration
	// NodeChecks / ServiceChecks tie the session to health checks.
	NodeChecks    []string
	ServiceChecks []api.ServiceCheck
}

// SessionTTL is the TTL the session is created with.
func (o LockOptions) SessionTTL() time.Duration {
	t := o.TTL / 2
	if t < time.Second {
		t = time.Second
	}
	return t
}

// LeaseDuration is the lease a session created with these options gives.
func (o LockOptions) LeaseDuration() time.Duration {
	return leaseFor(o.SessionTTL(), o.Margin)
}

// sessionLockDelay is the lock-delay Consul is asked for: 0 means "as
// small as Consul allows", which is 1ms (Consul's own default is 15s).
func (o LockOptions) sessionLockDelay() time.Duration {
	if o.LockDelay < time.Millisecond {
		return time.Millisecond
	}
	return o.LockDelay.Truncate(time.Millisecond)
}

// checksKey identifies the health checks a session is tied to.
func (o LockOptions) checksKey() string {
	var parts []string
	for _, c := range o.NodeChecks {
		parts = append(parts, "node:"+c)
	}
	for _, c := range o.ServiceChecks {
		parts = append(parts, "service:"+c.Namespace+"/"+c.ID)
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}

// leaseFor is how long after a successful renew (measured from when the
// renew was sent) the holder of a session with TTL ttl may still act as
// leader: Consul never invalidates the session earlier than ttl after the
// renew it processed, which came after the one we sent.
func leaseFor(ttl, margin time.Duration) time.Duration {
	m := margin
	if m <= 0 {
		m = ttl / 5
		if m < 200*time.Millisecond {
			m = 200 * time.Millisecond
		}
	}
	if m >= ttl {
		m = ttl / 2
	}
	return ttl - m
}

// FenceMargin is how much earlier than lock-delay after the last
// confirmation a session tied to health checks must have stopped writing:
// the time an abort of the postmaster takes.
const FenceMargin = 200 * time.Millisecond

// HeldSession is a session as Consul holds it: its TTL and lock-delay are
// what Consul reported when it was created, whatever the options say now.
type HeldSession struct {
	ID        string
	TTL       time.Duration
	LockDelay time.Duration
	// Checks lists the health checks the session is tied to ("" none).
	Checks string
	// RenewedAt is when the last successful create or renew was sent:
	// Consul knew the session alive at some instant after it.
	RenewedAt time.Time
	margin    time.Duration
	// asked identifies the options the session was created with (NeedsRoll
	// compares options with options, so a value Consul normalises cannot
	// cause a roll every loop).
	asked string
}

// LeaseUntil is the monotonic instant the lease of this session ends.
func (s *HeldSession) LeaseUntil() time.Time {
	return s.RenewedAt.Add(leaseFor(s.TTL, s.margin))
}

// FenceUntil is when PostgreSQL must have stopped writing unless the
// session is confirmed again: the lease, and for a session tied to health
// checks lock-delay after the last confirmation, because a failing check
// frees the lock at any moment and a successor may take it lock-delay
// later.
func (s *HeldSession) FenceUntil() time.Time {
	u := s.LeaseUntil()
	if s.Checks != "" {
		if c := s.RenewedAt.Add(s.LockDelay - FenceMargin); c.Before(u) {
			u = c
		}
	}
	return u
}

// Lock is one member's session plus the group leader lock it may hold. The
// lease it tracks is local and monotonic: Consul never guarantees when it
// will tell us the session is gone, so the holder stops acting as leader
// when its own lease runs out, whatever Consul says.
//
// The lease follows the session, not the options: a session keeps the TTL
// and lock-delay it was created with, so a changed ttl or lock_delay only
// counts once the session has been rolled over (Roll) to a new one.
type Lock struct {
	c      *Client
	group  string
	member string

	mu   sync.Mutex
	opts LockOptions
	cur  *HeldSession
	// pending is a rolled-to session whose hand-over transaction had an
	// unknown outcome: either session may hold the keys until Resolve.
	pending *HeldSession
}

// NewLock prepares (without I/O) the session and lock of member in group.
func (c *Client) NewLock(group, member string, opts LockOptions) *Lock {
	return &Lock{c: c, group: group, member: member, opts: opts}
}

// SetOptions changes the options the next session is created with; the
// session in force keeps its own until Roll replaces it.
func (l *Lock) SetOptions(o LockOptions) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.opts = o
}

// Options returns the options new sessions get.
func (l *Lock) Options() LockOptions {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.opts
}

// Session returns the current session ID ("" when there is none).
func (l *Lock) Session() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cur == nil {
		return ""
	}
	return l.cur.ID
}

// Held returns a copy of the session in force (nil when there is none).
func (l *Lock) Held() *HeldSession {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cur == nil {
		return nil
	}
	s := *l.cur
	return &s
}

// LeaseUntil is the monotonic instant the lease ends (zero without
// session). While a roll-over is unresolved it is the earlier of both
// sessions' leases: either may be the one holding the lock.
func (l *Lock) LeaseUntil() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.until((*HeldSession).LeaseUntil)
}

// FenceUntil is the instant the fence watchdog must stop a primary that
// has not heard from the agent (zero without session); see
// HeldSession.FenceUntil.
func (l *Lock) FenceUntil() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.until((*HeldSession).FenceUntil)
}

func (l *Lock) until(f func(*HeldSession) time.Time) time.Time {
	if l.cur == nil {
		return time.Time{}
	}
	u := f(l.cur)
	if l.pending != nil {
		if p := f(l.pending); p.Before(u) {
			u = p
		}
	}
	return u
}

// LeaseValid reports whether the holder may still act as leader at now:
// before FenceUntil (the lease, and for a session tied to health checks no
// later than lock-delay − FenceMargin after its last confirmation).
func (l *Lock) LeaseValid(now time.Time) bool {
	u := l.FenceUntil()
	return !u.IsZero() && now.Before(u)
}

// NeedsRoll reports whether the session in force was created with another
// TTL, lock-delay or set of checks than the options now ask for.
func (l *Lock) NeedsRoll() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cur == nil || l.pending != nil {
		return false
	}
	return l.cur.asked != l.opts.signature()
}

// signature identifies what a session created with o asks Consul for.
func (o LockOptions) signature() string {
	return fmt.Sprintf("ttl=%s lock_delay=%s checks=%s margin=%s", o.SessionTTL(), o.sessionLockDelay(), o.checksKey(), o.Margin)
}

// EnsureSession creates a session if there is none, else renews it. On
// ErrSessionGone the session is forgotten (a new one is made next time).
func (l *Lock) EnsureSession(ctx context.Context) (string, error) {
	l.mu.Lock()
	cur, pending := l.cur, l.pending
	l.mu.Unlock()
	if cur == nil {
		s, err := l.create(ctx)
		if err != nil {
			return "", err
		}
		l.mu.Lock()
		l.cur = s
		l.mu.Unlock()
		return s.ID, nil
	}
	if pending != nil {
		// Keep the other candidate alive too until Resolve says which one
		// holds the keys; one that is gone holds nothing (renew forgets it).
		l.renew(ctx, pending)
	}
	if err := l.renew(ctx, cur); err != nil {
		return "", err
	}
	return cur.ID, nil
}

// RenewHeld renews the session in force and never creates one: for a
// leader that is busy starting or promoting PostgreSQL, where a new session
// would not hold the lock. It reports the renewed session's FenceUntil.
func (l *Lock) RenewHeld(ctx context.Context) (time.Time, error) {
	l.mu.Lock()
	cur := l.cur
	l.mu.Unlock()
	if cur == nil {
		return time.Time{}, fmt.Errorf("consulkv: renew: %w", ErrSessionGone)
	}
	if err := l.renew(ctx, cur); err != nil {
		return time.Time{}, err
	}
	return l.FenceUntil(), nil
}

// renew renews s and moves its RenewedAt forward; a session Consul no
// longer has is forgotten.
func (l *Lock) renew(ctx context.Context, s *HeldSession) error {
	sent := time.Now()
	if err := l.c.RenewSession(ctx, s.ID); err != nil {
		if errors.Is(err, ErrSessionGone) {
			l.forgetSession(s.ID)
		}
		return err
	}
	l.mu.Lock()
	if sent.After(s.RenewedAt) {
		s.RenewedAt = sent
	}
	l.mu.Unlock()
	return nil
}

// create makes a session with the current options and reads back what
// Consul holds: the lease is computed from Consul's answer, not from what
// was asked for.
func (l *Lock) create(ctx context.Context) (*HeldSession, error) {
	opts := l.Options()
	sent := time.Now()
	id, err := l.c.CreateSession(ctx, SessionOptions{
		Name:          fmt.Sprintf("pgmesh %s/%s/%s", l.c.cluster, l.group, l.member),
		TTL:           opts.SessionTTL(),
		LockDelay:     opts.LockDelay,
		NodeChecks:    opts.NodeChecks,
		ServiceChecks: opts.ServiceChecks,
	})
	if err != nil {
		return nil, err
	}
	info, err := l.c.SessionInfo(ctx, id)
	if err != nil || info == nil {
		// Without Consul's own figures there is no lease to trust.
		derr := l.c.DestroySession(context.WithoutCancel(ctx), id)
		if err == nil {
			err = fmt.Errorf("consulkv: session %s vanished right after it was created: %w", id, ErrSessionGone)
		}
		if derr != nil {
			err = multierror.Append(err, derr)
		}
		return nil, err
	}
	ttl, perr := time.ParseDuration(info.TTL)
	if perr != nil || ttl <= 0 {
		l.c.DestroySession(context.WithoutCancel(ctx), id)
		return nil, fmt.Errorf("consulkv: session %s: Consul reports TTL %q: %v", id, info.TTL, perr)
	}
	return &HeldSession{ID: id, TTL: ttl, LockDelay: info.LockDelay, Checks: sessionChecksKey(info), RenewedAt: sent, margin: opts.Margin, asked: opts.signature()}, nil
}

// sessionChecksKey is LockOptions.checksKey for a session Consul reports.
func sessionChecksKey(e *api.SessionEntry) string {
	o := LockOptions{NodeChecks: e.NodeChecks}
	for _, c := range e.ServiceChecks {
		o.ServiceChecks = append(o.ServiceChecks, api.ServiceCheck{ID: c.ID, Namespace: c.Namespace})
	}
	if len(o.NodeChecks) == 0 && len(o.ServiceChecks) == 0 {
		// Consul before 1.7 lists every check in Checks only.
		o.NodeChecks = e.Checks
	}
	return o.checksKey()
}

func (l *Lock) forgetSession(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.pending != nil && l.pending.ID == id:
		l.pending = nil
	case l.cur != nil && l.cur.ID == id:
		// A pending session may hold the keys now (its hand-over may have
		// committed); it is the only candidate left.
		l.cur, l.pending = l.pending, nil
	}
}

// Roll replaces the session in force by a new one created with the current
// options, handing over every key of keys the old one holds in a single
// transaction (unlock with the old session, lock with the new), so the
// leader lock is never free and never held by two sessions. At every
// instant the lease is that of the session holding the keys. When the
// transaction's outcome is unknown both sessions are kept (the lease is the
// earlier of the two) until Resolve learns which one holds the leader key.
func (l *Lock) Roll(ctx context.Context, keys []string) (old, next HeldSession, err error) {
	l.mu.Lock()
	cur := l.cur
	l.mu.Unlock()
	if cur == nil {
		return old, next, errors.New("consulkv: roll: no session")
	}
	old = *cur
	s, err := l.create(ctx)
	if err != nil {
		return old, next, fmt.Errorf("consulkv: roll: %w", err)
	}
	next = *s
	var ops api.TxnOps
	for _, k := range keys {
		p, err := l.c.getPair(ctx, k)
		if err != nil {
			l.c.DestroySession(context.WithoutCancel(ctx), s.ID)
			return old, next, fmt.Errorf("consulkv: roll: %w", err)
		}
		if p == nil || p.Session != cur.ID {
			continue
		}
		ops = append(ops,
			&api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVCheckIndex, Key: k, Index: p.ModifyIndex}},
			&api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVUnlock, Key: k, Value: p.Value, Session: cur.ID}},
			&api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVLock, Key: k, Value: p.Value, Session: s.ID}},
		)
	}
	if len(ops) > 0 {
		ok, _, err := l.c.txn(ctx, ops)
		if err != nil {
			// Committed or not: we cannot tell. Keep both.
			l.mu.Lock()
			l.pending = s
			l.mu.Unlock()
			return old, next, fmt.Errorf("consulkv: roll: hand-over of %d keys (outcome unknown; both sessions kept): %w", len(ops)/3, err)
		}
		if !ok {
			l.c.DestroySession(context.WithoutCancel(ctx), s.ID)
			return old, next, errors.New("consulkv: roll: the keys changed while handing them over; nothing changed, retrying later")
		}
	}
	l.mu.Lock()
	if l.cur == cur {
		l.cur = s
	}
	l.mu.Unlock()
	// The old session holds nothing any more; if the destroy fails it
	// expires by itself.
	l.c.DestroySession(ctx, cur.ID)
	return old, next, nil
}

// Resolve settles an unresolved roll-over with the session Consul shows on
// the leader key (leaderSession, "" when the key is free): the session
// holding it stays, the other is destroyed. With neither holding it the
// rolled-to session is dropped and the old one stays.
func (l *Lock) Resolve(ctx context.Context, leaderSession string) {
	l.mu.Lock()
	cur, pending := l.cur, l.pending
	if pending == nil || cur == nil {
		l.mu.Unlock()
		return
	}
	drop := pending
	if leaderSession == pending.ID {
		l.cur, drop = pending, cur
	}
	l.pending = nil
	l.mu.Unlock()
	l.c.DestroySession(ctx, drop.ID)
}

// Acquire tries to take the leader key for this member with the current
// session. It returns false when another session holds it or lock-delay is
// still in force.
func (l *Lock) Acquire(ctx context.Context) (bool, error) {
	sess := l.Session()
	if sess == "" {
		return false, fmt.Errorf("consulkv: acquire leader of %s: no session", l.group)
	}
	val, err := Encode(&Leader{Version: ValueVersion, Member: l.member})
	if err != nil {
		return false, err
	}
	ctx, cancel := l.c.ctx(ctx)
	defer cancel()
	ok, _, err := l.c.api.KV().Acquire(&api.KVPair{Key: l.c.LeaderKey(l.group), Value: val, Session: sess}, l.c.wopts(ctx))
	if err != nil {
		return false, classify("acquire leader", err)
	}
	return ok, nil
}

// Release deletes the leader key if (and only if) this session holds it, so
// followers see "no leader" at once instead of a released-but-present key.
func (l *Lock) Release(ctx context.Context) error {
	sess := l.Session()
	if sess == "" {
		return nil
	}
	key := l.c.LeaderKey(l.group)
	ops := api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVCheckSession, Key: key, Session: sess}},
		{KV: &api.KVTxnOp{Verb: api.KVDelete, Key: key}},
	}
	ok, _, err := l.c.txn(ctx, ops)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("consulkv: release leader of %s: %w", l.group, ErrNotHolder)
	}
	return nil
}

// Destroy ends the session (releasing and deleting everything it holds),
// and an unresolved rolled-to one with it.
func (l *Lock) Destroy(ctx context.Context) error {
	l.mu.Lock()
	cur, pending := l.cur, l.pending
	l.cur, l.pending = nil, nil
	l.mu.Unlock()
	var result error
	for _, s := range []*HeldSession{pending, cur} {
		if s == nil {
			continue
		}
		if err := l.c.DestroySession(ctx, s.ID); err != nil {
			result = multierror.Append(result, err)
		}
	}
	return result
}

// ErrNotHolder means a guarded write was refused because the session does
// not hold the key it was guarded by.
var ErrNotHolder = errors.New("session does not hold the leader key")
