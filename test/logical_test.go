package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/test/testbed"
)

// multiHostDSN is a libpq connection string listing every member of g, so a
// subscription follows the group's primary (target_session_attrs).
func multiHostDSN(g *group) string {
	var hosts, ports []string
	for _, m := range g.order {
		host := "127.0.0.1"
		if h := g.members[m].Spec.Host; h != "" {
			host = h // a member in a network namespace
		}
		hosts = append(hosts, host)
		ports = append(ports, fmt.Sprint(g.members[m].PGPort))
	}
	return fmt.Sprintf("host=%s port=%s user=postgres password=''super secret'' dbname=postgres target_session_attrs=read-write connect_timeout=2",
		strings.Join(hosts, ","), strings.Join(ports, ","))
}

// ids returns the ids in table on member m.
func (g *group) ids(m, table string) (map[int]bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := g.members[m].Connect(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Close(context.Background())
	rows, err := c.Query(ctx, "SELECT id FROM "+table)
	if err != nil {
		return nil, err
	}
	out := map[int]bool{}
	for rows.Next() {
		var id int
		rows.Scan(&id)
		out[id] = true
	}
	return out, rows.Err()
}

func (g *group) writableMember(t *testing.T) string {
	t.Helper()
	var w string
	testbed.Eventually(t, 60*time.Second, "group "+g.name+" writable", func() error {
		ws := g.writable()
		if len(ws) != 1 {
			return fmt.Errorf("writable: %v", ws)
		}
		w = ws[0]
		return nil
	})
	return w
}

// TestLogicalReplicationSurvivesFailover: two groups replicate to each
// other with native publications/subscriptions (each writes its own table).
// Group A's primary host is killed while both keep writing; A's promoted
// standby must carry on both directions from pgmesh's copies of the logical
// slots: every row on A's new primary reaches B exactly once, B's rows reach
// A, and the old primary comes back with no logical walsenders.
func TestLogicalReplicationSurvivesFailover(t *testing.T) {
	for _, mode := range []string{"async", "sync"} {
		t.Run(mode, func(t *testing.T) { logicalFailover(t, mode) })
	}
}

func logicalFailover(t *testing.T, mode string) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	dcs := "replication: native"
	if mode == "sync" {
		dcs += "\nsynchronous_mode: on"
	}
	tweak := func(s *testbed.AgentSpec) { s.DCSExtra = dcs }
	ga := startGroup(t, c, "ga", 2, nil, tweak)
	gb := startGroup(t, c, "gb", 1, nil, tweak)
	ctx := context.Background()
	la := ga.waitHealthy(90 * time.Second)
	lb := gb.waitHealthy(90 * time.Second)
	var walLevel string
	conn, err := ga.members[la].Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	conn.QueryRow(ctx, "SHOW wal_level").Scan(&walLevel)
	conn.Close(ctx)
	if walLevel != "logical" {
		t.Fatalf("replication: native did not enforce wal_level=logical (got %s)", walLevel)
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
		{gb, lb, "CREATE SUBSCRIPTION gb_from_ga CONNECTION '" + multiHostDSN(ga) + "' PUBLICATION pa"},
		{ga, la, "CREATE SUBSCRIPTION ga_from_gb CONNECTION '" + multiHostDSN(gb) + "' PUBLICATION pb"},
	} {
		if err := step.g.members[step.m].Exec(ctx, step.sql); err != nil {
			t.Fatalf("%s: %v", step.sql, err)
		}
	}
	wa := ga.startWriter("ta")
	wb := gb.startWriter("tb")
	// Rows flow both ways, and A's standby holds a current copy of the slot
	// B consumes from.
	standby := ga.order[0]
	if standby == la {
		standby = ga.order[1]
	}
	testbed.Eventually(t, 60*time.Second, "rows flow both ways", func() error {
		na, err := gb.count(lb, "ta")
		if err != nil || na < 20 {
			return fmt.Errorf("ta on gb: %d %v", na, err)
		}
		nb, err := ga.count(la, "tb")
		if err != nil || nb < 20 {
			return fmt.Errorf("tb on ga: %d %v", nb, err)
		}
		return nil
	})
	waitLogicalSlotsReady(t, ga, standby)

	if mode == "sync" {
		// The state this case means to test: the standby is the listed
		// synchronous standby (a restart to load slot copies briefly takes
		// it out of pg_stat_replication).
		testbed.Eventually(t, 60*time.Second, standby+" is the listed synchronous standby", func() error {
			if s := ga.syncStandby(la); s != standby {
				return fmt.Errorf("sync standby %q", s)
			}
			return nil
		})
	}
	killed := time.Now()
	ga.members[la].KillHost()
	newA := ga.writableMember(t)
	promoted := time.Since(killed)
	// Replication A -> B is back once a row written on A's new primary
	// after the failover shows up on B.
	marker := 900000000
	if err := ga.members[newA].Exec(ctx, "INSERT INTO ta VALUES ($1)", marker); err != nil {
		t.Fatal(err)
	}
	testbed.Eventually(t, 60*time.Second, "a row written after the failover reaches B", func() error {
		ids, err := gb.ids(lb, "ta")
		if err != nil {
			return err
		}
		if !ids[marker] {
			return errors.New("not yet")
		}
		return nil
	})
	interrupted := time.Since(killed)
	time.Sleep(2 * time.Second)
	ackedA, _ := wa.finish()
	ackedB, _ := wb.finish()

	onA, _, lostOnA, extraOnB, sumA, sumB := convergeBothWays(t, ga, newA, gb, lb, ackedA, ackedB)
	if sumA != sumB {
		t.Fatalf("checksum of A's rows differs on B: %d vs %d", sumA, sumB)
	}
	// The subscriptions still run: a duplicate would have stopped them
	// with a primary-key violation.
	waitSubscriptionsRunning(t, ga, newA, gb, lb)
	t.Logf("%s: A's primary killed; %s writable after %s; A->B replication interrupted for %s; %d rows of A (%d acked writes, %d lost on A), all on B exactly once (checksum %d); %d rows of B all on A",
		mode, newA, promoted.Round(10*time.Millisecond), interrupted.Round(10*time.Millisecond), len(onA), len(ackedA), len(lostOnA), sumA, len(ackedB))
	if len(extraOnB) > 0 {
		t.Logf("%s: %d rows reached B from the old primary but not A's new primary (asynchronous loss): %v", mode, len(extraOnB), extraOnB)
	}
	if mode == "sync" && (len(lostOnA) > 0 || len(extraOnB) > 0) {
		t.Fatalf("sync mode lost acknowledged writes: lost on A %v, only on B %v", lostOnA, extraOnB)
	}

	// pgmesh status shows both subscriptions replicating between the groups.
	bin := testbed.PgmeshBinary(t)
	testbed.Eventually(t, 30*time.Second, "pgmesh status shows replication between groups", func() error {
		out, err := exec.Command(bin, "status", "--consul", c.HTTPAddr, "--cluster", "itest", "-o", "json").Output()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		var doc struct {
			Replication []struct{ From, To, Subscription, State string }
		}
		if err := json.Unmarshal(out, &doc); err != nil {
			return err
		}
		ok := 0
		for _, l := range doc.Replication {
			if (l.From == "ga" && l.To == "gb" || l.From == "gb" && l.To == "ga") && l.State == "replicating" {
				ok++
			}
		}
		if ok != 2 {
			return fmt.Errorf("replication section: %+v", doc.Replication)
		}
		return nil
	})

	// The old primary comes back as a replica with no logical walsenders.
	ga.members[la].Start()
	ga.waitHealthy(90 * time.Second)
	c2, err := ga.members[la].Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close(ctx)
	var inRecovery bool
	var walsenders int
	c2.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery)
	c2.QueryRow(ctx, "SELECT count(*) FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_type = 'logical'").Scan(&walsenders)
	if !inRecovery || walsenders != 0 {
		t.Fatalf("old primary %s: in recovery %v, logical walsenders %d", la, inRecovery, walsenders)
	}
}

