package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/urfave/cli/v2"
)

func switchoverCommand() *cli.Command {
	return &cli.Command{
		Name:  "switchover",
		Usage: "hand a group's leadership to a replica, gracefully (the leader checkpoints and demotes first)",
		Description: "Asks the leader's agent over its REST API. If that agent cannot be reached, the request\n" +
			"is written into the group's failover key in Consul, where the agents pick it up.",
		Flags: append([]cli.Flag{
			groupFlag("the group to switch over (required)"),
			&cli.StringFlag{Name: "to", Aliases: []string{"candidate"}, Usage: "the `MEMBER` to promote (default: the healthiest replica)"},
			&cli.StringFlag{Name: "at", Usage: "schedule the switchover at this `RFC3339` time instead of now"},
			&cli.BoolFlag{Name: "cancel", Usage: "cancel the group's pending (scheduled) switchover or failover instead"},
			forceFlag("do not ask for confirmation"),
			timeoutFlag(60*time.Second, "how long to wait for the new leader"),
		}, connFlags()...),
		Action: func(c *cli.Context) error { return runManualFailover(c, consulkv.KindSwitchover) },
	}
}

func failoverCommand() *cli.Command {
	return &cli.Command{
		Name:  "failover",
		Usage: "promote a named replica, also when the group has no healthy leader",
		Description: "Asks the candidate's agent (then the leader's) over the REST API; if neither can be\n" +
			"reached, the request is written into the group's failover key in Consul.",
		Flags: append([]cli.Flag{
			groupFlag("the group to fail over (required)"),
			&cli.StringFlag{Name: "to", Aliases: []string{"candidate"}, Usage: "the `MEMBER` to promote (required)"},
			forceFlag("do not ask for confirmation"),
			timeoutFlag(60*time.Second, "how long to wait for the new leader"),
		}, connFlags()...),
		Action: func(c *cli.Context) error { return runManualFailover(c, consulkv.KindFailover) },
	}
}

// manualRequest is what runManualFailover gathered before acting.
type manualRequest struct {
	kind      string
	group     string
	leader    string // current leader ("" when there is none)
	candidate string
	at        *time.Time
	oldTL     uint32
}

func (r manualRequest) title() string {
	if r.kind == consulkv.KindFailover {
		return "Failover"
	}
	return "Switchover"
}

func (r manualRequest) body() map[string]string {
	b := map[string]string{}
	if r.leader != "" && r.kind == consulkv.KindSwitchover {
		b["leader"] = r.leader
	}
	if r.candidate != "" {
		b["candidate"] = r.candidate
	}
	if r.at != nil {
		b["scheduled_at"] = r.at.Format(time.RFC3339)
	}
	return b
}

func runManualFailover(c *cli.Context, kind string) error {
	group, err := requireGroup(c)
	if err != nil {
		return err
	}
	if c.Bool("cancel") {
		return runCancel(c, group)
	}
	r := manualRequest{kind: kind, group: group, candidate: c.String("to")}
	if kind == consulkv.KindFailover && r.candidate == "" {
		return usageErr("failover: --to MEMBER is required (use switchover to let pgmesh pick)")
	}
	if kind == consulkv.KindSwitchover && c.String("at") != "" {
		t, err := time.Parse(time.RFC3339, c.String("at"))
		if err != nil {
			return usageErr("switchover: --at %q: want an RFC3339 time with a zone, e.g. 2030-01-02T03:04:05Z", c.String("at"))
		}
		if !t.After(time.Now()) {
			return usageErr("switchover: --at %s is in the past", c.String("at"))
		}
		r.at = &t
	}
	if c.Duration("timeout") <= 0 {
		return usageErr("%s: --timeout must be positive", kind)
	}
	s, err := newOpConn(c)
	if err != nil {
		return err
	}
	g, err := s.readGroup(c.Context, group)
	if err != nil {
		return err
	}
	r.leader = leaderName(g)
	if kind == consulkv.KindSwitchover && r.leader == "" {
		return failErr("group %s has no leader to switch over from; use: pgmesh failover --group %s --to MEMBER", group, group)
	}
	if r.candidate != "" {
		if g.Members[r.candidate] == nil {
			return failErr("%s is not a member of group %s (members: %s)", r.candidate, group, strings.Join(g.MemberNames(), ", "))
		}
		if r.candidate == r.leader {
			return failErr("%s already is the leader of group %s", r.candidate, group)
		}
	}
	if g.Failover != nil || g.FailoverIndex != 0 {
		return failErr("another switchover or failover is already pending in group %s (see pgmesh status)", group)
	}
	r.oldTL = groupTimeline(g)

	to := r.candidate
	if to == "" {
		to = "the healthiest replica"
	}
	var q string
	if kind == consulkv.KindSwitchover {
		q = fmt.Sprintf("Switch over group %s from %s to %s", group, r.leader, to)
		if r.at != nil {
			q += " at " + r.at.Format(time.RFC3339)
		}
		q += "?"
	} else {
		cur := "the group has no leader"
		if r.leader != "" {
			cur = "current leader " + r.leader + " will be demoted"
		}
		q = fmt.Sprintf("Fail over group %s to %s (%s)?", group, to, cur)
	}
	if err := confirm(c, q); err != nil {
		return err
	}

	timeout := c.Duration("timeout")
	deadline := time.Now().Add(timeout)
	ans, via, err := r.post(c.Context, s, g, timeout)
	switch {
	case ans.Code == http.StatusUnauthorized:
		return failErr("%v", err)
	case isTLSError(err):
		return failErr("%s: %v; nothing was changed", via, err)
	case err != nil && notDelivered(err):
		fmt.Fprintf(c.App.ErrWriter, "No agent's REST API answered (%s); writing the request into Consul instead.\n", shortHTTPErr(err))
		return r.viaConsul(c.Context, s, deadline)
	case err != nil:
		// The request may have reached the agent; Consul tells what happened.
		fmt.Fprintf(c.App.ErrWriter, "%s: %s; checking Consul for the outcome.\n", via, shortHTTPErr(err))
		return r.report(c.Context, s, deadline, false)
	case ans.Code == http.StatusAccepted && r.at != nil:
		fmt.Fprintf(s.out, "%s of group %s scheduled at %s.\n", r.title(), group, r.at.Local().Format(time.RFC3339))
		return nil
	case !ans.ok():
		return failErr("%s refused by %s: %s (HTTP %d)", r.title(), via, ans.Body, ans.Code)
	}
	return r.report(c.Context, s, deadline, false)
}

