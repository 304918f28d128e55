package testbed

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// HAProxyBinary finds HAProxy: $PGMESH_HAPROXY_BIN, else haproxy on PATH
// (scripts/setup installs Debian's).
func HAProxyBinary() (string, error) {
	if p := os.Getenv("PGMESH_HAPROXY_BIN"); p != "" {
		return p, nil
	}
	for _, p := range []string{"haproxy", "/usr/sbin/haproxy"} {
		if path, err := exec.LookPath(p); err == nil {
			return path, nil
		}
	}
	return "", fmt.Errorf("testbed: haproxy not found; run scripts/setup (it installs Debian's haproxy)")
}

// ConsulTemplateBinary finds consul-template: $PGMESH_CONSUL_TEMPLATE_BIN,
// else the one scripts/setup builds into .cache/bin, else PATH.
func ConsulTemplateBinary() (string, error) {
	if p := os.Getenv("PGMESH_CONSUL_TEMPLATE_BIN"); p != "" {
		return p, nil
	}
	if root, err := RepoRoot(); err == nil {
		p := filepath.Join(root, ".cache", "bin", "consul-template")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("consul-template"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("testbed: consul-template not found; run scripts/setup (it builds v0.41.1 into .cache/bin)")
}

// HAProxy is a real HAProxy in master-worker mode (haproxy -W -db), so
// Reload works like systemd's reload: SIGUSR2 to the master, which starts a
// new worker with the re-read configuration.
type HAProxy struct {
	CfgPath string
	PidFile string
	LogPath string

	t    testing.TB
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// StartHAProxy runs HAProxy on cfgPath (as the test's user; root is fine)
// and waits until its first worker loaded the configuration. It is stopped
// at cleanup and its log is dumped when the test fails.
func StartHAProxy(t testing.TB, cfgPath string) *HAProxy {
	t.Helper()
	bin, err := HAProxyBinary()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	h := &HAProxy{CfgPath: cfgPath, PidFile: filepath.Join(dir, "haproxy.pid"), LogPath: filepath.Join(dir, "haproxy.log"), t: t}
	logf, err := os.OpenFile(h.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-W", "-db", "-f", cfgPath, "-p", h.PidFile)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	DumpOnFailure(t, "haproxy", h.LogPath)
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("testbed: start haproxy: %v", err)
	}
	h.cmd, h.done = cmd, make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(h.done) }()
	t.Cleanup(h.Stop)
	if err := h.waitLoaded(1, 0, 15*time.Second); err != nil {
		t.Fatalf("testbed: haproxy did not start: %v", err)
	}
	return h
}

// Pid is the master's pid (what SIGUSR2 goes to).
func (h *HAProxy) Pid() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cmd == nil || h.cmd.Process == nil {
		return 0
	}
	return h.cmd.Process.Pid
}

// ReloadCommand is a shell command that reloads this HAProxy, for a
// renderer's reload hook.
func (h *HAProxy) ReloadCommand() string { return fmt.Sprintf("kill -USR2 %d", h.Pid()) }

// Reload asks the master to reload and waits until the new worker loaded
// the configuration (or the master reported a failure).
func (h *HAProxy) Reload() error {
	log := h.Log()
	n, failed := strings.Count(log, "Loading success."), strings.Count(log, "Loading failure")
	if err := syscall.Kill(h.Pid(), syscall.SIGUSR2); err != nil {
		return err
	}
	return h.waitLoaded(n+1, failed, 15*time.Second)
}

// Loads counts the configurations the master loaded successfully so far
// (1 after start, +1 per reload, whoever sent it).
func (h *HAProxy) Loads() int { return h.loads() }

func (h *HAProxy) loads() int { return strings.Count(h.Log(), "Loading success.") }

func (h *HAProxy) waitLoaded(n, failedBefore int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		log := h.Log()
		if strings.Count(log, "Loading success.") >= n {
			return nil
		}
		if strings.Count(log, "Loading failure") > failedBefore {
			return fmt.Errorf("loading failed:\n%s", log)
		}
		select {
		case <-h.done:
			return fmt.Errorf("haproxy exited:\n%s", log)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("configuration not loaded after %s", timeout)
}

// Log returns HAProxy's output so far.
func (h *HAProxy) Log() string {
	b, _ := os.ReadFile(h.LogPath)
	return string(b)
}

// Stop stops the master and its workers (idempotent).
func (h *HAProxy) Stop() {
	h.mu.Lock()
	cmd := h.cmd
	h.cmd = nil
	h.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-h.done
	}
}
