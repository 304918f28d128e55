package consulkv

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestDecodeRejectsGarbageNamingTheKey(t *testing.T) {
	cases := map[string]string{
		"empty":          "",
		"not json":       "{{{",
		"trailing":       `{"version":1,"member":"a"} x`,
		"wrong version":  `{"version":7,"member":"a"}`,
		"no version":     `{"member":"a"}`,
		"bad name":       `{"version":1,"member":"a b"}`,
		"wrong type":     `{"version":"1","member":"a"}`,
		"array":          `[1,2]`,
		"null":           `null`,
		"leading dash":   `{"version":1,"member":"-a"}`,
		"name too long":  `{"version":1,"member":"` + strings.Repeat("a", 64) + `"}`,
		"json number":    `42`,
		"unicode letter": `{"version":1,"member":"é"}`,
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			err := Decode("pgmesh/c/groups/g/leader", []byte(in), &Leader{})
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("want *DecodeError, got %v", err)
			}
			if de.Key != "pgmesh/c/groups/g/leader" || !strings.Contains(err.Error(), "pgmesh/c/groups/g/leader") {
				t.Fatalf("error does not name the key: %v", err)
			}
		})
	}
}

func TestDecodeRoundTrip(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	m := &MemberStatus{Version: 1, Name: "n1-a", Group: "n1", Role: RolePrimary, State: "running", Port: 5432, Timeline: 3, WriteLSN: 99, UpdatedAt: at, Tags: MemberTags{FailoverPriority: 2}}
	data, err := Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	got := &MemberStatus{}
	if err := Decode("k", data, got); err != nil {
		t.Fatal(err)
	}
	if got.Name != m.Name || got.Timeline != 3 || got.WriteLSN != 99 || !got.UpdatedAt.Equal(at) || got.Tags.FailoverPriority != 2 {
		t.Fatalf("round trip lost data: %+v", got)
	}
	if _, err := Encode(&MemberStatus{Version: 1, Name: "x", Role: "boss"}); err == nil {
		t.Fatal("Encode accepted an invalid role")
	}
}

func TestClusterConfigValidation(t *testing.T) {
	good := `{"version":1,"ttl":30,"loop_wait":"10s","retry_timeout":10}`
	cfg := &ClusterConfig{}
	if err := Decode("cfg", []byte(good), cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.TTL.D() != 30*time.Second || cfg.LoopWait.D() != 10*time.Second {
		t.Fatalf("durations: %+v", cfg)
	}
	bad := map[string]string{
		`{"version":1,"ttl":10,"loop_wait":5,"retry_timeout":5}`:    "timing rule",
		`{"version":1,"ttl":20,"loop_wait":10,"retry_timeout":5}`:   "loop_wait 10s: must be at most 7s",
		`{"version":1,"ttl":4,"loop_wait":2,"retry_timeout":1}`:     "loop_wait 2s: must be at most 1.4s",
		`{"version":1,"ttl":1}`:                                     "ttl",
		`{"version":1,"ttl":"ten"}`:                                 "duration",
		`{"version":1,"lock_delay":"2m"}`:                           "lock_delay",
		`{"version":1,"parameters":{"bad name":"1"}}`:               "parameters",
		`{"version":1,"loop_wait":"1ms"}`:                           "loop_wait",
		`{"version":1,"ttl":30,"loop_wait":1,"retry_timeout":0.01}`: "retry_timeout",
	}
	for in, field := range bad {
		err := Decode("cfg", []byte(in), &ClusterConfig{})
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: want error naming %q, got %v", in, field, err)
		}
	}
}

func TestFailoverRequestValidation(t *testing.T) {
	if err := (&FailoverRequest{Version: 1, Kind: KindSwitchover}).Validate(); err == nil {
		t.Error("switchover without leader accepted")
	}
	if err := (&FailoverRequest{Version: 1, Kind: KindFailover, Leader: "a"}).Validate(); err == nil {
		t.Error("failover without candidate accepted")
	}
	if err := (&FailoverRequest{Version: 1, Kind: "coup", Leader: "a"}).Validate(); err == nil {
		t.Error("unknown kind accepted")
	}
	if err := (&FailoverRequest{Version: 1, Kind: KindSwitchover, Leader: "a", Candidate: "b"}).Validate(); err != nil {
		t.Error(err)
	}
}

func TestLeaseArithmetic(t *testing.T) {
	o := LockOptions{TTL: 20 * time.Second}
	if o.SessionTTL() != 10*time.Second {
		t.Fatalf("session ttl %s", o.SessionTTL())
	}
	if o.LeaseDuration() != 8*time.Second {
		t.Fatalf("lease %s", o.LeaseDuration())
	}
	o = LockOptions{TTL: 2 * time.Second, Margin: 5 * time.Second}
	if o.LeaseDuration() != 500*time.Millisecond {
		t.Fatalf("margin larger than ttl must be capped, lease %s", o.LeaseDuration())
	}
}

func TestDecodeGroupTreatsGarbageAsAbsent(t *testing.T) {
	c, err := New(Config{Cluster: "c"})
	if err != nil {
		t.Fatal(err)
	}
	pairs := kvPairs(map[string]string{
		"pgmesh/c/groups/g/leader":       "garbage",
		"pgmesh/c/groups/g/members/a":    `{"version":1,"name":"a","role":"replica"}`,
		"pgmesh/c/groups/g/members/b":    `{"version":1,"name":"zzz","role":"replica"}`,
		"pgmesh/c/groups/g/members/c":    `{`,
		"pgmesh/c/groups/g/failover":     `{"version":1,"kind":"nope"}`,
		"pgmesh/c/groups/g/initialize":   `{"version":1,"member":"a","system_id":"123"}`,
		"pgmesh/c/groups/g/unknown-leaf": `whatever`,
	}, map[string]string{"pgmesh/c/groups/g/leader": "sess-1"})
	g := c.DecodeGroup("g", 7, pairs)
	if g.Leader == nil || g.Leader.Member != "" || g.Leader.Session != "sess-1" {
		t.Fatalf("a locked leader key with garbage must stay locked with unknown member: %+v", g.Leader)
	}
	if len(g.Members) != 1 || g.Members["a"] == nil {
		t.Fatalf("members: %+v", g.Members)
	}
	if g.Failover != nil || g.FailoverIndex == 0 {
		t.Fatalf("failover should be absent but indexed: %+v %d", g.Failover, g.FailoverIndex)
	}
	if g.Initialize == nil || g.Initialize.SystemID != "123" {
		t.Fatalf("initialize: %+v", g.Initialize)
	}
	if len(g.Problems) != 4 {
		t.Fatalf("want 4 problems, got %v", g.Problems)
	}
}
