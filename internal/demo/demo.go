// Package demo brings up a complete pgmesh mesh on one machine: a real
// Consul agent and groups × members of PostgreSQL 15, each managed by a
// pgmesh agent process, all on loopback. It is what `pgmesh demo` runs.
package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
)

// Options shape the demo mesh.
type Options struct {
	WorkDir   string
	Cluster   string
	Groups    int
	Members   int
	ConsulBin string
	// OSUser runs PostgreSQL (and the agents) when the demo runs as root.
	OSUser string
	// Ports: Consul HTTP, Consul DNS, first PostgreSQL port, first REST port.
	ConsulHTTPPort, ConsulDNSPort, PGBasePort, APIBasePort int
	Out                                                    io.Writer
}

// Member is one demo member.
type Member struct {
	Group, Name string
	PGPort      int
	APIPort     int
	DataDir     string
	Config      string
	Log         string
}

// Mesh is a running demo.
type Mesh struct {
	opts    Options
	members []*Member
	procs   []*exec.Cmd
	cred    *syscall.Credential
	Consul  string
}

func (o *Options) defaults() error {
	if o.WorkDir == "" {
		o.WorkDir = "/tmp/pgmesh-demo"
	}
	if o.Cluster == "" {
		o.Cluster = "demo"
	}
	if o.Groups <= 0 {
		o.Groups = 3
	}
	if o.Members <= 0 {
		o.Members = 2
	}
	if o.ConsulHTTPPort == 0 {
		o.ConsulHTTPPort = 18500
	}
	if o.ConsulDNSPort == 0 {
		o.ConsulDNSPort = 18600
	}
	if o.PGBasePort == 0 {
		o.PGBasePort = 15432
	}
	if o.APIBasePort == 0 {
		o.APIBasePort = 18008
	}
	if o.Out == nil {
		o.Out = os.Stdout
	}
	if o.ConsulBin == "" {
		exe, _ := os.Executable()
		cand := filepath.Join(filepath.Dir(exe), "consul")
		if _, err := os.Stat(cand); err == nil {
			o.ConsulBin = cand
		} else if p, err := exec.LookPath("consul"); err == nil {
			o.ConsulBin = p
		} else {
			return errors.New("consul binary not found: run scripts/setup (it builds Consul into .cache/bin) or pass --consul-bin")
		}
	}
	return nil
}

func (m *Mesh) say(format string, args ...any) {
	fmt.Fprintf(m.opts.Out, format+"\n", args...)
}

