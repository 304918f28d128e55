package health

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/internal/version"
)

// Status is the body of GET /patroni (and of every health endpoint). The
// field names are Patroni's, so HAProxy setups, monitoring and patronictl-era
// scripts read it unchanged, and pgmesh agents decode their peers' answers
// with this type during a leader race.
type Status struct {
	// State is the PostgreSQL state ("running", "stopped", "starting", …).
	State string `json:"state"`
	// PostmasterStartTime is formatted like Patroni's (Python's str() of an
	// aware datetime), present while PostgreSQL runs.
	PostmasterStartTime string `json:"postmaster_start_time,omitempty"`
	// Role is "primary", "replica" or "unknown".
	Role          string `json:"role"`
	ServerVersion int    `json:"server_version,omitempty"`
	// XLog is present only while PostgreSQL runs, as in Patroni: a stopped
	// member's last known position must not make a peer defer to it.
	XLog     *XLog  `json:"xlog,omitempty"`
	Timeline uint32 `json:"timeline,omitempty"`
	// ReplicationState is "streaming" for a replica whose WAL receiver
	// streams from the leader.
	ReplicationState         string      `json:"replication_state,omitempty"`
	DatabaseSystemIdentifier string      `json:"database_system_identifier,omitempty"`
	Patroni                  PatroniInfo `json:"patroni"`
	Tags                     Tags        `json:"tags,omitzero"`
	PendingRestart           bool        `json:"pending_restart"`
	Pause                    bool        `json:"pause"`
	// ClusterUnlocked: nobody holds the group's leader key.
	ClusterUnlocked bool `json:"cluster_unlocked,omitempty"`
	// Lag is how many bytes of WAL this member is behind the leader's last
	// published position (0 on the leader or when unknown).
	Lag uint64 `json:"lag"`
	// Leader is the member holding the group's leader key.
	Leader string `json:"leader,omitempty"`
	// Message is the agent's last notable condition (pgmesh addition).
	Message string `json:"message,omitempty"`
	// ConfigProblem: why the stored cluster config was not adopted
	// (pgmesh addition; absent when it was).
	ConfigProblem string `json:"config_problem,omitempty"`
	// DCSLastSeen is when Consul last answered (Unix seconds).
	DCSLastSeen int64 `json:"dcs_last_seen,omitempty"`
	// SyncStandby: listed as a synchronous standby by the leader.
	SyncStandby bool `json:"sync_standby,omitempty"`
	// Replication is the leader's standbys (pg_stat_replication).
	Replication []Replication `json:"replication,omitempty"`
	// FailsafeModeIsActive as Patroni reports it (only when true).
	FailsafeModeIsActive bool `json:"failsafe_mode_is_active,omitempty"`
}

// XLog is the member's WAL position: Location on a primary,
// ReceivedLocation/ReplayedLocation on a replica.
type XLog struct {
	Location         uint64 `json:"location,omitempty"`
	ReceivedLocation uint64 `json:"received_location,omitempty"`
	ReplayedLocation uint64 `json:"replayed_location,omitempty"`
	// ReplayedTimestamp is the commit time of the last replayed
	// transaction (a replica's; Patroni's format).
	ReplayedTimestamp string `json:"replayed_timestamp,omitempty"`
	// Paused is present on replicas: WAL replay is paused.
	Paused *bool `json:"paused,omitempty"`
}

// PatroniInfo identifies the agent. Scope is the group (Patroni's scope is
// one HA set); Cluster is the mesh, a pgmesh addition.
type PatroniInfo struct {
	Version string `json:"version"`
	Scope   string `json:"scope"`
	Name    string `json:"name"`
	Cluster string `json:"cluster,omitempty"`
}

// LastLSN is the furthest WAL position the member reported, whichever of
// location, received_location and replayed_location it sent.
func (s Status) LastLSN() uint64 {
	if s.XLog == nil {
		return 0
	}
	return max(s.XLog.Location, s.XLog.ReceivedLocation, s.XLog.ReplayedLocation)
}

