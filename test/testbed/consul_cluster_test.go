package testbed

import (
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// TestConsulClusterLeaderKill proves the cluster helpers: three servers and
// a client agent come up, kill -9 of the raft leader leads to another
// leader, the client agent keeps serving KV through it, and the restarted
// server rejoins with its data.
func TestConsulClusterLeaderKill(t *testing.T) {
	cl := StartConsulCluster(t, ConsulOptions{})
	client := cl.StartClient(t, "m1")
	if err := cl.WaitHealthy(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	kv := client.Client().KV()
	if _, err := kv.Put(&api.KVPair{Key: "tb/before", Value: []byte("1")}, nil); err != nil {
		t.Fatal(err)
	}
	old, err := cl.Leader()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	old.Kill()
	if old.Running() {
		t.Fatalf("%s still running after Kill", old.NodeName)
	}
	next, err := cl.WaitLeader(old, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("killed leader %s; %s leads after %s", old.NodeName, next.NodeName, time.Since(start).Round(10*time.Millisecond))
	Eventually(t, 30*time.Second, "the client agent writes through the new leader", func() error {
		_, err := kv.Put(&api.KVPair{Key: "tb/during", Value: []byte("2")}, nil)
		return err
	})
	if err := cl.WaitHealthy(time.Second); err == nil {
		t.Fatal("cluster reported healthy with a server down")
	}
	if err := old.Restart(60 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := cl.WaitHealthy(60 * time.Second); err != nil {
		t.Fatal(err)
	}
	// The restarted server has the write made while it was down (a stale
	// read is answered from its own raft state).
	oldKV := old.Client().KV()
	Eventually(t, 10*time.Second, "the restarted server caught up", func() error {
		p, _, err := oldKV.Get("tb/during", &api.QueryOptions{AllowStale: true})
		if err != nil {
			return err
		}
		if p == nil || string(p.Value) != "2" {
			return fmt.Errorf("tb/during = %v on %s", p, old.NodeName)
		}
		return nil
	})
}
