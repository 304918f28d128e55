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

// ReplicationOrigins lists the replication origins that have applied
// something. It works on a primary and on a hot standby.
func (i *Instance) ReplicationOrigins(ctx context.Context) ([]ReplicationOrigin, error) {
	var out []ReplicationOrigin
	err := i.WithConn(ctx, func(c *pgx.Conn) error {
		rows, err := c.Query(ctx, `SELECT os.external_id, coalesce(s.subslotname::text, os.external_id), os.remote_lsn::text
			FROM pg_replication_origin_status os
			LEFT JOIN pg_subscription s ON os.external_id = 'pg_' || s.oid
			WHERE os.external_id IS NOT NULL AND os.remote_lsn <> '0/0'
			ORDER BY os.external_id`)
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
