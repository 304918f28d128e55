package testbed

import (
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// Consul is a real single-server Consul agent on loopback.
type Consul struct {
	// HTTPAddr is host:port of the HTTP API; DNSAddr of the DNS server.
	HTTPAddr string
	DNSAddr  string
	// SerfWANAddr is the WAN gossip address other datacenters join.
	SerfWANAddr string
	// Datacenter is the agent's datacenter.
	Datacenter string
	Dir        string
	NodeName   string
	// ManagementToken is the initial management token when the agent runs
	// with ACLs (ConsulOptions.ACL); Client uses it.
	ManagementToken string
	// With ConsulOptions.TLS: the CA and a client certificate and key
	// (made by `consul tls`, readable by the PostgreSQL OS user), and
	// HTTPAddr is https://127.0.0.1:port.
	CAFile, ClientCert, ClientKey string

	certDir string

	t       testing.TB
	bin     string
	args    []string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{}
}

// ConsulOptions tune the agent the test gets.
type ConsulOptions struct {
	// SessionTTLMin is Consul's session_ttl_min (default 1s so tests can use
	// short leases; production Consul defaults to 10s).
	SessionTTLMin time.Duration
	// ClientAddrs are addresses the HTTP and DNS API listen on besides
	// 127.0.0.1 (e.g. a Netns bridge address, for members in namespaces).
	ClientAddrs []string
	// TLS serves the HTTP API over HTTPS only, with verify_incoming: every
	// client needs a certificate from the test CA (Consul.ClientCert). DNS
	// stays plain UDP.
	TLS bool
	// ACL runs Consul as production does: ACLs on, default policy deny, an
	// initial management token (Consul.ManagementToken, also the agent's
	// own token for its node registration) and nothing else allowed.
	ACL bool
	// CheckTLS lets Consul's HTTP checks verify HTTPS REST APIs with this
	// CA and show its certificate (enable_agent_tls_for_checks), as a
	// production Consul agent beside pgmesh members with TLS does. Not
	// combined with TLS.
	CheckTLS *APITLS
	// Datacenter names the agent's datacenter (default dc1); JoinWAN lists
	// other datacenters' servers (their Consul.SerfWANAddr) to join over
	// the WAN pool: several Consul datacenters on one machine.
	Datacenter string
	JoinWAN    []string
}

// StartConsul starts a Consul server in dev-like single-node mode with a
// data dir (so Restart keeps its state) and waits until it has a leader.
func StartConsul(t testing.TB, opts ConsulOptions) *Consul {
	t.Helper()
	// Another process can grab a chosen port before Consul binds it; then
	// start over on fresh ports rather than fail the test.
	for attempt := 1; ; attempt++ {
		c, err := tryStartConsul(t, opts)
		if err == nil {
			return c
		}
		if attempt >= 3 || !strings.Contains(err.Error(), "address already in use") {
			t.Fatal(err)
		}
		t.Logf("testbed: %v; retrying on other ports", err)
	}
}

func tryStartConsul(t testing.TB, opts ConsulOptions) (*Consul, error) {
	t.Helper()
	bin, err := ConsulBinary()
	if err != nil {
		return nil, err
	}
	if opts.SessionTTLMin == 0 {
		opts.SessionTTLMin = time.Second
	}
	dir := t.TempDir()
	http, dns, server, serfLAN, serfWAN := FreePort(t), FreePort(t), FreePort(t), FreePort(t), FreePort(t)
	c := &Consul{
		HTTPAddr:    fmt.Sprintf("127.0.0.1:%d", http),
		DNSAddr:     fmt.Sprintf("127.0.0.1:%d", dns),
		SerfWANAddr: fmt.Sprintf("127.0.0.1:%d", serfWAN),
		Datacenter:  "dc1",
		Dir:         dir,
		NodeName:    "testnode",
		t:           t,
		bin:         bin,
		logPath:     filepath.Join(dir, "consul.log"),
	}
	hcl := fmt.Sprintf(`
server = true
bootstrap_expect = 1
node_name = %q
data_dir = %q
bind_addr = "127.0.0.1"
client_addr = "127.0.0.1"
advertise_addr = "127.0.0.1"
session_ttl_min = %q
log_level = "INFO"
disable_update_check = true
enable_script_checks = false
ui_config { enabled = false }
ports {
  http = %d
  dns = %d
  server = %d
  serf_lan = %d
  serf_wan = %d
  grpc = -1
  grpc_tls = -1
}
performance { raft_multiplier = 1 }
dns_config { allow_stale = false, node_ttl = "0s", service_ttl { "*" = "0s" } }
`, c.NodeName, filepath.Join(dir, "data"), opts.SessionTTLMin.String(), http, dns, server, serfLAN, serfWAN)
	if opts.Datacenter != "" {
		c.Datacenter = opts.Datacenter
		hcl = strings.Replace(hcl, fmt.Sprintf("node_name = %q", c.NodeName), fmt.Sprintf("node_name = %q\ndatacenter = %q", "testnode-"+opts.Datacenter, opts.Datacenter), 1)
		c.NodeName = "testnode-" + opts.Datacenter
	}
	if len(opts.JoinWAN) > 0 {
		var join []string
		for _, j := range opts.JoinWAN {
			join = append(join, strconv.Quote(j))
		}
		hcl += fmt.Sprintf("retry_join_wan = [%s]\nretry_interval_wan = \"500ms\"\n", strings.Join(join, ", "))
	}
	if opts.TLS {
		if err := c.makeCerts(); err != nil {
			return nil, err
		}
		hcl = strings.Replace(hcl, fmt.Sprintf("  http = %d\n", http), fmt.Sprintf("  http = -1\n  https = %d\n", http), 1)
		hcl += fmt.Sprintf(`
tls {
  defaults {
    ca_file = %q
    cert_file = %q
    key_file = %q
    verify_incoming = true
    verify_outgoing = true
  }
}
`, c.CAFile, filepath.Join(c.certDir, "dc1-server-consul-0.pem"), filepath.Join(c.certDir, "dc1-server-consul-0-key.pem"))
		c.HTTPAddr = "https://" + c.HTTPAddr
	}
	if opts.CheckTLS != nil && !opts.TLS {
		hcl += fmt.Sprintf(`
enable_agent_tls_for_checks = true
tls {
  defaults {
    ca_file = %q
    cert_file = %q
    key_file = %q
  }
}
`, opts.CheckTLS.CAFile, opts.CheckTLS.CertFile, opts.CheckTLS.KeyFile)
	}
	if opts.ACL {
		c.ManagementToken = randomUUID()
		hcl += fmt.Sprintf(`
acl {
  enabled = true
  default_policy = "deny"
  down_policy = "extend-cache"
  tokens {
    initial_management = %q
    agent = %q
  }
}
`, c.ManagementToken, c.ManagementToken)
	}
	if len(opts.ClientAddrs) > 0 {
		addrs := strings.Join(append([]string{"127.0.0.1"}, opts.ClientAddrs...), " ")
		hcl = strings.Replace(hcl, `client_addr = "127.0.0.1"`, fmt.Sprintf("client_addr = %q", addrs), 1)
	}
	cfgPath := filepath.Join(dir, "consul.hcl")
	if err := os.WriteFile(cfgPath, []byte(hcl), 0o644); err != nil {
		return nil, err
	}
	c.args = []string{"agent", "-config-file", cfgPath}
	if err := c.startErr(); err != nil {
		return nil, err
	}
	DumpOnFailure(t, "consul", c.logPath)
	t.Cleanup(c.Stop)
	return c, nil
}

func (c *Consul) start() {
	c.t.Helper()
	if err := c.startErr(); err != nil {
		c.t.Fatal(err)
	}
}

// startErr starts the agent and waits until it is ready; a start-up failure
// is returned with the reason from the log.
func (c *Consul) startErr() error {
	logf, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(c.bin, c.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("testbed: start consul: %w", err)
	}
	c.cmd = cmd
	c.done = make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(c.done) }()
	return c.waitReady(30 * time.Second)
}

