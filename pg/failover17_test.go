package pg

import (
	"strings"
	"testing"
)

func TestUnitSlotSyncOnStandby(t *testing.T) {
	follow := &FollowTarget{Host: "10.0.0.2", Port: 5432, SlotName: "pgmesh_b"}
	logical := map[string]string{"wal_level": "logical"}
	for _, tc := range []struct {
		name   string
		major  int
		role   Role
		follow *FollowTarget
		params map[string]string
		want   bool
	}{
		{"17 replica following through a slot, wal_level logical", 17, Replica, follow, logical, true},
		{"18 too", 18, Replica, follow, map[string]string{"wal_level": " Logical "}, true},
		{"16 keeps slot copies", 16, Replica, follow, logical, false},
		{"15 keeps slot copies", 15, Replica, follow, logical, false},
		{"unknown version", 0, Replica, follow, logical, false},
		{"primary", 17, Primary, follow, logical, false},
		{"no upstream", 17, Replica, nil, logical, false},
		{"no physical slot", 17, Replica, &FollowTarget{Host: "h", Port: 1}, logical, false},
		{"wal_level replica: the worker would refuse", 17, Replica, follow, map[string]string{"wal_level": "replica"}, false},
	} {
		if got := SlotSyncOnStandby(tc.major, tc.role, tc.follow, tc.params); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
	if NativeFailoverSlots(160004) || !NativeFailoverSlots(170000) || !NativeFailoverSlots(170010) {
		t.Error("NativeFailoverSlots threshold is server_version_num 170000")
	}
}

func TestUnitRenderConfPG17(t *testing.T) {
	c, err := testConfig(t.TempDir()).withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	follow := &FollowTarget{Host: "10.0.0.2", Port: 5432, SlotName: "pgmesh_pg_1"}
	r17 := parseManagedConf(renderConfFor(c, Replica, follow, 17))
	if r17["sync_replication_slots"] != "on" || !strings.Contains(r17["primary_conninfo"], "dbname='postgres'") || r17["primary_slot_name"] != "pgmesh_pg_1" || r17["hot_standby_feedback"] != "on" {
		t.Fatalf("PostgreSQL 17 replica lacks what the slot sync worker needs: %v", r17)
	}
	r15 := parseManagedConf(renderConfFor(c, Replica, follow, 15))
	if _, ok := r15["sync_replication_slots"]; ok || strings.Contains(r15["primary_conninfo"], "dbname") {
		t.Fatalf("PostgreSQL 15 replica must render as before: %v", r15)
	}
	if string(renderConfFor(c, Replica, follow, 15)) != string(renderConf(c, Replica, follow)) {
		t.Fatal("renderConf changed for PostgreSQL 15")
	}
	p17 := parseManagedConf(renderConfFor(c, Primary, nil, 17))
	if _, ok := p17["sync_replication_slots"]; ok {
		t.Fatalf("a primary runs no slot sync worker: %v", p17)
	}
	c.Parameters["wal_level"] = "replica"
	if r := parseManagedConf(renderConfFor(c, Replica, follow, 17)); r["sync_replication_slots"] != "" {
		t.Fatalf("wal_level replica: no slot sync: %v", r)
	}
}

// Spock's failover-slot worker (PostgreSQL 15/16) gets a DSN to the leader
// that authenticates through a passfile, on replicas only.
func TestSpockSettings(t *testing.T) {
	c := Config{Name: "n1-b", DataDir: "/data/n1-b", ListenAddr: "127.0.0.1", Port: 5433,
		Superuser:   Credentials{User: "postgres", Password: `se:cr\et`},
		Replication: Credentials{User: "replicator", Password: "r"},
		Spock:       true}
	follow := &FollowTarget{Host: "10.0.0.1", Port: 5432, SlotName: "pgmesh_n1_b"}
	r15 := parseManagedConf(renderConfFor(c, Replica, follow, 15))
	want := "host='10.0.0.1' port='5432' user='postgres' dbname='postgres' application_name='n1-b-spock-slots' connect_timeout='5' passfile='/data/n1-b/pgmesh.pgpass'"
	if r15["spock.primary_dsn"] != want {
		t.Fatalf("spock.primary_dsn = %q\nwant %q", r15["spock.primary_dsn"], want)
	}
	if strings.Contains(r15["spock.primary_dsn"], "cr") {
		t.Fatal("the password leaked into spock.primary_dsn")
	}
	if p := parseManagedConf(renderConfFor(c, Primary, nil, 15)); p["spock.primary_dsn"] != "" {
		t.Fatalf("primary renders spock.primary_dsn %q", p["spock.primary_dsn"])
	}
	if r := parseManagedConf(renderConfFor(c, Replica, follow, 17)); r["spock.primary_dsn"] != "" || r["spock.use_native_failover_slots"] != "on" {
		t.Fatalf("PostgreSQL 17 replica: spock.primary_dsn %q (want none: native slot sync), spock.use_native_failover_slots %q", r["spock.primary_dsn"], r["spock.use_native_failover_slots"])
	}
	if p := parseManagedConf(renderConfFor(c, Primary, nil, 17)); p["spock.use_native_failover_slots"] != "on" {
		t.Fatal("PostgreSQL 17 primary without spock.use_native_failover_slots")
	}
	if r15["spock.use_native_failover_slots"] != "" {
		t.Fatal("PostgreSQL 15 renders spock.use_native_failover_slots")
	}
	c.Spock = false
	if r := parseManagedConf(renderConfFor(c, Replica, follow, 15)); r["spock.primary_dsn"] != "" {
		t.Fatal("native profile renders spock.primary_dsn")
	}
	if got := string(renderPassfile(Config{Superuser: Credentials{User: "post:gres", Password: `se:cr\et`}})); !strings.Contains(got, `*:*:*:post\:gres:se\:cr\\et`+"\n") {
		t.Fatalf("passfile %q", got)
	}
}
