package health

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
)

func TestSwitchoverValidation(t *testing.T) {
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	cases := []struct {
		name   string
		body   string
		mutate func(f *fakeCtl)
		code   int
		msg    string
	}{
		{name: "bad JSON", body: `{"leader":`, code: 400},
		{name: "wrong type", body: `{"leader":5}`, code: 400},
		{name: "empty body", body: ``, code: 400},
		{name: "no leader", body: `{"candidate":"m2"}`, code: 400, msg: "only from a specific leader"},
		{name: "leader mismatch", body: `{"leader":"m2","candidate":"m3"}`, code: 412, msg: "leader name does not match"},
		{name: "no leader in Consul", body: `{"leader":"m1"}`, code: 412, msg: "leader name does not match",
			mutate: func(f *fakeCtl) { f.group.Leader = nil }},
		{name: "unknown candidate", body: `{"leader":"m1","candidate":"m9"}`, code: 412, msg: "does not exist"},
		{name: "candidate is leader", body: `{"leader":"m1","candidate":"m1"}`, code: 412, msg: "already the leader"},
		{name: "candidate not running", body: `{"leader":"m1","candidate":"m2"}`, code: 412, msg: "not running",
			mutate: func(f *fakeCtl) { f.group.Members["m2"].State = "stopped" }},
		{name: "candidate not a replica", body: `{"leader":"m1","candidate":"m2"}`, code: 412, msg: "not a replica",
			mutate: func(f *fakeCtl) { f.group.Members["m2"].Role = consulkv.RoleUnknown }},
		{name: "candidate nofailover", body: `{"leader":"m1","candidate":"m2"}`, code: 412, msg: "nofailover",
			mutate: func(f *fakeCtl) { f.group.Members["m2"].Tags.NoFailover = true }},
		{name: "candidate not sync", body: `{"leader":"m1","candidate":"m3"}`, code: 412, msg: "sync_standby",
			mutate: func(f *fakeCtl) {
				f.group.Sync = &consulkv.SyncState{Version: 1, Leader: "m1", SyncStandbys: []string{"m2"}}
			}},
		{name: "no eligible member", body: `{"leader":"m1"}`, code: 412, msg: "no good candidates",
			mutate: func(f *fakeCtl) {
				f.group.Members["m2"].Tags.NoFailover = true
				f.group.Members["m3"].State = "crashed"
			}},
		{name: "candidate without current logical slot copies", body: `{"leader":"m1","candidate":"m2"}`, code: 412, msg: `candidate "m2" has no current copies of the group's logical slots yet`,
			mutate: func(f *fakeCtl) {
				f.group.Status = &consulkv.GroupStatus{Version: 1, Leader: "m1", LogicalSlots: map[string]consulkv.LogicalSlot{"spk_sub": {}}}
			}},
		{name: "no replica with current logical slot copies", body: `{"leader":"m1"}`, code: 412, msg: "no candidate has current copies of the group's logical slots yet",
			mutate: func(f *fakeCtl) {
				f.group.Status = &consulkv.GroupStatus{Version: 1, Leader: "m1", LogicalSlots: map[string]consulkv.LogicalSlot{"spk_sub": {}}}
			}},
		{name: "leader alone", body: `{"leader":"m1"}`, code: 412, msg: "does not have members except leader",
			mutate: func(f *fakeCtl) { delete(f.group.Members, "m2"); delete(f.group.Members, "m3") }},
		{name: "paused without candidate", body: `{"leader":"m1"}`, code: 400, msg: "paused state",
			mutate: func(f *fakeCtl) { f.state.Paused = true }},
		{name: "scheduled while paused", body: `{"leader":"m1","candidate":"m2","scheduled_at":"` + future + `"}`, code: 400, msg: "paused state",
			mutate: func(f *fakeCtl) { f.state.Paused = true }},
		{name: "schedule in the past", body: `{"leader":"m1","scheduled_at":"2001-01-01T00:00:00Z"}`, code: 422, msg: "in the past"},
		{name: "schedule without zone", body: `{"leader":"m1","scheduled_at":"2099-01-01T12:00"}`, code: 400, msg: "Timezone"},
		{name: "schedule garbage", body: `{"leader":"m1","scheduled_at":"tomorrow"}`, code: 422, msg: "Unable to parse"},
		{name: "already pending", body: `{"leader":"m1","candidate":"m2"}`, code: 409, msg: "already pending",
			mutate: func(f *fakeCtl) {
				f.group.Failover = &consulkv.FailoverRequest{Version: 1, Kind: consulkv.KindSwitchover, Leader: "m1"}
				f.group.FailoverIndex = 9
			}},
		{name: "Consul down", body: `{"leader":"m1"}`, code: 503, mutate: func(f *fakeCtl) { f.groupErr = errors.New("down") }},
		{name: "write fails", body: `{"leader":"m1"}`, code: 503, msg: "failover key",
			mutate: func(f *fakeCtl) { f.failoverErr = errors.New("cas lost") }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeCtl{state: primaryState(), group: threeMembers()}
			if tc.mutate != nil {
				tc.mutate(f)
			}
			h := newTestServer(f, Options{}).Handler()
			code, body, _ := do(t, h, http.MethodPost, "/switchover", tc.body)
			if code != tc.code || !strings.Contains(body, tc.msg) {
				t.Errorf("POST /switchover %s = %d %q, want %d %q", tc.body, code, body, tc.code, tc.msg)
			}
			if len(f.failovers) != 0 && code != 503 {
				t.Errorf("request stored on a rejected switchover: %+v", f.failovers[0])
			}
		})
	}
}

