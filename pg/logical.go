package pg

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	"github.com/jackc/pgx/v5"
)

// Logical slots on PostgreSQL 15/16 cannot be created on a standby, so the
// agent keeps copies of the primary's logical slots by installing the
// slot's on-disk state file (read from the primary with
// pg_read_binary_file) and restarting the standby, then moves the copy
// forward with pg_replication_slot_advance — the approach Patroni takes.

var slotNameRe = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// InstallSlotState writes a logical slot's state file into the (stopped or
// running) standby's pg_replslot; it takes effect at the next start.
func (i *Instance) InstallSlotState(name string, state []byte) error {
	if !slotNameRe.MatchString(name) {
		return fmt.Errorf("install slot %q: not a valid slot name", name)
	}
	if len(state) < 16 {
		return fmt.Errorf("install slot %s: state file of %d bytes is too short", name, len(state))
	}
	dir := filepath.Join(i.cfg.DataDir, "pg_replslot", name)
	if err := i.ensureDir(dir, 0o700); err != nil {
		return fmt.Errorf("install slot %s: %w", name, err)
	}
	if _, err := i.writeFileAtomic(filepath.Join(dir, "state"), state, 0o600); err != nil {
		return fmt.Errorf("install slot %s: %w", name, err)
	}
	i.log.Info("installed a copy of the leader's logical slot; it loads at the next restart")
	return nil
}

// ReadSlotState reads a slot's state file from a running server (the
// leader), as superuser.
func ReadSlotState(ctx context.Context, source ConnInfo, name string) ([]byte, error) {
	if !slotNameRe.MatchString(name) {
		return nil, fmt.Errorf("read slot %q: not a valid slot name", name)
	}
	c, err := connect(ctx, source)
	if err != nil {
		return nil, fmt.Errorf("read slot %s: %w", name, err)
	}
	defer c.Close(context.Background())
	var data []byte
	if err := c.QueryRow(ctx, "SELECT pg_read_binary_file('pg_replslot/' || $1::text || '/state')", name).Scan(&data); err != nil {
		return nil, fmt.Errorf("read slot %s: %w", name, err)
	}
	return data, nil
}

// WithDBConn runs fn on a short-lived superuser connection to database
// dbname of this instance (logical slot functions must run in the slot's
// database).
func (i *Instance) WithDBConn(ctx context.Context, dbname string, fn func(*pgx.Conn) error) error {
	ci := i.agentConnInfo()
	ci.DBName = dbname
	c, err := connect(ctx, ci)
	if err != nil {
		return fmt.Errorf("connect to database %s: %w", dbname, err)
	}
	defer c.Close(context.Background())
	return fn(c)
}

// RemoveSlotState deletes an installed slot copy from a stopped server's
// data directory (used when a copy turned out unusable).
func (i *Instance) RemoveSlotState(name string) error {
	if !slotNameRe.MatchString(name) {
		return fmt.Errorf("remove slot %q: not a valid slot name", name)
	}
	return os.RemoveAll(filepath.Join(i.cfg.DataDir, "pg_replslot", name))
}

// ReceivedLSN asks a (standby) server directly how far it has received
// WAL — live, unlike the agent's REST status, which is refreshed once per
// loop. A switchover waits on it, so its write gap does not include a loop.
func ReceivedLSN(ctx context.Context, source ConnInfo) (LSN, error) {
	c, err := connect(ctx, source)
	if err != nil {
		return 0, err
	}
	defer c.Close(context.Background())
	var s string
	if err := c.QueryRow(ctx, "SELECT coalesce(greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), '0/0')::text").Scan(&s); err != nil {
		return 0, err
	}
	return ParseLSN(s)
}
