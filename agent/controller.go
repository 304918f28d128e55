package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/pg"
	"go.uber.org/zap"
)

// The methods below implement health.Controller for the REST API.

func (a *Agent) Group(ctx context.Context) (*consulkv.GroupView, error) {
	return a.kv.ReadGroup(ctx, a.cfg.Group)
}

func (a *Agent) Cluster(ctx context.Context) (*consulkv.ClusterView, error) {
	return a.kv.ReadCluster(ctx)
}

func (a *Agent) Config(ctx context.Context) (*consulkv.ClusterConfig, uint64, error) {
	return a.kv.ReadConfig(ctx)
}

// CASConfig refuses a config that is unsafe for any member (this one with
// its local settings, the others as their member keys publish them) with a
// *consulkv.UnsafeConfigError naming the rule.
func (a *Agent) CASConfig(ctx context.Context, cfg *consulkv.ClusterConfig, index uint64) (bool, error) {
	members := []consulkv.MemberSettings{a.cfg.Settings()}
	cv, err := a.kv.ReadCluster(ctx)
	if err != nil {
		return false, err
	}
	members = append(members, cv.MemberSettings()...)
	if err := cfg.ValidateFor(members); err != nil {
		return false, err
	}
	ok, err := a.kv.CAS(ctx, a.kv.ConfigKey(), cfg, index)
	if ok {
		a.Wake()
	}
	return ok, err
}

// RequestFailover stores the request unless one is pending already.
func (a *Agent) RequestFailover(ctx context.Context, req *consulkv.FailoverRequest) error {
	g, err := a.kv.ReadGroup(ctx, a.cfg.Group)
	if err != nil {
		return err
	}
	if g.Failover != nil {
		return fmt.Errorf("a %s is already pending (candidate %q)", g.Failover.Kind, g.Failover.Candidate)
	}
	// FailoverIndex is non-zero when an unreadable value sits in the key:
	// replace it rather than be blocked by garbage.
	ok, err := a.kv.CAS(ctx, a.kv.FailoverKey(a.cfg.Group), req, g.FailoverIndex)
	if err != nil {
		return err
	}
	if !ok {
		return errors.New("another request was stored at the same time")
	}
	a.log.Info("failover request stored", zap.String("kind", req.Kind), zap.String("candidate", req.Candidate), zap.Timep("scheduled_at", req.ScheduledAt))
	a.Wake()
	return nil
}

func (a *Agent) CancelFailover(ctx context.Context) error {
	g, err := a.kv.ReadGroup(ctx, a.cfg.Group)
	if err != nil {
		return err
	}
	if g.FailoverIndex == 0 {
		return errors.New("no pending switchover")
	}
	ok, err := a.kv.DeleteCAS(ctx, a.kv.FailoverKey(a.cfg.Group), g.FailoverIndex)
	if err != nil {
		return err
	}
	if !ok {
		return errors.New("the request changed meanwhile")
	}
	return nil
}

func (a *Agent) Restart(ctx context.Context) error { return a.manualRequest(ctx, "restart", false) }
func (a *Agent) Reload(ctx context.Context) error  { return a.manualRequest(ctx, "reload", false) }
func (a *Agent) Reinitialize(ctx context.Context, force bool) error {
	return a.manualRequest(ctx, "reinit", force)
}

// manualRequest hands an operator action to the loop goroutine, so it never
// races with an HA action, and waits for its result.
func (a *Agent) manualRequest(ctx context.Context, kind string, force bool) error {
	req := manualRequest{kind: kind, force: force, done: make(chan error, 1)}
	select {
	case a.manual <- req:
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(2 * time.Minute):
		return errors.New("the HA loop is busy; try again")
	}
	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (a *Agent) runManual(ctx context.Context, req manualRequest) error {
	inst := a.pgi()
	a.log.Info("operator request", zap.String("request", req.kind))
	switch req.kind {
	case "restart":
		if running, _ := inst.IsRunning(); !running {
			return errors.New("PostgreSQL is not running")
		}
		if err := inst.Stop(ctx, pg.StopFast); err != nil {
			return err
		}
		err := inst.Start(ctx)
		a.reportStart(err, true) // on_restart (callbacks.go)
		return err
	case "reload":
		if _, _, err := inst.WriteConfig(a.currentRole(), a.currentFollow()); err != nil {
			return err
		}
		if err := inst.Reload(ctx); err != nil {
			return err
		}
		a.cb.reloaded(a.diskRole())
		return nil
	case "reinit":
		if a.State().IsLeader {
			return errors.New("I am the leader, can not reinitialize")
		}
		g, err := a.kv.ReadGroup(ctx, a.cfg.Group)
		if err != nil {
			return err
		}
		if g.Leader == nil || g.Leader.Member == "" || g.Members[g.Leader.Member] == nil {
			return errors.New("no leader to clone from")
		}
		if err := inst.Stop(ctx, pg.StopFast); err != nil && !req.force {
			return err
		}
		if err := inst.RemoveDataDir(); err != nil {
			return err
		}
		return a.clone(ctx, g, g.Leader.Member)
	}
	return fmt.Errorf("unknown request %q", req.kind)
}

func (a *Agent) currentRole() pg.Role {
	if a.State().Writable {
		return pg.Primary
	}
	return pg.Replica
}

func (a *Agent) currentFollow() *pg.FollowTarget {
	if a.following == "" || a.lastGroup == nil || a.lastGroup.Members[a.following] == nil {
		return nil
	}
	return a.followTarget(a.lastGroup.Members[a.following])
}
