package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/health"
	"github.com/pgmesh/pgmesh/internal/version"
	"github.com/pgmesh/pgmesh/pg"
	"go.uber.org/zap"
)

// runOnce is one observe → decide → act round.
func (a *Agent) runOnce(ctx context.Context) error {
	start := time.Now()
	wasLeader := a.State().IsLeader
	defer func() { a.metrics.loopDuration.Observe(time.Since(start).Seconds()) }()
	a.retryAcquireAt = time.Time{}
	o := a.observe(ctx)
	if o.Group != nil && o.Group.Leader != nil {
		a.quickRetries = 0
	}
	d := Decide(o)
	a.logDecision(d)
	a.metrics.decisions.WithLabelValues(d.Action.String()).Inc()
	if d.Action == ActRefuse {
		a.setState(func(s *health.MemberState) { s.State = "refused"; s.Message = d.Reason })
		return fmt.Errorf("%w: %s", ErrRefused, d.Reason)
	}
	if err := a.act(ctx, o, d); err != nil {
		a.log.Error("action failed", zap.String("action", d.Action.String()), zap.String("target", d.Target), zap.Error(err))
		a.setState(func(s *health.MemberState) { s.Message = fmt.Sprintf("%s failed: %s", d.Action, shortErr(err)) })
	}
	a.afterAct(ctx, o)
	a.publish(ctx, o, d)
	if !wasLeader && a.State().IsLeader && a.loops > 0 {
		a.metrics.leaderTaken.WithLabelValues(leaderChangeKind(o, d)).Inc()
	}
	a.loops++
	return nil
}

// leaderChangeKind says why this member just became the leader.
func leaderChangeKind(o Observation, d Decision) string {
	switch {
	case d.Action == ActRaceInitialize || d.Action == ActBootstrap:
		return "bootstrap"
	case o.Group != nil && o.Group.Failover != nil:
		return "switchover"
	}
	return "failover"
}

// afterAct keeps a replica's logical slot copies current.
func (a *Agent) afterAct(ctx context.Context, o Observation) {
	if o.Group == nil {
		return
	}
	st := a.State()
	if st.IsLeader {
		a.slotsReady = false
		return
	}
	a.logical = nil
	local := o.Local
	if running, _ := a.pgi().IsRunning(); !running {
		a.slotsReady = false
		return
	}
	local.Running = true
	a.slotsReady = a.syncLogicalSlots(ctx, o.Group, local)
}

