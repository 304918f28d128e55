package test

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/test/testbed"
)

// TestFaultSuite injects faults into a 3-member group under write load and
// checks the safety properties every time:
//
//   - no two members writable at once beyond the lease margin (a sampler
//     polls every member; the history checker compares which primary
//     incarnation acknowledged which write, in server time);
//   - no acknowledged write missing on the final primary in synchronous
//     mode (asynchronous losses are counted), none at all for switchovers;
//   - every member back to a healthy leader/replica by itself within a
//     bound (otherwise a "human" recovery is counted and the member repaired).
//
// Timing is random (fault durations, restart delays, targets, the moment of
// injection), drawn from a seed printed at the start; PGMESH_FAULT_SEED
// replays it. By default a small CI tier runs; PGMESH_FAULT_LONG=1 runs
// every fault in both modes with more repetitions (PGMESH_FAULT_REPS,
// PGMESH_FAULT_ONLY=fault,fault narrow it; PGMESH_FAULT_REPORT=file also
// writes the table to a file; PGMESH_FAULT_KEEP_LOGS=dir keeps every log).
// See docs/reliability.md.
func TestFaultSuite(t *testing.T) {
	s := readFaultSettings(t, "fault suite")
	results := s.run(t, faults, func(t *testing.T, mode string, plan []faultDef) *faultEnv {
		diskFull := false
		for _, f := range plan {
			diskFull = diskFull || f.name == "disk-full"
		}
		return newFaultEnv(t, mode, s.seed, diskFull)
	})
	s.report(t, faultTable(results, s.seed, s.tier))
}

// Timing of the test bed (AgentSpec defaults): ttl 4s → session TTL 2s →
// lease 1.6s; the margin is what the lease leaves of the session TTL.
const (
	fsTTL         = 4 * time.Second
	fsLease       = 1600 * time.Millisecond
	fsLeaseMargin = 400 * time.Millisecond
	// fsRecoverBound: a member not back to a healthy replica/leader by
	// itself this long after the fault was healed needed a human.
	fsRecoverBound = 60 * time.Second
)

type faultDef struct {
	name string
	// ci lists the modes the fault runs in by default; long mode runs
	// every fault in every mode of modes (nil = both).
	ci     []string
	modes  []string
	ciReps int
	// noLoss: no acknowledged write may be lost even in async mode.
	noLoss bool
	// expectHuman: the fault is known to need an operator (documented).
	expectHuman bool
	run         func(r *rep) error
}

var faults = []faultDef{
	{name: "kill-postmaster", ci: []string{"sync"}, run: faultKillPostmaster},
	{name: "kill-agent", ci: []string{"async"}, run: faultKillAgent},
	{name: "kill-host", ci: []string{"sync"}, run: faultKillHost},
	{name: "freeze-agent", run: faultFreezeAgent},
	{name: "freeze-postmaster", ci: []string{"async"}, run: faultFreezePostmaster},
	{name: "cut-consul", run: faultCutConsul},
	{name: "cut-replication", ci: []string{"sync"}, run: faultCutReplication},
	{name: "consul-restart", ci: []string{"async"}, run: faultConsulRestart},
	{name: "kv-chaos", ci: []string{"async"}, run: faultKVChaos},
	{name: "switchover-storm", ci: []string{"sync"}, ciReps: 1, noLoss: true, run: faultSwitchoverStorm},
	{name: "disk-full", run: faultDiskFull},
	{name: "ttl-change-freeze", ci: []string{"async"}, run: faultTTLChangeFreeze},
}

// faultEnv is one group of three members, each reaching Consul through its
// own proxy, in async or sync mode.
type faultEnv struct {
	t       *testing.T
	mode    string
	seed    uint64
	c       *testbed.Consul
	g       *group
	proxies map[string]*testbed.Proxy
	nextID  atomic.Int64
	// tmpfs holds each member's data-dir mount for disk-full (tmpfsErr
	// says why there is none).
	tmpfs    map[string]*testbed.Tmpfs
	tmpfsErr error
	// net is the members' network for the partition faults (TestPartition;
	// nil here), netOf maps a member to its namespace.
	net   *testbed.Netns
	netOf map[string]*testbed.NetnsMember
}

