package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/pgmesh/pgmesh/consulkv"
)

func TestParseDatacenters(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []string
		bad  bool
	}{
		{"", nil, false},
		{"dc1", []string{"dc1"}, false},
		{" dc2, dc1,,dc2 ", []string{"dc2", "dc1"}, false},
		{"dc1,eu/west", nil, true},
		{"dc1,a.b", nil, true},
	} {
		got, err := parseDatacenters(c.in)
		if (err != nil) != c.bad || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%q: %v %v, want %v (error: %v)", c.in, got, err, c.want, c.bad)
		}
	}
}

// TestChooseDatacenters: the flag wins, then the cluster config's list,
// then the catalog when it knows more than one datacenter, then the local
// datacenter alone (named when the catalog named it).
func TestChooseDatacenters(t *testing.T) {
	withDCs := &consulkv.ClusterConfig{Version: 1, Datacenters: []string{"dc1", "dc2"}}
	without := &consulkv.ClusterConfig{Version: 1}
	for _, c := range []struct {
		name    string
		flag    []string
		cfg     *consulkv.ClusterConfig
		catalog []string
		want    []string
		source  string
	}{
		{"flag over config and catalog", []string{"dc3"}, withDCs, []string{"dc1", "dc2", "dc3"}, []string{"dc3"}, consulkv.DatacentersExplicit},
		{"config over catalog", nil, withDCs, []string{"dc1", "dc2", "dc3"}, []string{"dc1", "dc2"}, consulkv.DatacentersConfig},
		{"config even when the catalog is unknown", nil, withDCs, nil, []string{"dc1", "dc2"}, consulkv.DatacentersConfig},
		{"catalog when the config lists none, sorted", nil, without, []string{"dc2", "dc3", "dc1"}, []string{"dc1", "dc2", "dc3"}, consulkv.DatacentersCatalog},
		{"catalog when the config is unreadable", nil, nil, []string{"dc2", "dc1"}, []string{"dc1", "dc2"}, consulkv.DatacentersCatalog},
		{"one datacenter: the local one, named", nil, without, []string{"dc1"}, []string{"dc1"}, consulkv.DatacentersLocal},
		{"nothing known: the local one, unnamed", nil, nil, nil, nil, consulkv.DatacentersLocal},
	} {
		got, source := consulkv.ChooseDatacenters(c.flag, c.cfg, c.catalog)
		if !reflect.DeepEqual(got, c.want) || source != c.source {
			t.Errorf("%s: %v from %s, want %v from %s", c.name, got, source, c.want, c.source)
		}
	}
}

// fakeMesh is a meshSource over fixed views; inDC calls wait for each
// other (up to a second) so a serial reader would be caught.
type fakeMesh struct {
	local      *consulkv.ClusterView
	localErr   error
	catalog    []string
	catalogErr error
	dcs        map[string]*consulkv.ClusterView // absent: "No path to datacenter"
	parallel   int                              // inDC calls expected to run at once

	mu                   sync.Mutex
	localCalls, catCalls int
	inDCCalls            []string
	started              int
	all                  chan struct{}
	serial               bool
}

func (f *fakeMesh) source() meshSource {
	f.all = make(chan struct{})
	return meshSource{
		local: func(context.Context) (*consulkv.ClusterView, error) {
			f.mu.Lock()
			f.localCalls++
			f.mu.Unlock()
			return f.local, f.localErr
		},
		catalog: func(context.Context) ([]string, error) {
			f.mu.Lock()
			f.catCalls++
			f.mu.Unlock()
			return f.catalog, f.catalogErr
		},
		inDC: func(_ context.Context, dc string) (*consulkv.ClusterView, error) {
			f.mu.Lock()
			f.inDCCalls = append(f.inDCCalls, dc)
			f.started++
			if f.started == f.parallel {
				close(f.all)
			}
			f.mu.Unlock()
			select {
			case <-f.all:
			case <-time.After(time.Second):
				f.mu.Lock()
				f.serial = true
				f.mu.Unlock()
			}
			if v := f.dcs[dc]; v != nil {
				return v, nil
			}
			return nil, errors.New("No path to datacenter")
		},
	}
}