// postmasterTimeLayout matches Python's str(datetime) for an aware datetime,
// which is what Patroni emits.
const postmasterTimeLayout = "2006-01-02 15:04:05.000000-07:00"

// NewStatus renders a MemberState as the /patroni document.
func NewStatus(st MemberState) Status {
	s := Status{
		State:                    st.State,
		Role:                     st.Role,
		ServerVersion:            st.PGVersion,
		Timeline:                 st.Timeline,
		DatabaseSystemIdentifier: st.SystemID,
		Patroni: PatroniInfo{
			Version: version.Version,
			Scope:   st.Group,
			Name:    st.Name,
			Cluster: st.Cluster,
		},
		Tags:                 Tags(st.Tags),
		PendingRestart:       st.PendingRestart,
		Pause:                st.Paused,
		ClusterUnlocked:      st.LeaderName == "",
		Lag:                  st.LagBytes(),
		Leader:               st.LeaderName,
		Message:              st.Message,
		ConfigProblem:        st.ConfigProblem,
		SyncStandby:          st.SyncStandby,
		FailsafeModeIsActive: st.FailsafeActive,
	}
	if !st.DCSLastSeen.IsZero() {
		s.DCSLastSeen = st.DCSLastSeen.Unix()
	}
	if s.State == "" {
		s.State = "unknown"
	}
	if s.Role == "" {
		s.Role = consulkv.RoleUnknown
	}
	if st.PGRunning {
		if !st.StartTime.IsZero() {
			s.PostmasterStartTime = st.StartTime.Format(postmasterTimeLayout)
		}
		switch st.Role {
		case consulkv.RolePrimary:
			s.XLog = &XLog{Location: st.WriteLSN}
			if st.IsLeader {
				s.Replication = st.Replication
			}
		case consulkv.RoleReplica:
			// Patroni falls back to the replayed position when the WAL
			// receiver has not reported one yet.
			paused := st.ReplayPaused
			s.XLog = &XLog{ReceivedLocation: max(st.ReceiveLSN, st.ReplayLSN), ReplayedLocation: st.ReplayLSN, Paused: &paused}
			if !st.ReplayTimestamp.IsZero() {
				s.XLog.ReplayedTimestamp = st.ReplayTimestamp.Format(postmasterTimeLayout)
			}
			if st.Streaming {
				s.ReplicationState = "streaming"
			}
		}
	}
	return s
}

// Tags is how member tags appear in the REST API: one flat object, like
// Patroni's (nofailover, failover_priority, nosync and the custom tags side
// by side). Custom values "true"/"false" are written as JSON booleans
// because Patroni-era tooling tests them for truth, and the string "false"
// is true in Python.
type Tags consulkv.MemberTags

// Names of the tags that are MemberTags fields rather than custom tags.
const (
	tagNoFailover       = "nofailover"
	tagFailoverPriority = "failover_priority"
	tagNoSync           = "nosync"
	tagNoLoadBalance    = "noloadbalance"
)

// IsZero lets `omitzero` drop an empty tag set.
func (t Tags) IsZero() bool {
	return !t.NoFailover && t.FailoverPriority == 0 && !t.NoSync && len(t.Custom) == 0
}

func (t Tags) MarshalJSON() ([]byte, error) {
	m := make(map[string]any, len(t.Custom)+3)
	for k, v := range t.Custom {
		switch k {
		case tagNoFailover, tagFailoverPriority, tagNoSync:
			// The typed fields are what the HA rules read; a custom tag of
			// the same name must not contradict them in the output.
			continue
		}
		switch v {
		case "true":
			m[k] = true
		case "false":
			m[k] = false
		default:
			m[k] = v
		}
	}
	if t.NoFailover {
		m[tagNoFailover] = true
	}
	if t.FailoverPriority != 0 {
		m[tagFailoverPriority] = t.FailoverPriority
	}
	if t.NoSync {
		m[tagNoSync] = true
	}
	return json.Marshal(m)
}

