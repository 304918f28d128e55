package agent

import (
	"reflect"
	"testing"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/pg"
)

func TestProfileParameters(t *testing.T) {
	if p := profileParameters(consulkv.ReplicationNone, 3, 3, nil); p != nil {
		t.Fatalf("none enforces nothing, got %v", p)
	}
	p := profileParameters(consulkv.ReplicationNative, 3, 3, map[string]string{"max_worker_processes": "32"})
	want := map[string]string{"wal_level": "logical", "track_commit_timestamp": "on", "hot_standby_feedback": "on", "wal_log_hints": "on"}
	for k, v := range want {
		if p[k] != v {
			t.Errorf("%s = %q, want %q", k, p[k], v)
		}
	}
	if p["max_replication_slots"] != "20" || p["max_wal_senders"] != "20" {
		t.Errorf("3 members + 2x3 groups + 10 headroom rounds up to 20, got %s/%s", p["max_replication_slots"], p["max_wal_senders"])
	}
	if p["max_worker_processes"] != "32" {
		t.Errorf("a larger user value is kept, got %s", p["max_worker_processes"])
	}
	if _, ok := p["shared_preload_libraries"]; ok {
		t.Error("native must not preload spock")
	}
	s := profileParameters(consulkv.ReplicationSpock, 2, 50, map[string]string{"shared_preload_libraries": "'pg_stat_statements'"})
	if s["shared_preload_libraries"] != "pg_stat_statements,spock" {
		t.Errorf("spock is added to the existing libraries, got %q", s["shared_preload_libraries"])
	}
	if s["max_replication_slots"] != "120" {
		t.Errorf("headroom grows with the mesh: %s", s["max_replication_slots"])
	}
}

func TestEndpointsOf(t *testing.T) {
	cases := map[string][]string{
		"host=10.0.0.1 port=5433 user=x password='p w' dbname=postgres": {"10.0.0.1:5433"},
		"host=a,b port=1,2 target_session_attrs=read-write":             {"a:1", "b:2"},
		"host='h1,h2' port=5432":                                        {"h1:5432", "h2:5432"},
		"dbname=postgres host=db":                                       {"db:5432"},
		"password='host=evil port=1' host=real port=7":                  {"real:7"},
		"": nil,
	}
	for in, want := range cases {
		if got := endpointsOf(in); !reflect.DeepEqual(got, want) {
			t.Errorf("%q: got %v, want %v", in, got, want)
		}
	}
}

func TestDecidePrefersMembersWithLogicalSlotCopies(t *testing.T) {
	o := obs(func(o *Observation) {
		noLeader(o)
		o.Group.Status.LogicalSlots = map[string]consulkv.LogicalSlot{"sub_b": {Plugin: "pgoutput", Database: "postgres", ConfirmedFlush: 900}}
		o.Group.Members["c"].LogicalSlotsReady = true
	})
	if d := Decide(o); d.Action != ActNone {
		t.Fatalf("a member without slot copies raced although c has them: %s", d)
	}
	o.Local.LogicalSlotsReady = true
	if d := Decide(o); d.Action != ActAcquire {
		t.Fatalf("with its own copies it may race: %s", d)
	}
	o.Local.LogicalSlotsReady = false
	o.Peers["c"] = Peer{Reachable: false}
	if d := Decide(o); d.Action != ActAcquire {
		t.Fatalf("an unreachable member's copies do not block the race: %s", d)
	}
}

