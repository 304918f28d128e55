package pg

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
)

// Timeouts for the agent's own connection. Short, because a server that
// cannot answer within them is unhealthy from the HA loop's point of view.
const (
	connectTimeoutSeconds = 3
	statusTimeout         = 5 * time.Second
)

// Status is a snapshot of a running server, as seen over SQL.
type Status struct {
	InRecovery bool   `json:"in_recovery"`
	SystemID   uint64 `json:"system_id"`
	// Timeline is the primary's current timeline; for a replica the
	// timeline it receives when streaming, else its last checkpoint's.
	Timeline uint32 `json:"timeline"`
	// CurrentLSN is the primary's current WAL write position (0 on a
	// replica).
	CurrentLSN LSN `json:"current_lsn"`
	// ReceiveLSN and ReplayLSN are a replica's received and replayed WAL
	// positions (0 on a primary).
	ReceiveLSN LSN `json:"receive_lsn"`
	ReplayLSN  LSN `json:"replay_lsn"`
	// ReplayTimestamp is the commit time of the last replayed transaction
	// (zero if none since start).
	ReplayTimestamp time.Time `json:"replay_timestamp,omitzero"`
	// ReplayPaused: WAL replay is paused (pg_wal_replay_pause()).
	ReplayPaused bool              `json:"replay_paused,omitempty"`
	WalReceiver  *WalReceiver      `json:"wal_receiver,omitempty"`
	Replication  []ReplicationConn `json:"replication"`
	// ServerVersion is server_version_num, e.g. 150010;
	// ServerVersionString the human form, e.g. "15.10 (Debian ...)".
	ServerVersion       int       `json:"server_version"`
	ServerVersionString string    `json:"server_version_string"`
	StartTime           time.Time `json:"start_time"`
	// PendingRestart lists settings that wait for a restart.
	PendingRestart []string `json:"pending_restart,omitempty"`
}

// LastLSN is the furthest WAL position this server has: the write position
// on a primary; on a replica the later of received and replayed (replay can
// be ahead of receive after a restart, when WAL came from pg_wal).
func (s Status) LastLSN() LSN {
	if !s.InRecovery {
		return s.CurrentLSN
	}
	return max(s.ReceiveLSN, s.ReplayLSN)
}

// WalReceiver describes a replica's WAL receiver (pg_stat_wal_receiver).
type WalReceiver struct {
	Status      string `json:"status"` // "streaming", "starting", "waiting", ...
	ReceivedTLI uint32 `json:"received_tli"`
	FlushedLSN  LSN    `json:"flushed_lsn"`
	SenderHost  string `json:"sender_host"`
	SenderPort  int    `json:"sender_port"`
	SlotName    string `json:"slot_name"`
}

// ReplicationConn is one walsender (pg_stat_replication).
type ReplicationConn struct {
	PID             int           `json:"pid"`
	User            string        `json:"user"`
	ApplicationName string        `json:"application_name"`
	ClientAddr      string        `json:"client_addr"`
	State           string        `json:"state"`
	SentLSN         LSN           `json:"sent_lsn"`
	WriteLSN        LSN           `json:"write_lsn"`
	FlushLSN        LSN           `json:"flush_lsn"`
	ReplayLSN       LSN           `json:"replay_lsn"`
	ReplayLag       time.Duration `json:"replay_lag"`
	SyncState       string        `json:"sync_state"`
	SyncPriority    int32         `json:"sync_priority"`
	// ReplyTime is when the standby sent its last reply, by the standby's
	// clock (zero when none yet): compare values, not with this clock.
	ReplyTime time.Time `json:"reply_time"`
}

// agentConnInfo is how the agent reaches its own server: TCP to the address
// peers use, so a healthy status also proves the network path works.
func (i *Instance) agentConnInfo() ConnInfo {
	return ConnInfo{
		Host:           i.cfg.ConnectHost,
		Port:           i.cfg.Port,
		User:           i.cfg.Superuser.User,
		Password:       i.cfg.Superuser.Password,
		DBName:         "postgres",
		AppName:        "pgmesh",
		ConnectTimeout: connectTimeoutSeconds,
	}
}

// WithConn runs fn on the agent's connection to its server, connecting if
// needed. Calls are serialised. After any error that is not an ordinary SQL
// error reported by the server, the connection is discarded and the next
// call reconnects, which is how it survives server restarts.
func (i *Instance) WithConn(ctx context.Context, fn func(*pgx.Conn) error) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.conn != nil && i.conn.IsClosed() {
		i.conn = nil
	}
	if i.conn == nil {
		conn, err := connect(ctx, i.agentConnInfo())
		if err != nil {
			return fmt.Errorf("connect to %s:%d: %w", i.cfg.ConnectHost, i.cfg.Port, err)
		}
		i.conn = conn
	}
	err := fn(i.conn)
	if err != nil && !isServerError(err) {
		conn := i.conn
		i.conn = nil
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		_ = conn.Close(closeCtx)
		cancel()
	}
	return err
}

