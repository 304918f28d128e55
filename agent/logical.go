package agent

import (
	"context"
	"fmt"
	"maps"
	"net"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/pg"
	"go.uber.org/zap"
)

// Logical replication between groups (DESIGN.md §5): the parameter
// profile, logical slot copies on standbys, fencing of logical walsenders
// on demotion, and the status of slots and subscriptions.

// profileParameters are the settings the replication profile enforces.
// groupSize is the number of members of this group, groups the number of
// groups in the mesh: every member needs a physical slot and a walsender,
// every other group a logical slot and a walsender, plus headroom for
// clones, rewinds and initial table syncs.
func profileParameters(profile string, groupSize, groups int, current map[string]string) map[string]string {
	if profile == consulkv.ReplicationNone || profile == "" {
		return nil
	}
	need := groupSize + 2*groups + 10
	// Round up to a multiple of 10: these are postmaster settings, and a
	// value that changes with every new member would keep a restart pending.
	need = (need + 9) / 10 * 10
	p := map[string]string{
		"wal_level":              "logical",
		"track_commit_timestamp": "on",
		"hot_standby_feedback":   "on",
		"wal_log_hints":          "on",
		"max_replication_slots":  strconv.Itoa(need),
		"max_wal_senders":        strconv.Itoa(need),
		"max_worker_processes":   "16",
	}
	for _, k := range []string{"max_replication_slots", "max_wal_senders", "max_worker_processes"} {
		if v, err := strconv.Atoi(current[k]); err == nil {
			if have, _ := strconv.Atoi(p[k]); v > have {
				p[k] = strconv.Itoa(v)
			}
		}
	}
	if profile == consulkv.ReplicationSpock {
		libs := splitList(current["shared_preload_libraries"])
		if !containsStr(libs, "spock") {
			libs = append(libs, "spock")
		}
		p["shared_preload_libraries"] = strings.Join(libs, ",")
	}
	return p
}

