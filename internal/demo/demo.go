// Package demo brings up a complete pgmesh mesh on one machine: a real
// Consul agent and groups × members of PostgreSQL 15, each managed by a
// pgmesh agent process, all on loopback. It is what `pgmesh demo` runs, and
// what the benchmarks in bench/ build on: Options set the HA timings and
// session checks, and Mesh can kill a member's "host" (agent, fence
// watchdog, postmaster and backends at once), restart a member, and report
// the processes' PIDs.
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
	"sort"
	"strconv"
	"strings"
	"sync"
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

	// PgmeshBin is the pgmesh binary the agents run (default: the running
	// executable, i.e. `pgmesh demo` itself). When the demo runs as root it
	// must be readable and executable by OSUser.
	PgmeshBin string
	// The dynamic configuration the agents seed (bootstrap.dcs). Zero
	// values keep the demo's own settings: ttl 10s, loop_wait 1s,
	// retry_timeout 3s; lock_delay 0 (pgmesh's default; sessions get 1ms).
	TTL, LoopWait, RetryTimeout, LockDelay time.Duration
	// SessionChecks go to consul.session_checks (e.g. ["liveness"]); nil
	// leaves it unset (automatic), empty is TTL only.
	SessionChecks []string
	// MemberConsul, if set, returns the Consul HTTP address the member's
	// agent talks to (e.g. a proxy in front of Consul); "" means Consul
	// itself.
	MemberConsul func(group, member string) string
	// LogLevel of the agents (default info).
	LogLevel string
	// Parameters are added to every member's PostgreSQL parameters (the
	// demo sets shared_buffers 32MB).
	Parameters map[string]string
	// ConsulExtraHCL is appended to Consul's configuration (e.g. a
	// limits block for a load generator).
	ConsulExtraHCL string
	// Replication between the groups: "none", "native" (publications and
	// subscriptions) or "spock" (pgEdge Spock; needs BinDir to be a
	// PostgreSQL with Spock). Empty: "none".
	Replication string
	// BinDir is the PostgreSQL bin directory of every member (default
	// /usr/lib/postgresql/15/bin).
	BinDir string
	// Secure runs the REST APIs over HTTPS (a CA made for the demo) with
	// basic auth on mutating requests; see Mesh.Secure.
	Secure bool
	// Datacenters is the number of Consul datacenters (dc1..dcN, one
	// Consul server each, WAN-joined on loopback); group i (from 0) lives
	// in datacenter i mod N. 0 or 1: one datacenter, the usual demo. See
	// Datacenter for the ports.
	Datacenters int
}

// Member is one demo member.
type Member struct {
	Group, Name string
	// Datacenter is the Consul datacenter the member's group lives in (its
	// agent talks to that datacenter's Consul).
	Datacenter string
	PGPort     int
	APIPort    int
	DataDir    string
	Config     string
	Log        string

	// The agent process currently running for the member (guarded by
	// Mesh.mu); done is closed when it has exited.
	cmd  *exec.Cmd
	done chan struct{}
}

