package agent

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
)

// Observation is everything the decision core may look at: what Consul said
// (or that it could not be reached), the local PostgreSQL, peers' answers
// and the clock. It is built by the loop; Decide never does I/O.
type Observation struct {
	Now    time.Time
	Member string
	Tags   consulkv.MemberTags
	Config consulkv.ClusterConfig // defaults filled
	Paused bool

	// ConsulOK is false when this loop could not read the group or renew
	// the session; Group is then nil.
	ConsulOK bool
	Group    *consulkv.GroupView
	// Session is this agent's Consul session ("" when it has none).
	Session string
	// LeaseValid: the local monotonic lease of Session has not run out.
	LeaseValid bool
	// FailsafeUntil: with Consul unreachable, every other member confirmed
	// this leader over REST (failsafe mode) and it may stay primary until
	// then (zero: no such hold).
	FailsafeUntil time.Time
	// FailsafeWhy says why the last failsafe round was refused ("" none).
	FailsafeWhy string
	// PromisedTo is the leader this member promised, answering its POST
	// /failsafe, not to replace before PromisedUntil ("" none).
	PromisedTo    string
	PromisedUntil time.Time

	Local Local
	// Peers are the other members' REST answers, collected only when the
	// group has no leader (nil otherwise).
	Peers map[string]Peer
}

// Local is the state of the local PostgreSQL.
type Local struct {
	HasDataDir bool
	// SystemID from pg_controldata ("" when unknown).
	SystemID   string
	Running    bool
	InRecovery bool
	Timeline   uint32
	LastLSN    uint64
	// FollowingLeader is the member primary_conninfo points at ("" none).
	FollowingLeader string
	// Streaming: the WAL receiver is streaming.
	Streaming bool
	// NotStreamingFor is how long a running replica with an upstream has not
	// been streaming (0 while streaming).
	NotStreamingFor time.Duration
	// DownAsLeaderFor is how long PostgreSQL has been down while this
	// member held the leader lock (0 while it runs).
	DownAsLeaderFor time.Duration
	// LogicalSlotsReady: current copies of every logical slot the leader
	// published are present.
	LogicalSlotsReady bool
	// WasPrimary: the data dir last ran as a primary on PrimaryTimeline and
	// has not been rewound/re-cloned since (pgmesh's marker file).
	WasPrimary      bool
	PrimaryTimeline uint32
}

// Peer is another member's REST status.
type Peer struct {
	Reachable bool
	Running   bool
	Role      string
	Timeline  uint32
	LastLSN   uint64
	Tags      consulkv.MemberTags
}

// Action is what the loop must do.
type Action int

const (
	// ActNone: nothing to change this loop.
	ActNone Action = iota
	// ActRaceInitialize: race for the initialize key; the winner runs
	// initdb, starts as primary and takes the leader lock.
	ActRaceInitialize
	// ActBootstrap: we won initialize earlier but have no data dir yet.
	ActBootstrap
	// ActClone: pg_basebackup from Target (the leader).
	ActClone
	// ActRefuse: the data dir belongs to another cluster; do nothing to it.
	ActRefuse
	// ActKeepLeader: we hold the lock; make sure PostgreSQL runs as primary
	// and publish the group status.
	ActKeepLeader
	// ActStartPrimary: we hold the lock and PostgreSQL is down: start it as
	// primary.
	ActStartPrimary
	// ActPromote: we hold the lock and run as a replica: promote.
	ActPromote
	// ActAcquire: try to take the free leader lock; on success promote (or
	// keep running as primary); on failure a running primary demotes.
	ActAcquire
	// ActDemote: stop being writable now (Immediate says how hard), keep or
	// drop the lock as Release says, then run as a replica.
	ActDemote
	// ActSwitchover: graceful handover to Target: checkpoint, stop, wait
	// until Target has our last WAL, release the lock.
	ActSwitchover
	// ActFollow: run as a replica of Target (start or reconfigure).
	ActFollow
	// ActRewind: stop, pg_rewind from Target (re-clone if that fails), follow.
	ActRewind
	// ActStartReadOnly: start PostgreSQL as a standby with no upstream so it
	// can take part in the next election with its data intact.
	ActStartReadOnly
)

