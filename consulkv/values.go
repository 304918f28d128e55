package consulkv

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ValueVersion is the schema version written into every value. Readers
// accept values of this version or lower.
const ValueVersion = 1

// DecodeError says which key held a value that could not be used.
type DecodeError struct {
	Key string
	Err error
}

func (e *DecodeError) Error() string { return fmt.Sprintf("consulkv: key %q: %v", e.Key, e.Err) }
func (e *DecodeError) Unwrap() error { return e.Err }

// Value is implemented by everything stored in the KV tree.
type Value interface {
	Validate() error
}

// Decode unmarshals data into v strictly (unknown fields are tolerated for
// forward compatibility, trailing garbage is not) and validates it. Any
// failure is a *DecodeError naming key.
func Decode(key string, data []byte, v Value) error {
	if len(bytes.TrimSpace(data)) == 0 {
		return &DecodeError{Key: key, Err: errors.New("empty value")}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(v); err != nil {
		return &DecodeError{Key: key, Err: fmt.Errorf("invalid JSON: %w", err)}
	}
	if dec.More() {
		return &DecodeError{Key: key, Err: errors.New("invalid JSON: trailing data after value")}
	}
	if err := v.Validate(); err != nil {
		return &DecodeError{Key: key, Err: err}
	}
	return nil
}

// Encode marshals a value after validating it, so nothing invalid is written.
func Encode(v Value) ([]byte, error) {
	if err := v.Validate(); err != nil {
		return nil, fmt.Errorf("consulkv: refusing to write invalid %T: %w", v, err)
	}
	return json.Marshal(v)
}

func checkVersion(v int) error {
	if v < 1 || v > ValueVersion {
		return fmt.Errorf("unsupported version %d (this pgmesh reads 1..%d)", v, ValueVersion)
	}
	return nil
}

// validName accepts the names pgmesh uses for clusters, groups and members:
// they become KV path segments, service IDs, DNS labels and slot names.
func validName(field, s string) error {
	if s == "" {
		return fmt.Errorf("%s is empty", field)
	}
	if len(s) > 63 {
		return fmt.Errorf("%s %q is longer than 63 characters", field, s)
	}
	for i, r := range s {
		ok := r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_' || (r >= 'A' && r <= 'Z')
		if !ok || (i == 0 && (r == '-' || r == '_')) {
			return fmt.Errorf("%s %q: use letters, digits, '-' and '_' (not first)", field, s)
		}
	}
	return nil
}

// ValidName reports whether s can be used as a cluster, group or member name.
func ValidName(field, s string) error { return validName(field, s) }

// Duration is a time.Duration that is written as "10s" and read from either
// a Go duration string or a number of seconds (Patroni writes numbers).
type Duration time.Duration

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		return d.Set(s)
	}
	var f float64
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("duration must be a string like \"10s\" or a number of seconds")
	}
	*d = Duration(f * float64(time.Second))
	return nil
}

// Set parses a duration string or a plain number of seconds.
func (d *Duration) Set(s string) error {
	s = strings.TrimSpace(s)
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		*d = Duration(f * float64(time.Second))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %q", s)
	}
	*d = Duration(v)
	return nil
}

func (d Duration) String() string { return time.Duration(d).String() }

// Initialize is the value of groups/<g>/initialize. The bootstrap winner
// writes it with CAS 0 and an empty SystemID, then fills the system
// identifier once initdb has run.
type Initialize struct {
	Version  int       `json:"version"`
	Member   string    `json:"member"`
	SystemID string    `json:"system_id,omitempty"`
	At       time.Time `json:"at"`
}

func (v *Initialize) Validate() error {
	if err := checkVersion(v.Version); err != nil {
		return err
	}
	if err := validName("member", v.Member); err != nil {
		return err
	}
	if v.SystemID != "" {
		if _, err := strconv.ParseUint(v.SystemID, 10, 64); err != nil {
			return fmt.Errorf("system_id %q is not a PostgreSQL system identifier", v.SystemID)
		}
	}
	return nil
}

// Leader is the value of groups/<g>/leader.
type Leader struct {
	Version int    `json:"version"`
	Member  string `json:"member"`
}