// Mesh is a running demo.
type Mesh struct {
	opts    Options
	members []*Member
	// dcs are the Consul datacenters, dc1 first.
	dcs  []*Datacenter
	cred *syscall.Credential
	// Consul is the HTTP address of the first datacenter's Consul (the
	// only one unless Options.Datacenters > 1).
	Consul string
	secure *Secure
	// apiClient reads the members' REST APIs (HTTPS with the demo CA when
	// secure).
	apiClient *http.Client

	mu sync.Mutex
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
	if o.TTL == 0 {
		o.TTL = 10 * time.Second
	}
	if o.LoopWait == 0 {
		o.LoopWait = time.Second
	}
	if o.RetryTimeout == 0 {
		o.RetryTimeout = 3 * time.Second
	}
	if o.LogLevel == "" {
		o.LogLevel = "info"
	}
	if o.PgmeshBin == "" {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		o.PgmeshBin = exe
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
	m, err := prepare(opts, false)
	if err != nil {
		return nil, err
	}
	if opts.Secure {
		if err := m.setupSecure(); err != nil {
			m.Stop()
			return nil, fmt.Errorf("--secure: %w", err)
		}
	}
	if err := m.startConsul(ctx); err != nil {
		m.Stop()
		return nil, err
	}
	if err := m.startAgents(); err != nil {
		m.Stop()
		return nil, err
	}
	if err := m.waitHealthy(ctx, 3*time.Minute, false); err != nil {
		m.Stop()
		return nil, err
	}
	return m, nil
}

// StartConsul starts only the demo's Consul (no members): the same agent
// configuration (session_ttl_min 1s, DNS without caching) for tools that
// bring their own clients, such as the scale benchmark. Stop stops it.
func StartConsul(ctx context.Context, opts Options) (*Mesh, error) {
	m, err := prepare(opts, true)
	if err != nil {
		return nil, err
	}
	if err := m.startConsul(ctx); err != nil {
		m.Stop()
		return nil, err
	}
	return m, nil
}

// prepare fills the defaults, checks the OS user, the work dir and the
// ports, and cleans what a previous run left behind.
func prepare(opts Options, consulOnly bool) (*Mesh, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	if consulOnly {
		opts.Groups, opts.Members = 0, 0
	} else if opts.Datacenters > opts.Groups {
		return nil, fmt.Errorf("%d datacenters for %d groups: every datacenter needs a group (use at most --groups datacenters)", opts.Datacenters, opts.Groups)
	}
	m := &Mesh{opts: opts, apiClient: &http.Client{Timeout: time.Second}}
	m.dcs = m.opts.planDatacenters()
	m.Consul = m.dcs[0].HTTPAddr()
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
		// A Consul the user started again by hand is no child of the demo.
		for _, d := range m.dcs {
			if pid := consulFromPIDFile(d); pid > 0 {
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
	var ports []int
	what := map[int]string{}
	add := func(p int, format string, args ...any) error {
		w := fmt.Sprintf(format, args...)
		if prev, ok := what[p]; ok {
			return fmt.Errorf("port %d would be both %s and %s: move one of --consul-port, --dns-port, --pg-port, --api-port", p, prev, w)
		}
		what[p] = w
		ports = append(ports, p)
		return nil
	}
	for _, d := range m.dcs {
		for _, e := range []struct {
			p    int
			name string
		}{{d.HTTPPort, "HTTP"}, {d.DNSPort, "DNS"}, {d.ServerPort, "server"}, {d.SerfLANPort, "serf LAN"}, {d.SerfWANPort, "serf WAN"}} {
			if err := add(e.p, "%s's Consul %s port", d.Name, e.name); err != nil {
				return err
			}
		}
	}
	for i := 0; i < m.opts.Groups*m.opts.Members; i++ {
		if err := add(m.opts.PGBasePort+i, "a PostgreSQL port"); err != nil {
			return err
		}
		if err := add(m.opts.APIBasePort+i, "a REST API port"); err != nil {
			return err
		}
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

// spawn starts a process in its own process group with its output appended
// to logPath. done is closed once it has exited (and been reaped).
func (m *Mesh) spawn(name string, args []string, logPath string, asPG bool) (*exec.Cmd, chan struct{}, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, err
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
		return nil, nil, fmt.Errorf("start %s: %w", name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	m.recordPID(cmd.Process.Pid)
	return cmd, done, nil
}

func (m *Mesh) agentConfig(mem *Member) string {
	consul := m.Datacenter(mem.Datacenter).HTTPAddr()
	if m.opts.MemberConsul != nil {
		if a := m.opts.MemberConsul(mem.Group, mem.Name); a != "" {
			consul = a
		}
	}
	checks := ""
	if m.opts.SessionChecks != nil {
		// Empty: TTL only; nil (not written): automatic.
		checks = fmt.Sprintf("  session_checks: [%s]\n", strings.Join(m.opts.SessionChecks, ", "))
	}
	params := map[string]string{"shared_buffers": "32MB"}
	for k, v := range m.opts.Parameters {
		params[k] = v
	}
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var pl strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&pl, "    %s: %q\n", k, params[k])
	}
	binDir, repl := "", ""
	if m.opts.BinDir != "" {
		binDir = fmt.Sprintf("  bin_dir: %s\n", m.opts.BinDir)
	}
	if r := m.opts.Replication; r != "" && r != consulkv.ReplicationNone {
		repl = fmt.Sprintf("    replication: %s\n", r)
	}
	secConsul, secREST := m.secureAgentYAML()
	dcConsul, dcDCS := "", ""
	if m.multiDC() {
		dcConsul = fmt.Sprintf("  datacenter: %s\n", mem.Datacenter)
		dcDCS = fmt.Sprintf("    datacenters: [%s]\n", strings.Join(m.DatacenterNames(), ", "))
	}
	return fmt.Sprintf(`# pgmesh demo member %s
cluster: %s
group: %s
name: %s
consul:
  address: %s
%s  service_tags: [demo]
%s%srestapi:
  listen: 127.0.0.1:%d
%spostgresql:
  data_dir: %s
%s  listen: 127.0.0.1
  port: %d
  superuser: {username: postgres, password: demo-superuser}
  replication: {username: replicator, password: demo-replicator}
  parameters:
%sbootstrap:
  dcs:
    ttl: %s
    loop_wait: %s
    retry_timeout: %s
    lock_delay: %s
%s%slog:
  level: %s
  format: console
`, mem.Name, m.opts.Cluster, mem.Group, mem.Name, consul, dcConsul, checks, secConsul, mem.APIPort, secREST, mem.DataDir, binDir, mem.PGPort, pl.String(),
		m.opts.TTL, m.opts.LoopWait, m.opts.RetryTimeout, m.opts.LockDelay, repl, dcDCS, m.opts.LogLevel)
}

func (m *Mesh) startAgents() error {
	m.say("[2/3] starting %d groups x %d members (PostgreSQL 15 + pgmesh agent each)", m.opts.Groups, m.opts.Members)
	i := 0
	for g := 1; g <= m.opts.Groups; g++ {
		group := fmt.Sprintf("n%d", g)
		dc := m.datacenterOf(g - 1)
		dc.Groups = append(dc.Groups, group)
		if m.multiDC() {
			m.say("      group %s in %s (its agents use %s's Consul, %s)", group, dc.Name, dc.Name, dc.HTTPAddr())
		}
		for k := 0; k < m.opts.Members; k++ {
			name := fmt.Sprintf("%s-%c", group, 'a'+k)
			dir := filepath.Join(m.opts.WorkDir, name)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			if err := m.own(dir); err != nil {
				return err
			}
			mem := &Member{Group: group, Datacenter: dc.Name, Name: name, PGPort: m.opts.PGBasePort + i, APIPort: m.opts.APIBasePort + i,
				DataDir: filepath.Join(dir, "data"), Config: filepath.Join(dir, "pgmesh.yml"), Log: filepath.Join(dir, "agent.log")}
			i++
			if err := os.WriteFile(mem.Config, []byte(m.agentConfig(mem)), 0o644); err != nil {
				return err
			}
			m.members = append(m.members, mem)
			if err := m.StartMember(mem); err != nil {
				return err
			}
		}
	}
	return nil
}

// StartMember starts the member's agent (again, e.g. after KillHost or
// StopMember); its log is appended to. It is a no-op while the agent runs.
func (m *Mesh) StartMember(mem *Member) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if mem.done != nil {
		select {
		case <-mem.done:
		default:
			return nil
		}
	}
	cmd, done, err := m.spawn(m.opts.PgmeshBin, []string{"agent", mem.Config}, mem.Log, true)
	if err != nil {
		return err
	}
	mem.cmd, mem.done = cmd, done
	return nil
}

// AgentRunning reports whether the member's agent process is alive.
func (m *Mesh) AgentRunning(mem *Member) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if mem.done == nil {
		return false
	}
	select {
	case <-mem.done:
		return false
	default:
		return true
	}
}

// AgentPID is the pid of the member's agent process (0 when it is not
// running).
func (m *Mesh) AgentPID(mem *Member) int {
	if !m.AgentRunning(mem) {
		return 0
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return mem.cmd.Process.Pid
}

// ConsulPID is the pid of the demo's (first datacenter's) Consul agent (0
// when not running).
func (m *Mesh) ConsulPID() int { return m.ConsulPIDOf(m.dcs[0]) }

// DNSAddr is the (first datacenter's) Consul DNS server's address.
func (m *Mesh) DNSAddr() string { return m.dcs[0].DNSAddr() }

// DSN is a libpq connection string for the member's PostgreSQL as the
// demo's superuser.
func (m *Mesh) DSN(mem *Member) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=demo-superuser dbname=postgres sslmode=disable connect_timeout=2", mem.PGPort)
}

// PostmasterPID is the pid of the member's running postmaster (0 if none).
func (m *Mesh) PostmasterPID(mem *Member) int {
	data, err := os.ReadFile(filepath.Join(mem.DataDir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(data), "\n", 2)[0]))
	if pid <= 1 || !procAlive(pid) {
		return 0
	}
	// A recycled pid is not our postmaster: it runs in the data dir.
	if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid)); err != nil || filepath.Clean(cwd) != filepath.Clean(mem.DataDir) {
		return 0
	}
	return pid
}

