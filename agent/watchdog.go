package agent

import (
	"bufio"
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
	log   *zap.Logger
	mu    sync.Mutex
	stdin io.WriteCloser
	cmd   *exec.Cmd
	armed bool
}

// startFenceWatchdog starts the watchdog process; when the binary cannot be
// found (e.g. the agent runs inside a test binary) fencing falls back to the
// in-process lease timer only, with a warning.
func startFenceWatchdog(log *zap.Logger, inst func() *pg.Instance) (*fenceWatchdog, error) {
	fw := &fenceWatchdog{log: log}
	exe, err := os.Executable()
	if err != nil || !strings.HasPrefix(filepath.Base(exe), "pgmesh") {
		log.Warn("fence watchdog unavailable (not running as the pgmesh binary); relying on the in-process lease timer")
		return fw, nil
	}
	i := inst()
	cmd := exec.Command(exe, "fence-watchdog", "--data-dir", i.DataDir())
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	// Own process group: a signal to the agent's group must not take the
	// watchdog with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("fence watchdog: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("fence watchdog: %w", err)
	}
	go cmd.Wait()
	fw.stdin, fw.cmd = stdin, cmd
	return fw, nil
}

func (f *fenceWatchdog) send(line string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stdin == nil {
		return
	}
	if _, err := io.WriteString(f.stdin, line+"\n"); err != nil {
		f.log.Warn("fence watchdog not reachable", zap.Error(err))
	}
}

// arm tells the watchdog to fence unless re-armed within d.
func (f *fenceWatchdog) arm(d time.Duration) {
	if d <= 0 {
		return
	}
	f.mu.Lock()
	f.armed = true
	f.mu.Unlock()
	f.send("arm " + strconv.FormatInt(d.Milliseconds(), 10))
}

func (f *fenceWatchdog) disarm() {
	if f == nil {
		return
	}
	f.mu.Lock()
	was := f.armed
	f.armed = false
	f.mu.Unlock()
	if was {
		f.send("disarm")
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
				if deadline != nil {
					log.Warn("fence watchdog: agent gone while its primary was armed; stopping PostgreSQL")
					abortPostmaster(dataDir, log)
				}
				return nil
			}
			switch {
			case strings.HasPrefix(line, "arm "):
				ms, err := strconv.ParseInt(strings.TrimPrefix(line, "arm "), 10, 64)
				if err != nil || ms <= 0 {
					continue
				}
				disarm()
				deadline = time.NewTimer(time.Duration(ms) * time.Millisecond)
				expired = deadline.C
			case line == "disarm":
				disarm()
			}
		case <-expired:
			log.Warn("fence watchdog: lease ran out without renewal; stopping PostgreSQL")
			abortPostmaster(dataDir, log)
			disarm()
		}
	}
}

// abortPostmaster sends SIGQUIT (PostgreSQL's immediate shutdown: every
// backend exits at once), then SIGKILL if it is still there after 2s.
func abortPostmaster(dataDir string, log *zap.Logger) {
	data, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(data), "\n", 2)[0]))
	if err != nil || pid <= 1 {
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
