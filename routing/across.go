package routing

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/pgmesh/pgmesh/consulkv"
	"go.uber.org/zap"
)

// dcRefresh is how often Run re-reads the datacenter list (when it comes
// from Consul's catalog) and the network coordinates that order the
// datacenters.
const dcRefresh = 30 * time.Second

// dcReadTimeout bounds the reads that decide which datacenters to read and
// in what order.
const dcReadTimeout = 5 * time.Second

// clientFor returns the Consul client that reads datacenter dc ("" or the
// local datacenter: Options.Client itself), making one per datacenter
// through the same agent.
func (r *Renderer) clientFor(dc string) (*consulkv.Client, error) {
	if dc == "" || dc == r.localDC {
		return r.opts.Client, nil
	}
	r.dcMu.Lock()
	defer r.dcMu.Unlock()
	if c := r.dcClients[dc]; c != nil {
		return c, nil
	}
	c, err := r.opts.Client.InDatacenter(dc)
	if err != nil {
		return nil, err
	}
	if r.dcClients == nil {
		r.dcClients = map[string]*consulkv.Client{}
	}
	r.dcClients[dc] = c
	return c, nil
}

// resolveLocalDC learns the datacenter the renderer reads as its own: the
// configured one, else what the local agent says it is in, else the
// datacenter of the catalog's nodes. Unknown ("") when none answers.
func (r *Renderer) resolveLocalDC(ctx context.Context) string {
	if r.localDC != "" {
		return r.localDC
	}
	if dc := r.opts.Client.Datacenter(); dc != "" {
		r.localDC = dc
		return dc
	}
	// /v1/agent/self needs agent:read, which a read-only routing token may
	// not have; the catalog's nodes carry their datacenter with node:read,
	// which reading the service's health needs anyway.
	if self, err := r.opts.Client.Self(ctx); err == nil && self.Datacenter != "" {
		r.localDC = self.Datacenter
		return r.localDC
	}
	ctx, cancel := context.WithTimeout(ctx, dcReadTimeout)
	defer cancel()
	if nodes, _, err := r.opts.Client.API().Catalog().Nodes((&api.QueryOptions{}).WithContext(ctx)); err == nil {
		for _, n := range nodes {
			if n.Datacenter != "" {
				r.localDC = n.Datacenter
				return n.Datacenter
			}
		}
	}
	return ""
}

// wantedDatacenters decides which datacenters to read
// (consulkv.ChooseDatacenters: Options.Datacenters, else the cluster
// config's, cfg as the local datacenter has it, else every datacenter
// Consul knows when it knows more than one). nil means the local one alone,
// read as before datacenters existed. The catalog is only asked when
// neither list is set.
func (r *Renderer) wantedDatacenters(ctx context.Context, cfg *consulkv.ClusterConfig) []string {
	var catalog []string
	if len(r.opts.Datacenters) == 0 && (cfg == nil || len(cfg.Datacenters) == 0) {
		catalog, _ = r.opts.Client.Datacenters(ctx) // unknown: the local datacenter alone
	}
	dcs, from := consulkv.ChooseDatacenters(r.opts.Datacenters, cfg, catalog)
	if from == consulkv.DatacentersLocal {
		return nil
	}
	return dcs
}

// readOrder reads the WAN coordinates and returns the datacenters in
// preference order with their round-trip times. A failed read orders by the
// round-trip times read last.
func (r *Renderer) readOrder(ctx context.Context, dcs []string) ([]string, map[string]time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, dcReadTimeout)
	defer cancel()
	var maps []*api.CoordinateDatacenterMap
	_, err := r.opts.Client.API().Raw().Query("/v1/coordinate/datacenters", &maps, (&api.QueryOptions{}).WithContext(ctx))
	var rtt map[string]time.Duration
	if err != nil {
		r.log.Warn("reading the datacenters' network coordinates; keeping the previous order", zap.Error(err))
	} else {
		rtt = DatacenterRTTs(maps, r.localDC)
	}
	all := append([]string(nil), dcs...)
	if r.localDC != "" && !slices.Contains(all, r.localDC) {
		all = append(all, r.localDC)
	}
	r.dcMu.Lock()
	defer r.dcMu.Unlock()
	if err != nil && r.dcRTT != nil {
		rtt = r.dcRTT
	}
	order := OrderDatacenters(all, r.localDC, rtt, r.dcOrder)
	if !slices.Equal(order, r.dcOrder) {
		r.log.Info("datacenter order", zap.Strings("order", order), zap.String("local", r.localDC), zap.Any("rtt", roundRTTs(rtt)))
	}
	r.dcOrder, r.dcRTT = order, rtt
	return order, rtt
}

func roundRTTs(rtt map[string]time.Duration) map[string]string {
	out := map[string]string{}
	for dc, d := range rtt {
		out[dc] = d.Round(10 * time.Microsecond).String()
	}
	return out
}

// readAcross reads every datacenter once (in parallel) for RenderOnce; the
// local one was read already.
func (r *Renderer) readAcross(ctx context.Context, local DatacenterView, dcs []string) *Mesh {
	r.resolveLocalDC(ctx)
	local.Name = r.localDC
	order, rtt := r.readOrder(ctx, dcs)
	views := []DatacenterView{local}
	var remote []string
	for _, dc := range dcs {
		if dc != r.localDC {
			remote = append(remote, dc)
		}
	}
	out := make([]DatacenterView, len(remote))
	var wg sync.WaitGroup
	for i, dc := range remote {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = r.readDatacenter(ctx, dc)
		}()
	}
	wg.Wait()
	for _, d := range out {
		if d.Err != nil {
			r.log.Warn("datacenter unreachable; rendering without its groups", zap.String("datacenter", d.Name), zap.Error(d.Err))
		}
	}
	views = append(views, out...)
	return r.buildAcross(views, order, rtt)
}

// readDatacenter reads one datacenter's KV view and service health ("" =
// the local datacenter).
func (r *Renderer) readDatacenter(ctx context.Context, dc string) DatacenterView {
	d := DatacenterView{Name: dc}
	c, err := r.clientFor(dc)
	if err != nil {
		d.Err = err
		return d
	}
	view, err := c.ReadCluster(ctx)
	if err != nil {
		d.Err = err
		return d
	}
	entries, _, err := r.health(ctx, c, 0)
	if err != nil {
		d.Err = fmt.Errorf("health of service %q: %w", r.cluster, err)
		return d
	}
	d.View, d.Entries = view, entries
	return d
}

func (r *Renderer) buildAcross(views []DatacenterView, order []string, rtt map[string]time.Duration) *Mesh {
	m := BuildMeshAcross(views, r.localDC, r.opts.LocalGroup, order, rtt)
	if r.cluster != "" {
		m.Cluster = r.cluster
	}
	return m
}