func splitList(s string) []string {
	var out []string
	for _, part := range strings.Split(strings.Trim(s, "'"), ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

// leaderLogical lists the leader's logical slots for the group status key
// and builds the member's logical status (outgoing slots, incoming
// subscriptions).
func (a *Agent) leaderLogical(ctx context.Context, st pg.Status) (map[string]consulkv.LogicalSlot, *consulkv.LogicalStatus) {
	inst := a.pgi()
	slots := map[string]consulkv.LogicalSlot{}
	ls := &consulkv.LogicalStatus{}
	err := inst.WithConn(ctx, func(c *pgx.Conn) error {
		rows, err := c.Query(ctx, `SELECT slot_name, plugin, database, active, coalesce(confirmed_flush_lsn, '0/0')::text, coalesce(wal_status, '')
			FROM pg_replication_slots WHERE slot_type = 'logical' AND NOT temporary ORDER BY slot_name`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var name, plugin, db, confirmed, walStatus string
			var active bool
			if err := rows.Scan(&name, &plugin, &db, &active, &confirmed, &walStatus); err != nil {
				return err
			}
			lsn, _ := pg.ParseLSN(confirmed)
			// A lost slot is useless to its subscriber anywhere: published,
			// it would keep every standby from ever counting as ready (and
			// so refuse every switchover). It stays in the status below.
			if walStatus != "lost" {
				slots[name] = consulkv.LogicalSlot{Plugin: plugin, Database: db, ConfirmedFlush: uint64(lsn)}
			}
			lag := uint64(0)
			if uint64(st.CurrentLSN) > uint64(lsn) {
				lag = uint64(st.CurrentLSN) - uint64(lsn)
			}
			ls.Slots = append(ls.Slots, consulkv.LogicalSlotStatus{Name: name, Plugin: plugin, Database: db, Active: active, ConfirmedFlush: uint64(lsn), LagBytes: lag, WALStatus: walStatus})
		}
		return rows.Err()
	})
	if err != nil {
		a.log.Warn("listing logical slots failed", zap.Error(err))
	}
	if pg.NativeFailoverSlots(st.ServerVersion) && err == nil {
		// PostgreSQL 17+: only failover slots reach the standbys, so only
		// they are published for the standbys' readiness; the others are
		// reported as lost at a failover.
		if s17, err := inst.LogicalSlots17(ctx); err != nil {
			a.log.Warn("listing failover flags of logical slots failed", zap.Error(err))
		} else {
			for _, s := range s17 {
				if !s.Failover || s.Invalidated != "" {
					delete(slots, s.Name)
				}
			}
			a.noteNonFailoverSlots(nonFailoverSlots(s17))
		}
	}
	ls.Subscriptions = a.subscriptions(ctx)
	if len(ls.Slots) == 0 && len(ls.Subscriptions) == 0 {
		ls = nil
	}
	return slots, ls
}

var conninfoHostRe = regexp.MustCompile(`(?:^|\s)(host|port)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)`)

// endpointsOf extracts host:port pairs from a libpq conninfo (multi-host
// lists included); the password is never returned.
func endpointsOf(conninfo string) []string {
	var hosts, ports []string
	for _, m := range conninfoHostRe.FindAllStringSubmatch(conninfo, -1) {
		v := strings.Trim(m[2], "'")
		if m[1] == "host" {
			hosts = strings.Split(v, ",")
		} else {
			ports = strings.Split(v, ",")
		}
	}
	var out []string
	for i, h := range hosts {
		p := "5432"
		switch {
		case i < len(ports):
			p = ports[i]
		case len(ports) == 1:
			p = ports[0]
		}
		out = append(out, net.JoinHostPort(strings.TrimSpace(h), strings.TrimSpace(p)))
	}
	return out
}

// subscriptions reports the incoming native subscriptions (and Spock's,
// when the extension is installed in the postgres database).
func (a *Agent) subscriptions(ctx context.Context) []consulkv.SubscriptionStatus {
	var subs []consulkv.SubscriptionStatus
	inst := a.pgi()
	err := inst.WithConn(ctx, func(c *pgx.Conn) error {
		rows, err := c.Query(ctx, `SELECT s.subname, d.datname, s.subenabled, st.pid IS NOT NULL,
				coalesce(st.received_lsn, '0/0')::text, coalesce(st.last_msg_receipt_time, 'epoch'), s.subconninfo
			FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid
			LEFT JOIN pg_stat_subscription st ON st.subid = s.oid AND st.relid IS NULL
			ORDER BY s.subname`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var s consulkv.SubscriptionStatus
			var recv, conninfo string
			var last time.Time
			if err := rows.Scan(&s.Name, &s.Database, &s.Enabled, &s.Running, &recv, &last, &conninfo); err != nil {
				return err
			}
			lsn, _ := pg.ParseLSN(recv)
			s.ReceivedLSN = uint64(lsn)
			if last.Unix() > 0 {
				s.LastMsgReceipt = last.UTC()
			}
			s.Endpoints = endpointsOf(conninfo)
			s.Source = "native"
			subs = append(subs, s)
		}
		return rows.Err()
	})
	if err != nil {
		a.log.Debug("listing subscriptions failed", zap.Error(err))
	}
	if a.dyn.ReplicationProfile() == consulkv.ReplicationSpock {
		subs = append(subs, a.spockSubscriptions(ctx)...)
	}
	return subs
}

// spockSubscriptions reads spock.sub_show_status() (Spock's documented
// status function) when the extension is installed.
func (a *Agent) spockSubscriptions(ctx context.Context) []consulkv.SubscriptionStatus {
	var subs []consulkv.SubscriptionStatus
	err := a.pgi().WithConn(ctx, func(c *pgx.Conn) error {
		var installed bool
		if err := c.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'spock')").Scan(&installed); err != nil || !installed {
			return err
		}
		rows, err := c.Query(ctx, "SELECT subscription_name, status, provider_dsn FROM spock.sub_show_status()")
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var name, status, dsn string
			if err := rows.Scan(&name, &status, &dsn); err != nil {
				return err
			}
			subs = append(subs, consulkv.SubscriptionStatus{Name: name, Database: "postgres", Enabled: status != "disabled",
				Running: status == "replicating", Endpoints: endpointsOf(dsn), Source: "spock"})
		}
		return rows.Err()
	})
	if err != nil {
		a.log.Debug("spock status failed", zap.Error(err))
	}
	return subs
}

