package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"
)

// bench datacenters: write availability through the prepared query
// <cluster>-write, as an application in dc1 sees it.
//
// The demo across three Consul datacenters (demo.Options.Datacenters: one
// Consul server each, dc2 and dc3 WAN-joined to dc1 on loopback), one
// group of two members per datacenter (n1 in dc1, n2 in dc2, n3 in dc3)
// whose agents talk to their own datacenter's Consul (keys, sessions and
// services stay there), cluster config datacenters [dc1, dc2, dc3]. The
// agents keep bench-write / bench-read in every datacenter (tag primary,
// only passing, nearest first, Failover NearestN 3 + the datacenters, DNS
// TTL 0).
//
// Applications (qwriter) write every -interval through
// bench-write.query.consul asked of a datacenter's Consul DNS, and the
// scenarios break things under them:
//
//	group      kill -9 of dc1's primary host (dc1's group fails over)
//	datacenter every database host of dc1 killed (dc1's group gone),
//	           restarted after the window
//	consul     dc3's Consul server stopped (SIGTERM), started again after
//	           the window; also seen from applications in dc3
//
// The groups do not replicate to each other; each write lands in the table
// of the group that took it, which is all an availability figure needs.

func runDatacenters(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("datacenters", flag.ContinueOnError)
	runs := fs.Int("runs", 3, "runs of each scenario (the figures are medians over them)")
	interval := fs.Duration("interval", 50*time.Millisecond, "how often each application writes")
	window := fs.Duration("window", 40*time.Second, "the window after the fault the availability is computed over")
	appTimeout := fs.Duration("app-timeout", time.Second, "the applications' bound on a DNS lookup, a connect and a statement, each")
	scen := fs.String("scenarios", "group,datacenter,consul", "scenarios to run, in order: group (kill dc1's primary host), datacenter (kill every host of dc1), consul (stop dc3's Consul server)")
	ctx, p, err := e.parseProfile(ctx, fs, args, 60*time.Minute)
	if err != nil {
		return err
	}
	if containsString(p.SessionChecks, "serfHealth") {
		return fmt.Errorf("profile %s ties the session to serfHealth: the datacenters bed has no Consul agent per host", p.Name)
	}
	var todo []string
	for _, s := range strings.Split(*scen, ",") {
		s = strings.TrimSpace(s)
		switch s {
		case "group", "datacenter", "consul":
			todo = append(todo, s)
		case "":
		default:
			return fmt.Errorf("-scenarios: unknown scenario %q (group, datacenter, consul)", s)
		}
	}
	if *interval <= 0 || *window < 5*time.Second || *runs < 1 {
		return errors.New("-interval must be positive, -window at least 5s, -runs at least 1")
	}
	b := &dcBed{e: e, p: p, byName: map[string]*dcSite{}, ports: map[int][2]string{}, interval: *interval, timeout: *appTimeout}
	printf("# write availability through the prepared query bench-write across Consul datacenters:\n")
	printf("# 3 datacenters on loopback (the demo's: one Consul server each, WAN-joined), 1 group x 2 members per datacenter (n1 in dc1, n2 in dc2, n3 in dc3), cluster config datacenters [dc1, dc2, dc3]\n")
	printf("# profile %s; Consul session_ttl_min 1s, DNS allow_stale=false, ttl 0; the query's DNS TTL 0\n", p)
	printf("# applications write every %s (DNS lookup, connect and statement bounded by %s each); availability = writes committed / write slots in the %s after the fault\n",
		*interval, *appTimeout, *window)
	if err := b.start(ctx); err != nil {
		return err
	}
	type result struct {
		name string
		rows [][]string
	}
	var results []result
	for _, s := range todo {
		var rows [][]string
		var err error
		switch s {
		case "group":
			rows, err = b.scenarioGroup(ctx, *runs, *window)
		case "datacenter":
			rows, err = b.scenarioDatacenter(ctx, *runs, *window)
		case "consul":
			rows, err = b.scenarioConsul(ctx, *runs, *window)
		}
		if err != nil {
			return fmt.Errorf("scenario %s: %w", s, err)
		}
		results = append(results, result{s, rows})
	}
	titles := map[string]string{
		"group":      "1. group failover in dc1 (kill -9 of dc1's primary host), applications in dc1",
		"datacenter": "2. datacenter loss (every database host of dc1 killed), applications in dc1",
		"consul":     "3. dc3's Consul server stopped (SIGTERM), applications in dc1 and dc3",
	}
	for _, r := range results {
		printf("\n%s; profile %s, %d runs, window %s after the fault, a write every %s\n", titles[r.name], p.Name, *runs, *window, *interval)
		table([]string{"metric", "median", "min", "max", "n"}, r.rows)
	}
	return nil
}

