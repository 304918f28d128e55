package pg

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
)

// ErrDataDirExists is returned when an operation needs an empty data
// directory but finds an initialised one.
var ErrDataDirExists = errors.New("data directory already initialised")

// Initdb creates a new cluster in the data directory and writes the primary
// configuration. The superuser password reaches initdb through a temporary
// file, never the command line.
func (i *Instance) Initdb(ctx context.Context) error {
	if i.HasDataDir() {
		return fmt.Errorf("initdb %s: %w", i.cfg.DataDir, ErrDataDirExists)
	}
	if err := i.ensureDir(i.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("initdb: %w", err)
	}
	pwfile, cleanup, err := i.secretFile("pgmesh-initdb-pw-*", i.cfg.Superuser.Password+"\n")
	if err != nil {
		return fmt.Errorf("initdb: %w", err)
	}
	defer cleanup()

	started := time.Now()
	args := []string{
		"-D", i.cfg.DataDir,
		"-U", i.cfg.Superuser.User,
		"--pwfile=" + pwfile,
		"--auth-local=trust",
		"--auth-host=scram-sha-256",
		"--data-checksums",
		// Fixed rather than inherited so every member of a mesh gets the
		// same collation no matter which host bootstrapped it.
		"--encoding=UTF8",
		"--locale=C",
	}
	if _, err := i.run(ctx, "initdb", args, runOpts{ownGroup: true}); err != nil {
		return fmt.Errorf("initdb: %w", err)
	}
	if _, _, err := i.WriteConfig(Primary, nil); err != nil {
		return fmt.Errorf("initdb: %w", err)
	}
	i.log.Info("initialised data directory", zap.String("superuser", i.cfg.Superuser.User), zap.Duration("took", time.Since(started)))
	return nil
}

// secretFile writes content to a 0600 temp file readable by the OS user and
// returns its path and a cleanup func.
func (i *Instance) secretFile(pattern, content string) (string, func(), error) {
	f, err := os.CreateTemp("", pattern)
	if err != nil {
		return "", nil, fmt.Errorf("create secret file: %w", err)
	}
	name := f.Name()
	cleanup := func() { _ = os.Remove(name) }
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		cleanup()
		return "", nil, fmt.Errorf("chmod %s: %w", name, err)
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		cleanup()
		return "", nil, fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		cleanup()
		return "", nil, fmt.Errorf("close %s: %w", name, err)
	}
	if err := i.chown(name); err != nil {
		cleanup()
		return "", nil, err
	}
	return name, cleanup, nil
}

// CreateReplicationUser creates the replication role on the primary if it
// does not exist yet. Run once after bootstrap: replicas inherit it through
// the clone.
func (i *Instance) CreateReplicationUser(ctx context.Context) error {
	role := i.cfg.Replication.User
	if role == i.cfg.Superuser.User {
		// A superuser may replicate already.
		return nil
	}
	created := false
	err := i.WithConn(ctx, func(conn *pgx.Conn) error {
		var exists bool
		if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", role).Scan(&exists); err != nil {
			return fmt.Errorf("look up role: %w", err)
		}
		if exists {
			return nil
		}
		// Utility statements take no bind parameters; let the server quote
		// the identifier and the password literal.
		var stmt string
		if err := conn.QueryRow(ctx, "SELECT format('CREATE ROLE %I WITH LOGIN REPLICATION PASSWORD %L', $1::text, $2::text)",
			role, i.cfg.Replication.Password).Scan(&stmt); err != nil {
			return fmt.Errorf("build CREATE ROLE: %w", err)
		}
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("create role: %w", err)
		}
		created = true
		return nil
	})
	if err != nil {
		return fmt.Errorf("create replication user %q: %w", role, err)
	}
	if created {
		i.log.Info("created replication user", zap.String("role", role))
	} else {
		i.log.Info("replication user exists", zap.String("role", role))
	}
	return nil
}

// cloneDirPrefix names the sibling directory a clone is written into.
func (i *Instance) cloneDirPrefix() string {
	return "." + filepath.Base(i.cfg.DataDir) + ".pgmesh-clone-"
}

