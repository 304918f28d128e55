package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/pgmesh/pgmesh/internal/demo"
)

// hostBed turns the demo mesh into hosts as production runs them (bench
// failover -hosts): a three-server Consul cluster (the demo's Consul plus
// two servers that join it) and, per member, its own Consul client agent
// that the member's pgmesh agent talks to. Killing a host kills the
// member's agent, fence watchdog and PostgreSQL and its Consul client agent,
// so Consul learns of the death only as it would in production: the TTL of
// the sessions, or serf's failure detection marking the node's serfHealth
// critical.
//
// Gossip runs on Consul's production defaults: no gossip_lan block (probe
// interval 1s, probe timeout 500ms, suspicion_mult 4, gossip interval
// 200ms), unlike `consul agent -dev`, which tunes them to 100ms — unless
// -fast-gossip gives the bed's agents fastGossipLAN.
type hostBed struct {
	e       *env
	bin     string
	dir     string
	join    []string // serf LAN addresses of the servers
	servers []*consulProc
	// clients maps a member name to its host's Consul client agent.
	clients map[string]*consulProc
	api     *api.Client // reads through the demo's server
}

// fastGossipLAN is the gossip tuning -fast-gossip gives every agent of the
// bed but the demo's first server: serf then calls a dead node dead within
// about a second instead of five. It is a datacenter-wide decision with a
// cost (a probe every 200ms from every agent, and a 100ms probe timeout that
// a loaded host can miss), which is why it is a flag and not the bed's
// default.
const fastGossipLAN = `gossip_lan {
  probe_interval = "200ms"
  probe_timeout = "100ms"
  suspicion_mult = 2
  gossip_interval = "100ms"
}
`

// consulProc is one Consul agent process of the bed.
type consulProc struct {
	node, cfg, log string
	http, serf     int
	mu             sync.Mutex
	cmd            *exec.Cmd
	done           chan struct{}
}

func (c *consulProc) httpAddr() string { return fmt.Sprintf("127.0.0.1:%d", c.http) }

// hostPorts: the demo's Consul uses base+500..503 and base+600; the bed's
// two extra servers base+700.. and base+710.. (http, server, serf LAN, serf
// WAN), the client agents base+720+2i (http) and +1 (serf LAN).
func hostPorts(base int) (servers [2][4]int, client func(i int) (http, serf int)) {
	for i := range servers {
		for j := range servers[i] {
			servers[i][j] = base + 700 + 10*i + j
		}
	}
	return servers, func(i int) (int, int) { return base + 720 + 2*i, base + 721 + 2*i }
}

