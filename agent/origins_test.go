package agent

import (
	"reflect"
	"testing"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/pg"
)

func TestSkippedChanges(t *testing.T) {
	spockSlot := "spk_postgres_sa_sub_sb_from_sa"
	own := []pg.ReplicationOrigin{
		{Name: spockSlot, Slot: spockSlot, RemoteLSN: 0x1000},
		{Name: "pg_16400", Slot: "sub_from_n1", RemoteLSN: 0x5000},
	}
	for _, tc := range []struct {
		name  string
		prev  map[string]uint64
		own   []pg.ReplicationOrigin
		slots map[string]publishedSlot
		want  []consulkv.SkippedChanges
	}{
		{name: "standby had everything the old leader applied",
			prev: map[string]uint64{spockSlot: 0x1000, "pg_16400": 0x4000}, own: own,
			slots: map[string]publishedSlot{spockSlot: {group: "sa", confirmed: 0x9000}}},
		{name: "old leader applied more, publisher confirmed beyond it: skipped up to the old leader's position",
			prev: map[string]uint64{spockSlot: 0x2000}, own: own,
			slots: map[string]publishedSlot{spockSlot: {group: "sa", confirmed: 0x9000}},
			want:  []consulkv.SkippedChanges{{Origin: spockSlot, Slot: spockSlot, Publisher: "sa", From: 0x1000, To: 0x2000}}},
		{name: "publisher confirmed less than the old leader applied: skipped up to the confirmation",
			prev: map[string]uint64{spockSlot: 0x2000}, own: own,
			slots: map[string]publishedSlot{spockSlot: {group: "sa", confirmed: 0x1800}},
			want:  []consulkv.SkippedChanges{{Origin: spockSlot, Slot: spockSlot, Publisher: "sa", From: 0x1000, To: 0x1800}}},
		{name: "publisher confirmed no further than this member: it sends the rest again",
			prev: map[string]uint64{spockSlot: 0x2000}, own: own,
			slots: map[string]publishedSlot{spockSlot: {group: "sa", confirmed: 0x1000}}},
		{name: "native subscription: the origin maps to the subscription's slot",
			prev: map[string]uint64{"pg_16400": 0x7000}, own: own,
			slots: map[string]publishedSlot{"sub_from_n1": {group: "n1", confirmed: 0x6000}},
			want:  []consulkv.SkippedChanges{{Origin: "pg_16400", Slot: "sub_from_n1", Publisher: "n1", From: 0x5000, To: 0x6000}}},
		{name: "no group publishes the slot: the old leader's bound, publisher unknown",
			prev: map[string]uint64{spockSlot: 0x2000}, own: own,
			want: []consulkv.SkippedChanges{{Origin: spockSlot, Slot: spockSlot, From: 0x1000, To: 0x2000}}},
		{name: "two groups publish the slot name: publisher unknown",
			prev: map[string]uint64{spockSlot: 0x2000}, own: own,
			slots: map[string]publishedSlot{spockSlot: {group: "sa", confirmed: 0x1000, ambiguous: true}},
			want:  []consulkv.SkippedChanges{{Origin: spockSlot, Slot: spockSlot, From: 0x1000, To: 0x2000}}},
		{name: "an origin this member never applied anything of",
			prev:  map[string]uint64{"spk_postgres_sc_sub_sb_from_sc": 0x300},
			own:   []pg.ReplicationOrigin{{Name: "spk_postgres_sc_sub_sb_from_sc", Slot: "spk_postgres_sc_sub_sb_from_sc"}},
			slots: map[string]publishedSlot{"spk_postgres_sc_sub_sb_from_sc": {group: "sc", confirmed: 0x400}},
			want:  []consulkv.SkippedChanges{{Origin: "spk_postgres_sc_sub_sb_from_sc", Slot: "spk_postgres_sc_sub_sb_from_sc", Publisher: "sc", From: 0, To: 0x300}}},
		{name: "an origin not created here yet whose slot a group publishes: everything up to the old leader's position",
			prev: map[string]uint64{"spk_postgres_sc_sub_sb_from_sc": 0x300}, own: own,
			slots: map[string]publishedSlot{"spk_postgres_sc_sub_sb_from_sc": {group: "sc", confirmed: 0x400}},
			want:  []consulkv.SkippedChanges{{Origin: "spk_postgres_sc_sub_sb_from_sc", Slot: "spk_postgres_sc_sub_sb_from_sc", Publisher: "sc", From: 0, To: 0x300}}},
		{name: "an origin this member does not have and no group publishes (dropped since): nothing",
			prev: map[string]uint64{"pg_16401": 0x300}, own: own},
		{name: "ranges come out sorted by origin",
			prev: map[string]uint64{spockSlot: 0x2000, "pg_16400": 0x7000}, own: own,
			want: []consulkv.SkippedChanges{
				{Origin: "pg_16400", Slot: "sub_from_n1", From: 0x5000, To: 0x7000},
				{Origin: spockSlot, Slot: spockSlot, From: 0x1000, To: 0x2000}}},
		{name: "old leader published no origins", own: own},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := skippedChanges(tc.prev, tc.own, tc.slots); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestPublishedSlots(t *testing.T) {
	status := func(slots map[string]uint64) *consulkv.GroupView {
		ls := map[string]consulkv.LogicalSlot{}
		for n, c := range slots {
			ls[n] = consulkv.LogicalSlot{ConfirmedFlush: c}
		}
		return &consulkv.GroupView{Status: &consulkv.GroupStatus{LogicalSlots: ls}}
	}
	groups := map[string]*consulkv.GroupView{
		"sa": status(map[string]uint64{"a": 10, "shared": 1}),
		"sb": status(map[string]uint64{"own": 5}),
		"sc": status(map[string]uint64{"shared": 2}),
		"sd": {}, // no status yet
	}
	got := publishedSlots(groups, "sb")
	want := map[string]publishedSlot{"a": {group: "sa", confirmed: 10}, "shared": got["shared"]}
	if !got["shared"].ambiguous {
		t.Errorf("a slot name two groups publish must be ambiguous: %+v", got["shared"])
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v (the own group's slots left out)", got, want)
	}
}
