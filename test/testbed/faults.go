package testbed

import (
	"context"
	"errors"
	"fmt"
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

// Fault injection on the processes the test bed started. Every helper acts
// on one member only and never by process name across members.

// AgentPID is the agent process's pid (0 when it is not running).
func (a *Agent) AgentPID() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil || a.cmd.Process == nil {
		return 0
	}
	select {
	case <-a.done:
		return 0
	default:
	}
	return a.cmd.Process.Pid
}

// Running reports whether the agent process is alive.
func (a *Agent) Running() bool { return a.AgentPID() != 0 }

// KillAgent SIGKILLs the agent process only. Its PostgreSQL and its fence
// watchdog (own process group) stay; the watchdog notices its stdin close.
func (a *Agent) KillAgent() {
	a.Signal(syscall.SIGKILL)
	a.Wait(10 * time.Second)
}

// SignalPostmaster sends sig to the postmaster only and returns its pid (0
// when PostgreSQL is not running).
func (a *Agent) SignalPostmaster(sig syscall.Signal) int {
	pid := a.PostmasterPID()
	if pid > 0 {
		syscall.Kill(pid, sig)
	}
	return pid
}

// KillPostmaster SIGKILLs the postmaster only: its backends, walsenders and
// auxiliary processes notice the dead postmaster and exit by themselves,
// the agent and the fence watchdog keep running.
func (a *Agent) KillPostmaster() int { return a.SignalPostmaster(syscall.SIGKILL) }

// ReplicationBlock keeps one replica from streaming from a primary by
// terminating, every few milliseconds, the walsenders that serve it (found
// by the replica's application_name, which pgmesh sets to the member name).
// The replica's walreceiver keeps retrying and keeps failing: for the
// replica and for the primary this looks like a broken network path between
// the two, while both still reach Consul and the clients.
type ReplicationBlock struct {
	primary *Agent
	replica string
	stop    chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	kills   int
	lastErr error
}

// BlockReplication starts cutting replica off primary until Stop.
func BlockReplication(t testing.TB, primary *Agent, replica string) *ReplicationBlock {
	t.Helper()
	b := &ReplicationBlock{primary: primary, replica: replica, stop: make(chan struct{}), done: make(chan struct{})}
	go b.run()
	t.Cleanup(b.Stop)
	return b
}

func (b *ReplicationBlock) run() {
	defer close(b.done)
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for {
		select {
		case <-b.stop:
			return
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if conn == nil || conn.IsClosed() {
			c, err := b.primary.Connect(ctx)
			if err != nil {
				b.note(0, err)
				cancel()
				time.Sleep(50 * time.Millisecond)
				continue
			}
			conn = c
		}
		var n int
		err := conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_replication WHERE application_name = $1`, b.replica).Scan(&n)
		cancel()
		if err != nil {
			conn.Close(context.Background())
			conn = nil
		}
		b.note(n, err)
		time.Sleep(20 * time.Millisecond)
	}
}

func (b *ReplicationBlock) note(n int, err error) {
	b.mu.Lock()
	b.kills += n
	if err != nil {
		b.lastErr = err
	}
	b.mu.Unlock()
}

// Kills is how many walsenders were terminated so far.
func (b *ReplicationBlock) Kills() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.kills
}

// Stop lets the replica stream again (idempotent).
func (b *ReplicationBlock) Stop() {
	select {
	case <-b.stop:
	default:
		close(b.stop)
	}
	<-b.done
}

// ErrMountRefused is returned by MountTmpfs when the kernel (or missing
// privileges) refuse the mount; callers skip the fault with a clear message.
var ErrMountRefused = errors.New("tmpfs mount refused")

// Tmpfs is a small tmpfs mounted for one test, to fill a member's disk.
type Tmpfs struct {
	Dir string
}

// MountTmpfs mounts a tmpfs of size (e.g. "96m") at dir, owned by the
// PostgreSQL OS user with mode 0700 so it can be a data directory. It is
// unmounted at cleanup.
func MountTmpfs(t testing.TB, dir, size string) (*Tmpfs, error) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	opts := "size=" + size + ",mode=0700"
	if u, err := PostgresOSUser(); err != nil {
		return nil, err
	} else if u != nil {
		opts += fmt.Sprintf(",uid=%d,gid=%d", u.UID, u.GID)
	}
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", opts, "tmpfs", dir).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%w: mount -t tmpfs -o %s tmpfs %s: %v: %s", ErrMountRefused, opts, dir, err, strings.TrimSpace(string(out)))
	}
	t.Cleanup(func() {
		// Lazy: PostgreSQL may still be stopping when cleanup runs.
		exec.Command("umount", "-l", dir).Run()
	})
	return &Tmpfs{Dir: dir}, nil
}

// Fill writes a filler file until the file system is full and returns its
// path; Free removes it.
func (f *Tmpfs) Fill() (string, error) {
	path := filepath.Join(f.Dir, "zz-filler")
	fh, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return "", err
	}
	defer fh.Close()
	buf := make([]byte, 1<<20)
	for {
		if _, err := fh.Write(buf); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return path, nil
			}
			return path, err
		}
	}
}

// Free removes the filler file.
func (f *Tmpfs) Free() error {
	err := os.Remove(filepath.Join(f.Dir, "zz-filler"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// Down stops the Consul agent (SIGKILL when crash, else SIGTERM), keeps it
// down for d and starts it again on the same ports and data dir.
func (c *Consul) Down(d time.Duration, crash bool) {
	c.t.Helper()
	if c.cmd != nil {
		if crash {
			syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
			<-c.done
			c.cmd = nil
		} else {
			c.Stop()
		}
	}
	time.Sleep(d)
	c.start()
}
