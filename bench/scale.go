package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/internal/demo"
	"github.com/pgmesh/pgmesh/routing"
	"go.uber.org/zap"
)

// The scale benchmark's agents are SIMULATED: goroutines that make the
// Consul calls a pgmesh agent makes (through consulkv, the same code), with
// no PostgreSQL behind them.

const simCluster = "scale"

// simMember is one simulated agent.
type simMember struct {
	group  *simGroup
	name   string
	port   int
	apiURL string
	kv     *consulkv.Client
	lock   *consulkv.Lock
	p      profile
	stats  *loopStats
	wake   chan struct{}

	mu         sync.Mutex // held for a loop round or a switchover step
	wantLeader bool
	lsn        uint64
	regSig     string
	regAt      time.Time
	// What the member and status keys last held (the agent rewrites them
	// only when something but the timestamp changed, or every 30s).
	memberGate, statusGate simGate

	role    atomic.Value // string: primary | replica | unknown (read by the check server)
	holds   atomic.Bool
	started atomic.Bool
}

type simGroup struct {
	name    string
	members []*simMember
}

// loopStats collects loop round durations.
type loopStats struct {
	mu     sync.Mutex
	on     bool
	d      []float64
	errors int
	// samples of distinct errors (all the time, not only while on).
	seen map[string]int
}

func (l *loopStats) add(d time.Duration, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		if l.seen == nil {
			l.seen = map[string]int{}
		}
		msg := err.Error()
		if i := strings.Index(msg, ": "); i > 0 && len(msg) > 160 {
			msg = msg[:160]
		}
		if len(l.seen) < 8 || l.seen[msg] > 0 {
			l.seen[msg]++
		}
	}
	if !l.on {
		return
	}
	l.d = append(l.d, d.Seconds())
	if err != nil {
		l.errors++
	}
}

// errorSamples returns the distinct errors seen so far with their counts.
func (l *loopStats) errorSamples() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]int{}
	for k, v := range l.seen {
		out[k] = v
	}
	return out
}

func (l *loopStats) start() {
	l.mu.Lock()
	l.on, l.d, l.errors = true, nil, 0
	l.mu.Unlock()
}

func (l *loopStats) stop() ([]float64, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.on = false
	return l.d, l.errors
}

// simBusy makes every simulated member's WAL position move every loop, as
// under write load: member and status keys are then rewritten every loop.
var simBusy bool

// simGate mirrors the agent's changeGate (agent/loop.go).
type simGate struct {
	session, content string
	at               time.Time
}

func (g *simGate) due(session string, v any) bool {
	return session != g.session || consulkv.Content(v) != g.content || time.Since(g.at) >= 30*time.Second
}

func (g *simGate) done(session string, v any) {
	g.session, g.content, g.at = session, consulkv.Content(v), time.Now()
}

func (s *simMember) status() *consulkv.MemberStatus {
	role, _ := s.role.Load().(string)
	st := &consulkv.MemberStatus{
		Version: consulkv.ValueVersion, Name: s.name, Group: s.group.name, Role: role, State: "running",
		APIURL: s.apiURL, ConnURL: fmt.Sprintf("postgres://127.0.0.1:%d/postgres", s.port), Host: "127.0.0.1", Port: s.port,
		Timeline: 1, SystemID: "7712307695711915214", Streaming: role == consulkv.RoleReplica,
		Tags: consulkv.MemberTags{FailoverPriority: 1}, PGVersion: 150010, AgentVersion: "bench-sim", UpdatedAt: time.Now().UTC(),
	}
	if simBusy {
		s.lsn += 4096
	}
	if role == consulkv.RolePrimary {
		st.WriteLSN = s.lsn
	} else {
		st.ReceiveLSN, st.ReplayLSN = s.lsn, s.lsn
	}
	return st
}