func (v *Leader) Validate() error {
	if err := checkVersion(v.Version); err != nil {
		return err
	}
	return validName("member", v.Member)
}

// Roles a member reports.
const (
	RolePrimary = "primary"
	RoleReplica = "replica"
	RoleUnknown = "unknown"
)

// MemberTags are a member's static properties that the HA rules read.
type MemberTags struct {
	NoFailover       bool              `json:"nofailover,omitempty"`
	FailoverPriority int               `json:"failover_priority,omitempty"`
	NoSync           bool              `json:"nosync,omitempty"`
	Custom           map[string]string `json:"custom,omitempty"`
}

// MemberStatus is the value of groups/<g>/members/<m>, written every loop by
// the member's agent under its session.
type MemberStatus struct {
	Version    int        `json:"version"`
	Name       string     `json:"name"`
	Group      string     `json:"group"`
	Role       string     `json:"role"`
	State      string     `json:"state"`
	APIURL     string     `json:"api_url"`
	ConnURL    string     `json:"conn_url"`
	Host       string     `json:"host"`
	Port       int        `json:"port"`
	Timeline   uint32     `json:"timeline,omitempty"`
	SystemID   string     `json:"system_id,omitempty"`
	WriteLSN   uint64     `json:"write_lsn,omitempty"`
	ReceiveLSN uint64     `json:"receive_lsn,omitempty"`
	ReplayLSN  uint64     `json:"replay_lsn,omitempty"`
	Streaming  bool       `json:"streaming,omitempty"`
	Tags       MemberTags `json:"tags"`
	// LogicalSlotsReady: this replica holds current copies of every logical
	// slot the leader published, so peers consuming from the group can
	// continue from it after a promotion.
	LogicalSlotsReady bool `json:"logical_slots_ready,omitempty"`
	// Logical is the member's view of logical replication between groups
	// (outgoing slots on a primary, incoming subscriptions).
	Logical      *LogicalStatus `json:"logical,omitempty"`
	PGVersion    int            `json:"pg_version,omitempty"`
	AgentVersion string         `json:"agent_version,omitempty"`
	Message      string         `json:"message,omitempty"`
	// SessionChecks are the health checks the member ties its session to:
	// the cluster config's safety rules depend on them (MemberSettings).
	SessionChecks []string `json:"session_checks,omitempty"`
	// ConfigProblem says why the member did not adopt the stored cluster
	// config (it keeps running with the last good one); "" when adopted.
	ConfigProblem string    `json:"config_problem,omitempty"`
	UpdatedAt     time.Time `json:"updated_at"`
}

// LastLSN is the furthest WAL position the member has.
func (m *MemberStatus) LastLSN() uint64 {
	l := m.WriteLSN
	if m.ReceiveLSN > l {
		l = m.ReceiveLSN
	}
	if m.ReplayLSN > l {
		l = m.ReplayLSN
	}
	return l
}

func (v *MemberStatus) Validate() error {
	if err := checkVersion(v.Version); err != nil {
		return err
	}
	if err := validName("name", v.Name); err != nil {
		return err
	}
	switch v.Role {
	case RolePrimary, RoleReplica, RoleUnknown:
	default:
		return fmt.Errorf("role %q is not primary, replica or unknown", v.Role)
	}
	if v.Port < 0 || v.Port > 65535 {
		return fmt.Errorf("port %d out of range", v.Port)
	}
	return nil
}

// Failover request kinds.
const (
	KindSwitchover = "switchover"
	KindFailover   = "failover"
)

// FailoverRequest is the value of groups/<g>/failover: a pending manual
// switchover (leader named, optional candidate and time) or failover
// (candidate named, leader may be gone).
type FailoverRequest struct {
	Version     int        `json:"version"`
	Kind        string     `json:"kind"`
	Leader      string     `json:"leader,omitempty"`
	Candidate   string     `json:"candidate,omitempty"`
	ScheduledAt *time.Time `json:"scheduled_at,omitempty"`
	RequestedAt time.Time  `json:"requested_at"`
}