// newHostBed prepares the bed for the members of o (one group), starts the
// two extra servers and one client agent per member (they join the demo's
// server once it runs), and points every member's agent at its own client
// agent. Call it before demo.Start.
func newHostBed(ctx context.Context, e *env, o *demo.Options, fastGossip bool) (*hostBed, error) {
	if o.Groups != 1 {
		return nil, errors.New("host bed: one group only")
	}
	if o.Members > 40 {
		return nil, errors.New("host bed: at most 40 members")
	}
	hb := &hostBed{e: e, dir: e.workDir + "-hosts", clients: map[string]*consulProc{}, bin: o.ConsulBin}
	gossip := ""
	if fastGossip {
		gossip = fastGossipLAN
	}
	hb.cleanLeftovers()
	if err := os.RemoveAll(hb.dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(hb.dir, 0o755); err != nil {
		return nil, err
	}
	e.cleanups = append(e.cleanups, hb.stop)
	if hb.bin == "" {
		var err error
		if hb.bin, err = exec.LookPath("consul"); err != nil {
			return nil, errors.New("consul binary not found: run scripts/setup or pass -consul")
		}
	}
	sp, clientPorts := hostPorts(e.portBase)
	demoSerf := fmt.Sprintf("127.0.0.1:%d", o.ConsulHTTPPort+2)
	hb.join = []string{demoSerf}
	for i := range sp {
		hb.join = append(hb.join, fmt.Sprintf("127.0.0.1:%d", sp[i][2]))
	}
	var ports []int
	for i, p := range sp {
		ports = append(ports, p[:]...)
		n := &consulProc{node: fmt.Sprintf("server-%d", i+2), http: p[0], serf: p[2]}
		hcl := fmt.Sprintf(`server = true
node_name = %q
data_dir = %q
bind_addr = "127.0.0.1"
client_addr = "127.0.0.1"
advertise_addr = "127.0.0.1"
retry_join = [%q]
retry_interval = "500ms"
session_ttl_min = "1s"
disable_update_check = true
ui_config { enabled = false }
ports {
  http = %d
  dns = -1
  server = %d
  serf_lan = %d
  serf_wan = %d
  grpc = -1
  grpc_tls = -1
}
%s`, n.node, filepath.Join(hb.dir, n.node, "data"), demoSerf, p[0], p[1], p[2], p[3], gossip)
		if err := hb.write(n, hcl); err != nil {
			return nil, err
		}
		hb.servers = append(hb.servers, n)
	}
	for i := 0; i < o.Members; i++ {
		member := fmt.Sprintf("n1-%c", 'a'+i)
		http, serf := clientPorts(i)
		ports = append(ports, http, serf)
		n := &consulProc{node: "host-" + member, http: http, serf: serf}
		var join []string
		for _, j := range hb.join {
			join = append(join, strconv.Quote(j))
		}
		hcl := fmt.Sprintf(`server = false
node_name = %q
data_dir = %q
bind_addr = "127.0.0.1"
client_addr = "127.0.0.1"
advertise_addr = "127.0.0.1"
retry_join = [%s]
retry_interval = "500ms"
disable_update_check = true
ui_config { enabled = false }
ports {
  http = %d
  dns = -1
  serf_lan = %d
  serf_wan = -1
  grpc = -1
  grpc_tls = -1
}
%s`, n.node, filepath.Join(hb.dir, n.node, "data"), strings.Join(join, ", "), http, serf, gossip)
		if err := hb.write(n, hcl); err != nil {
			return nil, err
		}
		hb.clients[member] = n
	}
	for _, p := range ports {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			return nil, fmt.Errorf("host bed: port %d is in use (choose another -port-base): %w", p, err)
		}
		l.Close()
	}
	for _, n := range hb.servers {
		if err := hb.launch(n); err != nil {
			return nil, err
		}
	}
	for _, m := range sortedKeys(hb.clients) {
		if err := hb.launch(hb.clients[m]); err != nil {
			return nil, err
		}
	}
	cfg := api.DefaultConfig()
	cfg.Address = fmt.Sprintf("127.0.0.1:%d", o.ConsulHTTPPort)
	cfg.Token = ""
	cfg.HttpClient = &http.Client{Timeout: 15 * time.Second}
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	hb.api = c
	o.MemberConsul = func(_, member string) string {
		if n := hb.clients[member]; n != nil {
			return n.httpAddr()
		}
		return ""
	}
	return hb, nil
}

func sortedKeys(m map[string]*consulProc) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func (hb *hostBed) write(n *consulProc, hcl string) error {
	dir := filepath.Join(hb.dir, n.node)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	n.cfg, n.log = filepath.Join(dir, "consul.hcl"), filepath.Join(dir, "consul.log")
	return os.WriteFile(n.cfg, []byte(hcl), 0o644)
}