// Basebackup clones the data directory from source with pg_basebackup.
// source.User and Password default to the replication credentials. The
// clone is written into a sibling directory and renamed into place only
// when complete, so a failed or interrupted clone never leaves a
// half-made data directory that could be started by mistake.
//
// The configuration files come from the source; call WriteConfig before
// Start. Tablespaces are not relocated (pg_basebackup writes them to the
// source's paths).
func (i *Instance) Basebackup(ctx context.Context, source ConnInfo) error {
	dd := i.cfg.DataDir
	if i.HasDataDir() {
		return fmt.Errorf("basebackup into %s: %w", dd, ErrDataDirExists)
	}
	if empty, err := isEmptyDir(dd); err == nil && !empty {
		return fmt.Errorf("basebackup into %s: directory is not empty", dd)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("basebackup into %s: %w", dd, err)
	}
	parent := filepath.Dir(dd)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("basebackup: create %s: %w", parent, err)
	}
	// Leftovers of clones interrupted by a crash of the agent itself.
	if stale, _ := filepath.Glob(filepath.Join(parent, i.cloneDirPrefix()+"*")); len(stale) > 0 {
		for _, s := range stale {
			if err := os.RemoveAll(s); err != nil {
				return fmt.Errorf("basebackup: remove stale clone %s: %w", s, err)
			}
		}
		i.log.Info("removed stale clone directories", zap.Strings("paths", stale))
	}
	tmp, err := os.MkdirTemp(parent, i.cloneDirPrefix())
	if err != nil {
		return fmt.Errorf("basebackup: create temp directory: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o700); err != nil {
		return fmt.Errorf("basebackup: chmod %s: %w", tmp, err)
	}
	if err := i.chown(tmp); err != nil {
		return fmt.Errorf("basebackup: %w", err)
	}

	if source.User == "" {
		source.User, source.Password = i.cfg.Replication.User, i.cfg.Replication.Password
	}
	if source.AppName == "" {
		source.AppName = "pgmesh-basebackup-" + i.cfg.Name
	}
	if source.ConnectTimeout == 0 {
		source.ConnectTimeout = 10
	}
	args := []string{
		"--pgdata=" + tmp,
		"--dbname=" + source.withoutPassword().String(),
		"--wal-method=stream",
		"--checkpoint=fast",
		"--no-password",
		"--label=pgmesh clone for " + i.cfg.Name,
	}
	started := time.Now()
	i.log.Info("cloning data directory", zap.String("source", source.Redacted()))
	if _, err := i.run(ctx, "pg_basebackup", args, runOpts{env: passwordEnv(source.Password), ownGroup: true}); err != nil {
		return fmt.Errorf("basebackup from %s:%d: %w", source.Host, source.Port, err)
	}
	if !fileExists(filepath.Join(tmp, "PG_VERSION")) {
		return fmt.Errorf("basebackup from %s:%d: pg_basebackup succeeded but wrote no PG_VERSION", source.Host, source.Port)
	}
	// rename(2) replaces an empty directory, so a pre-created empty data
	// directory (e.g. a mount point's subdirectory) is fine too.
	if err := os.Rename(tmp, dd); err != nil {
		return fmt.Errorf("basebackup: move clone into place: %w", err)
	}
	ok = true
	if err := syncDir(parent); err != nil {
		return fmt.Errorf("basebackup: %w", err)
	}
	i.log.Info("cloned data directory", zap.String("source", fmt.Sprintf("%s:%d", source.Host, source.Port)), zap.Duration("took", time.Since(started)))
	return nil
}

func passwordEnv(pw string) []string {
	if pw == "" {
		return nil
	}
	return []string{"PGPASSWORD=" + pw}
}

// RemoveDataDir deletes the data directory so it can be re-cloned. It
// refuses when the server is running and when the path does not look like
// a data directory (no PG_VERSION), so a misconfigured DataDir can never
// wipe an unrelated tree. A missing directory is not an error.
func (i *Instance) RemoveDataDir() error {
	dd := filepath.Clean(i.cfg.DataDir)
	if dd == "" || dd == "/" || dd == "." || !filepath.IsAbs(dd) {
		return fmt.Errorf("remove data directory: refusing unsafe path %q", dd)
	}
	if _, err := os.Lstat(dd); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if running, pid := i.IsRunning(); running {
		return fmt.Errorf("remove data directory %s: postgres is running (pid %d)", dd, pid)
	}
	if procs := i.dataDirProcesses(); len(procs) > 0 {
		return fmt.Errorf("remove data directory %s: postgres processes %v still use it", dd, procs)
	}
	if !i.HasDataDir() {
		if empty, err := isEmptyDir(dd); err == nil && empty {
			if err := os.Remove(dd); err != nil {
				return fmt.Errorf("remove data directory: %w", err)
			}
			i.log.Info("removed empty data directory")
			return nil
		}
		return fmt.Errorf("remove data directory: refusing, %s has no PG_VERSION and is not empty", dd)
	}
	started := time.Now()
	if err := os.RemoveAll(dd); err != nil {
		return fmt.Errorf("remove data directory %s: %w", dd, err)
	}
	if err := syncDir(filepath.Dir(dd)); err != nil {
		return fmt.Errorf("remove data directory: %w", err)
	}
	i.log.Warn("removed data directory", zap.Duration("took", time.Since(started)))
	return nil
}