func (v *FailoverRequest) Validate() error {
	if err := checkVersion(v.Version); err != nil {
		return err
	}
	switch v.Kind {
	case KindSwitchover:
		if v.Leader == "" {
			return errors.New("switchover needs the current leader")
		}
	case KindFailover:
		if v.Candidate == "" {
			return errors.New("failover needs a candidate")
		}
	default:
		return fmt.Errorf("kind %q is not switchover or failover", v.Kind)
	}
	if v.Leader != "" {
		if err := validName("leader", v.Leader); err != nil {
			return err
		}
	}
	if v.Candidate != "" {
		if err := validName("candidate", v.Candidate); err != nil {
			return err
		}
	}
	return nil
}

// GroupStatus is the value of groups/<g>/status, published by the leader.
type GroupStatus struct {
	Version  int               `json:"version"`
	Leader   string            `json:"leader"`
	LastLSN  uint64            `json:"last_lsn"`
	Timeline uint32            `json:"timeline"`
	Slots    map[string]uint64 `json:"slots,omitempty"`
	// LogicalSlots are the leader's logical slots (Spock's or native
	// subscriptions'), which replicas keep copies of.
	LogicalSlots map[string]LogicalSlot `json:"logical_slots,omitempty"`
	// Origins is how far the leader applied each publisher's changes
	// (replication origin → the publisher's LSN), so a standby promoted
	// after the leader died can tell which of them it never received.
	Origins   map[string]uint64 `json:"origins,omitempty"`
	UpdatedAt time.Time         `json:"updated_at"`
}

// LogicalSlot describes a logical slot on the leader.
type LogicalSlot struct {
	Plugin         string `json:"plugin"`
	Database       string `json:"database"`
	ConfirmedFlush uint64 `json:"confirmed_flush"`
}

// LogicalStatus is logical replication as one member sees it.
type LogicalStatus struct {
	Slots         []LogicalSlotStatus  `json:"slots,omitempty"`
	Subscriptions []SubscriptionStatus `json:"subscriptions,omitempty"`
}

// LogicalSlotStatus is an outgoing logical slot on a primary.
type LogicalSlotStatus struct {
	Name           string `json:"name"`
	Plugin         string `json:"plugin"`
	Database       string `json:"database"`
	Active         bool   `json:"active"`
	ConfirmedFlush uint64 `json:"confirmed_flush"`
	LagBytes       uint64 `json:"lag_bytes"`
	WALStatus      string `json:"wal_status,omitempty"`
}

// SubscriptionStatus is an incoming subscription on a primary.
type SubscriptionStatus struct {
	Name     string `json:"name"`
	Database string `json:"database"`
	Enabled  bool   `json:"enabled"`
	// Running: an apply worker is connected.
	Running bool `json:"running"`
	// Endpoints are the publisher host:port pairs from the connection
	// string, so readers can tell which group it consumes from.
	Endpoints      []string  `json:"endpoints,omitempty"`
	ReceivedLSN    uint64    `json:"received_lsn,omitempty"`
	LastMsgReceipt time.Time `json:"last_msg_receipt,omitempty"`
	// Source is "native" (pg_subscription) or "spock".
	Source string `json:"source"`
}

func (v *GroupStatus) Validate() error {
	if err := checkVersion(v.Version); err != nil {
		return err
	}
	return validName("leader", v.Leader)
}

// HistoryEntry is one promotion: the timeline that ended, where, why and who
// took over.
type HistoryEntry struct {
	Timeline  uint32    `json:"timeline"`
	LSN       uint64    `json:"lsn"`
	Reason    string    `json:"reason"`
	At        time.Time `json:"at"`
	NewLeader string    `json:"new_leader"`
	// SkippedChanges are other groups' changes this promotion left out: the
	// old leader applied them and confirmed them to their publisher, the
	// new leader never received them, and the publisher will not send them
	// again.
	SkippedChanges []SkippedChanges `json:"skipped_changes,omitempty"`
}

