package agent

import (
	"reflect"
	"testing"

	"github.com/pgmesh/pgmesh/consulkv"
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
