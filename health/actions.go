package health

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"go.uber.org/zap"
)

// pollInterval is how often a switchover request re-reads the leader key.
const pollInterval = 100 * time.Millisecond

// failoverBody is Patroni's switchover/failover request; "member" is the
// older name of "candidate" that patronictl versions still send.
type failoverBody struct {
	Leader      string `json:"leader"`
	Candidate   string `json:"candidate"`
	Member      string `json:"member"`
	ScheduledAt string `json:"scheduled_at"`
}

func (s *Server) handleSwitchover(w http.ResponseWriter, r *http.Request) {
	s.manualFailover(w, r, consulkv.KindSwitchover)
}

func (s *Server) handleFailover(w http.ResponseWriter, r *http.Request) {
	s.manualFailover(w, r, consulkv.KindFailover)
}

// decodeOptional decodes an optional JSON object body into v; an empty body
// leaves v as it is.
func decodeOptional(body []byte, v any, strict bool) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}

func (s *Server) manualFailover(w http.ResponseWriter, r *http.Request, kind string) {
	action, title := kind, strings.ToUpper(kind[:1])+kind[1:]
	body, code, err := readBody(r)
	if err != nil {
		writeText(w, r, code, err.Error())
		return
	}
	var req failoverBody
	if len(bytes.TrimSpace(body)) == 0 {
		writeText(w, r, http.StatusBadRequest, "invalid request: empty body, expected a JSON object")
		return
	}
	if err := decodeOptional(body, &req, false); err != nil {
		writeText(w, r, http.StatusBadRequest, "invalid request: "+err.Error())
		return
	}
	candidate := req.Candidate
	if candidate == "" {
		candidate = req.Member
	}
	switch {
	case kind == consulkv.KindFailover && candidate == "":
		writeText(w, r, http.StatusBadRequest, "Failover could be performed only to a specific candidate")
		return
	case kind == consulkv.KindSwitchover && req.Leader == "":
		writeText(w, r, http.StatusBadRequest, "Switchover could be performed only from a specific leader")
		return
	}
	st := s.ctl.State()
	var at *time.Time
	if req.ScheduledAt != "" {
		if kind == consulkv.KindFailover {
			writeText(w, r, http.StatusBadRequest, "Failover can't be scheduled")
			return
		}
		if st.Paused {
			writeText(w, r, http.StatusBadRequest, "Can't schedule switchover in the paused state")
			return
		}
		t, code, msg := parseSchedule(req.ScheduledAt, action, s.now())
		if code != 0 {
			writeText(w, r, code, msg)
			return
		}
		at = &t
	}
	if st.Paused && candidate == "" {
		// Nothing races for the lock in pause mode, so "anyone" would
		// leave the group without a leader.
		writeText(w, r, http.StatusBadRequest, "Switchover is possible only to a specific candidate in a paused state")
		return
	}

	ctx, cancel := context.WithTimeout(r.Context(), s.opts.SwitchoverTimeout)
	defer cancel()
	g, err := s.ctl.Group(ctx)
	if err != nil || g == nil {
		writeText(w, r, http.StatusServiceUnavailable, fmt.Sprintf("cannot read the group from Consul: %v", err))
		return
	}
	if msg := failoverImpossible(g, kind, req.Leader, candidate, at != nil); msg != "" {
		writeText(w, r, http.StatusPreconditionFailed, msg)
		return
	}
	if g.Failover != nil || g.FailoverIndex != 0 {
		writeText(w, r, http.StatusConflict, "another switchover or failover is already pending; cancel it with DELETE /switchover first")
		return
	}
	oldLeader := leaderOf(g)
	fr := &consulkv.FailoverRequest{
		Version:     consulkv.ValueVersion,
		Kind:        kind,
		Leader:      req.Leader,
		Candidate:   candidate,
		ScheduledAt: at,
		RequestedAt: s.now().UTC(),
	}
	if err := fr.Validate(); err != nil {
		writeText(w, r, http.StatusBadRequest, "invalid request: "+err.Error())
		return
	}
	if err := s.ctl.RequestFailover(ctx, fr); err != nil {
		writeText(w, r, http.StatusServiceUnavailable, "failed to write the failover key into Consul: "+err.Error())
		return
	}
	if at != nil {
		writeText(w, r, http.StatusAccepted, title+" scheduled")
		return
	}
	s.ctl.Wake()
	s.log.Info("waiting for "+action, zap.String("from", oldLeader), zap.String("to", candidate))

	past := map[string]string{consulkv.KindSwitchover: "switched", consulkv.KindFailover: "failed"}[kind]
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			writeText(w, r, http.StatusServiceUnavailable, title+" failed")
			return
		case <-tick.C:
		}
		g, err := s.ctl.Group(ctx)
		if err != nil || g == nil {
			continue
		}
		now := leaderOf(g)
		if now == "" || now == oldLeader {
			if g.Failover == nil && g.FailoverIndex == 0 {
				// The request is gone and the leader is not: the leader
				// abandoned it (candidate not ready) or it was cancelled.
				// Waiting longer cannot change the answer (Patroni
				// answers the same at once).
				writeText(w, r, http.StatusServiceUnavailable, title+" failed")
				return
			}
			continue
		}
		if candidate == "" || now == candidate {
			writeText(w, r, http.StatusOK, fmt.Sprintf("Successfully %s over to %q", past, now))
			return
		}
		// Another member won the race the candidate was meant to win. The
		// old leader is gone all the same; say so rather than wait for a
		// leader change that will not come (Patroni answers the same).
		writeText(w, r, http.StatusOK, fmt.Sprintf("%s over to %q instead of %q", strings.ToUpper(past[:1])+past[1:], now, candidate))
		return
	}
}

