package routing

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/hashicorp/consul/api"
	"github.com/pgmesh/pgmesh/consulkv"
	"go.uber.org/zap"
)

// healthWait is the longest one blocking health query waits.
const healthWait = 5 * time.Minute

// Run keeps every entry rendered until ctx ends. It watches Consul with
// blocking queries only — the cluster's KV prefix (consulkv.WatchPrefix) and
// the health of the cluster's service — rebuilds the model on every change
// and renders every template in memory. An output that differs from the
// installed file is installed once no further change came for Debounce (or
// MaxDelay after the first change, whichever is sooner). The HAProxy
// runtime hook runs at once, without debounce. Errors (Consul, templates,
// validation, reload) are logged and retried on the next change; Run
// returns only when ctx ends.
func (r *Renderer) Run(ctx context.Context) error {
	if r.opts.Client == nil {
		return errors.New("routing: no Consul client")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	src := &source{r: r, out: make(chan *Mesh, 1)}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		cl := r.opts.Client
		// At most 10 re-reads of the tree per second: under write load the
		// members' keys change every loop, and the debounce below absorbs
		// the churn anyway. (250ms made a switchover's burst of writes -
		// release, acquire, member keys - converge 0.2s later.)
		cl.WatchPrefix(ctx, cl.ClusterPrefix(), consulkv.WatchOptions{MinInterval: 100 * time.Millisecond, OnError: func(err error) {
			r.opts.Metrics.watchError()
			r.log.Warn("watching the cluster's KV tree", zap.Error(err))
		}}, func(index uint64, pairs consulkv.KVPairs) {
			src.setView(cl.DecodeCluster(index, pairs))
		})
	}()
	go func() {
		defer wg.Done()
		r.watchHealth(ctx, src.setEntries)
	}()
	r.loop(ctx, src.out)
	cancel()
	wg.Wait()
	return nil
}

// health asks for every instance of the cluster's service with its checks,
// blocking until index changes when index is non-zero.
func (r *Renderer) health(ctx context.Context, index uint64) ([]*api.ServiceEntry, uint64, error) {
	wait := healthWait
	timeout := 10 * time.Second
	if index != 0 {
		timeout += wait + wait/16
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	q := &api.QueryOptions{WaitIndex: index, WaitTime: wait}
	entries, meta, err := r.opts.Client.API().Health().Service(r.cluster, "", false, q.WithContext(ctx))
	if err != nil {
		return nil, 0, err
	}
	return entries, meta.LastIndex, nil
}

// watchHealth is a blocking-query loop over the service's health (no
// polling: each query returns when Consul's index moves or after
// healthWait). Errors back off exponentially.
func (r *Renderer) watchHealth(ctx context.Context, fn func([]*api.ServiceEntry)) {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 100 * time.Millisecond
	bo.MaxInterval = 10 * time.Second
	bo.MaxElapsedTime = 0
	var index uint64
	for ctx.Err() == nil {
		entries, newIndex, err := r.health(ctx, index)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			r.opts.Metrics.watchError()
			r.log.Warn("watching the cluster's service health", zap.Error(err))
			select {
			case <-ctx.Done():
				return
			case <-time.After(bo.NextBackOff()):
			}
			continue
		}
		bo.Reset()
		switch {
		case newIndex < index:
			index = 0 // Consul's index went backwards (snapshot restore)
			continue
		case newIndex == index:
			continue
		}
		if newIndex == 0 {
			newIndex = 1
		}
		index = newIndex
		fn(entries)
	}
}

// source combines the two watches into meshes; the channel holds only the
// newest one.
type source struct {
	r       *Renderer
	mu      sync.Mutex
	view    *consulkv.ClusterView
	entries []*api.ServiceEntry
	haveEnt bool
	out     chan *Mesh
}

func (s *source) setView(v *consulkv.ClusterView) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.view = v
	s.publish()
}

