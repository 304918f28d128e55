package testbed

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// ConsulCluster is a real three-server Consul cluster on loopback, with
// client agents started on demand (production runs a local Consul client
// agent beside every member; the member talks to it, never to a server).
type ConsulCluster struct {
	// Servers are the three servers, in start order.
	Servers []*ConsulNode
	// Clients are the client agents started with StartClient (those of
	// finished subtests included: they are stopped, not removed).
	Clients []*ConsulNode

	t    testing.TB
	opts ConsulOptions
	bin  string
}

// ConsulNode is one agent of a ConsulCluster. The embedded Consul gives
// its HTTP address, Client and Stop.
type ConsulNode struct {
	*Consul
	Server bool
	// RaftAddr is the server's RPC/raft address (what Status().Leader()
	// answers); empty for a client.
	RaftAddr string
	// SerfLANAddr is the agent's gossip address (what retry_join names).
	SerfLANAddr string
	cfgPath     string
	// api is one client for the cluster helpers' own polling: Client()
	// builds a new transport each call, and the idle connections those
	// leave behind soon hit Consul's per-IP limit (http_max_conns_per_client
	// 200, and every process here is 127.0.0.1).
	api *api.Client
}

// StartConsulCluster starts three Consul servers (bootstrap_expect 3,
// retry_join on each other, own data dir and ports each, session_ttl_min as
// in ConsulOptions, raft_multiplier 1) and waits until they have a leader
// and all three are voters. When a chosen port was taken before Consul bound
// it, the whole cluster starts over on fresh ports (up to three times).
func StartConsulCluster(t testing.TB, opts ConsulOptions) *ConsulCluster {
	t.Helper()
	bin, err := ConsulBinary()
	if err != nil {
		t.Fatal(err)
	}
	if opts.SessionTTLMin == 0 {
		opts.SessionTTLMin = time.Second
	}
	for attempt := 1; ; attempt++ {
		cl := &ConsulCluster{t: t, opts: opts, bin: bin}
		err := cl.tryStartServers()
		if err == nil {
			t.Cleanup(func() {
				for _, n := range cl.Servers {
					n.Stop()
				}
			})
			for _, n := range cl.Servers {
				DumpOnFailure(t, "consul "+n.NodeName, n.logPath)
			}
			return cl
		}
		for _, n := range cl.Servers {
			n.Kill()
		}
		if attempt >= 3 || !strings.Contains(err.Error(), "address already in use") {
			t.Fatal(err)
		}
		t.Logf("testbed: %v; starting the Consul cluster over on other ports", err)
	}
}

func (cl *ConsulCluster) tryStartServers() error {
	type ports struct{ http, dns, server, serfLAN, serfWAN int }
	var ps []ports
	for i := 0; i < 3; i++ {
		t := cl.t
		ps = append(ps, ports{FreePort(t), FreePort(t), FreePort(t), FreePort(t), FreePort(t)})
	}
	for i, p := range ps {
		var join []string
		for j, q := range ps {
			if j != i {
				join = append(join, fmt.Sprintf("%q", fmt.Sprintf("127.0.0.1:%d", q.serfLAN)))
			}
		}
		name := fmt.Sprintf("server-%d", i+1)
		n := cl.newNode(name, true, p.http, p.serfLAN)
		n.DNSAddr = fmt.Sprintf("127.0.0.1:%d", p.dns)
		n.RaftAddr = fmt.Sprintf("127.0.0.1:%d", p.server)
		hcl := fmt.Sprintf(`
server = true
bootstrap_expect = 3
retry_join = [%s]
retry_interval = "500ms"
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
autopilot {
  server_stabilization_time = "2s"
  # The tests kill servers and restart them under the same name; autopilot
  # must not force-remove a killed server meanwhile (that left a restarted
  # server "leaving" in serf for over a minute).
  cleanup_dead_servers = false
}
dns_config { allow_stale = false, node_ttl = "0s", service_ttl { "*" = "0s" } }
`, strings.Join(join, ", "), name, filepath.Join(n.Dir, "data"), cl.opts.SessionTTLMin.String(), p.http, p.dns, p.server, p.serfLAN, p.serfWAN)
		if err := os.WriteFile(n.cfgPath, []byte(hcl), 0o644); err != nil {
			return err
		}
		cl.Servers = append(cl.Servers, n)
	}
	// bootstrap_expect 3: nobody is ready before all three run.
	for _, n := range cl.Servers {
		if err := n.launch(); err != nil {
			return err
		}
	}
	for _, n := range cl.Servers {
		if err := n.waitReady(60 * time.Second); err != nil {
			return fmt.Errorf("%s: %w", n.NodeName, err)
		}
	}
	return cl.WaitHealthy(60 * time.Second)
}