func TestReadMesh(t *testing.T) {
	cfgDCs := &consulkv.ClusterConfig{Version: 1, Datacenters: []string{"dc1", "dc2", "dc3"}}
	local := &consulkv.ClusterView{Config: &consulkv.ClusterConfig{Version: 1}, Groups: map[string]*consulkv.GroupView{"g1": {Name: "g1"}}}
	localListing := &consulkv.ClusterView{Config: cfgDCs, Groups: map[string]*consulkv.GroupView{"g1": {Name: "g1"}}}
	dc1, dc2 := &consulkv.ClusterView{}, &consulkv.ClusterView{}
	for _, c := range []struct {
		name   string
		flag   []string
		mesh   *fakeMesh
		want   []string // datacenter names read, in order ("" for the unnamed local one)
		failed []string
		source string
		local  bool // the local read is the result (no ?dc= read)
	}{
		{"flag: only the named datacenters, no local or catalog read",
			[]string{"dc2", "dc1"}, &fakeMesh{local: localListing, catalog: []string{"dc1", "dc2", "dc3"}, dcs: map[string]*consulkv.ClusterView{"dc1": dc1, "dc2": dc2}, parallel: 2},
			[]string{"dc2", "dc1"}, nil, consulkv.DatacentersExplicit, false},
		{"config: its datacenters, one unreachable",
			nil, &fakeMesh{local: localListing, catalog: []string{"dc1", "dc2", "dc3", "dc4"}, dcs: map[string]*consulkv.ClusterView{"dc1": dc1, "dc2": dc2}, parallel: 3},
			[]string{"dc1", "dc2", "dc3"}, []string{"dc3"}, consulkv.DatacentersConfig, false},
		{"catalog: every datacenter when it lists several",
			nil, &fakeMesh{local: local, catalog: []string{"dc2", "dc1"}, dcs: map[string]*consulkv.ClusterView{"dc1": dc1, "dc2": dc2}, parallel: 2},
			[]string{"dc1", "dc2"}, nil, consulkv.DatacentersCatalog, false},
		{"catalog too when the local read failed",
			nil, &fakeMesh{localErr: errors.New("refused"), catalog: []string{"dc2", "dc1"}, dcs: map[string]*consulkv.ClusterView{"dc1": dc1, "dc2": dc2}, parallel: 2},
			[]string{"dc1", "dc2"}, nil, consulkv.DatacentersCatalog, false},
		{"one datacenter: the local read, named",
			nil, &fakeMesh{local: local, catalog: []string{"dc1"}},
			[]string{"dc1"}, nil, consulkv.DatacentersLocal, true},
		{"catalog unanswered: the local read, unnamed",
			nil, &fakeMesh{local: local, catalogErr: errors.New("timeout")},
			[]string{""}, nil, consulkv.DatacentersLocal, true},
		{"local read failed, one datacenter: its error",
			nil, &fakeMesh{localErr: errors.New("connection refused"), catalog: []string{"dc1"}},
			[]string{"dc1"}, []string{"dc1"}, consulkv.DatacentersLocal, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := c.mesh
			views, source := readMesh(context.Background(), f.source(), c.flag)
			var names, failed []string
			for _, v := range views {
				names = append(names, v.Name)
				if v.Err != nil {
					failed = append(failed, v.Name)
				} else if v.View == nil {
					t.Errorf("%s: neither a view nor an error", v.Name)
				}
			}
			if !reflect.DeepEqual(names, c.want) || !reflect.DeepEqual(failed, c.failed) || source != c.source {
				t.Errorf("read %v (failed %v) from %s, want %v (failed %v) from %s", names, failed, source, c.want, c.failed, c.source)
			}
			if c.flag != nil && (f.localCalls != 0 || f.catCalls != 0) {
				t.Errorf("--datacenters given, yet %d local and %d catalog reads", f.localCalls, f.catCalls)
			}
			if c.local {
				if len(f.inDCCalls) != 0 || f.localCalls != 1 {
					t.Errorf("local only: %d local reads, ?dc= reads %v", f.localCalls, f.inDCCalls)
				}
				if views[0].Err == nil && views[0].View != f.local {
					t.Errorf("the local view is not the one read")
				}
			} else {
				got := slices.Clone(f.inDCCalls)
				slices.Sort(got)
				want := slices.Clone(c.want)
				slices.Sort(want)
				if !reflect.DeepEqual(got, want) {
					t.Errorf("?dc= reads %v, want each of %v once", f.inDCCalls, c.want)
				}
				if f.serial {
					t.Errorf("datacenters were read one after the other, not in parallel")
				}
			}
		})
	}
}

