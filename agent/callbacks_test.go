package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// script writes an executable /bin/sh script into dir.
func script(t *testing.T, dir, name, body string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func newTestCallbacks(t *testing.T, cfg CallbacksConfig, timeout time.Duration) (*callbacks, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	c, err := newCallbacks(cfg, timeout, "g1", append(os.Environ(), "PGMESH_CLUSTER=mesh1", "PGMESH_GROUP=g1", "PGMESH_MEMBER=g1-a"), zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.close(0) })
	return c, logs
}

// finished waits until n "callback finished" lines were logged and returns
// them, in order.
func finished(t *testing.T, logs *observer.ObservedLogs, n int, timeout time.Duration) []observer.LoggedEntry {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := logs.FilterMessage("callback finished").All()
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d callback(s) finished after %s, want %d; log: %v", len(got), timeout, n, messages(logs))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func messages(logs *observer.ObservedLogs) []string {
	var out []string
	for _, e := range logs.All() {
		out = append(out, fmt.Sprintf("%s %v", e.Message, e.ContextMap()))
	}
	return out
}

// waitFile waits until path exists and returns its content.
func waitFile(t *testing.T, path string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if b, err := os.ReadFile(path); err == nil && len(b) > 0 {
			return string(b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not written within %s", path, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// gone: no process pid any more (a zombie waiting for its reaper counts as
// gone: it runs nothing).
func gone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// pid (comm) S ...: the state follows the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] == 'Z'
}

func waitGone(t *testing.T, what string, pid int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !gone(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("%s (pid %d) still runs %s later", what, pid, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func readPID(t *testing.T, path string) int {
	t.Helper()
	pid, err := strconv.Atoi(strings.TrimSpace(waitFile(t, path, 5*time.Second)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func TestCallbackArgumentsEnvOutputAndExitCode(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	cmd := script(t, dir, "cb.sh", `for a in "$@"; do echo "arg:$a"; done > `+out+`
env | grep -E '^PGMESH_(CALLBACK_ACTION|CALLBACK_ROLE|CLUSTER|GROUP|MEMBER)=' | sort >> `+out+`
echo "hello from the callback"
echo "to stderr" >&2
exit 3`)
	c, logs := newTestCallbacks(t, CallbacksConfig{OnRoleChange: cmd + ` --flag 'two words'`}, time.Minute)
	start := time.Now()
	c.fire(CallbackOnRoleChange, consulkv.RolePrimary)
	if since := time.Since(start); since > 100*time.Millisecond {
		t.Fatalf("fire blocked for %s", since)
	}
	e := finished(t, logs, 1, 10*time.Second)[0]
	f := e.ContextMap()
	if f["action"] != CallbackOnRoleChange || f["role"] != "primary" || f["scope"] != "g1" || f["exit_code"] != int64(3) {
		t.Fatalf("finished line: %v", f)
	}
	if _, ok := f["took"].(time.Duration); !ok {
		t.Fatalf("no duration in %v", f)
	}
	if e.Level != zapcore.WarnLevel {
		t.Errorf("a failed callback logs at %s, want warn", e.Level)
	}
	want := `arg:--flag
arg:two words
arg:on_role_change
arg:primary
arg:g1
PGMESH_CALLBACK_ACTION=on_role_change
PGMESH_CALLBACK_ROLE=primary
PGMESH_CLUSTER=mesh1
PGMESH_GROUP=g1
PGMESH_MEMBER=g1-a
`
	if got := waitFile(t, out, time.Second); got != want {
		t.Fatalf("the callback saw:\n%s\nwant:\n%s", got, want)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		var lines []string
		for _, e := range logs.FilterMessage("callback output").All() {
			lines = append(lines, e.ContextMap()["line"].(string))
		}
		if len(lines) == 2 && lines[0] == "hello from the callback" && lines[1] == "to stderr" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("output lines %q", lines)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCallbackSuccessLogsInfo(t *testing.T) {
	dir := t.TempDir()
	c, logs := newTestCallbacks(t, CallbacksConfig{OnStart: script(t, dir, "ok.sh", "exit 0")}, time.Minute)
	c.fire(CallbackOnStart, consulkv.RoleReplica)
	e := finished(t, logs, 1, 10*time.Second)[0]
	if e.Level != zapcore.InfoLevel || e.ContextMap()["exit_code"] != int64(0) {
		t.Fatalf("finished: %s %v", e.Level, e.ContextMap())
	}
	if _, killed := e.ContextMap()["killed"]; killed {
		t.Fatalf("finished: %v", e.ContextMap())
	}
}

// TestCallbackTimeoutKillsProcessGroup: a callback that outlives
// postgresql.callbacks_timeout is killed with every process it started.
func TestCallbackTimeoutKillsProcessGroup(t *testing.T) {
	dir := t.TempDir()
	cmd := script(t, dir, "slow.sh", `echo $$ > `+dir+`/shell.pid
sleep 300 &
echo $! > `+dir+`/child.pid
sleep 300`)
	c, logs := newTestCallbacks(t, CallbacksConfig{OnStart: cmd}, 500*time.Millisecond)
	c.fire(CallbackOnStart, consulkv.RolePrimary)
	shell, child := readPID(t, dir+"/shell.pid"), readPID(t, dir+"/child.pid")
	if gone(child) {
		t.Fatal("the child did not start")
	}
	e := finished(t, logs, 1, 10*time.Second)[0]
	f := e.ContextMap()
	if !strings.Contains(fmt.Sprint(f["killed"]), "timed out after 500ms") || f["signal"] != "killed" || f["exit_code"] != int64(-1) {
		t.Fatalf("finished line: %v", f)
	}
	if took := f["took"].(time.Duration); took < 500*time.Millisecond || took > 3*time.Second {
		t.Fatalf("killed after %s, timeout 500ms", took)
	}
	waitGone(t, "the callback's shell", shell, 5*time.Second)
	waitGone(t, "the sleeping child the callback started", child, 5*time.Second)
	t.Logf("timed out and killed after %s: shell %d and child %d gone", f["took"], shell, child)
}

// TestCallbackNewerKillsOlder: as in Patroni, a new callback kills the one
// still running (and its children), then runs; on_reload has a queue of its
// own and leaves the others alone.
func TestCallbackNewerKillsOlder(t *testing.T) {
	dir := t.TempDir()
	slow := script(t, dir, "slow.sh", `echo $$ > `+dir+`/$1.pid
sleep 300 &
echo $! > `+dir+`/$1.child
wait`)
	quick := script(t, dir, "quick.sh", `echo "$1 $2" >> `+dir+`/quick.out`)
	c, logs := newTestCallbacks(t, CallbacksConfig{OnStart: slow, OnStop: slow, OnReload: quick, OnRoleChange: quick}, time.Minute)

	c.fire(CallbackOnStart, consulkv.RolePrimary)
	startPID, startChild := readPID(t, dir+"/on_start.pid"), readPID(t, dir+"/on_start.child")
	// A reload runs beside it.
	c.fire(CallbackOnReload, consulkv.RolePrimary)
	if e := finished(t, logs, 1, 10*time.Second)[0]; e.ContextMap()["action"] != CallbackOnReload || e.ContextMap()["exit_code"] != int64(0) {
		t.Fatalf("first to finish: %v", e.ContextMap())
	}
	if gone(startPID) {
		t.Fatal("on_reload killed the running on_start")
	}
	// on_stop replaces on_start; on_role_change, fired right after, drops
	// or kills on_stop in turn: only the newest is sure to run.
	c.fire(CallbackOnStop, consulkv.RolePrimary)
	c.fire(CallbackOnRoleChange, consulkv.RoleReplica)
	var rc map[string]any
	deadline := time.Now().Add(10 * time.Second)
	for rc == nil {
		for _, e := range logs.FilterMessage("callback finished").All() {
			if e.ContextMap()["action"] == CallbackOnRoleChange {
				rc = e.ContextMap()
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("on_role_change did not finish: %v", messages(logs))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if rc["exit_code"] != int64(0) || rc["role"] != "replica" {
		t.Fatalf("on_role_change: %v", rc)
	}
	var startDone map[string]any
	order := []string{}
	for _, e := range logs.FilterMessage("callback finished").All() {
		f := e.ContextMap()
		order = append(order, f["action"].(string))
		if f["action"] == CallbackOnStart {
			startDone = f
		}
	}
	if startDone == nil || !strings.HasPrefix(fmt.Sprint(startDone["killed"]), "superseded by on_stop") {
		t.Fatalf("on_start was not killed by the newer call: %v", startDone)
	}
	// One at a time: on_start (and on_stop, if it got to run) ended before
	// on_role_change did.
	if order[len(order)-1] != CallbackOnRoleChange {
		t.Fatalf("finish order %v", order)
	}
	waitGone(t, "the superseded on_start", startPID, 5*time.Second)
	waitGone(t, "the superseded on_start's child", startChild, 5*time.Second)
	if got := waitFile(t, dir+"/quick.out", time.Second); got != "on_reload primary\non_role_change replica\n" {
		t.Fatalf("quick runs:\n%s", got)
	}
	t.Logf("finish order %v; on_start: %v", order, startDone["killed"])
}

// TestCallbackRoleTracking: which action each event reports, as Patroni
// decides it (on_role_change instead of on_start after a demotion).
func TestCallbackRoleTracking(t *testing.T) {
	dir := t.TempDir()
	rec := script(t, dir, "rec.sh", `echo "$1 $2" >> `+dir+`/calls`)
	cfg := CallbacksConfig{OnStart: rec, OnStop: rec, OnRestart: rec, OnReload: rec, OnRoleChange: rec}
	c, logs := newTestCallbacks(t, cfg, time.Minute)
	n := 0
	steps := []struct {
		do   func()
		want string // "" = no callback
	}{
		{func() { c.seen(false, consulkv.RolePrimary) }, ""},
		{func() { c.seen(true, consulkv.RolePrimary) }, "on_start primary"}, // found running at agent start
		{func() { c.seen(true, consulkv.RolePrimary) }, ""},
		{func() { c.stopped("") }, "on_stop primary"},
		{func() { c.started(consulkv.RoleReplica) }, "on_role_change replica"}, // demoted
		{func() { c.restarted(consulkv.RoleReplica) }, "on_restart replica"},
		{func() { c.started(consulkv.RoleReplica) }, "on_start replica"},
		{func() { c.promoted() }, "on_role_change primary"},
		{func() { c.reloaded(consulkv.RolePrimary) }, "on_reload primary"},
		{func() { c.restarted(consulkv.RolePrimary) }, "on_restart primary"},
		{func() { c.startPending(consulkv.RoleReplica, false) }, ""}, // still starting
		{func() { c.seen(false, consulkv.RoleReplica) }, ""},
		{func() { c.seen(true, consulkv.RoleReplica) }, "on_role_change replica"}, // it came up as a replica
		{func() { c.startPending(consulkv.RoleReplica, true) }, ""},
		{func() { c.seen(true, consulkv.RoleReplica) }, "on_restart replica"},
	}
	var want []string
	for i, s := range steps {
		s.do()
		if s.want == "" {
			time.Sleep(50 * time.Millisecond) // nothing may show up; checked by the count below
			if got := len(logs.FilterMessage("callback finished").All()); got != n {
				t.Fatalf("step %d: a callback ran (%d finished, want %d)", i, got, n)
			}
			continue
		}
		n++
		want = append(want, s.want)
		finished(t, logs, n, 10*time.Second)
	}
	got := strings.Split(strings.TrimSpace(waitFile(t, dir+"/calls", time.Second)), "\n")
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestCallbacksUnconfiguredAndNil(t *testing.T) {
	c, logs := newTestCallbacks(t, CallbacksConfig{}, time.Minute)
	c.seen(true, consulkv.RolePrimary)
	c.started(consulkv.RolePrimary)
	c.stopped("")
	c.promoted()
	c.reloaded(consulkv.RolePrimary)
	if c.main.working || c.reload.working || logs.Len() != 0 {
		t.Fatalf("unconfigured callbacks did something: %v", messages(logs))
	}
	var none *callbacks // an Agent built without New
	none.started(consulkv.RolePrimary)
	none.stopped("")
	none.promoted()
	none.reloaded(consulkv.RolePrimary)
	none.seen(true, consulkv.RolePrimary)
	none.startPending(consulkv.RolePrimary, false)
	none.close(time.Second)
}

// TestCallbacksCloseWaitsThenKills: a stopping agent gives its on_stop a
// little time, then kills it; nothing runs afterwards.
func TestCallbacksCloseWaitsThenKills(t *testing.T) {
	dir := t.TempDir()
	c, logs := newTestCallbacks(t, CallbacksConfig{OnStop: script(t, dir, "stop.sh", "echo $$ > "+dir+"/pid; sleep 300"), OnStart: script(t, dir, "start.sh", "exit 0")}, time.Minute)
	c.stopped(consulkv.RolePrimary)
	pid := readPID(t, dir+"/pid")
	start := time.Now()
	c.close(300 * time.Millisecond)
	if took := time.Since(start); took < 300*time.Millisecond || took > 2*time.Second {
		t.Fatalf("close took %s, want about 300ms", took)
	}
	e := finished(t, logs, 1, 5*time.Second)[0]
	if !strings.Contains(fmt.Sprint(e.ContextMap()["killed"]), "shutting down") {
		t.Fatalf("finished: %v", e.ContextMap())
	}
	waitGone(t, "on_stop", pid, 5*time.Second)
	c.started(consulkv.RolePrimary)
	if len(logs.FilterMessage("callback not run: the agent is shutting down").All()) != 1 {
		t.Fatalf("a callback after close: %v", messages(logs))
	}

	// A quick one is waited for, not killed.
	c2, logs2 := newTestCallbacks(t, CallbacksConfig{OnStop: script(t, dir, "quick.sh", "sleep 0.2")}, time.Minute)
	c2.stopped(consulkv.RolePrimary)
	c2.close(5 * time.Second)
	if e := finished(t, logs2, 1, time.Second)[0]; e.ContextMap()["exit_code"] != int64(0) {
		t.Fatalf("quick on_stop: %v", e.ContextMap())
	}
}

func TestSplitCommand(t *testing.T) {
	for in, want := range map[string][]string{
		"/usr/local/bin/cb":                      {"/usr/local/bin/cb"},
		"  /bin/cb  --a  b ":                     {"/bin/cb", "--a", "b"},
		`/bin/cb 'two words' "and \"three\" $x"`: {"/bin/cb", "two words", `and "three" $x`},
		`/bin/my\ cb x''y`:                       {"/bin/my cb", "xy"},
	} {
		got, err := splitCommand(in)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("splitCommand(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "   ", "/bin/cb 'open", `/bin/cb "open`} {
		if _, err := splitCommand(bad); err == nil {
			t.Errorf("splitCommand(%q): no error", bad)
		}
	}
}
