package agent

import (
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/pg"
)

func TestSyncStandbyNames(t *testing.T) {
	cases := []struct {
		picks []string
		mode  string
		want  string
	}{
		{nil, consulkv.SyncOn, ""},
		{nil, consulkv.SyncStrict, "*"},
		{[]string{"n1-b"}, consulkv.SyncOn, `FIRST 1 ("n1-b")`},
		{[]string{"a", "b"}, consulkv.SyncStrict, `FIRST 2 ("a", "b")`},
	}
	for _, c := range cases {
		if got := syncStandbyNames(c.picks, c.mode); got != c.want {
			t.Errorf("%v %s: got %q want %q", c.picks, c.mode, got, c.want)
		}
	}
}

func TestPickSyncStandbys(t *testing.T) {
	g := &consulkv.GroupView{Members: map[string]*consulkv.MemberStatus{
		"a": {Name: "a"}, "b": {Name: "b"}, "c": {Name: "c"}, "d": {Name: "d", Tags: consulkv.MemberTags{NoSync: true}},
	}}
	repl := []pg.ReplicationConn{
		{ApplicationName: "b", State: "streaming", SyncState: "async", FlushLSN: 900},
		{ApplicationName: "c", State: "streaming", SyncState: "sync", FlushLSN: 100},
		{ApplicationName: "d", State: "streaming", SyncState: "async", FlushLSN: 5000},
		{ApplicationName: "x", State: "streaming", SyncState: "async", FlushLSN: 5000},
		{ApplicationName: "b", State: "catchup", SyncState: "async", FlushLSN: 900},
	}
	if got := pickSyncStandbys(repl, g, "a", 1, nil); len(got) != 1 || got[0] != "c" {
		t.Fatalf("the current sync standby must be kept (no churn), got %v", got)
	}
	if got := pickSyncStandbys(repl, g, "a", 3, nil); len(got) != 2 || got[0] != "b" || got[1] != "c" {
		t.Fatalf("nosync members and non-members are never picked, got %v", got)
	}
	if got := pickSyncStandbys(nil, g, "a", 1, nil); len(got) != 0 {
		t.Fatalf("no standbys: %v", got)
	}
	if got := pickSyncStandbys(repl, g, "a", 1, map[string]bool{"c": true}); len(got) != 1 || got[0] != "b" {
		t.Fatalf("a silent sync standby is replaced by a replying one, got %v", got)
	}
	if got := pickSyncStandbys(repl, g, "a", 1, map[string]bool{"b": true, "c": true}); len(got) != 0 {
		t.Fatalf("all silent: no sync standby (on mode then runs async, strict waits for '*'), got %v", got)
	}
}

func TestReplyTrackerTimesChangesWithTheLocalClock(t *testing.T) {
	var r replyTracker
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	// The standby's clock is an hour behind: only changes count.
	skewed := t0.Add(-time.Hour)
	conn := func(name string, reply time.Time) pg.ReplicationConn {
		return pg.ReplicationConn{ApplicationName: name, State: "streaming", ReplyTime: reply}
	}
	after := 5 * time.Second
	if s := r.silent([]pg.ReplicationConn{conn("b", skewed), conn("c", skewed)}, t0, after); len(s) != 0 {
		t.Fatalf("first sight: %v", s)
	}
	// b keeps replying every second, c stops.
	for i := 1; i <= 6; i++ {
		now := t0.Add(time.Duration(i) * time.Second)
		s := r.silent([]pg.ReplicationConn{conn("b", skewed.Add(time.Duration(i)*time.Second)), conn("c", skewed)}, now, after)
		if s["b"] {
			t.Fatalf("b replies every second but is silent at +%ds", i)
		}
		if want := i > 5; s["c"] != want {
			t.Fatalf("c at +%ds: silent=%v, want %v", i, s["c"], want)
		}
	}
	// c reconnects (a new reply): no longer silent; a gone standby is forgotten.
	if s := r.silent([]pg.ReplicationConn{conn("c", skewed.Add(time.Minute))}, t0.Add(7*time.Second), after); len(s) != 0 || len(r.seen) != 1 {
		t.Fatalf("after c replied again and b left: silent %v, tracked %v", s, r.seen)
	}
}

func TestSilentAfterFollowsTheStatusInterval(t *testing.T) {
	cases := map[string]time.Duration{"": 30 * time.Second, "1s": 5 * time.Second, "1": 5 * time.Second, "500ms": 5 * time.Second,
		"10s": 30 * time.Second, "'2min'": 6 * time.Minute, "garbage": 30 * time.Second}
	for v, want := range cases {
		if got := silentAfter(map[string]string{"wal_receiver_status_interval": v}); got != want {
			t.Errorf("wal_receiver_status_interval=%q: %s, want %s", v, got, want)
		}
	}
}

func TestKeepRestartingSyncStandby(t *testing.T) {
	g := &consulkv.GroupView{Members: map[string]*consulkv.MemberStatus{
		"a": {Name: "a", Role: consulkv.RolePrimary, State: "running"},
		"b": {Name: "b", Role: consulkv.RoleReplica, State: StateRestarting},
		"c": {Name: "c", Role: consulkv.RoleReplica, State: "running"},
	}}
	for _, tc := range []struct {
		name             string
		picks, published []string
		n                int
		want             []string
	}{
		{name: "listed standby restarting on purpose stays picked", picks: nil, published: []string{"b"}, n: 1, want: []string{"b"}},
		{name: "it keeps its place ahead of another candidate", picks: []string{"c"}, published: []string{"b"}, n: 1, want: []string{"b"}},
		{name: "room for both", picks: []string{"c"}, published: []string{"b"}, n: 2, want: []string{"b", "c"}},
		{name: "a running standby that vanished is dropped as before", picks: nil, published: []string{"c"}, n: 1, want: nil},
		{name: "a restarting standby not listed is not added", picks: []string{"c"}, published: []string{"c"}, n: 1, want: []string{"c"}},
	} {
		got := keepRestarting(tc.picks, tc.published, g, tc.n)
		if !sameSet(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}