// failoverImpossible returns why the request cannot be honoured ("" if it
// can). Scheduled switchovers skip the health checks: who is healthy then is
// decided then, by the leader.
func failoverImpossible(g *consulkv.GroupView, kind, leader, candidate string, scheduled bool) string {
	cur := leaderOf(g)
	if (leader != "" || kind == consulkv.KindSwitchover) && leader != cur {
		return "leader name does not match"
	}
	sync := syncStandbys(g, cur)
	if candidate != "" {
		m := g.Members[candidate]
		switch {
		case m == nil:
			return fmt.Sprintf("candidate %q does not exist", candidate)
		case candidate == cur:
			return fmt.Sprintf("candidate %q is already the leader", candidate)
		case m.Tags.NoFailover:
			return fmt.Sprintf("candidate %q is not allowed to promote (nofailover)", candidate)
		case scheduled:
			return ""
		case m.State != "running":
			return fmt.Sprintf("candidate %q is not running", candidate)
		case cur != "" && m.Role != consulkv.RoleReplica:
			return fmt.Sprintf("candidate %q is not a replica", candidate)
		case kind == consulkv.KindSwitchover && len(sync) > 0 && !contains(sync, candidate):
			return "candidate name does not match with sync_standby"
		case cur != "" && g.LacksSlotCopies(m):
			return fmt.Sprintf("candidate %q has no current copies of the group's logical slots yet (logical_slots_ready); other groups consuming from this one would lose their place", candidate)
		}
		return ""
	}
	others, unready := 0, 0
	for name, m := range g.Members {
		if name == cur || m == nil {
			continue
		}
		others++
		if scheduled {
			return ""
		}
		if m.State == "running" && m.Role == consulkv.RoleReplica && !m.Tags.NoFailover &&
			(len(sync) == 0 || contains(sync, name)) {
			if cur != "" && g.LacksSlotCopies(m) {
				unready++
				continue
			}
			return ""
		}
	}
	switch {
	case others == 0:
		return kind + " is not possible: cluster does not have members except leader"
	case unready > 0:
		return kind + " is not possible: no candidate has current copies of the group's logical slots yet (logical_slots_ready); wait until one reports them"
	}
	return kind + " is not possible: no good candidates have been found"
}

