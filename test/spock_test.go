package test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgmesh/pgmesh/pg"
	"github.com/pgmesh/pgmesh/test/testbed"
)

// The Spock tests run real pgEdge Spock 5.0.11 on PostgreSQL 15 with Spock's
// patches (the kit scripts/setup builds): two groups of two members, Spock
// nodes and subscriptions both ways through multi-host DSNs, a writer on
// every group, and faults. What they assert: every acknowledged row of each
// group on the other exactly once (primary key + checksum), no row on a
// subscriber that the publishing group's current primary lacks (Spock's
// walsenders wait for the promotable standby: spock.pg_standby_slot_names),
// both subscriptions back to replicating, old primaries rejoined, and no
// repeating errors of Spock's workers in any PostgreSQL log.

// spockMesh is two Spock groups replicating to each other.
type spockMesh struct {
	t      *testing.T
	c      *testbed.Consul
	groups []*group
	kills  map[string][]time.Time // group → when its primary's host was killed
}

// spockApplyWindow bounds how long before a subscriber group's primary host
// dies a change it applied from another group may still be missing on its
// promoted standby. Spock confirms an applied change to the publisher once
// it is flushed locally, without waiting for the group's standbys (in
// synchronous mode too: Spock 5.0.11 applies with synchronous_commit=local
// and its sync-standby hold of the feedback is overwritten before it is
// sent), so the publisher never sends it again. On loopback the standbys
// trail by milliseconds; ten seconds leaves room for a loaded CI machine
// while a subscription that stopped would still show up as missing rows.
const spockApplyWindow = 10 * time.Second

// killPrimaryHost kills member name of g (its primary) and remembers when,
// for checkConverged.
func (m *spockMesh) killPrimaryHost(g *group, name string) {
	if m.kills == nil {
		m.kills = map[string][]time.Time{}
	}
	g.members[name].KillHost()
	m.kills[g.name] = append(m.kills[g.name], time.Now())
}

func startSpockMesh(t *testing.T, mode string) *spockMesh {
	bin := testbed.SpockBinDir(t)
	return startSpockMeshOn(t, mode, testbed.StartConsul(t, testbed.ConsulOptions{}), nil, func(*testbed.AgentSpec) {}, bin)
}

// startSpockMeshOn starts the two Spock groups on Consul c (members reach
// it at consulAddr when set) with tweak applied to every member.
func startSpockMeshOn(t *testing.T, mode string, c *testbed.Consul, consulAddr func(string) string, tweak func(*testbed.AgentSpec), bin string) *spockMesh {
	dcs := "replication: spock"
	if mode == "sync" {
		dcs += "\nsynchronous_mode: on"
	}
	m := &spockMesh{t: t, c: c}
	for _, name := range []string{"sa", "sb"} {
		m.groups = append(m.groups, startGroup(t, c, name, 2, consulAddr, func(s *testbed.AgentSpec) { s.BinDir, s.DCSExtra = bin, dcs; tweak(s) }))
	}
	ctx := context.Background()
	for _, g := range m.groups {
		l := g.waitHealthy(120 * time.Second)
		for _, sql := range []string{
			"CREATE EXTENSION spock",
			"CREATE TABLE spk(id bigint PRIMARY KEY, origin text NOT NULL, v int NOT NULL DEFAULT 0)",
			fmt.Sprintf("SELECT spock.node_create('%s', '%s')", g.name, multiHostDSN(g)),
			"SELECT spock.repset_add_table('default', 'spk')",
		} {
			if err := g.members[l].Exec(ctx, sql); err != nil {
				t.Fatalf("%s on %s: %v", sql, l, err)
			}
		}
	}
	for i, g := range m.groups {
		other := m.groups[1-i]
		l, _ := g.leader()
		sql := fmt.Sprintf("SELECT spock.sub_create('%s', '%s')", subName(g, other), multiHostDSN(other))
		if err := g.members[l].Exec(ctx, sql); err != nil {
			t.Fatalf("%s on %s: %v", sql, l, err)
		}
	}
	m.waitReplicating(60 * time.Second)
	return m
}

// standbyOf is the member of the two-member group g that is not m.
func (g *group) standbyOf(m string) string {
	if g.order[0] == m {
		return g.order[1]
	}
	return g.order[0]
}

// subName is the subscription on g that consumes from provider.
func subName(g, provider *group) string { return "sub_" + g.name + "_from_" + provider.name }

