package test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/pgmesh/pgmesh/test/testbed"
)

// TestPreparedQueriesAcrossDatacenters runs a mesh across three Consul
// datacenters on one machine (one server each, joined over the WAN pool),
// one group of two members per datacenter, each group's agents talking to
// their own datacenter's Consul (its keys, sessions and services stay
// there). The agents keep the prepared queries itest-write and itest-read
// in their datacenter. Asked in dc1, itest-write.query.consul (DNS, SRV)
// answers dc1's primary; with dc1's primary host killed it answers another
// datacenter's primary within seconds (a client there can write), and dc1's
// new primary once dc1's group has failed over. Then dc3's Consul server is
// stopped: the other two groups keep their leaders and take writes.
func TestPreparedQueriesAcrossDatacenters(t *testing.T) {
	dcs := []string{"dc1", "dc2", "dc3"}
	consuls := map[string]*testbed.Consul{}
	for i, dc := range dcs {
		opts := testbed.ConsulOptions{Datacenter: dc}
		if i > 0 {
			opts.JoinWAN = []string{consuls["dc1"].SerfWANAddr}
		}
		consuls[dc] = testbed.StartConsul(t, opts)
	}
	testbed.Eventually(t, 60*time.Second, "three datacenters in the WAN pool", func() error {
		for _, dc := range dcs {
			got, err := consuls[dc].Client().Catalog().Datacenters()
			if err != nil || len(got) != 3 {
				return fmt.Errorf("%s sees %v (%v)", dc, got, err)
			}
		}
		return nil
	})
	groups := map[string]*group{}
	for i, dc := range dcs {
		name := fmt.Sprintf("n%d", i+1)
		groups[dc] = startGroup(t, consuls[dc], name, 2, nil, func(s *testbed.AgentSpec) {
			s.DCSExtra = "datacenters: [dc1, dc2, dc3]"
		})
	}
	leaders := map[string]string{}
	for _, dc := range dcs {
		leaders[dc] = groups[dc].waitHealthy(120 * time.Second)
	}

	// The queries exist in every datacenter, as pgmesh defines them.
	for _, dc := range dcs {
		testbed.Eventually(t, 30*time.Second, "prepared queries in "+dc, func() error {
			qs, _, err := consuls[dc].Client().PreparedQuery().List(nil)
			if err != nil {
				return err
			}
			have := map[string]*api.PreparedQueryDefinition{}
			for _, q := range qs {
				have[q.Name] = q
			}
			w, r := have["itest-write"], have["itest-read"]
			if w == nil || r == nil {
				return fmt.Errorf("queries %v", qs)
			}
			if w.Service.Service != "itest" || fmt.Sprint(w.Service.Tags) != "[primary]" || !w.Service.OnlyPassing ||
				w.Service.Failover.NearestN != 3 || fmt.Sprint(w.Service.Failover.Datacenters) != "[dc1 dc2 dc3]" {
				return fmt.Errorf("itest-write in %s: %+v", dc, w.Service)
			}
			if fmt.Sprint(r.Service.Tags) != "[replica]" {
				return fmt.Errorf("itest-read in %s: %+v", dc, r.Service)
			}
			return nil
		})
	}

	// Asked in each datacenter, the write query answers that datacenter's
	// primary, and the read query its replica.
	for _, dc := range dcs {
		g := groups[dc]
		replica := g.order[0]
		if replica == leaders[dc] {
			replica = g.order[1]
		}
		testbed.Eventually(t, 30*time.Second, "queries answer locally in "+dc, func() error {
			w, err := srvPorts(consuls[dc].DNSAddr, "itest-write.query.consul")
			if err != nil || !samePorts(w, portsOf(g, leaders[dc])) {
				return fmt.Errorf("itest-write.query.consul in %s: %v %v, want %v", dc, w, err, portsOf(g, leaders[dc]))
			}
			r, err := srvPorts(consuls[dc].DNSAddr, "itest-read.query.consul")
			if err != nil || !samePorts(r, portsOf(g, replica)) {
				return fmt.Errorf("itest-read.query.consul in %s: %v %v, want %v", dc, r, err, portsOf(g, replica))
			}
			return nil
		})
	}

	// dc1's primary host dies: the write query asked in dc1 fails over to
	// another datacenter's primary, which takes a write, then comes back.
	g1 := groups["dc1"]
	remote := map[int]*testbed.Agent{}
	for _, dc := range dcs[1:] {
		remote[groups[dc].members[leaders[dc]].PGPort] = groups[dc].members[leaders[dc]]
	}
	killed := time.Now()
	g1.members[leaders["dc1"]].KillHost()
	var elsewhere time.Duration
	testbed.Eventually(t, 30*time.Second, "itest-write.query.consul in dc1 answers another datacenter", func() error {
		w, err := srvPorts(consuls["dc1"].DNSAddr, "itest-write.query.consul")
		if err != nil || len(w) == 0 {
			return fmt.Errorf("%v %v", w, err)
		}
		a := remote[w[0]]
		if a == nil {
			return fmt.Errorf("answers %v, not another datacenter's primary", w)
		}
		if err := a.Exec(context.Background(), "CREATE TABLE IF NOT EXISTS dcq(id int)"); err != nil {
			return fmt.Errorf("write through the answer (%d): %v", w[0], err)
		}
		elsewhere = time.Since(killed)
		return nil
	})
	newLeader := g1.waitNewLeader(leaders["dc1"], 60*time.Second)
	var back time.Duration
	testbed.Eventually(t, 60*time.Second, "itest-write.query.consul in dc1 answers dc1's new primary", func() error {
		w, err := srvPorts(consuls["dc1"].DNSAddr, "itest-write.query.consul")
		if err != nil || !samePorts(w, portsOf(g1, newLeader)) {
			return fmt.Errorf("%v %v, want %v", w, err, portsOf(g1, newLeader))
		}
		back = time.Since(killed)
		return nil
	})
	t.Logf("dc1's primary host killed: itest-write.query.consul in dc1 answered another datacenter's primary (written to) after %.1fs, dc1's new primary %s after %.1fs",
		elsewhere.Seconds(), newLeader, back.Seconds())

	// dc3's Consul goes away: dc1 and dc2 keep their leaders and writes.
	leaders["dc1"] = newLeader
	for _, dc := range dcs[:2] {
		if err := groups[dc].members[leaders[dc]].Exec(context.Background(), "CREATE TABLE IF NOT EXISTS dcw(id int)"); err != nil {
			t.Fatal(err)
		}
	}
	consuls["dc3"].Stop()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, dc := range dcs[:2] {
			if l, err := groups[dc].leader(); err != nil || l != leaders[dc] {
				t.Fatalf("%s's leader %q (%v) with dc3's Consul down, want %s", dc, l, err, leaders[dc])
			}
			if err := groups[dc].members[leaders[dc]].Exec(context.Background(), "INSERT INTO dcw VALUES (1)"); err != nil {
				t.Fatalf("%s's primary with dc3's Consul down: %v", dc, err)
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
}