func newFaultEnv(t *testing.T, mode string, seed uint64, diskFull bool) *faultEnv {
	e := &faultEnv{t: t, mode: mode, seed: seed, proxies: map[string]*testbed.Proxy{}, tmpfs: map[string]*testbed.Tmpfs{}}
	e.c = testbed.StartConsul(t, testbed.ConsulOptions{})
	var prepare func(m string, a *testbed.Agent)
	if diskFull {
		// Every member's directory (data dir, clone staging, logs) on its
		// own small tmpfs, so the disk-full fault can fill whichever member
		// leads by then. The mount hides the config NewAgent wrote: copy it.
		prepare = func(m string, a *testbed.Agent) {
			cfg, err := os.ReadFile(a.CfgPath)
			if err != nil {
				t.Fatal(err)
			}
			fs, err := testbed.MountTmpfs(t, a.Dir, "512m")
			if err != nil {
				e.tmpfsErr = err
				return
			}
			if err := os.WriteFile(a.CfgPath, cfg, 0o644); err != nil {
				t.Fatal(err)
			}
			// Runs before the unmount (clean-ups run last in, first out).
			t.Cleanup(func() { a.Stop(); a.KillHost() })
			e.tmpfs[m] = fs
		}
	}
	e.g = startGroupPrepared(t, e.c, "fs"+mode, 3, func(m string) string {
		e.proxies[m] = testbed.StartProxy(t, e.c.HTTPAddr)
		return e.proxies[m].Addr
	}, func(s *testbed.AgentSpec) {
		s.TTL = fsTTL
		if mode == "sync" {
			s.DCSExtra = "synchronous_mode: on\nsynchronous_node_count: 1"
		}
	}, prepare)
	if dir := os.Getenv("PGMESH_FAULT_KEEP_LOGS"); dir != "" {
		// Registered after the agents, so it runs before their clean-up
		// removes the logs.
		t.Cleanup(func() { e.keepLogs(dir) })
	}
	leader := e.g.waitHealthy(120 * time.Second)
	if err := e.g.members[leader].Exec(context.Background(), "CREATE TABLE "+fsTable+"(id bigint PRIMARY KEY, client int, at timestamptz DEFAULT clock_timestamp())"); err != nil {
		t.Fatal(err)
	}
	return e
}

// keepLogs copies every member's agent and PostgreSQL log into dir.
func (e *faultEnv) keepLogs(dir string) {
	os.MkdirAll(dir, 0o755)
	for _, m := range e.g.order {
		a := e.g.members[m]
		for src, name := range map[string]string{a.LogPath: m + ".agent.log", a.DataDir + ".log": m + ".postgres.log"} {
			if data, err := os.ReadFile(src); err == nil {
				os.WriteFile(filepath.Join(dir, name), data, 0o644)
			}
		}
	}
	e.t.Logf("logs kept in %s", dir)
}

// rep is one repetition of one fault.
type rep struct {
	e      *faultEnv
	t      *testing.T
	rng    *rand.Rand
	leader string
	// marks are the injection instants recovery times are measured from.
	marks []time.Time
	notes []string
	// h is the repetition's history checker (faults may watch the writes).
	h *history
}

func (r *rep) mark() { r.marks = append(r.marks, time.Now()) }
func (r *rep) notef(format string, args ...any) {
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}
func (r *rep) dur(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(r.rng.Int64N(int64(hi-lo)+1))
}

// replica picks a random member other than the leader.
func (r *rep) replica() string {
	var rs []string
	for _, m := range r.e.g.order {
		if m != r.leader {
			rs = append(rs, m)
		}
	}
	return rs[r.rng.IntN(len(rs))]
}

