package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/health"
	"github.com/pgmesh/pgmesh/pg"
	"go.uber.org/zap"
)

func boolp(b bool) *bool { return &b }

// act carries out a decision.
func (a *Agent) act(ctx context.Context, o Observation, d Decision) error {
	inst := a.pgi()
	// PostgreSQL found running by a fresh agent, or a start that was still
	// in progress last round: report on_start (callbacks.go).
	a.cb.seen(o.Local.Running, localRole(o.Local))
	// A decision is only as good as its observation. If the agent was
	// frozen (SIGSTOP, swap, a stuck call) between observing and acting,
	// the observation may say "lock held, lease valid" long after both are
	// gone: never make PostgreSQL writable from it. Demoting is always safe.
	if d.Action != ActDemote && d.Action != ActNone && d.Action != ActRefuse {
		limit := a.dyn.LoopWait.D()
		if limit < time.Second {
			limit = time.Second
		}
		if age := time.Since(o.Now); age > limit {
			a.log.Warn("observation is stale (was the agent paused?); re-observing instead of acting",
				zap.String("action", d.Action.String()), zap.Duration("age", age.Round(time.Millisecond)))
			return nil
		}
	}
	if makesWritable(d.Action) && d.Action != ActAcquire && !a.lock.LeaseValid(time.Now()) {
		a.log.Warn("lease ran out between observation and action; not making PostgreSQL writable", zap.String("action", d.Action.String()))
		return nil
	}
	if d.RestoreInitialize != "" && d.Action != ActDemote && d.Action != ActRefuse {
		a.restoreInitialize(ctx, o, d.RestoreInitialize)
	}
	switch d.Action {
	case ActNone, ActRefuse:
		return nil
	case ActRaceInitialize:
		won, err := a.kv.RaceInitialize(ctx, a.cfg.Group, a.cfg.Name)
		if err != nil {
			return err
		}
		if !won {
			a.log.Info("lost the initialize race; waiting for the winner to bootstrap")
			return nil
		}
		a.log.Info("won the initialize race: bootstrapping the group")
		return a.bootstrap(ctx)
	case ActBootstrap:
		return a.bootstrap(ctx)
	case ActClone:
		// A clone can outlast the session TTL; without renewals Consul
		// would drop the member key and the member would vanish from the
		// group (switchover "not a member") until the next loop. Safe: a
		// member that clones holds no lock.
		defer a.renewDuring(ctx)()
		a.streamedTLI = 0 // the data dir is replaced
		return a.clone(ctx, o.Group, d.Target)
	case ActKeepLeader:
		if d.ClearFailover {
			a.clearFailover(ctx, o.Group)
		}
		a.repairLeaderKey(ctx, o.Group)
		return a.leaderHousekeeping(ctx, o.Group)
	case ActStartPrimary:
		if d.ClearFailover {
			a.clearFailover(ctx, o.Group)
		}
		if o.Local.WasPrimary {
			if _, _, err := inst.WriteConfig(pg.Primary, nil); err != nil {
				return err
			}
		} else if _, _, err := inst.WriteConfig(pg.Replica, nil); err != nil {
			// Never start a former replica without standby.signal: it would
			// come up writable on its old timeline. Start it read-only and
			// promote next round.
			return err
		}
		a.following = ""
		return a.asLeader(ctx, "start", func(ctx context.Context) error { return a.start(ctx, true) })
	case ActPromote:
		if d.ClearFailover {
			a.clearFailover(ctx, o.Group)
		}
		return a.promote(ctx, o, "promoted while holding the leader lock")
	case ActAcquire:
		if _, err := a.lock.EnsureSession(ctx); err != nil {
			return err
		}
		ok, err := a.lock.Acquire(ctx)
		if err != nil {
			return err
		}
		if !ok {
			runningPrimary := o.Local.Running && !o.Local.InRecovery
			if runningPrimary && o.Group != nil && o.Group.Leader == nil {
				// A primary whose lock went away (its session ended while
				// Consul was out of reach, failsafe mode) is refused by its
				// old session's lock-delay: if nobody took the key meanwhile
				// it retries instead of demoting, and the others do not race
				// while its member key says it runs as primary.
				if g, err := a.kv.ReadGroup(ctx, a.cfg.Group); err == nil && g.Leader == nil {
					a.scheduleAcquireRetry(time.Now())
					a.log.Info("leader key free but refused (lock-delay of an earlier session); running primary retries when it ends", zap.Time("retry_at", a.retryAcquireAt))
					return nil
				}
			}
			if o.Group != nil && o.Group.Leader == nil && !runningPrimary {
				a.scheduleAcquireRetry(time.Now())
				a.log.Info("leader key free but refused (lock-delay of the last holder's session); retrying when it ends", zap.Time("retry_at", a.retryAcquireAt))
				return nil
			}
			a.log.Info("lost the leader race")
			if o.Local.Running && !o.Local.InRecovery {
				return a.demote(ctx, false, false, "demoting: another member took the leader lock")
			}
			return nil
		}
		a.iAmLeaderNow = boolp(true)
		a.holdsLock.Store(true)
		a.quickRetries = 0
		// Arm the watchdog before PostgreSQL becomes writable: if the agent
		// freezes mid-promotion, nothing else would stop it. An agent that
		// cannot arm it does not lead.
		if err := a.fw.arm(a.fenceDeadline(time.Now())); err != nil {
			return a.stepDown(ctx, o, err)
		}
		a.log.Info("acquired the leader lock", zap.Uint64("last_lsn", o.Local.LastLSN))
		if o.Local.InRecovery {
			reason := "automatic failover"
			if o.Group.Failover != nil && o.Group.Failover.Candidate == a.cfg.Name {
				reason = "manual " + o.Group.Failover.Kind
			}
			return a.promote(ctx, o, reason)
		}
		return a.leaderHousekeeping(ctx, o.Group)
	case ActDemote:
		return a.demote(ctx, d.Immediate, d.Release, d.Reason)
	case ActSwitchover:
		return a.switchover(ctx, o, d.Target)
	case ActFollow:
		return a.follow(ctx, o.Group, d.Target)
	case ActRewind:
		defer a.renewDuring(ctx)() // as for a clone (a rewind may re-clone)
		a.streamedTLI = 0
		return a.rewind(ctx, o.Group, d.Target)
	case ActStartReadOnly:
		if _, _, err := inst.WriteConfig(pg.Replica, nil); err != nil {
			return err
		}
		a.following = ""
		return a.start(ctx, false)
	}
	return fmt.Errorf("unknown action %v", d.Action)
}