var actionNames = map[Action]string{
	ActNone: "none", ActRaceInitialize: "race_initialize", ActBootstrap: "bootstrap", ActClone: "clone",
	ActRefuse: "refuse", ActKeepLeader: "keep_leader", ActStartPrimary: "start_primary", ActPromote: "promote",
	ActAcquire: "acquire", ActDemote: "demote", ActSwitchover: "switchover", ActFollow: "follow",
	ActRewind: "rewind", ActStartReadOnly: "start_read_only",
}

func (a Action) String() string { return actionNames[a] }

// Decision is Decide's answer.
type Decision struct {
	Action Action
	// Target is the member to clone/follow/rewind from or hand over to.
	Target string
	// Immediate: demote with an immediate stop (fencing), not a fast one.
	Immediate bool
	// Release: give the leader key up after demoting.
	Release bool
	// ClearFailover: the leader deletes the failover key (done or stale).
	ClearFailover bool
	// RestoreInitialize, when not empty, says why the leader rewrites the
	// group's initialize key with its data dir's system identifier (the key
	// is missing, unreadable or was never filled), as Patroni's leader does.
	RestoreInitialize string
	// Reason is the one line the loop logs.
	Reason string
}

func (d Decision) String() string {
	s := d.Action.String()
	if d.Target != "" {
		s += " " + d.Target
	}
	return s + ": " + d.Reason
}

// Decide maps one observation to one decision. It is pure: same input, same
// output, no I/O. The rules follow DESIGN.md §4 (Patroni's ha.py is the
// reference) with safety first: a member acts as primary only while it
// holds the leader key and its own lease.
func Decide(o Observation) Decision {
	local := o.Local
	runningPrimary := local.Running && !local.InRecovery

	// Rule 1: Consul unreachable. Nothing is known about the group; a
	// primary may keep writing only while its lease lasts.
	if !o.ConsulOK || o.Group == nil {
		if runningPrimary {
			if o.LeaseValid {
				return Decision{Action: ActNone, Reason: "consul unreachable; lease still valid, staying primary"}
			}
			if o.Now.Before(o.FailsafeUntil) {
				return Decision{Action: ActNone, Reason: "consul unreachable; failsafe mode: every member of the group confirmed, staying primary"}
			}
			if o.FailsafeWhy != "" {
				return Decision{Action: ActDemote, Immediate: true, Reason: "demoting: lease expired and Consul unreachable; failsafe refused: " + o.FailsafeWhy}
			}
			return Decision{Action: ActDemote, Immediate: true, Reason: "demoting: lease expired and Consul unreachable"}
		}
		return Decision{Action: ActNone, Reason: "consul unreachable; staying as we are"}
	}
	g := o.Group
	leader := g.Leader
	iHoldLock := leader != nil && o.Session != "" && leader.Session == o.Session

	// Rule 3: a data dir from another cluster is never touched.
	if local.HasDataDir && g.Initialize != nil && g.Initialize.SystemID != "" && local.SystemID != "" && local.SystemID != g.Initialize.SystemID {
		if runningPrimary && !iHoldLock {
			return Decision{Action: ActDemote, Immediate: true, Reason: fmt.Sprintf("demoting: data dir system id %s is not the group's %s", local.SystemID, g.Initialize.SystemID)}
		}
		return Decision{Action: ActRefuse, Reason: fmt.Sprintf("refusing to run: data dir system id %s differs from the group's %s (a foreign data directory)", local.SystemID, g.Initialize.SystemID)}
	}

	// Rule 2: no data dir yet. The initialize key only settles a race
	// between members that all start empty: a group that has a leader, or
	// any member with data, is initialized whatever the key says (it may
	// have been deleted or overwritten). Racing then bootstrapped a second,
	// foreign data directory that could never take the lock, removed it and
	// raced again, for ever.
	if !local.HasDataDir {
		withData := memberWithData(o)
		switch {
		case leader != nil && leader.Member != "" && leader.Member != o.Member && memberReachable(g, leader.Member):
			return Decision{Action: ActClone, Target: leader.Member, Reason: "cloning from leader " + leader.Member}
		case leader != nil:
			return Decision{Action: ActNone, Reason: "no data dir: waiting for the leader to publish its address before cloning"}
		case withData != "":
			return Decision{Action: ActNone, Reason: fmt.Sprintf("no data dir and no leader, but %s has data (system id %s): waiting for a leader to clone from, not bootstrapping", withData, g.Members[withData].SystemID)}
		case g.Initialize != nil && g.Initialize.Member == o.Member && g.Initialize.SystemID == "":
			return Decision{Action: ActBootstrap, Reason: "won the initialize race earlier: bootstrapping"}
		case g.Initialize == nil && g.InitializeIndex == 0:
			if o.Paused {
				return Decision{Action: ActNone, Reason: "paused: not bootstrapping"}
			}
			return Decision{Action: ActRaceInitialize, Reason: "group not initialized: racing to bootstrap"}
		default:
			return Decision{Action: ActNone, Reason: "no data dir: waiting for a leader to clone from"}
		}
	}

	// Rule 4: the lock is mine.
	if iHoldLock {
		d := leaderDecision(o)
		if d.Action != ActDemote {
			d.RestoreInitialize = initializeProblem(o)
		}
		return d
	}
	return othersDecision(o)
}

