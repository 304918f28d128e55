package test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/test/testbed"
)

// TestPartition cuts the network between members of a 3-member group, each
// member (agent and PostgreSQL, as the postgres OS user) in its own network
// namespace on a bridge, Consul on the host side (testbed.Netns). A path
// between two members is cut by dropping its packets (timeouts) or by a
// prohibit/blackhole route (immediate errors), drawn from the seed; a
// member is cut off entirely by setting its veth down. Every repetition runs under the fault
// suite's instruments and checks (history checker, overlap sampler, lost
// acknowledged writes, recovery without a human; see TestFaultSuite) plus
// the expectations of each fault below.
//
// The history clients and the sampler reach every member's PostgreSQL
// through its Unix socket (not bound to a namespace), like clients on the
// member's own host: they see a partitioned primary that still accepts
// writes, which is what the overlap checks need. REST calls (health, the
// group checks) go over the network.
//
// Same knobs as the fault suite: PGMESH_FAULT_SEED, PGMESH_FAULT_LONG=1
// (every partition in both modes, 5 repetitions), PGMESH_FAULT_REPS,
// PGMESH_FAULT_ONLY, PGMESH_FAULT_REPORT (table to a file; the fault suite
// and this test each overwrite it), PGMESH_FAULT_KEEP_LOGS. See
// docs/reliability.md.
func TestPartition(t *testing.T) {
	if why := testbed.NetnsAvailable(); why != "" {
		t.Skipf("network partitions: %s", why)
	}
	s := readFaultSettings(t, "partition suite")
	results := s.run(t, partitionFaults, func(t *testing.T, mode string, _ []faultDef) *faultEnv {
		return newPartitionEnv(t, mode, s.seed)
	})
	if len(results) == 0 {
		t.Fatalf("PGMESH_FAULT_ONLY=%q selects no partition fault", os.Getenv("PGMESH_FAULT_ONLY"))
	}
	s.report(t, strings.Replace(faultTable(results, s.seed, s.tier), "pgmesh fault suite", "pgmesh partition suite", 1))
}

// partitionStallBound: while a partition leaves the primary its lease,
// writes must be acknowledged again within this time of the cut (in sync
// mode the leader has to give up waiting for the unreachable synchronous
// standby). Every cut lasts longer than this, so a primary that keeps
// waiting for the whole cut fails the check.
const partitionStallBound = 2 * fsTTL

var partitionFaults = []faultDef{
	{name: "partition-primary-peers", ci: []string{"sync"}, run: faultPartitionPrimaryPeers},
	{name: "partition-primary-full", ci: []string{"async", "sync"}, run: faultPartitionPrimaryFull},
	{name: "partition-replica", ci: []string{"async"}, run: faultPartitionReplica},
}