// convergeBothWays waits until B has every row of A's new primary (table
// ta) and A's new primary every acknowledged row of B (table tb), then
// compares: the acknowledged rows of A missing on A (lost by the failover),
// rows of A that exist only on B, and the checksums of A's rows on A and of
// those same rows on B.
func convergeBothWays(t *testing.T, ga *group, newA string, gb *group, lb string, ackedA, ackedB []int) (onA, onB map[int]bool, lostOnA, extraOnB []int, sumA, sumB int) {
	t.Helper()
	testbed.Eventually(t, 60*time.Second, "B has every row of A's new primary and A every row of B", func() error {
		var err error
		if onA, err = ga.ids(newA, "ta"); err != nil {
			return err
		}
		if onB, err = gb.ids(lb, "ta"); err != nil {
			return err
		}
		for id := range onA {
			if !onB[id] {
				return fmt.Errorf("row %d of A missing on B", id)
			}
		}
		tbA, err := ga.ids(newA, "tb")
		if err != nil {
			return err
		}
		for _, id := range ackedB {
			if !tbA[id] {
				return fmt.Errorf("row %d of B missing on A's new primary", id)
			}
		}
		return nil
	})
	for _, id := range ackedA {
		if !onA[id] {
			lostOnA = append(lostOnA, id)
		}
	}
	for id := range onB {
		if !onA[id] {
			extraOnB = append(extraOnB, id)
		}
	}
	sort.Ints(extraOnB)
	for id := range onA {
		sumA += id
	}
	for id := range onB {
		if onA[id] {
			sumB += id
		}
	}
	return onA, onB, lostOnA, extraOnB, sumA, sumB
}

// waitSubscriptionsRunning waits until both subscriptions between the two
// groups have an apply worker (B's gb_from_ga, A's ga_from_gb).
func waitSubscriptionsRunning(t *testing.T, ga *group, newA string, gb *group, lb string) {
	t.Helper()
	ctx := context.Background()
	for _, chk := range []struct {
		g   *group
		m   string
		sub string
	}{{gb, lb, "gb_from_ga"}, {ga, newA, "ga_from_gb"}} {
		testbed.Eventually(t, 30*time.Second, "subscription "+chk.sub+" running", func() error {
			c, err := chk.g.members[chk.m].Connect(ctx)
			if err != nil {
				return err
			}
			defer c.Close(ctx)
			var running bool
			if err := c.QueryRow(ctx, "SELECT count(*) > 0 FROM pg_stat_subscription WHERE subname = $1 AND pid IS NOT NULL", chk.sub).Scan(&running); err != nil {
				return err
			}
			if !running {
				return errors.New("no apply worker")
			}
			return nil
		})
	}
}