// isServerError reports whether err is an error the server returned for a
// statement, after which the session is still usable. Query cancellation
// and admin shutdown codes are excluded: they mean the session is going.
func isServerError(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || len(pgErr.Code) < 2 {
		return false
	}
	switch pgErr.Code[:2] {
	case "57", "08", "XX", "58": // operator intervention, connection, internal, system
		return false
	}
	return true
}

// dropConn forgets the agent connection, e.g. after killing the server.
func (i *Instance) dropConn() {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = i.conn.Close(ctx)
		cancel()
		i.conn = nil
	}
}

// Close releases the agent connection.
func (i *Instance) Close() error {
	i.dropConn()
	return nil
}

// Exec runs a statement and returns the number of rows affected.
func (i *Instance) Exec(ctx context.Context, sql string, args ...any) (int64, error) {
	var n int64
	err := i.WithConn(ctx, func(c *pgx.Conn) error {
		tag, err := c.Exec(ctx, sql, args...)
		n = tag.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("exec: %w", err)
	}
	return n, nil
}

// Query runs a query and returns all rows as column-name maps; meant for
// small result sets (status and catalog queries).
func (i *Instance) Query(ctx context.Context, sql string, args ...any) ([]map[string]any, error) {
	var out []map[string]any
	err := i.WithConn(ctx, func(c *pgx.Conn) error {
		rows, err := c.Query(ctx, sql, args...)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, pgx.RowToMap)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("query: %w", err)
	}
	return out, nil
}

// Show returns the current value of a setting as a session sees it.
func (i *Instance) Show(ctx context.Context, name string) (string, error) {
	var v string
	err := i.WithConn(ctx, func(c *pgx.Conn) error {
		return c.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&v)
	})
	if err != nil {
		return "", fmt.Errorf("show %s: %w", name, err)
	}
	return v, nil
}

// CheckpointIfPrimary runs CHECKPOINT on a primary and does nothing on a
// replica. Before a switchover it shortens the demoted primary's shutdown
// checkpoint; after a promotion it moves pg_control to the new timeline,
// which pg_rewind on the old primary depends on.
func (i *Instance) CheckpointIfPrimary(ctx context.Context) error {
	ran := false
	started := time.Now()
	err := i.WithConn(ctx, func(c *pgx.Conn) error {
		var inRecovery bool
		if err := c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
			return err
		}
		if inRecovery {
			return nil
		}
		_, err := c.Exec(ctx, "CHECKPOINT")
		ran = err == nil
		return err
	})
	if err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	if ran {
		i.log.Info("checkpoint done", zap.Duration("took", time.Since(started)))
	}
	return nil
}

// PendingRestart lists settings changed in the files that the running
// server can only apply after a restart (pg_settings.pending_restart). It is
// the authoritative check after Reload, e.g. for extension parameters whose
// context pgmesh cannot know.
func (i *Instance) PendingRestart(ctx context.Context) ([]string, error) {
	var names []string
	err := i.WithConn(ctx, func(c *pgx.Conn) error {
		rows, err := c.Query(ctx, "SELECT name FROM pg_settings WHERE pending_restart ORDER BY name")
		if err != nil {
			return err
		}
		names, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("pending restart: %w", err)
	}
	return names, nil
}

// Status queries the running server. Without a deadline in ctx a short one
// is applied, so a hung server cannot stall the HA loop.
func (i *Instance) Status(ctx context.Context) (Status, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, statusTimeout)
		defer cancel()
	}
	var st Status
	err := i.WithConn(ctx, func(c *pgx.Conn) error {
		var err error
		st, err = queryStatus(ctx, c)
		return err
	})
	if err != nil {
		return Status{}, fmt.Errorf("status: %w", err)
	}
	return st, nil
}

func queryStatus(ctx context.Context, c *pgx.Conn) (Status, error) {
	var (
		st               Status
		sysID, ckptTLI   int64
		walFile, current *string
		receive, replay  *string
		replayTS         *time.Time
		versionNum       string
		err              error
	)
	// One statement, so every value comes from the same moment.
	err = c.QueryRow(ctx, `SELECT
		pg_is_in_recovery(),
		(SELECT system_identifier FROM pg_control_system()),
		(SELECT timeline_id FROM pg_control_checkpoint()),
		CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END,
		CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
		pg_last_wal_receive_lsn()::text,
		pg_last_wal_replay_lsn()::text,
		pg_last_xact_replay_timestamp(),
		CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END,
		current_setting('server_version_num'),
		current_setting('server_version'),
		pg_postmaster_start_time(),
		ARRAY(SELECT name FROM pg_settings WHERE pending_restart ORDER BY name)`).Scan(
		&st.InRecovery, &sysID, &ckptTLI, &walFile, &current, &receive, &replay, &replayTS, &st.ReplayPaused,
		&versionNum, &st.ServerVersionString, &st.StartTime, &st.PendingRestart)
	if err != nil {
		return st, fmt.Errorf("query server state: %w", err)
	}
	// pg_control_system() returns the unsigned identifier as bigint; keep
	// the bits so it matches pg_controldata.
	st.SystemID = uint64(sysID)
	if replayTS != nil {
		st.ReplayTimestamp = *replayTS
	}
	if st.ServerVersion, err = strconv.Atoi(versionNum); err != nil {
		return st, fmt.Errorf("parse server_version_num %q: %w", versionNum, err)
	}
	for _, p := range []struct {
		dst *LSN
		src *string
	}{{&st.CurrentLSN, current}, {&st.ReceiveLSN, receive}, {&st.ReplayLSN, replay}} {
		if p.src == nil {
			continue
		}
		if *p.dst, err = ParseLSN(*p.src); err != nil {
			return st, err
		}
	}
	st.Timeline = uint32(ckptTLI)
	if walFile != nil {
		// The checkpoint timeline lags right after a promotion; the current
		// WAL file name carries the live one.
		if st.Timeline, err = timelineFromWalFile(*walFile); err != nil {
			return st, err
		}
	}

	if st.WalReceiver, err = queryWalReceiver(ctx, c); err != nil {
		return st, err
	}
	if wr := st.WalReceiver; st.InRecovery && wr != nil && wr.Status == "streaming" && wr.ReceivedTLI > 0 {
		st.Timeline = wr.ReceivedTLI
	}

	st.Replication, err = queryReplication(ctx, c)
	return st, err
}