// WatchdogPIDs are the pids of the member's fence watchdog (`pgmesh
// fence-watchdog --data-dir <its data dir>`), normally one.
func (m *Mesh) WatchdogPIDs(mem *Member) []int {
	var pids []int
	for _, p := range listProcs() {
		a := p.argv
		if len(a) >= 4 && a[len(a)-3] == "fence-watchdog" && a[len(a)-2] == "--data-dir" && filepath.Clean(a[len(a)-1]) == filepath.Clean(mem.DataDir) {
			pids = append(pids, p.pid)
		}
	}
	return pids
}

// KillHost simulates the member's host dying: the agent (its whole process
// group), its fence watchdog, the postmaster and every postmaster child are
// first stopped (SIGSTOP, so nothing can react or fork) and then killed with
// SIGKILL together. It returns the instant of the SIGKILLs.
func (m *Mesh) KillHost(mem *Member) (time.Time, error) {
	agent := m.AgentPID(mem)
	pm := m.PostmasterPID(mem)
	wds := m.WatchdogPIDs(mem)
	if agent == 0 && pm == 0 {
		return time.Time{}, fmt.Errorf("kill host %s: neither agent nor postmaster is running", mem.Name)
	}
	groups := []int{}
	if agent > 0 {
		groups = append(groups, agent)
	}
	groups = append(groups, wds...)
	if pm > 0 {
		groups = append(groups, pm)
	}
	for _, g := range groups {
		syscall.Kill(-g, syscall.SIGSTOP)
		syscall.Kill(g, syscall.SIGSTOP)
	}
	// Postmaster children run in their own sessions: find them by parent.
	var kids []int
	if pm > 0 {
		for _, p := range listProcs() {
			if p.ppid == pm {
				kids = append(kids, p.pid)
			}
		}
	}
	at := time.Now()
	for _, g := range append(groups, kids...) {
		syscall.Kill(-g, syscall.SIGKILL)
		syscall.Kill(g, syscall.SIGKILL)
	}
	m.mu.Lock()
	done := mem.done
	m.mu.Unlock()
	if done != nil {
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			return at, fmt.Errorf("kill host %s: agent did not exit after SIGKILL", mem.Name)
		}
	}
	return at, nil
}

