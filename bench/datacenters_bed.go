package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/internal/demo"
)

// The bed of bench datacenters: the demo across three datacenters, the
// applications that write through the prepared query, and the waits that
// put the bed back in a steady state between runs.

// dcSite is one datacenter: its Consul server and its group.
type dcSite struct {
	name, group string
	d           *demo.Datacenter
	kv          *consulkv.Client
	api         *api.Client
}

type dcBed struct {
	e        *env
	p        profile
	m        *demo.Mesh
	sites    []*dcSite
	byName   map[string]*dcSite
	ports    map[int][2]string // PostgreSQL port -> datacenter, member
	interval time.Duration
	timeout  time.Duration // of an application's DNS lookup, connect, statement
}

func (b *dcBed) where(port int) (string, string) {
	w, ok := b.ports[port]
	if !ok {
		return fmt.Sprintf("port %d", port), ""
	}
	return w[0], w[1]
}

// dnsOf is the Consul DNS server of a datacenter.
func (b *dcBed) dnsOf(dc string) dnsServer {
	return dnsServer{name: dc, addr: b.byName[dc].d.DNSAddr()}
}

const dcQuery = "bench-write.query.consul."

// writerPerWrite resolves the query through the datacenters' DNS (in
// order) before every write.
func (b *dcBed) writerPerWrite(label string, dcs ...string) *qwriter {
	var servers []dnsServer
	for _, dc := range dcs {
		servers = append(servers, b.dnsOf(dc))
	}
	return &qwriter{label: label, resolve: srvResolve(dcQuery, b.timeout, servers...), perWrite: true, timeout: b.timeout}
}

// writerPerConnect resolves only to (re)connect.
func (b *dcBed) writerPerConnect(label, dc string) *qwriter {
	return &qwriter{label: label, resolve: srvResolve(dcQuery, b.timeout, b.dnsOf(dc)), timeout: b.timeout}
}

// start brings up the three datacenters and waits until the queries
// answer each datacenter's own primary.
func (b *dcBed) start(ctx context.Context) error {
	e := b.e
	o, err := e.meshOptions(b.p, 2)
	if err != nil {
		return err
	}
	o.Groups, o.Datacenters = 3, 3
	m, err := e.startMesh(ctx, o)
	if err != nil {
		return err
	}
	b.m = m
	for i, d := range m.Datacenters() {
		s := &dcSite{name: d.Name, group: fmt.Sprintf("n%d", i+1), d: d}
		if s.kv, err = consulkv.New(consulkv.Config{Address: d.HTTPAddr(), Cluster: o.Cluster}); err != nil {
			return err
		}
		cfg := api.DefaultConfig()
		cfg.Address, cfg.Token = d.HTTPAddr(), ""
		cfg.HttpClient = &http.Client{Timeout: 10 * time.Second}
		if s.api, err = api.NewClient(cfg); err != nil {
			return err
		}
		var pg []string
		for _, mem := range m.Members() {
			if mem.Datacenter == d.Name {
				b.ports[mem.PGPort] = [2]string{d.Name, mem.Name}
				pg = append(pg, fmt.Sprintf("%s %d", mem.Name, mem.PGPort))
				if mem.Group != s.group {
					return fmt.Errorf("%s holds group %s, want %s", d.Name, mem.Group, s.group)
				}
			}
		}
		printf("# %s: Consul HTTP %s, DNS %s; group %s: %s\n", d.Name, d.HTTPAddr(), d.DNSAddr(), s.group, strings.Join(pg, ", "))
		b.sites = append(b.sites, s)
		b.byName[d.Name] = s
	}
	if len(b.sites) != 3 {
		return fmt.Errorf("the demo runs %d datacenters, want 3", len(b.sites))
	}
	if err := b.waitWAN(ctx, 90*time.Second); err != nil {
		return err
	}
	all := []string{"dc1", "dc2", "dc3"}
	for _, s := range b.sites {
		if err := waitQueries(ctx, s, all, 90*time.Second); err != nil {
			return err
		}
		primary, err := b.primaryOf(ctx, s, time.Minute)
		if err != nil {
			return err
		}
		if err := createBenchTable(ctx, m, primary); err != nil {
			return fmt.Errorf("%s: create table: %w", s.name, err)
		}
	}
	for _, s := range b.sites {
		if err := b.waitAnswersHome(ctx, s.name, 60*time.Second); err != nil {
			return err
		}
	}
	return nil
}

// members are the members of the site's group.
func (b *dcBed) members(s *dcSite) []*demo.Member {
	var out []*demo.Member
	for _, mem := range b.m.Members() {
		if mem.Group == s.group {
			out = append(out, mem)
		}
	}
	return out
}

