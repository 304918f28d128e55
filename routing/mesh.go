package routing

import (
	"net"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"github.com/hashicorp/consul/api"
	"github.com/pgmesh/pgmesh/consulkv"
)

// Mesh is the routing view of one cluster: every group with every member the
// renderer knows of, from the KV store (role, lag) and the Consul catalog
// (health). It is a value: BuildMesh makes a fresh one for every change and
// nothing mutates it afterwards, so templates may call its methods freely.
type Mesh struct {
	// Cluster is the cluster (mesh) name, the Consul service name.
	Cluster string
	// LocalGroup is the group the renderer runs beside ("" = none). Routing
	// prefers it for writes and reads.
	LocalGroup string
	// Groups, sorted by name.
	Groups []*Group
	// NoKV: the cluster's KV tree read back empty although the catalog
	// may list members (a token that may read the service but not the
	// keys, a wrong prefix): leaders and roles are unknown.
	NoKV bool
	// Datacenter is the renderer's own datacenter ("" when the mesh was
	// read from the local datacenter only and its name is unknown).
	Datacenter string
	// Datacenters are the datacenters read, in preference order (the local
	// one first, then by round-trip time); empty for a mesh read from the
	// local datacenter only (BuildMesh).
	Datacenters []Datacenter
	// Problems are inconsistencies found while merging datacenters (a
	// group in two of them).
	Problems []string
}

// Servers counts the members with a PostgreSQL address, i.e. what a
// routing config could send clients to.
func (m *Mesh) Servers() int {
	n := 0
	for _, g := range m.Groups {
		for _, mem := range g.Members {
			if mem.Host != "" && mem.Port != 0 {
				n++
			}
		}
	}
	return n
}

// Group is one group of the mesh.
type Group struct {
	Name string
	// Local is true for the renderer's own group.
	Local bool
	// Datacenter is the Consul datacenter the group lives in ("" when the
	// mesh was read from the local datacenter only).
	Datacenter string
	// Leader is the member holding the group's leader key ("" = none).
	Leader string
	// LastLSN is the group's reference WAL position: the leader's last
	// published LSN (status key) or its member key's write LSN, whichever is
	// further. Replica lag is measured against it.
	LastLSN uint64
	// Members, sorted by name.
	Members Members
}

// Member is one PostgreSQL instance with its agent.
type Member struct {
	Name, Group string
	// Role as the member reports it (member key, else the service meta):
	// primary, replica or unknown.
	Role string
	// State is the agent's state text (member key only).
	State string
	// Host and Port are PostgreSQL's connect address.
	Host string
	Port int
	// APIURL is the agent's REST API; APIHost/APIPort are parsed from it
	// (APIHost falls back to Host when the URL names no usable host).
	APIURL  string
	APIHost string
	APIPort int
	// APITLS: the REST API speaks HTTPS (its URL says https), so health
	// checks against it must too.
	APITLS bool
	// Healthy is true when the member's Consul service exists and all of
	// its checks (role check, agent liveness, node checks) pass.
	Healthy bool
	// Leader is true when the member holds its group's leader key.
	Leader bool
	// LagBytes is how far a replica is behind Group.LastLSN (0 for a
	// primary, and when either position is unknown).
	LagBytes uint64
	Timeline uint32
	// ServiceRole is the role the member is registered with in Consul
	// ("" when it has no service entry).
	ServiceRole string
	// InKV and Registered say where the member was seen: its member key
	// and/or its Consul service.
	InKV, Registered bool
	// Tags are the member's custom tags (member key).
	Tags map[string]string
}

// Members is a list of members with helpers for templates.
type Members []*Member