// scenarioGroup: kill -9 of dc1's primary host.
func (b *dcBed) scenarioGroup(ctx context.Context, runs int, window time.Duration) ([][]string, error) {
	dc1 := b.byName["dc1"]
	printf("\n# scenario 1: group failover in dc1 — kill -9 of dc1's primary host, %d runs\n", runs)
	var pair dc1Pair
	var taken, dnsHome, dnsAway []float64
	for run := 1; run <= runs; run++ {
		if err := b.steady(ctx, dc1); err != nil {
			return nil, err
		}
		primary, err := b.primaryOf(ctx, dc1, time.Minute)
		if err != nil {
			return nil, err
		}
		pw := b.writerPerWrite("dc1-per-write", "dc1")
		pc := b.writerPerConnect("dc1-per-connect", "dc1")
		set := b.startWriters(ctx, pw, pc)
		lctx, cancelWatch := context.WithCancel(ctx)
		lw, err := watchLeader(lctx, dc1.kv, primary.Group, primary.Name)
		if err == nil {
			err = b.preroll(ctx, map[*qwriter]string{pw: "dc1", pc: "dc1"})
		}
		if err == nil {
			err = b.randomPause(ctx)
		}
		var t0 time.Time
		if err == nil {
			t0, err = b.m.KillHost(primary)
		}
		if err != nil {
			set.stop()
			cancelWatch()
			return nil, fmt.Errorf("run %d: %w", run, err)
		}
		lw.arm(t0)
		// The window, and then until the per-write application is back on
		// dc1's new primary.
		sleepCtx(ctx, window)
		limit := 2*b.p.TTL + b.p.LockDelay + time.Minute
		waitFor(ctx, limit-window, func() bool { return !firstIn(pw.attempts(), t0, "dc1", b.where).IsZero() })
		set.stop()
		lw.wait(time.Second)
		cancelWatch()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		_, tk, by := lw.result()
		sp, sc, backP, backC := pair.add(b, pw, pc, t0, t0, window)
		printf("run %d/%d: killed %s's host (dc1); n1's leader key taken by %s +%.2fs\n", run, runs, primary.Name, orNone(by), secs(tk))
		printf("  per-write:   %s; first write elsewhere +%s, back on dc1's new primary +%s\n", sp.summary(), fmtDur(sp.elsewhere), fmtDur(backP))
		printf("  per-connect: %s; first write elsewhere +%s, back in dc1 +%s (last write in %s)\n", sc.summary(), fmtDur(sc.elsewhere), fmtDur(backC), orNone(sc.lastDC))
		printf("  per-write %s\n", sp.dnsLine())
		taken = appendPos(taken, tk)
		dnsHome = appendMedian(dnsHome, sp.dnsHome)
		dnsAway = appendMedian(dnsAway, sp.dnsAway)
		// The killed host comes back as a replica.
		t := time.Now()
		if err := b.m.StartMember(primary); err != nil {
			return nil, err
		}
		if err := b.m.WaitHealthy(ctx, 4*time.Minute); err != nil {
			return nil, fmt.Errorf("run %d: %s did not rejoin: %w", run, primary.Name, err)
		}
		printf("#   %s rejoined as a replica after %.1fs\n", primary.Name, time.Since(t).Seconds())
	}
	return append(pair.rows("first write on dc1's new primary"),
		statRow("n1's leader key taken by the replica (dc1's group failover)", taken, fmtSecs),
		statRow("DNS lookup (SRV + A), answer in dc1 (median per run)", dnsHome, fmtMs1),
		statRow("DNS lookup (SRV + A), answer in another dc (median per run)", dnsAway, fmtMs1),
	), nil
}

