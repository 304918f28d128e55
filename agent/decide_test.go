package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
)

var t0 = time.Date(2026, 11, 26, 3, 0, 0, 0, time.UTC)

const sysid = "7300000000000000001"

func member(name, role string, tl uint32, lsn uint64) *consulkv.MemberStatus {
	return &consulkv.MemberStatus{Version: 1, Name: name, Role: role, State: "running", Host: "127.0.0.1", Port: 5432, Timeline: tl, ReplayLSN: lsn, WriteLSN: lsn}
}

// obs builds an observation of member "b" in a healthy 3-member group
// whose leader is "a"; each case tweaks it.
func obs(tweak func(*Observation)) Observation {
	o := Observation{
		Now:    t0,
		Member: "b",
		Config: consulkv.ClusterConfig{}.WithDefaults(),
		Group: &consulkv.GroupView{
			Name:       "g",
			Initialize: &consulkv.Initialize{Version: 1, Member: "a", SystemID: sysid},
			Leader:     &consulkv.LeaderInfo{Member: "a", Session: "sess-a"},
			Members: map[string]*consulkv.MemberStatus{
				"a": member("a", consulkv.RolePrimary, 1, 1000),
				"b": member("b", consulkv.RoleReplica, 1, 1000),
				"c": member("c", consulkv.RoleReplica, 1, 1000),
			},
			Status: &consulkv.GroupStatus{Version: 1, Leader: "a", LastLSN: 1000, Timeline: 1},
		},
		ConsulOK:   true,
		Session:    "sess-b",
		LeaseValid: true,
		Local:      Local{HasDataDir: true, SystemID: sysid, Running: true, InRecovery: true, Timeline: 1, LastLSN: 1000, FollowingLeader: "a", Streaming: true},
	}
	if tweak != nil {
		tweak(&o)
	}
	return o
}

// asLeader makes "b" the lock holder running as primary.
func asLeader(o *Observation) {
	o.Group.Leader = &consulkv.LeaderInfo{Member: "b", Session: "sess-b"}
	o.Local.InRecovery = false
	o.Local.FollowingLeader = ""
	o.Local.Streaming = false
	o.Group.Members["b"].Role = consulkv.RolePrimary
	o.Group.Members["a"].Role = consulkv.RoleReplica
}

// noLeader removes the leader key and gives "b" the peers' answers.
func noLeader(o *Observation) {
	o.Group.Leader = nil
	// The dead leader's member key vanished with its session.
	delete(o.Group.Members, "a")
	o.Local.FollowingLeader = ""
	o.Local.Streaming = false
	o.Peers = map[string]Peer{
		"a": {Reachable: false},
		"c": {Reachable: true, Running: true, Role: consulkv.RoleReplica, Timeline: 1, LastLSN: 900},
	}
}

