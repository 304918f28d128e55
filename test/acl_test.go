package test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/pgmesh/pgmesh/test/testbed"
)

// TestConsulACL runs pgmesh against a Consul with ACLs on and default-deny,
// with exactly the policies `pgmesh consul-policy` prints: the agents
// bootstrap, register and fail over with the agent token; status and render
// work with the read-only token; a switchover with the operator token; DNS
// (the service and the prepared query) with the anonymous token carrying the
// dns policy. A token missing one
// rule, or none at all, gets an error naming what Consul refused.
func TestConsulACL(t *testing.T) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{ACL: true})
	mgmt := c.Client()
	p := newPgmeshCLI(t, c.HTTPAddr, "itest")
	policy := func(kind string, extra ...string) string {
		r := p.ok(append([]string{"consul-policy", kind}, extra...)...)
		return r.stdout
	}
	token := func(name, rules string) string {
		t.Helper()
		pol, _, err := mgmt.ACL().PolicyCreate(&api.ACLPolicy{Name: name, Rules: rules}, nil)
		if err != nil {
			t.Fatalf("create policy %s: %v\n%s", name, err, rules)
		}
		tok, _, err := mgmt.ACL().TokenCreate(&api.ACLToken{Description: name, Policies: []*api.ACLTokenPolicyLink{{ID: pol.ID}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return tok.SecretID
	}
	agentTok := token("pgmesh-agent", policy("agent", "--node", c.NodeName))
	roTok := token("pgmesh-readonly", policy("readonly"))
	opTok := token("pgmesh-operator", policy("operator"))
	// DNS answers with the anonymous token.
	dnsPol, _, err := mgmt.ACL().PolicyCreate(&api.ACLPolicy{Name: "pgmesh-dns", Rules: policy("dns")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	anon, _, err := mgmt.ACL().TokenRead("00000000-0000-0000-0000-000000000002", nil)
	if err != nil {
		t.Fatal(err)
	}
	anon.Policies = append(anon.Policies, &api.ACLTokenPolicyLink{ID: dnsPol.ID})
	if _, _, err := mgmt.ACL().TokenUpdate(anon, nil); err != nil {
		t.Fatal(err)
	}

	g := startGroup(t, c, "ac", 2, nil, func(s *testbed.AgentSpec) {
		s.ConsulExtra = fmt.Sprintf("token: %q", agentTok)
	})
	leader := g.waitHealthy(120 * time.Second)

	// status and render with the read-only token.
	ro := []string{"CONSUL_HTTP_TOKEN=" + roTok}
	testbed.Eventually(t, 30*time.Second, "status with the read-only token shows the leader", func() error {
		r := p.runWith(nil, ro, "status")
		if r.code != 0 || len(tableRow(r.stdout, leader)) < 4 || tableRow(r.stdout, leader)[2] != "Leader" {
			return fmt.Errorf("%s", r)
		}
		return nil
	})
	svc := filepath.Join(t.TempDir(), "pg_service.conf")
	r := p.runWith(nil, ro, "render", "--once", "--local-group", "ac", "--template", "builtin:pg_service.conf.tmpl", "--dest", svc)
	if r.code != 0 {
		t.Fatalf("render with the read-only token: %s", r)
	}
	if b, _ := os.ReadFile(svc); !strings.Contains(string(b), fmt.Sprintf("port=%d", g.members[leader].PGPort)) {
		t.Fatalf("rendered pg_service.conf lacks the leader:\n%s", b)
	}
	// DNS with the anonymous token.
	testbed.Eventually(t, 30*time.Second, "DNS answers the primary", func() error {
		ports, err := srvPorts(c.DNSAddr, "primary.itest.service.consul")
		if err != nil || !samePorts(ports, portsOf(g, leader)) {
			return fmt.Errorf("SRV %v (%v), want %v", ports, err, portsOf(g, leader))
		}
		return nil
	})

	// The agent token's query_prefix rule lets the agents keep the prepared
	// queries, and the anonymous token (dns policy) resolves them.
	testbed.Eventually(t, 30*time.Second, "itest-write.query.consul answers the primary", func() error {
		ports, err := srvPorts(c.DNSAddr, "itest-write.query.consul")
		if err != nil || !samePorts(ports, portsOf(g, leader)) {
			return fmt.Errorf("SRV %v (%v), want %v", ports, err, portsOf(g, leader))
		}
		return nil
	})

	// No token: Consul's refusal is named, not "cluster has no data".
	r = p.run("status")
	if r.code == 0 || !strings.Contains(r.stderr, "ACLs") || !strings.Contains(r.stderr, "anonymous") || !strings.Contains(r.stderr, "key_prefix") {
		t.Fatalf("status without a token:\n%s", r)
	}
	t.Logf("status without a token: %s", strings.TrimSpace(r.stderr))
	// render --once with no token keeps the file and fails.
	before, _ := os.ReadFile(svc)
	r = p.run("render", "--once", "--local-group", "ac", "--template", "builtin:pg_service.conf.tmpl", "--dest", svc)
	if after, _ := os.ReadFile(svc); r.code == 0 || string(after) != string(before) {
		t.Fatalf("render --once without a token: exit %d, file changed %v\n%s", r.code, string(after) != string(before), r)
	}
	t.Logf("render --once without a token: %s", strings.TrimSpace(r.stderr))

	// A switchover with the operator token.
	op := []string{"CONSUL_HTTP_TOKEN=" + opTok}
	if r := p.runWith(nil, op, "switchover", "--group", "ac", "--force"); r.code != 0 {
		t.Fatalf("switchover with the operator token: %s", r)
	}
	leader = g.waitNewLeader(leader, 60*time.Second)
	g.waitHealthy(60 * time.Second)

	// Failover: the leader's host dies; the other member takes over with the
	// agent token.
	g.members[leader].KillHost()
	next := g.waitNewLeader(leader, 60*time.Second)
	t.Logf("with ACLs: switchover, then failover to %s", next)
	g.members[leader].Start()
	g.waitHealthy(120 * time.Second)

	// A token without the session rule: the agent says what Consul refused,
	// in its log and its REST status, and does not stall silently.
	noSession := token("pgmesh-agent-no-session", regexp.MustCompile(`(?s)\nsession "[^"]*" \{.*?\}\n`).ReplaceAllString(policy("agent", "--node", c.NodeName), "\n"))
	lonely := testbed.StartAgent(t, testbed.AgentSpec{Cluster: "itest", Group: "ad", Name: "ad-a", ConsulAddr: c.HTTPAddr,
		ConsulExtra: fmt.Sprintf("token: %q", noSession)})
	testbed.Eventually(t, 60*time.Second, "the agent names the refused permission", func() error {
		log := readFile(t, lonely.LogPath)
		if !strings.Contains(log, "consul refused the request") || !strings.Contains(log, "session:write") {
			return fmt.Errorf("log does not name the refusal yet")
		}
		if strings.Contains(log, `"msg":"consul unreachable"`) {
			return fmt.Errorf("a refusal logged as unreachable")
		}
		_, st, err := lonely.APIStatus("/patroni")
		if err != nil || !strings.Contains(fmt.Sprint(st["message"]), "session:write") {
			return fmt.Errorf("REST message %v (%v)", st["message"], err)
		}
		return nil
	})
}
