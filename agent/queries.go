package agent

import (
	"context"
	"slices"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"go.uber.org/zap"
)

// queriesSetting is what the loop last adopted for the prepared queries.
type queriesSetting struct {
	on          bool
	datacenters []string
}

// keepQueries keeps the cluster's prepared queries (consulkv.ClusterQueries)
// in this agent's datacenter: soon after start, then every minute and
// whenever the setting changes. Every agent does it (a datacenter may hold
// any subset of the mesh's groups); the writes converge because only a
// query that differs is written. A refusal (the token lacks query write on
// <cluster>-) is logged once per distinct error and retried, and never
// touches the HA loop.
func (a *Agent) keepQueries(ctx context.Context) {
	wait := 3 * time.Second
	var lastErr string
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		case <-a.queriesChanged:
		}
		set := a.queries.Load()
		if set == nil || !set.on {
			wait = time.Minute
			continue
		}
		wrote, err := a.kv.EnsureQueries(ctx, consulkv.ClusterQueries(a.cfg.Cluster, set.datacenters))
		if err != nil {
			if err.Error() != lastErr {
				a.log.Warn("could not keep the prepared queries (needs query write on \""+a.cfg.Cluster+"-\"); retrying",
					zap.String("queries", consulkv.QueryNames(a.cfg.Cluster)), zap.Error(err))
				lastErr = err.Error()
			}
			wait = 30 * time.Second
			continue
		}
		if lastErr != "" {
			a.log.Info("prepared queries kept again")
			lastErr = ""
		}
		if len(wrote) > 0 {
			a.log.Info("wrote prepared queries", zap.Strings("queries", wrote), zap.Strings("failover_datacenters", set.datacenters))
		}
		wait = time.Minute
	}
}

// noteQueriesSetting is called by the loop after it adopted a config: a
// changed setting wakes keepQueries.
func (a *Agent) noteQueriesSetting(c consulkv.ClusterConfig) {
	next := &queriesSetting{on: c.QueriesOn(), datacenters: slices.Clone(c.Datacenters)}
	if cur := a.queries.Load(); cur != nil && cur.on == next.on && slices.Equal(cur.datacenters, next.datacenters) {
		return
	}
	a.queries.Store(next)
	select {
	case a.queriesChanged <- struct{}{}:
	default:
	}
}