// register (re)registers the service when the role changed or every 30s,
// like the agent.
func (s *simMember) register(ctx context.Context, force bool) error {
	role, _ := s.role.Load().(string)
	svc := consulkv.MemberService{Group: s.group.name, Member: s.name, Role: role, Address: "127.0.0.1", Port: s.port,
		APIURL: s.apiURL, Timeline: 1, Passing: role == consulkv.RolePrimary || role == consulkv.RoleReplica}
	sig := svc.Signature()
	if !force && sig == s.regSig && time.Since(s.regAt) < 30*time.Second {
		return nil
	}
	if err := s.kv.RegisterMember(ctx, svc); err != nil {
		s.regSig = ""
		return err
	}
	s.regSig, s.regAt = sig, time.Now()
	return nil
}

// round is one HA loop's Consul traffic: renew the session, read the
// group, (leader) publish the status key if it changed or (designated
// member, no leader) acquire the lock, write the member key if it changed,
// register if needed. The config comes from a watch (see watch).
func (s *simMember) round(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	if s.regSig == "" {
		if err := s.register(ctx, false); err != nil {
			errs = append(errs, err)
		}
	}
	sess, err := s.lock.EnsureSession(ctx)
	if errors.Is(err, consulkv.ErrSessionGone) {
		sess, err = s.lock.EnsureSession(ctx)
	}
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	g, err := s.kv.ReadGroup(ctx, s.group.name)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	holds := g.Leader != nil && g.Leader.Session == sess
	switch {
	case holds:
		gs := &consulkv.GroupStatus{Version: consulkv.ValueVersion, Leader: s.name, LastLSN: s.lsn, Timeline: 1, UpdatedAt: time.Now().UTC()}
		if s.statusGate.due(sess, gs) || g.Status == nil || g.Status.Leader != s.name {
			if err := s.kv.LeaderPut(ctx, s.group.name, sess, s.kv.StatusKey(s.group.name), gs); err != nil {
				errs = append(errs, err)
			} else {
				s.statusGate.done(sess, gs)
			}
		}
	case g.Leader == nil && s.wantLeader:
		ok, err := s.lock.Acquire(ctx)
		if err != nil {
			errs = append(errs, err)
		}
		holds = ok
	}
	s.setRole(holds)
	_, present := g.Members[s.name]
	if st := s.status(); s.memberGate.due(sess, st) || !present {
		if err := s.kv.PutMember(ctx, s.group.name, sess, st); err != nil {
			errs = append(errs, err)
		} else {
			s.memberGate.done(sess, st)
		}
	}
	if err := s.register(ctx, false); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (s *simMember) setRole(holds bool) {
	s.holds.Store(holds)
	if holds {
		s.role.Store(consulkv.RolePrimary)
	} else {
		s.role.Store(consulkv.RoleReplica)
	}
}

func (s *simMember) run(ctx context.Context, wg *sync.WaitGroup, ramp time.Duration) {
	defer wg.Done()
	// Real agents are not in step: start at a random point of the loop
	// (or of the ramp-up period).
	spread := max(ramp, s.p.LoopWait)
	if sleepCtx(ctx, time.Duration(rand.Int64N(int64(spread)))) != nil {
		return
	}
	wg.Add(1)
	go s.watch(ctx, wg)
	for ctx.Err() == nil {
		t := time.Now()
		err := s.round(ctx)
		if ctx.Err() != nil {
			return
		}
		s.stats.add(time.Since(t), err)
		s.started.Store(true)
		select {
		case <-ctx.Done():
		case <-s.wake:
		case <-time.After(s.p.LoopWait):
		}
	}
}

// watch is the agent's watches: one blocking query each on the group's
// leader and failover keys (waking the loop) and on the config key.
func (s *simMember) watch(ctx context.Context, wg *sync.WaitGroup) {
	defer wg.Done()
	wake := func(uint64, *api.KVPair) {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
	var inner sync.WaitGroup
	for _, key := range []string{s.kv.LeaderKey(s.group.name), s.kv.FailoverKey(s.group.name)} {
		inner.Add(1)
		go func(key string) {
			defer inner.Done()
			s.kv.WatchKey(ctx, key, consulkv.WatchOptions{Wait: time.Minute}, wake)
		}(key)
	}
	s.kv.WatchKey(ctx, s.kv.ConfigKey(), consulkv.WatchOptions{Wait: time.Minute}, func(uint64, *api.KVPair) {})
	inner.Wait()
}

// switchover hands group g's lock from its leader to the next member the
// way the agents do it (release, candidate acquires, both republish their
// member key and registration) and returns the new leader and the instant
// the last of those writes returned.
func (g *simGroup) switchover(ctx context.Context) (string, time.Time, error) {
	var leader *simMember
	for _, m := range g.members {
		if m.holds.Load() {
			leader = m
		}
	}
	if leader == nil {
		return "", time.Time{}, fmt.Errorf("group %s has no leader", g.name)
	}
	var cand *simMember
	for i, m := range g.members {
		if m == leader {
			cand = g.members[(i+1)%len(g.members)]
		}
	}
	leader.mu.Lock()
	leader.wantLeader = false
	err := leader.lock.Release(ctx)
	if err == nil {
		leader.setRole(false)
		sess := leader.lock.Session()
		err = errors.Join(leader.kv.PutMember(ctx, g.name, sess, leader.status()), leader.register(ctx, true))
	}
	leader.mu.Unlock()
	if err != nil {
		return "", time.Time{}, err
	}
	cand.mu.Lock()
	defer cand.mu.Unlock()
	cand.wantLeader = true
	ok, err := cand.lock.Acquire(ctx)
	if err != nil || !ok {
		return "", time.Time{}, fmt.Errorf("candidate %s could not acquire (ok=%v): %v", cand.name, ok, err)
	}
	cand.setRole(true)
	if err := errors.Join(cand.kv.PutMember(ctx, g.name, cand.lock.Session(), cand.status()), cand.register(ctx, true)); err != nil {
		return "", time.Time{}, err
	}
	return cand.name, time.Now(), nil
}

// checkServer answers the simulated members' REST checks for Consul:
// /m/<group>/<member>/{primary,replica,liveness}.
type checkServer struct {
	members map[string]*simMember
	srv     *http.Server
	addr    string
	hits    atomic.Int64
}

func (c *checkServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.hits.Add(1)
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/m/"), "/")
	if len(parts) != 3 {
		http.NotFound(w, r)
		return
	}
	m := c.members[parts[0]+"/"+parts[1]]
	if m == nil {
		http.NotFound(w, r)
		return
	}
	role, _ := m.role.Load().(string)
	ok := false
	switch parts[2] {
	case "primary":
		ok = role == consulkv.RolePrimary && m.holds.Load()
	case "replica":
		ok = role == consulkv.RoleReplica
	case "liveness":
		ok = true
	}
	if ok {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
}

type scaleResult struct {
	groups, members                 int
	reqPerSec, reqPerMember         float64
	kbPerSec                        float64
	byKind                          map[string]int64
	consulCPU, genCPU               float64
	consulRSS                       int64
	checksPerSec                    float64
	loopP50, loopP99, loopMax       float64
	loopErrors, loops               int
	renderReqPerSec, renderKBPerSec float64
	readLat, renderLat, convergence []float64
	primaries                       int
	window                          time.Duration
	// err is why the size did not complete (what was measured is kept).
	err string
}

func runScale(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("scale", flag.ContinueOnError)
	groupsFlag := fs.String("groups", "10,50,100", "comma-separated numbers of simulated groups (a fresh Consul each)")
	members := fs.Int("members", 3, "members per simulated group")
	duration := fs.Duration("duration", 30*time.Second, "measurement window per size")
	warmup := fs.Duration("warmup", 10*time.Second, "time after every group has a leader before measuring")
	renders := fs.Int("renders", 20, "render-input/render latency samples per size")
	switchovers := fs.Int("switchovers", 5, "simulated switchovers per size (renderer convergence samples)")
	fs.BoolVar(&simBusy, "busy", false, "simulate write load: every member's WAL position moves every loop, so member and status keys are rewritten every loop")
	ramp := fs.Duration("ramp", 0, "start the simulated agents at random points of this period (default: within one loop_wait, a cold start of every agent at once)")
	ctx, p, err := e.parseProfile(ctx, fs, args, 30*time.Minute)
	if err != nil {
		return err
	}
	var sizes []int
	for _, f := range strings.Split(*groupsFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return fmt.Errorf("-groups: %q is not a positive number", f)
		}
		sizes = append(sizes, n)
	}
	printf("# scale: SIMULATED agents (goroutines speaking pgmesh's Consul protocol through consulkv; no PostgreSQL).\n")
	printf("# per member every loop_wait: renew session, consistent GET of the group; member key PUT ?acquire and (leader)\n")
	printf("# status key txn only when changed or every 30s (-busy: WAL positions move every loop, so every loop);\n")
	printf("# blocking watches on the leader, failover and config keys; service registration with two HTTP checks\n")
	printf("# (answered by the generator), one leader lock per group. One Consul server does all of it (no client agents).\n")
	printf("# The routing renderer (routing.Renderer, builtin haproxy.cfg + a primaries list) runs against the same Consul.\n")
	printf("# profile %s\n", p)
	var results []scaleResult
	var failed []string
	for _, n := range sizes {
		r, err := scaleOnce(ctx, e, p, n, *members, *warmup, *duration, *renders, *switchovers, *ramp)
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			// Keep what was measured; the other sizes still run.
			r.err = err.Error()
			failed = append(failed, fmt.Sprintf("%d groups: %v", n, err))
			printf("%d groups: FAILED: %v\n", n, err)
		}
		results = append(results, r)
	}
	printf("\nscale (SIMULATED agents), profile %s, %s window per size\n", p.Name, *duration)
	var rows [][]string
	for _, r := range results {
		if r.window == 0 {
			rows = append(rows, []string{strconv.Itoa(r.groups), strconv.Itoa(r.members), "failed before the window: " + r.err})
			continue
		}
		rows = append(rows, []string{
			strconv.Itoa(r.groups), strconv.Itoa(r.members),
			fmt.Sprintf("%.0f", r.reqPerSec), fmt.Sprintf("%.2f", r.reqPerMember),
			fmt.Sprintf("%.0f%%", r.consulCPU), fmt.Sprintf("%.0f MB", mb(r.consulRSS)),
			fmt.Sprintf("%.0f/%.0fms", r.loopP50*1000, r.loopP99*1000),
			fmt.Sprintf("%.1f", r.renderReqPerSec), fmt.Sprintf("%.0f", r.renderKBPerSec),
			fmtMs(summarize(r.readLat).median), fmtMs(summarize(r.renderLat).median),
			fmtMs(summarize(r.convergence).median), fmtMs(summarize(r.convergence).max),
		})
	}
	table([]string{"groups", "members", "Consul req/s", "req/s/member", "Consul CPU", "Consul RSS", "loop p50/p99",
		"renderer req/s", "renderer KB/s", "render input", "render", "convergence med", "max"}, rows)
	printf("(Consul CPU: %% of one CPU; loop: one simulated HA round's Consul calls; render input: consistent ReadCluster +\n")
	printf(" Health().Service + BuildMesh; render: executing builtin:haproxy.cfg.tmpl + compare/install; convergence: last Consul\n")
	printf(" write of a simulated switchover -> primaries file rewritten by the running renderer, 200ms debounce included)\n")
	if len(failed) > 0 {
		e.fail()
		return fmt.Errorf("%d size(s) failed: %s", len(failed), strings.Join(failed, "; "))
	}
	return nil
}

func scaleOnce(ctx context.Context, e *env, p profile, ngroups, nmembers int, warmup, duration time.Duration, renders, switchovers int, ramp time.Duration) (scaleResult, error) {
	res := scaleResult{groups: ngroups, members: ngroups * nmembers}
	printf("\n# %d groups x %d members (SIMULATED)\n", ngroups, nmembers)
	var out io.Writer = io.Discard
	if e.verbose {
		out = &prefixWriter{prefix: "#   demo: ", w: os.Stdout}
	}
	cm, err := demo.StartConsul(ctx, demo.Options{
		WorkDir: e.workDir, Cluster: simCluster, ConsulBin: e.consulBin, Out: out,
		ConsulHTTPPort: e.portBase + 500, ConsulDNSPort: e.portBase + 600,
		// One Consul serves every simulated agent from 127.0.0.1.
		ConsulExtraHCL: "limits { http_max_conns_per_client = 4096 }",
	})
	if err != nil {
		return res, err
	}
	var stopOnce sync.Once
	stopConsul := func() { stopOnce.Do(cm.Stop) }
	e.cleanups = append(e.cleanups, stopConsul)
	defer stopConsul()

	genProxy, err := startCountingProxy("", cm.Consul, consulLabel(consulkv.DefaultPrefix+"/"+simCluster))
	if err != nil {
		return res, err
	}
	defer genProxy.Close()
	renderProxy, err := startCountingProxy("", cm.Consul, consulLabel(consulkv.DefaultPrefix+"/"+simCluster))
	if err != nil {
		return res, err
	}
	defer renderProxy.Close()

	// Check server.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return res, err
	}
	cs := &checkServer{members: map[string]*simMember{}, addr: ln.Addr().String()}
	cs.srv = &http.Server{Handler: cs, ReadHeaderTimeout: 5 * time.Second}
	go cs.srv.Serve(ln)
	defer cs.srv.Close()

	direct, err := consulkv.New(consulkv.Config{Address: cm.Consul, Cluster: simCluster})
	if err != nil {
		return res, err
	}
	seed := consulkv.ClusterConfig{TTL: consulkv.Duration(p.TTL), LoopWait: consulkv.Duration(p.LoopWait),
		RetryTimeout: consulkv.Duration(p.RetryTimeout), LockDelay: consulkv.Duration(p.LockDelay)}.WithDefaults()
	if _, err := direct.CAS(ctx, direct.ConfigKey(), &seed, 0); err != nil {
		return res, err
	}

	stats := &loopStats{}
	var groups []*simGroup
	var all []*simMember
	port := 40000
	for gi := 1; gi <= ngroups; gi++ {
		g := &simGroup{name: fmt.Sprintf("n%d", gi)}
		for k := 0; k < nmembers; k++ {
			name := fmt.Sprintf("%s-%c", g.name, 'a'+k)
			kv, err := consulkv.New(consulkv.Config{Address: genProxy.Addr, Cluster: simCluster, RequestTimeout: p.RetryTimeout})
			if err != nil {
				return res, err
			}
			m := &simMember{group: g, name: name, port: port, kv: kv, p: p, stats: stats, wake: make(chan struct{}, 1),
				apiURL: fmt.Sprintf("http://%s/m/%s/%s", cs.addr, g.name, name), wantLeader: k == 0}
			port++
			m.role.Store(consulkv.RoleUnknown)
			m.lock = kv.NewLock(g.name, name, consulkv.LockOptions{TTL: p.TTL, LockDelay: p.LockDelay})
			g.members = append(g.members, m)
			all = append(all, m)
			cs.members[g.name+"/"+name] = m
		}
		groups = append(groups, g)
	}
	simCtx, stopSim := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		stopSim()
		wg.Wait()
	}()
	t0 := time.Now()
	for _, m := range all {
		wg.Add(1)
		go m.run(simCtx, &wg, ramp)
	}
	// Every group led, every member through a round.
	for {
		led, started := 0, 0
		for _, g := range groups {
			for _, m := range g.members {
				if m.holds.Load() {
					led++
				}
				if m.started.Load() {
					started++
				}
			}
		}
		if led == ngroups && started == len(all) {
			break
		}
		if time.Since(t0) > 3*time.Minute+ramp {
			return res, fmt.Errorf("after 3 minutes %d/%d groups have a leader, %d/%d members ran a round", led, ngroups, started, len(all))
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return res, err
		}
	}
	printf("# all %d groups led after %.1fs; warming up %s\n", ngroups, time.Since(t0).Seconds(), warmup)

	// The running renderer (through its own counting proxy).
	dir := filepath.Join(e.workDir, "render")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return res, err
	}
	marker := filepath.Join(dir, "primaries.tmpl")
	if err := os.WriteFile(marker, []byte("{{range .Mesh.Primaries}}{{.Group}}={{.Name}}\n{{end}}"), 0o644); err != nil {
		return res, err
	}
	rkv, err := consulkv.New(consulkv.Config{Address: renderProxy.Addr, Cluster: simCluster})
	if err != nil {
		return res, err
	}
	primariesFile := filepath.Join(dir, "primaries.txt")
	rr, err := routing.New(routing.Options{Client: rkv, Log: zap.NewNop(), Entries: []routing.Entry{
		{Template: "builtin:haproxy.cfg.tmpl", Destination: filepath.Join(dir, "haproxy.cfg")},
		{Template: marker, Destination: primariesFile},
	}})
	if err != nil {
		return res, err
	}
	rctx, stopRender := context.WithCancel(ctx)
	renderDone := make(chan struct{})
	go func() { defer close(renderDone); rr.Run(rctx) }()
	defer func() { stopRender(); <-renderDone }()

	if err := sleepCtx(ctx, warmup); err != nil {
		return res, err
	}

	// Measurement window.
	base, rbase := genProxy.Snapshot(), renderProxy.Snapshot()
	checks0 := cs.hits.Load()
	consulCPU, selfCPU := startCPU(cm.ConsulPID()), startCPU(os.Getpid())
	stats.start()
	start := time.Now()
	printf("# measuring for %s …\n", duration)
	if err := sleepCtx(ctx, duration); err != nil {
		return res, err
	}
	el := time.Since(start)
	res.window = el
	loops, loopErrs := stats.stop()
	d, rd := genProxy.Snapshot().Sub(base), renderProxy.Snapshot().Sub(rbase)
	res.consulCPU, res.genCPU = consulCPU.percent(), selfCPU.percent()
	res.consulRSS, _ = procRSS(cm.ConsulPID())
	res.checksPerSec = float64(cs.hits.Load()-checks0) / el.Seconds()
	res.reqPerSec = float64(d.Total) / el.Seconds()
	res.reqPerMember = res.reqPerSec / float64(len(all))
	res.kbPerSec = float64(d.Down) / 1024 / el.Seconds()
	res.byKind = d.ByKind
	res.loops, res.loopErrors = len(loops), loopErrs
	res.loopP50, res.loopP99, res.loopMax = percentile(loops, 50), percentile(loops, 99), percentile(loops, 100)
	res.renderReqPerSec = float64(rd.Total) / el.Seconds()
	res.renderKBPerSec = float64(rd.Down) / 1024 / el.Seconds()
	printf("%d groups: %d simulated members made %d Consul requests in %.1fs = %.0f/s (%.2f/s per member, %.0f KB/s from Consul); "+
		"Consul CPU %.0f%%, RSS %.0f MB; generator CPU %.0f%% (incl. the renderer); HTTP checks %.0f/s; "+
		"loop round p50 %.0fms p99 %.0fms max %.0fms over %d rounds, %d with errors\n",
		ngroups, len(all), d.Total, el.Seconds(), res.reqPerSec, res.reqPerMember, res.kbPerSec,
		res.consulCPU, mb(res.consulRSS), res.genCPU, res.checksPerSec,
		res.loopP50*1000, res.loopP99*1000, res.loopMax*1000, res.loops, res.loopErrors)
	for msg, n := range stats.errorSamples() {
		printf("    loop error (%dx since start): %s\n", n, msg)
	}
	kinds := make([]string, 0, len(d.ByKind))
	for k := range d.ByKind {
		kinds = append(kinds, k)
	}
	sort.Slice(kinds, func(i, j int) bool { return d.ByKind[kinds[i]] > d.ByKind[kinds[j]] })
	for _, k := range kinds {
		printf("    %8.1f/s  %s\n", float64(d.ByKind[k])/el.Seconds(), k)
	}
	printf("%d groups: renderer made %d Consul requests = %.1f/s, %.0f KB/s from Consul\n", ngroups, rd.Total, res.renderReqPerSec, res.renderKBPerSec)
	for k, v := range rd.ByKind {
		printf("    %8.1f/s  %s\n", float64(v)/el.Seconds(), k)
	}

	// Render input and render latency (one-shot, a separate renderer).
	sample, err := routing.New(routing.Options{Client: direct, Log: zap.NewNop(), Entries: []routing.Entry{
		{Template: "builtin:haproxy.cfg.tmpl", Destination: filepath.Join(dir, "haproxy-sample.cfg")},
	}})
	if err != nil {
		return res, err
	}
	for i := 0; i < renders; i++ {
		t := time.Now()
		mesh, err := sample.Mesh(ctx)
		if err != nil {
			return res, fmt.Errorf("render input: %w", err)
		}
		t1 := time.Now()
		if err := sample.Render(ctx, mesh); err != nil {
			return res, fmt.Errorf("render: %w", err)
		}
		t2 := time.Now()
		res.readLat = append(res.readLat, t1.Sub(t).Seconds())
		res.renderLat = append(res.renderLat, t2.Sub(t1).Seconds())
		res.primaries = len(mesh.Primaries())
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return res, err
		}
	}
	printf("%d groups: render input (ReadCluster + Health().Service + BuildMesh) median %s p95 %s max %s; render (haproxy.cfg) median %s max %s; %d samples; writable primaries in the model: %d/%d\n",
		ngroups, fmtMs(summarize(res.readLat).median), fmtMs(percentile(res.readLat, 95)), fmtMs(summarize(res.readLat).max),
		fmtMs(summarize(res.renderLat).median), fmtMs(summarize(res.renderLat).max), len(res.readLat), res.primaries, ngroups)

	// Convergence: simulated switchovers, time until the running renderer
	// rewrote the primaries file.
	for i := 0; i < switchovers; i++ {
		g := groups[(i*7+3)%len(groups)]
		newLeader, at, err := g.switchover(ctx)
		if err != nil {
			return res, fmt.Errorf("switchover of %s: %w", g.name, err)
		}
		want := g.name + "=" + newLeader + "\n"
		deadline := at.Add(30 * time.Second)
		for {
			b, _ := os.ReadFile(primariesFile)
			if strings.Contains("\n"+string(b), "\n"+want) {
				c := time.Since(at)
				res.convergence = append(res.convergence, c.Seconds())
				printf("%d groups: switchover %d/%d of %s to %s: primaries file rewritten %s after the last Consul write\n", ngroups, i+1, switchovers, g.name, newLeader, c.Round(time.Millisecond))
				break
			}
			if time.Now().After(deadline) {
				return res, fmt.Errorf("renderer did not show %s=%s within 30s", g.name, newLeader)
			}
			if err := sleepCtx(ctx, 5*time.Millisecond); err != nil {
				return res, err
			}
		}
		if err := sleepCtx(ctx, time.Second); err != nil {
			return res, err
		}
	}
	return res, nil
}