// newPartitionEnv starts Consul (loopback + the bridge address) and three
// members, each in its own namespace, talking to Consul over the bridge.
func newPartitionEnv(t *testing.T, mode string, seed uint64) *faultEnv {
	nw := testbed.NewNetns(t, 3)
	e := &faultEnv{t: t, mode: mode, seed: seed, proxies: map[string]*testbed.Proxy{}, tmpfs: map[string]*testbed.Tmpfs{},
		net: nw, netOf: map[string]*testbed.NetnsMember{}}
	e.c = testbed.StartConsul(t, testbed.ConsulOptions{ClientAddrs: []string{nw.HostAddr}})
	_, port, err := net.SplitHostPort(e.c.HTTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	consulAddr := net.JoinHostPort(nw.HostAddr, port)
	e.g = startGroupPrepared(t, e.c, "pt"+mode, 3, func(string) string { return consulAddr }, func(s *testbed.AgentSpec) {
		nm := nw.Members[int(s.Name[len(s.Name)-1]-'a')]
		s.Netns, s.Host = nm, nm.Addr
		e.netOf[s.Name] = nm
		s.TTL = fsTTL
		if mode == "sync" {
			s.DCSExtra = "synchronous_mode: on\nsynchronous_node_count: 1"
		}
	}, nil)
	if dir := os.Getenv("PGMESH_FAULT_KEEP_LOGS"); dir != "" {
		t.Cleanup(func() { e.keepLogs(dir) })
	}
	for _, m := range e.g.order {
		t.Logf("member %s in namespace %s at %s (REST %s)", m, e.netOf[m].NS, e.netOf[m].Addr, e.g.members[m].APIAddr)
	}
	leader := e.g.waitHealthy(120 * time.Second)
	if err := e.g.members[leader].Exec(context.Background(), "CREATE TABLE "+fsTable+"(id bigint PRIMARY KEY, client int, at timestamptz DEFAULT clock_timestamp())"); err != nil {
		t.Fatal(err)
	}
	return e
}

// ---- the partitions ----

// The primary cut off from both replicas (both ways) while it and
// they still reach Consul: it keeps its lease, so it stays the only primary
// and nobody is promoted; the replicas stop receiving WAL. In sync mode the
// leader must stop waiting for the unreachable synchronous standby and go
// on acknowledging writes. After healing the replicas catch up by
// themselves.
func faultPartitionPrimaryPeers(r *rep) error {
	e, g := r.e, r.e.g
	kind := cutKind(r)
	d := r.dur(3*fsTTL, 4*fsTTL)
	p := e.netOf[r.leader]
	var replicas []string
	for _, m := range g.order {
		if m != r.leader {
			replicas = append(replicas, m)
		}
	}
	syncBefore := g.syncStandby(r.leader)
	healed := false
	heal := func() {
		if !healed {
			healed = true
			for _, m := range replicas {
				if err := e.net.Unblock(p, e.netOf[m]); err != nil {
					r.t.Errorf("heal: %v", err)
				}
			}
		}
	}
	defer heal()
	r.mark()
	start := r.marks[0]
	for _, m := range replicas {
		if err := e.net.Block(p, e.netOf[m], kind); err != nil {
			return err
		}
	}
	errs := holdWatchingLeader(r, start.Add(d))
	received := map[string]string{}
	for _, m := range replicas {
		behind, got, err := replicaBehind(g, r.leader, m)
		if err != nil {
			errs = append(errs, fmt.Sprintf("replica %s: %v", m, err))
		} else if !behind {
			errs = append(errs, fmt.Sprintf("replica %s still has the primary's WAL (%s) while cut off from it", m, got))
		}
		received[m] = got
	}
	acks := r.h.snapshot()
	end := time.Now()
	gap := longestGap(acks, start, end)
	syncDuring := g.syncStandby(r.leader)
	senders := walsenders(g, r.leader)
	heal()
	r.notef("cut leader %s off %v (%s) for %s; sync standby %q -> %q; longest write gap during the cut %s; replica receive LSNs %v; walsenders at the end of the cut: %s",
		r.leader, replicas, kind, d.Round(100*time.Millisecond), syncBefore, syncDuring, gap.Round(10*time.Millisecond), received, senders)
	if gap > partitionStallBound {
		errs = append(errs, stallErr(start, end, gap, senders))
	}
	took, err := catchUp(g, r.leader, replicas, 30*time.Second)
	if err != nil {
		errs = append(errs, err.Error())
	} else {
		r.notef("replicas caught up %s after healing", took.Round(100*time.Millisecond))
	}
	return joinErrs(errs)
}

// The primary fully isolated (its veth down, in the namespace or on the
// bridge side): no Consul, no peers. It must stop accepting writes within
// its lease, a replica takes over, and after healing the old primary
// rejoins as a replica (rewinding if needed) without help.
func faultPartitionPrimaryFull(r *rep) error {
	e, g := r.e, r.e.g
	hostSide := r.rng.IntN(2) == 0
	side := "namespace side"
	if hostSide {
		side = "bridge side"
	}
	d := r.dur(fsTTL+2*time.Second, 4*fsTTL)
	a := g.members[r.leader]
	p := e.netOf[r.leader]
	logBefore := len(a.Log())
	r.mark()
	start := r.marks[0]
	if err := e.net.LinkDown(p, hostSide); err != nil {
		return err
	}
	var errs []string
	if err := waitNotWritable(a, fsLease+time.Second); err != nil {
		errs = append(errs, fmt.Sprintf("isolated leader %s: %v (lease %s)", r.leader, err, fsLease))
	}
	readOnly := time.Since(start)
	var next string
	deadline := start.Add(30 * time.Second)
	for next == "" && time.Now().Before(deadline) {
		if l, err := g.leader(); err == nil && l != "" && l != r.leader {
			if w, err := g.members[l].IsWritable(context.Background()); err == nil && w {
				next = l
				break
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	promoted := time.Since(start)
	if next == "" {
		errs = append(errs, "no other member took over within 30s of isolating the primary")
	}
	time.Sleep(time.Until(start.Add(d)))
	if err := e.net.LinkUp(p); err != nil {
		return err
	}
	healedAt := time.Now()
	// It must come back as a replica of the new leader by itself (the
	// common check after the fault verifies the whole group).
	var rejoin time.Duration
	for time.Since(healedAt) < fsRecoverBound {
		if code, _, _ := a.APIStatus("/replica"); code == 200 {
			rejoin = time.Since(healedAt)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	log := a.Log()[logBefore:]
	r.notef("isolated leader %s (veth down, %s) for %s: read-only after %s, %s writable after %s; replica again %s after healing; pg_rewind ran: %v",
		r.leader, side, d.Round(100*time.Millisecond), readOnly.Round(10*time.Millisecond), next, promoted.Round(10*time.Millisecond),
		rejoin.Round(100*time.Millisecond), strings.Contains(log, "rewound data directory"))
	return joinErrs(errs)
}

// A replica cut off from the primary (both ways) while it reaches
// Consul and the other replica: no failover, no overlap; after healing it
// streams again. In sync mode the victim is usually the synchronous
// standby: the leader must move synchronous replication to the other one.
func faultPartitionReplica(r *rep) error {
	e, g := r.e, r.e.g
	victim := r.replica()
	if e.mode == "sync" && r.rng.Float64() < 0.7 {
		if s := g.syncStandby(r.leader); s != "" {
			victim = s
		}
	}
	kind := cutKind(r)
	d := r.dur(3*fsTTL, 4*fsTTL)
	syncBefore := g.syncStandby(r.leader)
	healed := false
	heal := func() {
		if !healed {
			healed = true
			if err := e.net.Unblock(e.netOf[r.leader], e.netOf[victim]); err != nil {
				r.t.Errorf("heal: %v", err)
			}
		}
	}
	defer heal()
	r.mark()
	start := r.marks[0]
	if err := e.net.Block(e.netOf[r.leader], e.netOf[victim], kind); err != nil {
		return err
	}
	errs := holdWatchingLeader(r, start.Add(d))
	behind, got, err := replicaBehind(g, r.leader, victim)
	if err != nil {
		errs = append(errs, fmt.Sprintf("replica %s: %v", victim, err))
	} else if !behind {
		errs = append(errs, fmt.Sprintf("replica %s still has the primary's WAL (%s) while cut off from it", victim, got))
	}
	acks := r.h.snapshot()
	end := time.Now()
	gap := longestGap(acks, start, end)
	syncDuring := g.syncStandby(r.leader)
	senders := walsenders(g, r.leader)
	heal()
	r.notef("cut %s off leader %s (%s) for %s; sync standby %q -> %q; longest write gap during the cut %s; walsenders at the end of the cut: %s",
		victim, r.leader, kind, d.Round(100*time.Millisecond), syncBefore, syncDuring, gap.Round(10*time.Millisecond), senders)
	if gap > partitionStallBound {
		errs = append(errs, stallErr(start, end, gap, senders))
	}
	took, err := catchUp(g, r.leader, []string{victim}, 30*time.Second)
	if err != nil {
		errs = append(errs, err.Error())
	} else {
		r.notef("%s caught up %s after healing", victim, took.Round(100*time.Millisecond))
	}
	return joinErrs(errs)
}

// ---- helpers ----

// cutKind draws how a path is cut: silently dropped packets (timeouts)
// half of the time, else a prohibit or blackhole route (immediate errors).
func cutKind(r *rep) string {
	switch r.rng.IntN(4) {
	case 0:
		return testbed.Prohibit
	case 1:
		return testbed.Blackhole
	}
	return testbed.Drop
}

// holdWatchingLeader waits until until, checking that the leader key keeps
// naming r.leader and that r.leader stays writable (a partition that leaves
// the primary its Consul session must not cost it the lock).
func holdWatchingLeader(r *rep, until time.Time) []string {
	g := r.e.g
	var errs []string
	for time.Now().Before(until) {
		l, err := g.leader()
		if err == nil && l != r.leader {
			errs = append(errs, fmt.Sprintf("%s: leader key %q, want %s (no failover expected)", time.Now().Format("15:04:05.000"), l, r.leader))
			break
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		w, err := g.members[r.leader].IsWritable(ctx)
		cancel()
		if err == nil && !w {
			errs = append(errs, fmt.Sprintf("%s: leader %s no longer writable although it reaches Consul", time.Now().Format("15:04:05.000"), r.leader))
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(time.Until(until))
	return errs
}

// replicaBehind reports whether replica m misses WAL the primary has
// (its last received LSN is below the primary's current one).
func replicaBehind(g *group, primary, m string) (bool, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pc, err := g.members[primary].Connect(ctx)
	if err != nil {
		return false, "", err
	}
	defer pc.Close(context.Background())
	var plsn string
	if err := pc.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&plsn); err != nil {
		return false, "", err
	}
	rc, err := g.members[m].Connect(ctx)
	if err != nil {
		return false, "", err
	}
	defer rc.Close(context.Background())
	var behind bool
	var got string
	if err := rc.QueryRow(ctx, "SELECT coalesce(pg_last_wal_receive_lsn() < $1::pg_lsn, true), coalesce(pg_last_wal_receive_lsn()::text, 'none')", plsn).Scan(&behind, &got); err != nil {
		return false, "", err
	}
	return behind, got + " of " + plsn, nil
}

// catchUp waits until every replica has replayed the primary's current WAL
// position and returns how long that took.
func catchUp(g *group, primary string, replicas []string, within time.Duration) (time.Duration, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	pc, err := g.members[primary].Connect(ctx)
	if err != nil {
		cancel()
		return 0, fmt.Errorf("catch-up: connect to %s: %v", primary, err)
	}
	var target string
	err = pc.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&target)
	pc.Close(context.Background())
	cancel()
	if err != nil {
		return 0, fmt.Errorf("catch-up: %s: %v", primary, err)
	}
	pending := append([]string(nil), replicas...)
	var last error
	for time.Since(start) < within {
		var still []string
		for _, m := range pending {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			c, err := g.members[m].Connect(ctx)
			if err != nil {
				cancel()
				last = err
				still = append(still, m)
				continue
			}
			var ok bool
			var got string
			err = c.QueryRow(ctx, "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false), coalesce(pg_last_wal_replay_lsn()::text, 'none')", target).Scan(&ok, &got)
			c.Close(context.Background())
			cancel()
			if err != nil || !ok {
				last = fmt.Errorf("%s replayed %s of %s (%v)", m, got, target, err)
				still = append(still, m)
			}
		}
		if pending = still; len(pending) == 0 {
			return time.Since(start), nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return 0, fmt.Errorf("replicas %v did not catch up with %s within %s after healing: %v", pending, primary, within, last)
}

// walsenders summarises pg_stat_replication on the primary.
func walsenders(g *group, primary string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := g.members[primary].Connect(ctx)
	if err != nil {
		return err.Error()
	}
	defer c.Close(context.Background())
	var s string
	err = c.QueryRow(ctx, `SELECT coalesce(string_agg(application_name || ' ' || state || ' ' || sync_state || ' reply ' ||
		coalesce(round(extract(epoch FROM clock_timestamp() - reply_time)::numeric, 1)::text, '?') || 's ago', ', ' ORDER BY application_name), 'none')
		FROM pg_stat_replication`).Scan(&s)
	if err != nil {
		return err.Error()
	}
	return s
}

func (h *history) snapshot() []ackRec {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := append([]ackRec(nil), h.acks...)
	sort.Slice(out, func(i, j int) bool { return out[i].at.Before(out[j].at) })
	return out
}

func stallErr(start, end time.Time, gap time.Duration, senders string) string {
	return fmt.Sprintf("writes stalled %s during the cut %s..%s (bound %s) although the primary kept its lease; walsenders at the end of the cut: %s",
		gap.Round(10*time.Millisecond), start.Format("15:04:05.000"), end.Format("15:04:05.000"), partitionStallBound, senders)
}

func joinErrs(errs []string) error {
	if len(errs) == 0 {
		return nil
	}
	return errors.New(strings.Join(errs, "; "))
}