// makesWritable: actions after which PostgreSQL may accept writes.
func makesWritable(act Action) bool {
	switch act {
	case ActStartPrimary, ActPromote, ActAcquire, ActKeepLeader, ActBootstrap, ActRaceInitialize:
		return true
	}
	return false
}

// start starts PostgreSQL. asLeader says it may come up writable (the
// caller checked the lease and armed the watchdog, see asLeader); any other
// start is a standby's, and the watchdog is disarmed first so a watchdog
// that tripped while this member led does not abort it.
func (a *Agent) start(ctx context.Context, asLeader bool) error {
	return a.startPG(ctx, asLeader, false)
}

// startPG is start; restart says the caller stopped PostgreSQL just before
// (on_restart rather than on_start, when the role stays).
func (a *Agent) startPG(ctx context.Context, asLeader, restart bool) error {
	if !asLeader {
		a.fw.disarm()
	}
	a.lifecycleMu.Lock()
	defer a.lifecycleMu.Unlock()
	if hook := faultPoint("before-start"); hook != nil && asLeader {
		hook()
	}
	// The last moment to check: a freeze between the caller's check and
	// here must not start a primary without a lease.
	if asLeader && !a.lock.LeaseValid(time.Now()) {
		a.log.Warn("not starting PostgreSQL: the lease ran out just before the start (was the agent paused?)")
		return errLeaseGone
	}
	wasRunning, _ := a.pgi().IsRunning()
	err := a.pgi().Start(ctx)
	if !wasRunning { // a start that started nothing reports nothing
		a.reportStart(err, restart)
	}
	if errors.Is(err, pg.ErrStartTimeout) {
		a.log.Warn("postgres still starting; will check again next loop")
		return nil
	}
	return err
}

// errLeaseGone: a start or promotion that would make PostgreSQL writable
// was not begun because the lease had run out.
var errLeaseGone = errors.New("the lease ran out; not making PostgreSQL writable")

// asLeader runs a start or promotion that makes PostgreSQL writable. Right
// before it, it checks the lease and arms the watchdog (an agent that
// cannot arm it does not lead); while it runs (crash recovery can take
// minutes), it keeps the session that holds the lock renewed and re-arms
// the watchdog from each renewal, so a slow recovery is not aborted on
// every attempt while a frozen or partitioned agent is still fenced when
// its lease ends. It never creates a session: a new one would not hold
// the lock. Afterwards PostgreSQL is stopped at once if the lease ran out
// meanwhile.
func (a *Agent) asLeader(ctx context.Context, what string, run func(context.Context) error) error {
	now := time.Now()
	if !a.lock.LeaseValid(now) {
		return fmt.Errorf("%s: %w", what, errLeaseGone)
	}
	if err := a.fw.arm(a.fenceDeadline(now)); err != nil {
		a.log.Error("not leading: the fence watchdog cannot be armed", zap.String("action", what), zap.Error(err))
		if rerr := a.lock.Release(ctx); rerr != nil {
			a.log.Warn("could not release the leader lock", zap.Error(rerr))
		}
		a.iAmLeaderNow = boolp(false)
		return fmt.Errorf("%s: %w", what, err)
	}
	a.leaderStarting.Store(true)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	every := max(min(a.dyn.LoopWait.D(), leaseOf(a.lock)/4), 100*time.Millisecond)
	go func() {
		defer close(done)
		for {
			select {
			case <-rctx.Done():
				return
			case <-time.After(every):
			}
			until, err := a.lock.RenewHeld(rctx)
			if rctx.Err() != nil {
				return
			}
			if err != nil {
				a.log.Warn("renewing the session while PostgreSQL starts failed; the watchdog stops it when the lease runs out", zap.String("action", what), zap.Error(err))
				if errors.Is(err, consulkv.ErrSessionGone) {
					return
				}
				continue
			}
			if err := a.fw.arm(time.Until(until)); err != nil {
				a.log.Error("could not re-arm the fence watchdog while PostgreSQL starts", zap.Error(err))
				continue
			}
			// The agent is alive and busy, not stuck: keep /liveness (and a
			// session tied to it) passing.
			a.setState(func(s *health.MemberState) { s.LastLoop = time.Now() })
		}
	}()
	err := run(ctx)
	cancel()
	<-done
	if !a.lock.LeaseValid(time.Now()) {
		a.lifecycleMu.Lock()
		a.log.Warn("fencing: the lease ran out while PostgreSQL was starting", zap.String("action", what))
		a.fence("lease expired during " + what)
		a.lifecycleMu.Unlock()
		return fmt.Errorf("%s: %w", what, errLeaseGone)
	}
	return err
}

