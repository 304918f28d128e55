package test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/test/testbed"
)

// The fault suite's instruments: a history checker (clients that record
// every acknowledged write), an overlap sampler (who is writable, every few
// milliseconds) and a health check that does not fail the test, so a member
// that needs a human can be counted and repaired.

const fsTable = "fs_hist"

// ackRec is one acknowledged insert.
type ackRec struct {
	id     int64
	member string
	// inc identifies the writable incarnation that committed it: the member
	// and its postmaster's start time. A primary is writable at most once
	// per postmaster life (every demotion restarts PostgreSQL), so two
	// incarnations acknowledging writes in overlapping time ranges means two
	// writable primaries.
	inc string
	// server is clock_timestamp() during the insert (same host, same clock
	// for every member); at is when the client got the acknowledgement.
	server time.Time
	at     time.Time
}

// history runs clients that insert uniquely numbered rows into whichever
// member is writable (one persistent connection each, like an application
// pool) and records every acknowledged id.
type history struct {
	g       *group
	nextID  *atomic.Int64
	firstID int64
	mu      sync.Mutex
	acks    []ackRec
	// inDoubt: statements that failed after being sent (outcome unknown);
	// syncCancelled: commits PostgreSQL reported as "committed locally but
	// maybe not replicated" (not counted as acknowledged).
	inDoubt, syncCancelled int
	stop, done             chan struct{}
}

func startHistory(g *group, nextID *atomic.Int64, clients int) *history {
	h := &history{g: g, nextID: nextID, firstID: nextID.Load() + 1, stop: make(chan struct{}), done: make(chan struct{})}
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(client int) {
			defer wg.Done()
			h.client(client)
		}(c)
	}
	go func() { wg.Wait(); close(h.done) }()
	return h
}