func TestUnitStandbySlotsFor(t *testing.T) {
	members := func(names ...string) map[string]*consulkv.MemberStatus {
		m := map[string]*consulkv.MemberStatus{}
		for _, n := range names {
			m[n] = &consulkv.MemberStatus{Name: n}
		}
		return m
	}
	rc := func(name, state, sync string) pg.ReplicationConn {
		return pg.ReplicationConn{ApplicationName: name, State: state, SyncState: sync}
	}
	nofail := members("a", "b", "c")
	nofail["c"].Tags.NoFailover = true
	for _, tc := range []struct {
		name string
		g    *consulkv.GroupView
		mode string
		repl []pg.ReplicationConn
		want string
	}{
		{"no group", nil, consulkv.SyncOff, []pg.ReplicationConn{rc("b", "streaming", "async")}, ""},
		{"async: streaming standbys, sorted", &consulkv.GroupView{Members: members("a", "b", "c")}, consulkv.SyncOff,
			[]pg.ReplicationConn{rc("c", "streaming", "async"), rc("b", "streaming", "async")}, "pgmesh_b,pgmesh_c"},
		{"async: a catching-up or dead standby does not gate", &consulkv.GroupView{Members: members("a", "b", "c")}, consulkv.SyncOff,
			[]pg.ReplicationConn{rc("b", "catchup", "async")}, ""},
		{"async: nofailover is never promoted, so never waited for", &consulkv.GroupView{Members: nofail}, consulkv.SyncOff,
			[]pg.ReplicationConn{rc("b", "streaming", "async"), rc("c", "streaming", "async")}, "pgmesh_b"},
		{"async: non-members (pg_basebackup, other tools) and self are ignored", &consulkv.GroupView{Members: members("a", "b")}, "",
			[]pg.ReplicationConn{rc("pg_basebackup", "streaming", "async"), rc("a", "streaming", "async"), rc("b", "streaming", "async"), rc("b", "streaming", "async")}, "pgmesh_b"},
		{"sync: exactly the sync key", &consulkv.GroupView{Members: members("a", "b", "c"), Sync: &consulkv.SyncState{Leader: "a", SyncStandbys: []string{"c"}}}, consulkv.SyncOn,
			[]pg.ReplicationConn{rc("b", "streaming", "async"), rc("c", "streaming", "sync")}, "pgmesh_c"},
		{"sync: a key member stays until it leaves the key", &consulkv.GroupView{Members: members("a", "b", "c"), Sync: &consulkv.SyncState{Leader: "a", SyncStandbys: []string{"c"}}}, consulkv.SyncOn,
			[]pg.ReplicationConn{rc("b", "streaming", "async")}, "pgmesh_c"},
		{"sync: a standby PostgreSQL made synchronous is gated before it enters the key", &consulkv.GroupView{Members: members("a", "b", "c"), Sync: &consulkv.SyncState{Leader: "a", SyncStandbys: []string{}}}, consulkv.SyncStrict,
			[]pg.ReplicationConn{rc("b", "streaming", "sync"), rc("c", "streaming", "potential")}, "pgmesh_b"},
		{"sync: another leader's key counts for nothing", &consulkv.GroupView{Members: members("a", "b", "c"), Sync: &consulkv.SyncState{Leader: "b", SyncStandbys: []string{"c"}}}, consulkv.SyncOn,
			[]pg.ReplicationConn{rc("c", "streaming", "async")}, ""},
		{"sync: empty key, nobody promotable", &consulkv.GroupView{Members: members("a", "b")}, consulkv.SyncOn,
			[]pg.ReplicationConn{rc("b", "streaming", "async")}, ""},
	} {
		if got := standbySlotsFor(tc.g, "a", tc.mode, tc.repl, nil); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}

// A standby whose replies stopped (a cut network: PostgreSQL shows it
// "streaming" until wal_sender_timeout) no longer holds logical walsenders
// back, in either mode.
func TestUnitStandbySlotsForSkipsSilentStandbys(t *testing.T) {
	g := &consulkv.GroupView{Members: map[string]*consulkv.MemberStatus{"a": {Name: "a"}, "b": {Name: "b"}, "c": {Name: "c"}},
		Sync: &consulkv.SyncState{Leader: "a", SyncStandbys: []string{"b"}}}
	repl := []pg.ReplicationConn{{ApplicationName: "b", State: "streaming", SyncState: "sync"}, {ApplicationName: "c", State: "streaming", SyncState: "async"}}
	silent := map[string]bool{"b": true}
	if got := standbySlotsFor(g, "a", consulkv.SyncOff, repl, silent); got != "pgmesh_c" {
		t.Errorf("async: got %q, want pgmesh_c", got)
	}
	if got := standbySlotsFor(g, "a", consulkv.SyncOn, repl, silent); got != "" {
		t.Errorf("sync: got %q, want nothing (the silent sync standby leaves the key in the same round)", got)
	}
}

func TestUnitNativeSlotsReady(t *testing.T) {
	pub := map[string]consulkv.LogicalSlot{"sub_b": {Plugin: "pgoutput", Database: "postgres", ConfirmedFlush: 1000}}
	good := pg.LogicalSlot17{Name: "sub_b", Synced: true, Failover: true, ConfirmedFlush: 1000, WALStatus: "reserved"}
	with := func(f func(*pg.LogicalSlot17)) []pg.LogicalSlot17 {
		s := good
		f(&s)
		return []pg.LogicalSlot17{s}
	}
	for _, tc := range []struct {
		name  string
		pub   map[string]consulkv.LogicalSlot
		local []pg.LogicalSlot17
		ready bool
	}{
		{"nothing published", nil, []pg.LogicalSlot17{good}, false},
		{"synced, failover, valid, current", pub, []pg.LogicalSlot17{good}, true},
		{"ahead of the published position", pub, with(func(s *pg.LogicalSlot17) { s.ConfirmedFlush = 2000 }), true},
		{"missing", pub, nil, false},
		{"behind the leader", pub, with(func(s *pg.LogicalSlot17) { s.ConfirmedFlush = 999 }), false},
		{"not synced (a local slot of the same name)", pub, with(func(s *pg.LogicalSlot17) { s.Synced = false }), false},
		{"no failover flag", pub, with(func(s *pg.LogicalSlot17) { s.Failover = false }), false},
		{"still temporary", pub, with(func(s *pg.LogicalSlot17) { s.Temporary = true }), false},
		{"invalidated", pub, with(func(s *pg.LogicalSlot17) { s.Invalidated = "rows_removed" }), false},
		{"WAL lost", pub, with(func(s *pg.LogicalSlot17) { s.WALStatus = "lost" }), false},
		{"one of two missing", map[string]consulkv.LogicalSlot{"sub_b": pub["sub_b"], "sub_c": {ConfirmedFlush: 10}}, []pg.LogicalSlot17{good}, false},
	} {
		ready, reason := nativeSlotsReady(tc.pub, tc.local)
		if ready != tc.ready || ready != (reason == "") {
			t.Errorf("%s: ready %v (%q), want %v", tc.name, ready, reason, tc.ready)
		}
	}
}

func TestUnitNonFailoverSlots(t *testing.T) {
	got := nonFailoverSlots([]pg.LogicalSlot17{{Name: "z", Failover: false}, {Name: "a"}, {Name: "ok", Failover: true}, {Name: "tmp", Temporary: true}})
	if !reflect.DeepEqual(got, []string{"a", "z"}) {
		t.Fatalf("got %v", got)
	}
}