func TestSwitchoverScheduled(t *testing.T) {
	f := &fakeCtl{state: primaryState(), group: threeMembers()}
	h := newTestServer(f, Options{}).Handler()
	at := time.Now().Add(2 * time.Hour).Truncate(time.Second)
	// Patroni's documented short form: minutes and an hour-only offset.
	body := `{"leader":"m1","candidate":"m3","scheduled_at":"` + at.In(time.FixedZone("", 2*3600)).Format("2006-01-02T15:04:05Z07") + `"}`
	code, resp, _ := do(t, h, http.MethodPost, "/switchover", body)
	if code != 202 || resp != "Switchover scheduled" {
		t.Fatalf("scheduled switchover = %d %q", code, resp)
	}
	if len(f.failovers) != 1 {
		t.Fatalf("requests = %d", len(f.failovers))
	}
	r := f.failovers[0]
	if r.Kind != consulkv.KindSwitchover || r.Leader != "m1" || r.Candidate != "m3" || r.ScheduledAt == nil || !r.ScheduledAt.Equal(at) {
		t.Errorf("request = %+v", r)
	}
	if f.wakes != 0 {
		t.Errorf("a scheduled switchover woke the loop")
	}

	// A scheduled switchover does not need the candidate healthy now.
	f = &fakeCtl{state: primaryState(), group: threeMembers()}
	f.group.Members["m3"].State = "stopped"
	h = newTestServer(f, Options{}).Handler()
	if code, resp, _ := do(t, h, http.MethodPost, "/switchover", `{"leader":"m1","candidate":"m3","scheduled_at":"`+at.Format(time.RFC3339)+`"}`); code != 202 {
		t.Errorf("scheduled switchover to a stopped candidate = %d %q", code, resp)
	}
}

func TestSwitchoverOutcome(t *testing.T) {
	cases := []struct {
		name      string
		path      string
		body      string
		promote   time.Duration
		promoteTo string
		abandon   time.Duration
		noLeader  bool
		code      int
		msg       string
		kind      string
	}{
		{name: "to candidate", path: "/switchover", body: `{"leader":"m1","candidate":"m2"}`, promote: 250 * time.Millisecond,
			code: 200, msg: `Successfully switched over to "m2"`, kind: consulkv.KindSwitchover},
		{name: "to anyone", path: "/switchover", body: `{"leader":"m1"}`, promote: 150 * time.Millisecond, promoteTo: "m3",
			code: 200, msg: `Successfully switched over to "m3"`, kind: consulkv.KindSwitchover},
		{name: "patronictl member field", path: "/switchover", body: `{"leader":"m1","member":"m3"}`, promote: 100 * time.Millisecond,
			code: 200, msg: `Successfully switched over to "m3"`, kind: consulkv.KindSwitchover},
		{name: "someone else won", path: "/switchover", body: `{"leader":"m1","candidate":"m2"}`, promote: 100 * time.Millisecond, promoteTo: "m3",
			code: 200, msg: `Switched over to "m3" instead of "m2"`, kind: consulkv.KindSwitchover},
		{name: "timeout", path: "/switchover", body: `{"leader":"m1","candidate":"m2"}`,
			code: 503, msg: "Switchover failed", kind: consulkv.KindSwitchover},
		{name: "leader gave up (failover key gone, same leader): fails at once", path: "/switchover", body: `{"leader":"m1","candidate":"m2"}`, abandon: 150 * time.Millisecond,
			code: 503, msg: "Switchover failed", kind: consulkv.KindSwitchover},
		{name: "failover without leader", path: "/failover", body: `{"candidate":"m2"}`, promote: 100 * time.Millisecond, noLeader: true,
			code: 200, msg: `Successfully failed over to "m2"`, kind: consulkv.KindFailover},
		{name: "failover on a healthy group", path: "/failover", body: `{"candidate":"m3","leader":"m1"}`, promote: 100 * time.Millisecond,
			code: 200, msg: `Successfully failed over to "m3"`, kind: consulkv.KindFailover},
		{name: "failover timeout", path: "/failover", body: `{"candidate":"m2"}`, noLeader: true,
			code: 503, msg: "Failover failed", kind: consulkv.KindFailover},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeCtl{state: primaryState(), group: threeMembers(), promoteAfter: tc.promote, promoteTo: tc.promoteTo, abandonAfter: tc.abandon}
			if tc.noLeader {
				f.group.Leader = nil
				f.group.Members["m1"].State = "stopped"
			}
			h := newTestServer(f, Options{SwitchoverTimeout: 700 * time.Millisecond}).Handler()
			start := time.Now()
			code, body, _ := do(t, h, http.MethodPost, tc.path, tc.body)
			if code != tc.code || body != tc.msg {
				t.Errorf("POST %s %s = %d %q, want %d %q", tc.path, tc.body, code, body, tc.code, tc.msg)
			}
			took := time.Since(start)
			if code == 503 && tc.abandon == 0 && (took < 600*time.Millisecond || took > 3*time.Second) {
				t.Errorf("timed out after %s, want about 700ms", took)
			}
			if tc.abandon > 0 && took > tc.abandon+500*time.Millisecond {
				t.Errorf("answered %s after the request, want soon after the key went (%s), not the timeout", took, tc.abandon)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if len(f.failovers) != 1 || f.failovers[0].Kind != tc.kind || f.failovers[0].ScheduledAt != nil {
				t.Fatalf("requests = %+v", f.failovers)
			}
			if f.wakes != 1 {
				t.Errorf("wakes = %d, want 1", f.wakes)
			}
		})
	}
}

