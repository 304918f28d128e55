package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// demoRouting is the demo's HAProxy fed by `pgmesh render`: the renderer
// renders once (so HAProxy starts with a valid config), HAProxy starts in
// master-worker mode, then the renderer keeps watching Consul and reloads
// HAProxy (SIGUSR2 to the master) only when the output changes, pushing
// primary changes through the runtime socket meanwhile.
type demoRouting struct {
	dir        string
	write      int
	read       int
	stats      int
	groupBase  int
	haproxy    *exec.Cmd
	renderer   *exec.Cmd
	renderLog  string
	haproxyLog string
}

// datacenters, when more than one, are the Consul datacenters the renderer
// reads (a `pgmesh demo --datacenters` mesh): it then lists every
// datacenter's groups, the nearest first after the local datacenter's.
func startDemoRouting(ctx context.Context, workDir, consulAddr, cluster, localGroup string, base int, apiCAFile string, datacenters []string) (*demoRouting, error) {
	haproxyBin, err := exec.LookPath("haproxy")
	if err != nil {
		return nil, fmt.Errorf("haproxy not found (scripts/setup installs it): %w", err)
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	r := &demoRouting{dir: filepath.Join(workDir, "haproxy"), write: base, read: base + 1, stats: base + 2, groupBase: base + 10}
	for _, p := range []int{r.write, r.read, r.stats, r.groupBase, r.groupBase + 1, r.groupBase + 2} {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			return nil, fmt.Errorf("haproxy port %d is in use (--haproxy-port moves them): %w", p, err)
		}
		l.Close()
	}
	if err := os.MkdirAll(r.dir, 0o755); err != nil {
		return nil, err
	}
	cfg := filepath.Join(r.dir, "haproxy.cfg")
	pidFile := filepath.Join(r.dir, "haproxy.pid")
	socket := filepath.Join(r.dir, "admin.sock")
	r.renderLog = filepath.Join(r.dir, "render.log")
	r.haproxyLog = filepath.Join(r.dir, "haproxy.log")
	apiCA := ""
	if apiCAFile != "" {
		apiCA = fmt.Sprintf("  api_ca_file: %s\n", apiCAFile)
	}
	dcs := ""
	if len(datacenters) > 1 {
		dcs = fmt.Sprintf("datacenters: [%s]\n", strings.Join(datacenters, ", "))
	}
	yml := fmt.Sprintf(`# pgmesh demo: HAProxy routing rendered from the live mesh
cluster: %s
local_group: %s
%sconsul: {address: %q}
log: {level: info, format: console}
data:
  bind: 127.0.0.1
  socket: %s
  max_lag: 16MB
  ports: {write: %d, read: %d, stats: %d, group_base: %d}
%stemplates:
  - template: builtin:haproxy.cfg.tmpl
    destination: %s
    validate: haproxy -c -q -f {{file}}
    reload: kill -USR2 $(cat %s) 2>/dev/null || true
    haproxy_socket: %s
  - template: builtin:pg_service.conf.tmpl
    destination: %s
`, cluster, localGroup, dcs, consulAddr, socket, r.write, r.read, r.stats, r.groupBase, apiCA, cfg, pidFile, socket, filepath.Join(r.dir, "pg_service.conf"))
	renderCfg := filepath.Join(r.dir, "render.yml")
	if err := os.WriteFile(renderCfg, []byte(yml), 0o644); err != nil {
		return nil, err
	}
	once := exec.CommandContext(ctx, exe, "render", "--config", renderCfg, "--once")
	if out, err := once.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("first render failed: %v\n%s", err, out)
	}
	hlog, err := os.OpenFile(r.haproxyLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	r.haproxy = exec.Command(haproxyBin, "-W", "-db", "-f", cfg, "-p", pidFile)
	r.haproxy.Stdout, r.haproxy.Stderr = hlog, hlog
	r.haproxy.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := r.haproxy.Start(); err != nil {
		hlog.Close()
		return nil, fmt.Errorf("start haproxy: %w", err)
	}
	go func() { r.haproxy.Wait(); hlog.Close() }()
	rlog, err := os.OpenFile(r.renderLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		r.stop()
		return nil, err
	}
	r.renderer = exec.Command(exe, "render", "--config", renderCfg)
	r.renderer.Stdout, r.renderer.Stderr = rlog, rlog
	r.renderer.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := r.renderer.Start(); err != nil {
		rlog.Close()
		r.stop()
		return nil, fmt.Errorf("start renderer: %w", err)
	}
	go func() { r.renderer.Wait(); rlog.Close() }()
	// Recorded where the demo records its own children, so a demo started
	// after a crash stops these too.
	if f, err := os.OpenFile(filepath.Join(workDir, "pids"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); err == nil {
		fmt.Fprintln(f, strings.ReplaceAll(r.pids(), " ", "\n"))
		f.Close()
	}
	// HAProxy is ready once its write port accepts connections.
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", r.write), 500*time.Millisecond)
		if err == nil {
			c.Close()
			return r, nil
		}
		if time.Now().After(deadline) {
			r.stop()
			return nil, fmt.Errorf("haproxy did not come up (see %s)", r.haproxyLog)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (r *demoRouting) stop() {
	for _, c := range []*exec.Cmd{r.renderer, r.haproxy} {
		if c == nil || c.Process == nil {
			continue
		}
		c.Process.Signal(syscall.SIGTERM)
		for i := 0; i < 50 && syscall.Kill(c.Process.Pid, 0) == nil; i++ {
			time.Sleep(100 * time.Millisecond)
		}
		syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
	}
}

func (r *demoRouting) pids() string {
	var out []string
	for _, c := range []*exec.Cmd{r.renderer, r.haproxy} {
		if c != nil && c.Process != nil {
			out = append(out, strconv.Itoa(c.Process.Pid))
		}
	}
	return strings.Join(out, " ")
}
