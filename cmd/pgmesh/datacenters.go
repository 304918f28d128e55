package main

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/pgmesh/pgmesh/consulkv"
)

// A mesh may span Consul datacenters: each group lives in one, with its
// keys, sessions and services in that datacenter's Consul (KV is never
// replicated between datacenters). status reads every datacenter through
// the local agent (?dc=) and merges what it reads.

// parseDatacenters reads --datacenters: names separated by commas, blanks
// ignored, each once.
func parseDatacenters(s string) ([]string, error) {
	var out []string
	for _, dc := range strings.Split(s, ",") {
		dc = strings.TrimSpace(dc)
		if dc == "" || contains(out, dc) {
			continue
		}
		if err := consulkv.ValidDatacenter(dc); err != nil {
			return nil, err
		}
		out = append(out, dc)
	}
	return out, nil
}

// dcView is one datacenter's read: its view, or why it could not be read.
// Name is empty when status shows the local datacenter only and Consul did
// not say its name.
type dcView struct {
	Name string
	View *consulkv.ClusterView
	Err  error
}

// meshSource is how status reads the mesh; tests replace it.
type meshSource struct {
	// local reads the local datacenter (no ?dc=), as status always did.
	local func(context.Context) (*consulkv.ClusterView, error)
	// catalog lists the datacenters Consul knows.
	catalog func(context.Context) ([]string, error)
	// inDC reads one datacenter by name.
	inDC func(context.Context, string) (*consulkv.ClusterView, error)
}

// readMesh reads the datacenters status shows (see consulkv.ChooseDatacenters),
// every read in parallel. Errors are per datacenter, in the result.
func readMesh(ctx context.Context, src meshSource, flag []string) ([]dcView, string) {
	if len(flag) > 0 {
		return readDatacenters(ctx, src, flag), consulkv.DatacentersExplicit
	}
	// The local read is needed anyway (its config may list the
	// datacenters; alone it is today's status), the catalog when it does
	// not: ask both at once.
	var (
		local    *consulkv.ClusterView
		localErr error
		catalog  []string
		wg       sync.WaitGroup
	)
	wg.Add(2)
	go func() { defer wg.Done(); local, localErr = src.local(ctx) }()
	go func() {
		defer wg.Done()
		var err error
		if catalog, err = src.catalog(ctx); err != nil {
			catalog = nil // unknown: the local datacenter alone
		}
	}()
	wg.Wait()
	var cfg *consulkv.ClusterConfig
	if localErr == nil {
		cfg = local.Config
	}
	dcs, source := consulkv.ChooseDatacenters(nil, cfg, catalog)
	if source == consulkv.DatacentersLocal {
		name := ""
		if len(dcs) == 1 {
			name = dcs[0]
		}
		return []dcView{{Name: name, View: local, Err: localErr}}, source
	}
	return readDatacenters(ctx, src, dcs), source
}

func readDatacenters(ctx context.Context, src meshSource, dcs []string) []dcView {
	out := make([]dcView, len(dcs))
	var wg sync.WaitGroup
	for i, dc := range dcs {
		out[i].Name = dc
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i].View, out[i].Err = src.inDC(ctx, dc)
		}()
	}
	wg.Wait()
	return out
}

// meshSource reads through the local agent: the local datacenter with the
// command's client, the others with a client per datacenter (kept for
// --watch).
func (s *opConn) meshSource() meshSource {
	var mu sync.Mutex
	clients := map[string]*consulkv.Client{}
	client := func(dc string) (*consulkv.Client, error) {
		mu.Lock()
		defer mu.Unlock()
		if c := clients[dc]; c != nil {
			return c, nil
		}
		cfg := s.kvConfig
		cfg.Datacenter = dc
		c, err := consulkv.New(cfg)
		if err != nil {
			return nil, err
		}
		clients[dc] = c
		return c, nil
	}
	return meshSource{
		local:   s.kv.ReadCluster,
		catalog: s.kv.Datacenters,
		inDC: func(ctx context.Context, dc string) (*consulkv.ClusterView, error) {
			c, err := client(dc)
			if err != nil {
				return nil, err
			}
			return c.ReadCluster(ctx)
		},
	}
}

// dcErrText says in a line why a datacenter could not be read. Consul's
// own answer (No path to datacenter, an RPC error across the WAN) is the
// reason, not the local agent's address.
func (s *opConn) dcErrText(err error) string {
	var se api.StatusError
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "no answer in time"
	case errors.Is(err, consulkv.ErrUnreachable) && errors.As(err, &se):
		return strings.TrimSpace(se.Body)
	}
	return s.consulErr(err).Error()
}

