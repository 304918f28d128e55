package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/test/testbed"
)

// TestConsulTLS runs pgmesh against a Consul whose HTTP API is HTTPS only
// with verify_incoming (a client certificate from Consul's CA is required):
// agents (config fields), the CLI (CONSUL_* variables) and the renderer
// (render.yml's consul section) work; DNS stays plain UDP; a client
// without a certificate gets an error that says so.
func TestConsulTLS(t *testing.T) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{TLS: true})
	g := startGroup(t, c, "tl", 2, nil, func(s *testbed.AgentSpec) {
		s.ConsulExtra = fmt.Sprintf("ca_file: %s\ncert_file: %s\nkey_file: %s", c.CAFile, c.ClientCert, c.ClientKey)
	})
	leader := g.waitHealthy(120 * time.Second)

	// CLI through consul/api's variables.
	p := newPgmeshCLI(t, c.HTTPAddr, "itest")
	tlsEnv := []string{"CONSUL_CACERT=" + c.CAFile, "CONSUL_CLIENT_CERT=" + c.ClientCert, "CONSUL_CLIENT_KEY=" + c.ClientKey}
	testbed.Eventually(t, 30*time.Second, "status over HTTPS shows the leader", func() error {
		r := p.runWith(nil, tlsEnv, "status")
		if row := tableRow(r.stdout, leader); r.code != 0 || len(row) < 4 || row[2] != "Leader" {
			return fmt.Errorf("%s", r)
		}
		return nil
	})
	// Without a client certificate Consul refuses the handshake.
	r := p.runWith(nil, []string{"CONSUL_CACERT=" + c.CAFile}, "status")
	if r.code == 0 || !strings.Contains(strings.ToLower(r.stderr), "certificate") {
		t.Fatalf("status without a client certificate:\n%s", r)
	}
	t.Logf("status without a client certificate: %s", strings.TrimSpace(r.stderr))

	// The renderer from a render.yml.
	dir := t.TempDir()
	svc := filepath.Join(dir, "pg_service.conf")
	cfg := filepath.Join(dir, "render.yml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`cluster: itest
local_group: tl
consul: {address: %q, ca_file: %q, cert_file: %q, key_file: %q, tls_server_name: localhost}
templates:
  - template: builtin:pg_service.conf.tmpl
    destination: %s
`, c.HTTPAddr, c.CAFile, c.ClientCert, c.ClientKey, svc)), 0o644)
	if r := p.run("render", "--config", cfg, "--once"); r.code != 0 {
		t.Fatalf("render over HTTPS: %s", r)
	}
	if b, _ := os.ReadFile(svc); !strings.Contains(string(b), fmt.Sprintf("port=%d", g.members[leader].PGPort)) {
		t.Fatalf("rendered file lacks the leader:\n%s", b)
	}
	// DNS (UDP, no TLS) answers the primary.
	testbed.Eventually(t, 30*time.Second, "DNS answers the primary", func() error {
		ports, err := srvPorts(c.DNSAddr, "primary.itest.service.consul")
		if err != nil || !samePorts(ports, portsOf(g, leader)) {
			return fmt.Errorf("SRV %v (%v)", ports, err)
		}
		return nil
	})
	// A failover over HTTPS.
	g.members[leader].KillHost()
	next := g.waitNewLeader(leader, 60*time.Second)
	t.Logf("over HTTPS with verify_incoming: %s took over", next)
}