func TestDecide(t *testing.T) {
	scheduled := t0.Add(time.Hour)
	cases := []struct {
		name      string
		o         Observation
		want      Action
		target    string
		immediate bool
		release   bool
		clear     bool
		reason    string
		// restore: the RestoreInitialize reason must mention it ("" = the
		// decision must not restore the initialize key).
		restore string
	}{
		// Rule 1: store unreachable.
		{name: "consul down, primary with valid lease keeps writing", o: obs(func(o *Observation) { asLeader(o); o.ConsulOK = false; o.Group = nil }), want: ActNone, reason: "lease still valid"},
		{name: "consul down, lease expired: primary demotes at once", o: obs(func(o *Observation) { asLeader(o); o.ConsulOK = false; o.Group = nil; o.LeaseValid = false }), want: ActDemote, immediate: true, reason: "lease expired"},
		{name: "consul down, replica stays as it is", o: obs(func(o *Observation) { o.ConsulOK = false; o.Group = nil; o.LeaseValid = false }), want: ActNone},
		// Rule 1 with failsafe mode (failsafe.go).
		{name: "consul down, lease expired, every member confirmed failsafe: primary stays", o: obs(func(o *Observation) {
			asLeader(o)
			o.ConsulOK, o.Group, o.LeaseValid = false, nil, false
			o.FailsafeUntil = t0.Add(time.Second)
		}), want: ActNone, reason: "every member of the group confirmed"},
		{name: "consul down, lease expired, failsafe hold ended: primary demotes", o: obs(func(o *Observation) {
			asLeader(o)
			o.ConsulOK, o.Group, o.LeaseValid = false, nil, false
			o.FailsafeUntil = t0
		}), want: ActDemote, immediate: true, reason: "lease expired"},
		{name: "consul down, lease expired, a member refused failsafe: primary demotes and says who", o: obs(func(o *Observation) {
			asLeader(o)
			o.ConsulOK, o.Group, o.LeaseValid = false, nil, false
			o.FailsafeWhy = "c: 409 consul is reachable from c"
		}), want: ActDemote, immediate: true, reason: "failsafe refused: c: 409"},
		{name: "consul down, replica with a failsafe promise still never promotes", o: obs(func(o *Observation) {
			o.ConsulOK, o.Group, o.LeaseValid = false, nil, false
			o.PromisedTo, o.PromisedUntil = "a", t0.Add(time.Second)
		}), want: ActNone},
		// Rule 6 with a failsafe promise: no race while it lasts.
		{name: "no leader in Consul but promised failsafe to a: not racing", o: obs(func(o *Observation) {
			noLeader(o)
			o.PromisedTo, o.PromisedUntil = "a", t0.Add(time.Second)
		}), want: ActNone, reason: "promised not to take over"},
		{name: "no leader, failsafe promise ended: races as usual", o: obs(func(o *Observation) {
			noLeader(o)
			o.PromisedTo, o.PromisedUntil = "a", t0
		}), want: ActAcquire},
		// Rule 2: no data dir.
		{name: "fresh group: race initialize", o: obs(func(o *Observation) {
			o.Local = Local{}
			o.Group = &consulkv.GroupView{Name: "g", Members: map[string]*consulkv.MemberStatus{}}
		}), want: ActRaceInitialize},
		{name: "fresh group while paused: no bootstrap", o: obs(func(o *Observation) {
			o.Local = Local{}
			o.Paused = true
			o.Group = &consulkv.GroupView{Name: "g", Members: map[string]*consulkv.MemberStatus{}}
		}), want: ActNone, reason: "paused"},
		{name: "unreadable initialize key still counts as claimed", o: obs(func(o *Observation) {
			o.Local = Local{}
			o.Group = &consulkv.GroupView{Name: "g", InitializeIndex: 5, Members: map[string]*consulkv.MemberStatus{}}
		}), want: ActNone, reason: "waiting for a leader"},
		{name: "won initialize but no data dir yet: bootstrap", o: obs(func(o *Observation) {
			o.Local = Local{}
			o.Group.Leader = nil
			o.Group.Initialize = &consulkv.Initialize{Version: 1, Member: "b"}
		}), want: ActBootstrap},
		{name: "no data dir, leader exists: clone", o: obs(func(o *Observation) { o.Local = Local{} }), want: ActClone, target: "a"},
		{name: "no data dir, no leader: wait", o: obs(func(o *Observation) { o.Local = Local{}; o.Group.Leader = nil }), want: ActNone, reason: "waiting"},
		// Rule 2 with the initialize key gone (deleted by hand, lost with a
		// Consul restore): a member that joins a group with a leader clones;
		// racing made it initdb a foreign data dir, fail to take the lock,
		// remove it and race again every few seconds.
		{name: "initialize key missing while a leader runs: clone, never race", o: obs(func(o *Observation) {
			o.Local = Local{}
			o.Group.Initialize, o.Group.InitializeIndex = nil, 0
		}), want: ActClone, target: "a"},
		{name: "unreadable initialize key while a leader runs: clone", o: obs(func(o *Observation) {
			o.Local = Local{}
			o.Group.Initialize, o.Group.InitializeIndex = nil, 7
		}), want: ActClone, target: "a"},
		{name: "initialize key missing, leader not published yet: wait, never race", o: obs(func(o *Observation) {
			o.Local = Local{}
			o.Group.Initialize, o.Group.InitializeIndex = nil, 0
			delete(o.Group.Members, "a")
		}), want: ActNone, reason: "publish its address"},
		{name: "initialize key missing, unreadable leader key: wait, never race", o: obs(func(o *Observation) {
			o.Local = Local{}
			o.Group.Initialize, o.Group.InitializeIndex = nil, 0
			o.Group.Leader = &consulkv.LeaderInfo{Session: "sess-x"}
		}), want: ActNone},
		{name: "initialize key missing, no leader but a member has data: wait, never race", o: obs(func(o *Observation) {
			o.Local = Local{}
			o.Group.Initialize, o.Group.InitializeIndex = nil, 0
			o.Group.Leader = nil
			o.Group.Members["c"].SystemID = sysid
		}), want: ActNone, reason: "c has data (system id " + sysid + ")"},
		{name: "initialize claim of mine but a leader appeared: clone instead of bootstrapping", o: obs(func(o *Observation) {
			o.Local = Local{}
			o.Group.Initialize = &consulkv.Initialize{Version: 1, Member: "b"}
		}), want: ActClone, target: "a"},
		{name: "initialize claim of mine, no leader, a member has data: wait", o: obs(func(o *Observation) {
			o.Local = Local{}
			o.Group.Leader = nil
			o.Group.Initialize = &consulkv.Initialize{Version: 1, Member: "b"}
			o.Group.Members["a"].SystemID = sysid
		}), want: ActNone, reason: "a has data"},
		{name: "members without data do not stop a fresh group's race", o: obs(func(o *Observation) {
			o.Local = Local{}
			o.Group.Initialize, o.Group.InitializeIndex = nil, 0
			o.Group.Leader = nil
			o.Group.Status = nil
			for _, m := range o.Group.Members {
				m.State, m.Role, m.SystemID = "stopped", consulkv.RoleUnknown, ""
			}
		}), want: ActRaceInitialize},
		// Rule 3: foreign data dir.
		{name: "foreign system id: refuse", o: obs(func(o *Observation) { o.Local.SystemID = "42" }), want: ActRefuse, reason: "foreign"},
		{name: "foreign system id running as primary: fence", o: obs(func(o *Observation) { o.Local.SystemID = "42"; o.Local.InRecovery = false }), want: ActDemote, immediate: true},
		// Rule 4: lock is mine.
		{name: "leader renews", o: obs(asLeader), want: ActKeepLeader},
		// The leader restores a missing or unreadable initialize key with
		// its own system id (Patroni's "cluster has leader key but not
		// initialize key"); nobody else writes it.
		{name: "leader restores a missing initialize key", o: obs(func(o *Observation) {
			asLeader(o)
			o.Group.Initialize, o.Group.InitializeIndex = nil, 0
		}), want: ActKeepLeader, restore: "missing"},
		{name: "leader replaces an unreadable initialize key", o: obs(func(o *Observation) {
			asLeader(o)
			o.Group.Initialize, o.Group.InitializeIndex = nil, 42
		}), want: ActKeepLeader, restore: "unreadable"},
		{name: "leader fills an initialize key without a system id", o: obs(func(o *Observation) {
			asLeader(o)
			o.Group.Initialize = &consulkv.Initialize{Version: 1, Member: "a"}
		}), want: ActKeepLeader, restore: "no system id"},
		{name: "leader whose postgres is down still restores the key", o: obs(func(o *Observation) {
			asLeader(o)
			o.Local.Running = false
			o.Group.Initialize, o.Group.InitializeIndex = nil, 0
		}), want: ActStartPrimary, restore: "missing"},
		{name: "paused leader restores the key too", o: obs(func(o *Observation) {
			asLeader(o)
			o.Paused = true
			o.Group.Initialize, o.Group.InitializeIndex = nil, 0
		}), want: ActKeepLeader, restore: "missing"},
		{name: "leader about to switch over restores the key", o: obs(func(o *Observation) {
			asLeader(o)
			o.Group.Initialize, o.Group.InitializeIndex = nil, 0
			o.Group.Failover = &consulkv.FailoverRequest{Version: 1, Kind: consulkv.KindSwitchover, Leader: "b", Candidate: "c", RequestedAt: t0}
		}), want: ActSwitchover, target: "c", restore: "missing"},
		{name: "leader without a known system id leaves the key alone", o: obs(func(o *Observation) {
			asLeader(o)
			o.Local.SystemID = ""
			o.Group.Initialize, o.Group.InitializeIndex = nil, 0
		}), want: ActKeepLeader},
		{name: "leader with an expired lease demotes and restores nothing", o: obs(func(o *Observation) {
			asLeader(o)
			o.LeaseValid = false
			o.Group.Initialize, o.Group.InitializeIndex = nil, 0
		}), want: ActDemote, immediate: true},
		{name: "a replica never restores the initialize key", o: obs(func(o *Observation) {
			o.Group.Initialize, o.Group.InitializeIndex = nil, 0
		}), want: ActNone, reason: "following leader a"},
		{name: "a primary without the lock never restores the initialize key", o: obs(func(o *Observation) {
			noLeader(o)
			o.Local.InRecovery = false
			o.Group.Initialize, o.Group.InitializeIndex = nil, 0
		}), want: ActAcquire},
		{name: "leader with expired lease demotes without release", o: obs(func(o *Observation) { asLeader(o); o.LeaseValid = false }), want: ActDemote, immediate: true, release: false, reason: "lease expired"},
		{name: "leader whose postgres is down starts it", o: obs(func(o *Observation) { asLeader(o); o.Local.Running = false }), want: ActStartPrimary},
		{name: "leader whose postgres stays down past primary_start_timeout releases to a replica", o: obs(func(o *Observation) {
			asLeader(o)
			o.Local.Running = false
			o.Local.DownAsLeaderFor = consulkv.DefaultPrimaryStartTimeout
		}), want: ActDemote, release: true},
		{name: "leader keeps retrying the start before primary_start_timeout", o: obs(func(o *Observation) {
			asLeader(o)
			o.Local.Running = false
			o.Local.DownAsLeaderFor = consulkv.DefaultPrimaryStartTimeout - time.Second
		}), want: ActStartPrimary},
		{name: "primary_start_timeout 0 releases as soon as the down primary is seen twice", o: obs(func(o *Observation) {
			asLeader(o)
			o.Local.Running = false
			zero := consulkv.Duration(0)
			o.Config.PrimaryStartTimeout = &zero
			o.Local.DownAsLeaderFor = time.Second
		}), want: ActDemote, release: true},
		{name: "no replica could take over: the leader keeps the lock and retries", o: obs(func(o *Observation) {
			asLeader(o)
			o.Local.Running = false
			o.Local.DownAsLeaderFor = time.Hour
			o.Group.Members["a"].Tags.NoFailover = true
			o.Group.Members["c"].State = "stopped"
		}), want: ActStartPrimary},
		{name: "sync mode: only a listed sync standby counts as heir", o: obs(func(o *Observation) {
			asLeader(o)
			o.Local.Running = false
			o.Local.DownAsLeaderFor = time.Hour
			o.Config.SynchronousMode = consulkv.SyncOn
			o.Group.Sync = &consulkv.SyncState{Version: 1, Leader: "b", SyncStandbys: []string{"x"}}
		}), want: ActStartPrimary},
		{name: "paused leader whose postgres is down leaves it", o: obs(func(o *Observation) { asLeader(o); o.Local.Running = false; o.Paused = true }), want: ActNone, reason: "paused"},
		{name: "lock holder still in recovery promotes", o: obs(func(o *Observation) { asLeader(o); o.Local.InRecovery = true }), want: ActPromote},
		// Rule 5: someone else leads.
		{name: "replica follows leader", o: obs(nil), want: ActNone, reason: "following leader a"},
		{name: "replica pointing elsewhere re-follows", o: obs(func(o *Observation) { o.Local.FollowingLeader = "c" }), want: ActFollow, target: "a"},
		{name: "stopped replica starts following", o: obs(func(o *Observation) { o.Local.Running = false; o.Local.FollowingLeader = "" }), want: ActFollow, target: "a"},
		{name: "paused stopped replica stays down", o: obs(func(o *Observation) { o.Local.Running = false; o.Paused = true }), want: ActNone, reason: "paused"},
		{name: "running primary sees another leader: demote", o: obs(func(o *Observation) { o.Local.InRecovery = false }), want: ActDemote, reason: "leader is a"},
		{name: "former primary with diverged timeline: rewind", o: obs(func(o *Observation) {
			o.Group.Members["a"].Timeline = 3
			o.Local = Local{HasDataDir: true, SystemID: sysid, Timeline: 2, WasPrimary: true, PrimaryTimeline: 2}
		}), want: ActRewind, target: "a"},
		{name: "former primary waits for the leader's timeline", o: obs(func(o *Observation) {
			o.Group.Members["a"].Timeline = 0
			o.Local = Local{HasDataDir: true, SystemID: sysid, Timeline: 2, WasPrimary: true, PrimaryTimeline: 2}
		}), want: ActNone, reason: "publish its timeline"},
		{name: "replica stuck behind the leader's timeline: rewind", o: obs(func(o *Observation) {
			o.Group.Members["a"].Timeline = 3
			o.Local.Timeline = 2
			o.Local.Streaming = false
			o.Local.NotStreamingFor = time.Minute
		}), want: ActRewind, target: "a"},
		{name: "leader key with unreadable value: primary demotes", o: obs(func(o *Observation) {
			o.Group.Leader = &consulkv.LeaderInfo{Session: "sess-x"}
			o.Local.InRecovery = false
		}), want: ActDemote},
		{name: "stale session of mine holds the key: primary demotes", o: obs(func(o *Observation) {
			asLeader(o)
			o.Group.Leader.Session = "old-sess"
		}), want: ActDemote, reason: "stale session"},
		{name: "leader not published yet: wait", o: obs(func(o *Observation) { delete(o.Group.Members, "a"); o.Local.FollowingLeader = "" }), want: ActNone, reason: "not published"},
		// Rule 6: no leader.
		{name: "healthiest replica races", o: obs(noLeader), want: ActAcquire},
		{name: "peer with more WAL wins: do not race", o: obs(func(o *Observation) {
			noLeader(o)
			o.Peers["c"] = Peer{Reachable: true, Running: true, Role: consulkv.RoleReplica, LastLSN: 2000}
		}), want: ActNone, reason: "more WAL"},
		{name: "nofailover never races", o: obs(func(o *Observation) { noLeader(o); o.Tags.NoFailover = true }), want: ActNone, reason: "nofailover"},
		{name: "nofailover peer with more WAL does not block", o: obs(func(o *Observation) {
			noLeader(o)
			o.Peers["c"] = Peer{Reachable: true, Running: true, Role: consulkv.RoleReplica, LastLSN: 2000, Tags: consulkv.MemberTags{NoFailover: true}}
		}), want: ActAcquire},
		{name: "lag beyond maximum_lag_on_failover never races", o: obs(func(o *Observation) {
			noLeader(o)
			o.Local.LastLSN = 10
			o.Group.Status.LastLSN = 10 + 2<<20
		}), want: ActNone, reason: "maximum_lag_on_failover"},
		{name: "equal WAL: higher priority wins", o: obs(func(o *Observation) {
			noLeader(o)
			o.Peers["c"] = Peer{Reachable: true, Running: true, Role: consulkv.RoleReplica, LastLSN: 1000, Tags: consulkv.MemberTags{FailoverPriority: 5}}
		}), want: ActNone, reason: "priority"},
		{name: "equal WAL and priority: name breaks the tie", o: obs(func(o *Observation) {
			noLeader(o)
			o.Member = "d"
			o.Peers["c"] = Peer{Reachable: true, Running: true, Role: consulkv.RoleReplica, LastLSN: 1000}
		}), want: ActNone, reason: "sorts first"},
		{name: "equal WAL, my priority higher: race", o: obs(func(o *Observation) {
			noLeader(o)
			o.Tags.FailoverPriority = 3
			o.Peers["c"] = Peer{Reachable: true, Running: true, Role: consulkv.RoleReplica, LastLSN: 1000, Tags: consulkv.MemberTags{FailoverPriority: 1}}
		}), want: ActAcquire},
		{name: "unreachable peers are ignored", o: obs(func(o *Observation) {
			noLeader(o)
			o.Peers["c"] = Peer{Reachable: false, LastLSN: 99999}
		}), want: ActAcquire},
		{name: "a peer still primary blocks the race", o: obs(func(o *Observation) {
			noLeader(o)
			o.Peers["a"] = Peer{Reachable: true, Running: true, Role: consulkv.RolePrimary, LastLSN: 1000}
		}), want: ActNone, reason: "still runs as primary"},
		{name: "primary whose key vanished re-acquires", o: obs(func(o *Observation) {
			noLeader(o)
			o.Local.InRecovery = false
			o.Local.LastLSN = 1200
		}), want: ActAcquire},
		{name: "primary whose key vanished wins a WAL tie", o: obs(func(o *Observation) {
			noLeader(o)
			o.Local.InRecovery = false
			o.Peers["a"] = Peer{Reachable: true, Running: true, Role: consulkv.RoleReplica, LastLSN: 1000, Tags: consulkv.MemberTags{FailoverPriority: 5}}
		}), want: ActAcquire},
		{name: "primary whose key vanished yields to a peer with more WAL", o: obs(func(o *Observation) {
			noLeader(o)
			o.Local.InRecovery = false
			o.Peers["a"] = Peer{Reachable: true, Running: true, Role: consulkv.RoleReplica, LastLSN: 2000}
		}), want: ActDemote, reason: "more WAL"},
		{name: "sync mode: primary whose key vanished is the sync key's leader and re-acquires", o: obs(func(o *Observation) {
			noLeader(o)
			o.Local.InRecovery = false
			o.Config.SynchronousMode = consulkv.SyncOn
			o.Group.Sync = &consulkv.SyncState{Version: 1, Leader: "b", SyncStandbys: []string{"a"}}
		}), want: ActAcquire},
		{name: "sync mode: a replica named leader in the sync key does not race", o: obs(func(o *Observation) {
			noLeader(o)
			o.Config.SynchronousMode = consulkv.SyncOn
			o.Group.Sync = &consulkv.SyncState{Version: 1, Leader: "b", SyncStandbys: []string{"a"}}
		}), want: ActNone, reason: "not a listed synchronous standby"},
		{name: "switchover to anyone: the former leader does not race", o: obs(func(o *Observation) {
			noLeader(o)
			o.Group.Failover = &consulkv.FailoverRequest{Version: 1, Kind: consulkv.KindSwitchover, Leader: "b", RequestedAt: t0}
		}), want: ActNone, reason: "handed the leader lock over"},
		{name: "switchover to anyone: the former leader does not block the others", o: obs(func(o *Observation) {
			noLeader(o)
			o.Member = "d"
			o.Peers["c"] = Peer{Reachable: true, Running: true, Role: consulkv.RoleReplica, LastLSN: 1000}
			o.Group.Failover = &consulkv.FailoverRequest{Version: 1, Kind: consulkv.KindSwitchover, Leader: "c", RequestedAt: t0}
		}), want: ActAcquire},
		{name: "switchover to anyone: the former leader's slot copies do not block the others (seen: a leaderless group)", o: obs(func(o *Observation) {
			noLeader(o)
			o.Group.Status.LogicalSlots = map[string]consulkv.LogicalSlot{"spk_sub": {Plugin: "spock_output", ConfirmedFlush: 900}}
			o.Group.Members["c"].LogicalSlotsReady = true
			o.Peers["c"] = Peer{Reachable: true, Running: true, Role: consulkv.RoleReplica, LastLSN: 1000}
			o.Group.Failover = &consulkv.FailoverRequest{Version: 1, Kind: consulkv.KindSwitchover, Leader: "c", RequestedAt: t0}
		}), want: ActAcquire},
		{name: "switchover without candidate skips a replica whose slot copies are not current", o: obs(func(o *Observation) {
			asLeader(o)
			o.Group.Status.LogicalSlots = map[string]consulkv.LogicalSlot{"spk_sub": {Plugin: "spock_output", ConfirmedFlush: 900}}
			o.Group.Members["c"].ReplayLSN = 1500
			o.Group.Members["a"].LogicalSlotsReady = true
			o.Group.Failover = &consulkv.FailoverRequest{Version: 1, Kind: consulkv.KindSwitchover, Leader: "b", RequestedAt: t0}
		}), want: ActSwitchover, target: "a"},
		{name: "switchover without candidate is cancelled when no replica has current slot copies, saying why", o: obs(func(o *Observation) {
			asLeader(o)
			o.Group.Status.LogicalSlots = map[string]consulkv.LogicalSlot{"spk_sub": {Plugin: "spock_output", ConfirmedFlush: 900}}
			o.Group.Failover = &consulkv.FailoverRequest{Version: 1, Kind: consulkv.KindSwitchover, Leader: "b", RequestedAt: t0}
		}), want: ActKeepLeader, clear: true, reason: "no healthy candidate (a: its copies of the logical slots are not current yet"},
		{name: "switchover to a named candidate without current slot copies is cancelled", o: obs(func(o *Observation) {
			asLeader(o)
			o.Group.Status.LogicalSlots = map[string]consulkv.LogicalSlot{"spk_sub": {Plugin: "spock_output", ConfirmedFlush: 900}}
			o.Group.Failover = &consulkv.FailoverRequest{Version: 1, Kind: consulkv.KindSwitchover, Leader: "b", Candidate: "c", RequestedAt: t0}
		}), want: ActKeepLeader, clear: true, reason: "switchover to c cancelled: its copies of the logical slots are not current yet"},
		{name: "sync mode: a peer that is not a sync standby does not block the race", o: obs(func(o *Observation) {
			noLeader(o)
			o.Member = "d"
			o.Config.SynchronousMode = consulkv.SyncOn
			o.Group.Sync = &consulkv.SyncState{Version: 1, Leader: "a", SyncStandbys: []string{"d"}}
			o.Peers["c"] = Peer{Reachable: true, Running: true, Role: consulkv.RoleReplica, LastLSN: 1000}
		}), want: ActAcquire},
		{name: "leader key deleted by hand while the primary's member key is alive: do not race", o: obs(func(o *Observation) {
			noLeader(o)
			o.Group.Members["a"] = member("a", consulkv.RolePrimary, 1, 1000)
		}), want: ActNone, reason: "member key says it runs as primary"},
		{name: "no leader and postgres down: start read-only", o: obs(func(o *Observation) { noLeader(o); o.Local.Running = false }), want: ActStartReadOnly},
		// Rule 7: manual switchover / failover.
		{name: "leader hands over to the named candidate", o: obs(func(o *Observation) {
			asLeader(o)
			o.Group.Failover = &consulkv.FailoverRequest{Version: 1, Kind: consulkv.KindSwitchover, Leader: "b", Candidate: "c", RequestedAt: t0}
		}), want: ActSwitchover, target: "c"},
		{name: "switchover without candidate picks the most advanced replica", o: obs(func(o *Observation) {
			asLeader(o)
			o.Group.Members["c"].ReplayLSN = 1500
			o.Group.Failover = &consulkv.FailoverRequest{Version: 1, Kind: consulkv.KindSwitchover, Leader: "b", RequestedAt: t0}
		}), want: ActSwitchover, target: "c"},
		{name: "switchover without candidate prefers a streaming replica to a more advanced one that is not", o: obs(func(o *Observation) {
			asLeader(o)
			o.Group.Members["c"].ReplayLSN = 1500
			o.Group.Members["a"].Streaming = true
			o.Group.Failover = &consulkv.FailoverRequest{Version: 1, Kind: consulkv.KindSwitchover, Leader: "b", RequestedAt: t0}
		}), want: ActSwitchover, target: "a"},
		{name: "scheduled switchover waits", o: obs(func(o *Observation) {
			asLeader(o)
			o.Group.Failover = &consulkv.FailoverRequest{Version: 1, Kind: consulkv.KindSwitchover, Leader: "b", Candidate: "c", ScheduledAt: &scheduled, RequestedAt: t0}
		}), want: ActKeepLeader, reason: "scheduled"},
		{name: "switchover to a nofailover member is cancelled", o: obs(func(o *Observation) {
			asLeader(o)
			o.Group.Members["c"].Tags.NoFailover = true
			o.Group.Failover = &consulkv.FailoverRequest{Version: 1, Kind: consulkv.KindSwitchover, Leader: "b", Candidate: "c", RequestedAt: t0}
		}), want: ActKeepLeader, clear: true, reason: "nofailover"},
		{name: "stale switchover naming another leader is cleared", o: obs(func(o *Observation) {
			asLeader(o)
			o.Group.Failover = &consulkv.FailoverRequest{Version: 1, Kind: consulkv.KindSwitchover, Leader: "a", Candidate: "c", RequestedAt: t0}
		}), want: ActKeepLeader, clear: true},
		{name: "unreadable failover key is cleared by the leader", o: obs(func(o *Observation) {
			asLeader(o)
			o.Group.FailoverIndex = 42
		}), want: ActKeepLeader, clear: true},
		{name: "candidate that became leader clears the request", o: obs(func(o *Observation) {
			asLeader(o)
			o.Group.Failover = &consulkv.FailoverRequest{Version: 1, Kind: consulkv.KindSwitchover, Leader: "a", Candidate: "b", RequestedAt: t0}
		}), want: ActKeepLeader, clear: true},
		{name: "candidate races when there is no leader", o: obs(func(o *Observation) {
			noLeader(o)
			o.Peers["c"] = Peer{Reachable: true, Running: true, Role: consulkv.RoleReplica, LastLSN: 5000}
			o.Group.Failover = &consulkv.FailoverRequest{Version: 1, Kind: consulkv.KindFailover, Candidate: "b", RequestedAt: t0}
		}), want: ActAcquire},
		{name: "non-candidate waits while a manual failover is pending", o: obs(func(o *Observation) {
			noLeader(o)
			o.Group.Failover = &consulkv.FailoverRequest{Version: 1, Kind: consulkv.KindFailover, Candidate: "c", RequestedAt: t0}
		}), want: ActNone, reason: "pending"},
		{name: "a manual failover older than ttl no longer blocks the race", o: obs(func(o *Observation) {
			noLeader(o)
			o.Group.Failover = &consulkv.FailoverRequest{Version: 1, Kind: consulkv.KindFailover, Candidate: "c", RequestedAt: t0.Add(-time.Hour)}
		}), want: ActAcquire},
		// Rule 9: synchronous mode.
		{name: "sync mode: a listed synchronous standby races", o: obs(func(o *Observation) {
			noLeader(o)
			o.Config.SynchronousMode = consulkv.SyncOn
			o.Group.Sync = &consulkv.SyncState{Version: 1, Leader: "a", SyncStandbys: []string{"b"}}
		}), want: ActAcquire},
		{name: "sync mode: an async standby never races, even with the most WAL", o: obs(func(o *Observation) {
			noLeader(o)
			o.Local.LastLSN = 5000
			o.Config.SynchronousMode = consulkv.SyncStrict
			o.Group.Sync = &consulkv.SyncState{Version: 1, Leader: "a", SyncStandbys: []string{"c"}}
		}), want: ActNone, reason: "not a listed synchronous standby"},
		{name: "sync mode without a sync key: nobody races", o: obs(func(o *Observation) {
			noLeader(o)
			o.Config.SynchronousMode = consulkv.SyncOn
		}), want: ActNone, reason: "synchronous"},
		{name: "sync mode: switchover to an async standby is cancelled", o: obs(func(o *Observation) {
			asLeader(o)
			o.Config.SynchronousMode = consulkv.SyncOn
			o.Group.Sync = &consulkv.SyncState{Version: 1, Leader: "b", SyncStandbys: []string{"a"}}
			o.Group.Failover = &consulkv.FailoverRequest{Version: 1, Kind: consulkv.KindSwitchover, Leader: "b", Candidate: "c", RequestedAt: t0}
		}), want: ActKeepLeader, clear: true, reason: "not a synchronous standby"},
		{name: "sync mode: switchover without candidate picks the sync standby", o: obs(func(o *Observation) {
			asLeader(o)
			o.Group.Members["c"].ReplayLSN = 5000
			o.Config.SynchronousMode = consulkv.SyncOn
			o.Group.Sync = &consulkv.SyncState{Version: 1, Leader: "b", SyncStandbys: []string{"a"}}
			o.Group.Failover = &consulkv.FailoverRequest{Version: 1, Kind: consulkv.KindSwitchover, Leader: "b", RequestedAt: t0}
		}), want: ActSwitchover, target: "a"},
		// Rule 8: pause.
		{name: "paused: no race without a leader", o: obs(func(o *Observation) { noLeader(o); o.Paused = true }), want: ActNone, reason: "paused"},
		{name: "paused running primary without key takes the lock", o: obs(func(o *Observation) { noLeader(o); o.Paused = true; o.Local.InRecovery = false }), want: ActAcquire},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := Decide(tc.o)
			if d.Action != tc.want {
				t.Fatalf("action %s, want %s (%s)", d.Action, tc.want, d.Reason)
			}
			if tc.target != "" && d.Target != tc.target {
				t.Errorf("target %q, want %q", d.Target, tc.target)
			}
			if d.Immediate != tc.immediate && (tc.want == ActDemote) {
				t.Errorf("immediate %v, want %v", d.Immediate, tc.immediate)
			}
			if d.Release != tc.release {
				t.Errorf("release %v, want %v", d.Release, tc.release)
			}
			if d.ClearFailover != tc.clear {
				t.Errorf("clear failover %v, want %v", d.ClearFailover, tc.clear)
			}
			if tc.reason != "" && !strings.Contains(d.Reason, tc.reason) {
				t.Errorf("reason %q does not mention %q", d.Reason, tc.reason)
			}
			if d.Reason == "" {
				t.Error("every decision must say why")
			}
			switch {
			case tc.restore == "" && d.RestoreInitialize != "":
				t.Errorf("restores the initialize key (%s), want no restore", d.RestoreInitialize)
			case tc.restore != "" && !strings.Contains(d.RestoreInitialize, tc.restore):
				t.Errorf("restore reason %q does not mention %q", d.RestoreInitialize, tc.restore)
			}
		})
	}
}