// scenarioDatacenter: every database host of dc1 killed, restarted after
// the window.
func (b *dcBed) scenarioDatacenter(ctx context.Context, runs int, window time.Duration) ([][]string, error) {
	dc1 := b.byName["dc1"]
	printf("\n# scenario 2: datacenter loss — every database host of dc1 killed (its Consul server stays), restarted after the window; %d runs\n", runs)
	var pair dc1Pair
	var dnsAway []float64
	for run := 1; run <= runs; run++ {
		if err := b.steady(ctx, dc1); err != nil {
			return nil, err
		}
		pw := b.writerPerWrite("dc1-per-write", "dc1")
		pc := b.writerPerConnect("dc1-per-connect", "dc1")
		set := b.startWriters(ctx, pw, pc)
		err := b.preroll(ctx, map[*qwriter]string{pw: "dc1", pc: "dc1"})
		if err == nil {
			err = b.randomPause(ctx)
		}
		var t0 time.Time
		if err == nil {
			// The primary first, both within milliseconds.
			primary, perr := b.primaryOf(ctx, dc1, 10*time.Second)
			err = perr
			if err == nil {
				t0, err = b.m.KillHost(primary)
				for _, mem := range b.members(dc1) {
					if mem != primary && err == nil {
						_, err = b.m.KillHost(mem)
					}
				}
			}
		}
		if err != nil {
			set.stop()
			return nil, fmt.Errorf("run %d: %w", run, err)
		}
		sleepCtx(ctx, window)
		tr := time.Now()
		for _, mem := range b.members(dc1) {
			if err := b.m.StartMember(mem); err != nil {
				set.stop()
				return nil, err
			}
		}
		waitFor(ctx, 3*time.Minute, func() bool { return !firstIn(pw.attempts(), tr, "dc1", b.where).IsZero() })
		set.stop()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		sp, sc, backP, backC := pair.add(b, pw, pc, t0, tr, window)
		printf("run %d/%d: killed the hosts of n1-a and n1-b (every database host of dc1)\n", run, runs)
		printf("  per-write:   %s; first write elsewhere +%s; after the restart of dc1's hosts back in dc1 +%s\n", sp.summary(), fmtDur(sp.elsewhere), fmtDur(backP))
		printf("  per-connect: %s; first write elsewhere +%s; after the restart back in dc1 +%s (last write in %s)\n", sc.summary(), fmtDur(sc.elsewhere), fmtDur(backC), orNone(sc.lastDC))
		printf("  per-write %s\n", sp.dnsLine())
		dnsAway = appendMedian(dnsAway, sp.dnsAway)
		if err := b.m.WaitHealthy(ctx, 4*time.Minute); err != nil {
			return nil, fmt.Errorf("run %d: dc1's group did not come back: %w", run, err)
		}
	}
	return append(pair.rows("back in dc1, from the hosts' restart"),
		statRow("DNS lookup (SRV + A), answer in another dc (median per run)", dnsAway, fmtMs1),
	), nil
}

// dc1Pair gathers, over the runs of a dc1 scenario, the figures of its two
// applications in dc1: one resolving for every write (pw) and one only to
// reconnect (pc).
type dc1Pair struct {
	pwAvail, pwGap, pwAway, pwBack, pcAvail, pcGap, pcAway, pcBack []float64
}

// add analyses one run (fault at t0; "back in dc1" counted from back) and
// returns what it found for the run's own lines.
func (p *dc1Pair) add(b *dcBed, pw, pc *qwriter, t0, back time.Time, window time.Duration) (sp, sc writerStats, backP, backC time.Duration) {
	sp = analyze(pw.attempts(), t0, window, b.interval, b.where, "dc1")
	sc = analyze(pc.attempts(), t0, window, b.interval, b.where, "dc1")
	backP = sinceOr0(firstIn(pw.attempts(), back, "dc1", b.where), back)
	backC = sinceOr0(firstIn(pc.attempts(), back, "dc1", b.where), back)
	p.pwAvail, p.pwGap = append(p.pwAvail, sp.avail), append(p.pwGap, secs(sp.gap))
	p.pcAvail, p.pcGap = append(p.pcAvail, sc.avail), append(p.pcGap, secs(sc.gap))
	p.pwAway, p.pcAway = appendPos(p.pwAway, sp.elsewhere), appendPos(p.pcAway, sc.elsewhere)
	p.pwBack, p.pcBack = appendPos(p.pwBack, backP), appendPos(p.pcBack, backC)
	return sp, sc, backP, backC
}