// syncLogicalSlots keeps this replica's copies of the leader's logical
// slots: missing ones are copied (then PostgreSQL is restarted to load
// them), present ones are advanced to the leader's published position. It
// returns whether every leader slot has a current copy.
func (a *Agent) syncLogicalSlots(ctx context.Context, g *consulkv.GroupView, local Local) bool {
	if a.spockSlotWorker() {
		return a.syncSpockSlots(ctx, g, local)
	}
	if a.nativeFailoverSlots() {
		// PostgreSQL 17+: the slot sync worker keeps the slots; no copies.
		a.copiedSlots = nil
		if !local.Running || !local.InRecovery {
			return false
		}
		return a.syncLogicalSlots17(ctx, g)
	}
	if g == nil || g.Status == nil || len(g.Status.LogicalSlots) == 0 {
		a.copiedSlots = nil
		return false
	}
	if !local.Running || !local.InRecovery || g.Leader == nil || g.Members[g.Leader.Member] == nil {
		return false
	}
	inst := a.pgi()
	have := map[string]pg.ReplicationSlot{}
	slots, err := inst.ReplicationSlots(ctx)
	if err != nil {
		return false
	}
	for _, s := range slots {
		if s.Type == "logical" {
			have[s.Name] = s
		}
	}
	if a.copiedSlots == nil {
		a.copiedSlots = map[string]bool{}
	}
	leader := g.Members[g.Leader.Member]
	names := make([]string, 0, len(g.Status.LogicalSlots))
	for n := range g.Status.LogicalSlots {
		names = append(names, n)
	}
	sort.Strings(names)
	ready := true
	installed := 0
	for _, name := range names {
		want := g.Status.LogicalSlots[name]
		if _, ok := have[name]; !ok {
			ready = false
			state, err := pg.ReadSlotState(ctx, a.superuserConn(leader), name)
			if err != nil {
				a.log.Warn("could not read the leader's logical slot", zap.String("slot", name), zap.Error(err))
				continue
			}
			if err := inst.InstallSlotState(name, state); err != nil {
				a.log.Warn("could not install a logical slot copy", zap.String("slot", name), zap.Error(err))
				continue
			}
			a.copiedSlots[name] = true
			installed++
			continue
		}
		a.copiedSlots[name] = true
		var confirmed pg.LSN
		err := inst.WithDBConn(ctx, want.Database, func(c *pgx.Conn) error {
			var cur string
			if err := c.QueryRow(ctx, "SELECT coalesce(confirmed_flush_lsn, '0/0')::text FROM pg_replication_slots WHERE slot_name = $1", name).Scan(&cur); err != nil {
				return err
			}
			confirmed, _ = pg.ParseLSN(cur)
			if uint64(confirmed) >= want.ConfirmedFlush || local.LastLSN < want.ConfirmedFlush {
				return nil // current, or we have not replayed that far yet
			}
			target := pg.LSN(want.ConfirmedFlush).String()
			if _, err := c.Exec(ctx, "SELECT pg_replication_slot_advance($1, $2::pg_lsn)", name, target); err != nil {
				return err
			}
			confirmed = pg.LSN(want.ConfirmedFlush)
			return nil
		})
		if err != nil {
			ready = false
			if strings.Contains(err.Error(), "has already been removed") {
				// The copy points at WAL this standby never had (it was made
				// before the slot moved past our clone point): drop it and
				// copy again once the leader's slot has moved on.
				a.log.Info("logical slot copy predates this standby's WAL; dropping it to copy again later", zap.String("slot", name))
				inst.Exec(ctx, "SELECT pg_drop_replication_slot($1)", name)
				delete(a.copiedSlots, name)
			} else {
				a.log.Warn("advancing a logical slot copy failed", zap.String("slot", name), zap.Error(err))
			}
			continue
		}
		if uint64(confirmed) < want.ConfirmedFlush {
			ready = false
		}
	}
	// Drop copies of slots the leader no longer has (only ones we made).
	for name := range have {
		if _, still := g.Status.LogicalSlots[name]; !still && a.copiedSlots[name] {
			if _, err := inst.Exec(ctx, "SELECT pg_drop_replication_slot($1)", name); err == nil {
				a.log.Info("dropped the copy of a logical slot the leader no longer has", zap.String("slot", name))
				delete(a.copiedSlots, name)
			}
		}
	}
	if installed > 0 {
		a.log.Info("restarting to load logical slot copies", zap.Int("slots", installed))
		a.announceRestart(ctx, g)
		if err := inst.Stop(ctx, pg.StopFast); err != nil {
			a.log.Warn("restart for slot copies: stop failed", zap.Error(err))
			return false
		}
		if err := a.start(ctx, false); err != nil {
			a.log.Warn("restart for slot copies: start failed", zap.Error(err))
		}
		return false
	}
	return ready
}