// TestDecidePureAndSafe checks properties over many generated observations:
// Decide never panics, and never keeps or makes a member writable without
// both the lock and a valid lease.
func TestDecideNeverWritableWithoutLockAndLease(t *testing.T) {
	bools := []bool{false, true}
	n := 0
	for _, consulOK := range bools {
		for _, lease := range bools {
			for _, holds := range bools {
				for _, running := range bools {
					for _, inRecovery := range bools {
						for _, paused := range bools {
							o := obs(func(o *Observation) {
								o.ConsulOK = consulOK
								if !consulOK {
									o.Group = nil
								} else if holds {
									o.Group.Leader = &consulkv.LeaderInfo{Member: "b", Session: "sess-b"}
								}
								o.LeaseValid = lease
								o.Local.Running = running
								o.Local.InRecovery = inRecovery
								o.Paused = paused
							})
							d := Decide(o)
							n++
							primaryAfter := running && !inRecovery && d.Action != ActDemote
							if d.Action == ActPromote || d.Action == ActStartPrimary || d.Action == ActKeepLeader {
								primaryAfter = true
							}
							if primaryAfter && !lease && d.Action != ActAcquire {
								t.Errorf("consulOK=%v lease=%v holds=%v running=%v recovery=%v paused=%v: %s leaves a writable primary without a lease", consulOK, lease, holds, running, inRecovery, paused, d)
							}
						}
					}
				}
			}
		}
	}
	if n != 64 {
		t.Fatalf("covered %d combinations", n)
	}
}

