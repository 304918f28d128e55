package test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/pg"
	"github.com/pgmesh/pgmesh/test/testbed"
)

// TestSpockSkippedChangesReported: Spock confirms a change it applied from
// another group once the subscriber's primary flushed it, not once that
// primary's standby has it. Here sb's standby receives nothing (sb's
// walsender to it is stopped) while sb's primary applies 20 rows of sa and
// confirms them; then sb's primary host dies. The promoted standby lacks
// the rows and sa never sends them again (a Spock limitation pgmesh cannot
// prevent). What pgmesh must do is say so: the new leader's log, sb's
// history and pgmesh status name the range of sa's WAL that sb lacks.
func TestSpockSkippedChangesReported(t *testing.T) {
	if os.Getenv("PGMESH_TEST_SKIPPED_CHANGES") == "" {
		// Out of the default suite until it has passed enough runs: two
		// of twelve recorded no range, most likely because the wait below
		// accepted a status published before the rows (fixed since).
		t.Skip("set PGMESH_TEST_SKIPPED_CHANGES=1 to run it (see README, Known limitation)")
	}
	m := startSpockMesh(t, "async")
	sa, sb := m.groups[0], m.groups[1]
	ctx := context.Background()
	la, _ := sa.leader()
	lb, _ := sb.leader()
	sby := sb.standbyOf(lb)
	// The walsender streaming WAL to the standby: the one holding its
	// physical slot (pg_stat_replication also lists other walsender
	// connections under the standby's name, e.g. Spock's failover-slot
	// worker's; stopping one of those left the standby streaming in a CI
	// run).
	physSlot := "pgmesh_" + strings.ReplaceAll(sby, "-", "_")
	var sender int
	testbed.Eventually(t, 30*time.Second, sby+" streams through its slot "+physSlot, func() error {
		return withConn(sb, lb, func(c *pgx.Conn) error {
			return c.QueryRow(ctx, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active", physSlot).Scan(&sender)
		})
	})
	syscall.Kill(sender, syscall.SIGSTOP)
	defer syscall.Kill(sender, syscall.SIGCONT) // harmless once the host is gone
	var ids []int64
	for i := int64(0); i < 20; i++ {
		id := 5_000_000_000 + i
		if err := sa.members[la].Exec(ctx, "INSERT INTO spk(id, origin) VALUES ($1, 'sa')", id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	var saWAL string
	if err := withConn(sa, la, func(c *pgx.Conn) error {
		return c.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&saWAL)
	}); err != nil {
		t.Fatal(err)
	}
	after, _ := pg.ParseLSN(saWAL)
	slot := "spk_postgres_sa_" + subName(sb, sa)
	// Applied on sb's primary, confirmed to sa, and published by sb's
	// leader (pgmesh compares the old leader's last published positions:
	// what it applied after its last status write goes unnoticed).
	testbed.Eventually(t, 30*time.Second, "sa's rows applied on "+lb+", confirmed to sa and published", func() error {
		rows, err := rowsOf(sb, lb, "sa")
		if err != nil {
			return err
		}
		for _, id := range ids {
			if _, ok := rows[id]; !ok {
				return fmt.Errorf("row %d not applied yet", id)
			}
		}
		ga, err := sa.kv.ReadGroup(ctx, "sa")
		if err != nil || ga.Status == nil || ga.Status.LogicalSlots[slot].ConfirmedFlush < uint64(after) {
			return fmt.Errorf("sa's slot %s not confirmed past %s yet (%v)", slot, saWAL, err)
		}
		// Not merely a nonzero origin: Spock's initial table sync already
		// set one, and a status published before the rows left nothing
		// to report (the two failed runs before this check).
		var applied string
		if err := withConn(sb, lb, func(c *pgx.Conn) error {
			return c.QueryRow(ctx, "SELECT remote_lsn::text FROM pg_replication_origin_status WHERE external_id = $1", slot).Scan(&applied)
		}); err != nil {
			return err
		}
		want, _ := pg.ParseLSN(applied)
		gb, err := sb.kv.ReadGroup(ctx, "sb")
		if err != nil || gb.Status == nil || gb.Status.Origins[slot] < uint64(want) {
			return fmt.Errorf("sb's leader has not published its origin %s at %s yet (%v)", slot, applied, err)
		}
		return nil
	})
	var behind bool
	if err := withConn(sb, sby, func(c *pgx.Conn) error {
		var primaryLSN string
		if err := withConn(sb, lb, func(pc *pgx.Conn) error {
			return pc.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&primaryLSN)
		}); err != nil {
			return err
		}
		return c.QueryRow(ctx, "SELECT coalesce(pg_last_wal_receive_lsn() < $1::pg_lsn, true)", primaryLSN).Scan(&behind)
	}); err != nil || !behind {
		t.Fatalf("%s is not behind %s although its walsender is stopped (%v): the setup does not reproduce the gap", sby, lb, err)
	}
	m.killPrimaryHost(sb, lb)
	newB := sb.waitNewLeader(lb, 60*time.Second)
	m.waitReplicating(60 * time.Second)

	var entry consulkv.HistoryEntry
	testbed.Eventually(t, 30*time.Second, "sb's history records the skipped range", func() error {
		g, err := sb.kv.ReadGroup(ctx, "sb")
		if err != nil || g.History == nil || len(g.History.Entries) == 0 {
			return fmt.Errorf("no history yet (%v)", err)
		}
		entry = g.History.Entries[len(g.History.Entries)-1]
		if entry.NewLeader != newB || len(entry.SkippedChanges) != 1 {
			return fmt.Errorf("latest promotion %+v", entry)
		}
		return nil
	})
	sk := entry.SkippedChanges[0]
	if sk.Publisher != "sa" || sk.Slot != slot || sk.From >= sk.To || sk.To > uint64(after)+1<<20 {
		t.Errorf("skipped range %+v, want publisher sa, slot %s, a range ending near %s", sk, slot, saWAL)
	}
	missing := 0
	rows, err := rowsOf(sb, newB, "sa")
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if _, ok := rows[id]; !ok {
			missing++
		}
	}
	if missing == 0 {
		t.Errorf("the promoted standby has every row: the setup no longer reproduces the gap it reports")
	}
	if log := sb.members[newB].Log(); !strings.Contains(log, "this promotion skipped changes from another group") {
		t.Errorf("%s's agent log does not report the skipped changes", newB)
	}
	status := newPgmeshCLI(t, m.c.HTTPAddr, "itest").run("status")
	if !strings.Contains(status.stdout, "!! Group sb lacks changes of group sa (slot "+slot) {
		t.Errorf("pgmesh status does not report the skipped changes:\n%s", status)
	}
	t.Logf("%d of %d rows of sa missing on sb's promoted standby %s; reported: %s's WAL %s to %s (%d bytes)",
		missing, len(ids), newB, sk.Publisher, pg.LSN(sk.From), pg.LSN(sk.To), sk.To-sk.From)

	// The old primary rejoins as a standby, but Spock's failover-slot worker
	// gives it current copies of the slot sa consumes from only after the
	// primary's slot passes the stale copy it kept (and the worker's own
	// restart, 60 s): a switchover now is refused at once, saying why, and
	// the group keeps its leader (seen before: the former leader waited for
	// the candidate and the candidate deferred to the former leader's slot
	// copies, leaving the group without a leader).
	sb.members[lb].Start()
	sb.waitHealthy(120 * time.Second)
	p := newPgmeshCLI(t, m.c.HTTPAddr, "itest")
	g, err := sb.kv.ReadGroup(ctx, "sb")
	if err != nil {
		t.Fatal(err)
	}
	if mk := g.Members[lb]; mk != nil && mk.LogicalSlotsReady {
		t.Logf("%s already has current slot copies: no refused switchover to check", lb)
		return
	}
	if r := p.run("switchover", "--group", "sb", "--force"); r.code == 0 {
		// lb got its copies between the read above and the request.
		t.Logf("%s got current slot copies meanwhile and took over: %s", lb, strings.TrimSpace(r.stdout))
		return
	} else if !strings.Contains(r.stdout+r.stderr, "no candidate has current copies of the group's logical slots yet") {
		t.Fatalf("switchover refused without naming the slot copies:\n%s", r)
	}
	if l, _ := sb.leader(); l != newB {
		t.Errorf("leader %q after the refused switchover, want %s", l, newB)
	}
	if err := sb.members[newB].Exec(ctx, "INSERT INTO spk(id, origin) VALUES (6000000000, 'sb')"); err != nil {
		t.Errorf("sb's primary takes no writes after the refused switchover: %v", err)
	}
}
