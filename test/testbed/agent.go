package testbed

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// PgmeshBinary builds cmd/pgmesh once per test process into a directory the
// PostgreSQL OS user can read and returns its path.
func PgmeshBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := RepoRoot()
		if err != nil {
			buildErr = err
			return
		}
		dir, err := os.MkdirTemp("", "pgmesh-bin-")
		if err != nil {
			buildErr = err
			return
		}
		os.Chmod(dir, 0o755)
		buildPath = filepath.Join(dir, "pgmesh")
		args := []string{"build", "-o", buildPath}
		if os.Getenv("PGMESH_TEST_RACE") == "1" {
			args = append(args, "-race")
		}
		cmd := exec.Command("go", append(args, "./cmd/pgmesh")...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build pgmesh: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildPath
}

// AgentSpec describes one member for StartAgent.
type AgentSpec struct {
	Cluster, Group, Name string
	// ConsulAddr is the HTTP address the agent talks to (may be a Proxy).
	ConsulAddr string
	// Dynamic config seeded on first start.
	TTL, LoopWait, RetryTimeout, LockDelay time.Duration
	Tags                                   string // extra YAML under tags:, e.g. "nofailover: true"
	ConsulExtra                            string // extra YAML under consul:, e.g. "session_checks: [liveness]"
	DCSExtra                               string // extra YAML under bootstrap.dcs:, e.g. "synchronous_mode: on"
	ExtraYAML                              string
	// Netns, when set, runs the agent (and so its PostgreSQL and every
	// program it starts) inside this network namespace as the PostgreSQL OS
	// user (ip netns exec … setpriv …); Host is then the member's address
	// there, used for PostgreSQL's and the REST API's listen/connect
	// address. The test reaches the member's PostgreSQL through its Unix
	// socket (see DSN) and its REST API through Host.
	Netns *NetnsMember
	Host  string
	// BinDir is the PostgreSQL bin directory (default PostgresBinDir()).
	BinDir string
	// Env is added to the agent's environment (e.g. PGMESH_FAULT_POINT).
	Env []string
	// RestAPIExtra is extra YAML under restapi: (e.g. "username: u").
	// RestAPIAnyAddress makes the REST API listen on every address (its
	// connect address stays 127.0.0.1), as a production member does.
	RestAPIExtra      string
	RestAPIAnyAddress bool
	// APITLS makes the REST API speak HTTPS with these certificates (and
	// APIStatus use them).
	APITLS *APITLS
}

func (s AgentSpec) binDir() string {
	if s.BinDir != "" {
		return s.BinDir
	}
	return PostgresBinDir()
}

// Agent is a running pgmesh agent process with its PostgreSQL.
type Agent struct {
	Spec     AgentSpec
	Dir      string
	DataDir  string
	PGPort   int
	APIAddr  string
	LogPath  string
	CfgPath  string
	bin      string
	t        testing.TB
	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{}
	exitCode int
}

// StartAgent writes the member's config and starts `pgmesh agent` as the
// PostgreSQL OS user.
func StartAgent(t testing.TB, spec AgentSpec) *Agent {
	t.Helper()
	a := NewAgent(t, spec)
	a.Start()
	return a
}

