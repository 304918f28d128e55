package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/health"
	"github.com/pgmesh/pgmesh/internal/version"
	"github.com/pgmesh/pgmesh/pg"
	"go.uber.org/zap"
)

// defaultParameters are PostgreSQL settings pgmesh wants unless the
// operator's dynamic or local parameters say otherwise.
var defaultParameters = map[string]string{
	// A replica retries a lost upstream every second, not every 5s, so it
	// finds a new primary (or its new slot) quickly.
	"wal_retrieve_retry_interval": "1s",
	// A standby reports its flush position at least every second, not every
	// 10s. When the leader moves synchronous replication to another standby
	// (the old one is gone), commits already waiting are released only by
	// the new standby's next report; they are blocked, so no new WAL makes
	// it report sooner.
	"wal_receiver_status_interval": "1s",
}

// ErrRefused is returned by Run when the data directory belongs to another
// cluster: the agent will not touch it.
var ErrRefused = errors.New("refusing to manage this data directory")

// Agent runs one member's HA loop.
type Agent struct {
	cfg  *Config
	log  *zap.Logger
	kv   *consulkv.Client
	lock *consulkv.Lock
	api  *health.Server
	fw   *fenceWatchdog

	pgMu     sync.Mutex
	pg       *pg.Instance
	pgParams map[string]string
	// pg17 is the PostgreSQL 17+ failover-slot state (logical.go).
	pg17 native17State
	// lifecycleMu serialises the loop's PostgreSQL starts with the lease
	// fence's stop: a fence whose stop overlapped a start once killed the
	// postmaster the loop had just started (after a successful renew).
	lifecycleMu sync.Mutex

	wake    chan struct{}
	manual  chan manualRequest
	started time.Time

	// Loop-private state (only the loop goroutine touches these).
	dyn           consulkv.ClusterConfig
	following     string
	lastStreaming time.Time
	// streamedTLI is the highest timeline this data dir has streamed on
	// (reset when the data dir is replaced or rewound).
	streamedTLI  uint32
	lastDecision string
	lastProblems map[string]bool
	slotMembers  map[string]time.Time
	lastGroup    *consulkv.GroupView
	// lastGroupView is lastGroup for other goroutines (the REST API's
	// allowlist of group members).
	lastGroupView atomic.Pointer[consulkv.GroupView]
	// peerTLS is how this member calls its peers' REST APIs over HTTPS
	// (nil: plain HTTP).
	peerTLS *health.ClientTLS
	// metrics are pgmesh's own Prometheus metrics (GET /metrics); loops
	// counts completed HA loops (the first one's leadership is not a change).
	metrics *agentMetrics
	loops   int
	// syncNames is the synchronous_standby_names the leader wants.
	syncNames string
	// replies tells standbys that stopped replying (sync.go).
	replies replyTracker
	// Logical replication between groups (logical.go).
	copiedSlots    map[string]bool
	logical        *consulkv.LogicalStatus
	slotsReady     bool
	groupCount     int
	groupCountAt   time.Time
	paramConflicts map[string]bool
	// lastConfigProblem keeps an unreadable config key from being logged
	// every loop.
	lastConfigProblem string
	consulDownFrom    time.Time
	consulLoggedAt    time.Time
	// consulRefused: the last failure was an ACL refusal, which retrying
	// every second does not fix (the loop backs off instead).
	consulRefused bool
	// iAmLeaderNow, when set, overrides the observation's view of the
	// lock for this round's publish (set by acquire/promote/release).
	iAmLeaderNow *bool
	// watchedConfig is written by the config watch and read by the loop,
	// which then needs no request of its own for the config each round.
	watchedConfig atomic.Pointer[watchedConfig]
	reg           *registrar
	// leaderGoneAt (unix ns, set by the leader watch) and retryAcquireAt
	// let a member refused by lock-delay retry when it ends, not a whole
	// loop_wait later.
	leaderGoneAt   atomic.Int64
	retryAcquireAt time.Time
	quickRetries   int
	// lastLeaderChecks: the last leader seen published session checks (its
	// session's lock-delay is then the checks' one).
	lastLeaderChecks bool
	// autoChecks: the session checks automatic failure detection chose
	// (nil until the Consul agent said what it is; detection.go).
	autoChecks atomic.Pointer[[]string]
	// holdsLock: this member holds the leader lock as far as the loop knows
	// (set at the acquire, then by every publish) — for the keepalive.
	holdsLock atomic.Bool
	// loopWaitNs mirrors dyn.LoopWait for the leader keepalive.
	loopWaitNs atomic.Int64
	// queries and queriesChanged hand the prepared-query setting to
	// keepQueries (queries.go).
	queries        atomic.Pointer[queriesSetting]
	queriesChanged chan struct{}
	// downAsLeaderSince: when PostgreSQL was first seen down while this
	// member held the lock (primary_start_timeout).
	downAsLeaderSince time.Time
	// leaderStarting is set from the lease check before a start or
	// promotion that makes PostgreSQL writable until the round's publish:
	// the lease fence guards PostgreSQL meanwhile, before it is marked
	// writable.
	leaderStarting atomic.Bool
	// memberWrite and statusWrite skip rewriting unchanged keys.
	memberWrite, statusWrite changeGate
	// cb runs postgresql.callbacks (callbacks.go).
	cb *callbacks
	// failsafe is failsafe mode's state (failsafe.go).
	failsafe failsafeState

	stateMu sync.Mutex
	state   health.MemberState
}