// UnmarshalJSON is lenient: it reads Patroni members' tags too, where
// booleans may be strings and custom values any JSON.
func (t *Tags) UnmarshalJSON(b []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("tags: %w", err)
	}
	*t = Tags{}
	for k, v := range raw {
		switch k {
		case tagNoFailover:
			t.NoFailover = rawBool(v)
		case tagNoSync:
			t.NoSync = rawBool(v)
		case tagFailoverPriority:
			t.FailoverPriority = rawInt(v)
		default:
			s, ok := rawString(v)
			if !ok {
				continue
			}
			if t.Custom == nil {
				t.Custom = map[string]string{}
			}
			t.Custom[k] = s
		}
	}
	return nil
}

// rawBool follows Patroni's parse_bool: unrecognised values are false.
func rawBool(v json.RawMessage) bool {
	var b bool
	if json.Unmarshal(v, &b) == nil {
		return b
	}
	s, _ := rawString(v)
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "true", "yes", "on", "1", "y", "t":
		return true
	}
	return false
}

func rawInt(v json.RawMessage) int {
	s, _ := rawString(v)
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || f != f || f > 1<<31 || f < -(1<<31) {
		return 0
	}
	return int(f)
}

// rawString returns a JSON string's value, or the compact JSON text of any
// other value; ok is false for null.
func rawString(v json.RawMessage) (string, bool) {
	v = bytes.TrimSpace(v)
	if len(v) == 0 || string(v) == "null" {
		return "", false
	}
	var s string
	if json.Unmarshal(v, &s) == nil {
		return s, true
	}
	var buf bytes.Buffer
	if json.Compact(&buf, v) == nil {
		return buf.String(), true
	}
	return string(v), true
}

// tagValue is a tag as the ?tag_<key>= filters compare it: built-in tags
// always have a value ("false" when unset), custom ones only when set.
func tagValue(t consulkv.MemberTags, key string) (string, bool) {
	switch key {
	case tagNoFailover:
		return strconv.FormatBool(t.NoFailover), true
	case tagNoSync:
		return strconv.FormatBool(t.NoSync), true
	case tagFailoverPriority:
		return strconv.Itoa(t.FailoverPriority), true
	}
	v, ok := t.Custom[key]
	return v, ok
}

// Lag is a replica's lag in /cluster: a number of bytes, or the string
// "unknown" when the leader's position or the member's is not known.
type Lag struct {
	Bytes uint64
	Known bool
}

func (l Lag) MarshalJSON() ([]byte, error) {
	if !l.Known {
		return []byte(`"unknown"`), nil
	}
	return strconv.AppendUint(nil, l.Bytes, 10), nil
}

func (l *Lag) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		*l = Lag{}
		return nil
	}
	var n uint64
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("lag: %w", err)
	}
	*l = Lag{Bytes: n, Known: true}
	return nil
}

// ClusterStatus is the body of GET /cluster: the member's group, shaped like
// Patroni's cluster document.
type ClusterStatus struct {
	Members []ClusterMember `json:"members"`
	// Scope is the group, Cluster the mesh.
	Scope               string               `json:"scope"`
	Cluster             string               `json:"cluster,omitempty"`
	Pause               bool                 `json:"pause"`
	ScheduledSwitchover *ScheduledSwitchover `json:"scheduled_switchover,omitempty"`
}

// ClusterMember is one member in /cluster.
type ClusterMember struct {
	Name string `json:"name"`
	// Role is "leader", "sync_standby" or "replica" (Patroni's vocabulary,
	// about the group's lock, not PostgreSQL's recovery state).
	Role string `json:"role"`
	// State is the member's PostgreSQL state; a running replica whose WAL
	// receiver streams shows "streaming", as in Patroni 3.
	State    string `json:"state"`
	APIURL   string `json:"api_url,omitempty"`
	Host     string `json:"host,omitempty"`
	Port     int    `json:"port,omitempty"`
	Timeline uint32 `json:"timeline,omitempty"`
	// Lag is absent for the leader.
	Lag     *Lag   `json:"lag,omitempty"`
	LSN     string `json:"lsn,omitempty"`
	Tags    Tags   `json:"tags,omitzero"`
	Message string `json:"message,omitempty"`
}