// observe gathers the observation: Consul (config, session, group), local
// PostgreSQL, and peers when there is no leader.
func (a *Agent) observe(ctx context.Context) Observation {
	o := Observation{Member: a.cfg.Name, Tags: a.cfg.MemberTags(), ConsulOK: true}
	a.refreshConfig(ctx)
	a.failsafe.configure(a.dyn.FailsafeOn(), a.dyn.TTL.D(), nil)
	// Automatic session checks may have been decided since the last round.
	a.lock.SetOptions(a.lockOptions())
	a.loopWaitNs.Store(int64(a.dyn.LoopWait.D()))
	a.noteQueriesSetting(a.dyn)
	o.Config = a.dyn
	o.Paused = a.dyn.GroupPaused(a.cfg.Group)

	if !a.cfg.Consul.DisableRegistration && !a.reg.registered() {
		// Registered before the session exists: a session tied to the
		// liveness check can only be created once that check exists.
		a.register(a.State())
		if err := a.reg.syncNow(ctx); err != nil {
			a.log.Warn("service registration failed; retrying", zap.Error(err))
		}
	}
	if _, err := a.lock.EnsureSession(ctx); err != nil {
		if errors.Is(err, consulkv.ErrSessionGone) {
			a.log.Warn("session gone (expired or invalidated); creating a new one")
			_, err = a.lock.EnsureSession(ctx)
		}
		if err != nil {
			o.ConsulOK = false
			a.noteConsulDown(err)
		}
	} else if left := time.Until(a.lock.LeaseUntil()); left < min(a.dyn.LoopWait.D()+200*time.Millisecond, leaseOf(a.lock)*3/4) {
		// The renew succeeded but Consul held it for a long time (a
		// leader election): the lease counts from when it was sent, so
		// little is left, and it would run out before the next loop's
		// renew (seen: a primary fenced a second time right after
		// surviving a Consul election).
		// Consul answers again; renew once more now.
		a.log.Info("renew was slow; renewing again", zap.Duration("lease_left", left.Round(time.Millisecond)))
		if _, err := a.lock.EnsureSession(ctx); err != nil {
			a.log.Warn("second renew failed", zap.Error(err))
		}
	}
	if o.ConsulOK && a.lock.NeedsRoll() {
		a.rollSession(ctx)
	}
	if o.ConsulOK {
		g, err := a.kv.ReadGroup(ctx, a.cfg.Group)
		if err != nil {
			o.ConsulOK = false
			a.noteConsulDown(err)
		} else {
			leaderSession := ""
			if g.Leader != nil {
				leaderSession = g.Leader.Session
			}
			a.lock.Resolve(ctx, leaderSession)
			a.failsafe.configure(a.dyn.FailsafeOn(), a.dyn.TTL.D(), g)
			if g.Leader != nil {
				if m := g.Members[g.Leader.Member]; m != nil {
					a.lastLeaderChecks = len(m.SessionChecks) > 0
				}
			}
			o.Group = g
			a.lastGroup = g
			a.lastGroupView.Store(g)
			seen := time.Now()
			a.setState(func(s *health.MemberState) {
				s.DCSLastSeen = seen
				s.SyncStandby = listedSyncStandby(g, a.cfg.Name)
			})
			a.logProblems(g)
			if !a.consulDownFrom.IsZero() {
				a.log.Info("consul reachable again", zap.Duration("after", time.Since(a.consulDownFrom).Round(time.Millisecond)))
				a.consulDownFrom, a.consulRefused = time.Time{}, false
			}
		}
	}
	o.Session = a.lock.Session()
	o.Now = time.Now()
	o.LeaseValid = a.lock.LeaseValid(o.Now)
	o.Local = a.observeLocal(ctx)
	a.observeFailsafe(ctx, &o)
	holds := o.Group != nil && o.Group.Leader != nil && o.Session != "" && o.Group.Leader.Session == o.Session
	switch {
	case !holds || o.Local.Running:
		a.downAsLeaderSince = time.Time{}
	case a.downAsLeaderSince.IsZero():
		a.downAsLeaderSince = o.Now
	default:
		o.Local.DownAsLeaderFor = o.Now.Sub(a.downAsLeaderSince)
	}
	if o.Group != nil && o.Group.Leader == nil && o.Local.Running {
		o.Peers = a.pollPeers(ctx, o.Group)
	}
	return o
}

// rollSession replaces the session when the cluster's ttl, lock_delay or
// this member's session checks changed: a session keeps the TTL and
// lock-delay it was created with, and the lease must follow the session
// Consul holds (Patroni, too, recreates its session on a ttl change). The
// keys the old session holds (leader lock, member key) move to the new one
// in one transaction, so the lock is never free and the lease is never
// longer than what Consul enforces.
func (a *Agent) rollSession(ctx context.Context) {
	keys := []string{a.kv.LeaderKey(a.cfg.Group), a.kv.MemberKey(a.cfg.Group, a.cfg.Name)}
	old, next, err := a.lock.Roll(ctx, keys)
	if err != nil {
		a.log.Warn("could not roll the session over to the new ttl/lock_delay; the old one stays in force", zap.Error(err))
		return
	}
	a.memberWrite.forget()
	a.statusWrite.forget()
	a.log.Info("rolled the session over to the new settings",
		zap.String("old_session", old.ID), zap.String("session", next.ID),
		zap.Duration("old_session_ttl", old.TTL), zap.Duration("session_ttl", next.TTL),
		zap.Duration("old_lock_delay", old.LockDelay), zap.Duration("lock_delay", next.LockDelay))
}

