package agent

import (
	"context"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/health"
	"go.uber.org/zap"
)

// reregisterEvery re-sends an unchanged registration, in case the local
// Consul agent lost it (restarted without its data dir, say).
const reregisterEvery = 30 * time.Second

// registrar keeps the member's Consul service registration in line with its
// role from its own goroutine. Registering can be slow (the Consul agent
// persists the service and its checks and syncs the catalog) and a failing
// registration is retried with backoff; neither may delay the HA loop's
// session renewal.
type registrar struct {
	a    *Agent
	kick chan struct{}

	mu     sync.Mutex
	want   *consulkv.MemberService
	doneAs string // signature of the last successful registration
	doneAt time.Time
	lock   sync.Mutex // serialises Consul calls (goroutine, first registration, shutdown)
	closed bool
}

func newRegistrar(a *Agent) *registrar {
	return &registrar{a: a, kick: make(chan struct{}, 1)}
}

// registered reports whether any registration has succeeded yet.
func (r *registrar) registered() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.doneAs != ""
}

// set makes svc the wanted registration; the goroutine sends it if it
// differs from what Consul has.
func (r *registrar) set(svc consulkv.MemberService) {
	r.mu.Lock()
	r.want = &svc
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// syncNow registers the wanted service in the caller's goroutine if it is
// not registered already (used before the first session is created: a
// session tied to the liveness check needs that check to exist).
func (r *registrar) syncNow(ctx context.Context) error {
	return r.send(ctx, false)
}

// send registers the wanted service when it changed or is due again.
func (r *registrar) send(ctx context.Context, periodic bool) error {
	r.lock.Lock()
	defer r.lock.Unlock()
	r.mu.Lock()
	want, doneAs, doneAt, closed := r.want, r.doneAs, r.doneAt, r.closed
	r.mu.Unlock()
	if want == nil || closed {
		return nil
	}
	sig := want.Signature()
	if sig == doneAs && (!periodic || time.Since(doneAt) < reregisterEvery) {
		return nil
	}
	if err := r.a.kv.RegisterMember(ctx, *want); err != nil {
		return err
	}
	if sig != doneAs {
		r.a.log.Info("registered service", zap.String("service_id", r.a.kv.ServiceID(r.a.cfg.Group, r.a.cfg.Name)), zap.Strings("tags", want.Tags()))
	}
	r.mu.Lock()
	r.doneAs, r.doneAt = sig, time.Now()
	r.mu.Unlock()
	return nil
}

// run sends registrations until ctx ends, retrying failures with backoff.
func (r *registrar) run(ctx context.Context) {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 500 * time.Millisecond
	bo.MaxInterval = 10 * time.Second
	bo.MaxElapsedTime = 0
	failing := false
	wait := reregisterEvery
	for {
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-r.kick:
		case <-timer.C:
		}
		timer.Stop()
		err := r.send(ctx, true)
		switch {
		case err != nil && ctx.Err() == nil:
			if r.a.metrics != nil {
				r.a.metrics.consulErrors.WithLabelValues(consulErrorKind(err)).Inc()
			}
			if !failing {
				r.a.log.Warn("service registration failed; retrying with backoff", zap.Error(err))
				failing = true
			}
			wait = bo.NextBackOff()
		default:
			if failing {
				r.a.log.Info("service registration works again")
				failing = false
			}
			bo.Reset()
			wait = reregisterEvery
		}
	}
}

// deregister removes the registration and stops further ones (shutdown).
func (r *registrar) deregister(ctx context.Context) error {
	r.lock.Lock()
	defer r.lock.Unlock()
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	return r.a.kv.DeregisterMember(ctx, r.a.cfg.Group, r.a.cfg.Name)
}

// register hands the registration for state st to the registrar.
func (a *Agent) register(st health.MemberState) {
	if a.cfg.Consul.DisableRegistration {
		return
	}
	a.reg.set(a.memberService(st))
}