// memberWithData names a member (not this one) whose member key publishes
// a data directory's system identifier ("" when there is none).
func memberWithData(o Observation) string {
	for _, name := range o.Group.MemberNames() {
		if m := o.Group.Members[name]; name != o.Member && m.SystemID != "" {
			return name
		}
	}
	return ""
}

// initializeProblem says why the lock holder must rewrite the initialize
// key ("" when it holds a system identifier). Rule 3 already refused a key
// that names another system identifier; this one is missing, unreadable
// (garbage) or still the bootstrap claim without one.
func initializeProblem(o Observation) string {
	g := o.Group
	switch {
	case o.Local.SystemID == "":
		return "" // pg_controldata did not answer: nothing to restore it with
	case g.Initialize == nil && g.InitializeIndex == 0:
		return "the initialize key is missing"
	case g.Initialize == nil:
		return "the initialize key is unreadable"
	case g.Initialize.SystemID == "":
		return "the initialize key holds no system id"
	}
	return ""
}

// leaderDecision is rule 4: the lock is mine.
func leaderDecision(o Observation) Decision {
	g, local := o.Group, o.Local
	if !o.LeaseValid {
		return Decision{Action: ActDemote, Immediate: true, Reason: "demoting: lease expired"}
	}
	// A request that is done (we are its candidate) or stale (it names
	// another leader) is removed by the leader.
	// An unreadable request (garbage in the key) is stale by definition;
	// left there it would block every new switchover.
	clear := g.Failover != nil && (failoverForMe(o) || (g.Failover.Kind == consulkv.KindSwitchover && g.Failover.Leader != o.Member)) ||
		g.Failover == nil && g.FailoverIndex != 0
	if d, ok := leaderFailoverDecision(o); ok {
		return d
	}
	switch {
	case !local.Running:
		if o.Paused {
			return Decision{Action: ActNone, ClearFailover: clear, Reason: "paused: leader's PostgreSQL is down, not starting it"}
		}
		if local.DownAsLeaderFor > 0 && local.DownAsLeaderFor >= o.Config.StartTimeout() {
			if heir := replicaToTakeOver(o); heir != "" {
				return Decision{Action: ActDemote, Release: true, Reason: fmt.Sprintf("releasing the leader lock: PostgreSQL has not come up for %s (primary_start_timeout %s) and %s can take over",
					local.DownAsLeaderFor.Round(time.Second), o.Config.StartTimeout(), heir)}
			}
		}
		return Decision{Action: ActStartPrimary, ClearFailover: clear, Reason: "holding the leader lock with PostgreSQL down: starting it as primary"}
	case local.InRecovery:
		return Decision{Action: ActPromote, ClearFailover: clear, Reason: "holding the leader lock as a replica: promoting"}
	default:
		return Decision{Action: ActKeepLeader, ClearFailover: clear, Reason: "renewed the leader lock"}
	}
}

