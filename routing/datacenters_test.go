package routing

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/serf/coordinate"
)

// coordAt is a coordinate whose distance to the origin is d (one axis).
func coordAt(d time.Duration) *coordinate.Coordinate {
	c := coordinate.NewCoordinate(coordinate.DefaultConfig())
	c.Vec[0] = d.Seconds()
	return c
}

func TestDatacenterRTTs(t *testing.T) {
	maps := []*api.CoordinateDatacenterMap{
		{Datacenter: "dc1", Coordinates: []api.CoordinateEntry{{Node: "s1.dc1", Coord: coordAt(0)}, {Node: "s2.dc1", Coord: coordAt(2 * time.Millisecond)}}},
		{Datacenter: "dc2", Coordinates: []api.CoordinateEntry{{Node: "s1.dc2", Coord: coordAt(40 * time.Millisecond)}}},
		{Datacenter: "dc3", Coordinates: []api.CoordinateEntry{{Node: "s1.dc3", Coord: coordAt(10 * time.Millisecond)}}},
		// No coordinate, and an incompatible one: no estimate.
		{Datacenter: "dc4", Coordinates: []api.CoordinateEntry{{Node: "s1.dc4"}}},
		{Datacenter: "dc5", Coordinates: []api.CoordinateEntry{{Node: "s1.dc5", Coord: &coordinate.Coordinate{Vec: []float64{1}}}}},
	}
	got := DatacenterRTTs(maps, "dc1")
	for dc, d := range got {
		got[dc] = d.Round(time.Millisecond) // each coordinate adds its minimum height (10µs)
	}
	want := map[string]time.Duration{"dc2": 39 * time.Millisecond, "dc3": 9 * time.Millisecond}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("rtts %v, want %v (median over the pairs: dc2 40 and 38 ms, dc3 10 and 8 ms)", got, want)
	}
	if got := DatacenterRTTs(maps, "dc9"); len(got) != 0 {
		t.Fatalf("a local datacenter without servers estimates nothing, got %v", got)
	}
}

func TestOrderDatacenters(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		name  string
		dcs   []string
		local string
		rtt   map[string]time.Duration
		prev  []string
		want  []string
	}{
		{"local first, then nearest", []string{"dc1", "dc2", "dc3"}, "dc2",
			map[string]time.Duration{"dc1": 80 * ms, "dc3": 20 * ms}, nil, []string{"dc2", "dc3", "dc1"}},
		{"unknown round-trip times last, by name", []string{"dc4", "dc3", "dc1", "dc2"}, "dc1",
			map[string]time.Duration{"dc3": 20 * ms}, nil, []string{"dc1", "dc3", "dc2", "dc4"}},
		{"a local datacenter outside the list still comes first", []string{"dc2", "dc3"}, "app",
			map[string]time.Duration{"dc2": 30 * ms, "dc3": 10 * ms}, nil, []string{"dc3", "dc2"}},
		{"equal times: by name", []string{"b", "a", "c"}, "c", map[string]time.Duration{"a": 5 * ms, "b": 5 * ms}, nil, []string{"c", "a", "b"}},
		{"within the margin the previous order stays", []string{"dc1", "dc2", "dc3"}, "dc1",
			map[string]time.Duration{"dc2": 41 * ms, "dc3": 40 * ms}, []string{"dc1", "dc2", "dc3"}, []string{"dc1", "dc2", "dc3"}},
		{"loopback noise does not reorder", []string{"dc1", "dc2", "dc3"}, "dc1",
			map[string]time.Duration{"dc2": 900 * time.Microsecond, "dc3": 100 * time.Microsecond}, []string{"dc1", "dc2", "dc3"}, []string{"dc1", "dc2", "dc3"}},
		{"clearly nearer overtakes", []string{"dc1", "dc2", "dc3"}, "dc1",
			map[string]time.Duration{"dc2": 60 * ms, "dc3": 40 * ms}, []string{"dc1", "dc2", "dc3"}, []string{"dc1", "dc3", "dc2"}},
		{"a newcomer goes by its time", []string{"dc1", "dc2", "dc3", "dc4"}, "dc1",
			map[string]time.Duration{"dc2": 60 * ms, "dc3": 80 * ms, "dc4": 5 * ms}, []string{"dc1", "dc2", "dc3"}, []string{"dc1", "dc4", "dc2", "dc3"}},
		{"a datacenter that left is dropped", []string{"dc1", "dc3"}, "dc1",
			map[string]time.Duration{"dc3": 80 * ms}, []string{"dc1", "dc2", "dc3"}, []string{"dc1", "dc3"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := OrderDatacenters(tc.dcs, tc.local, tc.rtt, tc.prev); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("order %v, want %v", got, tc.want)
			}
		})
	}
}