// queryWalReceiver returns nil when no WAL receiver runs (a primary, or a
// replica without upstream).
func queryWalReceiver(ctx context.Context, c *pgx.Conn) (*WalReceiver, error) {
	rows, err := c.Query(ctx, `SELECT COALESCE(status, ''), COALESCE(received_tli, 0),
		COALESCE(flushed_lsn, '0/0')::text, COALESCE(sender_host, ''), COALESCE(sender_port, 0),
		COALESCE(slot_name, '')
		FROM pg_stat_wal_receiver`)
	if err != nil {
		return nil, fmt.Errorf("query pg_stat_wal_receiver: %w", err)
	}
	defer rows.Close()
	var wr *WalReceiver
	for rows.Next() {
		var (
			r         WalReceiver
			tli, port int32
			flushed   string
		)
		if err := rows.Scan(&r.Status, &tli, &flushed, &r.SenderHost, &port, &r.SlotName); err != nil {
			return nil, fmt.Errorf("scan pg_stat_wal_receiver: %w", err)
		}
		r.ReceivedTLI, r.SenderPort = uint32(tli), int(port)
		if r.FlushedLSN, err = ParseLSN(flushed); err != nil {
			return nil, err
		}
		wr = &r
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query pg_stat_wal_receiver: %w", err)
	}
	return wr, nil
}

func queryReplication(ctx context.Context, c *pgx.Conn) ([]ReplicationConn, error) {
	rows, err := c.Query(ctx, `SELECT pid, COALESCE(usename, ''), application_name,
		COALESCE(host(client_addr), ''), COALESCE(state, ''),
		COALESCE(sent_lsn, '0/0')::text, COALESCE(write_lsn, '0/0')::text,
		COALESCE(flush_lsn, '0/0')::text, COALESCE(replay_lsn, '0/0')::text,
		COALESCE(EXTRACT(EPOCH FROM replay_lag), 0)::float8, COALESCE(sync_state, ''),
		COALESCE(EXTRACT(EPOCH FROM reply_time), 0)::float8, COALESCE(sync_priority, 0)
		FROM pg_stat_replication ORDER BY application_name, pid`)
	if err != nil {
		return nil, fmt.Errorf("query pg_stat_replication: %w", err)
	}
	defer rows.Close()
	conns := []ReplicationConn{}
	for rows.Next() {
		var (
			r                             ReplicationConn
			pid                           int32
			sent, write, flush, replayLSN string
			lag, reply                    float64
		)
		if err := rows.Scan(&pid, &r.User, &r.ApplicationName, &r.ClientAddr, &r.State,
			&sent, &write, &flush, &replayLSN, &lag, &r.SyncState, &reply, &r.SyncPriority); err != nil {
			return nil, fmt.Errorf("scan pg_stat_replication: %w", err)
		}
		r.PID = int(pid)
		for _, p := range []struct {
			dst *LSN
			src string
		}{{&r.SentLSN, sent}, {&r.WriteLSN, write}, {&r.FlushLSN, flush}, {&r.ReplayLSN, replayLSN}} {
			if *p.dst, err = ParseLSN(p.src); err != nil {
				return nil, err
			}
		}
		r.ReplayLag = time.Duration(lag * float64(time.Second))
		if reply > 0 {
			r.ReplyTime = time.Unix(0, int64(reply*1e9)).UTC()
		}
		conns = append(conns, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query pg_stat_replication: %w", err)
	}
	return conns, nil
}

// timelineFromWalFile extracts the timeline from a WAL segment file name
// (its first 8 hex digits).
func timelineFromWalFile(name string) (uint32, error) {
	if len(name) < 8 {
		return 0, fmt.Errorf("unexpected WAL file name %q", name)
	}
	tli, err := strconv.ParseUint(name[:8], 16, 32)
	if err != nil {
		return 0, fmt.Errorf("timeline from WAL file name %q: %w", name, err)
	}
	return uint32(tli), nil
}
