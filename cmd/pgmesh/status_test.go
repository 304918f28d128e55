package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"gopkg.in/yaml.v3"
)

func member(name, role string, tl uint32, write, recv, replay uint64) *consulkv.MemberStatus {
	return &consulkv.MemberStatus{
		Version: 1, Name: name, Group: "g1", Role: role, State: "running", APIURL: "http://127.0.0.1:8008",
		Host: "10.0.0." + name[len(name)-1:], Port: 5432, Timeline: tl, SystemID: "7300000000000000001",
		WriteLSN: write, ReceiveLSN: recv, ReplayLSN: replay, Streaming: role == consulkv.RoleReplica,
	}
}

// testView is a two-group mesh: g1 with a leader, a sync standby, a lagging
// replica and a member still cloning; g2 without a leader and a garbage key.
func testView() *consulkv.ClusterView {
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	g1 := &consulkv.GroupView{
		Name:       "g1",
		Initialize: &consulkv.Initialize{Version: 1, Member: "n1", SystemID: "7300000000000000001"},
		Leader:     &consulkv.LeaderInfo{Member: "n1", Session: "s1"},
		Members: map[string]*consulkv.MemberStatus{
			"n1": member("n1", consulkv.RolePrimary, 3, 0x3_0000_0000+50<<20, 0, 0),
			"n2": member("n2", consulkv.RoleReplica, 3, 0, 0x3_0000_0000+50<<20, 0x3_0000_0000+50<<20),
			"n3": member("n3", consulkv.RoleReplica, 3, 0, 0x3_0000_0000+20<<20, 0x3_0000_0000+10<<20),
			"n4": {Version: 1, Name: "n4", Role: consulkv.RoleUnknown, State: "cloning", Host: "10.0.0.4", Port: 5432,
				Tags: consulkv.MemberTags{NoFailover: true, Custom: map[string]string{"dc": "east"}}},
		},
		Status:   &consulkv.GroupStatus{Version: 1, Leader: "n1", LastLSN: 0x3_0000_0000 + 40<<20, Timeline: 3},
		Sync:     &consulkv.SyncState{Version: 1, Leader: "n1", SyncStandbys: []string{"n2"}},
		Failover: &consulkv.FailoverRequest{Version: 1, Kind: consulkv.KindSwitchover, Leader: "n1", Candidate: "n3", ScheduledAt: &at},
	}
	g2bad := &consulkv.DecodeError{Key: "pgmesh/prod/groups/g2/members/x", Err: errors.New("invalid JSON: unexpected EOF")}
	g2 := &consulkv.GroupView{
		Name:     "g2",
		Members:  map[string]*consulkv.MemberStatus{"m1": member("m1", consulkv.RoleReplica, 1, 0, 0, 0)},
		Problems: []error{g2bad},
	}
	return &consulkv.ClusterView{
		Config:   &consulkv.ClusterConfig{Version: 1, PausedGroups: []string{"g2"}},
		Groups:   map[string]*consulkv.GroupView{"g1": g1, "g2": g2},
		Problems: []error{g2bad},
	}
}

func TestBuildStatusRolesAndLag(t *testing.T) {
	doc := buildStatus("prod", testView(), "", defaultDetectionGoal)
	if len(doc.Groups) != 2 || doc.Groups[0].Name != "g1" {
		t.Fatalf("groups: %+v", doc.Groups)
	}
	g := doc.Groups[0]
	want := map[string]struct {
		role, state string
		lag         string
	}{
		"n1": {roleLeader, "running", ""},
		"n2": {roleSyncStandby, "streaming", "0"},
		"n3": {roleReplica, "streaming", "30"},
		"n4": {roleUninitialized, "cloning", "unknown"}, // no position yet
	}
	for _, m := range g.Members {
		w := want[m.Name]
		if m.Role != w.role || m.State != w.state {
			t.Errorf("%s: role %s state %s, want %s %s", m.Name, m.Role, m.State, w.role, w.state)
		}
		if got := formatLagMB(m); got != w.lag {
			t.Errorf("%s: lag %q, want %q", m.Name, got, w.lag)
		}
	}
	// The lag reference is the newer of the status key (40MB) and the
	// leader's own member key (50MB): n3 received up to 20MB, so 30MB.
	if n3 := g.Members[2]; n3.LagBytes == nil || *n3.LagBytes != 30<<20 || formatLagMB(n3) != "30" {
		t.Errorf("n3 lag %v", n3.LagBytes)
	}
	if g.Timeline != 3 || g.SystemID != "7300000000000000001" || g.LastLSN != "3/3200000" {
		t.Errorf("group summary: %+v", g)
	}
	if !doc.Groups[1].Paused || doc.Groups[0].Paused || doc.Paused {
		t.Errorf("pause flags wrong: cluster %v g1 %v g2 %v", doc.Paused, doc.Groups[0].Paused, doc.Groups[1].Paused)
	}
}