// meshResult turns the reads into what status shows, or the error status
// fails with: Consul's error when the only datacenter shown could not be
// read (as before datacenters), every datacenter's when none could.
func (s *opConn) meshResult(views []dcView) ([]dcView, error) {
	if len(views) == 1 && views[0].Err != nil {
		return nil, s.consulErr(views[0].Err)
	}
	var failed []string
	groups := 0
	for i := range views {
		if views[i].Err != nil {
			failed = append(failed, views[i].Name+": "+s.dcErrText(views[i].Err))
			views[i].Err = errors.New(s.dcErrText(views[i].Err))
			continue
		}
		groups += len(views[i].View.Groups)
	}
	if len(failed) == len(views) {
		return nil, failErr("no datacenter of cluster %q could be read: %s", s.cluster, strings.Join(failed, "; "))
	}
	if groups == 0 && len(failed) == 0 {
		if len(views) == 1 {
			return nil, s.emptyViewErr(views[0].View)
		}
		names := make([]string, len(views))
		for i, v := range views {
			names[i] = v.Name
		}
		return nil, failErr("cluster %q has no groups in datacenters %s (under %s, through Consul at %s); check --cluster, --prefix and --datacenters",
			s.cluster, strings.Join(names, ", "), s.kv.ClusterPrefix(), s.addr)
	}
	return views, nil
}

// buildMeshStatus merges the datacenters' reads into one status document.
// Each group is built with its own datacenter's cluster config (each
// datacenter has its copy); replication between groups is matched across
// the whole mesh. With more than one datacenter, cluster-level problems
// name theirs. A group name found in two datacenters (it should live in
// one) is shown once, from the first, with a problem line.
func buildMeshStatus(cluster string, dcs []dcView, only string, goal time.Duration) statusDoc {
	doc := statusDoc{Cluster: cluster, Groups: []groupStatus{}, Problems: []string{}, DetectionGoal: seconds(max(goal, 0))}
	multi := len(dcs) > 1
	merged := &consulkv.ClusterView{Groups: map[string]*consulkv.GroupView{}}
	type placed struct {
		dc  string
		cfg consulkv.ClusterConfig
	}
	where := map[string]placed{}
	read, paused := 0, 0
	for _, d := range dcs {
		if d.Name != "" {
			doc.Datacenters = append(doc.Datacenters, d.Name)
		}
		if d.Err != nil || d.View == nil {
			if doc.Unreachable == nil {
				doc.Unreachable = map[string]string{}
			}
			msg := "not read"
			if d.Err != nil {
				msg = d.Err.Error()
			}
			doc.Unreachable[d.Name] = msg
			continue
		}
		read++
		var cfg consulkv.ClusterConfig
		if d.View.Config != nil {
			cfg = *d.View.Config
		}
		if cfg.Paused {
			paused++
		}
		for _, p := range d.View.Problems {
			msg := trimPkg(p.Error())
			if only != "" && groupProblem(msg) && !strings.Contains(msg, "/groups/"+only+"/") {
				continue
			}
			if multi {
				msg = "datacenter " + d.Name + ": " + msg
			}
			doc.Problems = append(doc.Problems, msg)
		}
		for _, name := range d.View.GroupNames() {
			if first, dup := where[name]; dup {
				doc.Problems = append(doc.Problems, fmt.Sprintf("group %s is in datacenters %s and %s (a group lives in one); showing %s's",
					name, first.dc, d.Name, first.dc))
				continue
			}
			where[name] = placed{dc: d.Name, cfg: cfg}
			merged.Groups[name] = d.View.Groups[name]
		}
	}
	// The cluster is paused when every datacenter read says so; otherwise
	// each group shows its own datacenter's pause.
	doc.Paused = read > 0 && paused == read
	for _, name := range merged.GroupNames() {
		if only != "" && name != only {
			continue
		}
		gs := buildGroup(merged.Groups[name], where[name].cfg)
		gs.Datacenter = where[name].dc
		gs.DetectionWarnings = detectionWarnings(gs, goal)
		doc.Groups = append(doc.Groups, gs)
	}
	var unread []string
	for _, d := range dcs {
		if d.Err != nil || d.View == nil {
			unread = append(unread, d.Name)
		}
	}
	for _, l := range buildReplication(merged, time.Now(), unread...) {
		if only == "" || l.From == only || l.To == only {
			doc.Replication = append(doc.Replication, l)
		}
	}
	return doc
}

// datacenterFooter: the datacenters that could not be read, in the order
// shown.
func datacenterFooter(doc statusDoc) []string {
	var out []string
	names := doc.Datacenters
	if len(names) == 0 {
		for dc := range doc.Unreachable {
			names = append(names, dc)
		}
		sort.Strings(names)
	}
	for _, dc := range names {
		if msg, ok := doc.Unreachable[dc]; ok {
			out = append(out, fmt.Sprintf("Datacenter %s: unreachable (%s)", dc, msg))
		}
	}
	return out
}

// notReadHint completes "group not found" when some datacenters could not
// be read: the group may be in one of them.
func notReadHint(views []dcView) string {
	var failed []string
	for _, v := range views {
		if v.Err != nil {
			failed = append(failed, v.Name)
		}
	}
	if len(failed) == 0 {
		return ""
	}
	return "; not read: datacenter " + strings.Join(failed, ", ")
}

func meshHasGroup(views []dcView, group string) bool {
	for _, v := range views {
		if v.Err == nil && v.View != nil && v.View.Groups[group] != nil {
			return true
		}
	}
	return false
}

// meshGroupNames lists every group read, sorted, each once.
func meshGroupNames(views []dcView) []string {
	var names []string
	for _, v := range views {
		if v.Err != nil || v.View == nil {
			continue
		}
		for _, n := range v.View.GroupNames() {
			if !contains(names, n) {
				names = append(names, n)
			}
		}
	}
	sort.Strings(names)
	return names
}
