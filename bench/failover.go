package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/internal/demo"
)

// failoverResult is one kill -9 run; durations are from the SIGKILL.
type failoverResult struct {
	killed, newPrimary string
	freed, taken       time.Duration // leader key gone / held by another member
	serf               time.Duration // -hosts: the host's serfHealth critical (0: not seen)
	direct, dns        time.Duration // first successful write
	haproxy            time.Duration // first write through HAProxy (0: not run)
	dnsAddr            string
	directErr, dnsErr  string
	haproxyErr         string
}

func runFailover(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("failover", flag.ContinueOnError)
	runs := fs.Int("runs", 5, "number of kill -9 runs (the figures are medians over them)")
	poll := fs.Duration("poll", 20*time.Millisecond, "how often the clients try to write")
	viaHAProxy := fs.Bool("haproxy", true, "also time the first write through HAProxy configured by pgmesh's renderer (builtin template, runtime-API hook)")
	fastGossip := fs.Bool("fast-gossip", false, "with -hosts: tune the bed's Consul agents' gossip_lan (probe_interval 200ms, probe_timeout 100ms, suspicion_mult 2, gossip_interval 100ms)")
	hosts := fs.Bool("hosts", false, "model hosts as production runs them: 3 Consul servers, one Consul client agent per member (its agent talks to it), and the kill takes the client agent too")
	ctx, p, err := e.parseProfile(ctx, fs, args, 40*time.Minute)
	if err != nil {
		return err
	}
	if *fastGossip && !*hosts {
		return errors.New("-fast-gossip tunes the host bed's Consul agents: use it with -hosts")
	}
	if !*hosts && containsString(p.SessionChecks, "serfHealth") {
		return fmt.Errorf("profile %s ties the session to serfHealth: run it with -hosts (without a Consul agent per host, the node whose serfHealth the sessions follow never dies)", p.Name)
	}
	o, err := e.meshOptions(p, 3)
	if err != nil {
		return err
	}
	var hb *hostBed
	if *hosts {
		if hb, err = newHostBed(ctx, e, &o, *fastGossip); err != nil {
			return err
		}
		printf("# unplanned failover on hosts: 3 Consul servers (the demo's + 2 joined), 1 group x 3 members, each member a host with its own Consul client agent;\n")
		printf("# kill -9 of the primary's host (Consul client agent + pgmesh agent + fence watchdog + postmaster + backends)\n")
		if *fastGossip {
			printf("# gossip: tuned on the bed's agents (gossip_lan: probe_interval 200ms, probe_timeout 100ms, suspicion_mult 2, gossip_interval 100ms); the demo's first server keeps Consul's defaults\n")
		} else {
			printf("# gossip: Consul's LAN defaults (no gossip_lan block: probe_interval 1s, probe_timeout 500ms, suspicion_mult 4, gossip_interval 200ms)\n")
		}
	} else {
		printf("# unplanned failover: 1 group x 3 members, kill -9 of the primary's host (agent + fence watchdog + postmaster + backends)\n")
	}
	printf("# profile %s; Consul session_ttl_min 1s, DNS allow_stale=false, ttl 0\n", p)
	printf("# clients poll every %s: direct (one connection per surviving member), DNS (SRV primary.bench.service.consul, then write to the answer)", *poll)
	if *viaHAProxy {
		printf(",\n# HAProxy (group listener of pgmesh's builtin template, runtime-API hook, libpq connect_timeout 2s)")
	}
	printf("\n")
	m, err := e.startMesh(ctx, o)
	if err != nil {
		return err
	}
	if hb != nil {
		if err := hb.waitReady(ctx, 2*time.Minute); err != nil {
			return err
		}
	}
	kv, err := consulkv.New(consulkv.Config{Address: m.Consul, Cluster: o.Cluster})
	if err != nil {
		return err
	}
	primary, err := currentPrimary(ctx, m, 60*time.Second)
	if err != nil {
		return err
	}
	if err := createBenchTable(ctx, m, primary); err != nil {
		return fmt.Errorf("create table: %w", err)
	}
	var router *haproxyRouter
	if *viaHAProxy {
		if router, err = startHAProxyRouter(ctx, e, m); err != nil {
			return err
		}
	}
	var results []failoverResult
	for run := 1; run <= *runs; run++ {
		primary, err := currentPrimary(ctx, m, 60*time.Second)
		if err != nil {
			return err
		}
		if err := waitMemberKeys(ctx, kv, primary.Group, memberNames(m.Members()), time.Minute); err != nil {
			return err
		}
		if hb != nil {
			if err := hb.waitReady(ctx, time.Minute); err != nil {
				return err
			}
		}
		if router != nil {
			// HAProxy's checks must have caught up with the last run.
			if err := waitHAProxyWritable(ctx, router.GroupPort, time.Minute); err != nil {
				return err
			}
		}
		// Kill at a random point of the renew cycle.
		if err := sleepCtx(ctx, time.Duration(rand.Int64N(int64(p.LoopWait)))); err != nil {
			return err
		}
		r, err := failoverOnce(ctx, m, hb, kv, primary, p, *poll, router)
		if err != nil {
			return fmt.Errorf("run %d: %w", run, err)
		}
		results = append(results, r)
		hp := ""
		if router != nil {
			hp = fmt.Sprintf(", via HAProxy +%.3fs", secs(r.haproxy))
		}
		serf := ""
		if hb != nil {
			serf = "serfHealth not seen critical, "
			if r.serf > 0 {
				serf = fmt.Sprintf("serfHealth critical +%.2fs, ", secs(r.serf))
			}
		}
		printf("run %d/%d: killed %s -> new primary %s: %sleader key freed +%.2fs, taken +%.2fs; first write direct +%.3fs, via DNS +%.3fs (%s)%s%s\n",
			run, *runs, r.killed, r.newPrimary, serf, secs(r.freed), secs(r.taken), secs(r.direct), secs(r.dns), r.dnsAddr, hp, errNote(r))
		// Bring the old primary back as a replica for the next run.
		t := time.Now()
		if hb != nil {
			if err := hb.restartHost(ctx, m, primary, 2*time.Minute); err != nil {
				return err
			}
		} else if err := m.StartMember(primary); err != nil {
			return err
		}
		if err := m.WaitHealthy(ctx, 4*time.Minute); err != nil {
			return fmt.Errorf("run %d: %s did not rejoin: %w", run, primary.Name, err)
		}
		printf("#   %s rejoined as a replica after %.1fs\n", primary.Name, time.Since(t).Seconds())
	}
	var serf, freed, taken, direct, dns, hap []float64
	for _, r := range results {
		if r.serf > 0 {
			serf = append(serf, secs(r.serf))
		}
		freed = append(freed, secs(r.freed))
		taken = append(taken, secs(r.taken))
		if r.directErr == "" {
			direct = append(direct, secs(r.direct))
		}
		if r.dnsErr == "" {
			dns = append(dns, secs(r.dns))
		}
		if router != nil && r.haproxyErr == "" {
			hap = append(hap, secs(r.haproxy))
		}
	}
	bed := ""
	if hb != nil {
		bed = " on hosts (3 Consul servers, a Consul client agent per member)"
	}
	printf("\nunplanned failover%s, profile %s, %d runs (seconds after the SIGKILL)\n", bed, p.Name, len(results))
	var rows [][]string
	if hb != nil {
		rows = append(rows, statRow("dead host's serfHealth critical (serf failure detection)", serf, fmtSecs))
	}
	rows = append(rows,
		statRow("leader key freed (session invalidated)", freed, fmtSecs),
		statRow("leader key taken by a replica", taken, fmtSecs),
		statRow("first write, direct", direct, fmtSecs),
		statRow("first write, via DNS primary.bench.service.consul", dns, fmtSecs),
	)
	if router != nil {
		rows = append(rows, statRow("first write, through HAProxy", hap, fmtSecs))
	}
	table([]string{"metric", "median", "min", "max", "n"}, rows)
	return nil
}