func TestRenderStatusTable(t *testing.T) {
	var b bytes.Buffer
	v := testView()
	v.Groups["g1"].Members["n3"].SessionChecks = []string{"serfHealth", "liveness"}
	renderStatus(&b, buildStatus("prod", v, "", defaultDetectionGoal))
	auto := consulkv.DefaultChecksLockDelay // lock_delay 0 with session checks
	out := b.String()
	t.Log("\n" + out)
	lines := strings.Split(out, "\n")
	if lines[0] != "Cluster: prod" {
		t.Fatalf("header %q", lines[0])
	}
	for _, want := range []string{
		"Group: g1 (system id 7300000000000000001)",
		"Group: g2 (system id not initialized)",
		"Switchover scheduled in group g1 from n1 to n3 at ",
		"Group g2 is paused",
		"Group g2 has no leader.",
		// serfHealth: 5.6s typical, 8.55s worst, then the automatic lock-delay.
		"Failure detection (dead host until a successor may take the lock): session TTL only (n1, n2, n4) ~18.7s, worst 20s; " +
			"session tied to node check serfHealth + service check liveness (n3) ~" + fmtDur(5600*time.Millisecond+auto) + ", worst " + fmtDur(8550*time.Millisecond+auto),
		"Failure detection (dead host until a successor may take the lock): session TTL only (m1) ~18.7s, worst 20s",
		"Slow failure detection in group g1: n1, n2, n4 (session TTL only) takes about 18.7s (up to 20s) to be noticed dead and free the lock, goal 8.8s: " +
			"run a Consul client agent on each host so sessions are tied to serfHealth (automatic when consul.session_checks is unset), " +
			"or lower ttl (Consul's session_ttl_min must allow ttl/2).",
		"Slow failure detection in group g2: m1 (session TTL only)",
		`Consul problem: key "pgmesh/prod/groups/g2/members/x": invalid JSON: unexpected EOF`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// n3 (serfHealth, about 8.1s) meets the goal: no warning for it.
	if strings.Contains(out, "Slow failure detection in group g1: n3") {
		t.Errorf("a warning for n3, whose typical detection meets the goal:\n%s", out)
	}
	// The problem is reported once, under its group, not again as a
	// cluster problem.
	if n := strings.Count(out, "Consul problem"); n != 1 {
		t.Errorf("%d problem lines, want 1", n)
	}
	row := func(name string) []string {
		for _, l := range lines {
			if f := strings.Fields(l); len(f) > 0 && f[0] == name {
				return f
			}
		}
		t.Fatalf("no row for %s", name)
		return nil
	}
	header := row("Member")
	if strings.Join(header, " ") != "Member Host:Port Role State TL Receive LSN Replay LSN Lag in MB Tags" {
		t.Errorf("header %v", header)
	}
	// Columns line up: every row's role starts where the header's does.
	col := strings.Index(lines[3], "Role")
	for _, l := range lines[4:8] {
		if col <= 0 || len(l) <= col || l[col-1] != ' ' || l[col] == ' ' {
			t.Errorf("row misaligned with the header's Role column %d: %q", col, l)
		}
	}
	if r := row("n1"); strings.Join(r, " ") != "n1 10.0.0.1:5432 Leader running 3 3/3200000" {
		t.Errorf("leader row %v", r)
	}
	if r := row("n2"); r[2] != "Sync" || r[3] != "Standby" || r[len(r)-1] != "0" {
		t.Errorf("sync standby row %v", r)
	}
	if r := row("n3"); strings.Join(r, " ") != "n3 10.0.0.3:5432 Replica streaming 3 3/1400000 3/A00000 30" {
		t.Errorf("replica row %v", r)
	}
	if r := row("n4"); strings.Join(r, " ") != "n4 10.0.0.4:5432 Uninitialized cloning unknown dc=east nofailover" {
		t.Errorf("uninitialized row %v", r)
	}
}

func TestStatusMachineReadable(t *testing.T) {
	doc := buildStatus("prod", testView(), "g1", defaultDetectionGoal)
	var b bytes.Buffer
	if err := writeDoc(&b, "json", doc); err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatalf("json: %v\n%s", err, b.String())
	}
	groups := back["groups"].([]any)
	if len(groups) != 1 {
		t.Fatalf("--group g1 gave %d groups", len(groups))
	}
	if p := back["problems"].([]any); len(p) != 0 {
		t.Errorf("g2's problem leaked into --group g1: %v", p)
	}
	m := groups[0].(map[string]any)["members"].([]any)[2].(map[string]any)
	if m["name"] != "n3" || m["role"] != "replica" || m["lag_bytes"].(float64) != 30<<20 {
		t.Errorf("n3 in json: %v", m)
	}
	b.Reset()
	if err := writeDoc(&b, "yaml", doc); err != nil {
		t.Fatal(err)
	}
	var y statusDoc
	if err := yaml.Unmarshal(b.Bytes(), &y); err != nil || y.Groups[0].Members[0].Role != roleLeader {
		t.Fatalf("yaml round trip: %v %+v", err, y)
	}
}

