package routing

import (
	"fmt"
	"reflect"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/pgmesh/pgmesh/consulkv"
)

// fixture describes one member for the in-memory views.
type fixture struct {
	group, name, role string
	leader            bool
	lsn               uint64 // write LSN of a primary, replay LSN of a replica
	kv                bool   // has a member key
	service           string // registered role ("" = no service entry)
	healthy           bool
	port              int
}

// views builds a KV view and health entries from fixtures; member i gets
// PostgreSQL port 5432+i (unless set) and API port 8008+i.
func views(fs []fixture, statusLSN map[string]uint64) (*consulkv.ClusterView, []*api.ServiceEntry) {
	v := &consulkv.ClusterView{Groups: map[string]*consulkv.GroupView{}}
	var entries []*api.ServiceEntry
	for i, f := range fs {
		g := v.Groups[f.group]
		if g == nil {
			g = &consulkv.GroupView{Name: f.group, Members: map[string]*consulkv.MemberStatus{}}
			if lsn, ok := statusLSN[f.group]; ok {
				g.Status = &consulkv.GroupStatus{Version: 1, LastLSN: lsn}
			}
			v.Groups[f.group] = g
		}
		port := f.port
		if port == 0 {
			port = 5432 + i
		}
		api0 := fmt.Sprintf("http://127.0.0.1:%d", 8008+i)
		if f.leader {
			g.Leader = &consulkv.LeaderInfo{Member: f.name, Session: "s-" + f.name}
		}
		if f.kv {
			ms := &consulkv.MemberStatus{Version: 1, Name: f.name, Group: f.group, Role: f.role, State: "running",
				Host: "127.0.0.1", Port: port, APIURL: api0, Timeline: 1}
			if f.role == consulkv.RolePrimary {
				ms.WriteLSN = f.lsn
			} else {
				ms.ReplayLSN = f.lsn
			}
			g.Members[f.name] = ms
		}
		if f.service != "" {
			status := api.HealthCritical
			if f.healthy {
				status = api.HealthPassing
			}
			entries = append(entries, &api.ServiceEntry{
				Node: &api.Node{Node: "node1", Address: "10.0.0.9"},
				Service: &api.AgentService{
					ID: "mesh1/" + f.group + "/" + f.name, Service: "mesh1",
					Tags:    []string{f.service, f.group, f.group + "-" + f.service},
					Address: "127.0.0.1", Port: port,
					Meta: map[string]string{"group": f.group, "member": f.name, "role": f.service, "timeline": "1", "api_url": api0},
				},
				Checks: api.HealthChecks{
					{CheckID: "role", Status: status},
					{CheckID: "serfHealth", Status: api.HealthPassing},
				},
			})
		}
	}
	return v, entries
}

// standardFixtures: n1 healthy (a primary, b replica close, c replica far
// behind), n2 healthy (a primary, b replica), n3 whose leader is unhealthy,
// n4 known only from the catalog.
func standardFixtures() []fixture {
	return []fixture{
		{group: "n1", name: "n1-a", role: "primary", leader: true, lsn: 1000, kv: true, service: "primary", healthy: true},
		{group: "n1", name: "n1-b", role: "replica", lsn: 900, kv: true, service: "replica", healthy: true},
		{group: "n1", name: "n1-c", role: "replica", lsn: 10, kv: true, service: "replica", healthy: true},
		{group: "n2", name: "n2-a", role: "primary", leader: true, lsn: 500, kv: true, service: "primary", healthy: true},
		{group: "n2", name: "n2-b", role: "replica", lsn: 500, kv: true, service: "replica", healthy: true},
		{group: "n3", name: "n3-a", role: "primary", leader: true, lsn: 50, kv: true, service: "primary", healthy: false},
		{group: "n3", name: "n3-b", role: "replica", lsn: 50, kv: true},
		{group: "n4", name: "n4-a", service: "primary", healthy: true},
	}
}

func standardMesh(local string) *Mesh {
	v, e := views(standardFixtures(), map[string]uint64{"n1": 1200})
	return BuildMesh(v, e, local)
}