// primaryOf is the member of the site's group whose REST API says it is
// the writable primary.
func (b *dcBed) primaryOf(ctx context.Context, s *dcSite, timeout time.Duration) (*demo.Member, error) {
	deadline := time.Now().Add(timeout)
	for {
		for _, mem := range b.members(s) {
			if code, _ := apiGet(b.m.APIURL(mem) + "/primary"); code == 200 {
				return mem, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s: no member of %s reports itself the writable primary", s.name, s.group)
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

// waitWAN waits until every running Consul server knows all three
// datacenters.
func (b *dcBed) waitWAN(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var missing []string
		for _, s := range b.sites {
			got, err := s.api.Catalog().Datacenters()
			if err != nil || len(got) != len(b.sites) {
				missing = append(missing, fmt.Sprintf("%s sees %v (%v)", s.name, got, err))
			}
		}
		if len(missing) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("datacenters not WAN-joined after %s: %s", timeout, strings.Join(missing, "; "))
		}
		if err := sleepCtx(ctx, 300*time.Millisecond); err != nil {
			return err
		}
	}
}

// waitQueries waits until the agents have written bench-write with the
// datacenters (the demo seeds them into the cluster config) into the
// site's Consul.
func waitQueries(ctx context.Context, s *dcSite, dcs []string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		qs, _, err := s.api.PreparedQuery().List(nil)
		var seen string
		if err == nil {
			for _, q := range qs {
				if q.Name == "bench-write" {
					seen = fmt.Sprintf("%+v", q.Service)
					if slices.Equal(q.Service.Failover.Datacenters, dcs) && q.Service.OnlyPassing && q.DNS.TTL == "0s" {
						printf("# %s: bench-write = service %s tags %v, only passing, near %s, failover NearestN %d + %v, DNS TTL %s\n",
							s.name, q.Service.Service, q.Service.Tags, q.Service.Near, q.Service.Failover.NearestN, q.Service.Failover.Datacenters, q.DNS.TTL)
						return nil
					}
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: the agents did not write bench-write with datacenters %v within %s (seen: %s, %v)", s.name, dcs, timeout, seen, err)
		}
		if err := sleepCtx(ctx, 300*time.Millisecond); err != nil {
			return err
		}
	}
}

// waitAnswersHome waits until bench-write asked in dc answers dc's
// primary and a write through it commits there.
func (b *dcBed) waitAnswersHome(ctx context.Context, dc string, timeout time.Duration) error {
	w := b.writerPerWrite("probe-"+dc, dc)
	defer w.closeConn()
	deadline := time.Now().Add(timeout)
	for {
		a := w.once(ctx)
		if a.ok {
			if d, mem := b.where(a.port); d == dc {
				printf("# bench-write.query.consul asked in %s answers %s/%s (SRV target %s, DNS %s)\n", dc, d, mem, a.target, a.dns.Round(100*time.Microsecond))
				return nil
			}
		}
		if time.Now().After(deadline) {
			d, mem := b.where(a.port)
			return fmt.Errorf("bench-write.query.consul asked in %s does not answer %s's primary within %s (last: ok %v, %s/%s, %s %s)", dc, dc, timeout, a.ok, d, mem, a.stage, a.err)
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
}

// steady waits until the site's group is healthy with every key in place
// and the query asked in dc1 answers dc1 again (the end of the last run).
func (b *dcBed) steady(ctx context.Context, s *dcSite) error {
	if err := b.m.WaitHealthy(ctx, 4*time.Minute); err != nil {
		return fmt.Errorf("%s: %w", s.name, err)
	}
	if err := waitMemberKeys(ctx, s.kv, s.group, memberNames(b.members(s)), time.Minute); err != nil {
		return fmt.Errorf("%s: %w", s.name, err)
	}
	return b.waitAnswersHome(ctx, "dc1", time.Minute)
}

// writers runs applications until stop is called.
type writerSet struct {
	ws     []*qwriter
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func (b *dcBed) startWriters(ctx context.Context, ws ...*qwriter) *writerSet {
	set := &writerSet{ws: ws}
	wctx, cancel := context.WithCancel(ctx)
	set.cancel = cancel
	for _, w := range ws {
		set.wg.Add(1)
		go func(w *qwriter) {
			defer set.wg.Done()
			w.run(wctx, b.interval)
		}(w)
	}
	return set
}

func (set *writerSet) stop() {
	set.cancel()
	set.wg.Wait()
}

// preroll waits until every writer with home set has committed a write in
// its home datacenter, plus a second of steady writing.
func (b *dcBed) preroll(ctx context.Context, homes map[*qwriter]string) error {
	start := time.Now()
	deadline := start.Add(time.Minute)
	for {
		done := true
		for w, dc := range homes {
			if firstIn(w.attempts(), start, dc, b.where).IsZero() {
				done = false
			}
		}
		if done {
			return sleepCtx(ctx, time.Second)
		}
		if time.Now().After(deadline) {
			return errors.New("the applications did not write in their home datacenters within a minute before the fault")
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

// waitFor polls cond until it holds or the limit passes.
func waitFor(ctx context.Context, limit time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) || sleepCtx(ctx, 50*time.Millisecond) != nil {
			return false
		}
	}
	return true
}

func (b *dcBed) randomPause(ctx context.Context) error {
	return sleepCtx(ctx, time.Duration(rand.Int64N(int64(b.p.LoopWait))))
}
