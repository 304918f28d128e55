package main

import (
	"context"
	"flag"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/pgmesh/pgmesh/internal/demo"
)

type footprintRow struct {
	profile, member, role           string
	agentRSS, agentRSSMax, wdRSS    int64
	agentUSS, wdUSS                 int64
	agentCPU, wdCPU                 float64
	reqPerSec, reqPerLoop, kbPerSec float64
	byKind                          map[string]int64
}

func runFootprint(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("footprint", flag.ContinueOnError)
	duration := fs.Duration("duration", 60*time.Second, "measurement window")
	settle := fs.Duration("settle", 15*time.Second, "idle time after the group is healthy before measuring")
	profList := fs.String("profiles", "default,fast", "comma-separated profiles to measure (a fresh group each)")
	var pf profileFlags
	pf.register(fs, "")
	e.commonFlags(fs, 20*time.Minute)
	ctx, err := e.parse(ctx, fs, args)
	if err != nil {
		return err
	}
	names := strings.Split(*profList, ",")
	if pf.name != "" {
		names = []string{pf.name}
	}
	printf("# idle footprint: 1 group x 3 members, no client load; each agent talks to Consul through its own counting proxy\n")
	printf("# RSS = VmRSS; USS = private pages (the watchdog shares the pgmesh binary's pages with the agent); host total = agent RSS + watchdog USS,\n")
	printf("# what one member's pgmesh costs on its host; CPU = (utime+stime)/wall over %s; requests = HTTP requests the agent sent to Consul\n", *duration)
	printf("# (a blocking query counts once). The agent's CPU includes answering Consul's two HTTP checks per second.\n")
	var all []footprintRow
	for _, name := range names {
		p, err := pf.resolve(strings.TrimSpace(name))
		if err != nil {
			return err
		}
		rows, err := footprintProfile(ctx, e, p, *settle, *duration)
		if err != nil {
			return err
		}
		all = append(all, rows...)
	}
	printf("\nidle footprint per member (%s window)\n", *duration)
	var tr [][]string
	for _, r := range all {
		tr = append(tr, []string{r.profile, r.member, r.role,
			fmt.Sprintf("%.1f MB", mb(r.agentRSS)), fmt.Sprintf("%.1f MB", mb(r.agentRSSMax)), fmt.Sprintf("%.1f MB", mb(r.wdRSS)),
			fmt.Sprintf("%.1f MB", mb(r.wdUSS)), fmt.Sprintf("%.1f MB", mb(r.agentRSS+r.wdUSS)),
			fmt.Sprintf("%.2f%%", r.agentCPU), fmt.Sprintf("%.2f%%", r.wdCPU),
			fmt.Sprintf("%.2f", r.reqPerSec), fmt.Sprintf("%.1f", r.reqPerLoop), fmt.Sprintf("%.1f", r.kbPerSec)})
	}
	table([]string{"profile", "member", "role", "agent RSS", "max", "watchdog RSS", "watchdog USS", "host total", "agent CPU", "wd CPU", "Consul req/s", "req/loop", "KB/s from Consul"}, tr)
	for _, name := range names {
		var arss, rss, host, cpu, req []float64
		pn := ""
		for _, r := range all {
			if strings.HasPrefix(r.profile, strings.TrimSpace(name)) {
				pn = r.profile
				arss = append(arss, mb(r.agentRSS))
				rss = append(rss, mb(r.agentRSS+r.wdRSS))
				host = append(host, mb(r.agentRSS+r.wdUSS))
				cpu = append(cpu, r.agentCPU+r.wdCPU)
				req = append(req, r.reqPerSec)
			}
		}
		printf("\nprofile %s, summary over the 3 agents (agent + fence watchdog)\n", pn)
		table([]string{"metric", "median", "min", "max", "n"}, [][]string{
			statRow("RSS (agent)", arss, func(x float64) string { return fmt.Sprintf("%.1f MB", x) }),
			statRow("RSS (agent + watchdog)", rss, func(x float64) string { return fmt.Sprintf("%.1f MB", x) }),
			statRow("host total (agent RSS + watchdog USS)", host, func(x float64) string { return fmt.Sprintf("%.1f MB", x) }),
			statRow("CPU (agent + watchdog)", cpu, func(x float64) string { return fmt.Sprintf("%.2f%%", x) }),
			statRow("Consul requests/s", req, func(x float64) string { return fmt.Sprintf("%.2f", x) }),
		})
	}
	return nil
}

func mb(b int64) float64 { return float64(b) / (1 << 20) }