// othersDecision covers rules 5 and 6: the lock is not mine.
func othersDecision(o Observation) Decision {
	g, local, leader := o.Group, o.Local, o.Group.Leader
	runningPrimary := local.Running && !local.InRecovery
	// Rule 5: someone else leads.
	if leader != nil {
		if leader.Member == "" {
			if runningPrimary {
				return Decision{Action: ActDemote, Reason: "demoting: the leader key is held by another session (unreadable value)"}
			}
			return Decision{Action: ActNone, Reason: "leader key held by another session with an unreadable value: waiting"}
		}
		if leader.Member == o.Member {
			// A previous incarnation of this agent still holds the key: its
			// session will expire, but we have no lease of our own.
			if runningPrimary {
				return Decision{Action: ActDemote, Reason: "demoting: leader key held by a stale session of mine"}
			}
			return Decision{Action: ActNone, Reason: "leader key held by a stale session of mine: waiting for it to expire"}
		}
		if runningPrimary {
			return Decision{Action: ActDemote, Reason: "demoting: leader is " + leader.Member}
		}
		if o.Paused && !local.Running {
			return Decision{Action: ActNone, Reason: "paused: PostgreSQL down, not starting it"}
		}
		lm := g.Members[leader.Member]
		if local.WasPrimary {
			if lm == nil || lm.Timeline == 0 {
				return Decision{Action: ActNone, Reason: "former primary: waiting for leader " + leader.Member + " to publish its timeline before rewinding"}
			}
			if lm.Timeline != local.PrimaryTimeline {
				return Decision{Action: ActRewind, Target: leader.Member, Reason: fmt.Sprintf("former primary on timeline %d: rewinding from leader %s on timeline %d", local.PrimaryTimeline, leader.Member, lm.Timeline)}
			}
		}
		if local.Running && local.FollowingLeader == leader.Member {
			// A replica that cannot stream for a whole ttl has most likely
			// diverged from the leader's timeline.
			if !local.Streaming && local.NotStreamingFor > o.Config.TTL.D() && lm != nil && lm.Timeline > local.Timeline {
				return Decision{Action: ActRewind, Target: leader.Member, Reason: fmt.Sprintf("not streaming from %s for %s and behind its timeline: rewinding", leader.Member, local.NotStreamingFor.Round(time.Second))}
			}
			return Decision{Action: ActNone, Reason: "following leader " + leader.Member}
		}
		if lm == nil {
			return Decision{Action: ActNone, Reason: "leader " + leader.Member + " has not published its address yet: waiting"}
		}
		return Decision{Action: ActFollow, Target: leader.Member, Reason: "following leader " + leader.Member}
	}

	// Rule 6: no leader. A member that answered a failsafe request does not
	// race while its promise lasts: that leader may still be writable.
	if o.PromisedTo != "" && o.PromisedTo != o.Member && o.Now.Before(o.PromisedUntil) && !runningPrimary {
		return Decision{Action: ActNone, Reason: fmt.Sprintf("no leader in Consul, but %s asked for failsafe and this member promised not to take over until %s: not racing", o.PromisedTo, o.PromisedUntil.UTC().Format(time.RFC3339))}
	}
	if o.Paused {
		if runningPrimary {
			return Decision{Action: ActAcquire, Reason: "paused, no leader and running as primary: taking the lock"}
		}
		return Decision{Action: ActNone, Reason: "paused: no leader, not racing"}
	}
	if !local.Running {
		return Decision{Action: ActStartReadOnly, Reason: "no leader and PostgreSQL down: starting read-only to join the election"}
	}
	if ok, why := healthiest(o); !ok {
		if runningPrimary {
			return Decision{Action: ActDemote, Reason: "demoting: no leader lock and not the member to take it: " + why}
		}
		return Decision{Action: ActNone, Reason: "no leader; not racing: " + why}
	}
	return Decision{Action: ActAcquire, Reason: "no leader: racing as the healthiest member"}
}

// replicaToTakeOver names a member that could win the election if this
// leader let go: a running replica that may fail over and, in synchronous
// mode, is listed in the sync key ("" when there is none — then keeping the
// lock and retrying the start is the better bet).
func replicaToTakeOver(o Observation) string {
	g := o.Group
	for _, name := range g.MemberNames() {
		m := g.Members[name]
		if name == o.Member || m.Role != consulkv.RoleReplica || m.State != "running" || m.Tags.NoFailover {
			continue
		}
		if o.Config.SyncMode() != consulkv.SyncOff && (g.Sync == nil || !containsStr(g.Sync.SyncStandbys, name)) {
			continue
		}
		return name
	}
	return ""
}

func memberReachable(g *consulkv.GroupView, name string) bool {
	m := g.Members[name]
	return m != nil && m.Host != "" && m.Port != 0
}

// failoverForMe: the pending request names me as the candidate.
func failoverForMe(o Observation) bool {
	return o.Group.Failover != nil && o.Group.Failover.Candidate == o.Member
}