// SkippedChanges is a range of a publisher's WAL whose changes a subscriber
// group's new leader lacks: from its own position (From) to what the old
// leader had applied and the publisher had confirmed (To).
type SkippedChanges struct {
	Origin string `json:"origin"`
	Slot   string `json:"slot"`
	// Publisher is the group whose slot confirmed the range; "" when no
	// group published the slot, and then the range is only what the old
	// leader had applied (the publisher may still send part of it).
	Publisher string `json:"publisher,omitempty"`
	From      uint64 `json:"from"`
	To        uint64 `json:"to"`
}

// History is the value of groups/<g>/history.
type History struct {
	Version int            `json:"version"`
	Entries []HistoryEntry `json:"entries"`
}

func (v *History) Validate() error { return checkVersion(v.Version) }

// SyncState is the value of groups/<g>/sync.
type SyncState struct {
	Version      int      `json:"version"`
	Leader       string   `json:"leader"`
	SyncStandbys []string `json:"sync_standbys"`
}

func (v *SyncState) Validate() error { return checkVersion(v.Version) }

// ClusterConfig is the dynamic configuration in <prefix>/<cluster>/config,
// shared by every agent of the cluster. Zero fields take the defaults.
type ClusterConfig struct {
	Version              int               `json:"version"`
	TTL                  Duration          `json:"ttl"`
	LoopWait             Duration          `json:"loop_wait"`
	RetryTimeout         Duration          `json:"retry_timeout"`
	LockDelay            Duration          `json:"lock_delay"`
	MaximumLagOnFailover uint64            `json:"maximum_lag_on_failover"`
	Paused               bool              `json:"pause,omitempty"`
	PausedGroups         []string          `json:"paused_groups,omitempty"`
	Parameters           map[string]string `json:"parameters,omitempty"`
	// SynchronousMode is off (default), on or strict: with on/strict the
	// leader manages synchronous_standby_names and the sync key, and only a
	// listed synchronous standby may be promoted; strict blocks writes rather
	// than run without a synchronous standby.
	SynchronousMode      string `json:"synchronous_mode,omitempty"`
	SynchronousNodeCount int    `json:"synchronous_node_count,omitempty"`
	// Replication is the parameter profile for replication between groups:
	// none (default), native (publications/subscriptions) or spock.
	Replication string `json:"replication,omitempty"`
	// PrimaryStartTimeout is how long a leader whose PostgreSQL is down
	// keeps trying to start it before handing the lock to a replica that
	// can take over (Patroni's master_start_timeout). Unset: 300s; 0: at
	// once, trading a few unreplicated commits (async) for availability.
	PrimaryStartTimeout *Duration `json:"primary_start_timeout,omitempty"`
	// FailsafeMode (Patroni's failsafe_mode): a leader that cannot reach
	// Consul keeps running as primary while every other member of its
	// group confirms over the REST API (POST /failsafe) that it cannot
	// reach Consul either and will not take over; without it the leader
	// demotes when its lease runs out. Unset: on (see FailsafeOn).
	FailsafeMode *bool `json:"failsafe_mode,omitempty"`
	// Datacenters lists the Consul datacenters of the mesh: the prepared
	// queries fail over to them after the nearest ones (query.go).
	Datacenters []string `json:"datacenters,omitempty"`
	// PreparedQueries: the agents keep <cluster>-write and <cluster>-read
	// in their datacenter. Unset: on.
	PreparedQueries *bool `json:"prepared_queries,omitempty"`
}

// QueriesOn is prepared_queries with the default (on) applied.
func (c ClusterConfig) QueriesOn() bool {
	return c.PreparedQueries == nil || *c.PreparedQueries
}

// FailsafeOn is failsafe_mode with pgmesh's default applied: on, unlike
// Patroni. A session tied to serfHealth (the automatic setting on hosts)
// fences its leader 2.3s after the last renew, so without failsafe mode a
// Consul server election that long stops every primary (measured: a 4.9s
// write gap in TestNoFalseFailovers); with it the primary rides through
// whenever every member of its group confirms.
func (c ClusterConfig) FailsafeOn() bool {
	return c.FailsafeMode == nil || *c.FailsafeMode
}

// DefaultPrimaryStartTimeout applies when primary_start_timeout is unset.
const DefaultPrimaryStartTimeout = 300 * time.Second