func (h *history) client(client int) {
	var conn *pgx.Conn
	var member string
	var warned atomic.Bool
	closeConn := func() {
		if conn != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			conn.Close(ctx)
			cancel()
			conn = nil
		}
	}
	defer closeConn()
	for {
		select {
		case <-h.stop:
			return
		default:
		}
		if conn == nil {
			ws := h.g.writable()
			if len(ws) != 1 {
				time.Sleep(20 * time.Millisecond)
				continue
			}
			cfg, err := pgx.ParseConfig(h.g.members[ws[0]].DSN())
			if err != nil {
				panic(err)
			}
			cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
				if strings.Contains(n.Message, "synchronous replication") {
					warned.Store(true)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			conn, err = pgx.ConnectConfig(ctx, cfg)
			cancel()
			if err != nil {
				conn = nil
				time.Sleep(20 * time.Millisecond)
				continue
			}
			member = ws[0]
		}
		id := h.nextID.Add(1)
		warned.Store(false)
		var pst string
		var srv time.Time
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err := conn.QueryRow(ctx, "INSERT INTO "+fsTable+"(id, client) VALUES ($1, $2) RETURNING pg_postmaster_start_time()::text, clock_timestamp()", id, client).Scan(&pst, &srv)
		cancel()
		now := time.Now()
		h.mu.Lock()
		switch {
		case err != nil:
			h.inDoubt++
		case warned.Load():
			h.syncCancelled++
		default:
			h.acks = append(h.acks, ackRec{id: id, member: member, inc: member + "@" + pst, server: srv, at: now})
		}
		h.mu.Unlock()
		if err != nil {
			closeConn()
			time.Sleep(20 * time.Millisecond)
			continue
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// count is the number of acknowledged writes so far.
func (h *history) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.acks)
}

// waitAcks waits until n more writes than now were acknowledged.
func (h *history) waitAcks(t *testing.T, n int, timeout time.Duration, what string) {
	t.Helper()
	want := h.count() + n
	testbed.Eventually(t, timeout, what, func() error {
		if c := h.count(); c < want {
			return fmt.Errorf("%d of %d acknowledged writes", c, want)
		}
		return nil
	})
}

func (h *history) finish() []ackRec {
	select {
	case <-h.stop:
	default:
		close(h.stop)
	}
	<-h.done
	h.mu.Lock()
	defer h.mu.Unlock()
	out := append([]ackRec(nil), h.acks...)
	sort.Slice(out, func(i, j int) bool { return out[i].at.Before(out[j].at) })
	return out
}

// lostOn returns the acknowledged ids that member m does not have.
func lostOn(g *group, m string, acks []ackRec, firstID int64) ([]int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := g.members[m].Connect(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Close(context.Background())
	rows, err := c.Query(ctx, "SELECT id FROM "+fsTable+" WHERE id >= $1", firstID)
	if err != nil {
		return nil, err
	}
	have := map[int64]bool{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		have[id] = true
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var lost []int64
	for _, a := range acks {
		if !have[a.id] {
			lost = append(lost, a.id)
		}
	}
	return lost, nil
}

// overlap is a time range during which two members were writable.
type overlap struct {
	from, to time.Time
	members  string
}

func (o overlap) length() time.Duration { return o.to.Sub(o.from) }

func (o overlap) String() string {
	return fmt.Sprintf("%s..%s (%s) %s", o.from.Format("15:04:05.000"), o.to.Format("15:04:05.000"), o.length().Round(time.Millisecond), o.members)
}

// ackOverlaps finds incarnations whose acknowledged writes interleave in
// server time: ground truth for two primaries accepting writes at once.
func ackOverlaps(acks []ackRec) []overlap {
	type span struct{ from, to time.Time }
	spans := map[string]*span{}
	for _, a := range acks {
		s := spans[a.inc]
		if s == nil {
			spans[a.inc] = &span{a.server, a.server}
			continue
		}
		if a.server.Before(s.from) {
			s.from = a.server
		}
		if a.server.After(s.to) {
			s.to = a.server
		}
	}
	var incs []string
	for k := range spans {
		incs = append(incs, k)
	}
	sort.Strings(incs)
	var out []overlap
	for i := range incs {
		for j := i + 1; j < len(incs); j++ {
			a, b := spans[incs[i]], spans[incs[j]]
			from, to := a.from, a.to
			if b.from.After(from) {
				from = b.from
			}
			if b.to.Before(to) {
				to = b.to
			}
			if to.After(from) {
				out = append(out, overlap{from: from, to: to, members: incs[i] + " & " + incs[j]})
			}
		}
	}
	return out
}

// recoveryTimes: for every mark (an injection), the time until the first
// acknowledged write on an incarnation that had not acknowledged anything
// before the mark (a new primary, or the same member restarted). Marks
// after which the old incarnation kept acknowledging are left out.
func recoveryTimes(acks []ackRec, marks []time.Time) []time.Duration {
	var out []time.Duration
	for _, m := range marks {
		seen := map[string]bool{}
		for _, a := range acks {
			if a.at.Before(m) {
				seen[a.inc] = true
			}
		}
		for _, a := range acks {
			if !a.at.Before(m) && !seen[a.inc] {
				out = append(out, a.at.Sub(m))
				break
			}
		}
	}
	return out
}

// longestGap is the longest time without an acknowledged write after from.
func longestGap(acks []ackRec, from, to time.Time) time.Duration {
	last := from
	var gap time.Duration
	for _, a := range acks {
		if a.at.Before(from) {
			continue
		}
		if d := a.at.Sub(last); d > gap {
			gap = d
		}
		last = a.at
	}
	if d := to.Sub(last); d > gap {
		gap = d
	}
	return gap
}

// overlapSampler checks, every few milliseconds, which members accept
// writes (a fresh connection each, pg_is_in_recovery()) and records every
// window in which more than one did.
type overlapSampler struct {
	mu      sync.Mutex
	windows []overlap
	rounds  int
	stop    chan struct{}
	done    chan struct{}
}

func startOverlapSampler(g *group) *overlapSampler {
	s := &overlapSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		var cur *overlap
		for {
			select {
			case <-s.stop:
				if cur != nil {
					s.mu.Lock()
					s.windows = append(s.windows, *cur)
					s.mu.Unlock()
				}
				return
			default:
			}
			w := g.writableNow(500 * time.Millisecond)
			now := time.Now()
			s.mu.Lock()
			s.rounds++
			if len(w) > 1 {
				sort.Strings(w)
				if cur == nil {
					cur = &overlap{from: now, members: strings.Join(w, ",")}
				}
				cur.to = now
			} else if cur != nil {
				s.windows = append(s.windows, *cur)
				cur = nil
			}
			s.mu.Unlock()
			time.Sleep(10 * time.Millisecond)
		}
	}()
	return s
}

func (s *overlapSampler) finish() ([]overlap, int) {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]overlap(nil), s.windows...), s.rounds
}

