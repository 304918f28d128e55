package testbed

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// slowDiskSource is an LD_PRELOAD shim that makes the disk slow for the
// processes it is loaded into: while the file named by $SLOWDISK_CONTROL
// exists, every fsync, fdatasync, syncfs and sync_file_range first sleeps
// $SLOWDISK_DELAY_MS milliseconds, and appends one byte to
// $SLOWDISK_CONTROL.hits (so its size counts the delayed calls). Without
// the file it only costs a stat per call, so the fault is switched on and
// off during a run without restarting PostgreSQL. The variables' names
// must not start with PG: pgmesh drops PG* variables from the environment
// it gives PostgreSQL.
const slowDiskSource = `#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void slow(void) {
	const char *ctl = getenv("SLOWDISK_CONTROL");
	struct stat st;
	int saved = errno;
	if (ctl == NULL || stat(ctl, &st) != 0) {
		errno = saved;
		return;
	}
	const char *ms = getenv("SLOWDISK_DELAY_MS");
	long d = ms != NULL ? atol(ms) : 300;
	char hits[4096];
	snprintf(hits, sizeof hits, "%s.hits", ctl);
	int fd = open(hits, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (fd >= 0) {
		if (write(fd, "x", 1) < 0) {
		}
		close(fd);
	}
	struct timespec ts = {d / 1000, (d % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
	}
	errno = saved;
}

#define REAL(name) static __typeof__(name) *real; if (real == NULL) real = (__typeof__(name) *)dlsym(RTLD_NEXT, #name)

int fsync(int fd) { REAL(fsync); slow(); return real(fd); }
int fdatasync(int fd) { REAL(fdatasync); slow(); return real(fd); }
int syncfs(int fd) { REAL(syncfs); slow(); return real(fd); }
int sync_file_range(int fd, __off64_t off, __off64_t n, unsigned int flags) {
	REAL(sync_file_range); slow(); return real(fd, off, n, flags);
}
`

// SlowDisk is a compiled slow-disk shim (see slowDiskSource) with one
// control file per member, in a directory the PostgreSQL OS user can read.
type SlowDisk struct {
	Lib   string        // the shared object, for LD_PRELOAD
	Delay time.Duration // added to every sync call while a member's fault is on
	dir   string
}

// NewSlowDisk compiles the shim with gcc ($PGMESH_GCC, else gcc on PATH);
// the test is skipped when there is no compiler.
func NewSlowDisk(t testing.TB, delay time.Duration) *SlowDisk {
	t.Helper()
	gcc := os.Getenv("PGMESH_GCC")
	if gcc == "" {
		p, err := exec.LookPath("gcc")
		if err != nil {
			t.Skip("testbed: no gcc to build the slow-disk shim")
		}
		gcc = p
	}
	dir := OwnedDir(t)
	src := filepath.Join(dir, "slowdisk.c")
	if err := os.WriteFile(src, []byte(slowDiskSource), 0o644); err != nil {
		t.Fatal(err)
	}
	lib := filepath.Join(dir, "slowdisk.so")
	if out, err := exec.Command(gcc, "-shared", "-fPIC", "-O2", "-Wall", "-o", lib, src, "-ldl").CombinedOutput(); err != nil {
		t.Fatalf("testbed: build the slow-disk shim: %v\n%s", err, out)
	}
	os.Chmod(lib, 0o755)
	return &SlowDisk{Lib: lib, Delay: delay, dir: dir}
}

func (d *SlowDisk) control(member string) string { return filepath.Join(d.dir, member) }

// Env is what to add to member's AgentSpec.Env: the agent passes it on to
// pg_ctl and so to the postmaster and every backend.
func (d *SlowDisk) Env(member string) []string {
	return []string{"LD_PRELOAD=" + d.Lib, "SLOWDISK_CONTROL=" + d.control(member),
		fmt.Sprintf("SLOWDISK_DELAY_MS=%d", d.Delay.Milliseconds())}
}

// On makes member's sync calls slow (from each call's next start).
func (d *SlowDisk) On(member string) error {
	return os.WriteFile(d.control(member), nil, 0o644)
}

// Off ends it (a call already sleeping finishes its delay).
func (d *SlowDisk) Off(member string) error {
	if err := os.Remove(d.control(member)); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
}

// Hits counts member's delayed sync calls so far.
func (d *SlowDisk) Hits(member string) int64 {
	st, err := os.Stat(d.control(member) + ".hits")
	if err != nil {
		return 0
	}
	return st.Size()
}