// target is the leader, or with probability p a random replica.
func (r *rep) target(p float64) string {
	if r.rng.Float64() < p {
		return r.replica()
	}
	return r.leader
}

type repResult struct {
	fault, mode    string
	rep            int
	recovery       []time.Duration
	maxGap         time.Duration
	sampled, acked []overlap
	rounds         int
	acks, inDoubt  int
	syncCancelled  int
	lost           int
	human          int
	expectHuman    bool
	notes          []string
}

func (r repResult) line() string {
	return fmt.Sprintf("%s/%s #%d: recovery %v, longest write gap %s, %d acked (%d in doubt, %d sync-cancelled), lost %d, overlaps sampler %d (%d rounds) acks %d, human %d; %s",
		r.mode, r.fault, r.rep+1, roundAll(r.recovery), r.maxGap.Round(time.Millisecond), r.acks, r.inDoubt, r.syncCancelled, r.lost,
		len(r.sampled), r.rounds, len(r.acked), r.human, strings.Join(r.notes, "; "))
}

func roundAll(ds []time.Duration) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.Round(10*time.Millisecond).String())
	}
	return out
}

func (e *faultEnv) rng(fault string, rep int) *rand.Rand {
	h := fnv.New64a()
	fmt.Fprintf(h, "%s/%s/%d", e.mode, fault, rep)
	return rand.New(rand.NewPCG(e.seed, h.Sum64()))
}

func (e *faultEnv) runRep(f faultDef, n int) repResult {
	t := e.t
	g := e.g
	res := repResult{fault: f.name, mode: e.mode, rep: n, expectHuman: f.expectHuman}
	leader, err := g.healthyWithin(fsRecoverBound)
	if err != nil {
		t.Fatalf("%s #%d: group not healthy before the fault: %v", f.name, n+1, err)
	}
	if e.mode == "sync" {
		testbed.Eventually(t, 30*time.Second, "a synchronous standby is listed", func() error {
			if leader, err = g.leader(); err != nil || g.syncStandby(leader) == "" {
				return fmt.Errorf("leader %q lists no synchronous standby", leader)
			}
			return nil
		})
	}
	r := &rep{e: e, t: t, rng: e.rng(f.name, n), leader: leader}
	h := startHistory(g, &e.nextID, 2)
	r.h = h
	s := startOverlapSampler(g)
	// Writes flow before the fault, for a random while.
	h.waitAcks(t, 20+r.rng.IntN(80), 30*time.Second, "writes flowing before "+f.name)
	start := time.Now()
	if err := f.run(r); err != nil {
		t.Errorf("%s #%d: %v", f.name, n+1, err)
	}

	// Healing is over: everyone must come back by itself.
	healedAt := time.Now()
	final, err := g.healthyWithin(fsRecoverBound)
	if err != nil {
		res.human++
		r.notef("not healthy %s after healing: %v", fsRecoverBound, err)
		if !f.expectHuman {
			t.Errorf("%s #%d: needed a human: not healthy %s after the fault was healed: %v", f.name, n+1, fsRecoverBound, err)
		}
		final = e.repair()
	} else {
		r.notef("healthy %s after healing", time.Since(healedAt).Round(100*time.Millisecond))
	}
	h.waitAcks(t, 20, 60*time.Second, "writes flowing after "+f.name)
	acks := h.finish()
	sampled, rounds := s.finish()

	res.sampled, res.rounds = sampled, rounds
	res.acked = ackOverlaps(acks)
	res.recovery = recoveryTimes(acks, r.marks)
	res.maxGap = longestGap(acks, start, acks[len(acks)-1].at)
	res.acks, res.inDoubt, res.syncCancelled = len(acks), h.inDoubt, h.syncCancelled
	lost, err := lostOn(g, final, acks, h.firstID)
	if err != nil {
		t.Fatalf("%s #%d: reading the history on %s: %v", f.name, n+1, final, err)
	}
	res.lost = len(lost)
	res.notes = r.notes
	if final != leader {
		res.notes = append([]string{"leader " + leader + " -> " + final}, res.notes...)
	}
	for _, o := range append(append([]overlap(nil), sampled...), res.acked...) {
		if o.length() > fsLeaseMargin {
			t.Errorf("%s #%d: two writable members for %s, more than the lease margin %s: %s", f.name, n+1, o.length().Round(time.Millisecond), fsLeaseMargin, o)
		} else {
			t.Logf("%s #%d: two writable members within the lease margin: %s", f.name, n+1, o)
		}
	}
	if len(lost) > 0 && (e.mode == "sync" || f.noLoss) {
		t.Errorf("%s #%d (%s): %d acknowledged writes lost on the final primary %s: %v", f.name, n+1, e.mode, len(lost), final, lost)
	}
	return res
}

