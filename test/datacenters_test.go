package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/pgmesh/pgmesh/test/testbed"
)

// TestPreparedQueriesAcrossDatacenters runs a mesh across three Consul
// datacenters on one machine (one server each, joined over the WAN pool),
// one group of two members per datacenter, each group's agents talking to
// their own datacenter's Consul (its keys, sessions and services stay
// there), n2 subscribing to n1 with native logical replication. The agents
// keep the prepared queries itest-write and itest-read in their datacenter.
// Asked in dc1, itest-write.query.consul (DNS, SRV) answers dc1's primary;
// with dc1's primary host killed it answers another datacenter's primary
// within seconds (a client there can write), and dc1's new primary once
// dc1's group has failed over. A `pgmesh render` in dc1 reads all three
// datacenters into HAProxy: writes go to dc1's primary, to another
// datacenter's while dc1 fails over, then back. `pgmesh status` asked in
// dc1 shows every group with its datacenter and the n1 → n2 subscription.
// Then dc3's Consul server is stopped: the other two groups keep their
// leaders and take writes, status marks dc3 unreachable, and HAProxy keeps
// dc3's servers.
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
			s.DCSExtra = "datacenters: [dc1, dc2, dc3]\nreplication: native"
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

	// Native logical replication across datacenters: n2 subscribes to n1.
	ctx := context.Background()
	for _, dc := range dcs {
		if err := groups[dc].members[leaders[dc]].Exec(ctx, "CREATE TABLE routing_probe(id bigserial PRIMARY KEY, at timestamptz DEFAULT now())"); err != nil {
			t.Fatal(err)
		}
	}
	for _, step := range []struct{ dc, sql string }{
		{"dc1", "CREATE TABLE across(id int PRIMARY KEY)"},
		{"dc1", "CREATE PUBLICATION across_pub FOR TABLE across"},
		{"dc2", "CREATE TABLE across(id int PRIMARY KEY)"},
		{"dc2", "CREATE SUBSCRIPTION n2_from_n1 CONNECTION '" + multiHostDSN(groups["dc1"]) + "' PUBLICATION across_pub"},
		{"dc1", "INSERT INTO across VALUES (1)"},
	} {
		if err := groups[step.dc].members[leaders[step.dc]].Exec(ctx, step.sql); err != nil {
			t.Fatalf("%s in %s: %v", step.sql, step.dc, err)
		}
	}
	groups["dc2"].waitRows(leaders["dc2"], "across", 1, 60*time.Second)

	// A router in dc1 reads every datacenter (the cluster config lists
	// them): dc1's group first, the others as backups.
	rt := startDatacenterRouter(t, consuls["dc1"])
	testbed.Eventually(t, 30*time.Second, "haproxy.cfg lists the three datacenters' members", func() error {
		cfg := readText(rt.haproxyCfg)
		if !strings.Contains(cfg, "# Datacenters, nearest first: dc1 (local), ") {
			return fmt.Errorf("no datacenter order:\n%s", cfg)
		}
		for _, dc := range dcs {
			for _, m := range groups[dc].order {
				if !strings.Contains(section(cfg, "listen write"), "server "+groups[dc].name+"."+m+" ") {
					return fmt.Errorf("no %s in the write listener:\n%s", m, cfg)
				}
			}
		}
		return nil
	})
	hp := testbed.StartHAProxy(t, rt.haproxyCfg)
	if err := os.WriteFile(rt.masterPid, []byte(fmt.Sprint(hp.Pid())), 0o644); err != nil {
		t.Fatal(err)
	}
	all := []*group{groups["dc1"], groups["dc2"], groups["dc3"]}
	viaRouter := func(what string, timeout time.Duration, ok func(member string) bool) string {
		t.Helper()
		var got string
		testbed.Eventually(t, timeout, what, func() error {
			port, err := pgVia(ctx, rt.ports.write, probeInsert)
			if err != nil {
				return err
			}
			if got = memberByPort(port, all...); !ok(got) {
				return fmt.Errorf("written on %s", got)
			}
			return nil
		})
		return got
	}
	viaRouter("the router writes to dc1's primary", 30*time.Second, func(m string) bool { return m == leaders["dc1"] })

	// Status asked in dc1 shows the whole mesh and the subscription.
	cli := newPgmeshCLI(t, consuls["dc1"].HTTPAddr, "itest")
	testbed.Eventually(t, 30*time.Second, "status across datacenters", func() error {
		doc, err := statusJSON(cli)
		if err != nil {
			return err
		}
		if fmt.Sprint(doc.Datacenters) != "[dc1 dc2 dc3]" || len(doc.Groups) != 3 {
			return fmt.Errorf("datacenters %v, %d groups", doc.Datacenters, len(doc.Groups))
		}
		for i, g := range doc.Groups {
			if g.Name != fmt.Sprintf("n%d", i+1) || g.Datacenter != dcs[i] {
				return fmt.Errorf("group %s in %q", g.Name, g.Datacenter)
			}
		}
		for _, l := range doc.Replication {
			if l.From == "n1" && l.To == "n2" && l.Problem == "" {
				return nil
			}
		}
		return fmt.Errorf("no healthy n1 -> n2 link: %+v", doc.Replication)
	})

	// render --once reads the three datacenters too.
	once := cli.ok("render", "--once", "--template", "builtin:pg_service.conf.tmpl", "--dest", "-")
	for _, want := range []string{"# Datacenters, nearest first: dc1 (local), ", "[itest-n1]", "[itest-n2]", "[itest-n3]", "; datacenter dc3"} {
		if !strings.Contains(once.stdout, want) {
			t.Fatalf("render --once lacks %q:\n%s", want, once)
		}
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
	other := viaRouter("the router writes to another datacenter's primary", 30*time.Second, func(m string) bool {
		return m == leaders["dc2"] || m == leaders["dc3"]
	})
	routedElsewhere := time.Since(killed)
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
	viaRouter("the router writes to dc1's new primary", 30*time.Second, func(m string) bool { return m == newLeader })
	t.Logf("the router in dc1 wrote to %s (another datacenter) %.1fs after the kill, and to dc1's new primary %s after %.1fs",
		other, routedElsewhere.Seconds(), newLeader, time.Since(killed).Seconds())
	groups["dc2"].waitRows(leaders["dc2"], "across", 1, 5*time.Second)

	// dc3's Consul goes away: dc1 and dc2 keep their leaders and writes.
	leaders["dc1"] = newLeader
	for _, dc := range dcs[:2] {
		if err := groups[dc].members[leaders[dc]].Exec(context.Background(), "CREATE TABLE IF NOT EXISTS dcw(id int)"); err != nil {
			t.Fatal(err)
		}
	}
	cfgBefore := section(readText(rt.haproxyCfg), "listen write")
	consuls["dc3"].Stop()
	testbed.Eventually(t, 30*time.Second, "status marks dc3 unreachable", func() error {
		doc, err := statusJSON(cli)
		if err != nil {
			return err
		}
		if doc.Unreachable["dc3"] == "" || len(doc.Groups) != 2 {
			return fmt.Errorf("unreachable %v, %d groups", doc.Unreachable, len(doc.Groups))
		}
		return nil
	})
	testbed.Eventually(t, 30*time.Second, "the router logs dc3 unreachable", func() error {
		if !strings.Contains(rt.r.log(), "dc3") || !strings.Contains(rt.r.log(), "datacenter unreachable") {
			return errors.New("not logged yet")
		}
		return nil
	})
	if after := section(readText(rt.haproxyCfg), "listen write"); after != cfgBefore {
		t.Fatalf("the write listener changed with dc3's Consul down (its servers must stay):\nbefore:\n%s\nafter:\n%s", cfgBefore, after)
	}
	viaRouter("the router still writes to dc1's primary", 10*time.Second, func(m string) bool { return m == newLeader })
	once = cli.ok("render", "--once", "--template", "builtin:pg_service.conf.tmpl", "--dest", "-")
	if strings.Contains(once.stdout, "[itest-n3]") || !strings.Contains(once.stdout, "[itest-n2]") ||
		!strings.Contains(once.stderr, "datacenter unreachable") || !strings.Contains(once.stderr, "dc3") {
		t.Fatalf("render --once with dc3 down: want n1 and n2, and dc3 named unreachable:\n%s", once)
	}
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

// dcRouter is a `pgmesh render` with HAProxy's config and service file in
// a datacenter.
type dcRouter struct {
	r                     *renderer
	ports                 routerPorts
	haproxyCfg, masterPid string
}

// startDatacenterRouter starts `pgmesh render` against c (no local group:
// c's datacenter's groups come first), the datacenters taken from the
// cluster config.
func startDatacenterRouter(t *testing.T, c *testbed.Consul) *dcRouter {
	t.Helper()
	dir := t.TempDir()
	rt := &dcRouter{ports: newRouterPorts(t, 3), haproxyCfg: filepath.Join(dir, "haproxy.cfg"), masterPid: filepath.Join(dir, "haproxy.master.pid")}
	sock := filepath.Join(dir, "admin.sock")
	cfgPath := filepath.Join(dir, "render.yml")
	renderCfg := fmt.Sprintf(`cluster: itest
consul: {address: %s}
log: {level: debug}
data:
  bind: 127.0.0.1
  socket: %s
  ports: {write: %d, read: %d, stats: %d, group_base: %d}
templates:
  - template: builtin:haproxy.cfg.tmpl
    destination: %s
    validate: haproxy -c -q -f {{file}}
    reload: '[ ! -s %s ] || kill -USR2 "$(cat %s)"'
    haproxy_socket: %s
`, c.HTTPAddr, sock, rt.ports.write, rt.ports.read, rt.ports.stats, rt.ports.groupBase, rt.haproxyCfg, rt.masterPid, rt.masterPid, sock)
	if err := os.WriteFile(cfgPath, []byte(renderCfg), 0o644); err != nil {
		t.Fatal(err)
	}
	rt.r = startRenderer(t, cfgPath)
	return rt
}

// meshStatus is the part of `pgmesh status -o json` these tests read.
type meshStatus struct {
	Datacenters []string          `json:"datacenters"`
	Unreachable map[string]string `json:"unreachable_datacenters"`
	Groups      []struct {
		Name       string `json:"name"`
		Datacenter string `json:"datacenter"`
	} `json:"groups"`
	Replication []struct {
		From    string `json:"from"`
		To      string `json:"to"`
		Problem string `json:"problem"`
	} `json:"replication"`
}

func statusJSON(cli *pgmeshCLI) (*meshStatus, error) {
	r := cli.run("status", "-o", "json")
	if r.code != 0 {
		return nil, fmt.Errorf("status: %s", r)
	}
	doc := &meshStatus{}
	if err := json.Unmarshal([]byte(r.stdout), doc); err != nil {
		return nil, fmt.Errorf("status -o json: %v\n%s", err, r.stdout)
	}
	return doc, nil
}
