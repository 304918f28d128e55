package test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/pg"
	"github.com/pgmesh/pgmesh/test/testbed"
)

// querySetting reads one value from member m.
func (g *group) queryString(m, sql string, args ...any) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := g.members[m].Connect(ctx)
	if err != nil {
		return "", err
	}
	defer c.Close(context.Background())
	var s string
	err = c.QueryRow(ctx, sql, args...).Scan(&s)
	return s, err
}

// slotFlags returns "synced/failover/temporary/invalidation" of a logical
// slot on member m.
func (g *group) slotFlags(m, slot string) (string, error) {
	return g.queryString(m, `SELECT format('synced=%s failover=%s temporary=%s invalid=%s', synced, failover, temporary, coalesce(invalidation_reason, ''))
		FROM pg_replication_slots WHERE slot_name = $1`, slot)
}

// waitRowOn inserts id into table on member src of g and waits until it
// shows up on member dst of h; it returns how long that took.
func waitRowOn(t *testing.T, g *group, src string, h *group, dst, table string, id int, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	if err := g.members[src].Exec(context.Background(), "INSERT INTO "+table+" VALUES ($1)", id); err != nil {
		t.Fatalf("insert marker %d on %s: %v", id, src, err)
	}
	testbed.Eventually(t, timeout, fmt.Sprintf("row %d of %s reaches %s", id, src, dst), func() error {
		ids, err := h.ids(dst, table)
		if err != nil {
			return err
		}
		if !ids[id] {
			return errors.New("not yet")
		}
		return nil
	})
	return time.Since(start)
}

// TestLogicalFailoverSlotsPG17 is TestLogicalReplicationSurvivesFailover on
// PostgreSQL 17 with native failover slots: subscriptions are created WITH
// (failover = true), A's standby gets the slot from its slot sync worker
// (no pgmesh copies), A's primary holds logical walsenders back with
// synchronized_standby_slots = the standby's physical slot — dropped when
// that standby dies — and after A's primary host is killed both directions
// continue from the promoted standby with every row exactly once.
// In synchronous mode the gated standby is the one in the sync key.
func TestLogicalFailoverSlotsPG17(t *testing.T) {
	bin17 := testbed.Postgres17BinDir(t)
	for _, mode := range []string{"async", "sync"} {
		t.Run(mode, func(t *testing.T) { logicalFailover17(t, bin17, mode) })
	}
}

