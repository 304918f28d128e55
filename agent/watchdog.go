package agent

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pgmesh/pgmesh/pg"
	"go.uber.org/zap"
)

// The fence watchdog is a small separate process (pgmesh fence-watchdog)
// that stops PostgreSQL when the agent can no longer do it itself: the
// agent arms it with the time its lease has left after every renew; if the
// agent is frozen (SIGSTOP, swapped out) and the lease runs out, or the
// agent dies while its primary is armed, the watchdog aborts the postmaster.
// It is pgmesh's user-space answer to Patroni's kernel watchdog: without it
// a frozen agent leaves a writable primary behind while another member is
// promoted.

type fenceWatchdog struct {
	log     *zap.Logger
	exe     string
	dataDir string
	// inProcess: no watchdog process can run (the agent is not the pgmesh
	// binary, e.g. a unit test); only the in-process lease fence guards.
	inProcess bool

	mu     sync.Mutex
	stdin  io.WriteCloser
	exited chan struct{} // closed when the watchdog process ends
	pid    int
	armed  bool
}

// errWatchdog means the fence watchdog could not be armed: the agent must
// not lead without it.
var errWatchdog = errors.New("fence watchdog cannot be armed")

// startFenceWatchdog starts the watchdog process; when the binary cannot be
// found (e.g. the agent runs inside a test binary) fencing falls back to the
// in-process lease timer only, with a warning.
func startFenceWatchdog(log *zap.Logger, inst func() *pg.Instance) (*fenceWatchdog, error) {
	exe, err := os.Executable()
	if err != nil || !strings.HasPrefix(filepath.Base(exe), "pgmesh") {
		log.Warn("fence watchdog unavailable (not running as the pgmesh binary); relying on the in-process lease timer")
		return &fenceWatchdog{log: log, inProcess: true}, nil
	}
	fw := &fenceWatchdog{log: log, exe: exe, dataDir: inst().DataDir()}
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if err := fw.spawnLocked(); err != nil {
		return nil, err
	}
	return fw, nil
}

func (f *fenceWatchdog) spawnLocked() error {
	cmd := exec.Command(f.exe, "fence-watchdog", "--data-dir", f.dataDir)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	// Own process group: a signal to the agent's group must not take the
	// watchdog with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return fmt.Errorf("fence watchdog: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("fence watchdog: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	f.stdin, f.exited, f.pid = stdin, exited, cmd.Process.Pid
	return nil
}

// aliveLocked makes sure the watchdog process runs, restarting it when it
// died (killed by an operator, the OOM killer): a dead watchdog is never
// just logged.
func (f *fenceWatchdog) aliveLocked() error {
	if f.stdin == nil {
		return fmt.Errorf("%w: it was closed", errWatchdog)
	}
	select {
	case <-f.exited:
	default:
		return nil
	}
	f.log.Error("the fence watchdog process died; restarting it")
	f.stdin.Close()
	if err := f.spawnLocked(); err != nil {
		f.stdin = nil
		return fmt.Errorf("%w: restarting it: %v", errWatchdog, err)
	}
	return nil
}

func (f *fenceWatchdog) sendLocked(line string) error {
	if err := f.aliveLocked(); err != nil {
		return err
	}
	if _, err := io.WriteString(f.stdin, line+"\n"); err != nil {
		// It may have died just now: one restart, one more try.
		select {
		case <-f.exited:
		case <-time.After(100 * time.Millisecond):
		}
		if err := f.aliveLocked(); err != nil {
			return err
		}
		if _, err := io.WriteString(f.stdin, line+"\n"); err != nil {
			return fmt.Errorf("%w: %v", errWatchdog, err)
		}
	}
	return nil
}

// arm tells the watchdog to fence unless re-armed within d. A deadline
// that is not positive cannot be armed (the lease is already over): that is
// an error, never a silent no-op, and the caller must not lead.
func (f *fenceWatchdog) arm(d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("%w: no time left on the lease (deadline %s)", errWatchdog, d.Round(time.Millisecond))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.armed = true
	if f.inProcess {
		return nil
	}
	return f.sendLocked("arm " + strconv.FormatInt(max(d.Milliseconds(), 1), 10))
}