func (s *source) setEntries(e []*api.ServiceEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.entries, s.haveEnt = e, true
	s.publish()
}

func (s *source) publish() {
	if s.view == nil || !s.haveEnt {
		return // wait for both, or the first render would be half a mesh
	}
	sendLatest(s.out, s.r.build(s.view, s.entries))
}

// sendLatest puts m in a one-slot channel, replacing an unread older value.
func sendLatest(ch chan *Mesh, m *Mesh) {
	for {
		select {
		case ch <- m:
			return
		default:
			select {
			case <-ch:
			default:
			}
		}
	}
}

// loop evaluates every mesh at once and installs outputs when their
// debounce ends.
func (r *Renderer) loop(ctx context.Context, meshes <-chan *Mesh) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-meshes:
			r.evaluate(ctx, m, time.Now())
		case <-timer.C:
		}
		now := time.Now()
		r.installDue(ctx, now)
		if next, ok := r.nextDue(); ok {
			timer.Reset(max(next.Sub(now), 0))
		}
	}
}

// evaluate renders every entry from m in memory, runs the HAProxy hook and
// records outputs that differ from the installed file as pending.
func (r *Renderer) evaluate(ctx context.Context, m *Mesh, now time.Time) {
	if err := r.checkNotEmpty(m); err != nil {
		// Never install a config with no servers: the last good files stay.
		if msg := err.Error(); msg != r.emptyLogged {
			r.log.Error("not rendering", zap.Error(err))
			r.emptyLogged = msg
		}
		return
	}
	if r.emptyLogged != "" {
		r.log.Info("the mesh read from Consul has members again; rendering", zap.Int("servers", m.Servers()))
		r.emptyLogged = ""
	}
	if pm := m.primaryMap(); r.primaries == nil || !maps.Equal(pm, r.primaries) {
		r.log.Info("writable primaries", zap.Any("primaries", pm), zap.Int("groups", len(m.Groups)), zap.Int("members", len(m.AllMembers())))
		r.primaries = pm
	}
	for _, e := range r.entries {
		r.hook(ctx, e, m)
		out, err := r.execute(e, m)
		if err != nil {
			if msg := err.Error(); msg != e.lastErr {
				r.log.Error("template failed; keeping the current file", zap.String("template", e.Template), zap.Error(err))
				e.lastErr = msg
			}
			continue
		}
		e.lastErr = ""
		e.readDisk()
		switch {
		case e.haveInstalled && bytes.Equal(out, e.installed),
			e.failed != nil && bytes.Equal(out, e.failed):
			e.pending = nil
		case e.pending != nil && bytes.Equal(out, e.pending):
			// no change since the last evaluation: the quiet period runs on
		default:
			if e.pending == nil {
				e.pendingSince = now
			}
			e.pending, e.lastChange = out, now
		}
	}
}

func (r *Renderer) due(e *entryState, now time.Time) (time.Time, bool) {
	if e.pending == nil {
		return time.Time{}, false
	}
	at := e.lastChange.Add(r.opts.Debounce)
	if limit := e.pendingSince.Add(r.opts.MaxDelay); limit.Before(at) {
		at = limit
	}
	return at, true
}

func (r *Renderer) nextDue() (time.Time, bool) {
	var next time.Time
	found := false
	for _, e := range r.entries {
		if at, ok := r.due(e, time.Time{}); ok && (!found || at.Before(next)) {
			next, found = at, true
		}
	}
	return next, found
}

func (r *Renderer) installDue(ctx context.Context, now time.Time) {
	for _, e := range r.entries {
		at, ok := r.due(e, now)
		if !ok || at.After(now) {
			continue
		}
		out := e.pending
		e.pending = nil
		if _, err := r.install(ctx, e, out); err != nil {
			r.log.Error("render failed", zap.String("template", e.Template), zap.String("destination", e.Destination), zap.Error(err))
		}
	}
}