func TestBuildMeshModel(t *testing.T) {
	m := standardMesh("n2")
	if m.Cluster != "mesh1" || m.LocalGroup != "n2" {
		t.Fatalf("cluster %q local %q", m.Cluster, m.LocalGroup)
	}
	if got := m.GroupNames(); !reflect.DeepEqual(got, []string{"n1", "n2", "n3", "n4"}) {
		t.Fatalf("groups %v", got)
	}
	n1 := m.Group("n1")
	if n1 == nil || n1.Local || n1.Leader != "n1-a" || n1.LastLSN != 1200 {
		t.Fatalf("n1 = %+v", n1)
	}
	if !m.Group("n2").Local {
		t.Fatal("n2 is the local group")
	}
	if m.Group("nope") != nil || m.MembersOf("nope") != nil {
		t.Fatal("unknown group found")
	}
	b := m.MembersOf("n1")[1]
	if b.Name != "n1-b" || b.LagBytes != 300 || b.Role != "replica" || !b.Healthy || b.Leader || b.APIHost != "127.0.0.1" || b.APIPort != 8009 {
		t.Fatalf("n1-b = %+v", b)
	}
	if a := m.MembersOf("n1")[0]; a.LagBytes != 0 || !a.Leader || !a.Writable() {
		t.Fatalf("n1-a = %+v", a)
	}
	// n2's LastLSN comes from the leader's member key (no status key).
	if g := m.Group("n2"); g.LastLSN != 500 || g.Members[1].LagBytes != 0 {
		t.Fatalf("n2 = %+v / %+v", g, g.Members[1])
	}
	// A member with a key but no service is in the mesh, not healthy.
	n3b := m.MembersOf("n3")[1]
	if !n3b.InKV || n3b.Registered || n3b.Healthy {
		t.Fatalf("n3-b = %+v", n3b)
	}
	// A member known only from the catalog takes role and addresses from it.
	n4a := m.MembersOf("n4")[0]
	if n4a.InKV || !n4a.Registered || n4a.Role != "primary" || n4a.Host != "127.0.0.1" || n4a.APIPort != 8015 || n4a.Leader {
		t.Fatalf("n4-a = %+v", n4a)
	}
	if n4a.ServerName() != "n4.n4-a" || n4a.Addr() != "127.0.0.1:5439" {
		t.Fatalf("n4-a server %q addr %q", n4a.ServerName(), n4a.Addr())
	}
}

func TestMeshPrimaries(t *testing.T) {
	// n3's leader fails its checks, n4-a holds no leader key: neither is a
	// writable primary.
	for local, want := range map[string][]string{
		"n2": {"n2-a", "n1-a"},
		"n1": {"n1-a", "n2-a"},
		"":   {"n1-a", "n2-a"},
		"n9": {"n1-a", "n2-a"},
	} {
		if got := standardMesh(local).Primaries().Names(); !reflect.DeepEqual(got, want) {
			t.Errorf("local %q: primaries %v, want %v", local, got, want)
		}
	}
	m := standardMesh("n2")
	if m.Group("n3").Primary() != nil {
		t.Fatal("unhealthy leader counted as primary")
	}
	if p := m.Preferred(); p == nil || p.Name != "n2" {
		t.Fatalf("preferred %v", p)
	}
	if (&Mesh{}).Preferred() != nil {
		t.Fatal("empty mesh has a preferred group")
	}
}

func TestMeshWritableNeedsEverything(t *testing.T) {
	base := fixture{group: "g", name: "g-a", role: "primary", leader: true, kv: true, service: "primary", healthy: true}
	cases := map[string]func(*fixture){
		"ok":                 func(*fixture) {},
		"not leader":         func(f *fixture) { f.leader = false },
		"reports replica":    func(f *fixture) { f.role = "replica" },
		"registered replica": func(f *fixture) { f.service = "replica" },
		"checks failing":     func(f *fixture) { f.healthy = false },
		"no service":         func(f *fixture) { f.service = "" },
	}
	for name, mod := range cases {
		f := base
		mod(&f)
		v, e := views([]fixture{f}, nil)
		got := BuildMesh(v, e, "g").Primaries()
		if want := name == "ok"; (len(got) == 1) != want {
			t.Errorf("%s: primaries %v", name, got.Names())
		}
	}
}