// dcView2 is a second datacenter: group g3 with a leader and a replica,
// under a config that pauses the datacenter's cluster copy when paused.
func dcView2(paused bool) *consulkv.ClusterView {
	p1 := member("p1", consulkv.RolePrimary, 2, 0x1_0300_0000, 0, 0)
	p2 := member("p2", consulkv.RoleReplica, 2, 0, 0x1_0300_0000, 0x1_0300_0000)
	p1.Host, p2.Host = "10.2.0.1", "10.2.0.2"
	p1.SessionChecks, p2.SessionChecks = []string{"serfHealth"}, []string{"serfHealth"}
	return &consulkv.ClusterView{
		Config: &consulkv.ClusterConfig{Version: 1, Paused: paused},
		Groups: map[string]*consulkv.GroupView{"g3": {
			Name:       "g3",
			Initialize: &consulkv.Initialize{Version: 1, Member: "p1", SystemID: "7300000000000000003"},
			Leader:     &consulkv.LeaderInfo{Member: "p1", Session: "s3"},
			Members:    map[string]*consulkv.MemberStatus{"p1": p1, "p2": p2},
		}},
	}
}

// TestMeshStatus renders merged datacenters with status's own renderers:
// the table's group headers and footers, and the JSON fields.
func TestMeshStatus(t *testing.T) {
	unreachable := dcView{Name: "dc3", Err: errors.New("No path to datacenter")}
	var today bytes.Buffer
	renderStatus(&today, buildStatus("prod", testView(), "", defaultDetectionGoal))
	for _, c := range []struct {
		name    string
		views   []dcView
		only    string
		want    []string // lines of the table
		notWant []string // substrings
		last    string   // the table's last line
		json    func(t *testing.T, doc map[string]any, groups map[string]map[string]any)
	}{
		{
			name:  "one datacenter: the table as before, the datacenter in JSON",
			views: []dcView{{Name: "dc1", View: testView()}},
			want:  []string{"Group: g1 (system id 7300000000000000001)", "Group: g2 (system id not initialized)"},
			json: func(t *testing.T, doc map[string]any, groups map[string]map[string]any) {
				if groups["g1"]["datacenter"] != "dc1" || groups["g2"]["datacenter"] != "dc1" {
					t.Errorf("datacenter per group: %v / %v", groups["g1"]["datacenter"], groups["g2"]["datacenter"])
				}
				if _, ok := doc["unreachable_datacenters"]; ok {
					t.Errorf("unreachable_datacenters with none unreachable")
				}
			},
		},
		{
			name:    "local datacenter unnamed: no datacenter anywhere",
			views:   []dcView{{View: testView()}},
			want:    []string{"Group: g1 (system id 7300000000000000001)"},
			notWant: []string{"atacenter"},
			json: func(t *testing.T, doc map[string]any, groups map[string]map[string]any) {
				if _, ok := groups["g1"]["datacenter"]; ok {
					t.Errorf("datacenter field without a known datacenter")
				}
				if _, ok := doc["datacenters"]; ok {
					t.Errorf("datacenters without a known datacenter")
				}
			},
		},
		{
			name:  "two datacenters read, one unreachable",
			views: []dcView{{Name: "dc1", View: testView()}, {Name: "dc2", View: dcView2(true)}, unreachable},
			want: []string{
				"Group: g1 (datacenter dc1, system id 7300000000000000001)",
				"Group: g2 (datacenter dc1, system id not initialized)",
				"Group: g3 (datacenter dc2, system id 7300000000000000003)",
				"p1      10.2.0.1:5432  Leader   running    2   1/3000000",
				// dc2's copy of the config pauses dc2's groups only.
				"Group g3 is paused: no automatic failover, start or stop.",
				"Group g2 is paused: no automatic failover, start or stop.",
				`Consul problem: key "pgmesh/prod/groups/g2/members/x": invalid JSON: unexpected EOF`,
			},
			notWant: []string{"Cluster is paused", "Group g1 is paused"},
			last:    "Datacenter dc3: unreachable (No path to datacenter)",
			json: func(t *testing.T, doc map[string]any, groups map[string]map[string]any) {
				if groups["g1"]["datacenter"] != "dc1" || groups["g3"]["datacenter"] != "dc2" || groups["g3"]["paused"] != true {
					t.Errorf("groups: g1 %v, g3 %v", groups["g1"], groups["g3"])
				}
				if u := doc["unreachable_datacenters"]; !reflect.DeepEqual(u, map[string]any{"dc3": "No path to datacenter"}) {
					t.Errorf("unreachable_datacenters %v", u)
				}
				if d := doc["datacenters"]; !reflect.DeepEqual(d, []any{"dc1", "dc2", "dc3"}) {
					t.Errorf("datacenters %v", d)
				}
				if p := doc["problems"].([]any); len(p) != 1 || !strings.HasPrefix(p[0].(string), "datacenter dc1: key ") {
					t.Errorf("problems %v", p)
				}
			},
		},
		{
			name:    "every datacenter paused: the cluster is",
			views:   []dcView{{Name: "dc1", View: &consulkv.ClusterView{Config: &consulkv.ClusterConfig{Version: 1, Paused: true}}}, {Name: "dc2", View: dcView2(true)}},
			want:    []string{"Cluster is paused: no automatic failover, start or stop in any group."},
			notWant: []string{"Group g3 is paused"},
		},
		{
			name:    "--group in the second datacenter",
			views:   []dcView{{Name: "dc1", View: testView()}, {Name: "dc2", View: dcView2(false)}, unreachable},
			only:    "g3",
			want:    []string{"Group: g3 (datacenter dc2, system id 7300000000000000003)"},
			notWant: []string{"Group: g1", "Consul problem", "paused"},
			last:    "Datacenter dc3: unreachable (No path to datacenter)",
			json: func(t *testing.T, doc map[string]any, groups map[string]map[string]any) {
				if len(groups) != 1 || groups["g3"]["datacenter"] != "dc2" {
					t.Errorf("groups %v", groups)
				}
			},
		},
		{
			name: "a group found in two datacenters: shown once, said",
			views: []dcView{{Name: "dc1", View: dcView2(false)}, {Name: "dc2", View: func() *consulkv.ClusterView {
				v := dcView2(false)
				v.Groups["g3"].Initialize.SystemID = "7300000000000000009"
				return v
			}()}},
			want: []string{
				"Group: g3 (datacenter dc1, system id 7300000000000000003)",
				"Consul problem: group g3 is in datacenters dc1 and dc2 (a group lives in one); showing dc1's",
			},
			notWant: []string{"7300000000000000009"},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			doc := buildMeshStatus("prod", c.views, c.only, defaultDetectionGoal)
			var b bytes.Buffer
			renderStatus(&b, doc)
			out := b.String()
			t.Log("\n" + out)
			lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
			if lines[0] != "Cluster: prod" {
				t.Errorf("header %q", lines[0])
			}
			for _, w := range c.want {
				if !slices.Contains(lines, w) {
					t.Errorf("no line %q", w)
				}
			}
			for _, nw := range c.notWant {
				if strings.Contains(out, nw) {
					t.Errorf("output has %q", nw)
				}
			}
			if c.last != "" && lines[len(lines)-1] != c.last {
				t.Errorf("last line %q, want %q", lines[len(lines)-1], c.last)
			}
			if len(c.views) == 1 && out != today.String() {
				t.Errorf("one datacenter: the table differs from status without datacenters:\n%s\nwant:\n%s", out, today.String())
			}
			b.Reset()
			if err := writeDoc(&b, "json", doc); err != nil {
				t.Fatal(err)
			}
			var back map[string]any
			if err := json.Unmarshal(b.Bytes(), &back); err != nil {
				t.Fatal(err)
			}
			groups := map[string]map[string]any{}
			for _, g := range back["groups"].([]any) {
				groups[g.(map[string]any)["name"].(string)] = g.(map[string]any)
			}
			if c.json != nil {
				c.json(t, back, groups)
			}
		})
	}
}