// waitReplicating waits until both subscriptions report replicating on
// their group's current primary, and returns how long that took.
func (m *spockMesh) waitReplicating(within time.Duration) time.Duration {
	start := time.Now()
	for i, g := range m.groups {
		sub := subName(g, m.groups[1-i])
		testbed.Eventually(m.t, within, "Spock subscription "+sub+" replicating", func() error {
			l := g.writableMember(m.t)
			var status string
			err := withConn(g, l, func(c *pgx.Conn) error {
				return c.QueryRow(context.Background(), "SELECT status FROM spock.sub_show_status($1)", sub).Scan(&status)
			})
			if err != nil || status != "replicating" {
				return fmt.Errorf("%s on %s: %q %v", sub, l, status, err)
			}
			return nil
		})
	}
	return time.Since(start)
}

func withConn(g *group, m string, f func(*pgx.Conn) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := g.members[m].Connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	return f(c)
}

// spockWriter inserts rows through the group's multi-host DSN (libpq finds
// the writable member), one autocommit insert at a time, and records the
// ids the server acknowledged.
type spockWriter struct {
	g      *group
	mu     sync.Mutex
	acked  []ack
	stop   chan struct{}
	done   chan struct{}
	lastAt time.Time
	maxGap time.Duration // longest time between two acknowledged writes
}

func startSpockWriter(g *group, base int64) *spockWriter {
	w := &spockWriter{g: g, stop: make(chan struct{}), done: make(chan struct{})}
	dsn := strings.ReplaceAll(multiHostDSN(g), "''", "'")
	go func() {
		defer close(w.done)
		id := base
		var c *pgx.Conn
		defer func() {
			if c != nil {
				c.Close(context.Background())
			}
		}()
		for {
			select {
			case <-w.stop:
				return
			default:
			}
			if c == nil {
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				var err error
				c, err = pgx.Connect(ctx, dsn)
				cancel()
				if err != nil {
					c = nil
					time.Sleep(50 * time.Millisecond)
					continue
				}
			}
			id++
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			_, err := c.Exec(ctx, "INSERT INTO spk(id, origin) VALUES ($1, $2)", id, g.name)
			cancel()
			if err != nil {
				c.Close(context.Background())
				c = nil
				continue
			}
			now := time.Now()
			w.mu.Lock()
			w.acked = append(w.acked, ack{id: id, at: now})
			if !w.lastAt.IsZero() && now.Sub(w.lastAt) > w.maxGap {
				w.maxGap = now.Sub(w.lastAt)
			}
			w.lastAt = now
			w.mu.Unlock()
			time.Sleep(10 * time.Millisecond)
		}
	}()
	return w
}

func (w *spockWriter) count() int { w.mu.Lock(); defer w.mu.Unlock(); return len(w.acked) }

// gap returns the longest pause between acknowledged writes so far and
// starts measuring anew.
func (w *spockWriter) gap() time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	g := w.maxGap
	w.maxGap = 0
	return g
}

// ack is a row the server acknowledged, and when.
type ack struct {
	id int64
	at time.Time
}

func (w *spockWriter) finish() []ack {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]ack(nil), w.acked...)
}

// rowsOf returns id → v of the rows of origin on member m.
func rowsOf(g *group, m, origin string) (map[int64]int, error) {
	out := map[int64]int{}
	err := withConn(g, m, func(c *pgx.Conn) error {
		rows, err := c.Query(context.Background(), "SELECT id, v FROM spk WHERE origin = $1", origin)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id int64
			var v int
			if err := rows.Scan(&id, &v); err != nil {
				return err
			}
			out[id] = v
		}
		return rows.Err()
	})
	return out, err
}

