package test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/pgmesh/pgmesh/test/testbed"
)

// TestInitializeKey: the group's initialize key (its system id) is the
// leader's to keep. Deleted or overwritten with garbage, the leader writes
// it back with its PostgreSQL's system id within a few loops; and a member
// that joins with an empty data directory while the key is gone clones from
// the leader instead of racing to bootstrap a second, foreign data
// directory (seen: "won the initialize race" → initdb → "could not take the
// leader lock after initdb" → data dir removed → again, every ~3s, for ever).
func TestInitializeKey(t *testing.T) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	g := startGroup(t, c, "ini", 1, nil, nil)
	leader := g.waitHealthy(90 * time.Second)
	ctx := context.Background()
	kv := c.Client().KV()
	key := g.kv.InitializeKey(g.name)

	sysid := systemID(t, g, leader)
	t.Logf("leader %s, system id %s", leader, sysid)
	waitInitialize(t, g, sysid, 20*time.Second)

	// The key deleted, overwritten with garbage, or left as an unfilled
	// bootstrap claim: the leader restores each within a few loops
	// (loop_wait 1s) and says why, once.
	for _, tc := range []struct {
		what, reason string
		damage       func() error
	}{
		{"deleted", "the initialize key is missing", func() error { _, err := kv.Delete(key, nil); return err }},
		{"garbage", "the initialize key is unreadable", func() error {
			_, err := kv.Put(&api.KVPair{Key: key, Value: []byte("{not json")}, nil)
			return err
		}},
		{"claim without system id", "the initialize key holds no system id", func() error {
			_, err := kv.Put(&api.KVPair{Key: key, Value: []byte(`{"version":1,"member":"someone"}`)}, nil)
			return err
		}},
	} {
		before := strings.Count(g.members[leader].Log(), tc.reason)
		damaged := time.Now()
		if err := tc.damage(); err != nil {
			t.Fatal(err)
		}
		took := waitInitialize(t, g, sysid, 15*time.Second)
		t.Logf("initialize key %s: restored with system id %s after %s", tc.what, sysid, took.Round(10*time.Millisecond))
		if took > 5*time.Second {
			t.Errorf("initialize key %s: restored after %s, want within a few loops (loop_wait 1s)", tc.what, took)
		}
		testbed.Eventually(t, 5*time.Second, "the leader logs why it restored the key", func() error {
			if n := strings.Count(g.members[leader].Log(), tc.reason); n <= before {
				return fmt.Errorf("no new %q in the leader's log since %s", tc.reason, damaged.Format("15:04:05.000"))
			}
			return nil
		})
	}

	// A second member joins with an empty data dir while the key keeps
	// vanishing (deleted every 20ms, faster than the leader's loop restores
	// it): it must clone from the leader and stream, and never run initdb.
	spec := testbed.AgentSpec{Cluster: "itest", Group: g.name, Name: g.name + "-b", ConsulAddr: c.HTTPAddr}
	b := testbed.NewAgent(t, spec)
	g.members[spec.Name], g.order = b, append(g.order, spec.Name)
	var deletes, absentSeen atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if p, _, err := kv.Get(key, nil); err == nil && p == nil {
				absentSeen.Add(1)
			}
			if _, err := kv.Delete(key, nil); err == nil {
				deletes.Add(1)
			}
		}
	}()
	joined := time.Now()
	b.Start()
	g.waitHealthy(90 * time.Second)
	close(stop)
	<-done
	t.Logf("%s cloned and streams after %s; the key was deleted %d times meanwhile (seen absent %d times)",
		spec.Name, time.Since(joined).Round(100*time.Millisecond), deletes.Load(), absentSeen.Load())
	blog := b.Log()
	for _, never := range []string{"won the initialize race", "racing to bootstrap", "bootstrapped the group", "could not take the leader lock after initdb"} {
		if strings.Contains(blog, never) {
			t.Fatalf("%s logged %q while joining a group with a leader:\n%s", spec.Name, never, blog)
		}
	}
	if !strings.Contains(blog, "cloning from leader "+leader) {
		t.Fatalf("%s did not clone from %s:\n%s", spec.Name, leader, blog)
	}
	if got := systemID(t, g, spec.Name); got != sysid {
		t.Fatalf("%s has system id %s, the leader %s", spec.Name, got, sysid)
	}
	if err := g.members[leader].Exec(ctx, "CREATE TABLE joined(id int)"); err != nil {
		t.Fatal(err)
	}
	if err := g.members[leader].Exec(ctx, "INSERT INTO joined VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	g.waitRows(spec.Name, "joined", 1, 20*time.Second)

	// Left alone again, the key comes back and the status shows the
	// group's system id.
	took := waitInitialize(t, g, sysid, 15*time.Second)
	t.Logf("after the deletions stopped the key was back within %s", took.Round(10*time.Millisecond))
	p := newPgmeshCLI(t, c.HTTPAddr, "itest")
	var out string
	testbed.Eventually(t, 20*time.Second, "pgmesh status shows the group's system id and both members", func() error {
		r := p.run("status")
		if r.code != 0 {
			return fmt.Errorf("%s", r)
		}
		out = r.stdout
		if strings.Contains(out, "not initialized") {
			return fmt.Errorf("status says not initialized:\n%s", out)
		}
		if !strings.Contains(out, "Group: "+g.name+" (system id "+sysid+")") {
			return fmt.Errorf("status lacks the system id %s:\n%s", sysid, out)
		}
		if row := tableRow(out, spec.Name); len(row) < 4 || row[2] != "Replica" || row[3] != "streaming" {
			return fmt.Errorf("%s row %v:\n%s", spec.Name, row, out)
		}
		return nil
	})
	t.Logf("pgmesh status:\n%s", out)
}

// systemID asks member m's PostgreSQL for its system identifier.
func systemID(t *testing.T, g *group, m string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := g.members[m].Connect(ctx)
	if err != nil {
		t.Fatalf("connect %s: %v", m, err)
	}
	defer conn.Close(context.Background())
	var id int64
	if err := conn.QueryRow(ctx, "SELECT system_identifier FROM pg_control_system()").Scan(&id); err != nil {
		t.Fatalf("%s: system identifier: %v", m, err)
	}
	return strconv.FormatUint(uint64(id), 10)
}

// waitInitialize waits until the group's initialize key holds sysid and
// returns how long that took.
func waitInitialize(t *testing.T, g *group, sysid string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	testbed.Eventually(t, timeout, "initialize key holds system id "+sysid, func() error {
		v, err := g.kv.ReadGroup(context.Background(), g.name)
		if err != nil {
			return err
		}
		switch {
		case v.Initialize == nil && v.InitializeIndex == 0:
			return fmt.Errorf("initialize key missing")
		case v.Initialize == nil:
			return fmt.Errorf("initialize key unreadable")
		case v.Initialize.SystemID != sysid:
			return fmt.Errorf("initialize key %+v", *v.Initialize)
		}
		return nil
	})
	return time.Since(start)
}