type manualRequest struct {
	kind  string // restart, reload, reinit
	force bool
	done  chan error
}

// New builds an agent from its configuration; it does no I/O.
func New(cfg *Config, log *zap.Logger) (*Agent, error) {
	kv, err := consulkv.New(consulkv.Config{
		Address: cfg.Consul.Address, Scheme: cfg.Consul.Scheme, Token: cfg.Consul.Token,
		Datacenter: cfg.Consul.Datacenter, CAFile: cfg.Consul.CAFile, CertFile: cfg.Consul.CertFile,
		KeyFile: cfg.Consul.KeyFile, InsecureSkipVerify: cfg.Consul.InsecureSkipVerify, TLSServerName: cfg.Consul.TLSServerName,
		Prefix: cfg.Consul.Prefix, Cluster: cfg.Cluster,
		RequestTimeout: cfg.Bootstrap.DCS.ClusterConfig().RetryTimeout.D(),
	})
	if err != nil {
		return nil, err
	}
	log = log.With(zap.String("cluster", cfg.Cluster), zap.String("group", cfg.Group), zap.String("member", cfg.Name))
	a := &Agent{
		cfg:            cfg,
		log:            log,
		kv:             kv,
		wake:           make(chan struct{}, 1),
		queriesChanged: make(chan struct{}, 1),
		manual:         make(chan manualRequest),
		dyn:            cfg.Bootstrap.DCS.ClusterConfig(),
		slotMembers:    map[string]time.Time{},
	}
	a.lock = kv.NewLock(cfg.Group, cfg.Name, a.lockOptions())
	a.reg = newRegistrar(a)
	if err := a.rebuildPG(); err != nil {
		return nil, err
	}
	if a.cb, err = newCallbacks(cfg.PostgreSQL.Callbacks, cfg.PostgreSQL.CallbacksTimeout.D(), cfg.Group, callbackEnv(cfg, a.apiURL()), log.Named("callbacks")); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	a.state = health.MemberState{
		Cluster: cfg.Cluster, Group: cfg.Group, Name: cfg.Name, Role: consulkv.RoleUnknown, State: "starting",
		Tags: cfg.MemberTags(), APIURL: a.apiURL(), ConnURL: a.connURL(), TTL: a.dyn.TTL.D(),
	}
	allow, err := a.mutationAllowlist()
	if err != nil {
		return nil, err
	}
	var serverTLS *health.TLSOptions
	if r := cfg.RestAPI; r.TLSEnabled() {
		serverTLS = &health.TLSOptions{CertFile: r.CertFile, KeyFile: r.KeyFile, CAFile: r.CAFile, VerifyClient: r.VerifyClient}
		peer := health.ClientTLSOptions{CAFile: r.CAFile}
		if r.VerifyClient == health.VerifyClientRequired {
			peer.CertFile, peer.KeyFile = r.CertFile, r.KeyFile
		}
		if a.peerTLS, err = health.NewClientTLS(peer, log.Named("peers")); err != nil {
			return nil, fmt.Errorf("restapi TLS for calls to peers: %w", err)
		}
	}
	a.metrics = newAgentMetrics(a)
	a.api = health.NewServer(a, health.Options{
		Metrics:         a.metrics.reg,
		TLS:             serverTLS,
		Listen:          cfg.RestAPI.Listen,
		Auth:            a.basicAuth(),
		RefuseMutations: a.refuseMutations(),
		Allow:           allow,
		Log:             log.Named("api"),
	})
	return a, nil
}