// repair brings the group back when it did not recover by itself: resume
// frozen processes, restart dead agents, re-clone members that do not
// stream. It fails the test if even that does not help.
func (e *faultEnv) repair() string {
	g := e.g
	if e.net != nil {
		if err := e.net.HealAll(); err != nil {
			e.t.Logf("repair: heal the network: %v", err)
		}
	}
	for _, m := range g.order {
		a := g.members[m]
		a.Signal(syscall.SIGCONT)
		a.SignalPostmaster(syscall.SIGCONT)
		if !a.Running() {
			a.Start()
		}
		if p := e.proxies[m]; p != nil {
			p.Restore()
		}
	}
	if l, err := g.healthyWithin(30 * time.Second); err == nil {
		return l
	}
	l, _ := g.leader()
	for _, m := range g.order {
		if m == l {
			continue
		}
		if code, _, _ := g.members[m].APIStatus("/replica"); code != 200 {
			code, body, err := postJSON(g.members[m].APIAddr, "/reinitialize", `{"force":true}`, 5*time.Minute)
			e.t.Logf("repair: reinitialize %s: %d %s %v", m, code, body, err)
		}
	}
	return g.waitHealthy(120 * time.Second)
}

// ---- the faults ----

// kill -9 of the postmaster only (the agent and its watchdog live on): the
// agent restarts PostgreSQL (crash recovery); a leader keeps its lock.
func faultKillPostmaster(r *rep) error {
	target := r.target(0.3)
	r.mark()
	pid := r.e.g.members[target].KillPostmaster()
	r.notef("killed postmaster %d of %s", pid, role(r, target))
	return nil
}

// kill -9 of the agent only; "systemd" restarts it after a random delay.
// A leader's fence watchdog aborts its PostgreSQL at once.
func faultKillAgent(r *rep) error {
	target := r.target(0.3)
	delay := r.dur(0, 3*fsTTL)
	a := r.e.g.members[target]
	r.mark()
	a.KillAgent()
	if target == r.leader {
		if err := waitNotWritable(a, 3*time.Second); err != nil {
			return fmt.Errorf("leader %s still writable after its agent died: %v", target, err)
		}
	}
	time.Sleep(delay)
	a.Start()
	r.notef("killed agent of %s, restarted after %s", role(r, target), delay.Round(100*time.Millisecond))
	return nil
}

// kill -9 of agent, watchdog and postmaster together (the host dies); it
// comes back after a random delay.
func faultKillHost(r *rep) error {
	target := r.target(0.2)
	delay := r.dur(0, 3*fsTTL)
	a := r.e.g.members[target]
	r.mark()
	a.KillHost()
	time.Sleep(delay)
	a.Start()
	r.notef("killed host of %s, back after %s", role(r, target), delay.Round(100*time.Millisecond))
	return nil
}

