// Package pg controls the one PostgreSQL instance a pgmesh agent runs
// beside: creating it (initdb, pg_basebackup), starting, stopping,
// reloading and promoting it (pg_ctl), bringing a former primary back in
// line (pg_rewind), writing the configuration that makes it a primary or a
// replica of a given upstream, managing its physical replication slots,
// and reading its state (pg_controldata offline, SQL via pgx/v5 online).
//
// It holds no HA policy. The agent's decision core decides what should
// happen; this package only does it, reports what it did in one log line
// per action, and returns errors that say which step failed and include
// the tool output that explains why.
//
// Files pgmesh manages in the data directory:
//
//   - postgresql.pgmesh.conf: every setting pgmesh controls, included as
//     the last line of postgresql.conf so it wins over initdb's defaults;
//   - pg_hba.conf: rewritten entirely;
//   - standby.signal: present exactly when the instance should be a
//     replica.
//
// The server log (<data dir>.log) and the Unix socket directory
// (<data dir>.run) live next to the data directory, not in it, so clones and
// rewinds never copy them between members (pg_rewind cannot copy a socket).
//
// PostgreSQL refuses to run as root. When the agent is root and
// Config.OSUser is set, every PostgreSQL binary runs as that user and every
// file or directory the package creates is handed to it.
//
// Replication slots: pgmesh owns exactly the physical slots whose names
// start with "pgmesh_" (see SlotName). It never drops any other slot, in
// particular logical slots that Spock, subscriptions or other tools rely on.
package pg
