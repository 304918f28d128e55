package test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/test/testbed"
)

// TestSyncModeNoAcknowledgedWriteLost: with synchronous_mode on, the leader
// keeps one standby synchronous and listed in the sync key; killing the
// primary's host under write load promotes that standby and every
// acknowledged write survives.
func TestSyncModeNoAcknowledgedWriteLost(t *testing.T) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	g := startGroup(t, c, "g6", 3, nil, func(s *testbed.AgentSpec) {
		s.DCSExtra = "synchronous_mode: on\nsynchronous_node_count: 1"
	})
	ctx := context.Background()
	leader := g.waitHealthy(90 * time.Second)
	var syncStandby string
	testbed.Eventually(t, 30*time.Second, "a synchronous standby is listed", func() error {
		v, err := g.kv.ReadGroup(ctx, "g6")
		if err != nil {
			return err
		}
		if v.Sync == nil || v.Sync.Leader != leader || len(v.Sync.SyncStandbys) != 1 {
			return fmt.Errorf("sync key %+v", v.Sync)
		}
		syncStandby = v.Sync.SyncStandbys[0]
		return nil
	})
	conn, err := g.members[leader].Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ssn, syncState string
	conn.QueryRow(ctx, "SHOW synchronous_standby_names").Scan(&ssn)
	conn.QueryRow(ctx, "SELECT sync_state FROM pg_stat_replication WHERE application_name = $1", syncStandby).Scan(&syncState)
	conn.Close(ctx)
	if syncState != "sync" {
		t.Fatalf("sync key lists %s but PostgreSQL says %q (synchronous_standby_names %q)", syncStandby, syncState, ssn)
	}
	t.Logf("leader %s, synchronous standby %s, synchronous_standby_names = %s", leader, syncStandby, ssn)

	if err := g.members[leader].Exec(ctx, "CREATE TABLE s(id int primary key)"); err != nil {
		t.Fatal(err)
	}
	w := g.startWriter("s")
	time.Sleep(2 * time.Second)
	killed := time.Now()
	g.members[leader].KillHost()
	next := g.waitNewLeader(leader, 60*time.Second)
	took := time.Since(killed)
	time.Sleep(time.Second)
	acked, gap := w.finish()
	if next != syncStandby {
		t.Fatalf("promoted %s, but only the synchronous standby %s may be promoted", next, syncStandby)
	}
	miss, err := g.missing(next, "s", acked)
	if err != nil {
		t.Fatal(err)
	}
	if len(miss) > 0 {
		t.Fatalf("%d acknowledged writes lost in sync mode: %v", len(miss), miss)
	}
	t.Logf("kill -9 of %s under load: %s promoted after %s; %d acknowledged writes, none lost; longest write gap %s", leader, next, took.Round(10*time.Millisecond), len(acked), gap.Round(10*time.Millisecond))
	// The remaining standby becomes the new synchronous one.
	testbed.Eventually(t, 30*time.Second, "new leader lists a synchronous standby", func() error {
		v, err := g.kv.ReadGroup(ctx, "g6")
		if err != nil {
			return err
		}
		if v.Sync == nil || v.Sync.Leader != next || len(v.Sync.SyncStandbys) != 1 {
			return fmt.Errorf("sync key %+v", v.Sync)
		}
		return nil
	})
}