// meshAcross: group n1 in dc1 (local), n2 and n4 in dc2, n3 in dc3; dc3 is
// nearer than dc2.
func meshAcross(t *testing.T, localGroup string, dc2Err error) *Mesh {
	t.Helper()
	v1, e1 := views([]fixture{{group: "n1", name: "a", role: "primary", leader: true, kv: true, service: "primary", healthy: true, port: 5001}}, nil)
	v2, e2 := views([]fixture{
		{group: "n2", name: "a", role: "primary", leader: true, kv: true, service: "primary", healthy: true, port: 5002},
		{group: "n4", name: "a", role: "primary", leader: true, kv: true, service: "primary", healthy: true, port: 5004},
	}, nil)
	v3, e3 := views([]fixture{{group: "n3", name: "a", role: "primary", leader: true, kv: true, service: "primary", healthy: true, port: 5003}}, nil)
	rtt := map[string]time.Duration{"dc2": 80 * time.Millisecond, "dc3": 20 * time.Millisecond}
	order := OrderDatacenters([]string{"dc1", "dc2", "dc3"}, "dc1", rtt, nil)
	return BuildMeshAcross([]DatacenterView{
		{Name: "dc2", View: v2, Entries: e2, Err: dc2Err},
		{Name: "dc1", View: v1, Entries: e1},
		{Name: "dc3", View: v3, Entries: e3},
	}, "dc1", localGroup, order, rtt)
}

func groupOrder(gs []*Group) []string {
	var out []string
	for _, g := range gs {
		out = append(out, g.Name+"@"+g.Datacenter)
	}
	return out
}

func TestBuildMeshAcross(t *testing.T) {
	m := meshAcross(t, "", nil)
	if got := groupOrder(m.Groups); !reflect.DeepEqual(got, []string{"n1@dc1", "n2@dc2", "n3@dc3", "n4@dc2"}) {
		t.Fatalf("groups %v", got)
	}
	if got := groupOrder(m.LocalFirst()); !reflect.DeepEqual(got, []string{"n1@dc1", "n3@dc3", "n2@dc2", "n4@dc2"}) {
		t.Fatalf("LocalFirst %v: want the local datacenter, then dc3 (20ms), then dc2 (80ms), by name within", got)
	}
	if got := m.DatacenterNames(); !reflect.DeepEqual(got, []string{"dc1", "dc3", "dc2"}) || !m.MultiDatacenter() || m.Datacenter != "dc1" {
		t.Fatalf("datacenters %v", got)
	}
	if d := m.DatacenterOf("dc3"); d == nil || !d.HasRTT || d.RTT != 20*time.Millisecond || d.Local || !d.Reachable {
		t.Fatalf("dc3 %+v", d)
	}
	if d := m.DatacenterOf("dc1"); d == nil || !d.Local || d.HasRTT {
		t.Fatalf("dc1 %+v", d)
	}
	if got := m.Primaries().Ports(); !reflect.DeepEqual(got, []int{5001, 5003, 5002, 5004}) {
		t.Fatalf("primaries in write order %v", got)
	}

	// A local group in another datacenter than the renderer's still comes
	// first; then the renderer's datacenter.
	m = meshAcross(t, "n2", nil)
	if got := groupOrder(m.LocalFirst()); !reflect.DeepEqual(got, []string{"n2@dc2", "n1@dc1", "n3@dc3", "n4@dc2"}) {
		t.Fatalf("LocalFirst with local group n2: %v", got)
	}

	// An unreachable datacenter keeps the groups last read from it.
	m = meshAcross(t, "", errors.New("No path to datacenter"))
	if d := m.DatacenterOf("dc2"); d == nil || d.Reachable || d.Error != "No path to datacenter" {
		t.Fatalf("dc2 %+v", d)
	}
	if len(m.Unreachable()) != 1 || m.Group("n2") == nil {
		t.Fatalf("unreachable %v, n2 %v", m.Unreachable(), m.Group("n2"))
	}
}

func TestBuildMeshAcrossDuplicateAndEmpty(t *testing.T) {
	v1, e1 := views([]fixture{{group: "n1", name: "a", role: "primary", leader: true, kv: true, service: "primary", healthy: true}}, nil)
	v2, e2 := views([]fixture{{group: "n1", name: "b", role: "primary", leader: true, kv: true, service: "primary", healthy: true}}, nil)
	m := BuildMeshAcross([]DatacenterView{{Name: "dc2", View: v2, Entries: e2}, {Name: "dc1", View: v1, Entries: e1}}, "dc1", "", []string{"dc1", "dc2"}, nil)
	if len(m.Groups) != 1 || m.Groups[0].Datacenter != "dc1" || m.Groups[0].Members[0].Name != "a" || len(m.Problems) != 1 {
		t.Fatalf("a group in two datacenters: %v, problems %v", groupOrder(m.Groups), m.Problems)
	}
	// A datacenter without the cluster is normal; the mesh is only "no KV"
	// when no datacenter had any group.
	empty, _ := views(nil, nil)
	m = BuildMeshAcross([]DatacenterView{{Name: "dc1", View: v1, Entries: e1}, {Name: "dc2", View: empty}}, "dc1", "", []string{"dc1", "dc2"}, nil)
	if m.NoKV || m.Servers() != 1 {
		t.Fatalf("NoKV %v servers %d", m.NoKV, m.Servers())
	}
	m = BuildMeshAcross([]DatacenterView{{Name: "dc1", View: empty}, {Name: "dc2", Err: errors.New("down")}}, "dc1", "", []string{"dc1", "dc2"}, nil)
	if !m.NoKV {
		t.Fatal("no group anywhere: NoKV")
	}
}