// noteConsulDown records a failed Consul round: "unreachable" only when
// Consul could not be reached; a refusal (ACL) names the refused permission
// as Consul gave it. The first failure is logged at once, a persisting one
// again every minute; the REST status and the member message say it.
func (a *Agent) noteConsulDown(err error) {
	a.metrics.consulErrors.WithLabelValues(consulErrorKind(err)).Inc()
	what := "consul unreachable"
	a.consulRefused = errors.Is(err, consulkv.ErrPermission)
	if a.consulRefused {
		what = "consul refused the request (ACL token lacks a permission)"
	}
	now := time.Now()
	switch {
	case a.consulDownFrom.IsZero():
		a.consulDownFrom, a.consulLoggedAt = now, now
		a.log.Warn(what, zap.Error(err))
	case now.Sub(a.consulLoggedAt) >= time.Minute:
		a.consulLoggedAt = now
		a.log.Warn(what+" (still)", zap.Duration("for", now.Sub(a.consulDownFrom).Round(time.Second)), zap.Error(err))
	}
	a.setState(func(s *health.MemberState) { s.Message = what + ": " + shortErr(err) })
}

// refreshConfig reads the dynamic config, seeding it from bootstrap.dcs on
// first start. A garbage value keeps the last good config in force.
func (a *Agent) refreshConfig(ctx context.Context) {
	var cfg *consulkv.ClusterConfig
	var idx uint64
	var err error
	if w := a.watchedConfig.Load(); w != nil && w.pair != nil {
		// The config watch keeps this current; no request needed.
		cfg, idx, err = consulkv.DecodeConfigPair(w.pair)
	} else {
		// Not watched yet, or absent (then it may need seeding): read it.
		cfg, idx, err = a.kv.ReadConfig(ctx)
	}
	if err == nil && cfg == nil && idx == 0 {
		seed := a.cfg.Bootstrap.DCS.ClusterConfig()
		if ok, err := a.kv.CAS(ctx, a.kv.ConfigKey(), &seed, 0); err == nil && ok {
			a.log.Info("seeded the cluster's dynamic config from bootstrap.dcs", zap.Duration("ttl", seed.TTL.D()), zap.Duration("loop_wait", seed.LoopWait.D()))
		}
		return
	}
	adopted, problem := adoptConfig(cfg, err, consulkv.MemberSettings{Member: a.cfg.Name, SessionChecks: a.sessionChecks()})
	if adopted == nil {
		if problem == "" {
			return // Consul unreachable: nothing new to judge
		}
		// Adopting it could leave two writable primaries or fence a healthy
		// one: keep the config in force and say so (log once, member key,
		// REST status) until the stored one is fixed.
		if problem != a.lastConfigProblem {
			a.log.Error(problem, zap.Duration("ttl_in_force", a.dyn.TTL.D()), zap.Duration("loop_wait_in_force", a.dyn.LoopWait.D()),
				zap.Duration("lock_delay_in_force", a.dyn.LockDelay.D()))
			a.lastConfigProblem = problem
		}
		a.setState(func(s *health.MemberState) { s.ConfigProblem = problem })
		return
	}
	next := *adopted
	if a.lastConfigProblem != "" {
		a.log.Info("the stored cluster config is readable and safe again; adopting it")
		a.lastConfigProblem = ""
		a.setState(func(s *health.MemberState) { s.ConfigProblem = "" })
	}
	a.dyn = next
	a.lock.SetOptions(a.lockOptions())
	if a.dyn.ReplicationProfile() != consulkv.ReplicationNone && time.Since(a.groupCountAt) > 30*time.Second {
		if names, err := a.kv.GroupNames(ctx); err == nil {
			a.groupCount, a.groupCountAt = len(names), time.Now()
		}
	}
	if err := a.rebuildPG(); err != nil {
		a.log.Error("dynamic parameters rejected", zap.Error(err))
	}
}

