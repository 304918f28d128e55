package testbed

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// RepoRoot returns the root of the pgmesh checkout (the folder holding the
// go.mod of module github.com/pgmesh/pgmesh).
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		f, err := os.Open(filepath.Join(dir, "go.mod"))
		if err == nil {
			sc := bufio.NewScanner(f)
			sc.Scan()
			line := sc.Text()
			f.Close()
			if strings.TrimSpace(line) == "module github.com/pgmesh/pgmesh" {
				return dir, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("testbed: no go.mod of github.com/pgmesh/pgmesh above the working directory")
		}
		dir = parent
	}
}

// ConsulBinary finds the Consul server binary: $PGMESH_CONSUL_BIN, else the
// one scripts/setup builds into .cache/bin, else consul on PATH.
func ConsulBinary() (string, error) {
	if p := os.Getenv("PGMESH_CONSUL_BIN"); p != "" {
		return p, nil
	}
	if root, err := RepoRoot(); err == nil {
		p := filepath.Join(root, ".cache", "bin", "consul")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("consul"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("testbed: consul binary not found; run scripts/setup (it builds Consul v1.14.8 into .cache/bin)")
}

// PostgresBinDir is where the PostgreSQL 15 server binaries live.
func PostgresBinDir() string {
	if p := os.Getenv("PGMESH_PG_BINDIR"); p != "" {
		return p
	}
	return "/usr/lib/postgresql/15/bin"
}

// Postgres17BinDir is the PostgreSQL 17 kit scripts/setup assembles in
// .cache/pg17/bin ($PGMESH_PG17_BINDIR overrides it); t fails with what to
// run when it is missing.
func Postgres17BinDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("PGMESH_PG17_BINDIR")
	if dir == "" {
		root, err := RepoRoot()
		if err != nil {
			t.Fatal(err)
		}
		dir = filepath.Join(root, ".cache", "pg17", "bin")
	}
	for _, b := range []string{"postgres", "initdb", "pg_ctl", "pg_basebackup", "pg_rewind", "pg_controldata"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			t.Fatalf("testbed: PostgreSQL 17 kit incomplete (%v); run scripts/setup, which assembles it in .cache/pg17/bin", err)
		}
	}
	return dir
}

// SpockKit returns the Spock kit's bin directory when it is there.
func SpockKit() (string, bool) {
	dir := os.Getenv("PGMESH_SPOCK_BINDIR")
	if dir == "" {
		root, err := RepoRoot()
		if err != nil {
			return "", false
		}
		dir = filepath.Join(root, ".cache", "pg15spock", "bin")
	}
	if _, err := os.Stat(filepath.Join(dir, "..", "lib", "postgresql", "spock.so")); err != nil {
		return "", false
	}
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	}
	return dir, true
}

// SpockBinDir is the PostgreSQL 15 + Spock kit scripts/setup builds
// (.cache/pg15spock/bin; $PGMESH_SPOCK_BINDIR overrides it). Without the
// Spock source (../shared/spock, or $PGMESH_SPOCK_SRC) there is no kit and
// the test is skipped with that reason; with the source but no kit it fails
// with what to run.
func SpockBinDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("PGMESH_SPOCK_BINDIR")
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if dir == "" {
		dir = filepath.Join(root, ".cache", "pg15spock", "bin")
	}
	if _, err := os.Stat(filepath.Join(dir, "postgres")); err != nil {
		src := os.Getenv("PGMESH_SPOCK_SRC")
		if src == "" {
			src = filepath.Join(filepath.Dir(root), "shared", "spock", "spock-5.0.11.tar.gz")
		}
		if _, serr := os.Stat(src); serr != nil {
			t.Skipf("no Spock source at %s (set PGMESH_SPOCK_SRC): no Spock kit, Spock tests skipped", src)
		}
		t.Fatalf("testbed: the Spock kit is missing (%v) although its source is at %s; run scripts/setup", err, src)
	}
	if _, err := os.Stat(filepath.Join(dir, "..", "lib", "postgresql", "spock.so")); err != nil {
		t.Fatalf("testbed: the Spock kit at %s has no spock.so (%v); run scripts/setup", dir, err)
	}
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	}
	return dir
}