func logicalFailover17(t *testing.T, bin17, mode string) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	dcs := "replication: native"
	if mode == "sync" {
		dcs += "\nsynchronous_mode: on"
	}
	tweak := func(s *testbed.AgentSpec) { s.DCSExtra = dcs; s.BinDir = bin17 }
	ga := startGroup(t, c, "p17a", 2, nil, tweak)
	gb := startGroup(t, c, "p17b", 1, nil, tweak)
	ctx := context.Background()
	la := ga.waitHealthy(120 * time.Second)
	lb := gb.waitHealthy(120 * time.Second)
	standby := ga.order[0]
	if standby == la {
		standby = ga.order[1]
	}
	version, err := ga.queryString(la, "SHOW server_version_num")
	if err != nil || version < "170000" {
		t.Fatalf("group A runs server_version_num %q (%v), want PostgreSQL 17+", version, err)
	}
	for _, step := range []struct {
		g   *group
		m   string
		sql string
	}{
		{ga, la, "CREATE TABLE ta(id int primary key)"},
		{ga, la, "CREATE TABLE tb(id int primary key)"},
		{ga, la, "CREATE PUBLICATION pa FOR TABLE ta"},
		{gb, lb, "CREATE TABLE ta(id int primary key)"},
		{gb, lb, "CREATE TABLE tb(id int primary key)"},
		{gb, lb, "CREATE PUBLICATION pb FOR TABLE tb"},
		{gb, lb, "CREATE SUBSCRIPTION gb_from_ga CONNECTION '" + multiHostDSN(ga) + "' PUBLICATION pa WITH (failover = true)"},
		{ga, la, "CREATE SUBSCRIPTION ga_from_gb CONNECTION '" + multiHostDSN(gb) + "' PUBLICATION pb WITH (failover = true)"},
	} {
		if err := step.g.members[step.m].Exec(ctx, step.sql); err != nil {
			t.Fatalf("%s: %v", step.sql, err)
		}
	}
	wa := ga.startWriter("ta")
	wb := gb.startWriter("tb")
	testbed.Eventually(t, 60*time.Second, "rows flow both ways", func() error {
		na, err := gb.count(lb, "ta")
		if err != nil || na < 20 {
			return fmt.Errorf("ta on B: %d %v", na, err)
		}
		nb, err := ga.count(la, "tb")
		if err != nil || nb < 20 {
			return fmt.Errorf("tb on A: %d %v", nb, err)
		}
		return nil
	})

	// The native mechanism is in place on A.
	standbySlot := pg.SlotName(standby)
	checkGating := func(primary, replica, replicaSlot string) {
		t.Helper()
		testbed.Eventually(t, 60*time.Second, "synced failover slot and standby-slot gating on "+primary+"/"+replica, func() error {
			flags, err := ga.slotFlags(replica, "gb_from_ga")
			if err != nil {
				return fmt.Errorf("slot gb_from_ga on %s: %v", replica, err)
			}
			if flags != "synced=t failover=t temporary=f invalid=" {
				return fmt.Errorf("slot gb_from_ga on %s: %s", replica, flags)
			}
			if v, err := ga.queryString(primary, "SHOW synchronized_standby_slots"); err != nil || v != replicaSlot {
				return fmt.Errorf("synchronized_standby_slots on primary %s = %q (%v), want %q", primary, v, err, replicaSlot)
			}
			if v, err := ga.queryString(replica, "SHOW synchronized_standby_slots"); err != nil || v != "" {
				return fmt.Errorf("synchronized_standby_slots on replica %s = %q (%v), want ''", replica, v, err)
			}
			if v, err := ga.queryString(replica, "SHOW sync_replication_slots"); err != nil || v != "on" {
				return fmt.Errorf("sync_replication_slots on replica %s = %q (%v)", replica, v, err)
			}
			v, err := ga.kv.ReadGroup(ctx, ga.name)
			if err != nil {
				return err
			}
			if v.Status == nil || v.Status.LogicalSlots["gb_from_ga"].ConfirmedFlush == 0 {
				return errors.New("leader does not publish failover slot gb_from_ga")
			}
			if m := v.Members[replica]; m == nil || !m.LogicalSlotsReady {
				return fmt.Errorf("%s does not report logical_slots_ready", replica)
			}
			return nil
		})
	}
	checkGating(la, standby, standbySlot)
	if n, err := ga.queryString(standby, "SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical' AND NOT synced"); err != nil || n != "0" {
		t.Fatalf("A's standby has %s unsynced logical slots (%v): pgmesh must not copy slots on PostgreSQL 17", n, err)
	}

	// The gating is real: while the standby's walreceiver is frozen (it
	// still counts as streaming), a row committed on A does not reach B;
	// it does once the standby has it.
	pid, err := ga.queryString(standby, "SELECT pid::text FROM pg_stat_wal_receiver")
	if err != nil {
		t.Fatalf("walreceiver of %s: %v", standby, err)
	}
	var wrPID int
	fmt.Sscan(pid, &wrPID)
	if err := syscall.Kill(wrPID, syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP walreceiver %d: %v", wrPID, err)
	}
	frozen := 800000002
	// synchronous_commit = local: in synchronous mode the commit would
	// otherwise wait for the frozen standby itself.
	if err := ga.members[la].Exec(ctx, "DO $$ BEGIN SET LOCAL synchronous_commit = local; INSERT INTO ta VALUES (800000002); END $$"); err != nil {
		syscall.Kill(wrPID, syscall.SIGCONT)
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // a negative check: the row must not arrive meanwhile
	heldBack, err := gb.ids(lb, "ta")
	syscall.Kill(wrPID, syscall.SIGCONT)
	if err != nil {
		t.Fatal(err)
	}
	if heldBack[frozen] {
		t.Fatalf("row %d reached B while A's standby %s had not received it: synchronized_standby_slots does not gate", frozen, standby)
	}
	released := time.Now()
	testbed.Eventually(t, 30*time.Second, "the held-back row reaches B once the standby has it", func() error {
		ids, err := gb.ids(lb, "ta")
		if err != nil {
			return err
		}
		if !ids[frozen] {
			return errors.New("not yet")
		}
		return nil
	})
	t.Logf("%s: with A's standby walreceiver frozen for 3s a row of A was held back from B; it arrived %s after the standby resumed",
		mode, time.Since(released).Round(10*time.Millisecond))

	// A logical slot without failover = true is reported, not published for
	// the standbys' readiness, and left alone (pgmesh does not own it).
	if err := ga.members[la].Exec(ctx, "SELECT pg_create_logical_replication_slot('nf_probe', 'pgoutput')"); err != nil {
		t.Fatal(err)
	}
	testbed.Eventually(t, 30*time.Second, "the primary reports the slot without failover", func() error {
		v, err := ga.kv.ReadGroup(ctx, ga.name)
		if err != nil {
			return err
		}
		if m := v.Members[la]; m == nil || !strings.Contains(m.Message, "nf_probe") {
			return fmt.Errorf("member key message of %s: %+v", la, m)
		}
		if _, published := v.Status.LogicalSlots["nf_probe"]; published {
			return errors.New("a slot without failover is published for the standbys' readiness")
		}
		if m := v.Members[standby]; m == nil || !m.LogicalSlotsReady {
			return fmt.Errorf("%s lost logical_slots_ready over a slot that is never synced", standby)
		}
		return nil
	})
	if err := ga.members[la].Exec(ctx, "SELECT pg_drop_replication_slot('nf_probe')"); err != nil {
		t.Fatalf("slot nf_probe vanished or could not be dropped by the test: %v", err)
	}

	// A dead standby must stop holding A's logical walsenders back.
	standbyKilled := time.Now()
	ga.members[standby].KillHost()
	testbed.Eventually(t, 30*time.Second, "A's primary drops the dead standby from synchronized_standby_slots", func() error {
		v, err := ga.queryString(la, "SHOW synchronized_standby_slots")
		if err != nil || v != "" {
			return fmt.Errorf("synchronized_standby_slots = %q (%v)", v, err)
		}
		return nil
	})
	ungated := time.Since(standbyKilled)
	rowWithoutStandby := waitRowOn(t, ga, la, gb, lb, "ta", 800000001, 30*time.Second)
	ga.members[standby].Start()
	checkGating(la, standby, standbySlot)
	t.Logf("%s: standby %s killed: dropped from synchronized_standby_slots after %s; a row of A reached B %s after being written without the standby; back and synced after %s",
		mode, standby, ungated.Round(10*time.Millisecond), rowWithoutStandby.Round(10*time.Millisecond), time.Since(standbyKilled).Round(10*time.Millisecond))

	killed := time.Now()
	ga.members[la].KillHost()
	newA := ga.writableMember(t)
	promoted := time.Since(killed)
	marker := 900000000
	interruptedAfterPromotion := waitRowOn(t, ga, newA, gb, lb, "ta", marker, 60*time.Second)
	interrupted := time.Since(killed)
	time.Sleep(2 * time.Second)
	ackedA, _ := wa.finish()
	ackedB, _ := wb.finish()

	onA, onB, lostOnA, extraOnB, sumA, sumB := convergeBothWays(t, ga, newA, gb, lb, ackedA, ackedB)
	if sumA != sumB || len(onA) != len(onB)-len(extraOnB) {
		t.Fatalf("A's rows on B differ: %d rows checksum %d on A, %d rows checksum %d on B", len(onA), sumA, len(onB)-len(extraOnB), sumB)
	}
	// synchronized_standby_slots held A's walsenders back until the standby
	// had the WAL, so nothing reached B that the promoted standby lacks.
	if len(extraOnB) > 0 {
		t.Fatalf("%d rows reached B from the old primary but are not on A's promoted standby: %v", len(extraOnB), extraOnB)
	}
	waitSubscriptionsRunning(t, ga, newA, gb, lb)
	if flags, err := ga.slotFlags(newA, "gb_from_ga"); err != nil {
		t.Fatalf("slot gb_from_ga on the promoted %s: %v", newA, err)
	} else {
		t.Logf("slot gb_from_ga on the promoted %s: %s", newA, flags)
	}
	t.Logf("%s, PostgreSQL %s: A's primary killed; %s writable after %s; A->B replication interrupted for %s (marker written on the new primary reached B in %s); %d rows of A (%d acked writes, %d lost on A), all on B exactly once (checksum %d); %d rows of B all on A",
		mode, version, newA, promoted.Round(10*time.Millisecond), interrupted.Round(10*time.Millisecond), interruptedAfterPromotion.Round(10*time.Millisecond),
		len(onA), len(ackedA), len(lostOnA), sumA, len(ackedB))

	// The old primary comes back (crash recovery + pg_rewind with the 17
	// tools) as a replica with no logical walsenders, and the new primary
	// gates on it.
	ga.members[la].Start()
	ga.waitHealthy(120 * time.Second)
	inRecovery, err := ga.queryString(la, "SELECT pg_is_in_recovery()::text")
	if err != nil || inRecovery != "true" {
		t.Fatalf("old primary %s: in recovery %q (%v)", la, inRecovery, err)
	}
	walsenders, _ := ga.queryString(la, "SELECT count(*) FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_type = 'logical'")
	if walsenders != "0" {
		t.Fatalf("old primary %s has %s logical walsenders", la, walsenders)
	}
	checkGating(newA, la, pg.SlotName(la))
	// How the old primary came back, with the PostgreSQL 17 client tools.
	oldLog := ga.members[la].Log()
	if strings.Contains(oldLog, "pg_rewind failed") {
		t.Fatalf("pg_rewind (PostgreSQL 17 kit) failed on the old primary %s and it was re-cloned", la)
	}
	path := "followed without rewind"
	for _, msg := range []string{"rewound data directory", "rewind not required"} {
		if strings.Contains(oldLog, `"msg":"`+msg+`"`) {
			path = msg
		}
	}
	t.Logf("%s: old primary %s rejoined: crash recovery %v, %s", mode, la, strings.Contains(oldLog, "completed crash recovery"), path)
}