func errNote(r failoverResult) string {
	s := ""
	if r.directErr != "" {
		s += " [direct: " + r.directErr + "]"
	}
	if r.dnsErr != "" {
		s += " [dns: " + r.dnsErr + "]"
	}
	if r.haproxyErr != "" {
		s += " [haproxy: " + r.haproxyErr + "]"
	}
	return s
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// currentPrimary is the member whose REST API says it is the writable
// primary.
func currentPrimary(ctx context.Context, m *demo.Mesh, timeout time.Duration) (*demo.Member, error) {
	deadline := time.Now().Add(timeout)
	for {
		for _, mem := range m.Members() {
			if code, _ := apiGet(fmt.Sprintf("http://127.0.0.1:%d/primary", mem.APIPort)); code == 200 {
				return mem, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, errors.New("no member reports itself the writable primary")
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

func failoverOnce(ctx context.Context, m *demo.Mesh, hb *hostBed, kv *consulkv.Client, primary *demo.Member, p profile, poll time.Duration, router *haproxyRouter) (failoverResult, error) {
	res := failoverResult{killed: primary.Name}
	limit := 2*p.TTL + p.LockDelay + 60*time.Second
	rctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()

	lw, err := watchLeader(rctx, kv, primary.Group, primary.Name)
	if err != nil {
		return res, err
	}
	var sw *serfWatch
	if hb != nil {
		if sw, err = hb.watchSerf(rctx, hb.clients[primary.Name].node); err != nil {
			return res, err
		}
	}

	// Direct clients: one per surviving member, connected before the kill
	// (to a replica the write fails read-only; the session is kept).
	var survivors []*demo.Member
	var writers []*writer
	for _, mem := range m.Members() {
		if mem != primary {
			w := newWriter("127.0.0.1", mem.PGPort, time.Second)
			w.write(rctx, "warmup")
			survivors = append(survivors, mem)
			writers = append(writers, w)
		}
	}
	type hit struct {
		at   time.Time
		who  string
		err  string
		path string
	}
	hits := make(chan hit, 8)
	var hw *writer
	if router != nil {
		hw = newWriter("127.0.0.1", router.GroupPort, 3*time.Second)
		hw.write(rctx, "warmup") // connected to the old primary, as a client would be
	}
	var t0 time.Time
	if hb != nil {
		t0, err = hb.killHost(m, primary)
		sw.arm(t0)
	} else {
		t0, err = m.KillHost(primary)
	}
	if err != nil {
		return res, err
	}
	lw.arm(t0)
	pctx, stopPolls := context.WithCancel(rctx)
	defer stopPolls()
	var directOnce sync.Once
	var wg sync.WaitGroup
	for i := range survivors {
		wg.Add(1)
		go func(mem *demo.Member, w *writer) {
			defer wg.Done()
			defer w.close()
			tick := time.NewTicker(poll)
			defer tick.Stop()
			for {
				if w.write(pctx, "failover-direct") {
					now := time.Now()
					directOnce.Do(func() { hits <- hit{at: now, who: mem.Name, path: "direct"} })
					return
				}
				select {
				case <-pctx.Done():
					return
				case <-tick.C:
				}
			}
		}(survivors[i], writers[i])
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		r := dnsResolver(m.DNSAddr())
		name := "primary." + m.Options().Cluster + ".service.consul."
		cache := map[string]*writer{}
		defer func() {
			for _, w := range cache {
				w.close()
			}
		}()
		tick := time.NewTicker(poll)
		defer tick.Stop()
		for {
			addrs, _ := lookupSRV(pctx, r, name)
			for _, a := range addrs {
				w := cache[a]
				if w == nil {
					host, port, _ := net.SplitHostPort(a)
					pn, _ := strconv.Atoi(port)
					w = newWriter(host, pn, time.Second)
					cache[a] = w
				}
				if w.write(pctx, "failover-dns") {
					hits <- hit{at: time.Now(), who: a, path: "dns"}
					return
				}
			}
			select {
			case <-pctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	gotHAProxy := router == nil
	if router != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer hw.close()
			tick := time.NewTicker(poll)
			defer tick.Stop()
			for {
				if hw.write(pctx, "failover-haproxy") {
					hits <- hit{at: time.Now(), who: memberByPort(m, hw.lastPort), path: "haproxy"}
					return
				}
				hw.close()
				select {
				case <-pctx.Done():
					return
				case <-tick.C:
				}
			}
		}()
	}
	gotDirect, gotDNS := false, false
	for !gotDirect || !gotDNS || !gotHAProxy {
		select {
		case h := <-hits:
			switch h.path {
			case "direct":
				gotDirect, res.direct, res.newPrimary = true, h.at.Sub(t0), h.who
			case "dns":
				gotDNS, res.dns, res.dnsAddr = true, h.at.Sub(t0), h.who
			default:
				gotHAProxy, res.haproxy = true, h.at.Sub(t0)
			}
		case <-rctx.Done():
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
			if !gotDirect {
				res.directErr = fmt.Sprintf("no write within %s", limit)
			}
			if !gotDNS {
				res.dnsErr = fmt.Sprintf("no write within %s", limit)
			}
			if !gotHAProxy {
				res.haproxyErr = fmt.Sprintf("no write within %s", limit)
			}
			gotDirect, gotDNS, gotHAProxy = true, true, true
		}
	}
	stopPolls()
	wg.Wait()
	lw.wait(time.Second)
	res.freed, res.taken, _ = lw.result()
	if sw != nil {
		// A TTL-bound failover can end before serf has called the host
		// dead; wait for it, so every run has the figure (and the host is
		// not restarted before Consul saw it die).
		sw.wait(rctx, 30*time.Second)
		res.serf = sw.result()
	}
	if res.directErr != "" && res.dnsErr != "" {
		return res, errors.New("no member became writable: " + res.directErr)
	}
	return res, nil
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
