package test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/test/testbed"
)

// TestConsulLeaderLoss runs a group of three members against a real
// three-server Consul cluster, every member talking to its own local Consul
// client agent (as in production), and kills the raft leader server with
// SIGKILL under write load, then restarts it with its data. Variant
// consul-leader-kill-twice kills the newly elected leader too, shortly
// after the first election (the first victim is restarted at once, so the
// second election has a quorum).
//
// It uses the fault suite's instruments and assertions (history checker,
// overlap sampler, no acknowledged write lost in sync mode, healthy again
// by itself) and measures in addition how long the Consul election took,
// how long the group had no writable member, whether the old primary
// fenced itself and whether a failover happened.
//
// Environment: PGMESH_FAULT_SEED replays the random choices,
// PGMESH_FAULT_LONG=1 runs both variants in both modes with 5 repetitions,
// PGMESH_FAULT_REPS=N overrides the repetitions, PGMESH_FAULT_ONLY=name,…
// narrows the variants, PGMESH_FAULT_KEEP_LOGS=dir keeps every agent,
// PostgreSQL and Consul log. See docs/reliability.md.
func TestConsulLeaderLoss(t *testing.T) {
	s := readFaultSettings(t, "consul leader loss")

	cl := testbed.StartConsulCluster(t, testbed.ConsulOptions{})
	if dir := os.Getenv("PGMESH_FAULT_KEEP_LOGS"); dir != "" {
		t.Cleanup(func() { keepConsulLogs(t, dir, cl) })
	}
	x := &leaderLoss{cl: cl}
	defs := []faultDef{
		{name: "consul-leader-kill", ci: []string{"async", "sync"}, run: func(r *rep) error { return x.run(r, "consul-leader-kill", false) }},
		{name: "consul-leader-kill-twice", ci: []string{"sync"}, run: func(r *rep) error { return x.run(r, "consul-leader-kill-twice", true) }},
	}
	results := s.run(t, defs, func(t *testing.T, mode string, _ []faultDef) *faultEnv {
		return newClusterFaultEnv(t, mode, s.seed, cl)
	})
	if len(results) == 0 {
		t.Fatalf("PGMESH_FAULT_ONLY=%q selects no variant (consul-leader-kill, consul-leader-kill-twice)", os.Getenv("PGMESH_FAULT_ONLY"))
	}
	t.Logf("\n%s\n%s", faultTable(results, s.seed, s.tier), x.table())
	if err := cl.WaitHealthy(60 * time.Second); err != nil {
		t.Errorf("consul cluster at the end: %v", err)
	}
}