// SIGSTOP of the leader's agent beyond the ttl: the fence watchdog must
// stop PostgreSQL when the lease runs out, before a successor is promoted.
func faultFreezeAgent(r *rep) error {
	d := r.dur(fsTTL+time.Second, 3*fsTTL)
	a := r.e.g.members[r.leader]
	r.mark()
	a.Signal(syscall.SIGSTOP)
	defer a.Signal(syscall.SIGCONT)
	err := waitNotWritable(a, fsLease+2*time.Second)
	time.Sleep(time.Until(r.marks[0].Add(d)))
	r.notef("froze agent of leader %s for %s", r.leader, d.Round(100*time.Millisecond))
	if err != nil {
		return fmt.Errorf("leader %s with a frozen agent still writable: %v", r.leader, err)
	}
	return nil
}

// The cluster's ttl is raised live (4s → 12s: session TTL 6s, lease 4.8s),
// then the leader's agent is frozen beyond the new ttl; afterwards ttl goes
// back to 4s. The lease must follow the session Consul holds: before the
// fix the old session (TTL 2s) was freed ~4s after the last renew while
// the lease had grown, and two members were writable for seconds.
func faultTTLChangeFreeze(r *rep) error {
	g := r.e.g
	p := newPgmeshCLI(r.t, r.e.c.HTTPAddr, "itest")
	// kv-chaos may have left garbage in the config key (the agents run on
	// their last good config meanwhile), or a value that decodes as a config
	// of defaults (`{"version":1,"member":42}`: loop_wait 2s, retry_timeout
	// 5s, which ttl 4s below would break): store the suite's config again.
	stored, idx, err := g.kv.ReadConfig(context.Background())
	var de *consulkv.DecodeError
	if err != nil && !errors.As(err, &de) {
		return fmt.Errorf("read config: %v", err)
	}
	if err != nil || stored == nil || stored.LoopWait.D() != time.Second || stored.RetryTimeout.D() != 1500*time.Millisecond {
		cfg := consulkv.ClusterConfig{Version: consulkv.ValueVersion, TTL: consulkv.Duration(fsTTL), LoopWait: consulkv.Duration(time.Second), RetryTimeout: consulkv.Duration(1500 * time.Millisecond)}
		if r.e.mode == "sync" {
			cfg.SynchronousMode, cfg.SynchronousNodeCount = consulkv.SyncOn, 1
		}
		if ok, err := g.kv.CAS(context.Background(), g.kv.ConfigKey(), &cfg, idx); err != nil || !ok {
			return fmt.Errorf("restore the config key after kv-chaos: %v %v", ok, err)
		}
		r.notef("restored the config key kv-chaos had garbled or replaced")
	}
	if res := p.run("config", "set", "ttl=12s", "--force"); res.code != 0 {
		return fmt.Errorf("config set ttl=12s: %s", res)
	}
	defer func() {
		if res := p.run("config", "set", "ttl="+fsTTL.String(), "--force"); res.code != 0 {
			r.t.Errorf("config set ttl back: %s", res)
		}
		if err := sessionsRolled(g, fsTTL/2, time.Millisecond, 60*time.Second); err != nil {
			r.t.Errorf("after restoring ttl: %v", err)
		}
	}()
	if err := sessionsRolled(g, 6*time.Second, time.Millisecond, 30*time.Second); err != nil {
		return err
	}
	d := r.dur(12*time.Second+time.Second, 20*time.Second)
	a := g.members[r.leader]
	r.mark()
	a.Signal(syscall.SIGSTOP)
	defer a.Signal(syscall.SIGCONT)
	err = waitNotWritable(a, 4800*time.Millisecond+2*time.Second)
	time.Sleep(time.Until(r.marks[0].Add(d)))
	r.notef("ttl 4s→12s, froze agent of leader %s for %s", r.leader, d.Round(100*time.Millisecond))
	if err != nil {
		return fmt.Errorf("leader %s with a frozen agent still writable: %v", r.leader, err)
	}
	return nil
}

