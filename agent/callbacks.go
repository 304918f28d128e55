package agent

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"go.uber.org/zap"
)

// Callback actions, named (and passed to the commands) as Patroni does.
const (
	CallbackOnStart      = "on_start"
	CallbackOnStop       = "on_stop"
	CallbackOnRestart    = "on_restart"
	CallbackOnReload     = "on_reload"
	CallbackOnRoleChange = "on_role_change"
)

var callbackActions = []string{CallbackOnStart, CallbackOnStop, CallbackOnRestart, CallbackOnReload, CallbackOnRoleChange}

// callbacks runs postgresql.callbacks the way Patroni does:
//
//   - each command gets three more arguments: the action, the role
//     ("primary" or "replica"; Patroni 4 passes "primary", Patroni 3
//     "master") and the scope, which is the group's name (a pgmesh group is
//     what Patroni calls a cluster);
//   - it runs asynchronously: the HA loop only hands it over and never
//     waits for it;
//   - one callback runs at a time: a new one kills the one still running
//     (with every process of its process group) and runs once that one is
//     gone, and a call still waiting to start is replaced. on_reload has a
//     queue of its own, so a reload never kills an on_role_change;
//   - a run is bounded by postgresql.callbacks_timeout, then its process
//     group is killed (Patroni has no timeout);
//   - each run ends in one log line, "callback finished", with the action,
//     role, exit code and duration (and why it was killed, if it was); what
//     it prints is logged line by line as "callback output".
//
// It also keeps the role last reported, to say on_role_change instead of
// on_start when PostgreSQL comes back in another role (Patroni does the same
// after a demotion). Its methods are safe for concurrent use and never block
// on a command.
type callbacks struct {
	log     *zap.Logger
	cmds    map[string][]string
	scope   string
	env     []string
	timeout time.Duration

	mu sync.Mutex
	// role is the role last reported to a callback ("" before the first
	// one: then the first loop that sees PostgreSQL running reports
	// on_start, as Patroni does when it finds PostgreSQL already running).
	role string
	// pendingStart holds the role of a start that had not finished when the
	// start returned (reported once PostgreSQL is seen running).
	pendingStart string
	// restartPending: that start was a restart.
	restartPending bool

	main, reload *callbackQueue
}

// newCallbacks builds the runner from the configuration; it starts nothing.
func newCallbacks(cfg CallbacksConfig, timeout time.Duration, scope string, env []string, log *zap.Logger) (*callbacks, error) {
	c := &callbacks{log: log, cmds: map[string][]string{}, scope: scope, env: env, timeout: timeout}
	if c.timeout <= 0 {
		c.timeout = DefaultCallbacksTimeout
	}
	for action, cmd := range cfg.byAction() {
		if strings.TrimSpace(cmd) == "" {
			continue
		}
		argv, err := splitCommand(cmd)
		if err != nil {
			return nil, fmt.Errorf("postgresql.callbacks.%s: %w", action, err)
		}
		c.cmds[action] = argv
	}
	c.main = &callbackQueue{c: c, wake: make(chan struct{}, 1)}
	c.reload = &callbackQueue{c: c, wake: make(chan struct{}, 1)}
	return c, nil
}

// callbackEnv is the environment of every callback of this agent: the
// agent's own plus where it runs (action and role are added per call).
func callbackEnv(cfg *Config, apiURL string) []string {
	return append(os.Environ(),
		"PGMESH_CLUSTER="+cfg.Cluster, "PGMESH_GROUP="+cfg.Group, "PGMESH_MEMBER="+cfg.Name,
		"PGMESH_API_URL="+apiURL, "PGDATA="+cfg.PostgreSQL.DataDir)
}

// started reports that PostgreSQL came up in role: on_start, or
// on_role_change when the role last reported was another one (a demoted
// primary coming back as a replica, a crashed one restarted read-only).
func (c *callbacks) started(role string) { c.up(role, false) }

// restarted is started for a restart: on_restart unless the role changed.
func (c *callbacks) restarted(role string) { c.up(role, true) }

func (c *callbacks) up(role string, restart bool) {
	if c == nil {
		return
	}
	c.mu.Lock()
	prev := c.role
	c.role, c.pendingStart, c.restartPending = role, "", false
	c.mu.Unlock()
	switch {
	case prev != "" && prev != role:
		c.fire(CallbackOnRoleChange, role)
	case restart:
		c.fire(CallbackOnRestart, role)
	default:
		c.fire(CallbackOnStart, role)
	}
}

// startPending notes a start that was still in progress when it returned;
// seen (PostgreSQL running) reports it.
func (c *callbacks) startPending(role string, restart bool) {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.pendingStart, c.restartPending = role, restart
	c.mu.Unlock()
}

