package pg

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// ReplicationOrigin is how far this server applied changes from one
// publisher: the publisher's WAL position of the last transaction applied
// (pg_replication_origin_status.remote_lsn). On a standby it is what replay
// has reached, because the apply's commits carry the origin in the WAL.
type ReplicationOrigin struct {
	Name string // the origin's name (Spock: its slot name; native: pg_<subscription oid>)
	// Slot is the publisher's slot the origin consumes from: the origin's
	// own name for Spock, pg_subscription.subslotname for a native
	// subscription.
	Slot      string
	RemoteLSN LSN
}

// ReplicationOrigins lists the replication origins of subscriptions (a
// native subscription's table-synchronisation origins, pg_<sub>_<rel>, are
// left out: they live only while a table is copied). It works on a primary
// and on a hot standby.
func (i *Instance) ReplicationOrigins(ctx context.Context) ([]ReplicationOrigin, error) {
	var out []ReplicationOrigin
	err := i.WithConn(ctx, func(c *pgx.Conn) error {
		// The catalog, not only pg_replication_origin_status: a standby
		// lists an origin there only once it replayed something of it.
		rows, err := c.Query(ctx, `SELECT o.roname, coalesce(s.subslotname::text, o.roname), coalesce(os.remote_lsn, '0/0')::text
			FROM pg_replication_origin o
			LEFT JOIN pg_replication_origin_status os ON os.local_id = o.roident
			LEFT JOIN pg_subscription s ON o.roname = 'pg_' || s.oid
			WHERE o.roname !~ '^pg_[0-9]+_[0-9]+$'
			ORDER BY o.roname`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var o ReplicationOrigin
			var lsn string
			if err := rows.Scan(&o.Name, &o.Slot, &lsn); err != nil {
				return err
			}
			if o.RemoteLSN, err = ParseLSN(lsn); err != nil {
				return err
			}
			out = append(out, o)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("list replication origins: %w", err)
	}
	return out, nil
}

// ReplayCaughtUp reports whether a standby has replayed all the WAL it
// received (true on a primary, or when nothing was received).
func (i *Instance) ReplayCaughtUp(ctx context.Context) (bool, error) {
	var done bool
	err := i.WithConn(ctx, func(c *pgx.Conn) error {
		return c.QueryRow(ctx, `SELECT NOT pg_is_in_recovery()
			OR pg_last_wal_receive_lsn() IS NULL
			OR pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn()`).Scan(&done)
	})
	return done, err
}
