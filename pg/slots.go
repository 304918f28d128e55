package pg

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
)

// SlotPrefix marks the physical replication slots pgmesh owns. Only
// physical slots with this prefix are ever dropped by pgmesh.
const SlotPrefix = "pgmesh_"

// maxSlotName is NAMEDATALEN-1.
const maxSlotName = 63

// SlotName returns the physical slot name for a member: SlotPrefix plus the
// member name lower-cased, with every character outside [a-z0-9_] replaced
// by '_' (slot names allow nothing else). Names that would exceed 63 bytes
// are shortened and suffixed with a hash of the member name, so two long
// names sharing a prefix still get distinct slots. Every member computes
// the same name for the same member.
func SlotName(member string) string {
	var b strings.Builder
	b.WriteString(SlotPrefix)
	for _, r := range strings.ToLower(member) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	name := b.String()
	if len(name) <= maxSlotName {
		return name
	}
	h := fnv.New32a()
	h.Write([]byte(member))
	suffix := fmt.Sprintf("_%08x", h.Sum32())
	return name[:maxSlotName-len(suffix)] + suffix
}

// ReplicationSlot is a row of pg_replication_slots.
type ReplicationSlot struct {
	Name       string `json:"name"`
	Type       string `json:"type"` // "physical" or "logical"
	Plugin     string `json:"plugin,omitempty"`
	Database   string `json:"database,omitempty"`
	Active     bool   `json:"active"`
	RestartLSN LSN    `json:"restart_lsn"`
	// WALStatus is "reserved", "extended", "unreserved" or "lost".
	WALStatus string `json:"wal_status,omitempty"`
	// ConfirmedFlush of a logical slot (0 for physical ones).
	ConfirmedFlush LSN `json:"confirmed_flush_lsn,omitempty"`
}

// ownsSlot is the ownership rule: pgmesh manages a slot only if it is
// physical and carries SlotPrefix. Logical slots (Spock's, subscriptions')
// and other tools' physical slots are never touched, whatever their name.
func ownsSlot(s ReplicationSlot) bool {
	return s.Type == "physical" && strings.HasPrefix(s.Name, SlotPrefix)
}

// slotPlan is what EnsurePhysicalSlots will do.
type slotPlan struct {
	create []string
	drop   []string
	// conflicts are wanted names taken by a slot we do not own (e.g. a
	// logical slot named pgmesh_x); we neither drop nor reuse it.
	conflicts []string
}

// planSlots decides, purely from the current slots and the wanted names,
// what to create and drop. Active slots are never dropped: a walsender is
// using them, and the member list may simply be stale.
func planSlots(existing []ReplicationSlot, wanted map[string]bool) slotPlan {
	var p slotPlan
	byName := make(map[string]ReplicationSlot, len(existing))
	for _, s := range existing {
		byName[s.Name] = s
		if ownsSlot(s) && !wanted[s.Name] && !s.Active {
			p.drop = append(p.drop, s.Name)
		}
	}
	for name := range wanted {
		s, ok := byName[name]
		switch {
		case !ok:
			p.create = append(p.create, name)
		case !ownsSlot(s):
			p.conflicts = append(p.conflicts, name)
		}
	}
	sort.Strings(p.create)
	sort.Strings(p.drop)
	sort.Strings(p.conflicts)
	return p
}

// ReplicationSlots lists all replication slots on the server.
func (i *Instance) ReplicationSlots(ctx context.Context) ([]ReplicationSlot, error) {
	var slots []ReplicationSlot
	err := i.WithConn(ctx, func(c *pgx.Conn) error {
		var err error
		slots, err = listSlots(ctx, c)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list replication slots: %w", err)
	}
	return slots, nil
}

func listSlots(ctx context.Context, c *pgx.Conn) ([]ReplicationSlot, error) {
	rows, err := c.Query(ctx, `SELECT slot_name, slot_type, COALESCE(plugin, ''), COALESCE(database, ''),
		active, COALESCE(restart_lsn, '0/0')::text, COALESCE(wal_status, ''), COALESCE(confirmed_flush_lsn, '0/0')::text
		FROM pg_replication_slots ORDER BY slot_name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var slots []ReplicationSlot
	for rows.Next() {
		var (
			s                  ReplicationSlot
			restart, confirmed string
		)
		if err := rows.Scan(&s.Name, &s.Type, &s.Plugin, &s.Database, &s.Active, &restart, &s.WALStatus, &confirmed); err != nil {
			return nil, err
		}
		if s.RestartLSN, err = ParseLSN(restart); err != nil {
			return nil, err
		}
		if s.ConfirmedFlush, err = ParseLSN(confirmed); err != nil {
			return nil, err
		}
		slots = append(slots, s)
	}
	return slots, rows.Err()
}

// EnsurePhysicalSlots makes the server hold one pgmesh physical slot per
// member in members (except this member itself) and drops pgmesh physical
// slots of members no longer listed, unless a walsender is using them.
// Slots pgmesh does not own are never dropped.
//
// New slots reserve WAL immediately, so a member that is still cloning or
// is down does not lose the WAL it will need.
func (i *Instance) EnsurePhysicalSlots(ctx context.Context, members []string) error {
	self := SlotName(i.cfg.Name)
	wanted := map[string]bool{}
	from := map[string]string{}
	for _, m := range members {
		name := SlotName(m)
		if name == self {
			continue
		}
		if prev, dup := from[name]; dup && prev != m {
			// Two members would share a slot and fight over it; the
			// operator has to rename one.
			i.log.Warn("members map to the same replication slot", zap.String("slot", name), zap.String("member", prev), zap.String("other_member", m))
		}
		from[name] = m
		wanted[name] = true
	}

	var created, dropped []string
	var errs []error
	err := i.WithConn(ctx, func(c *pgx.Conn) error {
		existing, err := listSlots(ctx, c)
		if err != nil {
			return fmt.Errorf("list replication slots: %w", err)
		}
		plan := planSlots(existing, wanted)
		if len(plan.conflicts) > 0 {
			errs = append(errs, fmt.Errorf("slot names %v are taken by slots pgmesh does not own", plan.conflicts))
		}
		for _, name := range plan.create {
			_, err := c.Exec(ctx, "SELECT pg_create_physical_replication_slot($1, true)", name)
			if isPgCode(err, "42710") { // duplicate_object: created concurrently
				continue
			}
			if err != nil {
				if !isServerError(err) {
					return fmt.Errorf("create slot %s: %w", name, err)
				}
				errs = append(errs, fmt.Errorf("create slot %s: %w", name, err))
				continue
			}
			created = append(created, name)
		}
		for _, name := range plan.drop {
			// Re-check ownership and activity in the same statement: a
			// walsender may have attached since we listed.
			tag, err := c.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
				WHERE slot_name = $1 AND slot_type = 'physical' AND NOT active AND starts_with(slot_name, $2)`, name, SlotPrefix)
			if isPgCode(err, "55006") || isPgCode(err, "42704") { // in use / already gone
				continue
			}
			if err != nil {
				if !isServerError(err) {
					return fmt.Errorf("drop slot %s: %w", name, err)
				}
				errs = append(errs, fmt.Errorf("drop slot %s: %w", name, err))
				continue
			}
			if tag.RowsAffected() > 0 {
				dropped = append(dropped, name)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("ensure physical slots: %w", err)
	}
	if len(created) > 0 || len(dropped) > 0 {
		i.log.Info("updated replication slots", zap.Strings("created", created), zap.Strings("dropped", dropped))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("ensure physical slots: %w", err)
	}
	return nil
}

func isPgCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}