// BuildMesh builds the routing model from a KV view of the cluster and the
// Consul health entries of the cluster's service (Health().Service(cluster,
// "", false, …)). A member is in the mesh when it has a member key and/or a
// service entry; its role, addresses and lag come from the member key when
// there is one, its health from the service checks. Either argument may be
// nil. Mesh.Cluster is taken from the service entries; callers that know
// the cluster name set it (the Renderer does). BuildMesh does no I/O.
func BuildMesh(view *consulkv.ClusterView, entries []*api.ServiceEntry, localGroup string) *Mesh {
	m := &Mesh{LocalGroup: localGroup, NoKV: view != nil && len(view.Groups) == 0}
	groups := map[string]*Group{}
	members := map[string]map[string]*Member{}
	group := func(name string) *Group {
		g := groups[name]
		if g == nil {
			g = &Group{Name: name, Local: name == localGroup}
			groups[name] = g
			members[name] = map[string]*Member{}
		}
		return g
	}
	if view != nil {
		for name, gv := range view.Groups {
			if gv == nil {
				continue
			}
			g := group(name)
			if gv.Leader != nil {
				g.Leader = gv.Leader.Member
			}
			if gv.Status != nil {
				g.LastLSN = gv.Status.LastLSN
			}
			if g.Leader != "" {
				if ls := gv.Members[g.Leader]; ls != nil && ls.Role == consulkv.RolePrimary && ls.WriteLSN > g.LastLSN {
					g.LastLSN = ls.WriteLSN
				}
			}
			for mname, ms := range gv.Members {
				if ms == nil {
					continue
				}
				mem := &Member{
					Name: mname, Group: name, Role: ms.Role, State: ms.State,
					Host: ms.Host, Port: ms.Port, APIURL: ms.APIURL, Timeline: ms.Timeline,
					InKV: true,
				}
				if len(ms.Tags.Custom) > 0 {
					mem.Tags = make(map[string]string, len(ms.Tags.Custom))
					for k, v := range ms.Tags.Custom {
						mem.Tags[k] = v
					}
				}
				if ms.Role == consulkv.RoleReplica && g.LastLSN > 0 {
					if last := replicaLSN(ms); last > 0 && last < g.LastLSN {
						mem.LagBytes = g.LastLSN - last
					}
				}
				members[name][mname] = mem
			}
		}
	}
	for _, e := range pickEntries(entries) {
		s := e.Service
		if m.Cluster == "" {
			m.Cluster = s.Service
		}
		gname, mname := serviceMember(s)
		group(gname)
		mem := members[gname][mname]
		if mem == nil {
			mem = &Member{Name: mname, Group: gname, Role: s.Meta["role"]}
			if mem.Role == "" {
				mem.Role = consulkv.RoleUnknown
			}
			mem.APIURL = s.Meta["api_url"]
			if tl, err := strconv.ParseUint(s.Meta["timeline"], 10, 32); err == nil {
				mem.Timeline = uint32(tl)
			}
			members[gname][mname] = mem
		}
		mem.Registered = true
		mem.ServiceRole = s.Meta["role"]
		if mem.ServiceRole == "" {
			mem.ServiceRole = roleFromTags(s.Tags)
		}
		mem.Healthy = e.Checks.AggregatedStatus() == api.HealthPassing
		if mem.Host == "" {
			mem.Host = s.Address
			if mem.Host == "" && e.Node != nil {
				mem.Host = e.Node.Address
			}
		}
		if mem.Port == 0 {
			mem.Port = s.Port
		}
		if mem.APIURL == "" {
			mem.APIURL = s.Meta["api_url"]
		}
	}
	for name, g := range groups {
		for _, mem := range members[name] {
			mem.Leader = g.Leader != "" && mem.Name == g.Leader
			mem.APIHost, mem.APIPort = apiHostPort(mem.APIURL, mem.Host)
			mem.APITLS = strings.HasPrefix(strings.ToLower(mem.APIURL), "https://")
			g.Members = append(g.Members, mem)
		}
		sort.Slice(g.Members, func(i, j int) bool { return g.Members[i].Name < g.Members[j].Name })
		m.Groups = append(m.Groups, g)
	}
	sort.Slice(m.Groups, func(i, j int) bool { return m.Groups[i].Name < m.Groups[j].Name })
	return m
}

// pickEntries keeps the service entries that name a member, one per member:
// a passing entry wins over a failing one (a member re-registered on another
// Consul agent leaves its old registration behind until it is reaped).
func pickEntries(entries []*api.ServiceEntry) []*api.ServiceEntry {
	type key struct{ g, m string }
	best := map[key]*api.ServiceEntry{}
	var order []key
	for _, e := range entries {
		if e == nil || e.Service == nil {
			continue
		}
		g, m := serviceMember(e.Service)
		if g == "" || m == "" {
			continue
		}
		k := key{g, m}
		cur, ok := best[k]
		if !ok {
			order = append(order, k)
			best[k] = e
			continue
		}
		if cur.Checks.AggregatedStatus() != api.HealthPassing && e.Checks.AggregatedStatus() == api.HealthPassing {
			best[k] = e
		}
	}
	out := make([]*api.ServiceEntry, 0, len(order))
	for _, k := range order {
		out = append(out, best[k])
	}
	return out
}

