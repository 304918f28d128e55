package demo

import (
	"fmt"
	"strings"
	"testing"
)

// The datacenters' ports follow the documented layout (dcK: HTTP at
// ConsulHTTPPort+4(K-1) and the next three, DNS at ConsulDNSPort+K-1), one
// datacenter keeps the demo's usual layout and directory, and groups go
// round-robin.
func TestPlanDatacenters(t *testing.T) {
	o := Options{WorkDir: "/w", ConsulHTTPPort: 18500, ConsulDNSPort: 18600, Datacenters: 3}
	var got []string
	for _, d := range o.planDatacenters() {
		got = append(got, fmt.Sprintf("%s %d %d %d %d %d %s", d.Name, d.HTTPPort, d.ServerPort, d.SerfLANPort, d.SerfWANPort, d.DNSPort, d.Dir))
	}
	want := []string{
		"dc1 18500 18501 18502 18503 18600 /w/consul-dc1",
		"dc2 18504 18505 18506 18507 18601 /w/consul-dc2",
		"dc3 18508 18509 18510 18511 18602 /w/consul-dc3",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("plan\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	o.Datacenters = 0
	one := o.planDatacenters()
	if len(one) != 1 || one[0].Dir != "/w/consul" || one[0].HTTPPort != 18500 || one[0].DNSPort != 18600 || one[0].SerfWANPort != 18503 {
		t.Fatalf("one datacenter: %+v", one)
	}
	m := &Mesh{opts: Options{WorkDir: "/w", ConsulHTTPPort: 18500, ConsulDNSPort: 18600, Datacenters: 3}}
	m.dcs = m.opts.planDatacenters()
	var dcOf []string
	for i := 0; i < 5; i++ {
		dcOf = append(dcOf, m.datacenterOf(i).Name)
	}
	if fmt.Sprint(dcOf) != "[dc1 dc2 dc3 dc1 dc2]" {
		t.Fatalf("groups' datacenters %v", dcOf)
	}
	hcl := m.consulHCL(m.dcs[2])
	for _, want := range []string{`datacenter = "dc3"`, `node_name = "demo-dc3"`, `retry_join_wan = ["127.0.0.1:18503"]`, `pid_file = "/w/consul-dc3/consul.pid"`, "http = 18508", "dns = 18602"} {
		if !strings.Contains(hcl, want) {
			t.Errorf("dc3's consul.hcl lacks %s:\n%s", want, hcl)
		}
	}
	if strings.Contains(m.consulHCL(m.dcs[0]), "retry_join_wan") {
		t.Error("dc1 joins nobody: the others join it")
	}
}

// Ports that would collide (datacenters' Consul ports running into the DNS
// range, say) are refused before anything starts, naming both uses.
func TestCheckPortsOverlap(t *testing.T) {
	m := &Mesh{opts: Options{WorkDir: "/w", ConsulHTTPPort: 18500, ConsulDNSPort: 18506, Datacenters: 3, PGBasePort: 25432, APIBasePort: 28008, Groups: 3, Members: 2}}
	m.dcs = m.opts.planDatacenters()
	err := m.checkPorts()
	if err == nil || !strings.Contains(err.Error(), "port 18506 would be both") {
		t.Fatalf("overlap: %v", err)
	}
}