// leaseOf is the lease the held session gives (0 without a session).
func leaseOf(l *consulkv.Lock) time.Duration {
	h := l.Held()
	if h == nil {
		return 0
	}
	return h.LeaseUntil().Sub(h.RenewedAt)
}

// stepDown gives the lock back after acquiring it when this agent cannot
// lead (no watchdog): PostgreSQL stays or goes read-only.
func (a *Agent) stepDown(ctx context.Context, o Observation, cause error) error {
	a.log.Error("not leading: the fence watchdog cannot be armed; releasing the leader lock", zap.Error(cause))
	a.iAmLeaderNow = boolp(false)
	if err := a.lock.Release(ctx); err != nil {
		a.log.Warn("could not release the leader lock", zap.Error(err))
	}
	if o.Local.Running && !o.Local.InRecovery {
		return a.demote(ctx, true, false, "demoting: the fence watchdog cannot be armed")
	}
	return cause
}

// startReplica starts PostgreSQL as a standby of a leader, waiting about
// one loop for it to accept connections, not pg_ctl's 60s. A standby that
// needs the leader's WAL to become consistent (after pg_rewind, or a crash
// under load) only gets it through its replication slot, and a leader that
// did not know this member (a new leader, elected while this member's key
// was gone) creates that slot only once this member publishes its key again
// — which the loop does after this action. Waiting here for consistency
// deadlocked until pg_ctl gave up. A still-starting standby is checked again
// next loop.
func (a *Agent) startReplica(ctx context.Context, restart bool) error {
	ctx, cancel := context.WithTimeout(ctx, a.dyn.LoopWait.D()+2*time.Second)
	defer cancel()
	return a.startPG(ctx, false, restart)
}

// restoreInitialize rewrites the group's initialize key with this leader's
// system identifier (Decide said why: missing, unreadable or unfilled). The
// write checks in the same transaction that our session holds the leader
// key, and replaces only the value the observation saw.
func (a *Agent) restoreInitialize(ctx context.Context, o Observation, why string) {
	init := &consulkv.Initialize{Version: consulkv.ValueVersion, Member: a.cfg.Name, SystemID: o.Local.SystemID, At: time.Now().UTC()}
	ok, err := a.kv.RestoreInitialize(ctx, a.cfg.Group, a.lock.Session(), init, o.Group.InitializeIndex)
	switch {
	case err != nil:
		a.log.Warn("could not restore the initialize key", zap.String("reason", why), zap.Error(err))
	case !ok:
		a.log.Info("the initialize key changed before it could be restored; checking it again next loop", zap.String("reason", why))
	default:
		a.log.Warn("restored the initialize key with the leader's system id", zap.String("reason", why), zap.String("system_id", init.SystemID))
	}
}

// initializedBy names why the group needs no bootstrap after all ("" when
// it does): a leader, or a member with a data directory, appeared after the
// observation that decided to bootstrap.
func initializedBy(g *consulkv.GroupView, self string) string {
	if g.Leader != nil {
		return "the group has a leader (" + g.Leader.Member + ")"
	}
	for _, name := range g.MemberNames() {
		if m := g.Members[name]; name != self && m.SystemID != "" {
			return name + " has a data directory (system id " + m.SystemID + ")"
		}
	}
	return ""
}