func TestHistoryLines(t *testing.T) {
	h := &consulkv.History{Version: 1, Entries: []consulkv.HistoryEntry{
		{Timeline: 1, LSN: 0x1_0300_0060, Reason: "switchover to n2", At: time.Unix(1e9, 0), NewLeader: "n2"},
	}}
	lines := historyLines(h)
	if len(lines) != 1 || lines[0].LSN != "1/3000060" {
		t.Fatalf("%+v", lines)
	}
	var b bytes.Buffer
	renderHistory(&b, lines)
	if !strings.Contains(b.String(), "1/3000060  switchover to n2") || !strings.Contains(b.String(), "n2\n") {
		t.Errorf("history table:\n%s", b.String())
	}
	if got := historyLines(nil); got == nil || len(got) != 0 {
		t.Errorf("nil history must be an empty list (JSON []), got %#v", got)
	}
}

func TestFindMember(t *testing.T) {
	v := testView()
	v.Groups["g2"].Members["n2"] = member("n2", consulkv.RoleReplica, 1, 0, 0, 0)
	if g, m, err := findMember(v, "n3", ""); err != nil || g != "g1" || m.Name != "n3" {
		t.Errorf("n3: %s %v %v", g, m, err)
	}
	if _, _, err := findMember(v, "n2", ""); err == nil || exitCode(err) != exitUsage || !strings.Contains(err.Error(), "g1, g2") {
		t.Errorf("ambiguous n2: %v", err)
	}
	if g, _, err := findMember(v, "n2", "g2"); err != nil || g != "g2" {
		t.Errorf("n2 in g2: %s %v", g, err)
	}
	if _, _, err := findMember(v, "zz", ""); err == nil || exitCode(err) != exitFailed {
		t.Errorf("missing member: %v", err)
	}
}

