package main

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/health"
	"github.com/urfave/cli/v2"
)

func pauseCommand(pause bool) *cli.Command {
	name, usage := "pause", "maintenance mode: agents stop automatic failover, start and stop (manual actions still work)"
	if !pause {
		name, usage = "resume", "end maintenance mode (without --group: for the whole cluster and every group)"
	}
	return &cli.Command{
		Name:  name,
		Usage: usage,
		Flags: append([]cli.Flag{
			groupFlag("only this group (default: the whole cluster)"),
			&cli.BoolFlag{Name: "wait", Usage: "wait until every affected member reports the change on its REST API"},
			timeoutFlag(30*time.Second, "how long --wait waits"),
		}, connFlags()...),
		Action: func(c *cli.Context) error { return runPause(c, pause) },
	}
}

// pauseChange applies pause/resume to a config. It returns whether the
// config changed and what to tell the operator; it is pure for testing.
func pauseChange(cfg *consulkv.ClusterConfig, pause bool, group string) (bool, string, error) {
	has := contains(cfg.PausedGroups, group)
	switch {
	case pause && group == "":
		if cfg.Paused {
			return false, "Cluster is already paused.", nil
		}
		cfg.Paused = true
		return true, "Cluster paused.", nil
	case pause:
		if cfg.Paused {
			return false, "The whole cluster is already paused.", nil
		}
		if has {
			return false, fmt.Sprintf("Group %s is already paused.", group), nil
		}
		cfg.PausedGroups = append(append([]string(nil), cfg.PausedGroups...), group)
		sort.Strings(cfg.PausedGroups)
		return true, fmt.Sprintf("Group %s paused.", group), nil
	case group == "":
		if !cfg.Paused && len(cfg.PausedGroups) == 0 {
			return false, "Cluster is not paused.", nil
		}
		msg := "Cluster resumed."
		if len(cfg.PausedGroups) > 0 {
			msg = fmt.Sprintf("Cluster resumed (groups %s too).", strings.Join(cfg.PausedGroups, ", "))
		}
		cfg.Paused, cfg.PausedGroups = false, nil
		return true, msg, nil
	default:
		if cfg.Paused {
			return false, "", errors.New("the whole cluster is paused; resume it with `pgmesh resume` (without --group)")
		}
		if !has {
			return false, fmt.Sprintf("Group %s is not paused.", group), nil
		}
		var rest []string
		for _, g := range cfg.PausedGroups {
			if g != group {
				rest = append(rest, g)
			}
		}
		cfg.PausedGroups = rest
		return true, fmt.Sprintf("Group %s resumed.", group), nil
	}
}

// updateConfig is a read-modify-CAS loop: a concurrent writer (another
// operator, an agent seeding the key) makes it re-read and re-apply the
// change instead of overwriting theirs.
func (s *opConn) updateConfig(ctx context.Context, change func(*consulkv.ClusterConfig) (bool, string, error)) (string, error) {
	for attempt := 0; attempt < 5; attempt++ {
		cur, idx, err := s.kv.ReadConfig(ctx)
		var de *consulkv.DecodeError
		switch {
		case errors.As(err, &de):
			return "", failErr("the config key is unreadable (%s); repair it with `pgmesh config edit`", trimPkg(err.Error()))
		case err != nil:
			return "", s.consulErr(err)
		case cur == nil:
			return "", failErr("cluster %q has no dynamic config in Consul at %s yet (has any agent started?)", s.cluster, s.addr)
		}
		next := *cur
		changed, msg, err := change(&next)
		if err != nil {
			return "", failErr("%v", err)
		}
		if !changed {
			return msg, nil
		}
		if err := next.Validate(); err != nil {
			return "", failErr("refusing to write an invalid config: %v", err)
		}
		ok, err := s.kv.CAS(ctx, s.kv.ConfigKey(), &next, idx)
		if err != nil {
			return "", s.consulErr(err)
		}
		if ok {
			return msg, nil
		}
	}
	return "", failErr("the config key kept changing under us; try again")
}

func runPause(c *cli.Context, pause bool) error {
	group := c.String("group")
	if group != "" {
		if err := consulkv.ValidName("group", group); err != nil {
			return usageErr("--group: %v", err)
		}
	}
	s, err := newOpConn(c)
	if err != nil {
		return err
	}
	v, err := s.readCluster(c.Context)
	if err != nil {
		return err
	}
	if group != "" && v.Groups[group] == nil {
		return failErr("group %q not found in cluster %q (groups: %s)", group, s.cluster, strings.Join(v.GroupNames(), ", "))
	}
	msg, err := s.updateConfig(c.Context, func(cfg *consulkv.ClusterConfig) (bool, string, error) {
		return pauseChange(cfg, pause, group)
	})
	if err != nil {
		return err
	}
	fmt.Fprintln(s.out, msg)
	if !c.Bool("wait") {
		return nil
	}
	groups := v.GroupNames()
	if group != "" {
		groups = []string{group}
	}
	return s.waitPause(c.Context, groups, pause, c.Duration("timeout"))
}

// waitPause polls every affected member's /patroni until it reports the
// wanted pause state: that is when its HA loop has read the new config
// and behaves accordingly, which the Consul write alone does not prove.
func (s *opConn) waitPause(ctx context.Context, groups []string, want bool, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var pending []string
		total := 0
		for _, gn := range groups {
			g, err := s.kv.ReadGroup(ctx, gn)
			if err != nil {
				pending = append(pending, "Consul: "+rootCause(err))
				continue
			}
			for _, n := range g.MemberNames() {
				total++
				var st health.Status
				rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				err := s.api.getJSON(rctx, g.Members[n].APIURL, "/patroni", &st)
				cancel()
				switch {
				case err != nil:
					pending = append(pending, fmt.Sprintf("%s: %s", n, shortHTTPErr(err)))
				case st.Pause != want:
					pending = append(pending, fmt.Sprintf("%s: pause is still %v", n, st.Pause))
				}
			}
		}
		if len(pending) == 0 {
			state := "paused"
			if !want {
				state = "running normally (not paused)"
			}
			fmt.Fprintf(s.out, "All %d members of %s report %s.\n", total, strings.Join(groups, ", "), state)
			return nil
		}
		if time.Now().After(deadline) {
			return failErr("not every member confirmed within %s:\n  %s", timeout, strings.Join(pending, "\n  "))
		}
		select {
		case <-ctx.Done():
			return failErr("interrupted")
		case <-time.After(500 * time.Millisecond):
		}
	}
}