// serviceMember reads group and member from the service meta, else from the
// service ID <cluster>/<group>/<member>.
func serviceMember(s *api.AgentService) (group, member string) {
	group, member = s.Meta["group"], s.Meta["member"]
	if group != "" && member != "" {
		return group, member
	}
	parts := strings.Split(s.ID, "/")
	if len(parts) == 3 {
		if group == "" {
			group = parts[1]
		}
		if member == "" {
			member = parts[2]
		}
	}
	return group, member
}

func roleFromTags(tags []string) string {
	for _, t := range tags {
		if t == consulkv.RolePrimary || t == consulkv.RoleReplica {
			return t
		}
	}
	return ""
}

func replicaLSN(ms *consulkv.MemberStatus) uint64 {
	l := ms.ReplayLSN
	if ms.ReceiveLSN > l {
		l = ms.ReceiveLSN
	}
	return l
}

// apiHostPort parses the REST API URL. A URL without a host, or with a
// wildcard listen address, is checked on the member's own host.
func apiHostPort(raw, fallbackHost string) (string, int) {
	if raw == "" {
		return fallbackHost, 0
	}
	if !strings.Contains(raw, "://") {
		raw = "http://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return fallbackHost, 0
	}
	host := u.Hostname()
	port, _ := strconv.Atoi(u.Port())
	if port == 0 {
		switch u.Scheme {
		case "https":
			port = 443
		case "http":
			port = 80
		}
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = fallbackHost
	}
	return host, port
}

// Writable reports whether the member is its group's writable primary: it
// holds the leader key, reports role primary, is registered as primary and
// all its Consul checks pass (the role check is GET /primary, which passes
// only on the writable leader).
func (m *Member) Writable() bool {
	return m.Leader && m.Role == consulkv.RolePrimary && m.ServiceRole == consulkv.RolePrimary && m.Healthy
}

// Readable reports whether the member is a healthy replica within maxLag
// bytes of its group's last LSN (maxLag 0 = any lag).
func (m *Member) Readable(maxLag uint64) bool {
	if m.Leader || m.Role != consulkv.RoleReplica || m.ServiceRole != consulkv.RoleReplica || !m.Healthy {
		return false
	}
	return maxLag == 0 || m.LagBytes <= maxLag
}

// Routable reports whether the member has a PostgreSQL address.
func (m *Member) Routable() bool { return m.Host != "" && m.Port > 0 }

// ServerName is the member's identifier in generated configuration:
// "<group>.<member>" with anything but letters, digits, '-', '_' and '.'
// replaced (see Sanitize). It is unique in the mesh, a valid HAProxy server
// name, and what the HAProxy runtime hook looks servers up by.
func (m *Member) ServerName() string { return Sanitize(m.Group) + "." + Sanitize(m.Name) }

// Addr is PostgreSQL's host:port.
func (m *Member) Addr() string { return net.JoinHostPort(m.Host, strconv.Itoa(m.Port)) }

// Primary returns the group's writable primary, or nil.
func (g *Group) Primary() *Member {
	for _, m := range g.Members {
		if m.Writable() {
			return m
		}
	}
	return nil
}

// PrimaryFirst returns the group's members with the writable primary (if
// any) first, then the rest by name.
func (g *Group) PrimaryFirst() Members {
	out := make(Members, 0, len(g.Members))
	p := g.Primary()
	if p != nil {
		out = append(out, p)
	}
	for _, m := range g.Members {
		if m != p {
			out = append(out, m)
		}
	}
	return out
}

// Replicas returns the group's healthy replicas within maxLag (0 = any).
func (g *Group) Replicas(maxLag uint64) Members {
	var out Members
	for _, m := range g.Members {
		if m.Readable(maxLag) {
			out = append(out, m)
		}
	}
	return out
}

// Group returns the named group, or nil.
func (m *Mesh) Group(name string) *Group {
	for _, g := range m.Groups {
		if g.Name == name {
			return g
		}
	}
	return nil
}

// GroupNames returns the group names, sorted.
func (m *Mesh) GroupNames() []string {
	out := make([]string, 0, len(m.Groups))
	for _, g := range m.Groups {
		out = append(out, g.Name)
	}
	return out
}