// seen is called once per loop with what the observation found. The first
// time PostgreSQL is seen running (it ran before the agent started) it
// reports on_start, and a start that had not finished is reported once it
// has.
func (c *callbacks) seen(running bool, role string) {
	if c == nil || !running {
		return
	}
	c.mu.Lock()
	pending, restart, first := c.pendingStart, c.restartPending, c.role == ""
	c.mu.Unlock()
	switch {
	case pending != "":
		c.up(role, restart)
	case first:
		c.up(role, false)
	}
}

// stopped reports that PostgreSQL was stopped while it ran as role ("" =
// the role last reported).
func (c *callbacks) stopped(role string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	if role == "" {
		role = c.role
	}
	if role == "" {
		role = consulkv.RoleReplica
	}
	c.pendingStart, c.restartPending = "", false
	c.mu.Unlock()
	c.fire(CallbackOnStop, role)
}

// promoted reports a promotion: on_role_change primary.
func (c *callbacks) promoted() {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.role, c.pendingStart, c.restartPending = consulkv.RolePrimary, "", false
	c.mu.Unlock()
	c.fire(CallbackOnRoleChange, consulkv.RolePrimary)
}

// reloaded reports a configuration reload of PostgreSQL running as role.
func (c *callbacks) reloaded(role string) { c.fire(CallbackOnReload, role) }

// fire hands one call to its queue; it never waits for a command.
func (c *callbacks) fire(action, role string) {
	if c == nil {
		return
	}
	argv := c.cmds[action]
	if len(argv) == 0 {
		return
	}
	run := &callbackRun{action: action, role: role, argv: append(append([]string{}, argv...), action, role, c.scope)}
	if action == CallbackOnReload {
		c.reload.submit(run)
		return
	}
	c.main.submit(run)
}

// close waits up to wait for running and queued callbacks to finish (the
// agent's own on_stop at shutdown), then kills what still runs. No callback
// starts afterwards.
func (c *callbacks) close(wait time.Duration) {
	if c == nil {
		return
	}
	wait = min(wait, c.timeout)
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) && !(c.main.idle() && c.reload.idle()) {
		time.Sleep(20 * time.Millisecond)
	}
	c.main.shutdown()
	c.reload.shutdown()
}

// callbackQueue runs one callback at a time; a newer call replaces a queued
// one and kills a running one.
type callbackQueue struct {
	c    *callbacks
	wake chan struct{}

	mu      sync.Mutex
	next    *callbackRun // waiting to start
	cur     *callbackRun // running
	working bool         // the worker goroutine runs
	closed  bool
}

func (q *callbackQueue) submit(r *callbackRun) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		q.c.log.Warn("callback not run: the agent is shutting down", zap.String("action", r.action), zap.String("role", r.role))
		return
	}
	if q.next != nil {
		q.c.log.Info("callback dropped before it started: a newer one replaces it", zap.String("action", q.next.action), zap.String("role", q.next.role), zap.String("newer", r.action))
	}
	q.next = r
	if q.cur != nil {
		q.cur.kill("superseded by " + r.action)
	}
	if !q.working {
		q.working = true
		go q.work()
	}
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *callbackQueue) idle() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.next == nil && q.cur == nil
}

// shutdown kills the running callback and drops a queued one.
func (q *callbackQueue) shutdown() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	if q.next != nil {
		q.c.log.Warn("callback not run: the agent is shutting down", zap.String("action", q.next.action), zap.String("role", q.next.role))
		q.next = nil
	}
	if q.cur != nil {
		q.cur.kill("the agent is shutting down")
	}
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *callbackQueue) work() {
	for range q.wake {
		q.mu.Lock()
		r := q.next
		q.next = nil
		closed := q.closed
		q.mu.Unlock()
		if closed {
			q.mu.Lock()
			q.working = false
			q.mu.Unlock()
			return
		}
		if r != nil {
			q.run(r)
		}
	}
}

// run starts r, waits for it (killing its process group at the timeout)
// and logs the result.
func (q *callbackQueue) run(r *callbackRun) {
	c := q.c
	start := time.Now()
	output, err := r.start(append(append([]string{}, c.env...), "PGMESH_CALLBACK_ACTION="+r.action, "PGMESH_CALLBACK_ROLE="+r.role))
	if err != nil {
		c.log.Warn("callback could not be started", zap.String("action", r.action), zap.String("role", r.role), zap.Strings("command", r.argv), zap.Error(err))
		return
	}
	go r.logOutput(output, c.log)
	q.mu.Lock()
	q.cur = r
	if q.next != nil || q.closed {
		// Superseded (or shut down) while it was being started.
		r.kill("superseded before it got going")
	}
	q.mu.Unlock()

	waited := make(chan error, 1)
	go func() {
		err := r.cmd.Wait()
		q.mu.Lock()
		r.exited = true
		q.mu.Unlock()
		waited <- err
	}()
	timer := time.NewTimer(c.timeout)
	var werr error
	select {
	case werr = <-waited:
	case <-timer.C:
		q.mu.Lock()
		r.kill(fmt.Sprintf("timed out after %s (postgresql.callbacks_timeout)", c.timeout))
		q.mu.Unlock()
		werr = <-waited
	}
	timer.Stop()
	q.mu.Lock()
	q.cur = nil
	killed := r.killed
	q.mu.Unlock()

	took := time.Since(start)
	code := -1
	if st := r.cmd.ProcessState; st != nil {
		code = st.ExitCode()
	}
	fields := []zap.Field{zap.String("action", r.action), zap.String("role", r.role), zap.String("scope", c.scope),
		zap.Int("exit_code", code), zap.Duration("took", took.Round(time.Millisecond)), zap.Strings("command", r.argv)}
	var ee *exec.ExitError
	if werr != nil && !errors.As(werr, &ee) {
		fields = append(fields, zap.Error(werr))
	}
	if st := r.cmd.ProcessState; st != nil {
		if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			fields = append(fields, zap.String("signal", ws.Signal().String()))
		}
	}
	if killed != "" {
		fields = append(fields, zap.String("killed", killed))
	}
	if code == 0 && killed == "" {
		c.log.Info("callback finished", fields...)
	} else {
		c.log.Warn("callback finished", fields...)
	}
}