// refuseMutations is why the REST API refuses every mutating request: it
// listens beyond loopback and nothing authenticates callers (no
// credentials), unless restapi.allow_unauthenticated says otherwise.
func (a *Agent) refuseMutations() string {
	r := a.cfg.RestAPI
	if !a.cfg.ListensBeyondLoopback() || r.Username != "" || r.ClientCertsRequired() || r.AllowUnauthenticated {
		return ""
	}
	return fmt.Sprintf("mutating requests are refused: the REST API listens on %s (reachable from other hosts) and no credentials are configured; set restapi.username and restapi.password (or *_file), or client certificates (restapi.certfile, keyfile, cafile and verify_client: optional), or restapi.allow_unauthenticated: true to accept them from anyone", r.Listen)
}

// mutationAllowlist builds the address filter of mutating requests from
// restapi.allowlist and, with allowlist_include_members, the hosts of the
// group's members as the agent last read them (nil: no filter).
func (a *Agent) mutationAllowlist() (func(net.IP) bool, error) {
	r := a.cfg.RestAPI
	if len(r.Allowlist) == 0 && !r.AllowlistIncludeMembers {
		return nil, nil
	}
	nets, err := parseAllowlist(r.Allowlist)
	if err != nil {
		return nil, err
	}
	return func(ip net.IP) bool {
		for _, n := range nets {
			if n.Contains(ip) {
				return true
			}
		}
		if r.AllowlistIncludeMembers {
			for _, m := range a.groupMemberHosts() {
				if m.Equal(ip) {
					return true
				}
			}
		}
		return false
	}, nil
}

// groupMemberHosts are the addresses of the group's members (PostgreSQL
// and REST hosts) from the last group read.
func (a *Agent) groupMemberHosts() []net.IP {
	g := a.lastGroupView.Load()
	if g == nil {
		return nil
	}
	var out []net.IP
	for _, m := range g.Members {
		for _, h := range []string{m.Host, hostOf(m.APIURL)} {
			if ip := net.ParseIP(h); ip != nil {
				out = append(out, ip)
			} else if h != "" {
				if ips, err := net.LookupIP(h); err == nil {
					out = append(out, ips...)
				}
			}
		}
	}
	return out
}

func hostOf(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return ""
	}
	return u.Hostname()
}

func (a *Agent) basicAuth() *health.BasicAuth {
	if a.cfg.RestAPI.Username == "" {
		return nil
	}
	return &health.BasicAuth{Username: a.cfg.RestAPI.Username, Password: a.cfg.RestAPI.Password}
}

func (a *Agent) lockOptions() consulkv.LockOptions {
	checks := a.sessionChecks()
	o := consulkv.LockOptions{TTL: a.dyn.TTL.D(), LockDelay: a.dyn.LockDelayFor(len(checks) > 0)}
	for _, c := range checks {
		if c == "liveness" {
			o.ServiceChecks = append(o.ServiceChecks, api.ServiceCheck{ID: a.kv.LivenessCheckID(a.cfg.Group, a.cfg.Name)})
		} else {
			o.NodeChecks = append(o.NodeChecks, c)
		}
	}
	return o
}

// fenceDeadline is how long after now the watchdog may let PostgreSQL run
// without hearing from the agent: until the lease of the session Consul
// holds ends, and for a session tied to health checks no later than its
// lock-delay after the renew that last confirmed it (a failing check frees
// the lock at once and a successor may take it lock-delay later). Both
// count from when that renew was sent, not from now.
func (a *Agent) fenceDeadline(now time.Time) time.Duration {
	u := a.leaseUntil()
	if u.IsZero() {
		return 0
	}
	return u.Sub(now)
}

// leaseUntil is when this member must stop acting as leader: its lease (the
// fence deadline of a session tied to checks), or a failsafe hold that
// lasts longer.
func (a *Agent) leaseUntil() time.Time {
	u := a.lock.FenceUntil()
	if h := a.failsafe.holdUntil(); h.After(u) {
		u = h
	}
	return u
}

// leaseValid: leaseUntil has not passed.
func (a *Agent) leaseValid(now time.Time) bool {
	u := a.leaseUntil()
	return !u.IsZero() && now.Before(u)
}

func (a *Agent) apiURL() string {
	if a.cfg.RestAPI.TLSEnabled() {
		return "https://" + a.cfg.RestAPI.ConnectAddress
	}
	return "http://" + a.cfg.RestAPI.ConnectAddress
}

