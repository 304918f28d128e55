package agent

import (
	"testing"

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
	if got := pickSyncStandbys(repl, g, "a", 1); len(got) != 1 || got[0] != "c" {
		t.Fatalf("the current sync standby must be kept (no churn), got %v", got)
	}
	if got := pickSyncStandbys(repl, g, "a", 3); len(got) != 2 || got[0] != "b" || got[1] != "c" {
		t.Fatalf("nosync members and non-members are never picked, got %v", got)
	}
	if got := pickSyncStandbys(nil, g, "a", 1); len(got) != 0 {
		t.Fatalf("no standbys: %v", got)
	}
}