// bootstrap runs initdb, starts as primary, takes the lock and records the
// system identifier in the initialize key.
func (a *Agent) bootstrap(ctx context.Context) error {
	inst := a.pgi()
	// initdb takes seconds and the lock may be taken meanwhile: check once
	// more right before, and give the claim back rather than create a data
	// directory that can never lead (the clone follows next loop).
	if g, err := a.kv.ReadGroup(ctx, a.cfg.Group); err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	} else if why := initializedBy(g, a.cfg.Name); why != "" {
		if g.Initialize != nil && g.Initialize.Member == a.cfg.Name && g.Initialize.SystemID == "" {
			a.kv.DeleteCAS(ctx, a.kv.InitializeKey(a.cfg.Group), g.InitializeIndex)
		}
		a.log.Warn("not bootstrapping: the group is initialized already; cloning instead", zap.String("reason", why))
		return nil
	}
	a.setState(func(s *health.MemberState) { s.State = "bootstrapping" })
	fail := func(err error) error {
		// Give the race back so another member (or we, next loop) can retry
		// on a clean slate.
		if g, rerr := a.kv.ReadGroup(context.Background(), a.cfg.Group); rerr == nil && g.Initialize != nil && g.Initialize.Member == a.cfg.Name && g.Initialize.SystemID == "" {
			a.kv.DeleteCAS(context.Background(), a.kv.InitializeKey(a.cfg.Group), g.InitializeIndex)
		}
		inst.Stop(context.Background(), pg.StopImmediate)
		if inst.HasDataDir() {
			inst.RemoveDataDir()
		}
		return fmt.Errorf("bootstrap: %w", err)
	}
	if err := inst.Initdb(ctx); err != nil {
		return fail(err)
	}
	if _, _, err := inst.WriteConfig(pg.Primary, nil); err != nil {
		return fail(err)
	}
	if err := inst.Start(ctx); err != nil {
		return fail(err)
	}
	if err := inst.CreateReplicationUser(ctx); err != nil {
		return fail(err)
	}
	cd, err := inst.ControlData(ctx)
	if err != nil {
		return fail(err)
	}
	if _, err := a.lock.EnsureSession(ctx); err != nil {
		return fail(err)
	}
	ok, err := a.lock.Acquire(ctx)
	if err != nil || !ok {
		return fail(fmt.Errorf("could not take the leader lock after initdb (acquired=%v): %v", ok, err))
	}
	a.iAmLeaderNow = boolp(true)
	if err := a.fw.arm(a.fenceDeadline(time.Now())); err != nil {
		a.lock.Release(context.WithoutCancel(ctx))
		a.iAmLeaderNow = boolp(false)
		return fail(err)
	}
	g, err := a.kv.ReadGroup(ctx, a.cfg.Group)
	if err != nil {
		return err
	}
	init := &consulkv.Initialize{Version: consulkv.ValueVersion, Member: a.cfg.Name, SystemID: fmt.Sprint(cd.SystemID), At: time.Now().UTC()}
	if ok, err := a.kv.CAS(ctx, a.kv.InitializeKey(a.cfg.Group), init, g.InitializeIndex); err != nil || !ok {
		return fmt.Errorf("bootstrap: record system id: ok=%v: %v", ok, err)
	}
	if err := writeMarker(inst.DataDir(), roleMarker{Role: consulkv.RolePrimary, Timeline: cd.Timeline}); err != nil {
		return err
	}
	a.log.Info("bootstrapped the group", zap.Uint64("system_id", cd.SystemID))
	a.cb.started(consulkv.RolePrimary) // Patroni's post_bootstrap: on_start
	return a.leaderHousekeeping(ctx, g)
}

// clone copies the leader's data dir with pg_basebackup and starts
// following it.
func (a *Agent) clone(ctx context.Context, g *consulkv.GroupView, leader string) error {
	lm := g.Members[leader]
	if lm == nil {
		return fmt.Errorf("clone: leader %s has no member key", leader)
	}
	inst := a.pgi()
	a.setState(func(s *health.MemberState) { s.State = "cloning" })
	a.log.Info("cloning from the leader", zap.String("leader", leader), zap.String("host", lm.Host), zap.Int("port", lm.Port))
	if err := inst.Basebackup(ctx, a.replicationConn(lm)); err != nil {
		return fmt.Errorf("clone from %s: %w", leader, err)
	}
	if err := writeMarker(inst.DataDir(), roleMarker{Role: consulkv.RoleReplica}); err != nil {
		return err
	}
	return a.follow(ctx, g, leader)
}

// follow (re)configures the replica for leader and makes sure it runs.
func (a *Agent) follow(ctx context.Context, g *consulkv.GroupView, leader string) error {
	lm := g.Members[leader]
	if lm == nil {
		return fmt.Errorf("follow: leader %s has no member key", leader)
	}
	inst := a.pgi()
	changed, restart, err := inst.WriteConfig(pg.Replica, a.followTarget(lm))
	if err != nil {
		return err
	}
	a.following = leader
	a.lastStreaming = time.Time{}
	running, _ := inst.IsRunning()
	switch {
	case !running:
		return a.startReplica(ctx, false)
	case restart:
		a.log.Info("restarting to follow the new leader", zap.String("leader", leader))
		if err := inst.Stop(ctx, pg.StopFast); err != nil {
			return err
		}
		return a.startReplica(ctx, true)
	case changed:
		if err := inst.Reload(ctx); err != nil {
			return err
		}
		a.cb.reloaded(consulkv.RoleReplica)
	}
	return nil
}