// newClusterFaultEnv is newFaultEnv on a Consul cluster: one client agent
// per member, the members talk to their own.
func newClusterFaultEnv(t *testing.T, mode string, seed uint64, cl *testbed.ConsulCluster) *faultEnv {
	e := &faultEnv{t: t, mode: mode, seed: seed, proxies: map[string]*testbed.Proxy{}, tmpfs: map[string]*testbed.Tmpfs{}}
	name := "cl" + mode
	clients := map[string]*testbed.ConsulNode{}
	for i := 0; i < 3; i++ {
		m := fmt.Sprintf("%s-%c", name, 'a'+i)
		clients[m] = cl.StartClient(t, m)
	}
	// The test's own reads go through member a's client agent too: it
	// never dies, unlike a server.
	e.c = clients[name+"-a"].Consul
	// The dynamic config is the cluster's, not the group's: drop the one
	// the previous mode's group seeded, so this mode's members seed theirs
	// (synchronous_mode).
	kv, err := consulkv.New(consulkv.Config{Address: e.c.HTTPAddr, Cluster: "itest"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Client().KV().Delete(kv.ConfigKey(), nil); err != nil {
		t.Fatal(err)
	}
	e.g = startGroupPrepared(t, e.c, name, 3, func(m string) string { return clients[m].HTTPAddr }, func(s *testbed.AgentSpec) {
		s.TTL = fsTTL
		if mode == "sync" {
			s.DCSExtra = "synchronous_mode: on\nsynchronous_node_count: 1"
		}
	}, nil)
	if dir := os.Getenv("PGMESH_FAULT_KEEP_LOGS"); dir != "" {
		t.Cleanup(func() { e.keepLogs(dir) })
	}
	leader := e.g.waitHealthy(120 * time.Second)
	if err := e.g.members[leader].Exec(context.Background(), "CREATE TABLE "+fsTable+"(id bigint PRIMARY KEY, client int, at timestamptz DEFAULT clock_timestamp())"); err != nil {
		t.Fatal(err)
	}
	return e
}

func keepConsulLogs(t *testing.T, dir string, cl *testbed.ConsulCluster) {
	os.MkdirAll(dir, 0o755)
	for _, n := range append(append([]*testbed.ConsulNode(nil), cl.Servers...), cl.Clients...) {
		if data, err := os.ReadFile(filepath.Join(n.Dir, "consul.log")); err == nil {
			os.WriteFile(filepath.Join(dir, n.NodeName+".consul.log"), data, 0o644)
		}
	}
	t.Logf("consul logs kept in %s", dir)
}

// leaderLoss runs the fault and keeps what it measured per repetition.
type leaderLoss struct {
	cl      *testbed.ConsulCluster
	details []leaderLossDetail
}

type leaderLossDetail struct {
	mode, fault string
	rep         int
	killed      []string
	elections   []time.Duration
	down        time.Duration
	before      string
	after       string
	fenced      time.Duration // after the first kill; 0 = the old primary never stopped accepting writes
	noPrimary   time.Duration // total time without a writable member
	longestNone time.Duration
	timeline    string
}

func (x *leaderLoss) run(r *rep, fault string, twice bool) error {
	cl, g := x.cl, r.e.g
	if err := cl.WaitHealthy(60 * time.Second); err != nil {
		return err
	}
	d := leaderLossDetail{mode: r.e.mode, fault: fault, before: r.leader}
	for _, p := range x.details {
		if p.mode == d.mode && p.fault == fault {
			d.rep++
		}
	}
	defer func() { x.details = append(x.details, d) }()
	// A random phase against the agents' one-second renewals.
	time.Sleep(r.dur(0, time.Second))
	first, err := cl.Leader()
	if err != nil {
		return err
	}
	w := startWritableWatch(g, r.leader)
	defer w.finish()

	var victims []*testbed.ConsulNode
	defer func() {
		// On an early return too: later repetitions need all three.
		for _, v := range victims {
			if !v.Running() {
				if err := v.Restart(60 * time.Second); err != nil {
					r.t.Errorf("restarting %s: %v", v.NodeName, err)
				}
			}
		}
	}()
	r.mark()
	t0 := time.Now()
	victims = append(victims, first)
	first.Kill()
	d.killed = append(d.killed, first.NodeName)
	second, err := cl.WaitLeader(first, 30*time.Second)
	if err != nil {
		return err
	}
	d.elections = append(d.elections, time.Since(t0))
	killed := []*testbed.ConsulNode{first}
	if twice {
		// The first victim comes back at once, so the two survivors of
		// the second kill still make a quorum.
		if err := first.Restart(60 * time.Second); err != nil {
			return err
		}
		time.Sleep(r.dur(0, 2*time.Second))
		r.mark()
		t1 := time.Now()
		victims = append(victims, second)
		second.Kill()
		d.killed = append(d.killed, second.NodeName)
		if _, err := cl.WaitLeader(second, 30*time.Second); err != nil {
			return err
		}
		d.elections = append(d.elections, time.Since(t1))
		killed = []*testbed.ConsulNode{second}
	}
	d.down = r.dur(500*time.Millisecond, 2*fsTTL)
	time.Sleep(d.down)
	for _, k := range killed {
		if err := k.Restart(60 * time.Second); err != nil {
			return err
		}
	}
	if err := cl.WaitHealthy(60 * time.Second); err != nil {
		return err
	}
	// Let the watch see the group writable again; if it does not come
	// back, runRep's health check counts (and repairs) it.
	for deadline := time.Now().Add(fsRecoverBound); len(g.writableNow(time.Second)) != 1 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	w.finish()
	d.noPrimary, d.longestNone, d.timeline = w.none, w.longestNone, strings.Join(w.changes, " ")
	if !w.oldGone.IsZero() {
		d.fenced = w.oldGone.Sub(t0)
	}
	d.after, _ = g.leader()
	how := "kept accepting writes"
	if d.fenced > 0 {
		how = fmt.Sprintf("stopped accepting writes %s after the kill", d.fenced.Round(10*time.Millisecond))
	}
	r.notef("killed consul leader %s, elections %v, down %s; primary %s %s; no writable member %s in all (longest %s); writable: %s",
		strings.Join(d.killed, " then "), roundAll(d.elections), d.down.Round(100*time.Millisecond), r.leader, how,
		d.noPrimary.Round(10*time.Millisecond), d.longestNone.Round(10*time.Millisecond), d.timeline)
	return nil
}

// writableWatch samples which members accept writes (every ~25 ms) and
// records the time without any writable member and when the old primary
// first stopped accepting writes.
type writableWatch struct {
	once        sync.Once
	stop, done  chan struct{}
	none        time.Duration
	longestNone time.Duration
	oldGone     time.Time
	changes     []string
}

func startWritableWatch(g *group, old string) *writableWatch {
	w := &writableWatch{stop: make(chan struct{}), done: make(chan struct{})}
	start := time.Now()
	go func() {
		defer close(w.done)
		prev := "?"
		var noneSince time.Time
		last := start
		for {
			select {
			case <-w.stop:
				return
			default:
			}
			ws := g.writableNow(500 * time.Millisecond)
			now := time.Now()
			sort.Strings(ws)
			set := "[" + strings.Join(ws, ",") + "]"
			if set != prev {
				w.changes = append(w.changes, fmt.Sprintf("+%.2fs %s", now.Sub(start).Seconds(), set))
				prev = set
			}
			if !contains(ws, old) && w.oldGone.IsZero() {
				w.oldGone = now
			}
			if len(ws) == 0 {
				if noneSince.IsZero() {
					noneSince = last
				}
				w.none += now.Sub(last)
				if d := now.Sub(noneSince); d > w.longestNone {
					w.longestNone = d
				}
			} else {
				noneSince = time.Time{}
			}
			last = now
			time.Sleep(25 * time.Millisecond)
		}
	}()
	return w
}

func (w *writableWatch) finish() {
	w.once.Do(func() { close(w.stop) })
	<-w.done
}

// table prints the Consul-specific figures, one row per repetition.
func (x *leaderLoss) table() string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "mode\tfault\t#\tconsul leader killed\telection(s)\tdown\told primary stopped writes\tno writable member total\tlongest\tpgmesh leader")
	for _, d := range x.details {
		fenced := "no"
		if d.fenced > 0 {
			fenced = fmt.Sprintf("after %.2fs", d.fenced.Seconds())
		}
		var el []string
		for _, e := range d.elections {
			el = append(el, fmt.Sprintf("%.2fs", e.Seconds()))
		}
		lead := d.before + " (no failover)"
		if d.after != d.before {
			lead = d.before + " -> " + d.after + " (failover)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%.1fs\t%s\t%s\t%s\t%s\n", d.mode, d.fault, d.rep+1, strings.Join(d.killed, ", "), strings.Join(el, ", "),
			d.down.Seconds(), fenced, fmtDur(d.noPrimary), fmtDur(d.longestNone), lead)
	}
	tw.Flush()
	return b.String()
}