func (cl *ConsulCluster) newNode(name string, server bool, http, serfLAN int) *ConsulNode {
	dir := cl.t.TempDir()
	return &ConsulNode{
		Consul: &Consul{
			HTTPAddr: fmt.Sprintf("127.0.0.1:%d", http),
			Dir:      dir,
			NodeName: name,
			t:        cl.t,
			bin:      cl.bin,
			logPath:  filepath.Join(dir, "consul.log"),
		},
		Server:      server,
		SerfLANAddr: fmt.Sprintf("127.0.0.1:%d", serfLAN),
		cfgPath:     filepath.Join(dir, "consul.hcl"),
	}
}

// StartClient starts a Consul client agent named client-<name> that joins
// the servers, and waits until the catalog has it (sessions need that). It
// belongs to t: it leaves the cluster when t ends. A port taken before
// Consul bound it makes it start over on fresh ports.
func (cl *ConsulCluster) StartClient(t testing.TB, name string) *ConsulNode {
	t.Helper()
	var join []string
	for _, s := range cl.Servers {
		join = append(join, fmt.Sprintf("%q", s.SerfLANAddr))
	}
	for attempt := 1; ; attempt++ {
		http, serfLAN := FreePort(t), FreePort(t)
		saved := cl.t
		cl.t = t
		n := cl.newNode("client-"+name, false, http, serfLAN)
		cl.t = saved
		hcl := fmt.Sprintf(`
server = false
retry_join = [%s]
retry_interval = "500ms"
node_name = %q
data_dir = %q
bind_addr = "127.0.0.1"
client_addr = "127.0.0.1"
advertise_addr = "127.0.0.1"
log_level = "INFO"
disable_update_check = true
enable_script_checks = false
leave_on_terminate = true
ui_config { enabled = false }
ports {
  http = %d
  dns = -1
  serf_lan = %d
  serf_wan = -1
  grpc = -1
  grpc_tls = -1
}
performance { raft_multiplier = 1 }
`, strings.Join(join, ", "), n.NodeName, filepath.Join(n.Dir, "data"), http, serfLAN)
		if err := os.WriteFile(n.cfgPath, []byte(hcl), 0o644); err != nil {
			t.Fatal(err)
		}
		err := n.launch()
		if err == nil {
			err = n.waitReady(60 * time.Second)
		}
		if err == nil {
			cl.Clients = append(cl.Clients, n)
			DumpOnFailure(t, "consul "+n.NodeName, n.logPath)
			t.Cleanup(n.Stop)
			return n
		}
		n.Kill()
		if attempt >= 3 || !strings.Contains(err.Error(), "address already in use") {
			t.Fatalf("consul client %s: %v", name, err)
		}
		t.Logf("testbed: consul client %s: %v; retrying on other ports", name, err)
	}
}

// launch starts the agent process without waiting for it.
func (n *ConsulNode) launch() error {
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(n.bin, "agent", "-config-file", n.cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("testbed: start consul %s: %w", n.NodeName, err)
	}
	n.cmd = cmd
	n.done = make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(n.done) }()
	return nil
}

// pollClient is the node's client for the cluster helpers: one pooled
// transport, and a timeout so a request held by a server without a leader
// cannot stall a poll.
func (n *ConsulNode) pollClient() *api.Client {
	if n.api == nil {
		cfg := api.DefaultConfig()
		cfg.Address = n.HTTPAddr
		cfg.Token = ""
		cfg.HttpClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4, IdleConnTimeout: 30 * time.Second}}
		cl, err := api.NewClient(cfg)
		if err != nil {
			n.t.Fatal(err)
		}
		n.api = cl
	}
	return n.api
}