// TestDecideNeverBootstrapsAnInitializedGroup checks rule 2 over every
// combination of initialize key, leader key and members' data: an empty
// member races or bootstraps only when no leader exists and no other member
// has a data directory, whatever the initialize key says.
func TestDecideNeverBootstrapsAnInitializedGroup(t *testing.T) {
	inits := map[string]func(*consulkv.GroupView){
		"missing":    func(g *consulkv.GroupView) { g.Initialize, g.InitializeIndex = nil, 0 },
		"unreadable": func(g *consulkv.GroupView) { g.Initialize, g.InitializeIndex = nil, 9 },
		"my claim": func(g *consulkv.GroupView) {
			g.Initialize, g.InitializeIndex = &consulkv.Initialize{Version: 1, Member: "b"}, 9
		},
		"other claim": func(g *consulkv.GroupView) {
			g.Initialize, g.InitializeIndex = &consulkv.Initialize{Version: 1, Member: "c"}, 9
		},
		"filled": func(g *consulkv.GroupView) {
			g.Initialize, g.InitializeIndex = &consulkv.Initialize{Version: 1, Member: "a", SystemID: sysid}, 9
		},
	}
	leaders := map[string]*consulkv.LeaderInfo{
		"none": nil, "a": {Member: "a", Session: "sess-a"}, "unreadable": {Session: "sess-x"}, "stale of mine": {Member: "b", Session: "old"},
	}
	n := 0
	for iname, setInit := range inits {
		for lname, leader := range leaders {
			for _, published := range []bool{false, true} {
				for _, withData := range []bool{false, true} {
					for _, paused := range []bool{false, true} {
						o := obs(func(o *Observation) {
							o.Local = Local{}
							o.Paused = paused
							setInit(o.Group)
							o.Group.Leader = leader
							if !published {
								delete(o.Group.Members, "a")
							}
							for _, m := range o.Group.Members {
								if withData {
									m.SystemID = sysid
								} else {
									m.SystemID = ""
								}
							}
						})
						d := Decide(o)
						n++
						// "c" (always there) has data when withData; "b" is
						// this member and never counts.
						if (d.Action == ActRaceInitialize || d.Action == ActBootstrap) && (leader != nil || withData) {
							t.Errorf("initialize %s, leader %s, published %v, data %v, paused %v: %s", iname, lname, published, withData, paused, d)
						}
						if d.Action == ActClone && (leader == nil || leader.Member != "a" || !published) {
							t.Errorf("clones without a reachable leader: %s", d)
						}
						if d.Action != ActNone && d.Action != ActClone && d.Action != ActRaceInitialize && d.Action != ActBootstrap {
							t.Errorf("an empty member decided %s", d)
						}
					}
				}
			}
		}
	}
	if n != 5*4*2*2*2 {
		t.Fatalf("covered %d combinations", n)
	}
}