// SIGSTOP of the leader's postmaster beyond the ttl. The postmaster does not
// accept connections, but its backends (and walsenders) run on: clients on
// existing connections keep committing. pgmesh (like Patroni) keeps the
// leader while its own connection answers and promotes nobody, so there is
// no second writable primary; new connections wait until SIGCONT.
func faultFreezePostmaster(r *rep) error {
	d := r.dur(fsTTL+time.Second, 3*fsTTL)
	a := r.e.g.members[r.leader]
	r.mark()
	pid := a.SignalPostmaster(syscall.SIGSTOP)
	defer a.SignalPostmaster(syscall.SIGCONT)
	time.Sleep(d)
	l, _ := r.e.g.leader()
	r.notef("froze postmaster %d of leader %s for %s; leader key during the freeze: %s", pid, r.leader, d.Round(100*time.Millisecond), l)
	return nil
}

// The leader cut off from Consul (its Consul proxy blackholes) for a
// random time, shorter or longer than its lease.
func faultCutConsul(r *rep) error {
	d := r.dur(fsLease/2, 3*fsTTL)
	p := r.e.proxies[r.leader]
	a := r.e.g.members[r.leader]
	r.mark()
	p.Cut()
	defer p.Restore()
	var err error
	if d > fsLease+time.Second {
		err = waitNotWritable(a, fsLease+time.Second)
	}
	time.Sleep(time.Until(r.marks[0].Add(d)))
	r.notef("cut leader %s off Consul for %s", r.leader, d.Round(100*time.Millisecond))
	if err != nil {
		return fmt.Errorf("leader %s cut off from Consul still writable after its lease: %v", r.leader, err)
	}
	return nil
}

// A replica cut off from the primary: its walsenders on the primary are
// terminated as soon as they appear. In sync mode the synchronous standby
// is the usual victim: the leader must move synchronous replication to the
// other standby and keep writing.
func faultCutReplication(r *rep) error {
	g := r.e.g
	victim := r.replica()
	if r.e.mode == "sync" && r.rng.Float64() < 0.7 {
		if s := g.syncStandby(r.leader); s != "" {
			victim = s
		}
	}
	d := r.dur(fsTTL, 3*fsTTL)
	r.mark()
	b := testbed.BlockReplication(r.t, g.members[r.leader], victim)
	time.Sleep(d)
	b.Stop()
	r.notef("cut %s off replication from %s for %s (%d walsenders terminated)", role(r, victim), r.leader, d.Round(100*time.Millisecond), b.Kills())
	if l, _ := g.leader(); l != r.leader {
		return fmt.Errorf("leader changed from %s to %s although only replication was cut", r.leader, l)
	}
	return nil
}

// Consul restarted (gracefully or SIGKILLed), down for a random while.
func faultConsulRestart(r *rep) error {
	crash := r.rng.IntN(2) == 0
	down := r.dur(0, 2*fsTTL)
	r.mark()
	r.e.c.Down(down, crash)
	how := "restarted"
	if crash {
		how = "killed -9 and restarted"
	}
	r.notef("consul %s, down %s", how, down.Round(100*time.Millisecond))
	return nil
}

// Garbage and deleted keys: every key of the group (and the cluster
// config) in random order, each either overwritten with undecodable JSON
// or deleted, one loop apart. The agents must log and ignore garbage,
// rewrite what they own, and never crash or promote a second primary.
func faultKVChaos(r *rep) error {
	g := r.e.g
	kv := r.e.c.Client().KV()
	keys := []string{
		g.kv.MemberKey(g.name, r.replica()), g.kv.MemberKey(g.name, r.leader), g.kv.LeaderKey(g.name), g.kv.ConfigKey(),
		g.kv.FailoverKey(g.name), g.kv.InitializeKey(g.name), g.kv.SyncKey(g.name), g.kv.StatusKey(g.name), g.kv.HistoryKey(g.name),
	}
	r.rng.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	garbage := []string{`{"version":1,"garbage`, `null`, `[]`, `{"version":99}`, "\x00\xff", `{"version":1,"member":42}`}
	r.mark()
	for _, k := range keys {
		short := strings.TrimPrefix(k, "pgmesh/itest/")
		var err error
		if r.rng.IntN(2) == 0 {
			v := garbage[r.rng.IntN(len(garbage))]
			_, err = kv.Put(&api.KVPair{Key: k, Value: []byte(v)}, nil)
			r.notef("garbage %q in %s", v, short)
		} else {
			_, err = kv.Delete(k, nil)
			r.notef("deleted %s", short)
		}
		if err != nil {
			return err
		}
		time.Sleep(r.dur(500*time.Millisecond, 2*time.Second))
		for _, m := range g.order {
			if !g.members[m].Running() {
				return fmt.Errorf("agent %s exited after %s", m, r.notes[len(r.notes)-1])
			}
		}
	}
	return nil
}