// ScheduledSwitchover is a pending switchover with a time.
type ScheduledSwitchover struct {
	At   time.Time `json:"at"`
	From string    `json:"from,omitempty"`
	To   string    `json:"to,omitempty"`
}

// FormatLSN writes a WAL position the way PostgreSQL does (X/X).
func FormatLSN(lsn uint64) string {
	return fmt.Sprintf("%X/%X", lsn>>32, uint32(lsn))
}

// leaderOf is the member named by the group's leader key ("" when nobody
// holds it or its value is unreadable).
func leaderOf(g *consulkv.GroupView) string {
	if g == nil || g.Leader == nil {
		return ""
	}
	return g.Leader.Member
}

// syncStandbys lists the synchronous standbys the current leader published;
// a sync key left by an earlier leader says nothing about this one.
func syncStandbys(g *consulkv.GroupView, leader string) []string {
	if g == nil || g.Sync == nil || leader == "" || g.Sync.Leader != leader {
		return nil
	}
	return g.Sync.SyncStandbys
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// newClusterStatus builds /cluster from one read of the group.
func newClusterStatus(g *consulkv.GroupView, cluster string, paused bool) ClusterStatus {
	cs := ClusterStatus{Members: []ClusterMember{}, Scope: g.Name, Cluster: cluster, Pause: paused}
	leader := leaderOf(g)
	sync := syncStandbys(g, leader)
	var leaderLSN uint64
	if g.Status != nil && g.Status.Leader == leader {
		leaderLSN = g.Status.LastLSN
	}
	if lm := g.Members[leader]; lm != nil {
		leaderLSN = max(leaderLSN, lm.LastLSN())
	}
	names := make([]string, 0, len(g.Members))
	for n, m := range g.Members {
		if m != nil {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		m := g.Members[n]
		cm := ClusterMember{
			Name:     m.Name,
			State:    m.State,
			APIURL:   m.APIURL,
			Host:     m.Host,
			Port:     m.Port,
			Timeline: m.Timeline,
			Tags:     Tags(m.Tags),
			Message:  m.Message,
		}
		if lsn := m.LastLSN(); lsn != 0 {
			cm.LSN = FormatLSN(lsn)
		}
		switch {
		case n == leader:
			cm.Role = "leader"
		case contains(sync, n):
			cm.Role = "sync_standby"
		default:
			cm.Role = "replica"
		}
		if n != leader {
			lag := &Lag{}
			if own := max(m.ReceiveLSN, m.ReplayLSN); leaderLSN != 0 && own != 0 {
				lag.Known = true
				if own < leaderLSN {
					lag.Bytes = leaderLSN - own
				}
			}
			cm.Lag = lag
			if m.Role == consulkv.RoleReplica && m.State == "running" && m.Streaming {
				cm.State = "streaming"
			}
		}
		cs.Members = append(cs.Members, cm)
	}
	if f := g.Failover; f != nil && f.ScheduledAt != nil {
		cs.ScheduledSwitchover = &ScheduledSwitchover{At: *f.ScheduledAt, From: f.Leader, To: f.Candidate}
	}
	return cs
}

// historyLines renders the group history as Patroni's /history:
// [timeline, lsn, reason, timestamp, new_leader].
func historyLines(g *consulkv.GroupView) [][]any {
	lines := [][]any{}
	if g == nil || g.History == nil {
		return lines
	}
	for _, e := range g.History.Entries {
		lines = append(lines, []any{e.Timeline, e.LSN, e.Reason, e.At.Format(time.RFC3339), e.NewLeader})
	}
	return lines
}
