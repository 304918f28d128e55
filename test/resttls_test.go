package test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/pgmesh/pgmesh/test/testbed"
)

// TestRESTAPIOverTLS runs a group whose REST APIs speak HTTPS only and
// require client certificates (verify_client: required) plus basic auth,
// listening beyond loopback, as a locked-down production member does, and
// checks everything that talks to them: Consul's checks (the CA and a
// certificate given to Consul with enable_agent_tls_for_checks), HAProxy
// (check-ssl verify required with a client certificate, from the builtin
// template), the CLI (switchover with --api-cacert/--api-cert and the
// errors without them), peers during a leader race, and a certificate
// rotated under a running agent.
func TestRESTAPIOverTLS(t *testing.T) {
	tl := testbed.NewAPITLS(t, "required")
	c := testbed.StartConsul(t, testbed.ConsulOptions{CheckTLS: tl})
	g := startGroup(t, c, "tl", 3, nil, func(s *testbed.AgentSpec) {
		s.APITLS = tl
		s.RestAPIAnyAddress = true
		s.RestAPIExtra = "username: ops\npassword: tls pass"
		// A leader race needs every peer's WAL position over HTTPS.
		// Consul checks a certificate against its own node name unless
		// told which name to expect.
		s.ConsulExtra = "session_checks: [liveness]\nservice_check_tls_server_name: localhost"
		s.LockDelay = 3 * time.Second
	})
	ctx := context.Background()
	leader := g.waitHealthy(120 * time.Second)
	if err := g.members[leader].Exec(ctx, "CREATE TABLE routing_probe(id bigserial PRIMARY KEY, at timestamptz DEFAULT now())"); err != nil {
		t.Fatal(err)
	}

	// Consul: https api_url, and every check passing means Consul verified
	// each member's certificate and showed its own.
	testbed.Eventually(t, 30*time.Second, "Consul checks of every member passing over HTTPS", func() error {
		entries, _, err := c.Client().Health().Service("itest", "", false, nil)
		if err != nil {
			return err
		}
		if len(entries) != 3 {
			return fmt.Errorf("%d instances registered", len(entries))
		}
		for _, e := range entries {
			if !strings.HasPrefix(e.Service.Meta["api_url"], "https://") {
				return fmt.Errorf("%s api_url %q", e.Service.ID, e.Service.Meta["api_url"])
			}
			for _, chk := range e.Checks {
				if chk.ServiceID != "" && chk.Status != api.HealthPassing {
					return fmt.Errorf("%s check %s: %s %s", e.Service.ID, chk.Name, chk.Status, chk.Output)
				}
			}
		}
		return nil
	})

	// Without a client certificate nothing answers, health checks included.
	noCert := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tl.TLSConfig().Clone()}}
	noCert.Transport.(*http.Transport).TLSClientConfig.GetClientCertificate = nil
	if resp, err := noCert.Get(g.members[leader].APIURL() + "/primary"); err == nil {
		resp.Body.Close()
		t.Fatalf("verify_client required: GET /primary without a client certificate answered %d", resp.StatusCode)
	}

	// HAProxy checks the agents over TLS and routes writes to the leader.
	dir := t.TempDir()
	ports := newRouterPorts(t, 1)
	hcfg := filepath.Join(dir, "haproxy.cfg")
	masterPid := filepath.Join(dir, "haproxy.master.pid")
	renderCfg := filepath.Join(dir, "render.yml")
	if err := os.WriteFile(renderCfg, []byte(fmt.Sprintf(`cluster: itest
local_group: tl
consul: {address: %s}
data:
  bind: 127.0.0.1
  ports: {write: %d, read: %d, stats: %d, group_base: %d}
  api_ca_file: %s
  api_cert: %s
templates:
  - template: builtin:haproxy.cfg.tmpl
    destination: %s
    validate: haproxy -c -q -f {{file}}
    reload: '[ ! -s %s ] || kill -USR2 "$(cat %s)"'
`, c.HTTPAddr, ports.write, ports.read, ports.stats, ports.groupBase, tl.CAFile, tl.PEMFile, hcfg, masterPid, masterPid)), 0o644); err != nil {
		t.Fatal(err)
	}
	startRenderer(t, renderCfg)
	testbed.Eventually(t, 30*time.Second, "haproxy.cfg checks every member over TLS", func() error {
		w := section(readText(hcfg), "listen write")
		if n := strings.Count(w, "check-ssl verify required ca-file "+tl.CAFile+" crt "+tl.PEMFile); n != 3 {
			return fmt.Errorf("%d TLS-checked servers in:\n%s", n, w)
		}
		return nil
	})
	hp := testbed.StartHAProxy(t, hcfg)
	if err := os.WriteFile(masterPid, []byte(fmt.Sprint(hp.Pid())), 0o644); err != nil {
		t.Fatal(err)
	}
	expectWriteOn := func(want string) {
		t.Helper()
		testbed.Eventually(t, 30*time.Second, "write through HAProxy lands on "+want, func() error {
			got, err := pgVia(ctx, ports.write, probeInsert)
			if err != nil {
				return err
			}
			if m := memberByPort(got, g); m != want {
				return fmt.Errorf("served by %s, want %s", m, want)
			}
			return nil
		})
	}
	expectWriteOn(leader)

	// The CLI: without the CA it says which setting is missing and changes
	// nothing; without a client certificate likewise; with both, the
	// switchover goes through the leader's HTTPS API.
	cli := newPgmeshCLI(t, c.HTTPAddr, "itest")
	auth := []string{"PGMESH_RESTAPI_USERNAME=ops", "PGMESH_RESTAPI_PASSWORD=tls pass"}
	expectCLI := func(env []string, code int, wants ...string) cliResult {
		t.Helper()
		start := time.Now()
		r := cli.runWith(nil, env, "switchover", "--group", "tl", "--force", "--timeout", "60s")
		if r.code != code {
			t.Fatalf("want exit %d:\n%s", code, r)
		}
		for _, w := range wants {
			if !strings.Contains(r.stderr+r.stdout, w) {
				t.Fatalf("output lacks %q:\n%s", w, r)
			}
		}
		if code != 0 && time.Since(start) > 10*time.Second {
			t.Fatalf("a TLS failure took %s to report (it must not wait for the timeout)", time.Since(start))
		}
		return r
	}
	expectCLI(auth, 1, "PGMESH_API_CACERT", "nothing was changed")
	expectCLI(append(auth, "PGMESH_API_CACERT="+tl.CAFile), 1, "--api-cert", "nothing was changed")
	if l, _ := g.leader(); l != leader {
		t.Fatalf("a refused switchover moved the leader to %s", l)
	}
	expectCLI(append(auth, "PGMESH_API_CACERT="+tl.CAFile, "PGMESH_API_CERT="+tl.CertFile, "PGMESH_API_KEY="+tl.KeyFile), 0)
	newLeader := g.waitNewLeader(leader, 60*time.Second)
	g.waitHealthy(90 * time.Second)
	expectWriteOn(newLeader)
	t.Logf("switchover over HTTPS: %s -> %s", leader, newLeader)

	// A rotated certificate is served without restarting the agent.
	served := func(m string) string {
		conn, err := tlsDial(tl, g.members[m].APIAddr)
		if err != nil {
			return "error: " + err.Error()
		}
		return conn
	}
	replica := ""
	for _, m := range g.order {
		if m != newLeader {
			replica = m
			break
		}
	}
	before := served(replica)
	serial := tl.Issue("member")
	testbed.Eventually(t, 10*time.Second, "rotated certificate served by "+replica, func() error {
		if got := served(replica); got != serial {
			return fmt.Errorf("serves %s, want the new %s (before: %s)", got, serial, before)
		}
		return nil
	})
	if _, exited := g.members[replica].Wait(0); exited {
		t.Fatal("the agent exited during the rotation")
	}

	// Kill the leader's host: the survivors race for the lock, reading each
	// other's WAL positions over HTTPS with client certificates. (The
	// requests above without a certificate were refused on purpose; only
	// what is logged from here on counts.)
	logFrom := map[string]int{}
	for _, m := range g.order {
		logFrom[m] = len(g.members[m].Log())
	}
	g.members[newLeader].KillHost()
	third := g.waitNewLeader(newLeader, 60*time.Second)
	expectWriteOn(third)
	for _, m := range g.order {
		if m == newLeader {
			continue
		}
		for _, line := range strings.Split(g.members[m].Log()[logFrom[m]:], "\n") {
			if strings.Contains(line, "TLS handshake error") && (strings.Contains(line, "certificate") || strings.Contains(line, "authority")) {
				t.Fatalf("%s: a peer, HAProxy or Consul was refused at the TLS handshake: %s", m, line)
			}
		}
	}
	t.Logf("failover after killing %s: %s took over", newLeader, third)
}

// tlsDial connects to addr and returns the serial of the certificate it
// serves.
func tlsDial(tl *testbed.APITLS, addr string) (string, error) {
	client := tl.Client(3 * time.Second)
	resp, err := client.Get("https://" + addr + "/health")
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	return resp.TLS.PeerCertificates[0].SerialNumber.String(), nil
}