// StartTimeout is primary_start_timeout with the default applied.
func (c ClusterConfig) StartTimeout() time.Duration {
	if c.PrimaryStartTimeout == nil {
		return DefaultPrimaryStartTimeout
	}
	return c.PrimaryStartTimeout.D()
}

// Replication profiles.
const (
	ReplicationNone   = "none"
	ReplicationNative = "native"
	ReplicationSpock  = "spock"
)

// ReplicationProfile is the profile with the default applied.
func (c ClusterConfig) ReplicationProfile() string {
	if c.Replication == "" {
		return ReplicationNone
	}
	return c.Replication
}

// Synchronous modes.
const (
	SyncOff    = "off"
	SyncOn     = "on"
	SyncStrict = "strict"
)

// SyncMode is the synchronous mode with the default applied.
func (c ClusterConfig) SyncMode() string {
	if c.SynchronousMode == "" {
		return SyncOff
	}
	return c.SynchronousMode
}

// SyncCount is synchronous_node_count with the default (1) applied.
func (c ClusterConfig) SyncCount() int {
	if c.SynchronousNodeCount <= 0 {
		return 1
	}
	return c.SynchronousNodeCount
}

// Defaults of the dynamic configuration.
const (
	DefaultTTL          = 20 * time.Second
	DefaultLoopWait     = 2 * time.Second
	DefaultRetryTimeout = 5 * time.Second
	// DefaultLockDelay is 0, "automatic" (see LockDelayFor): a TTL-only
	// session gets 1ms, because the holder's lease ends before Consul can
	// free the key and a lock-delay would only add to every failover; a
	// session tied to health checks gets DefaultChecksLockDelay.
	DefaultLockDelay            = 0
	DefaultMaximumLagOnFailover = 1 << 20
)

// WithDefaults fills zero fields.
func (c ClusterConfig) WithDefaults() ClusterConfig {
	if c.Version == 0 {
		c.Version = ValueVersion
	}
	if c.TTL == 0 {
		c.TTL = Duration(DefaultTTL)
	}
	if c.LoopWait == 0 {
		c.LoopWait = Duration(DefaultLoopWait)
	}
	if c.RetryTimeout == 0 {
		c.RetryTimeout = Duration(DefaultRetryTimeout)
	}
	if c.LockDelay == 0 {
		c.LockDelay = Duration(DefaultLockDelay)
	}
	if c.MaximumLagOnFailover == 0 {
		c.MaximumLagOnFailover = DefaultMaximumLagOnFailover
	}
	return c
}

// GroupPaused tells whether automatic actions are off for group.
func (c ClusterConfig) GroupPaused(group string) bool {
	if c.Paused {
		return true
	}
	for _, g := range c.PausedGroups {
		if g == group {
			return true
		}
	}
	return false
}