// checkConverged waits until each group's rows on its current primary are
// on the other group's primary with the same values, and checks the
// acknowledged rows: lost ones (absent on the publishing group's primary)
// are returned, rows a subscriber has that the publisher lacks fail the
// test. The one exception, counted and logged: rows a group acknowledged
// within spockApplyWindow before the other group's primary host was killed
// may be missing there (see spockApplyWindow).
func (m *spockMesh) checkConverged(acked map[string][]ack) (lost map[string][]int64) {
	lost = map[string][]int64{}
	for i, g := range m.groups {
		other := m.groups[1-i]
		mayMiss := map[int64]bool{}
		for _, a := range acked[g.name] {
			for _, k := range m.kills[other.name] {
				if !a.at.Before(k.Add(-spockApplyWindow)) && !a.at.After(k) {
					mayMiss[a.id] = true
				}
			}
		}
		var src, dst map[int64]int
		var skipped []int64
		testbed.Eventually(m.t, 60*time.Second, "rows of "+g.name+" converge on "+other.name, func() error {
			lg, lo := g.writableMember(m.t), other.writableMember(m.t)
			var err error
			if src, err = rowsOf(g, lg, g.name); err != nil {
				return err
			}
			if dst, err = rowsOf(other, lo, g.name); err != nil {
				return err
			}
			skipped = skipped[:0]
			for id, v := range src {
				dv, ok := dst[id]
				switch {
				case !ok && mayMiss[id]:
					skipped = append(skipped, id)
				case !ok || dv != v:
					return fmt.Errorf("row %d of %s: %v on %s, missing or different on %s", id, g.name, v, lg, lo)
				}
			}
			return nil
		})
		var extra []int64
		for id := range dst {
			if _, ok := src[id]; !ok {
				extra = append(extra, id)
			}
		}
		if len(extra) > 0 {
			sort.Slice(extra, func(a, b int) bool { return extra[a] < extra[b] })
			m.t.Errorf("%d rows of %s reached %s but are not on %s's primary (a subscriber applied a change the promoted standby lacked): %v", len(extra), g.name, other.name, g.name, extra)
		}
		for _, a := range acked[g.name] {
			if _, ok := src[a.id]; !ok {
				lost[g.name] = append(lost[g.name], a.id)
			}
		}
		missing := map[int64]bool{}
		for _, id := range skipped {
			missing[id] = true
		}
		var sum, dsum int64
		for id, v := range src {
			if missing[id] {
				continue
			}
			sum += id*31 + int64(v)
			dsum += id*31 + int64(dst[id])
		}
		if sum != dsum {
			m.t.Errorf("checksum of %s's rows: %d on %s, %d on %s", g.name, sum, g.name, dsum, other.name)
		}
		sort.Slice(skipped, func(a, b int) bool { return skipped[a] < skipped[b] })
		m.t.Logf("%s: %d rows on its primary, all on %s with the same values (checksum %d) but %d applied by %s's killed primary and confirmed before its standby had them %v; %d acknowledged, %d lost",
			g.name, len(src), other.name, sum, len(skipped), other.name, skipped, len(acked[g.name]), len(lost[g.name]))
	}
	return lost
}

// logSkippedReports logs the ranges pgmesh reported as skipped at the
// groups' promotions, next to the rows checkConverged counted as missing:
// a range with no missing row would be a false report.
func (m *spockMesh) logSkippedReports() {
	for _, g := range m.groups {
		v, err := g.kv.ReadGroup(context.Background(), g.name)
		if err != nil || v.History == nil {
			continue
		}
		for _, e := range v.History.Entries {
			for _, sk := range e.SkippedChanges {
				m.t.Logf("%s's promotion of %s reported skipped changes of %s: %s to %s", g.name, e.NewLeader, sk.Publisher, pg.LSN(sk.From), pg.LSN(sk.To))
			}
		}
	}
}

// spockLogProblems lists repeating errors of Spock's workers and failed
// authentications in every member's PostgreSQL log.
func (m *spockMesh) spockLogProblems() []string {
	re := regexp.MustCompile(`(ERROR|FATAL):\s+(.*)`)
	var out []string
	for _, g := range m.groups {
		for _, name := range g.order {
			data, err := os.ReadFile(g.members[name].DataDir + ".log")
			if err != nil {
				continue
			}
			counts := map[string]int{}
			for _, line := range strings.Split(string(data), "\n") {
				if strings.Contains(line, "password authentication failed") {
					counts["password authentication failed"]++
				}
				if mm := re.FindStringSubmatch(line); mm != nil && strings.Contains(strings.ToLower(line), "spock") {
					counts[mm[2]]++
				}
			}
			for msg, n := range counts {
				if n > 3 || strings.Contains(msg, "password authentication failed") {
					out = append(out, fmt.Sprintf("%s: %dx %s", name, n, msg))
				}
			}
		}
	}
	return out
}

