package testbed

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Postgres is a standalone PostgreSQL 15 instance started for a test. The HA
// tests do not use it (there pgmesh agents manage PostgreSQL themselves); it
// serves tests that need a plain server.
type Postgres struct {
	DataDir string
	Port    int
	User    *OSUser
	t       testing.TB
	logPath string
}

// StartPostgres runs initdb and starts a server on a free loopback port,
// as the unprivileged OS user when the test runs as root.
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	u, err := PostgresOSUser()
	if err != nil {
		t.Fatal(err)
	}
	dir := OwnedDir(t)
	p := &Postgres{DataDir: filepath.Join(dir, "data"), Port: FreePort(t), User: u, t: t, logPath: filepath.Join(dir, "postgres.log")}
	p.run("initdb", "-D", p.DataDir, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
	conf := fmt.Sprintf("listen_addresses = '127.0.0.1'\nport = %d\nunix_socket_directories = '%s'\nfsync = off\n", p.Port, dir)
	f, err := os.OpenFile(filepath.Join(p.DataDir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(conf)
	f.Close()
	DumpOnFailure(t, "postgres", p.logPath)
	p.run("pg_ctl", "start", "-w", "-t", "60", "-D", p.DataDir, "-l", p.logPath)
	t.Cleanup(func() {
		cmd := exec.Command(filepath.Join(PostgresBinDir(), "pg_ctl"), "stop", "-m", "immediate", "-w", "-D", p.DataDir)
		AsUser(cmd, p.User)
		cmd.Run()
	})
	return p
}

func (p *Postgres) run(name string, args ...string) {
	p.t.Helper()
	cmd := exec.Command(filepath.Join(PostgresBinDir(), name), args...)
	AsUser(cmd, p.User)
	out, err := cmd.CombinedOutput()
	if err != nil {
		p.t.Fatalf("testbed: %s %v: %v\n%s", name, args, err, out)
	}
}

// DSN is a libpq URL for the superuser.
func (p *Postgres) DSN() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", p.Port)
}

// Connect opens a pgx connection, closed at cleanup.
func (p *Postgres) Connect(ctx context.Context) *pgx.Conn {
	p.t.Helper()
	conn, err := pgx.Connect(ctx, p.DSN())
	if err != nil {
		p.t.Fatalf("testbed: connect %s: %v", p.DSN(), err)
	}
	p.t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// Eventually polls cond every interval until it returns nil or the deadline
// passes, then fails the test with the last error seen.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for {
		last = cond()
		if last == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s; last: %v", what, timeout, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