// Many switchovers back to back through the leader's REST API, to a
// random candidate or to "anyone". A switchover is graceful: no
// acknowledged write may be lost, in either mode.
func faultSwitchoverStorm(r *rep) error {
	g := r.e.g
	n := 3
	if os.Getenv("PGMESH_FAULT_LONG") == "1" {
		n = 6
	}
	for i := 0; i < n; i++ {
		leader, err := g.leader()
		if err != nil || leader == "" {
			return fmt.Errorf("switchover %d: no leader: %v", i+1, err)
		}
		body := fmt.Sprintf(`{"leader":%q}`, leader)
		if r.rng.IntN(2) == 0 {
			var cand string
			if r.e.mode == "sync" {
				cand = g.syncStandby(leader)
			} else {
				saved := r.leader
				r.leader = leader
				cand = r.replica()
				r.leader = saved
			}
			if cand != "" {
				body = fmt.Sprintf(`{"leader":%q,"candidate":%q}`, leader, cand)
			}
		}
		r.mark()
		deadline := time.Now().Add(60 * time.Second)
		tries := 0
		for {
			tries++
			code, resp, outcome := switchoverOnce(g, leader, body)
			if outcome == "done" {
				now, _ := g.leader()
				r.notef("switchover %d %s: %d %s (%d tries) -> %s", i+1, body, code, strings.TrimSpace(resp), tries, now)
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("switchover %d %s: %s: %d %s", i+1, body, outcome, code, resp)
			}
			// Back to back: the previous old primary may still be
			// restarting as a replica, or the leader cancelled the request
			// (no healthy candidate yet); ask again.
			time.Sleep(200 * time.Millisecond)
		}
	}
	return nil
}

// switchoverOnce POSTs one switchover to leader's REST API and watches the
// group meanwhile: "done" once another member holds the leader key,
// "cancelled" when the request vanished from Consul without a leader change
// (the leader refused it; the REST call would only answer after its 60s
// timeout), "refused" when the API answered with an error.
func switchoverOnce(g *group, leader, body string) (int, string, string) {
	type answer struct {
		code int
		resp string
		err  error
	}
	ch := make(chan answer, 1)
	go func() {
		code, resp, err := postJSON(g.members[leader].APIAddr, "/switchover", body, 90*time.Second)
		ch <- answer{code, resp, err}
	}()
	stored, sent := false, time.Now()
	for {
		select {
		case a := <-ch:
			if a.code == 200 {
				return a.code, a.resp, "done"
			}
			if a.err != nil {
				return 0, a.err.Error(), "refused"
			}
			return a.code, a.resp, "refused"
		case <-time.After(100 * time.Millisecond):
		}
		v, err := g.kv.ReadGroup(context.Background(), g.name)
		if err != nil {
			continue
		}
		if v.Leader != nil && v.Leader.Member != "" && v.Leader.Member != leader {
			return 200, "leader is now " + v.Leader.Member, "done"
		}
		// The API stores the request within milliseconds or refuses it at
		// once; no request, no answer and the same leader a second later
		// means it was stored and cleared again.
		if v.FailoverIndex != 0 {
			stored = true
		} else if (stored || time.Since(sent) > time.Second) && v.Leader != nil && v.Leader.Member == leader {
			return 0, "request cleared by the leader without a leader change", "cancelled"
		}
	}
}