// leaderFailoverDecision handles a pending switchover/failover request when
// we lead (rule 7).
func leaderFailoverDecision(o Observation) (Decision, bool) {
	req := o.Group.Failover
	if req == nil {
		return Decision{}, false
	}
	if req.Candidate == o.Member {
		return Decision{}, false // done: we are the candidate and lead
	}
	if req.Kind == consulkv.KindSwitchover && req.Leader != o.Member {
		return Decision{}, false // stale; cleared by the caller
	}
	if req.ScheduledAt != nil && o.Now.Before(*req.ScheduledAt) {
		return Decision{Action: ActKeepLeader, Reason: "renewed the leader lock; switchover scheduled at " + req.ScheduledAt.UTC().Format(time.RFC3339)}, true
	}
	if !o.Local.Running || o.Local.InRecovery {
		return Decision{}, false
	}
	candidate := req.Candidate
	if candidate == "" {
		candidate = bestCandidate(o)
		if candidate == "" {
			return Decision{Action: ActKeepLeader, ClearFailover: true, Reason: "switchover cancelled: no healthy candidate" + candidateProblems(o)}, true
		}
	} else if why := candidateProblem(o, candidate); why != "" {
		return Decision{Action: ActKeepLeader, ClearFailover: true, Reason: "switchover to " + candidate + " cancelled: " + why}, true
	}
	return Decision{Action: ActSwitchover, Target: candidate, Reason: "switching over to " + candidate}, true
}

func candidateProblem(o Observation, name string) string {
	m := o.Group.Members[name]
	switch {
	case m == nil:
		return "not a member of the group"
	case m.Tags.NoFailover:
		return "tagged nofailover"
	case m.Role != consulkv.RoleReplica || m.State != "running":
		return fmt.Sprintf("not a running replica (%s, %s)", m.Role, m.State)
	case o.Config.SyncMode() != consulkv.SyncOff && !isSyncStandby(o.Group, name):
		return "not a synchronous standby (synchronous_mode is " + o.Config.SyncMode() + ")"
	case o.Group.LacksSlotCopies(m):
		// Promoted now, it would lack the slots other groups consume from
		// (or hold them at an older position, from which they skip).
		return "its copies of the logical slots are not current yet (logical_slots_ready)"
	}
	return ""
}

// candidateProblems lists why each other member cannot take over, for the
// log line of a cancelled switchover: " (b: …; c: …)".
func candidateProblems(o Observation) string {
	var why []string
	for _, n := range o.Group.MemberNames() {
		if n != o.Member {
			if p := candidateProblem(o, n); p != "" {
				why = append(why, n+": "+p)
			}
		}
	}
	if len(why) == 0 {
		return ""
	}
	return " (" + strings.Join(why, "; ") + ")"
}

// bestCandidate picks the replica with the most WAL, then priority, then name.
func bestCandidate(o Observation) string {
	var names []string
	for _, n := range o.Group.MemberNames() {
		if n != o.Member && candidateProblem(o, n) == "" {
			names = append(names, n)
		}
	}
	sort.SliceStable(names, func(i, j int) bool {
		a, b := o.Group.Members[names[i]], o.Group.Members[names[j]]
		// A replica that is not streaming cannot confirm our shutdown
		// checkpoint: picking it abandons the switchover after a long
		// write gap, though a streaming one was there.
		if a.Streaming != b.Streaming {
			return a.Streaming
		}
		if a.LastLSN() != b.LastLSN() {
			return a.LastLSN() > b.LastLSN()
		}
		return a.Tags.FailoverPriority > b.Tags.FailoverPriority
	})
	if len(names) == 0 {
		return ""
	}
	return names[0]
}

