package health

import (
	"context"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
)

// MemberState is the agent's view of its own member after its last loop.
// The health endpoints answer from it alone (no I/O), so HAProxy's checks
// stay cheap and answer even when Consul is slow.
type MemberState struct {
	Cluster string
	Group   string
	Name    string
	// Role is consulkv.RolePrimary, RoleReplica or RoleUnknown.
	Role string
	// State is the PostgreSQL state as pgmesh sees it: "running", "stopped",
	// "starting", "bootstrapping", "cloning", "rewinding", "crashed",
	// "fenced", "refused".
	State string
	// IsLeader: this member holds the group's leader key and its lease is valid.
	IsLeader bool
	// Writable: PostgreSQL accepts writes (primary, not fenced) and IsLeader.
	Writable      bool
	PGRunning     bool
	Timeline      uint32
	WriteLSN      uint64
	ReceiveLSN    uint64
	ReplayLSN     uint64
	Streaming     bool   // replica: wal receiver streaming from the leader
	LeaderName    string // current leader of the group ("" if none)
	LeaderLastLSN uint64 // leader's last published WAL position, for lag
	SystemID      string
	PGVersion     int // server_version_num
	Tags          consulkv.MemberTags
	Paused        bool
	// LastLoop is when the HA loop last completed; TTL the cluster ttl.
	LastLoop       time.Time
	TTL            time.Duration
	PendingRestart bool
	APIURL         string
	ConnURL        string
	StartTime      time.Time // postmaster start time
	Message        string    // last notable condition, e.g. why a start was refused
	// ConfigProblem says why the stored cluster config was not adopted
	// ("" when it was): the agent runs on the last good one meanwhile.
	ConfigProblem string
	// DCSLastSeen is when Consul last answered the agent's group read.
	DCSLastSeen time.Time
	// SyncStandby: the group's leader lists this member as a synchronous
	// standby.
	SyncStandby bool
	// ReplayPaused and ReplayTimestamp describe a replica's WAL replay
	// (paused by pg_wal_replay_pause(); commit time of the last replayed
	// transaction).
	ReplayPaused    bool
	ReplayTimestamp time.Time
	// Replication lists the leader's walsenders (pg_stat_replication).
	Replication []Replication
	// LeaseKnown and LeaseUntil: when the agent fills them, the member's
	// lease (its session's, which holds the leader lock) as of the request;
	// a leader whose lease ran out is not reported writable even if the
	// loop that would fence it is still busy.
	LeaseKnown bool
	LeaseUntil time.Time
	// FailsafeActive: the leader keeps running without Consul because every
	// other member of its group confirmed it (failsafe mode).
	FailsafeActive bool
}

// Replication is one standby connection of the leader, with Patroni's
// field names.
type Replication struct {
	Usename         string `json:"usename"`
	ApplicationName string `json:"application_name"`
	ClientAddr      string `json:"client_addr"`
	State           string `json:"state"`
	SyncState       string `json:"sync_state"`
	SyncPriority    int    `json:"sync_priority"`
}

// InArchiveRecovery: a running replica that is not streaming (replaying
// what it has, or from an archive), as Patroni's metric of that name.
func (s MemberState) InArchiveRecovery() bool {
	return s.PGRunning && s.Role == consulkv.RoleReplica && !s.Streaming
}

// LagBytes is how far behind the leader's last published LSN the member is
// (0 for the leader or when unknown).
func (s MemberState) LagBytes() uint64 {
	if s.Role == consulkv.RolePrimary || s.LeaderLastLSN == 0 {
		return 0
	}
	last := s.ReplayLSN
	if s.ReceiveLSN > last {
		last = s.ReceiveLSN
	}
	if last >= s.LeaderLastLSN {
		return 0
	}
	return s.LeaderLastLSN - last
}

// Controller is what the REST API needs from the agent.
type Controller interface {
	// State returns the latest MemberState (cheap, no I/O).
	State() MemberState
	// Group reads the member's group from Consul.
	Group(ctx context.Context) (*consulkv.GroupView, error)
	// Cluster reads the whole cluster from Consul.
	Cluster(ctx context.Context) (*consulkv.ClusterView, error)
	// Config reads the dynamic configuration and its ModifyIndex.
	Config(ctx context.Context) (*consulkv.ClusterConfig, uint64, error)
	// CASConfig writes the dynamic configuration if its index is still index.
	CASConfig(ctx context.Context, cfg *consulkv.ClusterConfig, index uint64) (bool, error)
	// RequestFailover stores a switchover/failover request in the group's
	// failover key (CAS: only if none is pending) and wakes the HA loop.
	RequestFailover(ctx context.Context, req *consulkv.FailoverRequest) error
	// CancelFailover removes a pending (scheduled) request.
	CancelFailover(ctx context.Context) error
	// Restart restarts PostgreSQL (the HA loop keeps its role), Reload
	// reloads its configuration, Reinitialize re-clones a replica from the
	// leader. They return when the action is done or failed.
	Restart(ctx context.Context) error
	Reload(ctx context.Context) error
	Reinitialize(ctx context.Context, force bool) error
	// Wake makes the HA loop run now instead of at the next loop_wait.
	Wake()
}