func TestFailoverValidation(t *testing.T) {
	cases := []struct {
		name   string
		body   string
		mutate func(f *fakeCtl)
		code   int
		msg    string
	}{
		{name: "no candidate", body: `{"leader":"m1"}`, code: 400, msg: "specific candidate"},
		{name: "bad JSON", body: `{`, code: 400},
		{name: "scheduled", body: `{"candidate":"m2","scheduled_at":"2099-01-01T00:00:00Z"}`, code: 400, msg: "can't be scheduled"},
		{name: "unknown candidate", body: `{"candidate":"zz"}`, code: 412, msg: "does not exist"},
		{name: "candidate stopped", body: `{"candidate":"m2"}`, code: 412, msg: "not running",
			mutate: func(f *fakeCtl) { f.group.Leader = nil; f.group.Members["m2"].State = "stopped" }},
		{name: "leader mismatch", body: `{"candidate":"m2","leader":"m3"}`, code: 412, msg: "leader name does not match"},
		{name: "candidate is leader", body: `{"candidate":"m1"}`, code: 412, msg: "already the leader"},
		{name: "candidate nofailover", body: `{"candidate":"m2"}`, code: 412, msg: "nofailover",
			mutate: func(f *fakeCtl) { f.group.Members["m2"].Tags.NoFailover = true }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeCtl{state: replicaState(), group: threeMembers()}
			if tc.mutate != nil {
				tc.mutate(f)
			}
			h := newTestServer(f, Options{}).Handler()
			code, body, _ := do(t, h, http.MethodPost, "/failover", tc.body)
			if code != tc.code || !strings.Contains(body, tc.msg) {
				t.Errorf("POST /failover %s = %d %q, want %d %q", tc.body, code, body, tc.code, tc.msg)
			}
			if len(f.failovers) != 0 {
				t.Errorf("request stored on a rejected failover")
			}
		})
	}
}

func TestCancelSwitchover(t *testing.T) {
	f := &fakeCtl{state: primaryState(), group: threeMembers()}
	h := newTestServer(f, Options{}).Handler()
	if code, _, _ := do(t, h, http.MethodDelete, "/switchover", ""); code != 404 || f.cancels != 0 {
		t.Errorf("DELETE with nothing pending = %d (cancels %d), want 404", code, f.cancels)
	}
	at := time.Now().Add(time.Hour)
	f.group.Failover = &consulkv.FailoverRequest{Version: 1, Kind: consulkv.KindSwitchover, Leader: "m1", ScheduledAt: &at}
	f.group.FailoverIndex = 12
	if code, body, _ := do(t, h, http.MethodDelete, "/switchover", ""); code != 200 || f.cancels != 1 {
		t.Errorf("DELETE = %d %q (cancels %d), want 200", code, body, f.cancels)
	}
	// An undecodable failover value is still something to clear.
	f.group.Failover = nil
	if code, _, _ := do(t, h, http.MethodDelete, "/switchover", ""); code != 200 || f.cancels != 2 {
		t.Errorf("DELETE of a garbage value = %d, want 200", code)
	}
}

