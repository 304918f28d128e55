package agent

import (
	"strings"
	"testing"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/pg"
)

func TestSpockSlotsReady(t *testing.T) {
	pub := map[string]consulkv.LogicalSlot{"spk_db_n1_sub_n1_n2": {Plugin: "spock_output", Database: "db", ConfirmedFlush: 1000}}
	slot := func(lsn uint64, wal string) pg.ReplicationSlot {
		return pg.ReplicationSlot{Name: "spk_db_n1_sub_n1_n2", Type: "logical", ConfirmedFlush: pg.LSN(lsn), WALStatus: wal}
	}
	cases := []struct {
		name     string
		pub      map[string]consulkv.LogicalSlot
		local    []pg.ReplicationSlot
		replayed uint64
		ready    bool
		reason   string
	}{
		{name: "nothing published", pub: nil, ready: false, reason: "publishes no logical slots"},
		{name: "not synced yet", pub: pub, replayed: 2000, reason: "not synced here yet"},
		{name: "physical slot of the same name does not count", pub: pub, local: []pg.ReplicationSlot{{Name: "spk_db_n1_sub_n1_n2", Type: "physical"}}, replayed: 2000, reason: "not synced"},
		{name: "current", pub: pub, local: []pg.ReplicationSlot{slot(1000, "reserved")}, replayed: 2000, ready: true},
		{name: "ahead of the published position", pub: pub, local: []pg.ReplicationSlot{slot(1500, "reserved")}, replayed: 2000, ready: true},
		{name: "capped at this standby's replay position", pub: pub, local: []pg.ReplicationSlot{slot(800, "reserved")}, replayed: 800, ready: true},
		{name: "behind both", pub: pub, local: []pg.ReplicationSlot{slot(800, "reserved")}, replayed: 2000, reason: "behind the leader's published"},
		{name: "lost", pub: pub, local: []pg.ReplicationSlot{slot(1000, "lost")}, replayed: 2000, reason: "invalidated"},
	}
	for _, tc := range cases {
		ready, reason := spockSlotsReady(tc.pub, tc.local, tc.replayed)
		if ready != tc.ready || !strings.Contains(reason, tc.reason) {
			t.Errorf("%s: ready %v %q, want %v %q", tc.name, ready, reason, tc.ready, tc.reason)
		}
	}
}