// peerClient is the HTTP client for other members' REST APIs. With TLS
// configured it trusts restapi.cafile and, when the group requires client
// certificates, shows this member's own certificate; the files are read as
// they are now, so a rotation reaches the next polling round.
func (a *Agent) peerClient(timeout time.Duration) *http.Client {
	if a.peerTLS == nil {
		return &http.Client{Timeout: timeout}
	}
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		TLSClientConfig:     a.peerTLS.Config(),
		TLSHandshakeTimeout: timeout,
	}}
}

func (a *Agent) connURL() string {
	return fmt.Sprintf("postgres://%s/postgres", net.JoinHostPort(a.cfg.PostgreSQL.ConnectAddress, fmt.Sprint(a.cfg.PostgreSQL.Port)))
}

// parameters merges pgmesh's defaults, the cluster's dynamic parameters and
// the member's local ones (local wins, as in Patroni).
func (a *Agent) parameters() map[string]string {
	p := map[string]string{}
	for k, v := range defaultParameters {
		p[k] = v
	}
	for k, v := range a.dyn.Parameters {
		p[k] = v
	}
	for k, v := range a.cfg.PostgreSQL.Parameters {
		p[k] = v
	}
	groups := a.groupCount
	if groups < 1 {
		groups = 1
	}
	for k, v := range profileParameters(a.dyn.ReplicationProfile(), len(a.slotMembers)+1, groups, p) {
		if cur, ok := p[k]; ok && cur != v && k != "max_replication_slots" && k != "max_wal_senders" && k != "max_worker_processes" && k != "shared_preload_libraries" {
			if a.paramConflicts == nil {
				a.paramConflicts = map[string]bool{}
			}
			if !a.paramConflicts[k+"="+cur] {
				a.log.Error("refusing a parameter that would break replication between groups; enforcing the profile's value",
					zap.String("parameter", k), zap.String("refused", cur), zap.String("enforced", v), zap.String("replication", a.dyn.ReplicationProfile()))
				a.paramConflicts[k+"="+cur] = true
			}
		}
		p[k] = v
	}
	if a.dyn.SyncMode() != consulkv.SyncOff {
		// Managed by the leader (see sync.go); a local value would break
		// the sync key's promise.
		p["synchronous_standby_names"] = a.syncNames
	}
	return p
}

// rebuildPG (re)creates the PostgreSQL controller when the parameters it
// renders changed.
func (a *Agent) rebuildPG() error {
	params := a.parameters()
	a.pgMu.Lock()
	defer a.pgMu.Unlock()
	if a.pg != nil && mapsEqual(params, a.pgParams) {
		return nil
	}
	c := a.cfg.PostgreSQL
	inst, err := pg.New(pg.Config{
		Name: a.cfg.Name, DataDir: c.DataDir, BinDir: c.BinDir, ListenAddr: c.Listen, ConnectHost: c.ConnectAddress,
		Port: c.Port, Superuser: pg.Credentials{User: c.Superuser.Username, Password: c.Superuser.Password},
		Replication: pg.Credentials{User: c.Replication.Username, Password: c.Replication.Password},
		Parameters:  params, HBA: c.PgHBA, OSUser: c.OSUser,
		Spock: a.dyn.ReplicationProfile() == consulkv.ReplicationSpock,
	}, a.log.Named("pg"))
	if err != nil {
		return fmt.Errorf("postgresql config: %w", err)
	}
	if a.pg != nil {
		a.pg.Close()
	}
	a.pg, a.pgParams = inst, params
	return nil
}

func (a *Agent) pgi() *pg.Instance {
	a.pgMu.Lock()
	defer a.pgMu.Unlock()
	return a.pg
}

