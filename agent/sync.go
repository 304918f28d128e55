package agent

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/pg"
	"go.uber.org/zap"
)

// Synchronous replication (DESIGN.md §4 rule 9). The sync key lists the
// standbys that are guaranteed to have every acknowledged commit, so only
// they may be promoted. The invariant is kept by ordering: a standby is
// added to synchronous_standby_names first and to the key only once
// PostgreSQL reports it synchronous; it is removed from the key first and
// from synchronous_standby_names after.

// syncStandbyNames renders synchronous_standby_names for picks; with no
// picks strict mode uses '*' (writes wait for any standby) and on mode
// runs asynchronously.
func syncStandbyNames(picks []string, mode string) string {
	if len(picks) == 0 {
		if mode == consulkv.SyncStrict {
			return "*"
		}
		return ""
	}
	quoted := make([]string, len(picks))
	for i, p := range picks {
		quoted[i] = `"` + strings.ReplaceAll(p, `"`, `""`) + `"`
	}
	return fmt.Sprintf("FIRST %d (%s)", len(picks), strings.Join(quoted, ", "))
}

// replyTracker notices standbys that stopped replying. PostgreSQL keeps a
// silent walsender - and its sync_state - until wal_sender_timeout (60s by
// default), and synchronous commits wait for it all that time: a partition
// between the primary and its synchronous standby stopped writes for a
// minute although another standby, or asynchronous running, was available.
// A standby replies every wal_receiver_status_interval even when idle, with
// a new reply_time each time; the tracker times the value's changes with
// the local clock, so clock skew between hosts does not matter.
type replyTracker struct {
	seen map[string]replySeen
}

type replySeen struct {
	reply   time.Time // the standby's reply_time as last read
	changed time.Time // local time it was last seen to change
}

// silent returns the standbys whose reply_time has not changed for longer
// than after, and forgets standbys that are gone.
func (r *replyTracker) silent(repl []pg.ReplicationConn, now time.Time, after time.Duration) map[string]bool {
	if r.seen == nil {
		r.seen = map[string]replySeen{}
	}
	out := map[string]bool{}
	present := map[string]bool{}
	for _, rc := range repl {
		name := rc.ApplicationName
		present[name] = true
		s, ok := r.seen[name]
		if !ok || !rc.ReplyTime.Equal(s.reply) {
			r.seen[name] = replySeen{reply: rc.ReplyTime, changed: now}
			continue
		}
		if now.Sub(s.changed) > after {
			out[name] = true
		}
	}
	for name := range r.seen {
		if !present[name] {
			delete(r.seen, name)
		}
	}
	return out
}

// silentAfter is how long a standby may stay silent before it no longer
// counts as streaming for synchronous replication: three status intervals,
// at least 5s.
func silentAfter(params map[string]string) time.Duration {
	d := 3 * pgSeconds(params["wal_receiver_status_interval"], 10*time.Second)
	return max(d, 5*time.Second)
}

// pgSeconds parses a PostgreSQL time setting whose default unit is seconds
// ("1", "1s", "500ms", "2min"); def when empty or unreadable.
func pgSeconds(v string, def time.Duration) time.Duration {
	v = strings.TrimSpace(strings.Trim(strings.TrimSpace(v), "'"))
	if v == "" {
		return def
	}
	units := []struct {
		suffix string
		unit   time.Duration
	}{{"ms", time.Millisecond}, {"min", time.Minute}, {"s", time.Second}, {"h", time.Hour}, {"d", 24 * time.Hour}}
	unit := time.Second
	for _, u := range units {
		if strings.HasSuffix(v, u.suffix) {
			v, unit = strings.TrimSpace(strings.TrimSuffix(v, u.suffix)), u.unit
			break
		}
	}
	n, err := strconv.ParseFloat(v, 64)
	if err != nil || n < 0 {
		return def
	}
	return time.Duration(n * float64(unit))
}

// pickSyncStandbys chooses up to n streaming standbys that are not silent:
// ones already synchronous first (no churn), then the most advanced, then
// by name.
func pickSyncStandbys(repl []pg.ReplicationConn, g *consulkv.GroupView, self string, n int, silent map[string]bool) []string {
	type cand struct {
		name  string
		sync  bool
		flush pg.LSN
	}
	var cands []cand
	seen := map[string]bool{}
	for _, rc := range repl {
		m := g.Members[rc.ApplicationName]
		if rc.State != "streaming" || m == nil || m.Name == self || m.Tags.NoSync || seen[m.Name] || silent[rc.ApplicationName] {
			continue
		}
		seen[m.Name] = true
		cands = append(cands, cand{name: m.Name, sync: rc.SyncState == "sync" || rc.SyncState == "quorum", flush: rc.FlushLSN})
	}
	sort.Slice(cands, func(i, j int) bool {
		a, b := cands[i], cands[j]
		if a.sync != b.sync {
			return a.sync
		}
		if a.flush != b.flush {
			return a.flush > b.flush
		}
		return a.name < b.name
	})
	var out []string
	for i := 0; i < len(cands) && i < n; i++ {
		out = append(out, cands[i].name)
	}
	sort.Strings(out)
	return out
}