// extend re-arms the watchdog with deadline d only if it is armed: the
// leader's keepalive pushes the deadline out between loops, but must never
// arm a watchdog the loop disarmed meanwhile (a demoted member's
// PostgreSQL would be aborted when the deadline passes).
func (f *fenceWatchdog) extend(d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("%w: no time left on the lease (deadline %s)", errWatchdog, d.Round(time.Millisecond))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.armed || f.inProcess {
		return nil
	}
	return f.sendLocked("arm " + strconv.FormatInt(max(d.Milliseconds(), 1), 10))
}

func (f *fenceWatchdog) disarm() {
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	was := f.armed
	f.armed = false
	if was && !f.inProcess {
		if err := f.sendLocked("disarm"); err != nil {
			f.log.Warn("could not disarm the fence watchdog", zap.Error(err))
		}
	}
}

// running reports whether the watchdog process runs.
func (f *fenceWatchdog) running() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stdin == nil {
		return false
	}
	select {
	case <-f.exited:
		return false
	default:
		return true
	}
}

// close disarms and stops the watchdog.
func (f *fenceWatchdog) close() {
	f.disarm()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stdin != nil {
		f.stdin.Close()
		f.stdin = nil
	}
}

// RunFenceWatchdog is the watchdog process's main loop: it reads "arm <ms>"
// and "disarm" lines on stdin and aborts the postmaster of dataDir when an
// armed deadline passes or stdin closes while armed.
func RunFenceWatchdog(dataDir string, in io.Reader, log *zap.Logger) error {
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(in)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var deadline *time.Timer
	var expired <-chan time.Time
	// tripped: the deadline passed and no new arm came. A postmaster that
	// appears meanwhile (a start the frozen agent had begun, resumed) is
	// aborted too: expiry while PostgreSQL was down must not leave the next
	// start unguarded.
	var tripped <-chan time.Time
	var trippedTicker *time.Ticker
	untrip := func() {
		if trippedTicker != nil {
			trippedTicker.Stop()
		}
		trippedTicker, tripped = nil, nil
	}
	disarm := func() {
		if deadline != nil {
			deadline.Stop()
		}
		deadline, expired = nil, nil
	}
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				if deadline != nil || tripped != nil {
					log.Warn("fence watchdog: agent gone while its primary was armed; stopping PostgreSQL")
					abortPostmaster(dataDir, log)
				}
				return nil
			}
			switch {
			case strings.HasPrefix(line, "arm "):
				ms, err := strconv.ParseInt(strings.TrimPrefix(line, "arm "), 10, 64)
				if err != nil || ms <= 0 {
					log.Warn("fence watchdog: ignoring a malformed arm request", zap.String("line", line))
					continue
				}
				disarm()
				untrip()
				deadline = time.NewTimer(time.Duration(ms) * time.Millisecond)
				expired = deadline.C
			case line == "disarm":
				disarm()
				untrip()
			}
		case <-expired:
			log.Warn("fence watchdog: lease ran out without renewal; stopping PostgreSQL")
			abortPostmaster(dataDir, log)
			disarm()
			trippedTicker = time.NewTicker(50 * time.Millisecond)
			tripped = trippedTicker.C
		case <-tripped:
			if postmasterAlive(dataDir) {
				log.Warn("fence watchdog: a postmaster started after the lease ran out and before a new arm; stopping it")
				abortPostmaster(dataDir, log)
			}
		}
	}
}

// postmasterAlive reports whether dataDir's postmaster.pid names a live
// process.
func postmasterAlive(dataDir string) bool {
	pid := postmasterPID(dataDir)
	return pid > 1 && syscall.Kill(pid, 0) == nil
}

func postmasterPID(dataDir string) int {
	data, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(data), "\n", 2)[0]))
	if err != nil {
		return 0
	}
	return pid
}

// abortPostmaster sends SIGQUIT (PostgreSQL's immediate shutdown: every
// backend exits at once), then SIGKILL if it is still there after 2s.
func abortPostmaster(dataDir string, log *zap.Logger) {
	pid := postmasterPID(dataDir)
	if pid <= 1 {
		return
	}
	if err := syscall.Kill(pid, syscall.SIGQUIT); err != nil {
		return
	}
	for i := 0; i < 40; i++ {
		if syscall.Kill(pid, 0) != nil {
			log.Info("fence watchdog: postmaster stopped", zap.Int("pid", pid))
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	log.Warn("fence watchdog: postmaster killed", zap.Int("pid", pid))
}