// observeLocal reads the local PostgreSQL state.
func (a *Agent) observeLocal(ctx context.Context) Local {
	inst := a.pgi()
	l := Local{HasDataDir: inst.HasDataDir()}
	if !l.HasDataDir {
		return l
	}
	if cd, err := inst.ControlData(ctx); err == nil {
		l.SystemID = strconv.FormatUint(cd.SystemID, 10)
		l.Timeline = cd.Timeline
		l.LastLSN = uint64(cd.CheckpointLSN)
	} else {
		a.log.Warn("pg_controldata failed", zap.Error(err))
	}
	if m, err := readMarker(inst.DataDir()); err == nil && m.Role == consulkv.RolePrimary {
		l.WasPrimary, l.PrimaryTimeline = true, m.Timeline
	}
	running, _ := inst.IsRunning()
	l.Running = running
	if !running {
		return l
	}
	sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	st, err := inst.Status(sctx)
	if err != nil {
		// Still starting or overloaded: judge the role from standby.signal
		// so an unanswering primary is never mistaken for a replica.
		_, statErr := os.Stat(filepath.Join(inst.DataDir(), "standby.signal"))
		l.InRecovery = statErr == nil
		l.FollowingLeader = a.following
		return l
	}
	l.InRecovery = st.InRecovery
	l.Timeline = st.Timeline
	if l.InRecovery && a.streamedTLI > l.Timeline {
		// Not streaming, PostgreSQL reports its last restartpoint's
		// timeline, which lags a leader's promotion by up to a checkpoint
		// interval. This replica streamed on a later one: it is there.
		// (Without this, replicas whose leader died looked "behind its
		// timeline" after ttl and stopped for a pointless rewind just
		// before the election.)
		l.Timeline = a.streamedTLI
	}
	l.LastLSN = uint64(st.LastLSN())
	l.FollowingLeader = a.following
	l.LogicalSlotsReady = a.slotsReady
	if st.WalReceiver != nil && st.WalReceiver.Status == "streaming" {
		l.Streaming = true
		a.lastStreaming = time.Now()
		a.streamedTLI = max(a.streamedTLI, st.WalReceiver.ReceivedTLI)
	} else if l.InRecovery && a.following != "" {
		if a.lastStreaming.IsZero() {
			a.lastStreaming = time.Now()
		}
		l.NotStreamingFor = time.Since(a.lastStreaming)
	}
	var repl []health.Replication
	if !st.InRecovery {
		for _, r := range st.Replication {
			repl = append(repl, health.Replication{Usename: r.User, ApplicationName: r.ApplicationName, ClientAddr: r.ClientAddr,
				State: r.State, SyncState: r.SyncState, SyncPriority: int(r.SyncPriority)})
		}
	}
	a.setState(func(s *health.MemberState) {
		s.Replication = repl
		s.ReplayPaused, s.ReplayTimestamp = st.ReplayPaused, st.ReplayTimestamp
		s.PGVersion = st.ServerVersion
		s.StartTime = st.StartTime
		s.WriteLSN, s.ReceiveLSN, s.ReplayLSN = uint64(st.CurrentLSN), uint64(st.ReceiveLSN), uint64(st.ReplayLSN)
		s.PendingRestart = len(st.PendingRestart) > 0
	})
	return l
}

// listedSyncStandby: the group's current leader lists member as a
// synchronous standby (a sync key left by an earlier leader does not count).
func listedSyncStandby(g *consulkv.GroupView, member string) bool {
	if g == nil || g.Sync == nil || g.Leader == nil || g.Sync.Leader != g.Leader.Member {
		return false
	}
	for _, m := range g.Sync.SyncStandbys {
		if m == member {
			return true
		}
	}
	return false
}