// promote turns the local replica into the primary after the lock was
// taken, and records the new timeline in the history.
func (a *Agent) promote(ctx context.Context, o Observation, reason string) error {
	inst := a.pgi()
	oldTL, lastLSN := o.Local.Timeline, o.Local.LastLSN
	if a.dyn.SyncMode() != consulkv.SyncOff {
		// Until the new leader knows its synchronous standbys, every commit
		// waits for some standby: no acknowledged write may exist only here.
		// A reload is asynchronous: promote only once PostgreSQL shows the
		// setting, or a first commit could be acknowledged before it counts.
		a.syncNames = "*"
		if err := a.rebuildPG(); err != nil {
			return fmt.Errorf("promote: %w", err)
		}
		inst = a.pgi()
		if _, _, err := inst.WriteConfig(pg.Replica, a.currentFollow()); err != nil {
			return fmt.Errorf("promote: %w", err)
		}
		if err := a.reloadUntil(ctx, inst, "synchronous_standby_names", "*"); err != nil {
			return fmt.Errorf("promote: not promoting before every commit waits for a standby: %w", err)
		}
	}
	if a.dyn.ReplicationProfile() == consulkv.ReplicationSpock {
		// A member demoted earlier may still carry spock.readonly: the new
		// primary must take writes and apply changes from the first moment
		// (seen: clients refused and Spock's apply worker exiting "cluster
		// is in read-only mode" for the ~100ms until a reset after the
		// promotion).
		if err := a.clearSpockReadonly(ctx, inst); err != nil {
			a.log.Warn("could not reset spock.readonly before promoting", zap.Error(err))
		}
	}
	replayedOrigins, originsErr := a.replayedOrigins(ctx, inst)
	start := time.Now()
	// Promote first: pg_ctl promote needs standby.signal in place, which
	// WriteConfig(Primary) would remove.
	if err := a.asLeader(ctx, "promote", inst.Promote); err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	a.cb.promoted()
	a.following = ""
	if changed, _, err := inst.WriteConfig(pg.Primary, nil); err != nil {
		return err
	} else if changed {
		if err := inst.Reload(ctx); err != nil {
			a.log.Warn("reload after promote failed", zap.Error(err))
		}
	}
	st, err := inst.Status(ctx)
	if err != nil {
		return fmt.Errorf("status after promote: %w", err)
	}
	if err := writeMarker(inst.DataDir(), roleMarker{Role: consulkv.RolePrimary, Timeline: st.Timeline}); err != nil {
		return err
	}
	a.iAmLeaderNow = boolp(true)
	if a.lock.LeaseValid(time.Now()) {
		// Tell the REST API and Consul now rather than at the end of the
		// round: health checks, DNS and routing follow the registration.
		a.setState(func(s *health.MemberState) {
			s.Role, s.State, s.PGRunning, s.Timeline = consulkv.RolePrimary, "running", true, st.Timeline
			s.IsLeader, s.Writable, s.LeaderName = true, true, a.cfg.Name
		})
		a.register(a.State())
	}
	a.log.Info("promoted to primary", zap.String("reason", reason), zap.Uint32("timeline", st.Timeline), zap.Duration("took", time.Since(start).Round(time.Millisecond)))
	var skipped []consulkv.SkippedChanges
	if o.Group != nil {
		if originsErr != nil {
			a.log.Warn("not checking for other groups' changes this promotion skipped", zap.Error(originsErr))
		} else {
			skipped = a.findSkippedChanges(ctx, o.Group.Status, replayedOrigins)
		}
	}
	if err := a.kv.AppendHistory(ctx, a.cfg.Group, a.lock.Session(), consulkv.HistoryEntry{Timeline: oldTL, LSN: lastLSN, Reason: reason, At: time.Now().UTC(), NewLeader: a.cfg.Name, SkippedChanges: skipped}); err != nil {
		a.log.Warn("could not append to the history", zap.Error(err))
	}
	if o.Group != nil && o.Group.Failover != nil {
		a.clearFailover(ctx, o.Group)
	}
	if o.Group != nil {
		a.checkLogicalAfterPromotion(ctx, o.Group.Status)
	}
	return a.leaderHousekeeping(ctx, o.Group)
}