// waitLogicalSlotsReady waits until standby reports current copies of the
// leader's logical slots (logical_slots_ready: pgmesh's copies, Spock's
// synced slots or PostgreSQL 17's). A Spock standby promoted before that has
// only what Spock persists at the promotion ("after promotion interrupted
// WAL catchup"): positions of its own, from which a subscriber may skip
// changes.
func waitLogicalSlotsReady(t *testing.T, g *group, standby string) {
	t.Helper()
	testbed.Eventually(t, 60*time.Second, g.name+"'s standby "+standby+" reports its logical slots ready", func() error {
		v, err := g.kv.ReadGroup(context.Background(), g.name)
		if err != nil {
			return err
		}
		if v.Status == nil || len(v.Status.LogicalSlots) == 0 {
			return errors.New("leader publishes no logical slots")
		}
		if mk := v.Members[standby]; mk == nil || !mk.LogicalSlotsReady {
			return fmt.Errorf("%s not ready", standby)
		}
		return nil
	})
}

// TestSpockMesh: kill -9 of a group's primary host, a switchover, and the
// same row updated on both groups around a failover, under write load on
// both groups (asynchronous replication inside the groups).
func TestSpockMesh(t *testing.T) {
	m := startSpockMesh(t, "async")
	sa, sb := m.groups[0], m.groups[1]
	ctx := context.Background()

	// Spock's failover-slot worker, configured by pgmesh, syncs sa's slot
	// (consumed by sb) to sa's standby, and the leader holds Spock's
	// walsenders back for that standby.
	la, _ := sa.leader()
	standby := sa.standbyOf(la)
	waitLogicalSlotsReady(t, sa, standby)
	var standbySlots string
	withConn(sa, la, func(c *pgx.Conn) error {
		return c.QueryRow(ctx, "SELECT current_setting('spock.pg_standby_slot_names')").Scan(&standbySlots)
	})
	if standbySlots != "pgmesh_"+strings.ReplaceAll(standby, "-", "_") {
		t.Fatalf("spock.pg_standby_slot_names on the leader = %q, want %s's physical slot", standbySlots, standby)
	}

	wa, wb := startSpockWriter(sa, 1_000_000_000), startSpockWriter(sb, 2_000_000_000)
	testbed.Eventually(t, 30*time.Second, "both writers acknowledged writes", func() error {
		if wa.count() < 50 || wb.count() < 50 {
			return fmt.Errorf("acked %d / %d", wa.count(), wb.count())
		}
		return nil
	})

	// 1. kill -9 of sa's primary host.
	wb.gap()
	killed := time.Now()
	m.killPrimaryHost(sa, la)
	newA := sa.waitNewLeader(la, 60*time.Second)
	promoted := time.Since(killed)
	marker := int64(3_000_000_001)
	if err := sa.members[newA].Exec(ctx, "INSERT INTO spk(id, origin) VALUES ($1, 'sa')", marker); err != nil {
		t.Fatal(err)
	}
	testbed.Eventually(t, 60*time.Second, "a row written on sa after the failover reaches sb", func() error {
		rows, err := rowsOf(sb, sb.writableMember(t), "sa")
		if err != nil {
			return err
		}
		if _, ok := rows[marker]; !ok {
			return errors.New("not yet")
		}
		return nil
	})
	interrupted := time.Since(killed)
	back := m.waitReplicating(60 * time.Second)
	t.Logf("kill -9 of sa's primary host %s: %s writable after %s; sa->sb replication interrupted %s; both subscriptions replicating %s after that; longest write gap on sb meanwhile %s",
		la, newA, promoted.Round(10*time.Millisecond), interrupted.Round(10*time.Millisecond), back.Round(10*time.Millisecond), wb.gap().Round(time.Millisecond))
	sa.members[la].Start()
	sa.waitHealthy(120 * time.Second)

	// 2. switchover in sb (to its standby, once that has current copies of
	// the slot sa consumes from: refused before).
	lb, _ := sb.leader()
	sbStandby := sb.standbyOf(lb)
	waitLogicalSlotsReady(t, sb, sbStandby)
	p := newPgmeshCLI(t, m.c.HTTPAddr, "itest")
	swStart := time.Now()
	p.ok("switchover", "--group", "sb", "--force")
	newB := sb.waitNewLeader(lb, 60*time.Second)
	sb.waitHealthy(90 * time.Second)
	back = m.waitReplicating(60 * time.Second)
	t.Logf("switchover in sb %s -> %s: subscriptions replicating %s after the request", lb, newB, time.Since(swStart).Round(10*time.Millisecond))
	// The demoted primary cut Spock's walsenders off and went read-only
	// (spock.readonly) while it stopped; as a standby it has no logical
	// walsenders and no longer needs the flag.
	if pgLog := readFile(t, sb.members[lb].DataDir+".log"); !strings.Contains(pgLog, `parameter "spock.readonly" changed to "all"`) {
		t.Errorf("demoted primary %s never set spock.readonly", lb)
	}
	testbed.Eventually(t, 30*time.Second, "old primary "+lb+" is a standby without logical walsenders or spock.readonly", func() error {
		var inRecovery bool
		var walsenders int
		var ro string
		err := withConn(sb, lb, func(c *pgx.Conn) error {
			if err := c.QueryRow(ctx, "SELECT pg_is_in_recovery(), current_setting('spock.readonly')").Scan(&inRecovery, &ro); err != nil {
				return err
			}
			return c.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical' AND active").Scan(&walsenders)
		})
		if err != nil || !inRecovery || walsenders != 0 || ro != "off" {
			return fmt.Errorf("in recovery %v, active logical slots %d, spock.readonly %q (%v)", inRecovery, walsenders, ro, err)
		}
		return nil
	})

	// 3. the same row updated on both groups just before sb's primary host
	// dies: last update wins, and both groups end with the same value.
	conflictID := int64(3_000_000_002)
	if err := sa.members[sa.writableMember(t)].Exec(ctx, "INSERT INTO spk(id, origin) VALUES ($1, 'sa')", conflictID); err != nil {
		t.Fatal(err)
	}
	testbed.Eventually(t, 30*time.Second, "conflict row on sb", func() error {
		rows, err := rowsOf(sb, sb.writableMember(t), "sa")
		if _, ok := rows[conflictID]; err != nil || !ok {
			return fmt.Errorf("not yet (%v)", err)
		}
		return nil
	})
	la2, lb2 := sa.writableMember(t), sb.writableMember(t)
	if err := sa.members[la2].Exec(ctx, "UPDATE spk SET v = 1 WHERE id = $1", conflictID); err != nil {
		t.Fatal(err)
	}
	if err := sb.members[lb2].Exec(ctx, "UPDATE spk SET v = 2 WHERE id = $1", conflictID); err != nil {
		t.Fatal(err)
	}
	// Both updates must be on sb's standby before the kill: what sb's
	// primary applied or wrote and its standby lacks is gone on sb (the
	// limitation checkConverged allows for), and the row would then differ
	// for good. Wait until sa confirmed its update to sb, then until sb's
	// standby replayed sb's primary's position after that.
	var saLSN string
	withConn(sa, la2, func(c *pgx.Conn) error { return c.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&saLSN) })
	testbed.Eventually(t, 30*time.Second, "sa's update applied on "+lb2, func() error {
		var ok bool
		err := withConn(sa, la2, func(c *pgx.Conn) error {
			return c.QueryRow(ctx, "SELECT coalesce(bool_and(confirmed_flush_lsn >= $1::pg_lsn), false) FROM pg_replication_slots WHERE slot_type = 'logical'", saLSN).Scan(&ok)
		})
		if err != nil || !ok {
			return fmt.Errorf("sa's slots not confirmed past %s (%v)", saLSN, err)
		}
		return nil
	})
	var sbLSN string
	withConn(sb, lb2, func(c *pgx.Conn) error { return c.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&sbLSN) })
	sbStandby2 := sb.standbyOf(lb2)
	testbed.Eventually(t, 30*time.Second, sbStandby2+" replayed both updates", func() error {
		var ok bool
		err := withConn(sb, sbStandby2, func(c *pgx.Conn) error {
			return c.QueryRow(ctx, "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", sbLSN).Scan(&ok)
		})
		if err != nil || !ok {
			return fmt.Errorf("not yet (%v)", err)
		}
		return nil
	})
	m.killPrimaryHost(sb, lb2)
	newB2 := sb.waitNewLeader(lb2, 60*time.Second)
	m.waitReplicating(60 * time.Second)
	var va, vb int
	testbed.Eventually(t, 30*time.Second, "the conflicting row ends the same on both groups", func() error {
		withConn(sa, sa.writableMember(t), func(c *pgx.Conn) error {
			return c.QueryRow(ctx, "SELECT v FROM spk WHERE id = $1", conflictID).Scan(&va)
		})
		withConn(sb, sb.writableMember(t), func(c *pgx.Conn) error {
			return c.QueryRow(ctx, "SELECT v FROM spk WHERE id = $1", conflictID).Scan(&vb)
		})
		if va != vb {
			return fmt.Errorf("v = %d on sa, %d on sb", va, vb)
		}
		return nil
	})
	t.Logf("conflict: row updated on sa (v=1) and sb (v=2), then sb's primary host %s killed (%s took over): v=%d on both", lb2, newB2, va)
	sb.members[lb2].Start()
	sb.waitHealthy(120 * time.Second)

	// 4. sa's standby goes silent (its walreceiver frozen: the primary still
	// lists it as streaming until wal_sender_timeout, 60s, as after a
	// network cut): Spock's walsenders must not wait for it that long.
	la3 := sa.waitHealthy(60 * time.Second)
	sby := sa.standbyOf(la3)
	var wrPID int
	if err := withConn(sa, sby, func(c *pgx.Conn) error {
		return c.QueryRow(ctx, "SELECT pid FROM pg_stat_wal_receiver").Scan(&wrPID)
	}); err != nil || wrPID == 0 {
		t.Fatalf("walreceiver of %s: %d %v", sby, wrPID, err)
	}
	syscall.Kill(wrPID, syscall.SIGSTOP)
	frozen := time.Now()
	marker2 := int64(3_000_000_003)
	if err := sa.members[la3].Exec(ctx, "INSERT INTO spk(id, origin) VALUES ($1, 'sa')", marker2); err != nil {
		syscall.Kill(wrPID, syscall.SIGCONT)
		t.Fatal(err)
	}
	testbed.Eventually(t, 30*time.Second, "a row written on sa reaches sb while sa's standby is silent", func() error {
		rows, err := rowsOf(sb, sb.writableMember(t), "sa")
		if _, ok := rows[marker2]; err != nil || !ok {
			return fmt.Errorf("not yet (%v)", err)
		}
		return nil
	})
	stalled := time.Since(frozen)
	syscall.Kill(wrPID, syscall.SIGCONT)
	t.Logf("sa's standby %s silent (walreceiver frozen): a row written on sa reached sb after %s (wal_sender_timeout is 60s)", sby, stalled.Round(10*time.Millisecond))
	if stalled > 15*time.Second {
		t.Errorf("Spock's walsenders waited %s for a silent standby", stalled.Round(time.Second))
	}
	sa.waitHealthy(60 * time.Second)

	time.Sleep(2 * time.Second)
	acked := map[string][]ack{"sa": wa.finish(), "sb": wb.finish()}
	lost := m.checkConverged(acked)
	m.logSkippedReports()
	t.Logf("asynchronous losses at the two host kills (acknowledged, absent on the publishing group's new primary): sa %d, sb %d", len(lost["sa"]), len(lost["sb"]))
	if probs := m.spockLogProblems(); len(probs) > 0 {
		t.Errorf("repeating errors in PostgreSQL logs:\n%s", strings.Join(probs, "\n"))
	}
}