// healthiest decides whether this member may race for a free lock (rule 6):
// eligible itself, and no reachable eligible peer is better.
func healthiest(o Observation) (bool, string) {
	g := o.Group
	// formerLeader handed the lock over in a pending switchover to anyone:
	// like Patroni, it does not race and the others leave it out of the
	// comparison, or with the same WAL it could win its own lock back (or,
	// in synchronous mode, where it is not eligible, block the race for
	// ever by sorting first).
	formerLeader := ""
	if req := g.Failover; req != nil {
		switch {
		case req.Candidate == o.Member:
			return true, ""
		case req.Candidate != "" && g.Members[req.Candidate] != nil && o.Now.Sub(req.RequestedAt) < o.Config.TTL.D():
			return false, "a manual failover to " + req.Candidate + " is pending"
		case req.Kind == consulkv.KindSwitchover && req.Candidate == "" && req.Leader != "" && handoverPending(o, req):
			if req.Leader == o.Member {
				return false, "this member handed the leader lock over in a pending switchover"
			}
			formerLeader = req.Leader
		}
	}
	if o.Tags.NoFailover {
		return false, "tagged nofailover"
	}
	// A running primary whose leader key vanished (deleted by hand, or lost
	// with a Consul restore) has every write it acknowledged: it takes the
	// key back unless a peer has strictly more WAL, instead of handing over
	// to a replica that merely ties with it (a needless failover). In
	// synchronous mode it is the sync key's leader, not a listed standby.
	primary := o.Local.Running && !o.Local.InRecovery
	syncLeader := primary && g.Sync != nil && g.Sync.Leader == o.Member
	if o.Config.SyncMode() != consulkv.SyncOff && !isSyncStandby(g, o.Member) && !syncLeader {
		return false, "synchronous_mode is " + o.Config.SyncMode() + " and this member is not a listed synchronous standby"
	}
	if st := g.Status; st != nil && st.LastLSN > o.Local.LastLSN {
		if lag := st.LastLSN - o.Local.LastLSN; lag > o.Config.MaximumLagOnFailover {
			return false, fmt.Sprintf("%d bytes behind the last leader, more than maximum_lag_on_failover %d", lag, o.Config.MaximumLagOnFailover)
		}
	}
	if g.PublishesLogicalSlots() && !o.Local.LogicalSlotsReady {
		for _, n := range g.MemberNames() {
			m := g.Members[n]
			// The former leader of a pending switchover does not race:
			// deferring to it would leave the group without a leader.
			if n != o.Member && n != formerLeader && m.LogicalSlotsReady && !m.Tags.NoFailover && m.State == "running" {
				if p, ok := o.Peers[n]; ok && !p.Reachable {
					continue
				}
				return false, n + " has current copies of the logical slots and this member has not"
			}
		}
	}
	// A member key lives and dies with its member's session, like the
	// leader key. A member key that still says "running primary" while the
	// leader key is gone means that primary's session is alive: the key was
	// deleted by hand (or the primary is handing over), not expired, so the
	// primary may still accept writes even if its REST API did not answer.
	for _, n := range g.MemberNames() {
		if m := g.Members[n]; n != o.Member && n != formerLeader && m.Role == consulkv.RolePrimary && m.State == "running" {
			return false, n + "'s member key says it runs as primary (its session is alive)"
		}
	}
	names := make([]string, 0, len(o.Peers))
	for n := range o.Peers {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		p := o.Peers[n]
		if n == o.Member || !p.Reachable || !p.Running {
			continue
		}
		if p.Role == consulkv.RolePrimary {
			return false, n + " still runs as primary"
		}
		// Peers that may not take the lock do not block the race.
		if p.Tags.NoFailover || n == formerLeader || o.Config.SyncMode() != consulkv.SyncOff && !isSyncStandby(g, n) {
			continue
		}
		switch {
		case p.LastLSN > o.Local.LastLSN:
			return false, fmt.Sprintf("%s has more WAL (%d > %d)", n, p.LastLSN, o.Local.LastLSN)
		case p.LastLSN < o.Local.LastLSN, primary:
			continue
		case p.Tags.FailoverPriority > o.Tags.FailoverPriority:
			return false, fmt.Sprintf("%s has the same WAL and a higher failover_priority", n)
		case p.Tags.FailoverPriority == o.Tags.FailoverPriority && n < o.Member:
			return false, fmt.Sprintf("%s has the same WAL and priority and sorts first", n)
		}
	}
	return true, ""
}

// handoverPending: a switchover request is recent enough that its leader
// may still be handing over (it acts within a loop of the request or of the
// scheduled time, then checkpoints, stops and waits up to 10s for the
// candidate). Past that the request no longer keeps the former leader out.
func handoverPending(o Observation, req *consulkv.FailoverRequest) bool {
	from := req.RequestedAt
	if req.ScheduledAt != nil && req.ScheduledAt.After(from) {
		from = *req.ScheduledAt
	}
	return o.Now.Sub(from) < 3*o.Config.TTL.D()+15*time.Second
}

// isSyncStandby: the sync key lists name, so it has every acknowledged
// commit of the last leader (rule 9).
func isSyncStandby(g *consulkv.GroupView, name string) bool {
	if g.Sync == nil {
		return false
	}
	for _, s := range g.Sync.SyncStandbys {
		if s == name {
			return true
		}
	}
	return false
}
