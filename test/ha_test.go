package test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/test/testbed"
)

// TestGroupLifecycle runs one 3-member group through the life an operator
// cares about: bootstrap from nothing, streaming replication, an unplanned
// failover after the primary's host dies, and the old primary rejoining.
func TestGroupLifecycle(t *testing.T) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	g := startGroup(t, c, "g1", 3, nil, nil)
	ctx := context.Background()

	start := time.Now()
	leader := g.waitHealthy(90 * time.Second)
	t.Logf("bootstrapped: leader %s, replicas streaming after %s", leader, time.Since(start).Round(100*time.Millisecond))

	if err := g.members[leader].Exec(ctx, "CREATE TABLE t(id int primary key, note text)"); err != nil {
		t.Fatal(err)
	}
	if err := g.members[leader].Exec(ctx, "INSERT INTO t VALUES (1, 'before failover')"); err != nil {
		t.Fatal(err)
	}
	for _, m := range g.order {
		g.waitRows(m, "t", 1, 20*time.Second)
	}
	if w := g.writable(); len(w) != 1 || w[0] != leader {
		t.Fatalf("writable members %v, want only %s", w, leader)
	}

	// Unplanned failover: the primary's host dies (agent, watchdog and
	// postmaster SIGKILLed together).
	old := leader
	killed := time.Now()
	g.members[old].KillHost()
	var newLeader string
	testbed.Eventually(t, 60*time.Second, "a replica becomes writable", func() error {
		for _, m := range g.order {
			if m == old {
				continue
			}
			if err := g.members[m].Exec(ctx, "INSERT INTO t VALUES ($1, 'after failover')", 1000+int(time.Since(killed)/time.Millisecond)); err == nil {
				newLeader = m
				return nil
			}
		}
		return fmt.Errorf("no writable replica yet")
	})
	failover := time.Since(killed)
	t.Logf("kill -9 of %s's host -> first write on %s after %s (ttl %s)", old, newLeader, failover.Round(10*time.Millisecond), 4*time.Second)
	if failover > 20*time.Second {
		t.Errorf("failover took %s, more than 20s with ttl 4s", failover)
	}
	g.waitHealthy(60*time.Second, old)

	// The old member comes back: it must rejoin as a replica of the new
	// timeline (pg_rewind) and receive new rows.
	g.members[old].Start()
	if err := g.members[newLeader].Exec(ctx, "INSERT INTO t VALUES (2, 'while rejoining')"); err != nil {
		t.Fatal(err)
	}
	g.waitHealthy(90 * time.Second)
	if l, _ := g.leader(); l != newLeader {
		t.Fatalf("leader changed to %s when the old primary came back", l)
	}
	n, err := g.count(newLeader, "t")
	if err != nil {
		t.Fatal(err)
	}
	g.waitRows(old, "t", n, 30*time.Second)
	code, body, _ := g.members[old].APIStatus("/patroni")
	if code != 200 || body["role"] != "replica" {
		t.Fatalf("old primary: /patroni %d role %v", code, body["role"])
	}
	if tl, _ := body["timeline"].(float64); tl < 2 {
		t.Fatalf("old primary on timeline %v, want the new one (>= 2)", body["timeline"])
	}
}