// keepRestarting keeps a listed synchronous standby that announced a
// planned restart (member key state "restarting", e.g. to load logical slot
// copies) among the picks while it is away, ahead of the other candidates:
// dropping it would leave the sync key - and so the group - without a
// standby that may be promoted until it is back and confirmed again, and a
// primary lost in that window could not fail over. Commits wait for it
// meanwhile (about a second). An unplanned disconnect still drops it at
// once; a standby that dies while restarting keeps its key only until its
// session expires.
func keepRestarting(picks, published []string, g *consulkv.GroupView, n int) []string {
	var kept []string
	for _, name := range published {
		if m := g.Members[name]; m != nil && m.State == StateRestarting && !containsStr(picks, name) {
			kept = append(kept, name)
		}
	}
	if len(kept) == 0 {
		return picks
	}
	out := append([]string(nil), kept...)
	for _, p := range picks {
		if len(out) >= n {
			break
		}
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// StateRestarting is the member-key state of a replica that restarts its
// PostgreSQL on purpose and will be back within seconds.
const StateRestarting = "restarting"

func intersect(a, b []string) []string {
	var out []string
	for _, x := range a {
		if containsStr(b, x) {
			out = append(out, x)
		}
	}
	return out
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !containsStr(b, x) {
			return false
		}
	}
	return true
}

// manageSync runs on the leader every loop.
func (a *Agent) manageSync(ctx context.Context, g *consulkv.GroupView, st pg.Status, silent map[string]bool) error {
	mode := a.dyn.SyncMode()
	if mode == consulkv.SyncOff {
		if a.syncNames != "" {
			a.setSyncNames(ctx, "")
		}
		if g != nil && g.Sync != nil {
			if err := a.kv.LeaderDelete(ctx, a.cfg.Group, a.lock.Session(), a.kv.SyncKey(a.cfg.Group), 0); err != nil {
				return err
			}
			a.log.Info("synchronous mode off: removed the sync key")
		}
		return nil
	}
	if g == nil {
		return nil
	}
	after := silentAfter(a.parameters())
	for name := range silent {
		if (g.Sync != nil && containsStr(g.Sync.SyncStandbys, name)) || strings.Contains(a.syncNames, `"`+name+`"`) {
			a.log.Warn("synchronous standby has not replied; no longer waiting for it", zap.String("standby", name),
				zap.Duration("silent_for_more_than", after))
		}
	}
	picks := pickSyncStandbys(st.Replication, g, a.cfg.Name, a.dyn.SyncCount(), silent)
	var published []string
	keyOurs := g.Sync != nil && g.Sync.Leader == a.cfg.Name
	if keyOurs {
		published = g.Sync.SyncStandbys
		picks = keepRestarting(picks, published, g, a.dyn.SyncCount())
	}
	// 1. Drop from the key whoever is no longer picked.
	keep := intersect(published, picks)
	if !keyOurs || !sameSet(keep, published) {
		if err := a.putSync(ctx, keep); err != nil {
			return err
		}
	}
	// 2. Make PostgreSQL wait for exactly the picks.
	want := syncStandbyNames(picks, mode)
	if want != a.syncNames {
		a.setSyncNames(ctx, want)
		return nil // step 3 waits until PostgreSQL reports them synchronous
	}
	// 3. Publish the picks PostgreSQL already treats as synchronous.
	confirmed := append([]string(nil), keep...)
	for _, rc := range st.Replication {
		if (rc.SyncState == "sync" || rc.SyncState == "quorum") && containsStr(picks, rc.ApplicationName) && !containsStr(confirmed, rc.ApplicationName) {
			confirmed = append(confirmed, rc.ApplicationName)
		}
	}
	sort.Strings(confirmed)
	if !sameSet(confirmed, keep) {
		if err := a.putSync(ctx, confirmed); err != nil {
			return err
		}
		a.log.Info("synchronous standbys confirmed", zap.Strings("sync_standbys", confirmed))
	}
	return nil
}

func (a *Agent) putSync(ctx context.Context, standbys []string) error {
	if standbys == nil {
		standbys = []string{}
	}
	return a.kv.LeaderPut(ctx, a.cfg.Group, a.lock.Session(), a.kv.SyncKey(a.cfg.Group),
		&consulkv.SyncState{Version: consulkv.ValueVersion, Leader: a.cfg.Name, SyncStandbys: standbys})
}

// setSyncNames changes synchronous_standby_names and reloads.
func (a *Agent) setSyncNames(ctx context.Context, names string) {
	a.log.Info("setting synchronous_standby_names", zap.String("value", names), zap.String("synchronous_mode", a.dyn.SyncMode()))
	a.syncNames = names
	if err := a.rebuildPG(); err != nil {
		a.log.Error("synchronous_standby_names rejected", zap.Error(err))
		return
	}
	inst := a.pgi()
	role := pg.Replica
	if a.State().Writable || a.iAmLeaderNow != nil && *a.iAmLeaderNow {
		role = pg.Primary
	}
	changed, _, err := inst.WriteConfig(role, a.currentFollow())
	if err != nil {
		a.log.Error("writing synchronous_standby_names failed", zap.Error(err))
		return
	}
	if running, _ := inst.IsRunning(); changed && running {
		if err := inst.Reload(ctx); err != nil {
			a.log.Warn("reload for synchronous_standby_names failed", zap.Error(err))
		}
	}
}
