package pg

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
)

// PostgreSQL 17 native failover slots (DESIGN.md §5). A logical slot
// created with failover = true is synchronised to standbys by their slot
// sync worker (sync_replication_slots = on, which needs primary_slot_name,
// hot_standby_feedback and a dbname in primary_conninfo); the primary's
// synchronized_standby_slots makes logical walsenders wait until those
// standbys have flushed the WAL they send, so a promoted standby never
// lacks a change a subscriber already applied.

// NativeFailoverSlotsVersion is the first server_version_num with native
// failover slots.
const NativeFailoverSlotsVersion = 170000

// NativeFailoverSlots reports whether a server of this server_version_num
// uses native failover slots instead of pgmesh's slot copies.
func NativeFailoverSlots(serverVersionNum int) bool {
	return serverVersionNum >= NativeFailoverSlotsVersion
}

// slotSyncDB is the database a PostgreSQL 17 standby's slot sync worker
// connects to (primary_conninfo must name one; any existing one will do).
const slotSyncDB = "postgres"

// SlotSyncOnStandby reports whether a standby of this major version and
// configuration runs the slot sync worker: PostgreSQL 17+, following an
// upstream through a physical slot, with wal_level = logical (the worker
// refuses anything less).
func SlotSyncOnStandby(major int, role Role, follow *FollowTarget, params map[string]string) bool {
	return major >= 17 && role == Replica && follow != nil && follow.SlotName != "" &&
		strings.EqualFold(strings.TrimSpace(params["wal_level"]), "logical")
}

// MajorVersion reads the data directory's PG_VERSION (e.g. 15 or 17); 0
// and an error when there is none.
func (i *Instance) MajorVersion() (int, error) {
	data, err := os.ReadFile(filepath.Join(i.cfg.DataDir, "PG_VERSION"))
	if err != nil {
		return 0, fmt.Errorf("read PG_VERSION: %w", err)
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return 0, fmt.Errorf("parse PG_VERSION %q: %w", strings.TrimSpace(string(data)), err)
	}
	return v, nil
}

// LogicalSlot17 is a logical slot as PostgreSQL 17 reports it.
type LogicalSlot17 struct {
	Name     string `json:"name"`
	Plugin   string `json:"plugin"`
	Database string `json:"database"`
	Active   bool   `json:"active"`
	// Temporary: a synced slot stays temporary on a standby until the
	// primary's slot has caught up with what the standby can decode.
	Temporary bool `json:"temporary"`
	Failover  bool `json:"failover"`
	Synced    bool `json:"synced"`
	// Invalidated is invalidation_reason (empty when valid).
	Invalidated    string `json:"invalidated,omitempty"`
	WALStatus      string `json:"wal_status,omitempty"`
	ConfirmedFlush LSN    `json:"confirmed_flush"`
}

// LogicalSlots17 lists the logical slots of a PostgreSQL 17+ server with
// their failover and synced flags.
func (i *Instance) LogicalSlots17(ctx context.Context) ([]LogicalSlot17, error) {
	var out []LogicalSlot17
	err := i.WithConn(ctx, func(c *pgx.Conn) error {
		rows, err := c.Query(ctx, `SELECT slot_name, coalesce(plugin, ''), coalesce(database, ''), active, temporary, failover, synced,
				coalesce(invalidation_reason, ''), coalesce(wal_status, ''), coalesce(confirmed_flush_lsn, '0/0')::text
			FROM pg_replication_slots WHERE slot_type = 'logical' ORDER BY slot_name`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var s LogicalSlot17
			var confirmed string
			if err := rows.Scan(&s.Name, &s.Plugin, &s.Database, &s.Active, &s.Temporary, &s.Failover, &s.Synced,
				&s.Invalidated, &s.WALStatus, &confirmed); err != nil {
				return err
			}
			if s.ConfirmedFlush, err = ParseLSN(confirmed); err != nil {
				return err
			}
			out = append(out, s)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("list logical slots (PostgreSQL 17): %w", err)
	}
	return out, nil
}

// SetStandbySlots makes the running server's synchronized_standby_slots
// value (ALTER SYSTEM, then a reload) and reports whether it had to
// change it. The current value is read first, so calling it every loop
// reloads only on a change. An empty value resets the setting.
func (i *Instance) SetStandbySlots(ctx context.Context, value string) (bool, error) {
	return i.SetSystemSetting(ctx, "synchronized_standby_slots", value)
}

// SetSystemSetting makes a reloadable setting's value in the running
// server name = value (ALTER SYSTEM, then a reload) and reports whether it
// had to change it; an empty value resets it. The current value is read
// first, so calling it every loop reloads only on a change. value must be
// a list of plain names (slot names, [a-z0-9_,]): it is quoted as a literal.
func (i *Instance) SetSystemSetting(ctx context.Context, name, value string) (bool, error) {
	changed := false
	err := i.WithConn(ctx, func(c *pgx.Conn) error {
		var cur string
		if err := c.QueryRow(ctx, "SELECT coalesce(current_setting($1, true), '')", name).Scan(&cur); err != nil {
			return err
		}
		if cur == value {
			return nil
		}
		ident := pgx.Identifier(strings.Split(name, ".")).Sanitize()
		var sql string
		if value == "" {
			sql = "ALTER SYSTEM RESET " + ident
		} else {
			// ALTER SYSTEM takes no parameters.
			sql = "ALTER SYSTEM SET " + ident + " = '" + strings.ReplaceAll(value, "'", "''") + "'"
		}
		if _, err := c.Exec(ctx, sql); err != nil {
			return err
		}
		if _, err := c.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
			return err
		}
		changed = true
		i.log.Debug("changed a setting", zap.String("name", name), zap.String("from", cur), zap.String("to", value))
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("set %s to %q: %w", name, value, err)
	}
	return changed, nil
}