// NewAgent prepares an agent without starting it.
func NewAgent(t testing.TB, spec AgentSpec) *Agent {
	t.Helper()
	if spec.TTL == 0 {
		spec.TTL = 4 * time.Second
	}
	if spec.LoopWait == 0 {
		spec.LoopWait = time.Second
	}
	if spec.RetryTimeout == 0 {
		spec.RetryTimeout = 1500 * time.Millisecond
	}
	dir := OwnedDir(t)
	a := &Agent{
		Spec: spec, Dir: dir, DataDir: filepath.Join(dir, "data"), PGPort: FreePort(t),
		APIAddr: fmt.Sprintf("%s:%d", spec.host(), FreePort(t)), LogPath: filepath.Join(dir, "agent.log"),
		CfgPath: filepath.Join(dir, "pgmesh.yml"), bin: PgmeshBinary(t), t: t,
	}
	tags := indent(spec.Tags)
	restExtra := indent(spec.RestAPIExtra)
	if spec.APITLS != nil {
		restExtra += indent(spec.APITLS.RestAPIYAML())
	}
	if spec.Netns != nil {
		// The namespace members' REST APIs listen on their bridge address,
		// beyond loopback; the partition tests post to them without
		// credentials (the loud opt-out, see README "Security").
		restExtra += "  allow_unauthenticated: true\n"
	}
	cfg := fmt.Sprintf(`cluster: %s
group: %s
name: %s
consul:
  address: %s
%srestapi:
  listen: %s
%spostgresql:
  data_dir: %s
  bin_dir: %s
  listen: 127.0.0.1
  port: %d
  superuser: {username: postgres, password: "super secret"}
  replication: {username: replicator, password: "rep'l pass"}
  parameters:
    fsync: "off"
tags:
%sbootstrap:
  dcs:
    ttl: %s
    loop_wait: %s
    retry_timeout: %s
    lock_delay: %s
%slog:
  level: debug
  format: json
%s`, spec.Cluster, spec.Group, spec.Name, spec.ConsulAddr, indent(spec.ConsulExtra), a.APIAddr, restExtra, a.DataDir, spec.binDir(), a.PGPort,
		tags, spec.TTL, spec.LoopWait, spec.RetryTimeout, spec.LockDelay, indent(indent(spec.DCSExtra)), spec.ExtraYAML)
	if spec.RestAPIAnyAddress {
		_, port, _ := net.SplitHostPort(a.APIAddr)
		cfg = strings.Replace(cfg, "restapi:\n  listen: "+a.APIAddr+"\n", "restapi:\n  listen: 0.0.0.0:"+port+"\n  connect_address: "+a.APIAddr+"\n", 1)
	}
	if spec.Host != "" {
		cfg = strings.Replace(cfg, "\n  listen: 127.0.0.1\n", "\n  listen: "+spec.Host+"\n", 1)
	}
	if err := os.WriteFile(a.CfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	DumpOnFailure(t, "agent "+spec.Name, a.LogPath)
	DumpOnFailure(t, "postgres "+spec.Name, a.DataDir+".log")
	t.Cleanup(a.cleanup)
	return a
}

// Start starts (or restarts) the agent process.
func (a *Agent) Start() {
	a.t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	logf, err := os.OpenFile(a.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		a.t.Fatal(err)
	}
	cmd := exec.Command(a.bin, "agent", a.CfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	u, err := PostgresOSUser()
	if err != nil {
		a.t.Fatal(err)
	}
	AsUser(cmd, u)
	if a.Spec.Netns != nil {
		// setpriv switches the user inside the namespace; no Credential.
		cmd = a.Spec.Netns.Command(u, a.bin, "agent", a.CfgPath)
		cmd.Stdout, cmd.Stderr = logf, logf
	}
	if len(a.Spec.Env) > 0 {
		cmd.Env = append(os.Environ(), a.Spec.Env...)
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		logf.Close()
		a.t.Fatalf("start agent %s: %v", a.Spec.Name, err)
	}
	done := make(chan struct{})
	a.cmd, a.done = cmd, done
	go func() {
		cmd.Wait()
		logf.Close()
		a.mu.Lock()
		a.exitCode = cmd.ProcessState.ExitCode()
		a.mu.Unlock()
		close(done)
	}()
}

// Signal sends sig to the agent process only.
func (a *Agent) Signal(sig syscall.Signal) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd != nil && a.cmd.Process != nil {
		a.cmd.Process.Signal(sig)
	}
}

// Wait waits for the agent to exit and returns its exit code.
func (a *Agent) Wait(timeout time.Duration) (int, bool) {
	a.mu.Lock()
	done := a.done
	a.mu.Unlock()
	if done == nil {
		return 0, true
	}
	if timeout <= 0 {
		select {
		case <-done:
			a.mu.Lock()
			defer a.mu.Unlock()
			return a.exitCode, true
		default:
			return 0, false
		}
	}
	select {
	case <-done:
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.exitCode, true
	case <-time.After(timeout):
		return 0, false
	}
}

// Stop asks the agent to shut down (SIGTERM) and waits.
func (a *Agent) Stop() {
	a.Signal(syscall.SIGTERM)
	if _, ok := a.Wait(60 * time.Second); !ok {
		a.Signal(syscall.SIGKILL)
		a.Wait(10 * time.Second)
	}
}

// PostmasterPID reads the postmaster's pid (0 if not running).
func (a *Agent) PostmasterPID() int {
	data, err := os.ReadFile(filepath.Join(a.DataDir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	var pid int
	fmt.Sscanf(string(data), "%d", &pid)
	if pid > 0 && syscall.Kill(pid, 0) != nil {
		return 0
	}
	return pid
}

// KillHost simulates the member's host dying: SIGKILL to the agent, its
// fence watchdog and the postmaster (and so every backend) at once.
func (a *Agent) KillHost() {
	pm := a.PostmasterPID()
	a.mu.Lock()
	if a.cmd != nil && a.cmd.Process != nil {
		syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL)
	}
	a.mu.Unlock()
	for _, pid := range a.watchdogPIDs() {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	if pm > 0 {
		syscall.Kill(pm, syscall.SIGKILL)
		// Backends of a SIGKILLed postmaster linger until they notice; a
		// dead host has none.
		exec.Command("pkill", "-9", "-f", "postgres: "+a.Spec.Name+":").Run()
		exec.Command("pkill", "-9", "-P", fmt.Sprint(pm)).Run()
	}
	a.Wait(10 * time.Second)
}

func (a *Agent) watchdogPIDs() []int {
	out, _ := exec.Command("pgrep", "-f", "fence-watchdog --data-dir "+a.DataDir).Output()
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		var p int
		fmt.Sscanf(f, "%d", &p)
		if p > 0 {
			pids = append(pids, p)
		}
	}
	return pids
}

func (a *Agent) cleanup() {
	a.Signal(syscall.SIGKILL)
	a.Wait(10 * time.Second)
	for _, pid := range a.watchdogPIDs() {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	if pid := a.PostmasterPID(); pid > 0 {
		syscall.Kill(pid, syscall.SIGQUIT)
		for i := 0; i < 50 && syscall.Kill(pid, 0) == nil; i++ {
			time.Sleep(100 * time.Millisecond)
		}
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// DSN is the superuser connection string of the member's PostgreSQL.
func (a *Agent) DSN() string {
	if a.Spec.Netns != nil {
		return a.socketDSN()
	}
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password='super secret' dbname=postgres sslmode=disable connect_timeout=2", a.PGPort)
}

// Connect opens a connection to the member's PostgreSQL.
func (a *Agent) Connect(ctx context.Context) (*pgx.Conn, error) {
	return pgx.Connect(ctx, a.DSN())
}

// Exec runs one statement on the member.
func (a *Agent) Exec(ctx context.Context, sql string, args ...any) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := a.Connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	_, err = c.Exec(ctx, sql, args...)
	return err
}

// IsWritable reports whether the member's PostgreSQL accepts writes right
// now (connects and is not in recovery).
func (a *Agent) IsWritable(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := a.Connect(ctx)
	if err != nil {
		return false, err
	}
	defer c.Close(context.Background())
	var inRecovery bool
	if err := c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
		return false, err
	}
	return !inRecovery, nil
}

// APIStatus GETs path on the member's REST API and returns the HTTP status
// and decoded JSON body (nil if not JSON).
func (a *Agent) APIStatus(path string) (int, map[string]any, error) {
	client := &http.Client{Timeout: 2 * time.Second}
	if a.Spec.APITLS != nil {
		client = a.Spec.APITLS.Client(2 * time.Second)
	}
	resp, err := client.Get(a.APIURL() + path)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	var body map[string]any
	json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body, nil
}

// APIURL is the member's REST API base URL (https with APITLS).
func (a *Agent) APIURL() string {
	if a.Spec.APITLS != nil {
		return "https://" + a.APIAddr
	}
	return "http://" + a.APIAddr
}

// InitDataDir runs a plain initdb into the agent's data dir, giving it a
// data directory that belongs to no pgmesh group (a foreign system id).
func (a *Agent) InitDataDir() {
	a.t.Helper()
	cmd := exec.Command(filepath.Join(PostgresBinDir(), "initdb"), "-D", a.DataDir, "-U", "postgres", "--auth=trust", "--no-sync")
	u, err := PostgresOSUser()
	if err != nil {
		a.t.Fatal(err)
	}
	AsUser(cmd, u)
	if out, err := cmd.CombinedOutput(); err != nil {
		a.t.Fatalf("initdb: %v\n%s", err, out)
	}
}

// Log returns the agent's log so far.
func (a *Agent) Log() string {
	data, _ := os.ReadFile(a.LogPath)
	return string(data)
}

func indent(yaml string) string {
	out := ""
	if yaml == "" {
		return out
	}
	for _, l := range strings.Split(strings.TrimRight(yaml, "\n"), "\n") {
		out += "  " + l + "\n"
	}
	return out
}
