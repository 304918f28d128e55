package main

import (
	"context"
	"flag"
	"fmt"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/internal/demo"
)

// writeLog is what a client saw: the time and member of every successful
// write.
type writeLog struct {
	mu       sync.Mutex
	at       []time.Time
	who      []string
	attempts int
	failures int
}

func (l *writeLog) record(ok bool, who string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.attempts++
	if !ok {
		l.failures++
		return
	}
	l.at = append(l.at, time.Now())
	l.who = append(l.who, who)
}

// directClient writes every interval to the member that accepts writes,
// keeping a connection per member; after a failure it tries the others in
// turn (each once per tick) until one takes the write.
func directClient(ctx context.Context, members []*demo.Member, interval time.Duration, log *writeLog) {
	ws := make([]*writer, len(members))
	for i, m := range members {
		ws[i] = newWriter("127.0.0.1", m.PGPort, time.Second)
	}
	defer func() {
		for _, w := range ws {
			w.close()
		}
	}()
	cur := 0
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for ctx.Err() == nil {
		ok := false
		for k := 0; k < len(ws) && !ok && ctx.Err() == nil; k++ {
			i := (cur + k) % len(ws)
			if ws[i].write(ctx, "switchover-direct") {
				ok, cur = true, i
			}
			if ctx.Err() == nil {
				log.record(ok, members[i].Name)
			}
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

// proxyClient writes every interval through one address (HAProxy),
// reconnecting after any failure (libpq connect_timeout 2s).
func proxyClient(ctx context.Context, m *demo.Mesh, port int, interval time.Duration, log *writeLog) {
	w := newWriter("127.0.0.1", port, 3*time.Second)
	defer w.close()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for ctx.Err() == nil {
		ok := w.write(ctx, "switchover-haproxy")
		if ctx.Err() == nil {
			log.record(ok, memberByPort(m, w.lastPort))
		}
		if !ok {
			w.close() // a read-only answer means HAProxy routed to a replica: reconnect
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

// clientRun is one client's view of one switchover.
type clientRun struct {
	gap              time.Duration
	gapFrom, gapTo   string
	lastOld, first   time.Time
	writes, failures int
}

func (l *writeLog) analyse(old, target string, start time.Time) clientRun {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := clientRun{writes: len(l.at), failures: l.failures}
	r.gap, r.gapFrom, r.gapTo = longestGap(l.at, l.who, start.Add(-time.Second))
	r.first = firstOn(l, target, start)
	r.lastOld = lastOn(l, old, start)
	return r
}

// settled: the client has written on target for a second.
func (l *writeLog) settled(target string, start time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(l.at)
	if n == 0 || l.who[n-1] != target {
		return false
	}
	f := firstOn(l, target, start)
	return !f.IsZero() && time.Since(f) > time.Second
}

func runSwitchover(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("switchover", flag.ContinueOnError)
	runs := fs.Int("runs", 5, "number of switchovers (the figures are medians over them)")
	interval := fs.Duration("interval", 10*time.Millisecond, "the clients' write interval")
	viaHAProxy := fs.Bool("haproxy", true, "also run a client writing through HAProxy configured by pgmesh's renderer (builtin template, runtime-API hook)")
	ctx, p, err := e.parseProfile(ctx, fs, args, 30*time.Minute)
	if err != nil {
		return err
	}
	o, err := e.meshOptions(p, 3)
	if err != nil {
		return err
	}
	bin, err := e.pgmesh()
	if err != nil {
		return err
	}
	printf("# planned switchover: 1 group x 3 members; `pgmesh switchover --force --to X` while clients write every %s:\n", *interval)
	printf("#   direct: one connection per member, moving to whichever member takes the write\n")
	if *viaHAProxy {
		printf("#   haproxy: through HAProxy's group listener (pgmesh's builtin template: httpchk GET /primary, inter 1s fastinter 250ms fall 2,\n")
		printf("#            on-marked-down shutdown-sessions, runtime-API hook), reconnecting after errors, libpq connect_timeout 2s\n")
	}
	printf("# profile %s\n", p)
	m, err := e.startMesh(ctx, o)
	if err != nil {
		return err
	}
	kv, err := consulkv.New(consulkv.Config{Address: m.Consul, Cluster: o.Cluster})
	if err != nil {
		return err
	}
	primary, err := currentPrimary(ctx, m, time.Minute)
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
	type series struct{ gap, lastOld, first []float64 }
	var direct, hap series
	var cmdTimes, freedS, takenS []float64
	for run := 1; run <= *runs; run++ {
		if err := m.WaitHealthy(ctx, 3*time.Minute); err != nil {
			return err
		}
		if err := waitMemberKeys(ctx, kv, primary.Group, memberNames(m.Members()), time.Minute); err != nil {
			return err
		}
		if primary, err = currentPrimary(ctx, m, time.Minute); err != nil {
			return err
		}
		target := nextMember(m.Members(), primary)
		dlog, hlog := &writeLog{}, &writeLog{}
		cctx, stopClients := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); directClient(cctx, m.Members(), *interval, dlog) }()
		if router != nil {
			wg.Add(1)
			go func() { defer wg.Done(); proxyClient(cctx, m, router.GroupPort, *interval, hlog) }()
		}
		stop := func() { stopClients(); wg.Wait() }
		lw, err := watchLeader(cctx, kv, primary.Group, primary.Name)
		if err != nil {
			stop()
			return err
		}
		if err := sleepCtx(ctx, time.Second); err != nil {
			stop()
			return err
		}
		start := time.Now()
		lw.arm(start)
		out, cmdErr := exec.CommandContext(ctx, bin, "switchover", "--group", primary.Group, "--to", target.Name, "--force",
			"--timeout", "90s", "--consul", m.Consul, "--cluster", o.Cluster).CombinedOutput()
		end := time.Now()
		if cmdErr != nil {
			stop()
			return fmt.Errorf("run %d: pgmesh switchover: %v: %s", run, cmdErr, strings.TrimSpace(string(out)))
		}
		// Keep writing until every client wrote on the target for a second.
		deadline := time.Now().Add(60 * time.Second)
		for ctx.Err() == nil && time.Now().Before(deadline) && !(dlog.settled(target.Name, start) && (router == nil || hlog.settled(target.Name, start))) {
			time.Sleep(50 * time.Millisecond)
		}
		lw.wait(time.Second)
		stop()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		freed, taken, _ := lw.result()
		d := dlog.analyse(primary.Name, target.Name, start)
		if d.first.IsZero() {
			return fmt.Errorf("run %d: the direct client wrote nothing on %s after the switchover", run, target.Name)
		}
		direct.gap = append(direct.gap, secs(d.gap))
		direct.lastOld = append(direct.lastOld, secs(d.lastOld.Sub(start)))
		direct.first = append(direct.first, secs(d.first.Sub(start)))
		cmdTimes = append(cmdTimes, secs(end.Sub(start)))
		freedS = append(freedS, secs(freed))
		takenS = append(takenS, secs(taken))
		printf("run %d/%d: %s -> %s (%q): leader key released +%.2fs, taken +%.2fs, command done +%.2fs (from the command start)\n",
			run, *runs, primary.Name, target.Name, strings.TrimSpace(string(out)), secs(freed), secs(taken), secs(end.Sub(start)))
		printf("  direct:  longest gap %.3fs (%s -> %s); last write on %s +%.2fs, first on %s +%.2fs; %d writes, %d failed attempts\n",
			secs(d.gap), d.gapFrom, d.gapTo, primary.Name, secs(d.lastOld.Sub(start)), target.Name, secs(d.first.Sub(start)), d.writes, d.failures)
		if router != nil {
			h := hlog.analyse(primary.Name, target.Name, start)
			if h.first.IsZero() {
				printf("  haproxy: no write on %s within 60s of the switchover\n", target.Name)
				continue
			}
			hap.gap = append(hap.gap, secs(h.gap))
			hap.lastOld = append(hap.lastOld, secs(h.lastOld.Sub(start)))
			hap.first = append(hap.first, secs(h.first.Sub(start)))
			printf("  haproxy: longest gap %.3fs (%s -> %s); last write on %s +%.2fs, first on %s +%.2fs; %d writes, %d failed attempts\n",
				secs(h.gap), h.gapFrom, h.gapTo, primary.Name, secs(h.lastOld.Sub(start)), target.Name, secs(h.first.Sub(start)), h.writes, h.failures)
		}
	}
	printf("\nplanned switchover, profile %s, %d runs, clients writing every %s (times from the command start)\n", p.Name, len(direct.gap), *interval)
	rows := [][]string{
		statRow("longest gap between writes, direct", direct.gap, fmtSecs),
	}
	if router != nil {
		rows = append(rows, statRow("longest gap between writes, through HAProxy", hap.gap, fmtSecs))
	}
	rows = append(rows,
		statRow("last write on the old primary, direct", direct.lastOld, fmtSecs),
		statRow("leader key released", freedS, fmtSecs),
		statRow("leader key taken by the candidate", takenS, fmtSecs),
		statRow("first write on the new primary, direct", direct.first, fmtSecs))
	if router != nil {
		rows = append(rows, statRow("first write on the new primary, HAProxy", hap.first, fmtSecs))
	}
	rows = append(rows, statRow("pgmesh switchover command done", cmdTimes, fmtSecs))
	table([]string{"metric", "median", "min", "max", "n"}, rows)
	return nil
}

// nextMember is the member after cur in name order (wrapping).
func nextMember(ms []*demo.Member, cur *demo.Member) *demo.Member {
	s := append([]*demo.Member(nil), ms...)
	sort.Slice(s, func(i, j int) bool { return s[i].Name < s[j].Name })
	for i, m := range s {
		if m == cur {
			return s[(i+1)%len(s)]
		}
	}
	return s[0]
}

// firstOn is the first successful write on member at or after from (zero if
// none). The caller holds log.mu.
func firstOn(log *writeLog, member string, from time.Time) time.Time {
	for i, t := range log.at {
		if log.who[i] == member && !t.Before(from) {
			return t
		}
	}
	return time.Time{}
}

// lastOn is the last successful write on member before the first write on
// another member after from (zero if none). The caller holds log.mu.
func lastOn(log *writeLog, member string, from time.Time) time.Time {
	var last time.Time
	for i, t := range log.at {
		if t.Before(from) {
			if log.who[i] == member {
				last = t
			}
			continue
		}
		if log.who[i] != member {
			break
		}
		last = t
	}
	return last
}

// longestGap is the longest interval between consecutive successful writes
// from `from` on, with the members before and after it.
func longestGap(at []time.Time, who []string, from time.Time) (time.Duration, string, string) {
	var best time.Duration
	var a, b string
	for i := 1; i < len(at); i++ {
		if at[i-1].Before(from) {
			continue
		}
		if d := at[i].Sub(at[i-1]); d > best {
			best, a, b = d, who[i-1], who[i]
		}
	}
	return best, a, b
}