// TestSpockMeshSync: synchronous mode inside the groups, kill -9 of a
// primary host under write load: no acknowledged write of either group may
// be lost, on its own group or on the other.
func TestSpockMeshSync(t *testing.T) {
	m := startSpockMesh(t, "sync")
	sa := m.groups[0]
	la, _ := sa.leader()
	var standby string
	testbed.Eventually(t, 60*time.Second, "sa lists a synchronous standby", func() error {
		if standby = sa.syncStandby(la); standby == "" {
			return errors.New("none yet")
		}
		return nil
	})
	waitLogicalSlotsReady(t, sa, standby)
	wa, wb := startSpockWriter(sa, 1_000_000_000), startSpockWriter(m.groups[1], 2_000_000_000)
	testbed.Eventually(t, 30*time.Second, "both writers acknowledged writes", func() error {
		if wa.count() < 50 || wb.count() < 50 {
			return fmt.Errorf("acked %d / %d", wa.count(), wb.count())
		}
		return nil
	})
	killed := time.Now()
	m.killPrimaryHost(sa, la)
	newA := sa.waitNewLeader(la, 60*time.Second)
	promoted := time.Since(killed)
	back := m.waitReplicating(60 * time.Second)
	time.Sleep(2 * time.Second)
	acked := map[string][]ack{"sa": wa.finish(), "sb": wb.finish()}
	lost := m.checkConverged(acked)
	m.logSkippedReports()
	t.Logf("sync: %s writable %s after the kill; subscriptions replicating %s later", newA, promoted.Round(10*time.Millisecond), back.Round(10*time.Millisecond))
	if len(lost["sa"]) > 0 || len(lost["sb"]) > 0 {
		t.Errorf("synchronous mode lost acknowledged writes: %v", lost)
	}
	sa.members[la].Start()
	sa.waitHealthy(120 * time.Second)
	if probs := m.spockLogProblems(); len(probs) > 0 {
		t.Errorf("repeating errors in PostgreSQL logs:\n%s", strings.Join(probs, "\n"))
	}
}