// StopMember stops the member's agent with SIGTERM (it stops PostgreSQL
// cleanly; a leader hands over first) and waits up to timeout, then kills
// what is left of the member.
func (m *Mesh) StopMember(mem *Member, timeout time.Duration) {
	m.mu.Lock()
	cmd, done := mem.cmd, mem.done
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(timeout):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	m.killLeftovers(mem)
}

// killLeftovers kills a member's watchdog and postmaster that outlived its
// agent (after a SIGKILL of the agent, or an agent that hung on stop).
func (m *Mesh) killLeftovers(mem *Member) {
	for _, pid := range m.WatchdogPIDs(mem) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	if pid := m.PostmasterPID(mem); pid > 0 {
		syscall.Kill(pid, syscall.SIGQUIT)
		for i := 0; i < 50 && m.PostmasterPID(mem) > 0; i++ {
			time.Sleep(100 * time.Millisecond)
		}
		if pid := m.PostmasterPID(mem); pid > 0 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

type procInfo struct {
	pid, ppid int
	argv      []string
}

// listProcs reads every process's pid, parent and command line from /proc.
func listProcs() []procInfo {
	ents, _ := os.ReadDir("/proc")
	var out []procInfo
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// The command name may contain spaces and parentheses: the fields
		// after it start behind the last ')'.
		i := strings.LastIndexByte(string(stat), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 2 || f[0] == "Z" {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		argv := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		out = append(out, procInfo{pid: pid, ppid: ppid, argv: argv})
	}
	return out
}

// procAlive reports whether pid exists and is not a zombie.
func procAlive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 || i+3 > len(stat) {
		return false
	}
	return stat[i+2] != 'Z' && stat[i+2] != 'X'
}

func (m *Mesh) httpStatus(url string) (int, map[string]any) {
	resp, err := m.apiClient.Get(url)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	var body map[string]any
	json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body
}

// WaitHealthy waits until every group has a writable leader and every
// other member is a streaming replica (as their REST APIs say), e.g. after
// a member was restarted.
func (m *Mesh) WaitHealthy(ctx context.Context, timeout time.Duration) error {
	return m.waitHealthy(ctx, timeout, true)
}

func (m *Mesh) waitHealthy(ctx context.Context, timeout time.Duration, quiet bool) error {
	if !quiet {
		m.say("[3/3] waiting for every group to elect a leader and stream to its replicas")
	}
	deadline := time.Now().Add(timeout)
	reported := map[string]bool{}
	for {
		for _, mem := range m.members {
			if !m.AgentRunning(mem) {
				return fmt.Errorf("agent %s exited; the end of %s:\n%s", mem.Name, mem.Log, tail(mem.Log, 15))
			}
		}
		ready := 0
		for _, mem := range m.members {
			base := m.APIURL(mem)
			p, _ := m.httpStatus(base + "/primary")
			r, _ := m.httpStatus(base + "/replica")
			if p == 200 || r == 200 {
				ready++
				if !reported[mem.Name] && !quiet {
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
// every datacenter's Consul. Watchdogs and postmasters that outlived their agent (a killed
// host, an agent that did not stop in time) are killed too. Stop may be
// called more than once.
func (m *Mesh) Stop() {
	m.mu.Lock()
	type running struct {
		mem  *Member
		cmd  *exec.Cmd
		done chan struct{}
	}
	var agents []running
	for _, mem := range m.members {
		if mem.cmd != nil {
			agents = append(agents, running{mem, mem.cmd, mem.done})
		}
	}
	m.mu.Unlock()
	for _, a := range agents {
		a.cmd.Process.Signal(syscall.SIGTERM)
	}
	deadline := time.After(60 * time.Second)
	for _, a := range agents {
		select {
		case <-a.done:
		case <-deadline:
			syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL)
			<-a.done
		}
	}
	for _, mem := range m.members {
		m.killLeftovers(mem)
	}
	var wg sync.WaitGroup
	for _, d := range m.dcs {
		wg.Add(1)
		go func(d *Datacenter) { defer wg.Done(); m.StopConsul(d, 15*time.Second) }(d)
	}
	wg.Wait()
	os.Remove(filepath.Join(m.opts.WorkDir, "pids"))
}