// TestMeshReplicationAcrossDatacenters: a subscription in one datacenter
// is matched to its publisher in another.
func TestMeshReplicationAcrossDatacenters(t *testing.T) {
	pub := dcView2(false)
	pub.Groups["g3"].Members["p1"].Logical = &consulkv.LogicalStatus{Slots: []consulkv.LogicalSlotStatus{{Name: "g1_from_g3", Active: true, LagBytes: 1 << 20}}}
	sub := testView()
	sub.Groups["g1"].Members["n1"].Logical = &consulkv.LogicalStatus{Subscriptions: []consulkv.SubscriptionStatus{
		{Name: "g1_from_g3", Enabled: true, Running: true, Source: "native", Endpoints: []string{"10.2.0.1:5432"}},
	}}
	doc := buildMeshStatus("prod", []dcView{{Name: "dc1", View: sub}, {Name: "dc2", View: pub}}, "", 0)
	if len(doc.Replication) != 1 || doc.Replication[0].From != "g3" || doc.Replication[0].To != "g1" || doc.Replication[0].State != "replicating" {
		t.Errorf("replication %+v", doc.Replication)
	}
}

// fakeConsul answers the reads status makes: the catalog's datacenters
// and a recursive KV list per datacenter (?dc=, absent: local). A
// datacenter without data answers like Consul when it cannot be reached.
type fakeConsul struct {
	local   string
	catalog []string
	kv      map[string]api.KVPairs
	hang    []string // datacenters whose reads never answer (a WAN cut)
	mu      sync.Mutex
	asked   []string
}

