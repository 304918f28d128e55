package pg

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// StopMode is pg_ctl's shutdown mode.
type StopMode string

// Shutdown modes, see pg_ctl(1).
const (
	// StopSmart waits for clients to disconnect.
	StopSmart StopMode = "smart"
	// StopFast rolls back open transactions and shuts down cleanly; the
	// default for role changes.
	StopFast StopMode = "fast"
	// StopImmediate aborts without a shutdown checkpoint; the data
	// directory then needs crash recovery.
	StopImmediate StopMode = "immediate"
)

// ErrStartTimeout is returned by Start when the server was launched but did
// not accept connections in time (e.g. a replica still replaying WAL). The
// server keeps starting in the background; check IsRunning.
var ErrStartTimeout = errors.New("postgres did not become ready in time")

// defaultWait is pg_ctl's own default and applies when ctx has no deadline.
const defaultWait = 60 * time.Second

// Start starts the server with pg_ctl and waits until it accepts
// connections. Starting a running server is a no-op.
func (i *Instance) Start(ctx context.Context) error {
	if running, pid := i.IsRunning(); running {
		i.log.Info("postgres already running", zap.Int("pid", pid))
		return nil
	}
	if !i.HasDataDir() {
		return fmt.Errorf("start postgres: no initialised data directory at %s", i.cfg.DataDir)
	}
	if err := i.removeStalePidFile(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	if err := i.ensureDir(i.SocketDir(), 0o700); err != nil {
		return fmt.Errorf("start postgres: socket directory: %w", err)
	}
	logFile := i.LogFile()
	if err := i.ensureLogFile(logFile); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	wait := waitSeconds(ctx, defaultWait)
	args := []string{"start", "-D", i.cfg.DataDir, "-l", logFile, "-w", "-t", strconv.Itoa(wait)}
	started := time.Now()
	// pg_ctl detaches the postmaster into its own session, so cancelling
	// ctx stops the wait, never the server.
	if _, err := i.run(ctx, "pg_ctl", args, runOpts{}); err != nil {
		if running, pid := i.IsRunning(); running && ctx.Err() == nil {
			return fmt.Errorf("start postgres (pid %d, log %s): %w: %w", pid, logFile, ErrStartTimeout, err)
		}
		// pg_ctl only says "could not start server"; the reason is in the
		// server log.
		return fmt.Errorf("start postgres: %w; server log %s ends with: %s", err, logFile, oneLine(tailFile(logFile, 5)))
	}
	_, pid := i.IsRunning()
	i.log.Info("started postgres", zap.Int("pid", pid), zap.Duration("took", time.Since(started)), zap.String("log_file", logFile))
	return nil
}

// ensureLogFile creates the server log owned by the OS user: pg_ctl opens
// it as that user, and the data directory's parent may not be writable for
// it.
func (i *Instance) ensureLogFile(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("create log file %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close log file %s: %w", path, err)
	}
	return i.chown(path)
}