// callbackRun is one run of one callback command.
type callbackRun struct {
	action, role string
	argv         []string
	cmd          *exec.Cmd
	killed       string // why it was killed ("" while it was not)
	exited       bool   // the command has exited (and was reaped)
}

// start runs the command in a process group of its own, with its output on
// a pipe the caller drains.
func (r *callbackRun) start(env []string) (io.ReadCloser, error) {
	cmd := exec.Command(r.argv[0], r.argv[1:]...)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	// The command gets the write end itself (not a pipe Go copies from), so
	// Wait returns when the command exits even if a child it left behind
	// keeps the pipe open.
	cmd.Stdout, cmd.Stderr = pw, pw
	err = cmd.Start()
	pw.Close()
	if err != nil {
		pr.Close()
		return nil, err
	}
	r.cmd = cmd
	return pr, nil
}

// kill SIGKILLs the run's whole process group while its command runs. A
// command that has exited is left alone, and so is whatever it left running
// in the background (as Patroni does). The caller holds the queue's lock.
func (r *callbackRun) kill(why string) {
	if r.cmd == nil || r.cmd.Process == nil || r.killed != "" || r.exited {
		return
	}
	r.killed = why
	if err := syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		r.cmd.Process.Kill()
	}
}

// maxCallbackLines bounds how much of one run's output reaches the log.
const maxCallbackLines = 100

// logOutput logs what the command prints, one line each, until every
// holder of the pipe has closed it.
func (r *callbackRun) logOutput(out io.ReadCloser, log *zap.Logger) {
	defer out.Close()
	br := bufio.NewReaderSize(out, 4096)
	n := 0
	for {
		line, err := br.ReadString('\n')
		if line = strings.TrimRight(line, "\r\n"); line != "" {
			n++
			switch {
			case n <= maxCallbackLines:
				log.Info("callback output", zap.String("action", r.action), zap.String("line", truncate(line, 1024)))
			case n == maxCallbackLines+1:
				log.Info("callback output: more lines not logged", zap.String("action", r.action))
			}
		}
		if err != nil {
			return
		}
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// splitCommand splits a callback setting into words like a POSIX shell
// would for a simple command: blanks separate words, single quotes keep
// everything literally, double quotes and backslashes escape. Nothing is
// expanded.
func splitCommand(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case ch == ' ' || ch == '\t' || ch == '\n':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case ch == '\'':
			inWord = true
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, errors.New("unterminated single quote")
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
		case ch == '"':
			inWord = true
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("\"\\$`", s[i+1]) >= 0 {
					i++
				}
				cur.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, errors.New("unterminated double quote")
			}
		case ch == '\\':
			inWord = true
			if i+1 < len(s) {
				i++
				cur.WriteByte(s[i])
			}
		default:
			inWord = true
			cur.WriteByte(ch)
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	if len(words) == 0 {
		return nil, errors.New("empty command")
	}
	return words, nil
}

// diskRole is the role PostgreSQL runs (or will run) as, judged from the
// data directory: standby.signal means a replica.
func (a *Agent) diskRole() string {
	if _, err := os.Stat(filepath.Join(a.pgi().DataDir(), "standby.signal")); err == nil {
		return consulkv.RoleReplica
	}
	return consulkv.RolePrimary
}

// localRole is the role the observation saw PostgreSQL run as.
func localRole(l Local) string {
	if l.InRecovery {
		return consulkv.RoleReplica
	}
	return consulkv.RolePrimary
}

// reportStart reports a start that returned err: at once when it succeeded,
// once PostgreSQL is seen running when it was still starting, not at all
// when it failed.
func (a *Agent) reportStart(err error, restart bool) {
	role := a.diskRole()
	if err == nil {
		a.cb.up(role, restart)
		return
	}
	if running, _ := a.pgi().IsRunning(); running {
		a.cb.startPending(role, restart)
	}
}