// reloadUntil reloads PostgreSQL's configuration and waits (up to 3s)
// until a new session shows param = want: the postmaster has read the file
// then, and every backend it starts from now on runs with it.
func (a *Agent) reloadUntil(ctx context.Context, inst *pg.Instance, param, want string) error {
	if err := inst.Reload(ctx); err != nil {
		return err
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		got, err := inst.Show(ctx, param)
		if err == nil && got == want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s is %q after the reload, want %q (%v)", param, got, want, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// leaderHousekeeping publishes the group status and keeps the members'
// replication slots.
func (a *Agent) leaderHousekeeping(ctx context.Context, g *consulkv.GroupView) error {
	inst := a.pgi()
	st, err := inst.Status(ctx)
	if err != nil {
		return fmt.Errorf("leader status: %w", err)
	}
	if st.InRecovery {
		return nil
	}
	if m, _ := readMarker(inst.DataDir()); m.Role != consulkv.RolePrimary || m.Timeline != st.Timeline {
		if err := writeMarker(inst.DataDir(), roleMarker{Role: consulkv.RolePrimary, Timeline: st.Timeline}); err != nil {
			return err
		}
	}
	logicalSlots, logical := a.leaderLogical(ctx, st)
	a.logical = logical
	gs := &consulkv.GroupStatus{Version: consulkv.ValueVersion, Leader: a.cfg.Name, LastLSN: uint64(st.CurrentLSN), Timeline: st.Timeline, LogicalSlots: logicalSlots,
		Origins: a.leaderOrigins(ctx), UpdatedAt: time.Now().UTC()}
	statusPresent := g != nil && g.Status != nil && g.Status.Leader == a.cfg.Name
	if now := time.Now(); a.statusWrite.due(a.lock.Session(), gs, statusPresent, now) {
		if err := a.kv.LeaderPut(ctx, a.cfg.Group, a.lock.Session(), a.kv.StatusKey(a.cfg.Group), gs); err != nil {
			a.statusWrite.forget()
			return err
		}
		a.statusWrite.done(a.lock.Session(), gs, now)
	}
	// Standbys whose replies stopped (a cut network keeps them "streaming"
	// in pg_stat_replication until wal_sender_timeout, 60s by default).
	silent := a.replies.silent(st.Replication, time.Now(), silentAfter(a.parameters()))
	if err := a.manageSync(ctx, g, st, silent); err != nil {
		a.log.Warn("managing synchronous replication failed", zap.Error(err))
	}
	a.manageStandbySlots(ctx, g, st, silent)      // PostgreSQL 17+ only (logical.go)
	a.manageSpockStandbySlots(ctx, g, st, silent) // Spock on PostgreSQL 15/16 (spock.go)
	if g != nil {
		now := time.Now()
		for name := range g.Members {
			a.slotMembers[name] = now
		}
	}
	// Keep slots of members seen in the last 10 minutes, so a replica whose
	// session blipped does not lose the WAL it still needs.
	var members []string
	for name, seen := range a.slotMembers {
		if time.Since(seen) > 10*time.Minute {
			delete(a.slotMembers, name)
			continue
		}
		if name != a.cfg.Name {
			members = append(members, name)
		}
	}
	return inst.EnsurePhysicalSlots(ctx, members)
}

// repairLeaderKey rewrites the leader key's value when our session holds
// the key but the value is unreadable or names another member (a plain PUT
// by hand keeps the lock and replaces the value). Followers and tools would
// otherwise not know who leads until the next failover.
func (a *Agent) repairLeaderKey(ctx context.Context, g *consulkv.GroupView) {
	if g == nil || g.Leader == nil || g.Leader.Member == a.cfg.Name {
		return
	}
	ok, err := a.lock.Acquire(ctx)
	if err != nil || !ok {
		a.log.Warn("could not rewrite the unreadable leader key", zap.Bool("acquired", ok), zap.Error(err))
		return
	}
	a.log.Warn("rewrote the leader key: its value was unreadable or named another member", zap.String("found", g.Leader.Member))
}

func (a *Agent) clearFailover(ctx context.Context, g *consulkv.GroupView) {
	if g == nil || g.FailoverIndex == 0 {
		return
	}
	if err := a.kv.LeaderDelete(ctx, a.cfg.Group, a.lock.Session(), a.kv.FailoverKey(a.cfg.Group), g.FailoverIndex); err != nil {
		a.log.Warn("could not clear the failover key", zap.Error(err))
		return
	}
	a.log.Info("cleared the failover key")
}

// demote stops being writable. An immediate demote (fencing) aborts
// PostgreSQL; a normal one shuts down cleanly. Either way it comes back as a
// read-only standby so it can follow the next leader (after a rewind).
func (a *Agent) demote(ctx context.Context, immediate, release bool, reason string) error {
	inst := a.pgi()
	a.setState(func(s *health.MemberState) { s.Writable = false; s.IsLeader = false; s.Message = reason })
	a.iAmLeaderNow = boolp(false)
	if a.syncNames != "" {
		a.syncNames = ""
		a.rebuildPG()
		inst = a.pgi()
	}
	mode := pg.StopFast
	if immediate {
		mode = pg.StopImmediate
	}
	stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if !immediate {
		a.terminateLogicalWalsenders(stopCtx)
	}
	wasRunning, _ := inst.IsRunning()
	if err := inst.Stop(stopCtx, mode); err != nil {
		a.log.Error("stop during demote failed; killing the postmaster", zap.Error(err))
		if kerr := inst.Kill(); kerr != nil {
			return fmt.Errorf("demote: stop: %v; kill: %w", err, kerr)
		}
	}
	a.fw.disarm()
	if wasRunning {
		a.cb.stopped("") // the start below reports on_role_change replica
	}
	if release {
		if err := a.lock.Release(ctx); err != nil {
			a.log.Warn("could not release the leader lock", zap.Error(err))
		}
	}
	a.log.Info("demoted: PostgreSQL no longer accepts writes", zap.Bool("immediate", immediate))
	if _, _, err := inst.WriteConfig(pg.Replica, nil); err != nil {
		return err
	}
	a.following = ""
	return a.start(ctx, false)
}

// switchover hands the leadership to candidate with no WAL lost: stop
// cleanly (the shutdown checkpoint is streamed to the standbys), wait until
// the candidate confirms it has everything, then release the lock. If the
// candidate does not confirm in time the switchover is abandoned and we stay
// primary.
func (a *Agent) switchover(ctx context.Context, o Observation, candidate string) error {
	inst := a.pgi()
	cm := o.Group.Members[candidate]
	if cm == nil {
		return fmt.Errorf("switchover: candidate %s vanished", candidate)
	}
	a.log.Info("switchover: checkpoint and clean stop", zap.String("candidate", candidate))
	start := time.Now()
	if err := inst.CheckpointIfPrimary(ctx); err != nil {
		a.log.Warn("checkpoint before switchover failed", zap.Error(err))
	}
	a.setState(func(s *health.MemberState) { s.Writable = false; s.Message = "switching over to " + candidate })
	a.terminateLogicalWalsenders(ctx)
	if err := inst.Stop(ctx, pg.StopFast); err != nil {
		return fmt.Errorf("switchover: stop: %w", err)
	}
	a.fw.disarm()
	a.cb.stopped(consulkv.RolePrimary)
	cd, err := inst.ControlData(ctx)
	if err != nil {
		return fmt.Errorf("switchover: controldata: %w", err)
	}
	// The wait below can outlast the session TTL: keep the session (and so
	// the lock) alive meanwhile. PostgreSQL is stopped, nothing can be
	// written, so holding the lock longer is safe; losing it here let
	// another member win a race with part of our WAL missing.
	waitCtx, stopRenew := context.WithCancel(ctx)
	renewed := a.keepSessionAlive(waitCtx)
	confirmed := a.waitPeerHas(waitCtx, cm, uint64(cd.CheckpointLSN), 10*time.Second)
	stopRenew()
	<-renewed
	if !confirmed {
		// Stay primary only while we still hold the lock with a valid
		// lease: restarting as primary after losing it made two writable
		// primaries. Otherwise come back read-only; the loop follows (or
		// rewinds to) whoever leads now.
		if a.stillLeader(ctx) {
			a.log.Error("switchover abandoned: candidate did not confirm our last WAL; staying primary", zap.String("candidate", candidate), zap.String("checkpoint", cd.CheckpointLSN.String()))
			a.clearFailover(ctx, o.Group)
			if _, _, err := inst.WriteConfig(pg.Primary, nil); err != nil {
				return err
			}
			return a.asLeader(ctx, "restart after an abandoned switchover", func(ctx context.Context) error { return a.start(ctx, true) })
		}
		a.log.Error("switchover abandoned and the leader lock is lost: starting read-only", zap.String("candidate", candidate), zap.String("checkpoint", cd.CheckpointLSN.String()))
		a.iAmLeaderNow = boolp(false)
		if _, _, err := inst.WriteConfig(pg.Replica, nil); err != nil {
			return err
		}
		a.following = ""
		return a.start(ctx, false)
	}
	// The candidate has all our WAL: no divergence is possible, so this
	// data dir can follow the new timeline without pg_rewind.
	if err := writeMarker(inst.DataDir(), roleMarker{Role: consulkv.RoleReplica}); err != nil {
		return err
	}
	if err := a.lock.Release(ctx); err != nil {
		return fmt.Errorf("switchover: release: %w", err)
	}
	a.iAmLeaderNow = boolp(false)
	if a.syncNames != "" {
		a.syncNames = ""
		a.rebuildPG()
		inst = a.pgi()
	}
	a.log.Info("switchover: released the leader lock", zap.String("candidate", candidate), zap.Duration("took", time.Since(start).Round(time.Millisecond)))
	if _, _, err := inst.WriteConfig(pg.Replica, a.followTarget(cm)); err != nil {
		return err
	}
	a.following = candidate
	return a.start(ctx, false)
}

// keepSessionAlive renews the session every few hundred milliseconds until
// ctx ends (the returned channel closes then), for actions that keep the
// loop busy longer than the session TTL with PostgreSQL stopped.
// renewDuring keeps the session alive until the returned stop is called.
// Only for actions of a member that holds no lock: a leader's lease must
// keep reflecting its loop, or a stuck loop would never be fenced.
func (a *Agent) renewDuring(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := a.keepSessionAlive(ctx)
	return func() { cancel(); <-done }
}

func (a *Agent) keepSessionAlive(ctx context.Context) <-chan struct{} {
	done := make(chan struct{})
	every := a.lock.Options().SessionTTL() / 4
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(every):
			}
			if _, err := a.lock.EnsureSession(ctx); err != nil && ctx.Err() == nil {
				a.log.Warn("renewing the session during a long action failed", zap.Error(err))
			}
		}
	}()
	return done
}