func TestMeshReplicasAndOrders(t *testing.T) {
	m := standardMesh("n2")
	if got := m.Replicas(0).Names(); !reflect.DeepEqual(got, []string{"n2-b", "n1-b", "n1-c"}) {
		t.Fatalf("replicas(any) %v", got)
	}
	if got := m.Replicas(500).Names(); !reflect.DeepEqual(got, []string{"n2-b", "n1-b"}) {
		t.Fatalf("replicas(500) %v", got)
	}
	if got := m.AllMembers().Names(); !reflect.DeepEqual(got, []string{"n2-a", "n2-b", "n1-a", "n1-b", "n1-c", "n3-a", "n3-b", "n4-a"}) {
		t.Fatalf("all %v", got)
	}
	var lf []string
	for _, g := range m.LocalFirst() {
		lf = append(lf, g.Name)
	}
	if !reflect.DeepEqual(lf, []string{"n2", "n1", "n3", "n4"}) {
		t.Fatalf("local first %v", lf)
	}
	if got := m.WriteOrder().Names(); !reflect.DeepEqual(got, []string{"n2-a", "n1-a", "n2-b", "n1-b", "n1-c", "n3-a", "n3-b", "n4-a"}) {
		t.Fatalf("write order %v", got)
	}
	if got := m.ReadOrder(500).Names(); !reflect.DeepEqual(got, []string{"n2-b", "n1-b", "n2-a", "n1-a", "n1-c", "n3-a", "n3-b", "n4-a"}) {
		t.Fatalf("read order %v", got)
	}
	if got := m.Group("n1").PrimaryFirst().Names(); !reflect.DeepEqual(got, []string{"n1-a", "n1-b", "n1-c"}) {
		t.Fatalf("primary first %v", got)
	}
	ms := m.MembersOf("n2")
	if !reflect.DeepEqual(ms.Hosts(), []string{"127.0.0.1", "127.0.0.1"}) || !reflect.DeepEqual(ms.Ports(), []int{5435, 5436}) {
		t.Fatalf("hosts %v ports %v", ms.Hosts(), ms.Ports())
	}
}

func TestBuildMeshPrimaryFirstAfterFailover(t *testing.T) {
	fs := []fixture{
		{group: "g", name: "g-a", role: "primary", lsn: 10, kv: false, service: "primary", healthy: false}, // dead old primary
		{group: "g", name: "g-b", role: "primary", leader: true, lsn: 20, kv: true, service: "primary", healthy: true},
	}
	v, e := views(fs, nil)
	m := BuildMesh(v, e, "g")
	if got := m.Group("g").PrimaryFirst().Names(); !reflect.DeepEqual(got, []string{"g-b", "g-a"}) {
		t.Fatalf("primary first %v", got)
	}
}

func TestBuildMeshNilAndOddInput(t *testing.T) {
	m := BuildMesh(nil, nil, "x")
	if len(m.Groups) != 0 || m.Primaries() != nil || m.Preferred() != nil {
		t.Fatalf("empty mesh %+v", m)
	}
	// Entries without member identity are ignored; the ID is a fallback for
	// missing meta; a duplicate registration that passes wins.
	entries := []*api.ServiceEntry{
		nil,
		{Service: &api.AgentService{ID: "junk", Service: "mesh1"}},
		{Node: &api.Node{Address: "10.1.1.1"}, Service: &api.AgentService{ID: "mesh1/g/g-a", Service: "mesh1", Port: 5432, Tags: []string{"replica"}},
			Checks: api.HealthChecks{{Status: api.HealthCritical}}},
		{Node: &api.Node{Address: "10.1.1.2"}, Service: &api.AgentService{ID: "mesh1/g/g-a", Service: "mesh1", Port: 5432, Tags: []string{"replica"}},
			Checks: api.HealthChecks{{Status: api.HealthPassing}}},
	}
	m = BuildMesh(nil, entries, "")
	ms := m.MembersOf("g")
	if len(ms) != 1 || !ms[0].Healthy || ms[0].Host != "10.1.1.2" || ms[0].ServiceRole != "replica" || ms[0].Role != "unknown" {
		t.Fatalf("members %+v", ms)
	}
	if ms[0].Readable(0) {
		t.Fatal("member with unknown role readable")
	}
}

func TestAPIHostPort(t *testing.T) {
	cases := []struct {
		url, host string
		port      int
	}{
		{"http://10.0.0.1:8008", "10.0.0.1", 8008},
		{"https://db1.example:8443/", "db1.example", 8443},
		{"http://0.0.0.0:8008", "fallback", 8008},
		{"https://db1", "db1", 443},
		{"10.0.0.2:9000", "10.0.0.2", 9000},
		{"", "fallback", 0},
		{"http://[::1]:8008", "::1", 8008},
	}
	for _, c := range cases {
		h, p := apiHostPort(c.url, "fallback")
		if h != c.host || p != c.port {
			t.Errorf("%q: %s %d, want %s %d", c.url, h, p, c.host, c.port)
		}
	}
}