// post sends the request to the agents that can act on it, in order: the
// leader for a switchover; the candidate, then the leader, for a failover
// (the leader may be the very thing that is broken).
func (r manualRequest) post(ctx context.Context, s *opConn, g *consulkv.GroupView, timeout time.Duration) (apiAnswer, string, error) {
	var targets []string
	if r.kind == consulkv.KindFailover {
		targets = append(targets, r.candidate)
	}
	if r.leader != "" {
		targets = append(targets, r.leader)
	}
	path := "/" + r.kind
	var lastErr error
	var via string
	for _, t := range targets {
		m := g.Members[t]
		base := ""
		if m != nil {
			base = m.APIURL
		}
		via = t + " (" + base + ")"
		rctx, cancel := context.WithTimeout(ctx, timeout)
		ans, err := s.api.do(rctx, http.MethodPost, base, path, r.body())
		cancel()
		if err == nil {
			return ans, via, nil
		}
		lastErr = err
		if !notDelivered(err) {
			return ans, via, err
		}
	}
	if lastErr == nil {
		lastErr = errors.New("no agent to ask")
	}
	return apiAnswer{}, via, lastErr
}

// viaConsul writes the request the way the REST API would have (CAS on a
// missing key, so it never replaces someone else's pending request).
func (r manualRequest) viaConsul(ctx context.Context, s *opConn, deadline time.Time) error {
	fr := &consulkv.FailoverRequest{
		Version: consulkv.ValueVersion, Kind: r.kind, Leader: r.leader, Candidate: r.candidate,
		ScheduledAt: r.at, RequestedAt: time.Now().UTC(),
	}
	if r.kind == consulkv.KindFailover {
		// A failover names no leader: the one we saw may be gone by now.
		fr.Leader = ""
	}
	ok, err := s.kv.CAS(ctx, s.kv.FailoverKey(r.group), fr, 0)
	if err != nil {
		return s.consulErr(err)
	}
	if !ok {
		return failErr("another switchover or failover is already pending in group %s (see pgmesh status)", r.group)
	}
	if r.at != nil {
		fmt.Fprintf(s.out, "%s of group %s scheduled at %s.\n", r.title(), r.group, r.at.Local().Format(time.RFC3339))
		return nil
	}
	return r.report(ctx, s, deadline, true)
}

