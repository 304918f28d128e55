package agent

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/pg"
	"go.uber.org/zap"
)

// Spock on PostgreSQL 15/16 (DESIGN.md §5). pgmesh drives Spock's own slot
// machinery instead of competing with it:
//   - on replicas, Spock's spock_failover_slots worker keeps the leader's
//     logical slots (pg.Config.Spock renders spock.primary_dsn
//     with a passfile so it authenticates, and follows leader changes);
//     pgmesh's own slot copier, which needs a restart per new slot, is off;
//   - on the leader, spock.pg_standby_slot_names holds Spock's logical
//     walsenders back until the promotable standbys have confirmed a change,
//     so no other group applies a change a promoted standby lacks
//     (spock.standby_slots_min_confirmed stays at its default -1: every
//     listed standby, the same guarantee whichever of them is promoted);
//   - readiness (logical_slots_ready) comes from the slots the worker
//     synced, compared with the leader's published positions.

// spockSlotWorker reports whether this member uses Spock's failover-slot
// worker: profile spock on PostgreSQL before 17 (17+ uses the native slot
// sync in every profile).
func (a *Agent) spockSlotWorker() bool {
	return a.dyn.ReplicationProfile() == consulkv.ReplicationSpock && !a.nativeFailoverSlots()
}

// spockSlotsReady is the readiness rule for a standby whose slots Spock's
// worker keeps: every logical slot the leader published exists here, is
// not lost, and has confirmed_flush at the leader's published position or
// at least as far as this standby has replayed (the worker caps a slot at
// the standby's own flush position). The reason names the first slot that
// is not ready.
func spockSlotsReady(published map[string]consulkv.LogicalSlot, local []pg.ReplicationSlot, replayed uint64) (bool, string) {
	if len(published) == 0 {
		return false, "the leader publishes no logical slots"
	}
	have := map[string]pg.ReplicationSlot{}
	for _, s := range local {
		if s.Type == "logical" {
			have[s.Name] = s
		}
	}
	for _, n := range slices.Sorted(maps.Keys(published)) {
		want := published[n].ConfirmedFlush
		s, ok := have[n]
		switch {
		case !ok:
			return false, "slot " + n + " not synced here yet by Spock's failover-slot worker"
		case s.WALStatus == "lost":
			return false, "slot " + n + " is invalidated (wal_status lost)"
		case uint64(s.ConfirmedFlush) < want && uint64(s.ConfirmedFlush) < replayed:
			return false, fmt.Sprintf("slot %s confirmed_flush %s behind the leader's published %s", n, s.ConfirmedFlush, pg.LSN(want))
		}
	}
	return true, ""
}

// syncSpockSlots is a PostgreSQL 15/16 Spock replica's share of logical
// replication: no copies, spock.pg_standby_slot_names cleared (a replica
// has no logical walsenders to hold back), readiness from Spock's slots.
func (a *Agent) syncSpockSlots(ctx context.Context, g *consulkv.GroupView, local Local) bool {
	a.copiedSlots = nil
	if !local.Running || !local.InRecovery {
		return false
	}
	inst := a.pgi()
	if changed, err := inst.SetSystemSetting(ctx, "spock.pg_standby_slot_names", ""); err != nil {
		a.log.Warn("could not clear spock.pg_standby_slot_names on a replica", zap.Error(err))
	} else if changed {
		a.log.Info("cleared spock.pg_standby_slot_names", zap.String("reason", "a replica has no logical walsenders to hold back"))
	}
	// A standby is read-only by recovery; a spock.readonly left from a
	// demotion would only make its promotion refuse writes.
	if err := a.clearSpockReadonly(ctx, inst); err != nil {
		a.log.Warn("could not reset spock.readonly on a replica", zap.Error(err))
	}
	if g == nil || g.Status == nil || len(g.Status.LogicalSlots) == 0 {
		return false
	}
	slots, err := inst.ReplicationSlots(ctx)
	if err != nil {
		a.log.Warn("could not list the slots Spock synced", zap.Error(err))
		return false
	}
	ready, reason := spockSlotsReady(g.Status.LogicalSlots, slots, local.LastLSN)
	a.noteSlotReadiness(ready, reason, len(g.Status.LogicalSlots), "logical slots synced by Spock")
	return ready
}

// clearSpockReadonly resets spock.readonly (set while a primary is demoted,
// see terminateLogicalWalsenders) and waits until PostgreSQL shows "off".
func (a *Agent) clearSpockReadonly(ctx context.Context, inst *pg.Instance) error {
	cur, err := inst.Show(ctx, "spock.readonly")
	if err != nil || cur == "off" {
		return err
	}
	if _, err := inst.Exec(ctx, "ALTER SYSTEM RESET spock.readonly"); err != nil {
		return err
	}
	if err := a.reloadUntil(ctx, inst, "spock.readonly", "off"); err != nil {
		return err
	}
	a.log.Info("reset spock.readonly", zap.String("was", cur), zap.String("reason", "set while this member was demoted; a standby is read-only anyway and a promoted one must take writes at once"))
	return nil
}

// manageSpockStandbySlots runs on a PostgreSQL 15/16 Spock leader every
// loop: spock.pg_standby_slot_names = the physical slots of the standbys
// that could be promoted (streaming, not nofailover; in sync mode the sync
// set), recomputed like synchronized_standby_slots on 17, reloaded only on
// a change. A standby that stops streaming leaves the list at the next
// loop, one that stops replying (a cut network keeps it "streaming" until
// wal_sender_timeout) once it has been silent for silentAfter (5s by
// default), so it blocks Spock's walsenders for seconds, not a minute.
func (a *Agent) manageSpockStandbySlots(ctx context.Context, g *consulkv.GroupView, st pg.Status, silent map[string]bool) {
	if !a.spockSlotWorker() || st.InRecovery {
		return
	}
	want := standbySlotsFor(g, a.cfg.Name, a.dyn.SyncMode(), st.Replication, silent)
	changed, err := a.pgi().SetSystemSetting(ctx, "spock.pg_standby_slot_names", want)
	if err != nil {
		a.log.Warn("could not set spock.pg_standby_slot_names", zap.Error(err))
		return
	}
	if changed {
		a.log.Info("spock.pg_standby_slot_names follows the failover-eligible standbys",
			zap.String("value", want), zap.String("synchronous_mode", a.dyn.SyncMode()),
			zap.String("reason", "Spock's walsenders wait for these standbys so a promoted one has every change another group applied"))
	}
}