func (f *fakeConsul) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/v1/catalog/datacenters":
		json.NewEncoder(w).Encode(f.catalog)
	case r.URL.Path == "/v1/kv/pgmesh/prod/":
		dc := r.URL.Query().Get("dc")
		f.mu.Lock()
		f.asked = append(f.asked, dc)
		f.mu.Unlock()
		if dc == "" {
			dc = f.local
		}
		if slices.Contains(f.hang, dc) {
			<-r.Context().Done()
			return
		}
		pairs, ok := f.kv[dc]
		if !ok {
			http.Error(w, "No path to datacenter", http.StatusInternalServerError)
			return
		}
		w.Header().Set("X-Consul-Index", "42")
		w.Header().Set("X-Consul-Default-Acl-Policy", "allow")
		json.NewEncoder(w).Encode(pairs)
	default:
		http.NotFound(w, r)
	}
}

func kvPairs(t *testing.T, cfg *consulkv.ClusterConfig, group string, members ...*consulkv.MemberStatus) api.KVPairs {
	t.Helper()
	enc := func(v consulkv.Value) []byte {
		b, err := consulkv.Encode(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var out api.KVPairs
	if cfg != nil {
		out = append(out, &api.KVPair{Key: "pgmesh/prod/config", Value: enc(cfg), ModifyIndex: 3})
	}
	if group == "" {
		return out
	}
	out = append(out,
		&api.KVPair{Key: "pgmesh/prod/groups/" + group + "/initialize", Value: enc(&consulkv.Initialize{Version: 1, Member: members[0].Name, SystemID: members[0].SystemID}), ModifyIndex: 4},
		&api.KVPair{Key: "pgmesh/prod/groups/" + group + "/leader", Value: enc(&consulkv.Leader{Version: 1, Member: members[0].Name}), Session: "s-" + group, ModifyIndex: 5})
	for _, m := range members {
		m.Group = group
		out = append(out, &api.KVPair{Key: "pgmesh/prod/groups/" + group + "/members/" + m.Name, Value: enc(m), ModifyIndex: 6})
	}
	return out
}

// TestStatusCommandAcrossDatacenters runs `pgmesh status` against a fake
// Consul with datacenters dc1 and dc2 (dc3 cannot be reached): the
// flag, the environment, the config's list, the catalog, exit codes.
func TestStatusCommandAcrossDatacenters(t *testing.T) {
	for _, env := range []string{"PGMESH_DATACENTERS", "CONSUL_HTTP_SSL", "CONSUL_HTTP_TOKEN", "CONSUL_CACERT", "CONSUL_CLIENT_CERT", "CONSUL_CLIENT_KEY"} {
		t.Setenv(env, "")
	}
	mk := func(name, host string, role string) *consulkv.MemberStatus {
		m := member(name, role, 1, 0, 0, 0)
		m.Host = host
		if role == consulkv.RolePrimary {
			m.WriteLSN = 0x3000000
		} else {
			m.ReceiveLSN, m.ReplayLSN = 0x3000000, 0x3000000
		}
		return m
	}
	plain := &consulkv.ClusterConfig{Version: 1}
	listing := &consulkv.ClusterConfig{Version: 1, Datacenters: []string{"dc1", "dc2", "dc3"}}
	dc1 := func(cfg *consulkv.ClusterConfig) api.KVPairs {
		return kvPairs(t, cfg, "n1", mk("n1-a", "10.1.0.1", consulkv.RolePrimary), mk("n1-b", "10.1.0.2", consulkv.RoleReplica))
	}
	n2a, n2b := mk("n2-a", "10.2.0.1", consulkv.RolePrimary), mk("n2-b", "10.2.0.2", consulkv.RoleReplica)
	n2a.SystemID, n2b.SystemID = "7300000000000000002", "7300000000000000002"
	dc2 := kvPairs(t, plain, "n2", n2a, n2b)
	for _, c := range []struct {
		name    string
		fake    *fakeConsul
		args    []string
		env     string
		exit    int
		asked   []string // ?dc= values read, sorted ("" is the local read)
		within  time.Duration
		want    []string // substrings of stdout, or of the error
		notWant []string
	}{
		{
			name:  "flag: two datacenters and one unreachable, exit 0",
			fake:  &fakeConsul{local: "dc1", catalog: []string{"dc1", "dc2", "dc3"}, kv: map[string]api.KVPairs{"dc1": dc1(plain), "dc2": dc2}},
			args:  []string{"--datacenters", "dc1,dc2,dc3"},
			asked: []string{"dc1", "dc2", "dc3"},
			want: []string{"Group: n1 (datacenter dc1, system id 7300000000000000001)\n", "Group: n2 (datacenter dc2, system id 7300000000000000002)\n",
				"\nDatacenter dc3: unreachable (No path to datacenter)\n"},
		},
		{
			name:    "environment, JSON",
			fake:    &fakeConsul{local: "dc1", catalog: []string{"dc1", "dc2", "dc3"}, kv: map[string]api.KVPairs{"dc1": dc1(plain), "dc2": dc2}},
			env:     "dc2,dc3",
			args:    []string{"-o", "json"},
			asked:   []string{"dc2", "dc3"},
			want:    []string{`"datacenter": "dc2"`, `"unreachable_datacenters": {` + "\n" + `    "dc3": "No path to datacenter"`},
			notWant: []string{`"n1"`},
		},
		{
			name:    "config's datacenters",
			fake:    &fakeConsul{local: "dc1", catalog: []string{"dc1", "dc2", "dc3", "dc4"}, kv: map[string]api.KVPairs{"dc1": dc1(listing), "dc2": dc2}},
			asked:   []string{"", "dc1", "dc2", "dc3"},
			want:    []string{"Group: n1 (datacenter dc1,", "Group: n2 (datacenter dc2,", "Datacenter dc3: unreachable (No path to datacenter)"},
			notWant: []string{"dc4"},
		},
		{
			name:    "catalog's datacenters",
			fake:    &fakeConsul{local: "dc1", catalog: []string{"dc2", "dc1"}, kv: map[string]api.KVPairs{"dc1": dc1(plain), "dc2": dc2}},
			asked:   []string{"", "dc1", "dc2"},
			want:    []string{"Group: n1 (datacenter dc1,", "Group: n2 (datacenter dc2,"},
			notWant: []string{"unreachable"},
		},
		{
			name:    "one datacenter: one read, as before",
			fake:    &fakeConsul{local: "dc1", catalog: []string{"dc1"}, kv: map[string]api.KVPairs{"dc1": dc1(plain)}},
			asked:   []string{""},
			want:    []string{"Cluster: prod\n\nGroup: n1 (system id 7300000000000000001)\nMember  Host:Port"},
			notWant: []string{"atacenter"},
		},
		{
			name:   "two datacenters cut off: no answer in time, read in parallel",
			fake:   &fakeConsul{local: "dc1", catalog: []string{"dc1"}, kv: map[string]api.KVPairs{"dc1": dc1(plain)}, hang: []string{"dc3", "dc4"}},
			args:   []string{"--datacenters", "dc1,dc3,dc4"},
			asked:  []string{"dc1", "dc3", "dc4"},
			within: 2*consulkv.DefaultRequestTimeout - time.Second, // one request timeout, not two
			want:   []string{"Group: n1 (datacenter dc1,", "\nDatacenter dc3: unreachable (no answer in time)\nDatacenter dc4: unreachable (no answer in time)\n"},
		},
		{
			name:  "no datacenter readable: exit 1",
			fake:  &fakeConsul{local: "dc1", catalog: []string{"dc1"}, kv: map[string]api.KVPairs{}},
			args:  []string{"--datacenters", "dc3,dc4"},
			asked: []string{"dc3", "dc4"},
			exit:  exitFailed,
			want:  []string{`no datacenter of cluster "prod" could be read: dc3: No path to datacenter; dc4: No path to datacenter`},
		},
		{
			name:  "a readable datacenter without the group: not found, naming the unread one",
			fake:  &fakeConsul{local: "dc1", catalog: []string{"dc1"}, kv: map[string]api.KVPairs{"dc1": dc1(plain)}},
			args:  []string{"--datacenters", "dc1,dc3", "-g", "n3"},
			asked: []string{"dc1", "dc3"},
			exit:  exitFailed,
			want:  []string{`group "n3" not found in cluster "prod" (groups: n1; not read: datacenter dc3)`},
		},
		{
			name: "bad --datacenters: usage error before any read",
			fake: &fakeConsul{local: "dc1"},
			args: []string{"--datacenters", "dc1,eu/west"},
			exit: exitUsage,
			want: []string{"--datacenters"},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := httptest.NewServer(c.fake)
			defer srv.Close()
			t.Setenv("PGMESH_DATACENTERS", c.env)
			app := newApp()
			var out bytes.Buffer
			app.Writer, app.ErrWriter = &out, &bytes.Buffer{}
			start := time.Now()
			err := app.Run(append([]string{"pgmesh", "status", "--consul", srv.URL, "--cluster", "prod"}, c.args...))
			if c.within != 0 && time.Since(start) > c.within {
				t.Errorf("took %s, want under %s", time.Since(start), c.within)
			}
			t.Log("\n" + out.String())
			got := out.String()
			if c.exit != 0 {
				if err == nil || exitCode(err) != c.exit {
					t.Fatalf("exit: %v, want code %d", err, c.exit)
				}
				got = err.Error()
			} else if err != nil {
				t.Fatalf("status: %v", err)
			}
			for _, w := range c.want {
				if !strings.Contains(got, w) {
					t.Errorf("lacks %q", w)
				}
			}
			for _, nw := range c.notWant {
				if strings.Contains(got, nw) {
					t.Errorf("has %q", nw)
				}
			}
			c.fake.mu.Lock() // a cut-off datacenter's handler may still run
			asked := slices.Clone(c.fake.asked)
			c.fake.mu.Unlock()
			slices.Sort(asked)
			if !reflect.DeepEqual(asked, c.asked) {
				t.Errorf("KV reads with ?dc= %q, want %q", asked, c.asked)
			}
		})
	}
}