// announceRestart marks this replica's member key "restarting" before a
// planned restart, so a leader in synchronous mode keeps it listed while it
// is away (keepRestarting); the next publish says "running" again.
func (a *Agent) announceRestart(ctx context.Context, g *consulkv.GroupView) {
	sess := a.lock.Session()
	cur := g.Members[a.cfg.Name]
	if sess == "" || cur == nil {
		return
	}
	m := *cur
	m.State, m.UpdatedAt = StateRestarting, time.Now().UTC()
	if err := a.kv.PutMember(ctx, a.cfg.Group, sess, &m); err != nil {
		a.log.Warn("could not announce the restart in the member key", zap.Error(err))
		return
	}
	a.memberWrite.forget()
}

// checkLogicalAfterPromotion verifies that the logical slots the previous
// leader published exist here and are usable.
func (a *Agent) checkLogicalAfterPromotion(ctx context.Context, prev *consulkv.GroupStatus) {
	if prev == nil || len(prev.LogicalSlots) == 0 {
		return
	}
	slots, err := a.pgi().ReplicationSlots(ctx)
	if err != nil {
		a.log.Warn("could not verify logical slots after promotion", zap.Error(err))
		return
	}
	have := map[string]pg.ReplicationSlot{}
	for _, s := range slots {
		have[s.Name] = s
	}
	for name := range prev.LogicalSlots {
		s, ok := have[name]
		switch {
		case !ok:
			a.log.Error("logical slot missing after promotion: its subscribers cannot continue from this member", zap.String("slot", name))
		case s.WALStatus == "lost":
			a.log.Error("logical slot invalid after promotion (WAL lost)", zap.String("slot", name))
		default:
			a.log.Info("logical slot present after promotion", zap.String("slot", name), zap.String("wal_status", s.WALStatus))
		}
	}
	if !a.nativeFailoverSlots() {
		return
	}
	// PostgreSQL 17+: a synced slot can also be invalidated (e.g. a
	// conflict with recovery) while its WAL is still there.
	s17, err := a.pgi().LogicalSlots17(ctx)
	if err != nil {
		a.log.Warn("could not verify synced logical slots after promotion", zap.Error(err))
		return
	}
	for _, s := range s17 {
		if _, published := prev.LogicalSlots[s.Name]; published && s.Invalidated != "" {
			a.log.Error("synced logical slot invalidated after promotion: its subscribers cannot continue from this member",
				zap.String("slot", s.Name), zap.String("invalidation_reason", s.Invalidated))
		}
	}
}

// terminateLogicalWalsenders cuts consumers off a primary that is being
// demoted, so other groups stop reading from it at once.
func (a *Agent) terminateLogicalWalsenders(ctx context.Context) {
	rows, err := a.pgi().Query(ctx, `SELECT slot_name, pg_terminate_backend(active_pid) AS ok FROM pg_replication_slots
		WHERE slot_type = 'logical' AND active_pid IS NOT NULL`)
	if err != nil {
		return
	}
	for _, r := range rows {
		a.log.Info("terminated a logical walsender of the demoted primary", zap.Any("slot", r["slot_name"]))
	}
	if a.dyn.ReplicationProfile() == consulkv.ReplicationSpock {
		// Spock's documented read-only switch keeps the demoted node from
		// taking writes that would replicate to the mesh.
		if _, err := a.pgi().Exec(ctx, "ALTER SYSTEM SET spock.readonly = 'all'"); err == nil {
			a.pgi().Exec(ctx, "SELECT pg_reload_conf()")
		}
	}
}

// PostgreSQL 17+ native failover slots (DESIGN.md §5). Instead of copying
// slot state files to standbys (PostgreSQL 15/16, logical.go), the agent
// relies on PostgreSQL's slot sync worker on standbys
// (sync_replication_slots, rendered by pg.WriteConfig) and manages the
// primary's synchronized_standby_slots: the physical slots of the standbys
// that could be promoted, so a subscriber never applies a change a promoted
// standby lacks. Replicas report logical_slots_ready from
// pg_replication_slots (synced, failover, valid, current).

