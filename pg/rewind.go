package pg

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
)

// ErrRewindFailed matches (errors.Is) every error from Rewind after which
// the data directory cannot be trusted to follow the source: the caller
// should remove it and clone again.
var ErrRewindFailed = errors.New("rewind failed")

// RewindError carries the failing stage and the tool's output.
type RewindError struct {
	Stage  string // "crash recovery" or "pg_rewind"
	Output string
	Err    error
}

func (e *RewindError) Error() string {
	return fmt.Sprintf("%s (%s): %v", ErrRewindFailed, e.Stage, e.Err)
}

// Unwrap exposes both the sentinel and the underlying cause.
func (e *RewindError) Unwrap() []error { return []error{ErrRewindFailed, e.Err} }

// Rewind resynchronises a stopped former primary with source (normally the
// new primary) using pg_rewind. source.User and Password default to the
// superuser credentials, DBName to "postgres".
//
// pg_rewind only accepts a cleanly shut down target, so a crashed or killed
// instance first gets crash recovery in single-user mode. Afterwards the
// configuration files are the source's: call WriteConfig(Replica, ...)
// before Start. A *RewindError (errors.Is ErrRewindFailed) means re-clone.
func (i *Instance) Rewind(ctx context.Context, source ConnInfo) error {
	if running, pid := i.IsRunning(); running {
		return fmt.Errorf("rewind: postgres is running (pid %d); stop it first", pid)
	}
	if !i.HasDataDir() {
		return fmt.Errorf("rewind: no initialised data directory at %s", i.cfg.DataDir)
	}
	cd, err := i.ControlData(ctx)
	if err != nil {
		return fmt.Errorf("rewind: %w", err)
	}
	if !cd.CleanShutdown() {
		if err := i.crashRecovery(ctx, cd.State); err != nil {
			return err
		}
	}

	if source.User == "" {
		source.User, source.Password = i.cfg.Superuser.User, i.cfg.Superuser.Password
	}
	if source.DBName == "" {
		source.DBName = "postgres"
	}
	if source.AppName == "" {
		source.AppName = "pgmesh-rewind-" + i.cfg.Name
	}
	if source.ConnectTimeout == 0 {
		source.ConnectTimeout = 10
	}
	if err := i.checkpointSourceAfterPromotion(ctx, source); err != nil {
		return fmt.Errorf("rewind: %w", err)
	}

	started := time.Now()
	args := []string{
		"--target-pgdata=" + i.cfg.DataDir,
		"--source-server=" + source.withoutPassword().String(),
	}
	out, err := i.run(ctx, "pg_rewind", args, runOpts{env: passwordEnv(source.Password), ownGroup: true})
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			// Interrupted, not refused: the caller decides whether to
			// retry; the directory still needs a rewind or re-clone.
			return fmt.Errorf("rewind from %s:%d: %w", source.Host, source.Port, err)
		}
		return &RewindError{Stage: "pg_rewind", Output: out, Err: err}
	}
	msg := "rewound data directory"
	if strings.Contains(out, "no rewind required") {
		msg = "rewind not required"
	}
	i.log.Info(msg, zap.String("source", fmt.Sprintf("%s:%d", source.Host, source.Port)), zap.Duration("took", time.Since(started)))
	return nil
}

// crashRecovery replays WAL in single-user mode until the cluster is
// consistent and shut down cleanly.
func (i *Instance) crashRecovery(ctx context.Context, state string) error {
	// Single-user mode refuses standby mode; the caller rewrites the signal
	// file with WriteConfig after the rewind anyway.
	for _, sig := range []string{standbySignal, recoverySignal} {
		if _, err := removeFile(i.dataFile(sig)); err != nil {
			return fmt.Errorf("rewind: %w", err)
		}
	}
	started := time.Now()
	args := []string{
		"--single", "-D", i.cfg.DataDir,
		// With archiving "on" but an always-failing command, the final
		// checkpoint keeps every WAL segment it would otherwise recycle:
		// pg_rewind may need them to find the point of divergence.
		"-c", "archive_mode=on",
		"-c", "archive_command=false",
		"postgres",
	}
	// stdin is /dev/null: the session ends at once and the server shuts
	// down with a checkpoint once recovery is complete.
	out, err := i.run(ctx, "postgres", args, runOpts{ownGroup: true})
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("rewind: crash recovery: %w", err)
		}
		return &RewindError{Stage: "crash recovery", Output: out, Err: err}
	}
	cd, err := i.ControlData(ctx)
	if err != nil {
		return fmt.Errorf("rewind: after crash recovery: %w", err)
	}
	if !cd.CleanShutdown() {
		return &RewindError{Stage: "crash recovery", Output: out, Err: fmt.Errorf("cluster state is %q after single-user recovery", cd.State)}
	}
	i.log.Info("completed crash recovery", zap.String("state_before", state), zap.Duration("took", time.Since(started)))
	return nil
}

// checkpointSourceAfterPromotion makes a freshly promoted source write a
// checkpoint. PostgreSQL 15 updates pg_control's timeline only at the first
// checkpoint after promotion, and pg_rewind reads the source timeline from
// there: without it pg_rewind sees both sides on the old timeline, reports
// "no rewind required" and leaves a diverged target.
func (i *Instance) checkpointSourceAfterPromotion(ctx context.Context, source ConnInfo) error {
	conn, err := connect(ctx, source)
	if err != nil {
		return fmt.Errorf("connect to rewind source %s: %w", source.Redacted(), err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var (
		inRecovery bool
		ckptTLI    int64
		walFile    *string
	)
	err = conn.QueryRow(ctx, `SELECT pg_is_in_recovery(),
		(SELECT timeline_id FROM pg_control_checkpoint()),
		CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END`).Scan(&inRecovery, &ckptTLI, &walFile)
	if err != nil {
		return fmt.Errorf("query rewind source timeline: %w", err)
	}
	if inRecovery || walFile == nil {
		// A standby source updates its control file as it replays; nothing
		// to force.
		return nil
	}
	tli, err := timelineFromWalFile(*walFile)
	if err != nil {
		return err
	}
	if int64(tli) == ckptTLI {
		return nil
	}
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		return fmt.Errorf("checkpoint rewind source: %w", err)
	}
	i.log.Info("checkpointed rewind source after promotion", zap.Uint32("timeline", tli), zap.Int64("checkpoint_timeline", ckptTLI))
	return nil
}

// connect opens a one-off connection.
func connect(ctx context.Context, ci ConnInfo) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(ci.String())
	if err != nil {
		return nil, fmt.Errorf("parse connection string %s: %w", ci.Redacted(), err)
	}
	return pgx.ConnectConfig(ctx, cfg)
}
