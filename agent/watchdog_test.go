package agent

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
)

// startFakePostmaster runs a real process and writes its pid where the
// watchdog looks for the postmaster's.
func startFakePostmaster(t *testing.T) (dataDir string, cmd *exec.Cmd, exited chan struct{}) {
	dataDir = t.TempDir()
	cmd = exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited = make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() { cmd.Process.Kill() })
	os.WriteFile(filepath.Join(dataDir, "postmaster.pid"), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"+dataDir+"\n"), 0o600)
	return dataDir, cmd, exited
}

func TestWatchdogFencesWhenTheLeaseRunsOut(t *testing.T) {
	dir, _, exited := startFakePostmaster(t)
	r, w := io.Pipe()
	go RunFenceWatchdog(dir, r, zap.NewNop())
	io.WriteString(w, "arm 300\n")
	start := time.Now()
	select {
	case <-exited:
		if d := time.Since(start); d < 250*time.Millisecond {
			t.Fatalf("fenced after %s, before the 300ms deadline", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("watchdog did not fence after the deadline")
	}
	w.Close()
}

func TestWatchdogRearmAndDisarm(t *testing.T) {
	dir, _, exited := startFakePostmaster(t)
	r, w := io.Pipe()
	done := make(chan struct{})
	go func() { RunFenceWatchdog(dir, r, zap.NewNop()); close(done) }()
	for i := 0; i < 6; i++ {
		io.WriteString(w, "arm 200\n")
		time.Sleep(100 * time.Millisecond)
	}
	io.WriteString(w, "disarm\n")
	select {
	case <-exited:
		t.Fatal("fenced although re-armed in time and then disarmed")
	case <-time.After(500 * time.Millisecond):
	}
	// Disarmed: the agent exiting must not fence.
	w.Close()
	<-done
	select {
	case <-exited:
		t.Fatal("fenced on a clean exit while disarmed")
	case <-time.After(200 * time.Millisecond):
	}
}

func TestWatchdogFencesWhenTheAgentDiesArmed(t *testing.T) {
	dir, _, exited := startFakePostmaster(t)
	r, w := io.Pipe()
	go RunFenceWatchdog(dir, r, zap.NewNop())
	io.WriteString(w, "arm 60000\n")
	time.Sleep(50 * time.Millisecond)
	w.Close() // the agent is gone
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatal("watchdog did not fence when the agent died while armed")
	}
}

// A deadline that passes while PostgreSQL is down must not leave the next
// start unguarded: a postmaster that appears before a new arm is stopped.
func TestWatchdogTrippedStopsALaterPostmaster(t *testing.T) {
	dir := t.TempDir()
	r, w := io.Pipe()
	defer w.Close()
	go RunFenceWatchdog(dir, r, zap.NewNop())
	io.WriteString(w, "arm 100\n")
	time.Sleep(300 * time.Millisecond) // expired with no postmaster
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() { cmd.Process.Kill() })
	os.WriteFile(filepath.Join(dir, "postmaster.pid"), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600)
	select {
	case <-exited:
	case <-time.After(3 * time.Second):
		t.Fatal("a postmaster started after the deadline passed was left running")
	}

	// A new arm (a fresh lease) or a disarm (a replica start) clears it.
	io.WriteString(w, "disarm\n")
	time.Sleep(100 * time.Millisecond)
	cmd2 := exec.Command("sleep", "60")
	if err := cmd2.Start(); err != nil {
		t.Fatal(err)
	}
	exited2 := make(chan struct{})
	go func() { cmd2.Wait(); close(exited2) }()
	t.Cleanup(func() { cmd2.Process.Kill() })
	os.WriteFile(filepath.Join(dir, "postmaster.pid"), []byte(strconv.Itoa(cmd2.Process.Pid)+"\n"), 0o600)
	select {
	case <-exited2:
		t.Fatal("a postmaster started after a disarm was stopped")
	case <-time.After(500 * time.Millisecond):
	}
}

// arm never silently accepts a deadline that is not positive.
func TestWatchdogArmRefusesNonPositiveDeadline(t *testing.T) {
	fw := &fenceWatchdog{log: zap.NewNop(), inProcess: true}
	for _, d := range []time.Duration{0, -time.Second} {
		if err := fw.arm(d); err == nil {
			t.Fatalf("arm(%s) accepted", d)
		}
	}
	if err := fw.arm(time.Second); err != nil {
		t.Fatalf("arm(1s): %v", err)
	}
}

// A watchdog process that died (killed by an operator, the OOM killer) is
// started again at the next arm, not just logged.
func TestWatchdogRestartedWhenItDied(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "pgmesh-fake")
	// Stands in for `pgmesh fence-watchdog`: reads its commands until stdin closes.
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexec cat >/dev/null\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	fw := &fenceWatchdog{log: zap.NewNop(), exe: script, dataDir: dir}
	fw.mu.Lock()
	if err := fw.spawnLocked(); err != nil {
		t.Fatal(err)
	}
	first, pid := fw.exited, fw.pid
	fw.mu.Unlock()
	if err := fw.arm(time.Second); err != nil {
		t.Fatal(err)
	}
	if !fw.running() {
		t.Fatal("watchdog not running after start")
	}
	// Kill it behind the agent's back.
	syscall.Kill(pid, syscall.SIGKILL)
	select {
	case <-first:
	case <-time.After(5 * time.Second):
		t.Fatal("fake watchdog did not die")
	}
	if fw.running() {
		t.Fatal("dead watchdog reported running")
	}
	if err := fw.arm(time.Second); err != nil {
		t.Fatalf("arm after the watchdog died: %v", err)
	}
	if !fw.running() {
		t.Fatal("the dead watchdog was not restarted by arm")
	}
	fw.close()
}