// WaitReady polls until the agent answers and the cluster has a leader.
func (c *Consul) WaitReady(timeout time.Duration) {
	c.t.Helper()
	if err := c.waitReady(timeout); err != nil {
		c.t.Fatal(err)
	}
}

func (c *Consul) waitReady(timeout time.Duration) error {
	cl := c.Client()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-c.done:
			c.cmd = nil
			logText, _ := os.ReadFile(c.logPath)
			reason := "see its log"
			for _, l := range strings.Split(string(logText), "\n") {
				if strings.Contains(l, "[ERROR]") {
					reason = strings.TrimSpace(l)
				}
			}
			return fmt.Errorf("testbed: consul exited during start-up: %s", reason)
		default:
		}
		leader, err := cl.Status().Leader()
		if err == nil && leader != "" {
			// The catalog must have our node before sessions can be made.
			// (Node answers nil, not an error, while it is missing.)
			if node, _, err := cl.Catalog().Node(c.NodeName, nil); err == nil && node != nil {
				return nil
			}
		}
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("testbed: consul not ready after %s: %v", timeout, last)
}

// Client returns a consul/api client for the agent.
func (c *Consul) Client() *api.Client {
	cfg := api.DefaultConfig()
	cfg.Address = strings.TrimPrefix(c.HTTPAddr, "https://")
	cfg.Token = c.ManagementToken
	if c.CAFile != "" {
		cfg.Scheme = "https"
		cfg.TLSConfig = api.TLSConfig{CAFile: c.CAFile, CertFile: c.ClientCert, KeyFile: c.ClientKey}
	}
	cl, err := api.NewClient(cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	return cl
}

// makeCerts creates a CA, a server and a client certificate with `consul
// tls` in a directory the PostgreSQL OS user can read (agents load them).
func (c *Consul) makeCerts() error {
	c.certDir = OwnedDir(c.t)
	for _, args := range [][]string{{"tls", "ca", "create"}, {"tls", "cert", "create", "-server", "-dc", "dc1"}, {"tls", "cert", "create", "-client", "-dc", "dc1"}} {
		cmd := exec.Command(c.bin, args...)
		cmd.Dir = c.certDir
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("testbed: consul %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	u, err := PostgresOSUser()
	if err != nil {
		return err
	}
	if u != nil {
		ents, _ := os.ReadDir(c.certDir)
		for _, e := range ents {
			os.Chown(filepath.Join(c.certDir, e.Name()), int(u.UID), int(u.GID))
		}
	}
	c.CAFile = filepath.Join(c.certDir, "consul-agent-ca.pem")
	c.ClientCert = filepath.Join(c.certDir, "dc1-client-consul-0.pem")
	c.ClientKey = filepath.Join(c.certDir, "dc1-client-consul-0-key.pem")
	return nil
}

// randomUUID is a random RFC 4122 version 4 UUID (Consul's token format).
func randomUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// Stop terminates the agent (idempotent).
func (c *Consul) Stop() {
	if c.cmd == nil {
		return
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		<-c.done
	}
	c.cmd = nil
}

// Restart stops and starts the agent with the same state and ports.
func (c *Consul) Restart() {
	c.t.Helper()
	c.Stop()
	c.start()
}