// OSUser is the unprivileged account PostgreSQL runs as. It is empty when the
// tests do not run as root, in which case everything runs as the caller.
type OSUser struct {
	Name     string
	UID, GID uint32
}

var (
	osUserOnce sync.Once
	osUser     *OSUser
	osUserErr  error
)

// PostgresOSUser returns the account to run PostgreSQL as, or nil when the
// current process is not root and needs no switch.
func PostgresOSUser() (*OSUser, error) {
	osUserOnce.Do(func() {
		if os.Geteuid() != 0 {
			return
		}
		name := os.Getenv("PGMESH_TEST_OS_USER")
		if name == "" {
			name = "postgres"
		}
		u, err := user.Lookup(name)
		if err != nil {
			osUserErr = fmt.Errorf("testbed: running as root and OS user %q for PostgreSQL not found (set PGMESH_TEST_OS_USER): %w", name, err)
			return
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		osUser = &OSUser{Name: name, UID: uint32(uid), GID: uint32(gid)}
	})
	return osUser, osUserErr
}

// AsUser makes cmd run as u (no-op for nil u).
func AsUser(cmd *exec.Cmd, u *OSUser) {
	if u == nil {
		return
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Credential = &syscall.Credential{Uid: u.UID, Gid: u.GID}
	cmd.Env = append(os.Environ(), "HOME="+os.TempDir(), "USER="+u.Name)
}

// OwnedDir creates a fresh directory for t that the PostgreSQL OS user can
// use; it is removed when the test ends.
func OwnedDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pgmesh-test-")
	if err != nil {
		t.Fatalf("testbed: temp dir: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("testbed: chmod %s: %v", dir, err)
	}
	u, err := PostgresOSUser()
	if err != nil {
		t.Fatal(err)
	}
	if u != nil {
		if err := os.Chown(dir, int(u.UID), int(u.GID)); err != nil {
			t.Fatalf("testbed: chown %s: %v", dir, err)
		}
	}
	return dir
}

var (
	portMu   sync.Mutex
	usedPort = map[int]bool{}
)

// FreePort returns a TCP port on 127.0.0.1 (UDP too, for Consul's DNS)
// that was free a moment ago and that this process has not handed out
// before. It picks below Linux's ephemeral range (32768+): a port the kernel
// just handed out for "port 0" is soon reused as the source port of some
// outgoing connection, and the server meant for it then fails to bind.
func FreePort(t testing.TB) int {
	t.Helper()
	portMu.Lock()
	defer portMu.Unlock()
	seed := int(time.Now().UnixNano()/1000) + os.Getpid()*7919
	for try := 0; try < 2000; try++ {
		port := 20000 + (seed+try*7907)%12000
		if usedPort[port] {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		l.Close()
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		u.Close()
		usedPort[port] = true
		return port
	}
	t.Fatal("testbed: no free port found")
	return 0
}

// DumpOnFailure logs the tail of a file when t has failed.
func DumpOnFailure(t testing.TB, what, path string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Logf("testbed: %s log %s: %v", what, path, err)
			return
		}
		const max = 64 << 10
		if len(data) > max {
			data = data[len(data)-max:]
		}
		t.Logf("---- %s (%s) ----\n%s\n---- end %s ----", what, path, data, what)
	})
}

// FreePortBlock returns the first of n consecutive free TCP ports, chosen
// below Linux's ephemeral range so outgoing connections cannot take them
// while the test runs.
func FreePortBlock(t testing.TB, n int) int {
	t.Helper()
	portMu.Lock()
	defer portMu.Unlock()
	seed := int(time.Now().UnixNano()/1000) + os.Getpid()
	for try := 0; try < 200; try++ {
		base := 20000 + (seed+try*97)%12000
		ok := true
		for p := base; p < base+n && ok; p++ {
			if usedPort[p] {
				ok = false
				break
			}
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
			if err != nil {
				ok = false
				break
			}
			l.Close()
		}
		if ok {
			for p := base; p < base+n; p++ {
				usedPort[p] = true
			}
			return base
		}
	}
	t.Fatalf("testbed: no block of %d free ports", n)
	return 0
}