// scheduleLayouts are the ISO 8601 shapes patronictl and people write.
var scheduleLayouts = func() (withZone, without []string) {
	for _, d := range []string{"2006-01-02T", "2006-01-02 "} {
		for _, t := range []string{"15:04:05", "15:04"} {
			without = append(without, d+t)
			for _, z := range []string{"Z07:00", "Z0700", "Z07"} {
				withZone = append(withZone, d+t+z)
			}
		}
	}
	return
}

// parseSchedule returns the time, or a status and Patroni's message.
func parseSchedule(s, action string, now time.Time) (time.Time, int, string) {
	s = strings.TrimSpace(s)
	withZone, without := scheduleLayouts()
	for _, l := range withZone {
		if t, err := time.Parse(l, s); err == nil {
			if t.Before(now) {
				return time.Time{}, http.StatusUnprocessableEntity, "Cannot schedule " + action + " in the past"
			}
			return t.UTC(), 0, ""
		}
	}
	for _, l := range without {
		if _, err := time.Parse(l, s); err == nil {
			return time.Time{}, http.StatusBadRequest, "Timezone information is mandatory for the scheduled " + action
		}
	}
	return time.Time{}, http.StatusUnprocessableEntity, "Unable to parse scheduled timestamp. It should be in an unambiguous format, e.g. ISO 8601"
}

// handleCancelSwitchover removes any pending request, scheduled or not: a
// request whose candidate died would otherwise block every later one.
func (s *Server) handleCancelSwitchover(w http.ResponseWriter, r *http.Request) {
	g, err := s.ctl.Group(r.Context())
	if err != nil || g == nil {
		writeText(w, r, http.StatusServiceUnavailable, fmt.Sprintf("cannot read the group from Consul: %v", err))
		return
	}
	if g.Failover == nil && g.FailoverIndex == 0 {
		writeText(w, r, http.StatusNotFound, "no switchover is scheduled")
		return
	}
	if err := s.ctl.CancelFailover(r.Context()); err != nil {
		writeText(w, r, http.StatusServiceUnavailable, "cannot delete the switchover: "+err.Error())
		return
	}
	writeText(w, r, http.StatusOK, "scheduled switchover deleted")
}

// restartBody is Patroni's restart request: conditions under which to
// restart. Unknown keys are refused, as Patroni does, because ignoring a
// condition means restarting when the caller said not to.
type restartBody struct {
	Schedule        json.RawMessage `json:"schedule"`
	Role            string          `json:"role"`
	PostgresVersion json.RawMessage `json:"postgres_version"`
	Timeout         json.RawMessage `json:"timeout"`
	RestartPending  bool            `json:"restart_pending"`
}

