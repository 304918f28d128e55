package test

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/test/testbed"
)

// srvPorts asks Consul's DNS server for name's SRV records and returns the
// ports (every member listens on 127.0.0.1, so ports tell them apart).
func srvPorts(dnsAddr, name string) ([]int, error) {
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", dnsAddr)
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, srvs, err := r.LookupSRV(ctx, "", "", name)
	if err != nil {
		if de, ok := err.(*net.DNSError); ok && de.IsNotFound {
			return nil, nil
		}
		return nil, err
	}
	var ports []int
	for _, s := range srvs {
		ports = append(ports, int(s.Port))
	}
	sort.Ints(ports)
	return ports, nil
}

func portsOf(g *group, members ...string) []int {
	var ports []int
	for _, m := range members {
		ports = append(ports, g.members[m].PGPort)
	}
	sort.Ints(ports)
	return ports
}

func samePorts(a, b []int) bool {
	return fmt.Sprint(a) == fmt.Sprint(b)
}

// TestServiceRegistrationAndDNS checks what Consul users see: the member
// services with role tags, and DNS names that list exactly the writable
// primary and the healthy replicas, before and after a failover.
func TestServiceRegistrationAndDNS(t *testing.T) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	g := startGroup(t, c, "g4", 3, nil, func(s *testbed.AgentSpec) {
		s.ConsulExtra = "service_tags: [pgmesh-itest]"
	})
	leader := g.waitHealthy(90 * time.Second)
	var replicas []string
	for _, m := range g.order {
		if m != leader {
			replicas = append(replicas, m)
		}
	}
	expect := func(name string, want []int, timeout time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		testbed.Eventually(t, timeout, "DNS "+name, func() error {
			got, err := srvPorts(c.DNSAddr, name)
			if err != nil {
				return err
			}
			if !samePorts(got, want) {
				return fmt.Errorf("got ports %v, want %v", got, want)
			}
			return nil
		})
		return time.Since(start)
	}
	expect("primary.itest.service.consul", portsOf(g, leader), 20*time.Second)
	expect("g4-primary.itest.service.consul", portsOf(g, leader), 5*time.Second)
	expect("replica.itest.service.consul", portsOf(g, replicas...), 20*time.Second)
	expect("g4-replica.itest.service.consul", portsOf(g, replicas...), 5*time.Second)

	// The catalog entry carries the documented ID, tags and meta.
	svcs, _, err := c.Client().Health().Service("itest", "", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs) != 3 {
		t.Fatalf("want 3 passing instances of service itest, got %d", len(svcs))
	}
	for _, s := range svcs {
		m := s.Service.Meta["member"]
		if s.Service.ID != "itest/g4/"+m || s.Service.Meta["group"] != "g4" || s.Service.Meta["api_url"] != "http://"+g.members[m].APIAddr {
			t.Errorf("service %s: meta %v", s.Service.ID, s.Service.Meta)
		}
		role := s.Service.Meta["role"]
		tags := strings.Join(s.Service.Tags, ",")
		if !strings.Contains(tags, role) || !strings.Contains(tags, "g4-"+role) || !strings.Contains(tags, "pgmesh-itest") {
			t.Errorf("service %s tags %v do not match role %s", s.Service.ID, s.Service.Tags, role)
		}
		if (m == leader) != (role == "primary") {
			t.Errorf("service %s has role %s, leader is %s", s.Service.ID, role, leader)
		}
	}

	// Failover: DNS must stop listing the dead primary and list the new one.
	killed := time.Now()
	g.members[leader].KillHost()
	var newLeader string
	testbed.Eventually(t, 60*time.Second, "new leader", func() error {
		l, err := g.leader()
		if err != nil || l == "" || l == leader {
			return fmt.Errorf("leader %q", l)
		}
		newLeader = l
		return nil
	})
	promoted := time.Since(killed)
	took := expect("primary.itest.service.consul", portsOf(g, newLeader), 30*time.Second)
	t.Logf("after kill -9 of %s: leader key moved to %s after %s; primary.itest.service.consul answered only %s %s later (%s after the kill)",
		leader, newLeader, promoted.Round(10*time.Millisecond), newLeader, took.Round(10*time.Millisecond), time.Since(killed).Round(10*time.Millisecond))
	var rest []string
	for _, m := range replicas {
		if m != newLeader {
			rest = append(rest, m)
		}
	}
	expect("replica.itest.service.consul", portsOf(g, rest...), 30*time.Second)

	// A clean stop deregisters the member.
	g.members[rest[0]].Stop()
	testbed.Eventually(t, 20*time.Second, "stopped member deregistered", func() error {
		svcs, _, err := c.Client().Catalog().Service("itest", "", nil)
		if err != nil {
			return err
		}
		for _, s := range svcs {
			if s.ServiceID == "itest/g4/"+rest[0] {
				return fmt.Errorf("still registered")
			}
		}
		return nil
	})
}