// nativeFailoverSlots reports whether this member's PostgreSQL is 17+: from
// the server's version when the last status query succeeded, else from the
// data directory's PG_VERSION (never the copy path on a 17 server whose
// status was momentarily unreadable).
func (a *Agent) nativeFailoverSlots() bool {
	if v := a.State().PGVersion; v > 0 {
		return pg.NativeFailoverSlots(v)
	}
	major, err := a.pgi().MajorVersion()
	return err == nil && major >= 17
}

// standbySlotsFor computes the primary's synchronized_standby_slots: the
// physical slots (pg.SlotName) of the failover-eligible standbys. Eligible
// means a member of the group, not self, not tagged nofailover, and
//   - asynchronous mode: streaming from this primary now;
//   - synchronous mode: in the sync key this leader published, plus any
//     standby PostgreSQL already treats as synchronous (it enters the key
//     next, and must be waited for before it does).
//
// The result is sorted and comma-separated, empty when nobody is eligible (a
// dead standby then stops blocking logical walsenders).
func standbySlotsFor(g *consulkv.GroupView, self, syncMode string, repl []pg.ReplicationConn, silent map[string]bool) string {
	if g == nil {
		return ""
	}
	set := map[string]bool{}
	eligible := func(name string) bool {
		m := g.Members[name]
		return m != nil && name != self && !m.Tags.NoFailover && !silent[name]
	}
	if syncMode == consulkv.SyncOff || syncMode == "" {
		for _, rc := range repl {
			if rc.State == "streaming" && eligible(rc.ApplicationName) {
				set[pg.SlotName(rc.ApplicationName)] = true
			}
		}
	} else {
		if g.Sync != nil && g.Sync.Leader == self {
			for _, n := range g.Sync.SyncStandbys {
				if eligible(n) {
					set[pg.SlotName(n)] = true
				}
			}
		}
		for _, rc := range repl {
			if rc.State == "streaming" && (rc.SyncState == "sync" || rc.SyncState == "quorum") && eligible(rc.ApplicationName) {
				set[pg.SlotName(rc.ApplicationName)] = true
			}
		}
	}
	out := make([]string, 0, len(set))
	for s := range set {
		out = append(out, s)
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

// nativeSlotsReady is the PostgreSQL 17 readiness rule for a standby: every
// logical slot the leader published (its failover slots) exists here as a
// persistent synced slot with failover = true, is not invalidated, and has
// confirmed_flush at or past the leader's published position. The reason
// names the first slot that is not ready.
func nativeSlotsReady(published map[string]consulkv.LogicalSlot, local []pg.LogicalSlot17) (bool, string) {
	if len(published) == 0 {
		return false, "the leader publishes no failover slots"
	}
	have := make(map[string]pg.LogicalSlot17, len(local))
	for _, s := range local {
		have[s.Name] = s
	}
	for _, n := range slices.Sorted(maps.Keys(published)) {
		want := published[n]
		s, ok := have[n]
		switch {
		case !ok:
			return false, "slot " + n + " not synced here yet"
		case !s.Synced || !s.Failover:
			return false, fmt.Sprintf("slot %s is not a synced failover slot (synced %v, failover %v)", n, s.Synced, s.Failover)
		case s.Temporary:
			return false, "slot " + n + " is still temporary (the primary's slot has not caught up with this standby)"
		case s.Invalidated != "" || s.WALStatus == "lost":
			return false, fmt.Sprintf("slot %s is invalidated (%s)", n, firstNonEmpty(s.Invalidated, s.WALStatus))
		case uint64(s.ConfirmedFlush) < want.ConfirmedFlush:
			return false, "slot " + n + " confirmed_flush behind the leader's published position"
		}
	}
	return true, ""
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}

// nonFailoverSlots lists logical slots on a PostgreSQL 17 primary that
// will not survive a failover (no failover = true), sorted.
func nonFailoverSlots(slots []pg.LogicalSlot17) []string {
	var out []string
	for _, s := range slots {
		if !s.Failover && !s.Temporary {
			out = append(out, s.Name)
		}
	}
	sort.Strings(out)
	return out
}

// native17State is what the PostgreSQL 17 path remembers between loops:
// which non-failover slots were already logged, what the member status
// reports about them, and the last readiness reason (logged on change).
type native17State struct {
	mu          sync.Mutex
	warned      map[string]bool
	nonFailover []string
	readyReason string
	standbys    string
}

func (a *Agent) native17() *native17State { return &a.pg17 }

// noteNonFailoverSlots logs each logical slot without failover = true once
// (and again after it was fixed and reappears) and keeps the list for the
// member status.
func (a *Agent) noteNonFailoverSlots(slots []string) {
	s := a.native17()
	s.mu.Lock()
	defer s.mu.Unlock()
	now := map[string]bool{}
	for _, n := range slots {
		now[n] = true
		if !s.warned[n] {
			a.log.Warn("logical slot has failover = false: it is not synchronised to standbys and will be lost at a failover; recreate the subscription WITH (failover = true) or ALTER SUBSCRIPTION ... SET (failover = true)",
				zap.String("slot", n))
		}
	}
	s.warned = now
	s.nonFailover = slots
}

// logicalMessage adds the PostgreSQL 17 slot warning to a member status
// message (hooked into publish).
func (a *Agent) logicalMessage(msg string, primary bool) string {
	s := a.native17()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !primary || len(s.nonFailover) == 0 {
		return msg
	}
	w := "logical slots without failover=true (lost at a failover): " + strings.Join(s.nonFailover, ",")
	if msg == "" {
		return w
	}
	return msg + "; " + w
}

// manageStandbySlots runs on a PostgreSQL 17+ leader every loop: it keeps
// synchronized_standby_slots equal to the failover-eligible standbys'
// physical slots (a reload only when it changes).
func (a *Agent) manageStandbySlots(ctx context.Context, g *consulkv.GroupView, st pg.Status, silent map[string]bool) {
	if !pg.NativeFailoverSlots(st.ServerVersion) || st.InRecovery {
		return
	}
	want := standbySlotsFor(g, a.cfg.Name, a.dyn.SyncMode(), st.Replication, silent)
	changed, err := a.pgi().SetStandbySlots(ctx, want)
	if err != nil {
		a.log.Warn("could not set synchronized_standby_slots", zap.Error(err))
		return
	}
	s := a.native17()
	s.mu.Lock()
	prev := s.standbys
	s.standbys = want
	s.mu.Unlock()
	if changed || prev != want {
		a.log.Info("synchronized_standby_slots follows the failover-eligible standbys",
			zap.String("value", want), zap.String("synchronous_mode", a.dyn.SyncMode()),
			zap.String("reason", "logical walsenders wait for these standbys so a promoted one has every change a subscriber applied"))
	}
}

// syncLogicalSlots17 is a PostgreSQL 17+ replica's share: no copies (the
// slot sync worker does it), synchronized_standby_slots cleared, and
// readiness from pg_replication_slots.
func (a *Agent) syncLogicalSlots17(ctx context.Context, g *consulkv.GroupView) bool {
	inst := a.pgi()
	if changed, err := inst.SetStandbySlots(ctx, ""); err != nil {
		a.log.Warn("could not clear synchronized_standby_slots on a replica", zap.Error(err))
	} else if changed {
		a.log.Info("cleared synchronized_standby_slots", zap.String("reason", "a replica has no logical walsenders to hold back"))
	}
	if g == nil || g.Status == nil || len(g.Status.LogicalSlots) == 0 {
		return false
	}
	slots, err := inst.LogicalSlots17(ctx)
	if err != nil {
		a.log.Warn("could not list synced logical slots", zap.Error(err))
		return false
	}
	ready, reason := nativeSlotsReady(g.Status.LogicalSlots, slots)
	a.noteSlotReadiness(ready, reason, len(g.Status.LogicalSlots), "synced failover slots")
	return ready
}

// noteSlotReadiness logs a replica's logical-slot readiness when its reason
// changes (what names the mechanism that keeps the slots).
func (a *Agent) noteSlotReadiness(ready bool, reason string, slots int, what string) {
	s := a.native17()
	s.mu.Lock()
	prev := s.readyReason
	s.readyReason = reason
	s.mu.Unlock()
	if reason == prev {
		return
	}
	if ready {
		a.log.Info(what+" are current", zap.Int("slots", slots))
	} else {
		a.log.Info(what+" not ready", zap.String("reason", reason))
	}
}