// healthy checks, without failing the test, that the group has one
// writable leader with a valid /primary and every other member is a
// streaming replica; it returns the leader.
func (g *group) healthy() (string, error) {
	for _, m := range g.order {
		if !g.members[m].Running() {
			return "", fmt.Errorf("agent %s is not running", m)
		}
	}
	l, err := g.leader()
	if err != nil {
		return "", err
	}
	if l == "" {
		return "", errors.New("no leader key")
	}
	if w, err := g.members[l].IsWritable(context.Background()); err != nil || !w {
		return "", fmt.Errorf("leader %s not writable: %v", l, err)
	}
	if code, _, err := g.members[l].APIStatus("/primary"); code != 200 {
		return "", fmt.Errorf("leader %s /primary = %d %v", l, code, err)
	}
	for _, m := range g.order {
		if m == l {
			continue
		}
		code, body, err := g.members[m].APIStatus("/replica")
		if code != 200 {
			return "", fmt.Errorf("%s /replica = %d (state %v, message %v) %v", m, code, body["state"], body["message"], err)
		}
	}
	return l, nil
}

// healthyWithin polls healthy until it holds or the bound passes.
func (g *group) healthyWithin(bound time.Duration) (string, error) {
	deadline := time.Now().Add(bound)
	for {
		l, err := g.healthy()
		if err == nil {
			return l, nil
		}
		if time.Now().After(deadline) {
			return "", err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// syncStandby returns the standby the sync key lists for leader ("" none).
func (g *group) syncStandby(leader string) string {
	v, err := g.kv.ReadGroup(context.Background(), g.name)
	if err != nil || v.Sync == nil || v.Sync.Leader != leader || len(v.Sync.SyncStandbys) == 0 {
		return ""
	}
	return v.Sync.SyncStandbys[0]
}

// postJSON is post without failing the test on a transport error.
func postJSON(addr, path, body string, timeout time.Duration) (int, string, error) {
	client := &http.Client{Timeout: timeout}
	resp, err := client.Post("http://"+addr+path, "application/json", strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func maxDur(ds []time.Duration) time.Duration {
	var m time.Duration
	for _, d := range ds {
		if d > m {
			m = d
		}
	}
	return m
}

func fmtDur(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}

// startGroupPrepared is startGroup with a hook that runs on each member
// after its directory exists and before its agent starts (e.g. to mount a
// tmpfs as its data directory).
func startGroupPrepared(t *testing.T, c *testbed.Consul, name string, n int, consulAddr func(member string) string, tweak func(*testbed.AgentSpec), prepare func(m string, a *testbed.Agent)) *group {
	t.Helper()
	kv, err := consulkv.New(consulkv.Config{Address: c.HTTPAddr, Cluster: "itest"})
	if err != nil {
		t.Fatal(err)
	}
	g := &group{t: t, consul: c, kv: kv, name: name, members: map[string]*testbed.Agent{}}
	for i := 0; i < n; i++ {
		m := fmt.Sprintf("%s-%c", name, 'a'+i)
		spec := testbed.AgentSpec{Cluster: "itest", Group: name, Name: m, ConsulAddr: consulAddr(m)}
		if tweak != nil {
			tweak(&spec)
		}
		a := testbed.NewAgent(t, spec)
		if prepare != nil {
			prepare(m, a)
		}
		a.Start()
		g.members[m] = a
		g.order = append(g.order, m)
	}
	return g
}

// faultSettings is the environment every fault suite shares:
// PGMESH_FAULT_LONG=1 (long mode), PGMESH_FAULT_SEED (replay),
// PGMESH_FAULT_REPS (repetitions; default 1, long mode 5),
// PGMESH_FAULT_ONLY=fault,fault and PGMESH_FAULT_REPORT=file.
type faultSettings struct {
	long    bool
	seed    uint64
	reps    int
	repsSet bool // PGMESH_FAULT_REPS given: it wins over a fault's ciReps
	only    map[string]bool
	tier    string
}

// readFaultSettings reads the settings and logs the seed so a run can be
// replayed.
func readFaultSettings(t *testing.T, suite string) faultSettings {
	t.Helper()
	s := faultSettings{long: os.Getenv("PGMESH_FAULT_LONG") == "1", seed: uint64(time.Now().UnixNano()), reps: 1, only: map[string]bool{}, tier: "CI tier"}
	if v := os.Getenv("PGMESH_FAULT_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("PGMESH_FAULT_SEED=%q: %v", v, err)
		}
		s.seed = n
	}
	if s.long {
		s.reps, s.tier = 5, "long mode"
	}
	if v := os.Getenv("PGMESH_FAULT_REPS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("PGMESH_FAULT_REPS=%q: want a positive number", v)
		}
		s.reps, s.repsSet = n, true
	}
	for _, f := range strings.Split(os.Getenv("PGMESH_FAULT_ONLY"), ",") {
		if f = strings.TrimSpace(f); f != "" {
			s.only[f] = true
		}
	}
	t.Logf("%s (%s): seed %d — replay with PGMESH_FAULT_SEED=%d", suite, s.tier, s.seed, s.seed)
	return s
}

// plan is the faults of defs that run in mode: the CI tier's choice, every
// one in long mode or when PGMESH_FAULT_ONLY names them.
func (s faultSettings) plan(defs []faultDef, mode string) []faultDef {
	var out []faultDef
	for _, f := range defs {
		switch {
		case len(s.only) > 0 && !s.only[f.name]:
		case s.long || len(s.only) > 0 || contains(f.ci, mode):
			if f.modes == nil || contains(f.modes, mode) {
				out = append(out, f)
			}
		}
	}
	return out
}

// run runs the planned faults mode by mode, each mode in a subtest with the
// environment newEnv builds for it, and returns every repetition's result
// (it stops a mode at its first failure).
func (s faultSettings) run(t *testing.T, defs []faultDef, newEnv func(t *testing.T, mode string, plan []faultDef) *faultEnv) []repResult {
	var results []repResult
	for _, mode := range []string{"async", "sync"} {
		plan := s.plan(defs, mode)
		if len(plan) == 0 {
			continue
		}
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t, mode, plan)
			for _, f := range plan {
				n := s.reps
				if !s.long && f.ciReps > 0 && !s.repsSet {
					n = f.ciReps
				}
				for rep := 0; rep < n; rep++ {
					r := e.runRep(f, rep)
					results = append(results, r)
					t.Logf("%s", r.line())
					if t.Failed() {
						return
					}
				}
			}
		})
	}
	return results
}

// report logs a suite's table and writes it to PGMESH_FAULT_REPORT if set.
func (s faultSettings) report(t *testing.T, table string) {
	t.Logf("\n%s", table)
	if p := os.Getenv("PGMESH_FAULT_REPORT"); p != "" {
		if err := os.WriteFile(p, []byte(table), 0o644); err != nil {
			t.Errorf("write report: %v", err)
		}
	}
}