// LocalFirst returns the groups in the order routing prefers them: the
// local group first, then the others by datacenter (Mesh.Datacenters order:
// the local datacenter, then the others nearest first) and by name within
// a datacenter. For a mesh read from one datacenter, without a local group
// (or when it is not in the mesh), it is plain name order, so the first
// group by name is preferred.
func (m *Mesh) LocalFirst() []*Group {
	rank := map[string]int{}
	for i, d := range m.Datacenters {
		rank[d.Name] = i
	}
	out := make([]*Group, 0, len(m.Groups))
	for _, g := range m.Groups {
		if g.Local {
			out = append(out, g)
		}
	}
	rest := make([]*Group, 0, len(m.Groups))
	for _, g := range m.Groups {
		if !g.Local {
			rest = append(rest, g)
		}
	}
	// m.Groups is in name order; a stable sort keeps it within a datacenter.
	sort.SliceStable(rest, func(i, j int) bool { return rank[rest[i].Datacenter] < rank[rest[j].Datacenter] })
	return append(out, rest...)
}

// Preferred is the group writes and reads go to first: LocalFirst()[0], or
// nil for an empty mesh.
func (m *Mesh) Preferred() *Group {
	if gs := m.LocalFirst(); len(gs) > 0 {
		return gs[0]
	}
	return nil
}

// Primaries returns one writable primary per group that has one, local
// group first, then by group name.
func (m *Mesh) Primaries() Members {
	var out Members
	for _, g := range m.LocalFirst() {
		if p := g.Primary(); p != nil {
			out = append(out, p)
		}
	}
	return out
}

// Replicas returns every healthy replica within maxLag bytes (0 = any lag),
// local group first, then by group and member name.
func (m *Mesh) Replicas(maxLag uint64) Members {
	var out Members
	for _, g := range m.LocalFirst() {
		out = append(out, g.Replicas(maxLag)...)
	}
	return out
}

// AllMembers returns every member, local group first, then by group and
// member name.
func (m *Mesh) AllMembers() Members {
	var out Members
	for _, g := range m.LocalFirst() {
		out = append(out, g.Members...)
	}
	return out
}

// MembersOf returns the members of one group (nil if there is no such
// group).
func (m *Mesh) MembersOf(group string) Members {
	if g := m.Group(group); g != nil {
		return g.Members
	}
	return nil
}

// WriteOrder returns every member in the order a client looking for any
// writable node should try them: the primaries (local group first), then
// every other member in LocalFirst order.
func (m *Mesh) WriteOrder() Members {
	out := m.Primaries()
	seen := map[*Member]bool{}
	for _, p := range out {
		seen[p] = true
	}
	for _, mem := range m.AllMembers() {
		if !seen[mem] {
			out = append(out, mem)
		}
	}
	return out
}

// ReadOrder returns every member in the order a reader should try them:
// healthy replicas within maxLag (local first), then the primaries, then
// the rest.
func (m *Mesh) ReadOrder(maxLag uint64) Members {
	out := m.Replicas(maxLag)
	out = append(out, m.Primaries()...)
	seen := map[*Member]bool{}
	for _, x := range out {
		seen[x] = true
	}
	for _, mem := range m.AllMembers() {
		if !seen[mem] {
			out = append(out, mem)
		}
	}
	return out
}

// Routable keeps the members that have a PostgreSQL address.
func (ms Members) Routable() Members {
	var out Members
	for _, m := range ms {
		if m.Routable() {
			out = append(out, m)
		}
	}
	return out
}

// Hosts returns the members' hosts, in order.
func (ms Members) Hosts() []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Host
	}
	return out
}

// Ports returns the members' PostgreSQL ports, in order.
func (ms Members) Ports() []int {
	out := make([]int, len(ms))
	for i, m := range ms {
		out[i] = m.Port
	}
	return out
}

// Names returns the member names, in order.
func (ms Members) Names() []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Name
	}
	return out
}

// primaryMap is group -> writable primary name, the state the HAProxy
// runtime hook compares.
func (m *Mesh) primaryMap() map[string]string {
	out := map[string]string{}
	for _, g := range m.Groups {
		if p := g.Primary(); p != nil {
			out[g.Name] = p.Name
		}
	}
	return out
}