func mapsEqual(x, y map[string]string) bool {
	if len(x) != len(y) {
		return false
	}
	for k, v := range x {
		if w, ok := y[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// Wake makes the loop run now.
func (a *Agent) Wake() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// Run runs the agent until ctx is cancelled, then shuts down gracefully: a
// leader hands its WAL to a replica and releases the lock so the group fails
// over within about one loop.
func (a *Agent) Run(ctx context.Context) error {
	a.started = time.Now()
	a.log.Info("pgmesh agent starting", zap.String("version", version.Version), zap.String("api", a.apiURL()), zap.String("postgres", a.connURL()))
	switch {
	case a.refuseMutations() != "":
		a.log.Warn("REST API: " + a.refuseMutations())
	case a.cfg.ListensBeyondLoopback() && a.cfg.RestAPI.Username == "" && !a.cfg.RestAPI.ClientCertsRequired() && a.cfg.RestAPI.AllowUnauthenticated:
		a.log.Error("REST API: accepting switchover, failover, restart, reinitialize and config changes from anyone who reaches " + a.cfg.RestAPI.Listen + " without credentials (restapi.allow_unauthenticated is set)")
	}
	if a.cfg.ListensBeyondLoopback() && !a.cfg.RestAPI.TLSEnabled() && a.cfg.RestAPI.Username != "" {
		a.log.Warn("REST API: credentials travel in clear text over HTTP; set restapi.certfile and restapi.keyfile to serve HTTPS")
	}
	a.logFailureDetection(ctx)
	fw, err := startFenceWatchdog(a.log, a.pgi)
	if err != nil {
		return err
	}
	a.fw = fw
	defer a.fw.close()
	if err := a.api.Start(); err != nil {
		return fmt.Errorf("rest api: %w", err)
	}
	defer a.api.Shutdown(context.Background())

	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	a.watchKeys(watchCtx)
	if !a.cfg.Consul.DisableRegistration {
		go a.reg.run(watchCtx)
	}

	fenceCtx, stopFence := context.WithCancel(context.Background())
	defer stopFence()
	go a.leaseFence(fenceCtx)
	go a.leaderKeepalive(fenceCtx)
	go a.keepQueries(watchCtx)

	for {
		err := a.runOnce(ctx)
		if errors.Is(err, ErrRefused) {
			a.shutdown()
			return err
		}
		timer := time.NewTimer(a.sleepTime())
		select {
		case <-ctx.Done():
			timer.Stop()
			a.shutdown()
			return nil
		case <-a.wake:
		case req := <-a.manual:
			req.done <- a.runManual(ctx, req)
		case <-timer.C:
		}
		timer.Stop()
	}
}

// sleepTime is loop_wait, shorter while Consul is failing so the lease is
// renewed as soon as Consul is back.
func (a *Agent) sleepTime() time.Duration {
	d := a.dyn.LoopWait.D()
	switch {
	case !a.consulDownFrom.IsZero() && a.consulRefused:
		// Refused for want of a permission: back off (loop_wait doubling
		// with the time refused, at most 30s) instead of asking every loop.
		for since := time.Since(a.consulDownFrom); d < 30*time.Second && since > 2*d; {
			d *= 2
		}
		d = min(d, 30*time.Second)
	case !a.consulDownFrom.IsZero() && d > time.Second:
		d = time.Second
	}
	if !a.retryAcquireAt.IsZero() {
		if r := time.Until(a.retryAcquireAt); r < d {
			d = max(r, 10*time.Millisecond)
		}
	}
	return d
}

// maxQuickRetries bounds acquire retries between loops after lock-delay
// refusals (lock-delay is short; more refusals mean something else).
const maxQuickRetries = 20

// scheduleAcquireRetry is called when an acquire was refused although no
// one held the leader key: Consul's lock-delay after the old holder's
// session ended. Retry just after it ends instead of a loop_wait later.
func (a *Agent) scheduleAcquireRetry(now time.Time) {
	if a.quickRetries >= maxQuickRetries {
		return
	}
	a.quickRetries++
	at := now.Add(100 * time.Millisecond)
	if gone := a.leaderGoneAt.Load(); gone != 0 {
		// The lock-delay is the old holder's session's: automatic
		// lock_delay depends on whether that one was tied to checks.
		if end := time.Unix(0, gone).Add(a.dyn.LockDelayFor(a.lastLeaderChecks) + 20*time.Millisecond); end.After(at) {
			at = end
		}
	}
	a.retryAcquireAt = at
}

// watchKeys wakes the loop when the group's leader or failover key or the
// cluster's config key changes, so followers react to a released lock at
// once. Each key has its own blocking query: a watch on the whole group
// prefix would also return on every member-key write of every member.
func (a *Agent) watchKeys(ctx context.Context) {
	var lastErr sync.Map
	opts := func(key string) consulkv.WatchOptions {
		return consulkv.WatchOptions{
			Wait: time.Minute,
			OnError: func(err error) {
				if prev, ok := lastErr.Load(key); !ok || prev != err.Error() {
					a.log.Debug("watch failing", zap.String("key", key), zap.Error(err))
					lastErr.Store(key, err.Error())
				}
			},
		}
	}
	leaderKey := a.kv.LeaderKey(a.cfg.Group)
	go a.kv.WatchKey(ctx, leaderKey, opts(leaderKey), func(_ uint64, pair *api.KVPair) {
		if pair == nil || pair.Session == "" {
			// The lock-delay of a released or invalidated lock counts
			// from about now; the loop retries the acquire when it ends.
			a.leaderGoneAt.Store(time.Now().UnixNano())
		}
		a.Wake()
	})
	failoverKey := a.kv.FailoverKey(a.cfg.Group)
	go a.kv.WatchKey(ctx, failoverKey, opts(failoverKey), func(uint64, *api.KVPair) { a.Wake() })
	go a.kv.WatchKey(ctx, a.kv.ConfigKey(), opts(a.kv.ConfigKey()), func(_ uint64, pair *api.KVPair) {
		a.watchedConfig.Store(&watchedConfig{pair: pair})
		a.Wake()
	})
}

// watchedConfig is the config key as the watch last saw it (pair nil when
// the key is absent).
type watchedConfig struct{ pair *api.KVPair }

// leaseFence stops a primary whose lease ran out while the loop was stuck
// (a Consul call hanging, a slow disk): the loop checks the lease only
// between actions, this goroutine checks it on time.
func (a *Agent) leaseFence(ctx context.Context) {
	for {
		wait := 200 * time.Millisecond
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		guarded := func() bool { return a.State().Writable || a.leaderStarting.Load() }
		if !guarded() {
			continue
		}
		if a.leaseValid(time.Now()) {
			continue
		}
		a.lifecycleMu.Lock()
		// Re-check under the lock: the loop may have renewed and restarted
		// PostgreSQL meanwhile.
		if guarded() && !a.leaseValid(time.Now()) {
			a.log.Warn("fencing: lease expired while the loop was busy; stopping PostgreSQL immediately")
			a.fence("lease expired")
		}
		a.lifecycleMu.Unlock()
	}
}

// fence makes PostgreSQL stop accepting writes right now.
func (a *Agent) fence(reason string) {
	a.setState(func(s *health.MemberState) {
		s.Writable = false
		s.IsLeader = false
		s.State = "fenced"
		s.Message = reason
	})
	inst := a.pgi()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	running, _ := inst.IsRunning()
	if err := inst.Stop(ctx, pg.StopImmediate); err != nil {
		a.log.Error("fencing stop failed; killing the postmaster", zap.Error(err))
		if err := inst.Kill(); err != nil {
			a.log.Error("fencing kill failed", zap.Error(err))
		}
	}
	a.fw.disarm()
	if running {
		a.cb.stopped(consulkv.RolePrimary)
	}
}

// State implements health.Controller.
func (a *Agent) State() health.MemberState {
	a.stateMu.Lock()
	st := a.state
	a.stateMu.Unlock()
	st.LeaseKnown, st.LeaseUntil = true, a.leaseUntil()
	st.FailsafeActive = st.IsLeader && time.Now().Before(a.failsafe.holdUntil())
	return st
}

func (a *Agent) setState(f func(*health.MemberState)) {
	a.stateMu.Lock()
	f(&a.state)
	a.stateMu.Unlock()
}

func (a *Agent) logDecision(d Decision) {
	key := d.Action.String() + "|" + d.Target + "|" + d.Reason
	fields := []zap.Field{zap.String("action", d.Action.String()), zap.String("reason", d.Reason)}
	if d.Target != "" {
		fields = append(fields, zap.String("target", d.Target))
	}
	switch {
	case key == a.lastDecision && (d.Action == ActNone || d.Action == ActKeepLeader):
		a.log.Debug(d.Reason, fields...)
	default:
		a.log.Info(d.Reason, fields...)
	}
	a.lastDecision = key
}

func (a *Agent) logProblems(g *consulkv.GroupView) {
	seen := map[string]bool{}
	for _, p := range g.Problems {
		msg := p.Error()
		seen[msg] = true
		if !a.lastProblems[msg] {
			a.log.Warn("ignoring unreadable value in Consul (treated as absent)", zap.Error(p))
		}
	}
	a.lastProblems = seen
}

func isUnreachable(err error) bool { return errors.Is(err, consulkv.ErrUnreachable) }

func shortErr(err error) string {
	s := err.Error()
	if i := strings.Index(s, "\n"); i > 0 {
		s = s[:i]
	}
	return s
}
