package consulkv

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// LockOptions configure a member's session and the leader lock.
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

// LeaseDuration is how long after a successful renew (measured from when the
// renew was sent) the holder may still act as leader.
func (o LockOptions) LeaseDuration() time.Duration {
	s := o.SessionTTL()
	m := o.Margin
	if m <= 0 {
		m = s / 5
		if m < 200*time.Millisecond {
			m = 200 * time.Millisecond
		}
	}
	if m >= s {
		m = s / 2
	}
	return s - m
}

// Lock is one member's session plus the group leader lock it may hold. The
// lease it tracks is local and monotonic: Consul never guarantees when it
// will tell us the session is gone, so the holder stops acting as leader
// when its own lease runs out, whatever Consul says.
type Lock struct {
	c      *Client
	group  string
	member string

	mu        sync.Mutex
	opts      LockOptions
	session   string
	renewedAt time.Time // when the last successful create/renew was sent
}

// NewLock prepares (without I/O) the session and lock of member in group.
func (c *Client) NewLock(group, member string, opts LockOptions) *Lock {
	return &Lock{c: c, group: group, member: member, opts: opts}
}

// SetOptions changes the options; a changed TTL or lock-delay takes effect
// with the next session.
func (l *Lock) SetOptions(o LockOptions) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.opts = o
}

// Options returns the options in force.
func (l *Lock) Options() LockOptions {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.opts
}

// Session returns the current session ID ("" when there is none).
func (l *Lock) Session() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.session
}

// LeaseUntil is the monotonic instant the lease ends (zero without session).
func (l *Lock) LeaseUntil() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.session == "" {
		return time.Time{}
	}
	return l.renewedAt.Add(l.opts.LeaseDuration())
}

// LeaseValid reports whether the lease is still good at now.
func (l *Lock) LeaseValid(now time.Time) bool {
	u := l.LeaseUntil()
	return !u.IsZero() && now.Before(u)
}

// EnsureSession creates a session if there is none, else renews it. On
// ErrSessionGone the session is forgotten (a new one is made next time).
func (l *Lock) EnsureSession(ctx context.Context) (string, error) {
	l.mu.Lock()
	sess, opts := l.session, l.opts
	l.mu.Unlock()
	sent := time.Now()
	if sess == "" {
		id, err := l.c.CreateSession(ctx, SessionOptions{
			Name:          fmt.Sprintf("pgmesh %s/%s/%s", l.c.cluster, l.group, l.member),
			TTL:           opts.SessionTTL(),
			LockDelay:     opts.LockDelay,
			NodeChecks:    opts.NodeChecks,
			ServiceChecks: opts.ServiceChecks,
		})
		if err != nil {
			return "", err
		}
		l.mu.Lock()
		l.session, l.renewedAt = id, sent
		l.mu.Unlock()
		return id, nil
	}
	if err := l.c.RenewSession(ctx, sess); err != nil {
		if errors.Is(err, ErrSessionGone) {
			l.forget(sess)
		}
		return "", err
	}
	l.mu.Lock()
	if l.session == sess {
		l.renewedAt = sent
	}
	l.mu.Unlock()
	return sess, nil
}

func (l *Lock) forget(sess string) {
	l.mu.Lock()
	if l.session == sess {
		l.session = ""
		l.renewedAt = time.Time{}
	}
	l.mu.Unlock()
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

// Destroy ends the session (releasing and deleting everything it holds).
func (l *Lock) Destroy(ctx context.Context) error {
	sess := l.Session()
	if sess == "" {
		return nil
	}
	err := l.c.DestroySession(ctx, sess)
	l.forget(sess)
	return err
}

// ErrNotHolder means a guarded write was refused because the session does
// not hold the key it was guarded by.
var ErrNotHolder = errors.New("session does not hold the leader key")