// rows are the summary rows; backRow names the per-write "back" figure.
func (p *dc1Pair) rows(backRow string) [][]string {
	return [][]string{
		statRow("resolve per write: writes committed in the window", p.pwAvail, fmtPct),
		statRow("resolve per write: longest gap between writes", p.pwGap, fmtSecs),
		statRow("resolve per write: first write in another datacenter", p.pwAway, fmtSecs),
		statRow("resolve per write: "+backRow, p.pwBack, fmtSecs),
		statRow("resolve per connect: writes committed in the window", p.pcAvail, fmtPct),
		statRow("resolve per connect: longest gap between writes", p.pcGap, fmtSecs),
		statRow("resolve per connect: first write in another datacenter", p.pcAway, fmtSecs),
		statRow("resolve per connect: back in dc1 (runs where it came back)", p.pcBack, fmtSecs),
	}
}

// scenarioConsul: dc3's Consul server stopped under applications in dc1
// and dc3, restarted after the window.
func (b *dcBed) scenarioConsul(ctx context.Context, runs int, window time.Duration) ([][]string, error) {
	dc1, dc3 := b.byName["dc1"], b.byName["dc3"]
	printf("\n# scenario 3: dc3's Consul server stopped (SIGTERM) under applications in dc1 and dc3, restarted after the window; %d runs\n", runs)
	printf("# dc3's applications: resolve per write through dc3's DNS; through dc3's DNS, then dc1's when dc3's fails; direct to dc3's primary (no DNS)\n")
	var pwAvail, pwGap, pcAvail, pcGap, d3Avail, d3fAvail, d3fGap, d3Direct, d3DirectGap, d3Back, d3Fail, d3fDNS, kept []float64
	for run := 1; run <= runs; run++ {
		if err := b.steady(ctx, dc1); err != nil {
			return nil, err
		}
		if err := b.waitAnswersHome(ctx, "dc3", time.Minute); err != nil {
			return nil, err
		}
		p3, err := b.primaryOf(ctx, dc3, time.Minute)
		if err != nil {
			return nil, err
		}
		pw := b.writerPerWrite("dc1-per-write", "dc1")
		pc := b.writerPerConnect("dc1-per-connect", "dc1")
		d3 := b.writerPerWrite("dc3-per-write", "dc3")
		d3f := b.writerPerWrite("dc3-per-write-fallback", "dc3", "dc1")
		d3d := &qwriter{label: "dc3-direct", target: fmt.Sprintf("127.0.0.1:%d", p3.PGPort), timeout: b.timeout}
		set := b.startWriters(ctx, pw, pc, d3, d3f, d3d)
		err = b.preroll(ctx, map[*qwriter]string{pw: "dc1", pc: "dc1", d3: "dc3", d3f: "dc3", d3d: "dc3"})
		var t0 time.Time
		if err == nil {
			t0 = time.Now()
			b.m.StopConsul(dc3.d, 15*time.Second)
			if b.m.ConsulPIDOf(dc3.d) != 0 {
				err = errors.New("dc3's Consul still runs after StopConsul")
			}
		}
		if err != nil {
			set.stop()
			return nil, fmt.Errorf("run %d: %w", run, err)
		}
		sleepCtx(ctx, window)
		// dc3's primary kept its role through the outage?
		code, _ := apiGet(b.m.APIURL(p3) + "/primary")
		tr := time.Now()
		if err := b.m.StartConsulAgain(ctx, dc3.d); err != nil {
			set.stop()
			return nil, err
		}
		waitFor(ctx, 2*time.Minute, func() bool {
			for _, a := range d3.attempts() {
				if a.ok && !a.start.Before(tr) {
					return true
				}
			}
			return false
		})
		set.stop()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var back time.Time
		for _, a := range d3.attempts() {
			if a.ok && !a.start.Before(tr) {
				back = a.end
				break
			}
		}
		sp := analyze(pw.attempts(), t0, window, b.interval, b.where, "dc1")
		sc := analyze(pc.attempts(), t0, window, b.interval, b.where, "dc1")
		s3 := analyze(d3.attempts(), t0, window, b.interval, b.where, "dc3")
		s3f := analyze(d3f.attempts(), t0, window, b.interval, b.where, "dc3")
		s3d := analyze(d3d.attempts(), t0, window, b.interval, b.where, "dc3")
		backD := sinceOr0(back, tr)
		printf("run %d/%d: stopped dc3's Consul server; dc3's primary %s still /primary at the window's end: %v\n", run, runs, p3.Name, code == 200)
		printf("  dc1 per-write:           %s\n", sp.summary())
		printf("  dc1 per-connect:         %s\n", sc.summary())
		printf("  dc3 per-write, dc3 DNS:  %s; after dc3's Consul restarted, first write through dc3's DNS +%s\n", s3.summary(), fmtDur(backD))
		printf("  dc3 per-write, dc3 DNS then dc1 DNS: %s\n", s3f.summary())
		printf("  dc3 direct to %s:     %s\n", p3.Name, s3d.summary())
		printf("  dc3 per-write, dc3 DNS: %s\n", s3.dnsLine())
		printf("  dc3 per-write, dc3 DNS then dc1 DNS: %s\n", s3f.dnsLine())
		pwAvail, pwGap = append(pwAvail, sp.avail), append(pwGap, secs(sp.gap))
		pcAvail, pcGap = append(pcAvail, sc.avail), append(pcGap, secs(sc.gap))
		d3Avail = append(d3Avail, s3.avail)
		d3fAvail, d3fGap = append(d3fAvail, s3f.avail), append(d3fGap, secs(s3f.gap))
		d3Direct, d3DirectGap = append(d3Direct, s3d.avail), append(d3DirectGap, secs(s3d.gap))
		d3Back = appendPos(d3Back, backD)
		d3Fail = appendMedian(d3Fail, s3.dnsFail)
		d3fDNS = appendMedian(d3fDNS, s3f.dnsAway)
		if code == 200 {
			kept = append(kept, 1)
		} else {
			kept = append(kept, 0)
		}
		// dc3 whole again: WAN, its group and its query.
		if err := b.waitWAN(ctx, 2*time.Minute); err != nil {
			return nil, err
		}
		if err := b.m.WaitHealthy(ctx, 4*time.Minute); err != nil {
			return nil, fmt.Errorf("run %d: dc3: %w", run, err)
		}
		if err := waitMemberKeys(ctx, dc3.kv, dc3.group, memberNames(b.members(dc3)), 2*time.Minute); err != nil {
			return nil, fmt.Errorf("run %d: dc3: %w", run, err)
		}
	}
	return [][]string{
		statRow("dc1, resolve per write: writes committed in the window", pwAvail, fmtPct),
		statRow("dc1, resolve per write: longest gap between writes", pwGap, fmtSecs),
		statRow("dc1, resolve per connect: writes committed in the window", pcAvail, fmtPct),
		statRow("dc1, resolve per connect: longest gap between writes", pcGap, fmtSecs),
		statRow("dc3, resolve per write through dc3's DNS: writes committed", d3Avail, fmtPct),
		statRow("dc3, a failed lookup through dc3's DNS took (median per run)", d3Fail, fmtMs1),
		statRow("dc3, after dc3's Consul restart: first write through dc3's DNS", d3Back, fmtSecs),
		statRow("dc3, dc3's DNS then dc1's: writes committed (in dc1)", d3fAvail, fmtPct),
		statRow("dc3, dc3's DNS then dc1's: longest gap between writes", d3fGap, fmtSecs),
		statRow("dc3, dc3's DNS then dc1's: lookup time (median per run)", d3fDNS, fmtMs1),
		statRow("dc3, direct to its primary (no DNS): writes committed", d3Direct, fmtPct),
		statRow("dc3, direct to its primary: longest gap between writes", d3DirectGap, fmtSecs),
		statRow("dc3's primary still the primary at the window's end (1 = yes)", kept, func(x float64) string { return fmt.Sprintf("%.0f", x) }),
	}, nil
}

func sinceOr0(t, t0 time.Time) time.Duration {
	if t.IsZero() {
		return 0
	}
	return t.Sub(t0)
}

// appendPos appends d in seconds when it was seen (> 0).
func appendPos(xs []float64, d time.Duration) []float64 {
	if d > 0 {
		return append(xs, secs(d))
	}
	return xs
}

func appendMedian(xs, sample []float64) []float64 {
	if len(sample) == 0 {
		return xs
	}
	return append(xs, summarize(sample).median)
}

func fmtDur(d time.Duration) string {
	if d <= 0 {
		return "never"
	}
	return fmt.Sprintf("%.2fs", secs(d))
}

func fmtMs1(x float64) string {
	if x != x {
		return "-"
	}
	return fmt.Sprintf("%.1fms", x*1000)
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