func (s *Server) handleRestart(w http.ResponseWriter, r *http.Request) {
	body, code, err := readBody(r)
	if err != nil {
		writeText(w, r, code, err.Error())
		return
	}
	var req restartBody
	if err := decodeOptional(body, &req, true); err != nil {
		writeText(w, r, http.StatusBadRequest, "invalid request: "+err.Error())
		return
	}
	if sched, ok := rawString(req.Schedule); ok && sched != "" {
		writeText(w, r, http.StatusBadRequest, "scheduled restarts are not supported; request the restart when it is due")
		return
	}
	st := s.ctl.State()
	conditionsMet := true
	if req.Role != "" {
		role := req.Role
		if role == "master" {
			role = consulkv.RolePrimary
		}
		if role != consulkv.RolePrimary && role != consulkv.RoleReplica {
			writeText(w, r, http.StatusBadRequest, "PostgreSQL role should be either primary or replica")
			return
		}
		conditionsMet = conditionsMet && st.Role == role
	}
	if v, ok := rawString(req.PostgresVersion); ok {
		want, err := postgresVersionNum(v)
		if err != nil {
			writeText(w, r, http.StatusBadRequest, err.Error())
			return
		}
		conditionsMet = conditionsMet && st.PGVersion != 0 && st.PGVersion < want
	}
	if req.RestartPending {
		conditionsMet = conditionsMet && st.PendingRestart
	}
	// The restart outlives the request: a client that hangs up must not
	// leave PostgreSQL stopped half-way.
	ctx := context.WithoutCancel(r.Context())
	if len(bytes.TrimSpace(req.Timeout)) > 0 && string(bytes.TrimSpace(req.Timeout)) != "null" {
		var d consulkv.Duration
		if err := json.Unmarshal(req.Timeout, &d); err != nil || d <= 0 {
			writeText(w, r, http.StatusBadRequest, "Timeout should be a positive number of seconds")
			return
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d.D())
		defer cancel()
	}
	if !conditionsMet {
		writeText(w, r, http.StatusServiceUnavailable, "restart conditions are not satisfied")
		return
	}
	if err := s.ctl.Restart(ctx); err != nil {
		writeText(w, r, http.StatusServiceUnavailable, "restart failed: "+err.Error())
		return
	}
	writeText(w, r, http.StatusOK, "restarted successfully")
}

// postgresVersionNum turns "15", "15.4" or "9.6.1" into server_version_num.
func postgresVersionNum(v string) (int, error) {
	bad := fmt.Errorf("postgres_version %q is not a PostgreSQL version", v)
	parts := strings.Split(strings.TrimSpace(v), ".")
	nums := make([]int, 0, 3)
	for _, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 9999 {
			return 0, bad
		}
		nums = append(nums, n)
	}
	switch {
	case len(nums) == 0 || len(nums) > 3:
		return 0, bad
	case nums[0] >= 10:
		if len(nums) > 2 {
			return 0, bad
		}
		minor := 0
		if len(nums) == 2 {
			minor = nums[1]
		}
		return nums[0]*10000 + minor, nil
	default:
		if len(nums) < 2 {
			return 0, bad
		}
		patch := 0
		if len(nums) == 3 {
			patch = nums[2]
		}
		return nums[0]*10000 + nums[1]*100 + patch, nil
	}
}

func (s *Server) handleReload(w http.ResponseWriter, r *http.Request) {
	if err := s.ctl.Reload(context.WithoutCancel(r.Context())); err != nil {
		writeText(w, r, http.StatusServiceUnavailable, "reload failed: "+err.Error())
		return
	}
	writeText(w, r, http.StatusAccepted, "reload scheduled")
}

type reinitBody struct {
	Force bool `json:"force"`
}

func (s *Server) handleReinitialize(w http.ResponseWriter, r *http.Request) {
	body, code, err := readBody(r)
	if err != nil {
		writeText(w, r, code, err.Error())
		return
	}
	var req reinitBody
	if err := decodeOptional(body, &req, false); err != nil {
		writeText(w, r, http.StatusBadRequest, "invalid request: "+err.Error())
		return
	}
	st := s.ctl.State()
	switch {
	case st.IsLeader || (st.LeaderName != "" && st.LeaderName == st.Name):
		writeText(w, r, http.StatusServiceUnavailable, "I am the leader, can not reinitialize")
		return
	case st.LeaderName == "":
		// Re-cloning needs a source; wiping the data directory first would
		// throw away what may be the best copy left.
		writeText(w, r, http.StatusServiceUnavailable, "Cluster has no leader, can not reinitialize")
		return
	}
	if err := s.ctl.Reinitialize(context.WithoutCancel(r.Context()), req.Force); err != nil {
		writeText(w, r, http.StatusServiceUnavailable, "reinitialize failed: "+err.Error())
		return
	}
	writeText(w, r, http.StatusOK, "reinitialize finished")
}
