package test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/test/testbed"
)

// TestPrimaryThatCannotStartHandsOver: a leader whose PostgreSQL crashed
// and will not come back (here: a setting PostgreSQL refuses at start-up)
// must not sit on the lock forever. After primary_start_timeout it releases
// the lock and a streaming replica takes over.
func TestPrimaryThatCannotStartHandsOver(t *testing.T) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	const timeout = 3 * time.Second
	g := startGroup(t, c, "g8", 2, nil, func(s *testbed.AgentSpec) { s.DCSExtra = "primary_start_timeout: 3s" })
	leader := g.waitHealthy(90 * time.Second)
	a := g.members[leader]
	ctx := context.Background()
	if err := a.Exec(ctx, "CREATE TABLE t(id int primary key); INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	var replica string
	for _, m := range g.order {
		if m != leader {
			replica = m
		}
	}
	g.waitRows(replica, "t", 1, 30*time.Second)

	// PostgreSQL refuses to start with an unknown setting in
	// postgresql.auto.conf (pgmesh does not manage that file).
	f, err := os.OpenFile(filepath.Join(a.DataDir, "postgresql.auto.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("shared_buffers = 'not a size'\n"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	pid := a.PostmasterPID()
	if pid <= 0 {
		t.Fatalf("no postmaster pid for %s", leader)
	}
	crashed := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	next := g.waitNewLeader(leader, 60*time.Second)
	took := time.Since(crashed)
	t.Logf("primary %s's PostgreSQL crashed and cannot start: %s writable after %s (primary_start_timeout %s)", leader, next, took.Round(10*time.Millisecond), timeout)
	if took < timeout {
		t.Errorf("handed over after %s, before primary_start_timeout %s", took, timeout)
	}
	if log := a.Log(); !strings.Contains(log, "primary_start_timeout") {
		t.Errorf("the old leader's log does not say why it released the lock")
	}
	if n, err := g.count(next, "t"); err != nil || n != 1 {
		t.Errorf("new primary %s has %d rows (err %v), want the 1 acknowledged row", next, n, err)
	}
	if err := g.members[next].Exec(ctx, "INSERT INTO t VALUES (2)"); err != nil {
		t.Errorf("write on the new primary: %v", err)
	}
	if ok, _ := a.IsWritable(ctx); ok {
		t.Errorf("old leader %s is writable", leader)
	}
}
