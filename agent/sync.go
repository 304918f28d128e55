package agent

import (
	"context"
	"fmt"
	"sort"
	"strings"

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

// pickSyncStandbys chooses up to n streaming standbys: ones already
// synchronous first (no churn), then the most advanced, then by name.
func pickSyncStandbys(repl []pg.ReplicationConn, g *consulkv.GroupView, self string, n int) []string {
	type cand struct {
		name  string
		sync  bool
		flush pg.LSN
	}
	var cands []cand
	seen := map[string]bool{}
	for _, rc := range repl {
		m := g.Members[rc.ApplicationName]
		if rc.State != "streaming" || m == nil || m.Name == self || m.Tags.NoSync || seen[m.Name] {
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
func (a *Agent) manageSync(ctx context.Context, g *consulkv.GroupView, st pg.Status) error {
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
	picks := pickSyncStandbys(st.Replication, g, a.cfg.Name, a.dyn.SyncCount())
	var published []string
	keyOurs := g.Sync != nil && g.Sync.Leader == a.cfg.Name
	if keyOurs {
		published = g.Sync.SyncStandbys
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