// Running reports whether the agent process is alive.
func (n *ConsulNode) Running() bool {
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// Kill SIGKILLs the agent (kill -9: no leave, no raft hand-over) and waits
// until it is gone. Its data dir and ports stay for Restart.
func (n *ConsulNode) Kill() {
	if n.cmd == nil {
		return
	}
	syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
	<-n.done
	n.cmd = nil
}

// Restart starts a stopped or killed agent again with its data dir and
// ports, and waits until it answers and sees a leader (for a server: the
// cluster may still be catching it up; see WaitHealthy). A port taken in
// the meantime is retried for a while (the cluster knows the node by them).
func (n *ConsulNode) Restart(timeout time.Duration) error {
	if n.Running() {
		return fmt.Errorf("testbed: consul %s is running", n.NodeName)
	}
	deadline := time.Now().Add(timeout)
	for {
		err := n.launch()
		if err == nil {
			err = n.waitReady(time.Until(deadline))
		}
		if err == nil {
			return nil
		}
		n.Kill()
		if !strings.Contains(err.Error(), "address already in use") || time.Now().After(deadline) {
			return fmt.Errorf("testbed: restart consul %s: %w", n.NodeName, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// Leader asks the running servers which one is the raft leader; nil (and
// the last error) when none knows one.
func (cl *ConsulCluster) Leader() (*ConsulNode, error) {
	last := errors.New("no server running")
	for _, s := range cl.Servers {
		if !s.Running() {
			continue
		}
		addr, err := s.pollClient().Status().Leader()
		if err != nil {
			last = err
			continue
		}
		if addr == "" {
			last = fmt.Errorf("%s knows no leader", s.NodeName)
			continue
		}
		for _, l := range cl.Servers {
			if l.RaftAddr == addr {
				return l, nil
			}
		}
		return nil, fmt.Errorf("%s names leader %s, not one of the servers", s.NodeName, addr)
	}
	return nil, last
}

// WaitLeader waits until a running server other than not (may be nil) is
// the leader, as every running server sees it, and returns it.
func (cl *ConsulCluster) WaitLeader(not *ConsulNode, timeout time.Duration) (*ConsulNode, error) {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		l, err := cl.agreedLeader()
		switch {
		case err != nil:
			last = err
		case l == not:
			last = fmt.Errorf("leader still %s", l.NodeName)
		default:
			return l, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("testbed: no new consul leader after %s: %v", timeout, last)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// agreedLeader is the leader when every running server names the same
// running one.
func (cl *ConsulCluster) agreedLeader() (*ConsulNode, error) {
	var leader *ConsulNode
	for _, s := range cl.Servers {
		if !s.Running() {
			continue
		}
		addr, err := s.pollClient().Status().Leader()
		if err != nil {
			return nil, fmt.Errorf("%s: %v", s.NodeName, err)
		}
		var l *ConsulNode
		for _, x := range cl.Servers {
			if x.RaftAddr == addr {
				l = x
			}
		}
		if l == nil || !l.Running() {
			return nil, fmt.Errorf("%s names leader %q", s.NodeName, addr)
		}
		if leader != nil && leader != l {
			return nil, fmt.Errorf("servers disagree: %s and %s", leader.NodeName, l.NodeName)
		}
		leader = l
	}
	if leader == nil {
		return nil, errors.New("no server running")
	}
	return leader, nil
}

// WaitHealthy waits until every server runs, they agree on a leader, all
// three are raft voters, autopilot calls the cluster healthy with a failure
// tolerance of one, and every running agent (servers and clients) is an
// alive serf member.
func (cl *ConsulCluster) WaitHealthy(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		last = cl.healthy()
		if last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("testbed: consul cluster not healthy after %s: %v", timeout, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (cl *ConsulCluster) healthy() error {
	for _, s := range cl.Servers {
		if !s.Running() {
			return fmt.Errorf("%s is not running", s.NodeName)
		}
	}
	l, err := cl.agreedLeader()
	if err != nil {
		return err
	}
	c := l.pollClient()
	raft, err := c.Operator().RaftGetConfiguration(nil)
	if err != nil {
		return fmt.Errorf("raft configuration: %v", err)
	}
	voters := 0
	for _, s := range raft.Servers {
		if s.Voter {
			voters++
		}
	}
	if voters != len(cl.Servers) {
		return fmt.Errorf("%d of %d servers are raft voters", voters, len(cl.Servers))
	}
	h, err := c.Operator().AutopilotServerHealth(nil)
	if err != nil {
		return fmt.Errorf("autopilot health: %v", err)
	}
	if !h.Healthy || h.FailureTolerance < 1 {
		var bad []string
		for _, s := range h.Servers {
			if !s.Healthy {
				bad = append(bad, fmt.Sprintf("%s (serf %s, last contact %s)", s.Name, s.SerfStatus, s.LastContact))
			}
		}
		return fmt.Errorf("autopilot: healthy %v, failure tolerance %d, unhealthy %v", h.Healthy, h.FailureTolerance, bad)
	}
	members, err := c.Agent().Members(false)
	if err != nil {
		return fmt.Errorf("members: %v", err)
	}
	status := map[string]int{}
	for _, m := range members {
		status[m.Name] = m.Status
	}
	for _, n := range append(append([]*ConsulNode(nil), cl.Servers...), cl.Clients...) {
		if n.Running() && status[n.NodeName] != 1 { // serf StatusAlive
			return fmt.Errorf("member %s has serf status %d", n.NodeName, status[n.NodeName])
		}
	}
	return nil
}