// launch starts (or restarts, with its data dir and ports) an agent.
func (hb *hostBed) launch(n *consulProc) error {
	logf, err := os.OpenFile(n.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(hb.bin, "agent", "-config-file", n.cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("host bed: start consul %s: %w", n.node, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	n.mu.Lock()
	n.cmd, n.done = cmd, done
	n.mu.Unlock()
	if f, err := os.OpenFile(filepath.Join(hb.dir, "pids"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); err == nil {
		fmt.Fprintln(f, cmd.Process.Pid)
		f.Close()
	}
	return nil
}

// cleanLeftovers kills the Consul agents a crashed earlier run left.
func (hb *hostBed) cleanLeftovers() {
	data, err := os.ReadFile(filepath.Join(hb.dir, "pids"))
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(data)) {
		pid, _ := strconv.Atoi(f)
		if pid <= 1 {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.Contains(string(cmdline), filepath.Join(hb.dir, "")) {
			syscall.Kill(-pid, syscall.SIGKILL)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func (n *consulProc) running() (*exec.Cmd, chan struct{}) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return nil, nil
	}
	select {
	case <-n.done:
		return nil, nil
	default:
		return n.cmd, n.done
	}
}

// stop stops every agent of the bed (clients leave; servers just stop) and
// removes its directory unless the run keeps its work dir.
func (hb *hostBed) stop() {
	all := append(append([]*consulProc(nil), hb.servers...), hb.clientList()...)
	for _, n := range all {
		if cmd, _ := n.running(); cmd != nil {
			cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	for _, n := range all {
		if cmd, done := n.running(); cmd != nil {
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-done
			}
		}
	}
	os.Remove(filepath.Join(hb.dir, "pids"))
	if !hb.e.keep && !hb.e.failed {
		os.RemoveAll(hb.dir)
	} else {
		printf("# host bed's Consul agents kept: %s\n", hb.dir)
	}
}

func (hb *hostBed) clientList() []*consulProc {
	var out []*consulProc
	for _, m := range sortedKeys(hb.clients) {
		out = append(out, hb.clients[m])
	}
	return out
}

// waitReady waits until the cluster has three raft voters and every
// running client agent's node is alive in serf with serfHealth passing in
// the catalog (a session tied to serfHealth cannot be created before).
func (hb *hostBed) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := hb.ready()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("host bed not ready after %s: %w (Consul logs in %s)", timeout, err, hb.dir)
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
}

func (hb *hostBed) ready() error {
	raft, err := hb.api.Operator().RaftGetConfiguration(nil)
	if err != nil {
		return fmt.Errorf("raft configuration: %w", err)
	}
	voters := 0
	for _, s := range raft.Servers {
		if s.Voter {
			voters++
		}
	}
	if voters != 3 {
		return fmt.Errorf("%d of 3 servers are raft voters", voters)
	}
	for _, n := range hb.clientList() {
		if cmd, _ := n.running(); cmd == nil {
			continue
		}
		st, err := hb.serfHealth(n.node)
		if err != nil {
			return err
		}
		if st != api.HealthPassing {
			return fmt.Errorf("%s: serfHealth %q", n.node, st)
		}
	}
	return nil
}

// serfHealth is the catalog status of the node's serfHealth check ("" if
// the node has none).
func (hb *hostBed) serfHealth(node string) (string, error) {
	checks, _, err := hb.api.Health().Node(node, nil)
	if err != nil {
		return "", err
	}
	for _, c := range checks {
		if c.CheckID == "serfHealth" {
			return c.Status, nil
		}
	}
	return "", nil
}

// killHost kills the member's host: its Consul client agent is frozen
// first (SIGSTOP: from that instant it answers no gossip probe and forwards
// no renew), then demo.Mesh.KillHost SIGKILLs the agent, watchdog,
// postmaster and backends, then the client agent is SIGKILLed. The
// returned instant, t=0 of the run, is the SIGSTOP of the client agent
// (earlier than the other kills by a few milliseconds).
func (hb *hostBed) killHost(m *demo.Mesh, mem *demo.Member) (time.Time, error) {
	n := hb.clients[mem.Name]
	cmd, done := n.running()
	if cmd == nil {
		return time.Time{}, fmt.Errorf("kill host %s: its Consul client agent is not running", mem.Name)
	}
	t0 := time.Now()
	syscall.Kill(-cmd.Process.Pid, syscall.SIGSTOP)
	_, err := m.KillHost(mem)
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		return t0, fmt.Errorf("kill host %s: Consul client agent did not exit after SIGKILL", mem.Name)
	}
	return t0, err
}

// restartHost brings a killed host back: its Consul client agent (same
// node, data dir and ports) until serf and the catalog have it alive again,
// then the member's agent.
func (hb *hostBed) restartHost(ctx context.Context, m *demo.Mesh, mem *demo.Member, timeout time.Duration) error {
	n := hb.clients[mem.Name]
	if cmd, _ := n.running(); cmd == nil {
		if err := hb.launch(n); err != nil {
			return err
		}
	}
	if err := hb.waitReady(ctx, timeout); err != nil {
		return fmt.Errorf("restart host %s: %w", mem.Name, err)
	}
	return m.StartMember(mem)
}

// serfWatch follows a node's checks with a blocking query and records,
// after arm, when its serfHealth was first critical in the catalog.
type serfWatch struct {
	mu         sync.Mutex
	t0         time.Time
	criticalAt time.Time
}

func (hb *hostBed) watchSerf(ctx context.Context, node string) (*serfWatch, error) {
	w := &serfWatch{}
	_, meta, err := hb.api.Health().Node(node, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, err
	}
	go func() {
		idx := meta.LastIndex
		for ctx.Err() == nil {
			checks, meta, err := hb.api.Health().Node(node, (&api.QueryOptions{WaitIndex: idx, WaitTime: 10 * time.Second}).WithContext(ctx))
			if err != nil {
				sleepCtx(ctx, 50*time.Millisecond)
				continue
			}
			now := time.Now()
			idx = meta.LastIndex
			for _, c := range checks {
				if c.CheckID == "serfHealth" && c.Status == api.HealthCritical {
					w.mu.Lock()
					if !w.t0.IsZero() && w.criticalAt.IsZero() {
						w.criticalAt = now
					}
					w.mu.Unlock()
				}
			}
		}
	}()
	return w, nil
}

func (w *serfWatch) arm(t0 time.Time) {
	w.mu.Lock()
	w.t0 = t0
	w.mu.Unlock()
}

// wait gives the watch up to d to see serfHealth critical.
func (w *serfWatch) wait(ctx context.Context, d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if w.result() > 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// result is when serfHealth went critical, relative to t0 (0: not seen).
func (w *serfWatch) result() time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.criticalAt.IsZero() {
		return 0
	}
	return w.criticalAt.Sub(w.t0)
}