// stillLeader renews the session and checks in Consul that it still holds
// the leader key, with the lease valid afterwards.
func (a *Agent) stillLeader(ctx context.Context) bool {
	sess, err := a.lock.EnsureSession(ctx)
	if err != nil || sess == "" {
		return false
	}
	g, err := a.kv.ReadGroup(ctx, a.cfg.Group)
	if err != nil || g.Leader == nil || g.Leader.Session != sess {
		return false
	}
	return a.lock.LeaseValid(time.Now())
}

// waitPeerHas waits until peer m has received WAL past lsn: it asks the
// peer's PostgreSQL directly (live) and falls back to its REST status.
func (a *Agent) waitPeerHas(ctx context.Context, m *consulkv.MemberStatus, lsn uint64, timeout time.Duration) bool {
	client := a.peerClient(time.Second)
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(timeout)
	ci := a.superuserConn(m)
	ci.ConnectTimeout = 1
	for time.Now().Before(deadline) && ctx.Err() == nil {
		qctx, cancel := context.WithTimeout(ctx, time.Second)
		got, err := pg.ReceivedLSN(qctx, ci)
		cancel()
		if err == nil && uint64(got) > lsn {
			return true
		}
		if err != nil {
			if st, err := fetchPeer(ctx, client, m.APIURL); err == nil && st.LastLSN() > lsn {
				return true
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// rewind brings a diverged former primary back in line with leader with
// pg_rewind, re-cloning when rewind cannot.
func (a *Agent) rewind(ctx context.Context, g *consulkv.GroupView, leader string) error {
	lm := g.Members[leader]
	if lm == nil {
		return fmt.Errorf("rewind: leader %s has no member key", leader)
	}
	inst := a.pgi()
	a.setState(func(s *health.MemberState) { s.State = "rewinding" })
	if running, _ := inst.IsRunning(); running {
		if err := inst.Stop(ctx, pg.StopFast); err != nil {
			return fmt.Errorf("rewind: stop: %w", err)
		}
		a.cb.stopped("")
	}
	a.log.Info("rewinding from the leader", zap.String("leader", leader))
	if err := inst.Rewind(ctx, a.superuserConn(lm)); err != nil {
		if !errors.Is(err, pg.ErrRewindFailed) {
			return err
		}
		a.log.Warn("pg_rewind failed; re-cloning from the leader", zap.Error(err))
		if err := inst.RemoveDataDir(); err != nil {
			return fmt.Errorf("re-clone: %w", err)
		}
		return a.clone(ctx, g, leader)
	}
	if err := writeMarker(inst.DataDir(), roleMarker{Role: consulkv.RoleReplica}); err != nil {
		return err
	}
	return a.follow(ctx, g, leader)
}

// shutdown stops the member cleanly. A leader stops PostgreSQL first
// (streaming its shutdown checkpoint), waits briefly for a replica to have
// it, then deletes the leader key so a replica takes over at once.
func (a *Agent) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	inst := a.pgi()
	st := a.State()
	a.log.Info("shutting down", zap.Bool("leader", st.IsLeader))
	if st.IsLeader && st.PGRunning {
		inst.CheckpointIfPrimary(ctx)
	}
	wasRunning, _ := inst.IsRunning()
	if err := inst.Stop(ctx, pg.StopFast); err != nil {
		a.log.Error("stopping PostgreSQL failed", zap.Error(err))
	}
	a.fw.disarm()
	if wasRunning {
		a.cb.stopped("")
	}
	if st.IsLeader {
		if cd, err := inst.ControlData(ctx); err == nil && a.lastGroup != nil {
			best := ""
			for _, name := range a.lastGroup.MemberNames() {
				m := a.lastGroup.Members[name]
				if name != a.cfg.Name && m.Role == consulkv.RoleReplica && !m.Tags.NoFailover {
					if a.waitPeerHas(ctx, m, uint64(cd.CheckpointLSN), 5*time.Second) {
						best = name
						break
					}
				}
			}
			if best == "" {
				a.log.Warn("no replica confirmed the shutdown checkpoint; releasing anyway")
			} else {
				a.log.Info("replica has our last WAL", zap.String("replica", best))
			}
		}
		// Our member key still says "running primary"; replicas do not race
		// while such a key exists, so remove it before the lock.
		if err := a.kv.DeleteMember(ctx, a.cfg.Group, a.cfg.Name); err != nil {
			a.log.Warn("could not delete the member key", zap.Error(err))
		}
		if err := a.lock.Release(ctx); err != nil {
			a.log.Warn("could not release the leader lock", zap.Error(err))
		}
	}
	if !a.cfg.Consul.DisableRegistration {
		if err := a.reg.deregister(ctx); err != nil {
			a.log.Warn("could not deregister the service", zap.Error(err))
		}
	}
	if err := a.lock.Destroy(ctx); err != nil {
		a.log.Warn("could not destroy the session", zap.Error(err))
	}
	inst.Close()
	// Last, so that waiting for the on_stop callback never delays the
	// handover: give it a little time, then kill what still runs.
	a.cb.close(callbacksShutdownWait)
	a.log.Info("stopped")
}

// callbacksShutdownWait is how long a stopping agent waits for callbacks
// still running (its on_stop) before it kills them (at most
// postgresql.callbacks_timeout).
const callbacksShutdownWait = 10 * time.Second
