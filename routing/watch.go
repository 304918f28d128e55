package routing

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
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
// the health of the cluster's service, in every datacenter of the mesh —
// rebuilds the model on every change and renders every template in memory.
// An output that differs from the installed file is installed once no
// further change came for Debounce (or MaxDelay after the first change,
// whichever is sooner). The HAProxy runtime hook runs at once, without
// debounce. Errors (Consul, templates, validation, reload) are logged and
// retried on the next change; Run returns only when ctx ends.
//
// Which datacenters are read (see Options.Datacenters) and in what order
// is re-read every dcRefresh (30s) and whenever the local datacenter's
// cluster config changes; a datacenter that cannot be read keeps the
// groups last read from it and is marked unreachable.
func (r *Renderer) Run(ctx context.Context) error {
	if r.opts.Client == nil {
		return errors.New("routing: no Consul client")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	src := &source{r: r, ctx: ctx, out: make(chan *Mesh, 1), remote: map[string]*dcState{}, local: &dcState{}}
	// Which datacenter is ours is learnt once, before any watch starts
	// (the watches read it without a lock).
	if r.resolveLocalDC(ctx) == "" {
		r.log.Warn("cannot tell which Consul datacenter is local (the agent's /v1/agent/self and the catalog did not say); if the mesh spans datacenters, set consul.datacenter in the render config")
	}
	src.watch(ctx, "", src.local)
	go src.refreshLoop(ctx)
	r.loop(ctx, src.out)
	cancel()
	src.wg.Wait()
	return nil
}

// health asks c's datacenter for every instance of the cluster's service
// with its checks, blocking until index changes when index is non-zero.
func (r *Renderer) health(ctx context.Context, c *consulkv.Client, index uint64) ([]*api.ServiceEntry, uint64, error) {
	wait := healthWait
	timeout := 10 * time.Second
	if index != 0 {
		timeout += wait + wait/16
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	q := &api.QueryOptions{WaitIndex: index, WaitTime: wait}
	entries, meta, err := c.API().Health().Service(r.cluster, "", false, q.WithContext(ctx))
	if err != nil {
		return nil, 0, err
	}
	return entries, meta.LastIndex, nil
}

// watchHealth is a blocking-query loop over the service's health in c's
// datacenter (no polling: each query returns when Consul's index moves or
// after healthWait). Errors back off exponentially; ok is told about every
// query that succeeded, fn about every change.
func (r *Renderer) watchHealth(ctx context.Context, c *consulkv.Client, onErr func(error), ok func(), fn func([]*api.ServiceEntry)) {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 100 * time.Millisecond
	bo.MaxInterval = 10 * time.Second
	bo.MaxElapsedTime = 0
	var index uint64
	for ctx.Err() == nil {
		entries, newIndex, err := r.health(ctx, c, index)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			onErr(err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(bo.NextBackOff()):
			}
			continue
		}
		bo.Reset()
		ok()
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

// dcState is what the watches of one datacenter have read.
type dcState struct {
	name    string // "" = the local datacenter
	view    *consulkv.ClusterView
	entries []*api.ServiceEntry
	haveEnt bool
	// kvErr and healthErr are the last failures of each watch (nil once a
	// query succeeds again).
	kvErr, healthErr error
	cancel           context.CancelFunc
}

func (d *dcState) err() error {
	if d.kvErr != nil {
		return d.kvErr
	}
	return d.healthErr
}

// settled: the datacenter was read, or failed, at least once — the first
// render does not wait for more.
func (d *dcState) settled() bool { return (d.view != nil && d.haveEnt) || d.err() != nil }

// source combines the watches into meshes; the channel holds only the
// newest one.
type source struct {
	r   *Renderer
	ctx context.Context
	wg  sync.WaitGroup
	mu  sync.Mutex
	// local is the local datacenter (Options.Client); remote the others
	// being read, by name.
	local  *dcState
	remote map[string]*dcState
	// wanted is the datacenter list last decided (nil: local only);
	// order and rtt their preference order.
	wanted []string
	order  []string
	rtt    map[string]time.Duration
	// cfgDCs is the cluster config's datacenters last seen locally;
	// decided is set by the first refresh.
	cfgDCs  []string
	decided bool
	out     chan *Mesh
}

// watch starts the KV and health watches of one datacenter ("" = local).
func (s *source) watch(ctx context.Context, dc string, st *dcState) {
	r := s.r
	c, err := r.clientFor(dc)
	if err != nil {
		// Only remote datacenters can fail here, and refresh, which starts
		// them, holds s.mu.
		st.kvErr = err
		return
	}
	ctx, st.cancel = context.WithCancel(ctx)
	log := r.log
	if dc != "" {
		log = log.With(zap.String("datacenter", dc))
	}
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		// At most 10 re-reads of the tree per second: under write load the
		// members' keys change every loop, and the debounce below absorbs
		// the churn anyway. (250ms made a switchover's burst of writes -
		// release, acquire, member keys - converge 0.2s later.)
		c.WatchPrefix(ctx, c.ClusterPrefix(), consulkv.WatchOptions{MinInterval: 100 * time.Millisecond,
			OnError: func(err error) {
				r.opts.Metrics.watchError()
				s.logWatchError(log, st, "watching the cluster's KV tree", err)
				s.update(st, false, func() { st.kvErr = err })
			},
			OnSuccess: func() {
				s.update(st, false, func() { st.kvErr = nil })
			},
		}, func(index uint64, pairs consulkv.KVPairs) {
			view := c.DecodeCluster(index, pairs)
			if st == s.local {
				s.localConfig(view.Config)
			}
			s.update(st, true, func() { st.view = view })
		})
	}()
	go func() {
		defer s.wg.Done()
		r.watchHealth(ctx, c, func(err error) {
			r.opts.Metrics.watchError()
			s.logWatchError(log, st, "watching the cluster's service health", err)
			s.update(st, false, func() { st.healthErr = err })
		}, func() {
			s.update(st, false, func() { st.healthErr = nil })
		}, func(e []*api.ServiceEntry) {
			s.update(st, true, func() { st.entries, st.haveEnt = e, true })
		})
	}()
}

// logWatchError logs a failed watch query. For another datacenter only the
// first failure is a warning: "datacenter unreachable" says the rest, and a
// datacenter that stays down would otherwise log twice every backoff step.
func (s *source) logWatchError(log *zap.Logger, st *dcState, msg string, err error) {
	s.mu.Lock()
	known := st.name != "" && st.err() != nil
	s.mu.Unlock()
	if known {
		log.Debug(msg, zap.Error(err))
		return
	}
	log.Warn(msg, zap.Error(err))
}

// update changes a datacenter's state and publishes the new mesh when the
// change is visible: new data, or a datacenter that became unreachable or
// reachable again.
func (s *source) update(st *dcState, data bool, change func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	before := st.err() == nil
	change()
	now := st.err() == nil
	if st.name != "" && now != before {
		if now {
			s.r.log.Info("datacenter reachable again", zap.String("datacenter", st.name))
		} else {
			s.r.log.Warn("datacenter unreachable; routing keeps the groups last read from it", zap.String("datacenter", st.name), zap.Error(st.err()))
		}
	}
	if data || now != before {
		s.publish()
	}
}

// localConfig follows the local datacenter's cluster config: the first view
// decides which datacenters to read (nothing is published before), and a
// changed datacenters list changes it.
func (s *source) localConfig(cfg *consulkv.ClusterConfig) {
	var dcs []string
	if cfg != nil {
		dcs = cfg.Datacenters
	}
	s.mu.Lock()
	first := !s.decided
	changed := !slices.Equal(dcs, s.cfgDCs)
	s.cfgDCs = dcs
	s.mu.Unlock()
	if first || changed && len(s.r.opts.Datacenters) == 0 {
		s.refresh(s.ctx, cfg)
	}
}

// refreshLoop re-decides the datacenters and their order every dcRefresh.
func (s *source) refreshLoop(ctx context.Context) {
	t := time.NewTicker(dcRefresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		var cfg *consulkv.ClusterConfig
		if s.local.view != nil {
			cfg = s.local.view.Config
		}
		s.mu.Unlock()
		s.refresh(ctx, cfg)
	}
}

// refresh decides which datacenters to read and their order, and starts or
// stops their watches.
func (s *source) refresh(ctx context.Context, cfg *consulkv.ClusterConfig) {
	r := s.r
	if ctx.Err() != nil {
		return
	}
	dcs := r.wantedDatacenters(ctx, cfg)
	var order []string
	var rtt map[string]time.Duration
	if len(dcs) > 0 {
		order, rtt = r.readOrder(ctx, dcs)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !slices.Equal(dcs, s.wanted) {
		r.log.Info("datacenters read", zap.Strings("datacenters", dcs), zap.String("local", r.localDC))
	}
	s.wanted, s.order, s.rtt, s.decided = dcs, order, rtt, true
	keep := map[string]bool{}
	for _, dc := range dcs {
		if dc == r.localDC {
			continue
		}
		keep[dc] = true
		if s.remote[dc] == nil {
			st := &dcState{name: dc}
			s.remote[dc] = st
			s.watch(ctx, dc, st)
		}
	}
	for dc, st := range s.remote {
		if !keep[dc] {
			if st.cancel != nil {
				st.cancel()
			}
			delete(s.remote, dc)
		}
	}
	s.publish()
}

// publish builds the mesh from what every datacenter has read. It waits
// until the local datacenter was read and every other one was read or
// failed once, or the first render would be half a mesh.
func (s *source) publish() {
	if !s.decided || s.local.view == nil || !s.local.haveEnt {
		return
	}
	if len(s.wanted) == 0 {
		sendLatest(s.out, s.r.build(s.local.view, s.local.entries))
		return
	}
	views := []DatacenterView{{Name: s.r.localDC, View: s.local.view, Entries: s.local.entries, Err: s.local.err()}}
	for _, dc := range s.wanted {
		st := s.remote[dc]
		if dc == s.r.localDC || st == nil {
			continue
		}
		if !st.settled() {
			return
		}
		views = append(views, DatacenterView{Name: dc, View: st.view, Entries: st.entries, Err: st.err()})
	}
	sendLatest(s.out, s.r.buildAcross(views, s.order, s.rtt))
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
	r.opts.Metrics.datacenters(m.Datacenters)
	if p := strings.Join(m.Problems, "; "); p != r.problemsLogged {
		if p != "" {
			r.log.Warn("inconsistent mesh across datacenters", zap.Strings("problems", m.Problems))
		}
		r.problemsLogged = p
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