// The leader's data directory (a 512 MB tmpfs) filled up: PostgreSQL
// cannot extend tables (inserts fail) and PANICs when it needs a new WAL
// segment. Nothing may be promoted while it may still commit; once the
// filler is removed (what an operator does) the member must recover by
// itself. Skipped, with the reason, where tmpfs cannot be mounted.
func faultDiskFull(r *rep) error {
	fs := r.e.tmpfs[r.leader]
	if fs == nil {
		r.notef("SKIPPED: no tmpfs data directory (%v); run as root where mount -t tmpfs is allowed", r.e.tmpfsErr)
		return nil
	}
	hold := r.dur(2*fsTTL, 4*fsTTL)
	r.mark()
	if _, err := fs.Fill(); err != nil {
		return fmt.Errorf("fill %s: %v", fs.Dir, err)
	}
	time.Sleep(hold)
	l, _ := r.e.g.leader()
	w := r.e.g.writable()
	if err := fs.Free(); err != nil {
		return err
	}
	r.notef("data dir of leader %s full for %s; then leader key %q, writable %v; filler removed", r.leader, hold.Round(100*time.Millisecond), l, w)
	return nil
}

func role(r *rep, m string) string {
	if m == r.leader {
		return "leader " + m
	}
	return "replica " + m
}

// waitNotWritable waits until a's PostgreSQL no longer accepts writes.
func waitNotWritable(a *testbed.Agent, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		w, err := a.IsWritable(ctx)
		cancel()
		if err != nil || !w {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("still writable after " + within.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// faultTable renders the results as one row per fault.
func faultTable(results []repResult, seed uint64, tier string) string {
	type agg struct {
		reps           map[string]int
		recovery, gaps []time.Duration
		overlaps       int
		longest        time.Duration
		lost           map[string]int
		human          int
		acks           int
	}
	var order []string
	rows := map[string]*agg{}
	for _, r := range results {
		a := rows[r.fault]
		if a == nil {
			a = &agg{reps: map[string]int{}, lost: map[string]int{}}
			rows[r.fault] = a
			order = append(order, r.fault)
		}
		a.reps[r.mode]++
		a.recovery = append(a.recovery, r.recovery...)
		a.gaps = append(a.gaps, r.maxGap)
		for _, o := range append(append([]overlap(nil), r.sampled...), r.acked...) {
			a.overlaps++
			if o.length() > a.longest {
				a.longest = o.length()
			}
		}
		a.lost[r.mode] += r.lost
		a.human += r.human
		a.acks += r.acks
	}
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "pgmesh fault suite, %s, seed %d, %s, host %s; ttl 4s, loop_wait 1s, lease 1.6s (margin 0.4s)\n", tier, seed, time.Now().UTC().Format("2006-01-02 15:04 UTC"), host)
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "fault\treps (async+sync)\tfailover/recovery median\tmax\tlongest write gap median\tmax\toverlap windows\tlongest\tacked\tlost async/sync\tneeded a human")
	for _, f := range order {
		a := rows[f]
		lost := func(m string) string {
			if a.reps[m] == 0 {
				return "-"
			}
			return strconv.Itoa(a.lost[m])
		}
		fmt.Fprintf(tw, "%s\t%d+%d\t%s\t%s\t%s\t%s\t%d\t%s\t%d\t%s/%s\t%d\n", f, a.reps["async"], a.reps["sync"],
			fmtDur(median(a.recovery)), fmtDur(maxDur(a.recovery)), fmtDur(median(a.gaps)), fmtDur(maxDur(a.gaps)),
			a.overlaps, fmtDur(a.longest), a.acks, lost("async"), lost("sync"), a.human)
	}
	tw.Flush()
	return b.String()
}