// report waits for the leader key to move and says where it went. When we
// wrote the request ourselves, a request that vanished while the leader
// stayed means an agent refused it; one still pending at the deadline is
// withdrawn so it cannot fire long after the operator gave up.
func (r manualRequest) report(ctx context.Context, s *opConn, deadline time.Time, ours bool) error {
	gone := 0
	var last *consulkv.GroupView
	for {
		g, err := s.kv.ReadGroup(ctx, r.group)
		if err == nil {
			last = g
			now := leaderName(g)
			if now != "" && now != r.leader {
				return r.announce(ctx, s, now)
			}
			if ours && g.FailoverIndex == 0 && now == r.leader {
				if gone++; gone >= 3 {
					return failErr("%s failed: the agents dropped the request and %s is still the leader (see the agents' logs)", r.title(), orNone(now))
				}
			} else {
				gone = 0
			}
		}
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("%s failed: no new leader in group %s within the timeout", r.title(), r.group)
			if ours && last != nil && last.Failover != nil && last.FailoverIndex != 0 {
				if ok, _ := s.kv.DeleteCAS(ctx, s.kv.FailoverKey(r.group), last.FailoverIndex); ok {
					msg += "; the request was withdrawn"
				}
			}
			if err != nil {
				msg += "; last Consul error: " + rootCause(err)
			}
			return failErr("%s", msg)
		}
		select {
		case <-ctx.Done():
			return failErr("interrupted; the %s may still happen (see pgmesh status)", r.kind)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// announce waits (briefly) for the new leader to publish its new timeline,
// so the line an operator pastes into the incident log has it.
func (r manualRequest) announce(ctx context.Context, s *opConn, leader string) error {
	past := "Switched"
	if r.kind == consulkv.KindFailover {
		past = "Failed"
	}
	var tl uint32
	// Bounded on its own: the switchover is done, and an agent that never
	// publishes its timeline must not hold the answer for the whole timeout.
	until := time.Now().Add(15 * time.Second)
	for time.Now().Before(until) {
		g, err := s.kv.ReadGroup(ctx, r.group)
		if err == nil {
			if m := g.Members[leader]; m != nil && m.Role == consulkv.RolePrimary && m.Timeline > r.oldTL {
				tl = m.Timeline
				break
			}
		}
		select {
		case <-ctx.Done():
			until = time.Time{}
		case <-time.After(250 * time.Millisecond):
		}
	}
	tls := "timeline not yet published"
	if tl != 0 {
		tls = fmt.Sprintf("timeline %d", tl)
	}
	if r.candidate != "" && leader != r.candidate {
		return failErr("%s over to %s instead of %s (%s)", past, leader, r.candidate, tls)
	}
	fmt.Fprintf(s.out, "%s over to %s (%s)\n", past, leader, tls)
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "nobody"
	}
	return s
}

// groupTimeline is the highest timeline any member or the leader's status
// reports, the reference a promotion must exceed.
func groupTimeline(g *consulkv.GroupView) uint32 {
	var tl uint32
	if g.Status != nil {
		tl = g.Status.Timeline
	}
	for _, m := range g.Members {
		if m.Timeline > tl {
			tl = m.Timeline
		}
	}
	return tl
}

// runCancel removes a pending request: through the leader's REST API when
// it answers (so its agent logs who cancelled), else with a CAS delete of
// exactly the request that was shown.
func runCancel(c *cli.Context, group string) error {
	if c.String("to") != "" || c.String("at") != "" {
		return usageErr("switchover --cancel takes no --to or --at")
	}
	s, err := newOpConn(c)
	if err != nil {
		return err
	}
	g, err := s.readGroup(c.Context, group)
	if err != nil {
		return err
	}
	if g.FailoverIndex == 0 {
		return failErr("no switchover or failover is pending in group %s", group)
	}
	what := "the unreadable pending request"
	if f := g.Failover; f != nil {
		what = fmt.Sprintf("the pending %s (%s -> %s)", f.Kind, orNone(f.Leader), orAny(f.Candidate))
		if f.ScheduledAt != nil {
			what = fmt.Sprintf("the %s scheduled at %s (%s -> %s)", f.Kind, f.ScheduledAt.Local().Format(time.RFC3339), orNone(f.Leader), orAny(f.Candidate))
		}
	}
	if l := g.Members[leaderName(g)]; l != nil {
		ctx, cancel := context.WithTimeout(c.Context, 10*time.Second)
		ans, err := s.api.do(ctx, http.MethodDelete, l.APIURL, "/switchover", nil)
		cancel()
		if err == nil && ans.ok() {
			fmt.Fprintf(s.out, "Cancelled %s in group %s.\n", what, group)
			return nil
		}
		if err == nil && ans.Code != http.StatusServiceUnavailable {
			return failErr("%s refused to cancel: %s (HTTP %d)", l.Name, ans.Body, ans.Code)
		}
	}
	ok, err := s.kv.DeleteCAS(c.Context, s.kv.FailoverKey(group), g.FailoverIndex)
	if err != nil {
		return s.consulErr(err)
	}
	if !ok {
		return failErr("the request changed while cancelling it (it may have just run); see pgmesh status")
	}
	fmt.Fprintf(s.out, "Cancelled %s in group %s.\n", what, group)
	return nil
}

func orAny(s string) string {
	if s == "" {
		return "any healthy replica"
	}
	return s
}
