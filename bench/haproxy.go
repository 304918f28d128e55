package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/internal/demo"
	"github.com/pgmesh/pgmesh/routing"
	"go.uber.org/zap"
)

// haproxyRouter is a real HAProxy (master-worker) configured by pgmesh's
// routing renderer from the shipped builtin:haproxy.cfg.tmpl, with the
// runtime-API hook on, as an operator would run it beside an application.
type haproxyRouter struct {
	// GroupPort is the listener of group n1's primary.
	GroupPort int
	cmd       *exec.Cmd
	done      chan struct{}
	stopR     context.CancelFunc
	rdone     chan struct{}
	log       string
}

// startHAProxyRouter renders the configuration once, starts HAProxy on it
// and keeps the renderer running (reload = SIGUSR2 to the master).
func startHAProxyRouter(ctx context.Context, e *env, m *demo.Mesh) (*haproxyRouter, error) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		return nil, fmt.Errorf("haproxy not found (scripts/setup installs it): %w", err)
	}
	dir := filepath.Join(e.workDir, "haproxy")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	cfg, sock := filepath.Join(dir, "haproxy.cfg"), filepath.Join(dir, "admin.sock")
	base := e.portBase + 100
	data := routing.DataConfig{Bind: "127.0.0.1", Socket: sock,
		Ports: routing.PortConfig{Write: base, Read: base + 1, Stats: base + 2, GroupBase: base + 10}}
	kv, err := consulkv.New(consulkv.Config{Address: m.Consul, Cluster: m.Options().Cluster})
	if err != nil {
		return nil, err
	}
	entry := routing.Entry{Template: "builtin:haproxy.cfg.tmpl", Destination: cfg, Validate: bin + " -c -q -f {{file}}", HAProxySocket: sock}
	first, err := routing.New(routing.Options{Client: kv, Entries: []routing.Entry{entry}, Data: data, Log: zap.NewNop()})
	if err != nil {
		return nil, err
	}
	if err := first.RenderOnce(ctx); err != nil {
		return nil, fmt.Errorf("render haproxy.cfg: %w", err)
	}
	h := &haproxyRouter{GroupPort: data.Ports.GroupBase, log: filepath.Join(dir, "haproxy.log"), done: make(chan struct{})}
	logf, err := os.Create(h.log)
	if err != nil {
		return nil, err
	}
	h.cmd = exec.Command(bin, "-W", "-db", "-f", cfg, "-p", filepath.Join(dir, "haproxy.pid"))
	h.cmd.Stdout, h.cmd.Stderr = logf, logf
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := h.cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	go func() { h.cmd.Wait(); logf.Close(); close(h.done) }()
	e.cleanups = append(e.cleanups, h.Stop)
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", h.GroupPort), 200*time.Millisecond)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(h.log)
			return nil, fmt.Errorf("haproxy did not listen on %d: %s", h.GroupPort, strings.TrimSpace(string(b)))
		}
		select {
		case <-h.done:
			b, _ := os.ReadFile(h.log)
			return nil, fmt.Errorf("haproxy exited: %s", strings.TrimSpace(string(b)))
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	entry.Reload = fmt.Sprintf("kill -USR2 %d", h.cmd.Process.Pid)
	r, err := routing.New(routing.Options{Client: kv, Entries: []routing.Entry{entry}, Data: data, Log: zap.NewNop()})
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(context.Background())
	h.stopR, h.rdone = cancel, make(chan struct{})
	go func() { defer close(h.rdone); r.Run(rctx) }()
	// HAProxy's first checks (inter 1s) must see the primary up.
	return h, waitHAProxyWritable(ctx, h.GroupPort, 30*time.Second)
}

func waitHAProxyWritable(ctx context.Context, port int, timeout time.Duration) error {
	w := newWriter("127.0.0.1", port, 3*time.Second)
	defer w.close()
	deadline := time.Now().Add(timeout)
	for !w.write(ctx, "haproxy-ready") {
		if time.Now().After(deadline) {
			return fmt.Errorf("no write through haproxy on %d within %s: %v", port, timeout, w.lastErr)
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

// Stop stops the renderer and HAProxy (idempotent).
func (h *haproxyRouter) Stop() {
	if h.stopR != nil {
		h.stopR()
		<-h.rdone
		h.stopR = nil
	}
	select {
	case <-h.done:
		return
	default:
	}
	h.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-h.cmd.Process.Pid, syscall.SIGKILL)
		<-h.done
	}
}