// pollPeers asks the other members' REST APIs for their WAL positions,
// with a short timeout: an unreachable peer is simply left out.
func (a *Agent) pollPeers(ctx context.Context, g *consulkv.GroupView) map[string]Peer {
	timeout := a.dyn.LoopWait.D()
	if timeout > 2*time.Second || timeout < 500*time.Millisecond {
		timeout = 2 * time.Second
	}
	peers := map[string]Peer{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	client := a.peerClient(timeout)
	defer client.CloseIdleConnections()
	for name, m := range g.Members {
		if name == a.cfg.Name || m.APIURL == "" {
			continue
		}
		wg.Add(1)
		go func(name, url string) {
			defer wg.Done()
			p := Peer{}
			if st, err := fetchPeer(ctx, client, url); err == nil {
				p = Peer{Reachable: true, Running: st.State == "running", Role: st.Role, Timeline: st.Timeline, LastLSN: st.LastLSN(), Tags: consulkv.MemberTags(st.Tags)}
			}
			mu.Lock()
			peers[name] = p
			mu.Unlock()
		}(name, m.APIURL)
	}
	wg.Wait()
	return peers
}

func fetchPeer(ctx context.Context, client *http.Client, baseURL string) (*health.Status, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, baseURL+"/patroni", nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	st := &health.Status{}
	if err := json.NewDecoder(resp.Body).Decode(st); err != nil {
		return nil, fmt.Errorf("peer %s: %w", baseURL, err)
	}
	return st, nil
}

// publish writes the member key and refreshes the REST API's snapshot.
func (a *Agent) publish(ctx context.Context, o Observation, d Decision) {
	// Only an action can have changed PostgreSQL since the observation; a
	// quiet loop publishes what it observed instead of asking again.
	local := o.Local
	if d.Action != ActNone && d.Action != ActKeepLeader {
		local = a.observeLocal(ctx)
	}
	now := time.Now()
	holds := o.Group != nil && o.Group.Leader != nil && o.Session != "" && o.Group.Leader.Session == o.Session
	// A promotion or acquisition in this round changes who holds the lock;
	// re-check what we know instead of trusting the observation.
	if a.iAmLeaderNow != nil {
		holds = *a.iAmLeaderNow
		a.iAmLeaderNow = nil
	}
	if !o.ConsulOK && o.Group == nil && a.iAmLeaderNow == nil && (d.Action == ActNone || d.Action == ActKeepLeader) {
		// Consul did not answer: nothing says the lock changed hands, so
		// the leader stays the leader for as long as its lease (or a
		// failsafe hold) lasts, and keeps answering /primary meanwhile.
		holds = a.State().IsLeader
	}
	leaseOK := a.leaseValid(now)
	role := consulkv.RoleUnknown
	state := "stopped"
	if local.Running {
		state = "running"
		if local.InRecovery {
			role = consulkv.RoleReplica
		} else {
			role = consulkv.RolePrimary
		}
	}
	leaderName, leaderLSN := "", uint64(0)
	if o.Group != nil {
		if o.Group.Leader != nil {
			leaderName = o.Group.Leader.Member
		}
		if o.Group.Status != nil {
			leaderLSN = o.Group.Status.LastLSN
		}
	}
	if holds {
		leaderName = a.cfg.Name
	}
	a.setState(func(s *health.MemberState) {
		s.Role, s.State = role, state
		if s.Message != "" && (state == "running") && o.ConsulOK {
			s.Message = ""
		}
		s.IsLeader = holds && leaseOK
		a.holdsLock.Store(holds && leaseOK)
		s.Writable = holds && leaseOK && role == consulkv.RolePrimary
		s.PGRunning = local.Running
		s.Timeline = local.Timeline
		s.Streaming = local.Streaming
		s.LeaderName = leaderName
		s.LeaderLastLSN = leaderLSN
		s.SystemID = local.SystemID
		s.Paused = o.Paused
		s.LastLoop = now
		s.TTL = a.dyn.TTL.D()
		if role == consulkv.RolePrimary {
			s.WriteLSN = local.LastLSN
		}
	})
	a.leaderStarting.Store(false)
	if s := a.State(); s.Writable {
		if err := a.fw.arm(a.fenceDeadline(time.Now())); err != nil {
			// An agent that cannot arm its watchdog does not lead.
			a.log.Error("fencing: the fence watchdog cannot be armed", zap.Error(err))
			a.lifecycleMu.Lock()
			a.fence("fence watchdog cannot be armed: " + err.Error())
			a.lifecycleMu.Unlock()
			if rerr := a.lock.Release(ctx); rerr != nil {
				a.log.Warn("could not release the leader lock", zap.Error(rerr))
			}
		}
	} else if !local.Running || role != consulkv.RolePrimary {
		a.fw.disarm()
	}
	if !o.ConsulOK || o.Session == "" {
		return
	}
	st := a.State()
	m := &consulkv.MemberStatus{
		Version: consulkv.ValueVersion, Name: a.cfg.Name, Group: a.cfg.Group, Role: role, State: state,
		APIURL: a.apiURL(), ConnURL: a.connURL(), Host: a.cfg.PostgreSQL.ConnectAddress, Port: a.cfg.PostgreSQL.Port,
		Timeline: local.Timeline, SystemID: local.SystemID, WriteLSN: st.WriteLSN, ReceiveLSN: st.ReceiveLSN, ReplayLSN: st.ReplayLSN,
		Streaming: local.Streaming, Tags: a.cfg.MemberTags(), PGVersion: st.PGVersion, AgentVersion: version.Version,
		Message: st.Message, SessionChecks: a.sessionChecks(), ConfigProblem: st.ConfigProblem, UpdatedAt: now.UTC(),
	}
	if role == consulkv.RolePrimary {
		m.Logical = a.logical
		a.metrics.logical.Store(a.logical)
		m.Message = a.logicalMessage(m.Message, true) // PostgreSQL 17 non-failover slots
	} else {
		m.LogicalSlotsReady = a.slotsReady
	}
	if role == consulkv.RolePrimary {
		m.ReceiveLSN, m.ReplayLSN = 0, 0
	} else {
		m.WriteLSN = 0
	}
	_, present := o.Group.Members[a.cfg.Name]
	if a.memberWrite.due(o.Session, m, present, now) {
		if err := a.kv.PutMember(ctx, a.cfg.Group, o.Session, m); err != nil {
			a.log.Warn("could not write member key", zap.Error(err))
		} else {
			a.memberWrite.done(o.Session, m, now)
		}
	}
	a.register(st)
}

// keyRefresh is how often an unchanged member or status key is rewritten
// anyway, so its updated_at tells readers the agent is alive.
const keyRefresh = 30 * time.Second

// changeGate decides whether a key the agent owns needs writing: when its
// content (all but the timestamp) changed, the session changed (the key went
// with the old one), the key is missing or unreadable in Consul, or the last
// write is keyRefresh old. An idle agent then writes almost nothing, as
// Patroni does with its member keys.
type changeGate struct {
	session string
	content string
	at      time.Time
}

func (g *changeGate) due(session string, v any, present bool, now time.Time) bool {
	return !present || session != g.session || consulkv.Content(v) != g.content || now.Sub(g.at) >= keyRefresh
}

func (g *changeGate) done(session string, v any, now time.Time) {
	g.session, g.content, g.at = session, consulkv.Content(v), now
}

// forget makes the next due() true (after a write may have failed halfway).
func (g *changeGate) forget() { *g = changeGate{} }

// memberService is the catalog registration for the current state.
func (a *Agent) memberService(st health.MemberState) consulkv.MemberService {
	role := st.Role
	// A running primary without the lock is on its way down: never tag it
	// primary, or DNS would list a node that refuses to be the leader.
	if role == consulkv.RolePrimary && !st.Writable {
		role = consulkv.RoleUnknown
	}
	passing := (role == consulkv.RolePrimary && st.Writable) || (role == consulkv.RoleReplica && st.PGRunning && st.Streaming)
	return consulkv.MemberService{
		Group: a.cfg.Group, Member: a.cfg.Name, Role: role, Address: a.cfg.PostgreSQL.ConnectAddress,
		Port: a.cfg.PostgreSQL.Port, APIURL: a.apiURL(), Timeline: st.Timeline, ExtraTags: a.cfg.Consul.ServiceTags,
		Passing:            passing,
		CheckTLSServerName: a.cfg.Consul.ServiceCheckTLSServerName,
		CheckTLSSkipVerify: a.cfg.Consul.ServiceCheckTLSSkipVerify,
	}
}

// replicationConn is how this member reaches a peer's PostgreSQL for
// streaming and cloning.
func (a *Agent) replicationConn(m *consulkv.MemberStatus) pg.ConnInfo {
	return pg.ConnInfo{Host: m.Host, Port: m.Port, User: a.cfg.PostgreSQL.Replication.Username, Password: a.cfg.PostgreSQL.Replication.Password, DBName: "postgres", AppName: a.cfg.Name, ConnectTimeout: 3}
}

func (a *Agent) superuserConn(m *consulkv.MemberStatus) pg.ConnInfo {
	return pg.ConnInfo{Host: m.Host, Port: m.Port, User: a.cfg.PostgreSQL.Superuser.Username, Password: a.cfg.PostgreSQL.Superuser.Password, DBName: "postgres", AppName: a.cfg.Name + "-rewind", ConnectTimeout: 3}
}

func (a *Agent) followTarget(m *consulkv.MemberStatus) *pg.FollowTarget {
	return &pg.FollowTarget{Host: m.Host, Port: m.Port, SlotName: pg.SlotName(a.cfg.Name)}
}