func TestRestartReloadReinit(t *testing.T) {
	pending := replicaState()
	pending.PendingRestart = true
	cases := []struct {
		name     string
		st       MemberState
		path     string
		body     string
		ctlErr   error
		code     int
		msg      string
		restarts int
	}{
		{name: "restart", st: replicaState(), path: "/restart", code: 200, msg: "restarted successfully", restarts: 1},
		{name: "restart empty object", st: replicaState(), path: "/restart", body: `{}`, code: 200, restarts: 1},
		{name: "restart fails", st: replicaState(), path: "/restart", ctlErr: errors.New("pg_ctl: timeout"), code: 503, msg: "restart failed: pg_ctl: timeout", restarts: 1},
		{name: "restart pending not set", st: replicaState(), path: "/restart", body: `{"restart_pending":true}`, code: 503, msg: "conditions are not satisfied"},
		{name: "restart pending set", st: pending, path: "/restart", body: `{"restart_pending":true}`, code: 200, restarts: 1},
		{name: "role matches", st: replicaState(), path: "/restart", body: `{"role":"replica"}`, code: 200, restarts: 1},
		{name: "role differs", st: replicaState(), path: "/restart", body: `{"role":"master"}`, code: 503, msg: "conditions"},
		{name: "bad role", st: replicaState(), path: "/restart", body: `{"role":"boss"}`, code: 400},
		{name: "older version", st: replicaState(), path: "/restart", body: `{"postgres_version":"15.19"}`, code: 200, restarts: 1},
		{name: "same version", st: replicaState(), path: "/restart", body: `{"postgres_version":"15.18"}`, code: 503, msg: "conditions"},
		{name: "numeric version", st: replicaState(), path: "/restart", body: `{"postgres_version":16}`, code: 200, restarts: 1},
		{name: "bad version", st: replicaState(), path: "/restart", body: `{"postgres_version":"fifteen"}`, code: 400},
		{name: "timeout", st: replicaState(), path: "/restart", body: `{"timeout":30}`, code: 200, restarts: 1},
		{name: "bad timeout", st: replicaState(), path: "/restart", body: `{"timeout":-1}`, code: 400, msg: "Timeout"},
		{name: "scheduled", st: replicaState(), path: "/restart", body: `{"schedule":"2099-01-01T00:00:00Z"}`, code: 400, msg: "not supported"},
		{name: "unknown key", st: replicaState(), path: "/restart", body: `{"when":"now"}`, code: 400},
		{name: "bad JSON", st: replicaState(), path: "/restart", body: `{`, code: 400},
		{name: "reload", st: replicaState(), path: "/reload", code: 202, msg: "reload scheduled"},
		{name: "reinit leader", st: primaryState(), path: "/reinitialize", body: `{"force":true}`, code: 503, msg: "I am the leader, can not reinitialize"},
		{name: "reinit without leader", st: func() MemberState { s := replicaState(); s.LeaderName = ""; return s }(), path: "/reinitialize", code: 503, msg: "no leader"},
		{name: "reinit replica", st: replicaState(), path: "/reinitialize", body: `{"force":true}`, code: 200, msg: "reinitialize"},
		{name: "reinit bad JSON", st: replicaState(), path: "/reinitialize", body: `{"force":"maybe"}`, code: 400},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeCtl{state: tc.st, restartErr: tc.ctlErr}
			h := newTestServer(f, Options{}).Handler()
			code, body, _ := do(t, h, http.MethodPost, tc.path, tc.body)
			if code != tc.code || !strings.Contains(body, tc.msg) {
				t.Errorf("POST %s %s = %d %q, want %d %q", tc.path, tc.body, code, body, tc.code, tc.msg)
			}
			if f.restarts != tc.restarts {
				t.Errorf("restarts = %d, want %d", f.restarts, tc.restarts)
			}
			if tc.name == "reinit replica" && (len(f.reinits) != 1 || !f.reinits[0]) {
				t.Errorf("reinits = %v, want [true]", f.reinits)
			}
			if tc.path == "/reinitialize" && code != 200 && len(f.reinits) != 0 {
				t.Errorf("reinitialized despite %d", code)
			}
		})
	}
}

func TestPostgresVersionNum(t *testing.T) {
	for in, want := range map[string]int{"15": 150000, "15.4": 150004, "9.6.1": 90601, "9.6": 90600, "17.0": 170000} {
		if got, err := postgresVersionNum(in); err != nil || got != want {
			t.Errorf("postgresVersionNum(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "9", "15.4.1", "x", "1.2.3.4", "-1"} {
		if _, err := postgresVersionNum(in); err == nil {
			t.Errorf("postgresVersionNum(%q) accepted", in)
		}
	}
}