// Validate checks the timing rule: a leader renews every loop_wait and may
// spend up to retry_timeout on a failing Consul call; its lease is ttl/2
// (see LeaseFor), so loop_wait + 2·retry_timeout ≤ ttl keeps one slow renew
// from costing the lease (the same rule Patroni enforces).
func (v *ClusterConfig) Validate() error {
	if err := checkVersion(v.Version); err != nil {
		return err
	}
	c := v.WithDefaults()
	if c.TTL.D() < 2*time.Second {
		return fmt.Errorf("ttl %s: must be at least 2s", c.TTL)
	}
	if c.LoopWait.D() < 100*time.Millisecond {
		return fmt.Errorf("loop_wait %s: must be at least 100ms", c.LoopWait)
	}
	if c.RetryTimeout.D() < 100*time.Millisecond {
		return fmt.Errorf("retry_timeout %s: must be at least 100ms", c.RetryTimeout)
	}
	if c.LoopWait.D()+2*c.RetryTimeout.D() > c.TTL.D() {
		return &UnsafeConfigError{Rule: RuleTiming, Err: fmt.Errorf("loop_wait (%s) + 2*retry_timeout (%s) must not exceed ttl (%s)", c.LoopWait, c.RetryTimeout, c.TTL)}
	}
	// The leader renews once per loop; its lease (LockOptions.LeaseDuration:
	// ttl/2 minus a margin) must outlast a loop with room to spare, or the
	// lease fence would stop a healthy primary between two loops.
	lease := LockOptions{TTL: c.TTL.D()}.LeaseDuration()
	slack := min(max(200*time.Millisecond, lease/8), time.Second)
	if c.LoopWait.D()+slack > lease {
		return &UnsafeConfigError{Rule: RuleTiming, Err: fmt.Errorf("loop_wait %s: must be at most %s for ttl %s (the leader's lease is ttl/2 minus a margin = %s, renewed once per loop)", c.LoopWait, lease-slack, c.TTL, lease)}
	}
	if c.LockDelay.D() < 0 || c.LockDelay.D() > 60*time.Second {
		return fmt.Errorf("lock_delay %s: must be between 0 and 60s", c.LockDelay)
	}
	for k := range c.Parameters {
		if k == "" || strings.ContainsAny(k, " \t\n='") {
			return fmt.Errorf("parameters: %q is not a PostgreSQL parameter name", k)
		}
	}
	for _, dc := range c.Datacenters {
		if err := ValidDatacenter(dc); err != nil {
			return fmt.Errorf("datacenters: %w", err)
		}
	}
	switch c.SyncMode() {
	case SyncOff, SyncOn, SyncStrict:
	default:
		return fmt.Errorf("synchronous_mode %q: use off, on or strict", c.SynchronousMode)
	}
	switch c.ReplicationProfile() {
	case ReplicationNone, ReplicationNative, ReplicationSpock:
	default:
		return fmt.Errorf("replication %q: use none, native or spock", c.Replication)
	}
	if c.ReplicationProfile() != ReplicationNone {
		if err := CheckLogicalParameters(c.Parameters); err != nil {
			return fmt.Errorf("parameters: %w (replication is %s)", err, c.ReplicationProfile())
		}
	}
	if t := c.StartTimeout(); t < 0 || t > time.Hour {
		return fmt.Errorf("primary_start_timeout %s: must be between 0 and 1h", t)
	}
	if c.SynchronousNodeCount < 0 || c.SynchronousNodeCount > 16 {
		return fmt.Errorf("synchronous_node_count %d: must be between 1 and 16", c.SynchronousNodeCount)
	}
	if _, ok := c.Parameters["synchronous_standby_names"]; ok && c.SyncMode() != SyncOff {
		return fmt.Errorf("parameters: synchronous_standby_names is managed by pgmesh while synchronous_mode is %s", c.SyncMode())
	}
	return nil
}

// MemberSettings are the parts of one member's local configuration that
// the cluster config's safety rules depend on. Members publish them in
// their member key so `pgmesh config set` and PATCH /config can check a
// change against every member, and each agent checks it again before it
// adopts a config.
type MemberSettings struct {
	Member string `json:"-"`
	// SessionChecks are the health checks the member ties its session to
	// (consul.session_checks).
	SessionChecks []string `json:"session_checks,omitempty"`
}

// Rule names, as given in the errors of ValidateFor and in the README.
const (
	RuleTiming                = "timing"
	RuleSessionChecksLockWait = "session-checks-lock-delay"
)

// UnsafeConfigError is a cluster config that breaks a safety rule for a
// member: adopting it could leave two writable primaries or fence a
// healthy one.
type UnsafeConfigError struct {
	Rule   string
	Member string // "" when the rule does not depend on a member
	Err    error
}

func (e *UnsafeConfigError) Error() string {
	if e.Member != "" {
		return fmt.Sprintf("%s rule broken for member %s: %v", e.Rule, e.Member, e.Err)
	}
	return fmt.Sprintf("%s rule broken: %v", e.Rule, e.Err)
}

func (e *UnsafeConfigError) Unwrap() error { return e.Err }

// A session tied to health checks can be freed at any moment (a check
// goes critical), and a successor may take the lock lock-delay later; the
// leader is therefore fenced lock_delay − FenceMargin after the renew that
// last confirmed its session, and renews on its own timer, every
// KeepaliveInterval, independent of loop_wait. DefaultChecksLockDelay is
// what such a session gets when lock_delay is 0 (automatic): its 2.3s
// fence window outlasts a 1.5s freeze of the agent plus one keepalive
// interval, and serf's ~5.6s plus 2.5s keeps a dead host's failover near
// 8s. MinChecksLockDelay is the least that may be set: four renews fit in
// the fence window, so one slow or failed renew does not fence a healthy
// primary.
const (
	DefaultChecksLockDelay = 2500 * time.Millisecond
	MinChecksLockDelay     = time.Second
)