func TestReplicationSection(t *testing.T) {
	now := time.Date(2026, 11, 26, 3, 0, 0, 0, time.UTC)
	member := func(name, host string, port int, logical *consulkv.LogicalStatus) *consulkv.MemberStatus {
		return &consulkv.MemberStatus{Version: 1, Name: name, Role: consulkv.RolePrimary, State: "running", Host: host, Port: port, Logical: logical}
	}
	v := &consulkv.ClusterView{Groups: map[string]*consulkv.GroupView{
		"a": {Name: "a", Leader: &consulkv.LeaderInfo{Member: "a1", Session: "s"}, Members: map[string]*consulkv.MemberStatus{
			"a1": member("a1", "10.0.0.1", 5432, &consulkv.LogicalStatus{
				Slots: []consulkv.LogicalSlotStatus{{Name: "b_from_a", Active: true, LagBytes: 1 << 20}, {Name: "c_from_a", LagBytes: 64 << 20}},
			}),
			"a2": member("a2", "10.0.0.2", 5432, nil),
		}},
		"b": {Name: "b", Leader: &consulkv.LeaderInfo{Member: "b1", Session: "s"}, Members: map[string]*consulkv.MemberStatus{
			"b1": member("b1", "10.0.1.1", 5432, &consulkv.LogicalStatus{Subscriptions: []consulkv.SubscriptionStatus{
				{Name: "b_from_a", Enabled: true, Running: true, Source: "native", Endpoints: []string{"10.0.0.2:5432", "10.0.0.1:5432"}, LastMsgReceipt: now.Add(-2 * time.Second)},
			}}),
		}},
		"c": {Name: "c", Leader: &consulkv.LeaderInfo{Member: "c1", Session: "s"}, Members: map[string]*consulkv.MemberStatus{
			"c1": member("c1", "10.0.2.1", 5432, &consulkv.LogicalStatus{Subscriptions: []consulkv.SubscriptionStatus{
				{Name: "c_from_a", Enabled: true, Running: true, Source: "native", Endpoints: []string{"10.0.0.1:5432"}},
				{Name: "c_from_x", Enabled: true, Running: false, Source: "native", Endpoints: []string{"192.0.2.9:5432"}},
			}}),
		}},
	}}
	links := buildReplication(v, now)
	if len(links) != 3 {
		t.Fatalf("links: %+v", links)
	}
	byName := map[string]replLink{}
	for _, l := range links {
		byName[l.Subscription] = l
	}
	if l := byName["b_from_a"]; l.From != "a" || l.To != "b" || l.State != "replicating" || l.Problem != "" || *l.LagBytes != 1<<20 || l.LastMessage != "2s ago" {
		t.Errorf("healthy link: %+v", l)
	}
	if l := byName["c_from_a"]; l.State != "lagging" || !strings.Contains(l.Problem, "MB behind") {
		t.Errorf("lagging link must stand out: %+v", l)
	}
	if l := byName["c_from_x"]; l.State != "DOWN" || l.From != "?" || l.Problem == "" {
		t.Errorf("broken link must stand out: %+v", l)
	}
	// A running subscription whose publisher is in no group read: not of
	// this mesh, or in a datacenter that could not be read.
	sub := &v.Groups["c"].Members["c1"].Logical.Subscriptions[1]
	sub.Running = true
	for _, tc := range []struct {
		unread []string
		want   string
	}{{nil, "publisher is not a member of this mesh"}, {[]string{"dc3"}, "it may be in datacenter dc3, which could not be read"}} {
		for _, l := range buildReplication(v, now, tc.unread...) {
			if l.Subscription == "c_from_x" && !strings.Contains(l.Problem, tc.want) {
				t.Errorf("unread %v: problem %q, want %q", tc.unread, l.Problem, tc.want)
			}
		}
	}
	sub.Running = false
	var out strings.Builder
	renderStatus(&out, statusDoc{Cluster: "m", Replication: links})
	if !strings.Contains(out.String(), "Replication between groups") || !strings.Contains(out.String(), "!! ") {
		t.Errorf("table:\n%s", out.String())
	}
}

func TestSkippedChangesShown(t *testing.T) {
	v := testView()
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	v.Groups["g1"].History = &consulkv.History{Version: 1, Entries: []consulkv.HistoryEntry{
		{Timeline: 1, LSN: 0x100, Reason: "switchover", At: at.Add(-time.Hour), NewLeader: "n2"},
		{Timeline: 2, LSN: 0x200, Reason: "leader gone", At: at, NewLeader: "n1", SkippedChanges: []consulkv.SkippedChanges{
			{Origin: "spk_postgres_g2_sub", Slot: "spk_postgres_g2_sub", Publisher: "g2", From: 0x313BA20, To: 0x313C9B0},
			{Origin: "pg_16400", Slot: "sub_x", From: 0x10, To: 0x20},
		}},
	}}
	doc := buildStatus("prod", v, "", 0)
	var g1 groupStatus
	for _, g := range doc.Groups {
		if g.Name == "g1" {
			g1 = g
		}
	}
	if len(g1.SkippedChanges) != 2 || g1.SkippedChanges[0].From != "0/313BA20" || g1.SkippedChanges[0].To != "0/313C9B0" {
		t.Fatalf("skipped changes of the latest promotion: %+v", g1.SkippedChanges)
	}
	lines := strings.Join(footer(doc), "\n")
	for _, want := range []string{
		"!! Group g1 lacks changes of group g2 (slot spk_postgres_g2_sub, g2's WAL 0/313BA20 to 0/313C9B0) that g2 will not send again: its promotion of n1 at",
		"!! Group g1 may lack changes its old leader had applied from slot sub_x (publisher's WAL 0/10 to 0/20;",
	} {
		if !strings.Contains(lines, want) {
			t.Errorf("footer lacks %q:\n%s", want, lines)
		}
	}
	var b bytes.Buffer
	renderHistory(&b, historyLines(v.Groups["g1"].History))
	if !strings.Contains(b.String(), "!! n1, promoted after timeline 2, lacks changes of group g2") {
		t.Errorf("history:\n%s", b.String())
	}
	// A later promotion without skipped changes clears the status line
	// (the history keeps it).
	h := v.Groups["g1"].History
	h.Entries = append(h.Entries, consulkv.HistoryEntry{Timeline: 3, At: at.Add(time.Hour), NewLeader: "n2"})
	if doc := buildStatus("prod", v, "", 0); strings.Contains(strings.Join(footer(doc), "\n"), "lacks changes") {
		t.Errorf("status still reports the older promotion's skipped changes")
	}
}