// Start builds the mesh and returns once every group has a writable leader
// and streaming replicas.
func Start(ctx context.Context, opts Options) (*Mesh, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	m := &Mesh{opts: opts, Consul: fmt.Sprintf("127.0.0.1:%d", opts.ConsulHTTPPort)}
	if os.Geteuid() == 0 {
		name := opts.OSUser
		if name == "" {
			name = "postgres"
		}
		u, err := user.Lookup(name)
		if err != nil {
			return nil, fmt.Errorf("running as root: PostgreSQL needs an unprivileged OS user %q: %w", name, err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		m.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	if err := m.checkReachable(); err != nil {
		return nil, err
	}
	if err := m.cleanLeftovers(); err != nil {
		return nil, err
	}
	if err := m.checkPorts(); err != nil {
		return nil, err
	}
	if err := m.startConsul(ctx); err != nil {
		m.Stop()
		return nil, err
	}
	if err := m.startAgents(); err != nil {
		m.Stop()
		return nil, err
	}
	if err := m.waitHealthy(ctx, 3*time.Minute); err != nil {
		m.Stop()
		return nil, err
	}
	return m, nil
}

// cleanLeftovers stops what a previous (crashed) demo left running and
// wipes its work dir.
func (m *Mesh) cleanLeftovers() error {
	pidFile := filepath.Join(m.opts.WorkDir, "pids")
	if data, err := os.ReadFile(pidFile); err == nil {
		n := 0
		for _, f := range strings.Fields(string(data)) {
			pid, _ := strconv.Atoi(f)
			if pid > 1 && syscall.Kill(pid, 0) == nil {
				syscall.Kill(-pid, syscall.SIGKILL)
				syscall.Kill(pid, syscall.SIGKILL)
				n++
			}
		}
		// Postmasters outlive their agents; stop them by their pid files.
		matches, _ := filepath.Glob(filepath.Join(m.opts.WorkDir, "*", "data", "postmaster.pid"))
		for _, p := range matches {
			if data, err := os.ReadFile(p); err == nil {
				pid, _ := strconv.Atoi(strings.SplitN(string(data), "\n", 2)[0])
				if pid > 1 && syscall.Kill(pid, syscall.SIGQUIT) == nil {
					n++
				}
			}
		}
		if n > 0 {
			m.say("stopped %d processes left over from a previous demo", n)
			time.Sleep(time.Second)
		}
	}
	if err := os.RemoveAll(m.opts.WorkDir); err != nil {
		return fmt.Errorf("clean %s: %w", m.opts.WorkDir, err)
	}
	if err := os.MkdirAll(m.opts.WorkDir, 0o755); err != nil {
		return err
	}
	return m.own(m.opts.WorkDir)
}

func tail(path string, n int) string {
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// checkReachable makes sure the unprivileged user can reach the work dir
// (a parent directory only root may enter is the usual trap).
func (m *Mesh) checkReachable() error {
	if m.cred == nil {
		return nil
	}
	for dir := filepath.Dir(m.opts.WorkDir); dir != "/"; dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			st := fi.Sys().(*syscall.Stat_t)
			if st.Uid != m.cred.Uid && (st.Gid != m.cred.Gid || fi.Mode().Perm()&0o010 == 0) {
				return fmt.Errorf("work dir %s: the PostgreSQL OS user cannot enter %s (mode %s); choose a work dir under /tmp or make it reachable", m.opts.WorkDir, dir, fi.Mode().Perm())
			}
		}
	}
	return nil
}

func (m *Mesh) own(path string) error {
	if m.cred == nil {
		return nil
	}
	return os.Chown(path, int(m.cred.Uid), int(m.cred.Gid))
}

func (m *Mesh) checkPorts() error {
	ports := []int{m.opts.ConsulHTTPPort, m.opts.ConsulDNSPort, m.opts.ConsulHTTPPort + 1, m.opts.ConsulHTTPPort + 2, m.opts.ConsulHTTPPort + 3}
	for i := 0; i < m.opts.Groups*m.opts.Members; i++ {
		ports = append(ports, m.opts.PGBasePort+i, m.opts.APIBasePort+i)
	}
	for _, p := range ports {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			return fmt.Errorf("port %d is in use (is another demo running? stop it with Ctrl-C first): %w", p, err)
		}
		l.Close()
	}
	return nil
}

func (m *Mesh) recordPID(pid int) {
	f, err := os.OpenFile(filepath.Join(m.opts.WorkDir, "pids"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err == nil {
		fmt.Fprintln(f, pid)
		f.Close()
	}
}

func (m *Mesh) spawn(name string, args []string, logPath string, asPG bool) (*exec.Cmd, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if asPG && m.cred != nil {
		cmd.SysProcAttr.Credential = m.cred
		cmd.Env = append(os.Environ(), "HOME="+m.opts.WorkDir)
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { cmd.Wait(); logf.Close() }()
	m.procs = append(m.procs, cmd)
	m.recordPID(cmd.Process.Pid)
	return cmd, nil
}

func (m *Mesh) startConsul(ctx context.Context) error {
	dir := filepath.Join(m.opts.WorkDir, "consul")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	hcl := fmt.Sprintf(`server = true
bootstrap_expect = 1
node_name = "demo"
data_dir = %q
bind_addr = "127.0.0.1"
client_addr = "127.0.0.1"
advertise_addr = "127.0.0.1"
session_ttl_min = "1s"
disable_update_check = true
ui_config { enabled = true }
ports {
  http = %d
  dns = %d
  server = %d
  serf_lan = %d
  serf_wan = %d
  grpc = -1
  grpc_tls = -1
}
dns_config { allow_stale = false, node_ttl = "0s", service_ttl { "*" = "0s" } }
`, filepath.Join(dir, "data"), m.opts.ConsulHTTPPort, m.opts.ConsulDNSPort, m.opts.ConsulHTTPPort+1, m.opts.ConsulHTTPPort+2, m.opts.ConsulHTTPPort+3)
	cfg := filepath.Join(dir, "consul.hcl")
	if err := os.WriteFile(cfg, []byte(hcl), 0o644); err != nil {
		return err
	}
	m.say("[1/3] starting Consul (%s) on %s, DNS on 127.0.0.1:%d", m.opts.ConsulBin, m.Consul, m.opts.ConsulDNSPort)
	if _, err := m.spawn(m.opts.ConsulBin, []string{"agent", "-config-file", cfg}, filepath.Join(dir, "consul.log"), false); err != nil {
		return err
	}
	kv, err := consulkv.New(consulkv.Config{Address: m.Consul, Cluster: m.opts.Cluster})
	if err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := kv.Ping(ctx); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			return fmt.Errorf("consul did not come up (see %s): %w", filepath.Join(dir, "consul.log"), err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (m *Mesh) startAgents() error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	m.say("[2/3] starting %d groups x %d members (PostgreSQL 15 + pgmesh agent each)", m.opts.Groups, m.opts.Members)
	i := 0
	for g := 1; g <= m.opts.Groups; g++ {
		group := fmt.Sprintf("n%d", g)
		for k := 0; k < m.opts.Members; k++ {
			name := fmt.Sprintf("%s-%c", group, 'a'+k)
			dir := filepath.Join(m.opts.WorkDir, name)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			if err := m.own(dir); err != nil {
				return err
			}
			mem := &Member{Group: group, Name: name, PGPort: m.opts.PGBasePort + i, APIPort: m.opts.APIBasePort + i,
				DataDir: filepath.Join(dir, "data"), Config: filepath.Join(dir, "pgmesh.yml"), Log: filepath.Join(dir, "agent.log")}
			i++
			cfg := fmt.Sprintf(`# pgmesh demo member %s
cluster: %s
group: %s
name: %s
consul:
  address: %s
  service_tags: [demo]
restapi:
  listen: 127.0.0.1:%d
postgresql:
  data_dir: %s
  listen: 127.0.0.1
  port: %d
  superuser: {username: postgres, password: demo-superuser}
  replication: {username: replicator, password: demo-replicator}
  parameters:
    shared_buffers: 32MB
bootstrap:
  dcs:
    ttl: 10s
    loop_wait: 1s
    retry_timeout: 3s
    lock_delay: 1s
log:
  level: info
  format: console
`, name, m.opts.Cluster, group, name, m.Consul, mem.APIPort, mem.DataDir, mem.PGPort)
			if err := os.WriteFile(mem.Config, []byte(cfg), 0o644); err != nil {
				return err
			}
			if _, err := m.spawn(exe, []string{"agent", mem.Config}, mem.Log, true); err != nil {
				return err
			}
			m.members = append(m.members, mem)
		}
	}
	return nil
}

func httpStatus(url string) (int, map[string]any) {
	c := &http.Client{Timeout: time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	var body map[string]any
	json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body
}

func (m *Mesh) waitHealthy(ctx context.Context, timeout time.Duration) error {
	m.say("[3/3] waiting for every group to elect a leader and stream to its replicas")
	deadline := time.Now().Add(timeout)
	reported := map[string]bool{}
	for {
		for i, p := range m.procs[1:] {
			if syscall.Kill(p.Process.Pid, 0) != nil {
				mem := m.members[i]
				return fmt.Errorf("agent %s exited; the end of %s:\n%s", mem.Name, mem.Log, tail(mem.Log, 15))
			}
		}
		ready := 0
		for _, mem := range m.members {
			base := fmt.Sprintf("http://127.0.0.1:%d", mem.APIPort)
			p, _ := httpStatus(base + "/primary")
			r, _ := httpStatus(base + "/replica")
			if p == 200 || r == 200 {
				ready++
				if !reported[mem.Name] {
					role := "replica"
					if p == 200 {
						role = "leader"
					}
					m.say("      %-6s %s ready as %s (postgres 127.0.0.1:%d)", mem.Group, mem.Name, role, mem.PGPort)
					reported[mem.Name] = true
				}
			}
		}
		if ready == len(m.members) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the mesh did not become healthy within %s; agent logs are in %s/*/agent.log", timeout, m.opts.WorkDir)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// Members lists the demo's members.
func (m *Mesh) Members() []*Member { return m.members }

// Options returns the options in force.
func (m *Mesh) Options() Options { return m.opts }

// Stop stops the agents together (each stops its PostgreSQL cleanly), then
// Consul.
func (m *Mesh) Stop() {
	wait := func(cmds []*exec.Cmd, timeout time.Duration) {
		deadline := time.Now().Add(timeout)
		for _, p := range cmds {
			for p.Process != nil && syscall.Kill(p.Process.Pid, 0) == nil {
				if time.Now().After(deadline) {
					syscall.Kill(-p.Process.Pid, syscall.SIGKILL)
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
	if len(m.procs) > 1 {
		agents := m.procs[1:]
		for _, p := range agents {
			p.Process.Signal(syscall.SIGTERM)
		}
		wait(agents, 60*time.Second)
	}
	if len(m.procs) > 0 {
		m.procs[0].Process.Signal(syscall.SIGTERM)
		wait(m.procs[:1], 15*time.Second)
	}
	os.Remove(filepath.Join(m.opts.WorkDir, "pids"))
}