// tailFile returns the last n lines of a (small-ish) log file, reading at
// most its last 8 KiB.
func tailFile(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const window = 8 << 10
	if info, err := f.Stat(); err == nil && info.Size() > window {
		if _, err := f.Seek(-window, io.SeekEnd); err != nil {
			return ""
		}
	}
	data, err := io.ReadAll(io.LimitReader(f, window))
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// removeStalePidFile removes a postmaster.pid left by a crashed server
// whose PID now belongs to an unrelated process (common after a container
// restart), which would make PostgreSQL refuse to start. It never removes
// the file while any postgres process still works in the data directory:
// the file is what lets PostgreSQL detect orphaned backends still attached
// to the old shared memory.
func (i *Instance) removeStalePidFile() error {
	path := i.dataFile("postmaster.pid")
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if procs := i.dataDirProcesses(); len(procs) > 0 {
		// Let PostgreSQL decide; it will refuse with a clear message.
		return nil
	}
	if _, err := removeFile(path); err != nil {
		return fmt.Errorf("remove stale pid file: %w", err)
	}
	i.log.Warn("removed stale postmaster.pid", zap.String("path", path))
	return nil
}

// Stop shuts the server down with pg_ctl and waits for it to exit. Stopping
// a stopped server is a no-op. If it returns an error the server may still
// be running; Kill is the fencing fallback.
func (i *Instance) Stop(ctx context.Context, mode StopMode) error {
	switch mode {
	case StopSmart, StopFast, StopImmediate:
	default:
		return fmt.Errorf("stop postgres: unknown mode %q", mode)
	}
	running, pid := i.IsRunning()
	if !running {
		i.log.Info("postgres already stopped")
		return nil
	}
	started := time.Now()
	args := []string{"stop", "-D", i.cfg.DataDir, "-m", string(mode), "-w", "-t", strconv.Itoa(waitSeconds(ctx, defaultWait))}
	if _, err := i.run(ctx, "pg_ctl", args, runOpts{}); err != nil {
		// The server may have gone away between our check and pg_ctl's.
		if still, _ := i.IsRunning(); !still {
			i.log.Info("stopped postgres", zap.String("mode", string(mode)), zap.Int("pid", pid), zap.Duration("took", time.Since(started)))
			return nil
		}
		return fmt.Errorf("stop postgres (pid %d, mode %s): %w", pid, mode, err)
	}
	i.log.Info("stopped postgres", zap.String("mode", string(mode)), zap.Int("pid", pid), zap.Duration("took", time.Since(started)))
	return nil
}

// Restart stops the server with mode (if running) and starts it again.
func (i *Instance) Restart(ctx context.Context, mode StopMode) error {
	if err := i.Stop(ctx, mode); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	if err := i.Start(ctx); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	return nil
}

// Reload makes the server re-read its configuration files.
func (i *Instance) Reload(ctx context.Context) error {
	running, pid := i.IsRunning()
	if !running {
		return fmt.Errorf("reload postgres: %w", ErrNotRunning)
	}
	if _, err := i.run(ctx, "pg_ctl", []string{"reload", "-D", i.cfg.DataDir}, runOpts{}); err != nil {
		return fmt.Errorf("reload postgres: %w", err)
	}
	i.log.Info("reloaded postgres", zap.Int("pid", pid))
	return nil
}

// Promote ends recovery and waits until the server accepts writes. A
// running server that is not a standby is already promoted: no-op.
func (i *Instance) Promote(ctx context.Context) error {
	running, pid := i.IsRunning()
	if !running {
		return fmt.Errorf("promote: %w", ErrNotRunning)
	}
	if !fileExists(i.dataFile(standbySignal)) && !fileExists(i.dataFile(recoverySignal)) {
		i.log.Info("postgres already promoted", zap.Int("pid", pid))
		return nil
	}
	started := time.Now()
	args := []string{"promote", "-D", i.cfg.DataDir, "-w", "-t", strconv.Itoa(waitSeconds(ctx, defaultWait))}
	if _, err := i.run(ctx, "pg_ctl", args, runOpts{}); err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	i.log.Info("promoted postgres", zap.Int("pid", pid), zap.Duration("took", time.Since(started)))
	return nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// IsRunning reports whether the postmaster recorded in postmaster.pid is
// alive and is really this data directory's postmaster. A PID in a stale
// file may since have been reused by any process, so beyond signal 0 we
// check that the process works in our data directory (a postmaster chdirs
// there).
func (i *Instance) IsRunning() (bool, int) {
	pid, err := i.postmasterPID()
	if err != nil || pid <= 0 {
		return false, 0
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false, 0
	}
	cwd, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/cwd")
	if err != nil {
		// Exited in the meantime, or not ours to inspect (EACCES): trust
		// the signal when we cannot tell.
		if errors.Is(err, fs.ErrNotExist) {
			return false, 0
		}
		return true, pid
	}
	if !i.isDataDir(cwd) {
		return false, 0
	}
	return true, pid
}

// postmasterPID reads the first line of postmaster.pid.
func (i *Instance) postmasterPID() (int, error) {
	data, err := os.ReadFile(i.dataFile("postmaster.pid"))
	if err != nil {
		return 0, err
	}
	first, _, _ := strings.Cut(string(data), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		return 0, fmt.Errorf("parse postmaster.pid: %w", err)
	}
	return pid, nil
}

// isDataDir compares a path (from /proc/<pid>/cwd, symlinks resolved) with
// the data directory.
func (i *Instance) isDataDir(path string) bool {
	if path == i.cfg.DataDir {
		return true
	}
	real, err := filepath.EvalSymlinks(i.cfg.DataDir)
	return err == nil && real == path
}

// dataDirProcesses lists postgres processes (postmaster, backends,
// auxiliaries) whose working directory is the data directory, including
// orphans whose postmaster is already gone.
func (i *Instance) dataDirProcesses() []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile("/proc/" + e.Name() + "/comm")
		if err != nil || strings.TrimSpace(string(comm)) != "postgres" {
			continue
		}
		cwd, err := os.Readlink("/proc/" + e.Name() + "/cwd")
		if err != nil || !i.isDataDir(cwd) {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// Kill sends SIGKILL to the postmaster and to every postgres process still
// working in the data directory. It is the fencing fallback when a stop
// hangs: backends outlive a killed postmaster for a moment and could still
// commit, so they are killed too. The data directory then needs crash
// recovery (Start does that; Rewind does it before pg_rewind).
func (i *Instance) Kill() error {
	running, pid := i.IsRunning()
	var errs []error
	killed := []int{}
	if running {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("kill postmaster %d: %w", pid, err))
		} else {
			killed = append(killed, pid)
		}
	}
	for _, p := range i.dataDirProcesses() {
		if p == pid {
			continue
		}
		if err := syscall.Kill(p, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("kill postgres process %d: %w", p, err))
			continue
		}
		killed = append(killed, p)
	}
	i.dropConn()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("kill postgres: %w", err)
	}
	// SIGKILL is asynchronous; callers go on to restart or rewind, which
	// must not race with dying backends still holding the data directory.
	deadline := time.Now().Add(killWait)
	for {
		running, _ := i.IsRunning()
		left := i.dataDirProcesses()
		if !running && len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kill postgres: processes %v still present after %s", left, killWait)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(killed) == 0 {
		i.log.Info("postgres not running; nothing to kill")
		return nil
	}
	i.log.Warn("killed postgres", zap.Ints("pids", killed))
	return nil
}

// killWait bounds how long Kill waits for SIGKILLed processes to vanish.
const killWait = 10 * time.Second