// LockDelayFor is the lock-delay a member's session gets: lock_delay as
// set, or when it is 0 (automatic) DefaultChecksLockDelay for a session tied
// to health checks and none for a TTL-only one.
func (c ClusterConfig) LockDelayFor(checks bool) time.Duration {
	if d := c.LockDelay.D(); d > 0 || !checks {
		return d
	}
	return DefaultChecksLockDelay
}

// SessionChecksLockDelay is the smallest non-zero lock_delay a member that
// ties its session to health checks may run with.
func (c ClusterConfig) SessionChecksLockDelay() time.Duration {
	return MinChecksLockDelay
}

// KeepaliveInterval is how often a leader renews its session between
// loops: a quarter of the fence window of a session with lock-delay
// lockDelay tied to health checks, else a quarter of the lease; never more
// than loopWait (the loop renews then anyway), never under 100ms.
func KeepaliveInterval(lockDelay, lease, loopWait time.Duration, checks bool) time.Duration {
	window := lease
	if checks && lockDelay-FenceMargin < window {
		window = lockDelay - FenceMargin
	}
	return max(min(window/4, loopWait), 100*time.Millisecond)
}

// ValidateFor is the one validation of a cluster config: its own rules
// (Validate) and the rules that involve the members' local settings. It
// runs where a config is seeded, where it is changed (config set, PATCH
// and PUT /config) and where an agent adopts it.
func (c ClusterConfig) ValidateFor(members []MemberSettings) error {
	if err := c.Validate(); err != nil {
		return err
	}
	d := c.WithDefaults()
	for _, m := range members {
		if len(m.SessionChecks) == 0 {
			continue
		}
		if ld, need := d.LockDelay.D(), d.SessionChecksLockDelay(); ld != 0 && ld < need {
			return &UnsafeConfigError{Rule: RuleSessionChecksLockWait, Member: m.Member, Err: fmt.Errorf(
				"lock_delay %s: the member ties its session to health checks (%s), so lock_delay must be 0 (automatic: %s) or at least %s (the leader is fenced lock_delay - %s after its last renew and renews four times in that window)",
				d.LockDelay, strings.Join(m.SessionChecks, ", "), DefaultChecksLockDelay, need, FenceMargin)}
		}
	}
	return nil
}

// UnmarshalYAML accepts "10s" or a number of seconds, like the JSON form.
func (d *Duration) UnmarshalYAML(unmarshal func(interface{}) error) error {
	var s string
	if err := unmarshal(&s); err != nil {
		return fmt.Errorf("duration must be a string like \"10s\" or a number of seconds")
	}
	return d.Set(s)
}

// CheckLogicalParameters refuses parameter values that would break
// replication between groups (DESIGN.md §5).
func CheckLogicalParameters(p map[string]string) error {
	lower := func(k string) string { return strings.ToLower(strings.Trim(strings.TrimSpace(p[k]), "'")) }
	if v, ok := p["wal_level"]; ok && lower("wal_level") != "logical" {
		return fmt.Errorf("wal_level=%s would stop logical replication; it must be logical", v)
	}
	for _, k := range []string{"track_commit_timestamp", "hot_standby_feedback", "wal_log_hints"} {
		if _, ok := p[k]; ok {
			switch lower(k) {
			case "on", "true", "1", "yes":
			default:
				return fmt.Errorf("%s=%s: it must be on for replication between groups", k, p[k])
			}
		}
	}
	return nil
}

// Content is v's JSON without its updated_at field: what a reader learns
// from a member or status value. Writers compare it to skip rewriting a key
// whose only change would be the timestamp.
func Content(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	var m map[string]any
	if json.Unmarshal(b, &m) != nil {
		return string(b)
	}
	delete(m, "updated_at")
	b, _ = json.Marshal(m)
	return string(b)
}
