package routing

import (
	"slices"
	"sort"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/pgmesh/pgmesh/consulkv"
)

// A mesh may span Consul datacenters: each group lives in one, with its keys,
// sessions and services in that datacenter's Consul (KV is never replicated
// between datacenters). The renderer then reads every datacenter of the
// mesh through its local agent (?dc=) and orders the groups: the local
// group, the other groups of the local datacenter, then the other
// datacenters' groups by round-trip time from the local datacenter (Consul's
// network coordinates of the servers in the WAN pool), nearest first.

// Datacenter is one datacenter of the mesh as the renderer last saw it.
type Datacenter struct {
	Name string
	// Local is the datacenter the renderer's Consul agent is in.
	Local bool
	// RTT is the estimated round-trip time from the local datacenter
	// (median over pairs of their servers' WAN coordinates); 0 for the
	// local one and when HasRTT is false.
	RTT    time.Duration
	HasRTT bool
	// Reachable is false when the last read of the datacenter failed; its
	// groups are then the last ones read from it (if any), so routing keeps
	// their servers (HAProxy checks the agents directly).
	Reachable bool
	// Error is why the last read failed ("" when Reachable).
	Error string
}

// DatacenterView is one datacenter's read, what BuildMeshAcross merges.
type DatacenterView struct {
	// Name is the datacenter; "" for the local datacenter when its name is
	// unknown.
	Name string
	// View and Entries are the datacenter's KV view of the cluster and the
	// health entries of the cluster's service (the last good ones when Err
	// is set, or nil when it was never read).
	View    *consulkv.ClusterView
	Entries []*api.ServiceEntry
	// Err is the last read's error, if it failed.
	Err error
}

// BuildMeshAcross builds one Mesh from several datacenters' reads (BuildMesh
// for each, merged). localDC names the renderer's datacenter; order is the
// datacenters' preference order (OrderDatacenters; the local one first),
// rtt their round-trip times (missing: unknown). Each group carries its
// datacenter; a group found in two datacenters (it should live in one) is
// taken from the one that comes first in order, and the other is named in
// Mesh.Problems. BuildMeshAcross does no I/O.
func BuildMeshAcross(dcs []DatacenterView, localDC, localGroup string, order []string, rtt map[string]time.Duration) *Mesh {
	rank := map[string]int{}
	for i, dc := range order {
		rank[dc] = i
	}
	sorted := append([]DatacenterView(nil), dcs...)
	sort.SliceStable(sorted, func(i, j int) bool { return dcRank(rank, sorted[i].Name) < dcRank(rank, sorted[j].Name) })

	m := &Mesh{LocalGroup: localGroup, Datacenter: localDC}
	where := map[string]string{}
	kvGroups, kvRead := 0, false
	for _, d := range sorted {
		dc := Datacenter{Name: d.Name, Local: d.Name == localDC || d.Name == "", Reachable: d.Err == nil}
		if d.Err != nil {
			dc.Error = d.Err.Error()
		}
		if !dc.Local {
			dc.RTT, dc.HasRTT = rtt[d.Name]
		}
		m.Datacenters = append(m.Datacenters, dc)
		if d.View != nil {
			kvRead = true
			kvGroups += len(d.View.Groups)
		}
		part := BuildMesh(d.View, d.Entries, localGroup)
		if m.Cluster == "" {
			m.Cluster = part.Cluster
		}
		for _, g := range part.Groups {
			if first, dup := where[g.Name]; dup {
				m.Problems = append(m.Problems, "group "+g.Name+" is in datacenters "+first+" and "+d.Name+" (a group lives in one); routing uses "+first+"'s")
				continue
			}
			where[g.Name] = d.Name
			g.Datacenter = d.Name
			g.Local = g.Name == localGroup && localGroup != ""
			m.Groups = append(m.Groups, g)
		}
	}
	m.NoKV = kvRead && kvGroups == 0
	sort.Slice(m.Groups, func(i, j int) bool { return m.Groups[i].Name < m.Groups[j].Name })
	return m
}

func dcRank(rank map[string]int, dc string) int {
	if dc == "" {
		return -1 // the local datacenter, unnamed
	}
	if r, ok := rank[dc]; ok {
		return r
	}
	return len(rank)
}