func footprintProfile(ctx context.Context, e *env, p profile, settle, duration time.Duration) ([]footprintRow, error) {
	o, err := e.meshOptions(p, 3)
	if err != nil {
		return nil, err
	}
	consul := fmt.Sprintf("127.0.0.1:%d", o.ConsulHTTPPort)
	proxies := map[string]*countingProxy{}
	defer func() {
		for _, px := range proxies {
			px.Close()
		}
	}()
	for k := 0; k < o.Members; k++ {
		name := fmt.Sprintf("n1-%c", 'a'+k)
		px, err := startCountingProxy("", consul, consulLabel("pgmesh/"+o.Cluster))
		if err != nil {
			return nil, err
		}
		proxies[name] = px
	}
	o.MemberConsul = func(_, member string) string {
		if px := proxies[member]; px != nil {
			return px.Addr
		}
		return ""
	}
	printf("\n# profile %s\n", p)
	m, stop, err := e.startMeshStop(ctx, o)
	if err != nil {
		return nil, err
	}
	defer stop()
	printf("# settling for %s …\n", settle)
	if err := sleepCtx(ctx, settle); err != nil {
		return nil, err
	}
	if err := m.WaitHealthy(ctx, time.Minute); err != nil {
		return nil, err
	}
	type probe struct {
		mem         *demo.Member
		agent, wd   *cpuMeter
		base        proxyCounts
		maxRSS      int64
		agentPID    int
		watchdogPID int
	}
	var probes []*probe
	for _, mem := range m.Members() {
		pr := &probe{mem: mem, agentPID: m.AgentPID(mem), base: proxies[mem.Name].Snapshot()}
		pr.agent = startCPU(pr.agentPID)
		if wds := m.WatchdogPIDs(mem); len(wds) > 0 {
			pr.watchdogPID = wds[0]
			pr.wd = startCPU(pr.watchdogPID)
		}
		probes = append(probes, pr)
	}
	consulCPU := startCPU(m.ConsulPID())
	start := time.Now()
	printf("# measuring for %s …\n", duration)
	for time.Since(start) < duration {
		for _, pr := range probes {
			if r, err := procRSS(pr.agentPID); err == nil && r > pr.maxRSS {
				pr.maxRSS = r
			}
		}
		if err := sleepCtx(ctx, min(5*time.Second, duration-time.Since(start)+10*time.Millisecond)); err != nil {
			return nil, err
		}
	}
	elapsed := time.Since(start).Seconds()
	consulPct := consulCPU.percent()
	var rows []footprintRow
	for _, pr := range probes {
		role := "replica"
		if code, _ := apiGet(fmt.Sprintf("http://127.0.0.1:%d/primary", pr.mem.APIPort)); code == 200 {
			role = "leader"
		}
		d := proxies[pr.mem.Name].Snapshot().Sub(pr.base)
		rss, _ := procRSS(pr.agentPID)
		uss, _ := procUSS(pr.agentPID)
		r := footprintRow{profile: p.Name, member: pr.mem.Name, role: role, agentRSS: rss, agentUSS: uss, agentRSSMax: max(rss, pr.maxRSS),
			agentCPU: pr.agent.percent(), reqPerSec: float64(d.Total) / elapsed,
			reqPerLoop: float64(d.Total) / (elapsed / p.LoopWait.Seconds()), kbPerSec: float64(d.Down) / 1024 / elapsed, byKind: d.ByKind}
		if pr.wd != nil {
			r.wdRSS, _ = procRSS(pr.watchdogPID)
			r.wdUSS, _ = procUSS(pr.watchdogPID)
			r.wdCPU = pr.wd.percent()
		}
		rows = append(rows, r)
		printf("%s %s (%s): agent RSS %.1f MB (max %.1f), watchdog RSS %.1f MB (USS %.1f MB), agent USS %.1f MB, agent CPU %.2f%%, watchdog CPU %.2f%%, %d Consul requests in %.0fs = %.2f/s (%.1f per loop), %.1f KB/s from Consul\n",
			p.Name, r.member, role, mb(r.agentRSS), mb(r.agentRSSMax), mb(r.wdRSS), mb(r.wdUSS), mb(r.agentUSS), r.agentCPU, r.wdCPU, d.Total, elapsed, r.reqPerSec, r.reqPerLoop, r.kbPerSec)
		kinds := make([]string, 0, len(d.ByKind))
		for k := range d.ByKind {
			kinds = append(kinds, k)
		}
		sort.Slice(kinds, func(i, j int) bool { return d.ByKind[kinds[i]] > d.ByKind[kinds[j]] })
		for _, k := range kinds {
			printf("    %6.2f/s  %s\n", float64(d.ByKind[k])/elapsed, k)
		}
	}
	printf("%s: Consul server CPU %.2f%% over the window (serving the 3 agents and running their HTTP checks)\n", p.Name, consulPct)
	return rows, nil
}