// TestSpockPartition: two Spock groups, every member in its own network
// namespace; the path between sa's primary and its standby is cut (packets
// dropped, so the primary still lists the standby as streaming until
// wal_sender_timeout) while both still reach Consul and the other group.
// sa's changes must keep reaching sb within seconds (the silent standby
// leaves spock.pg_standby_slot_names), nobody is promoted, and after the
// cut heals the standby catches up and everything converges.
func TestSpockPartition(t *testing.T) {
	if why := testbed.NetnsAvailable(); why != "" {
		t.Skipf("network partitions: %s", why)
	}
	bin := testbed.SpockBinDir(t)
	nw := testbed.NewNetns(t, 4)
	c := testbed.StartConsul(t, testbed.ConsulOptions{ClientAddrs: []string{nw.HostAddr}})
	_, port, err := net.SplitHostPort(c.HTTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	consulAddr := net.JoinHostPort(nw.HostAddr, port)
	netOf := map[string]*testbed.NetnsMember{}
	m := startSpockMeshOn(t, "async", c, func(string) string { return consulAddr }, func(s *testbed.AgentSpec) {
		i := int(s.Name[len(s.Name)-1] - 'a')
		if s.Group == "sb" {
			i += 2
		}
		s.Netns, s.Host = nw.Members[i], nw.Members[i].Addr
		netOf[s.Name] = nw.Members[i]
	}, bin)
	sa, sb := m.groups[0], m.groups[1]
	ctx := context.Background()
	la := sa.waitHealthy(60 * time.Second)
	sby := sa.standbyOf(la)
	waitLogicalSlotsReady(t, sa, sby)
	wa, wb := startSpockWriter(sa, 1_000_000_000), startSpockWriter(sb, 2_000_000_000)
	testbed.Eventually(t, 30*time.Second, "both writers acknowledged writes", func() error {
		if wa.count() < 50 || wb.count() < 50 {
			return fmt.Errorf("acked %d / %d", wa.count(), wb.count())
		}
		return nil
	})

	if err := nw.Block(netOf[la], netOf[sby], testbed.Drop); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	marker := int64(3_000_000_009)
	if err := sa.members[la].Exec(ctx, "INSERT INTO spk(id, origin) VALUES ($1, 'sa')", marker); err != nil {
		nw.Unblock(netOf[la], netOf[sby])
		t.Fatal(err)
	}
	testbed.Eventually(t, 30*time.Second, "a row written on sa reaches sb while sa's primary is cut off from its standby", func() error {
		rows, err := rowsOf(sb, sb.writableMember(t), "sa")
		if _, ok := rows[marker]; err != nil || !ok {
			return fmt.Errorf("not yet (%v)", err)
		}
		return nil
	})
	reached := time.Since(cut)
	time.Sleep(2 * time.Second)
	if err := nw.Unblock(netOf[la], netOf[sby]); err != nil {
		t.Fatal(err)
	}
	t.Logf("sa's primary %s cut off from its standby %s (dropped packets): a row written on sa reached sb after %s", la, sby, reached.Round(10*time.Millisecond))
	if reached > 15*time.Second {
		t.Errorf("Spock's walsenders waited %s for the unreachable standby", reached.Round(time.Second))
	}
	if l, _ := sa.leader(); l != la {
		t.Errorf("leader changed from %s to %s although the primary kept Consul", la, l)
	}
	sa.waitHealthy(90 * time.Second)
	time.Sleep(2 * time.Second)
	acked := map[string][]ack{"sa": wa.finish(), "sb": wb.finish()}
	lost := m.checkConverged(acked)
	if len(lost["sa"]) > 0 || len(lost["sb"]) > 0 {
		t.Errorf("acknowledged writes lost without a failover: %v", lost)
	}
	if probs := m.spockLogProblems(); len(probs) > 0 {
		t.Errorf("repeating errors in PostgreSQL logs:\n%s", strings.Join(probs, "\n"))
	}
}