// DatacenterRTTs estimates the round-trip time from the local datacenter to
// every other one from Consul's WAN coordinates (/v1/coordinate/datacenters):
// the median over every pair of a local server and a server there, pairs
// with incompatible coordinates left out. A datacenter with no usable pair
// is absent from the result, as is the local one.
func DatacenterRTTs(maps []*api.CoordinateDatacenterMap, local string) map[string]time.Duration {
	var mine []api.CoordinateEntry
	for _, dm := range maps {
		if dm != nil && dm.Datacenter == local {
			mine = append(mine, dm.Coordinates...)
		}
	}
	out := map[string]time.Duration{}
	for _, dm := range maps {
		if dm == nil || dm.Datacenter == local {
			continue
		}
		var ds []time.Duration
		for _, a := range mine {
			for _, b := range dm.Coordinates {
				if a.Coord == nil || b.Coord == nil || !a.Coord.IsCompatibleWith(b.Coord) || !a.Coord.IsValid() || !b.Coord.IsValid() {
					continue
				}
				ds = append(ds, a.Coord.DistanceTo(b.Coord))
			}
		}
		if len(ds) == 0 {
			continue
		}
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		med := ds[len(ds)/2]
		if len(ds)%2 == 0 {
			med = (ds[len(ds)/2-1] + ds[len(ds)/2]) / 2
		}
		if prev, ok := out[dm.Datacenter]; !ok || med < prev {
			out[dm.Datacenter] = med // a datacenter in several areas: its nearest
		}
	}
	return out
}

// RTTMargin is how much nearer a datacenter has to be before it overtakes
// one that came before it (at least RTTMarginMin): coordinates move a
// little all the time, and a routing order that followed every wobble
// would reload HAProxy for nothing.
const (
	RTTMargin    = 0.2
	RTTMarginMin = 2 * time.Millisecond
)

// OrderDatacenters returns the datacenters in preference order: the local
// one first, then by round-trip time (rtt), nearest first; datacenters of
// unknown round-trip time last, by name. prev is the previous order: a
// datacenter overtakes one that was before it only when it is nearer by
// more than the margin (RTTMargin, at least RTTMarginMin). OrderDatacenters
// is pure.
func OrderDatacenters(dcs []string, local string, rtt map[string]time.Duration, prev []string) []string {
	prevRank := map[string]int{}
	for i, dc := range prev {
		prevRank[dc] = i
	}
	var known, unknown []string
	seen := map[string]bool{}
	for _, dc := range dcs {
		if dc == "" || dc == local || seen[dc] {
			continue
		}
		seen[dc] = true
		if _, ok := rtt[dc]; ok {
			known = append(known, dc)
		} else {
			unknown = append(unknown, dc)
		}
	}
	// Start from the previous order (newcomers by round-trip time after
	// it), then let a datacenter move up past each neighbour it beats by
	// more than the margin: an insertion sort whose comparison has a dead
	// band, so the order only changes for a real difference.
	sort.SliceStable(known, func(i, j int) bool {
		ri, iok := prevRank[known[i]]
		rj, jok := prevRank[known[j]]
		switch {
		case iok && jok:
			return ri < rj
		case iok != jok:
			return iok
		}
		if rtt[known[i]] != rtt[known[j]] {
			return rtt[known[i]] < rtt[known[j]]
		}
		return known[i] < known[j]
	})
	for i := 1; i < len(known); i++ {
		for j := i; j > 0 && clearlyNearer(rtt[known[j]], rtt[known[j-1]]); j-- {
			known[j], known[j-1] = known[j-1], known[j]
		}
	}
	sort.Strings(unknown)
	var out []string
	if local != "" && (slices.Contains(dcs, local) || len(dcs) == 0) {
		out = append(out, local)
	}
	out = append(out, known...)
	return append(out, unknown...)
}

// clearlyNearer: a is nearer than b by more than the margin.
func clearlyNearer(a, b time.Duration) bool {
	margin := time.Duration(float64(b) * RTTMargin)
	if margin < RTTMarginMin {
		margin = RTTMarginMin
	}
	return a+margin < b
}

// DatacenterOf returns the named datacenter, or nil.
func (m *Mesh) DatacenterOf(name string) *Datacenter {
	for i := range m.Datacenters {
		if m.Datacenters[i].Name == name {
			return &m.Datacenters[i]
		}
	}
	return nil
}

// MultiDatacenter reports whether the mesh was read from more than one
// datacenter (templates print the datacenter order then).
func (m *Mesh) MultiDatacenter() bool { return len(m.Datacenters) > 1 }

// DatacenterNames returns the datacenters in preference order (local
// first).
func (m *Mesh) DatacenterNames() []string {
	out := make([]string, 0, len(m.Datacenters))
	for _, d := range m.Datacenters {
		out = append(out, d.Name)
	}
	return out
}

// Unreachable returns the datacenters whose last read failed.
func (m *Mesh) Unreachable() []Datacenter {
	var out []Datacenter
	for _, d := range m.Datacenters {
		if !d.Reachable {
			out = append(out, d)
		}
	}
	return out
}
