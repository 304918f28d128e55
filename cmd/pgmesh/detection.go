package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
)

// Measured figures the failure-detection estimate is built from: the
// "pgmesh on hosts" series in docs/benchmarks.md (one Consul client agent
// per host, Consul 1.14.8 with default gossip, the whole host killed).
const (
	// A dead host's serfHealth turned critical 5.05–8.55 s after the kill,
	// median 5.6 s, over 50 kills; a session tied to it is invalidated at
	// that instant. (Up to 10 Consul nodes: serf's minimum suspicion grows
	// with the datacenter, so bigger ones are slower.)
	serfDetectTypical = 5600 * time.Millisecond
	serfDetectWorst   = 8550 * time.Millisecond
	// A TTL-only session is invalidated up to twice the session TTL (ttl/2)
	// after its last renew, so at worst ttl after the host died; with ttl
	// 20 s the key was free after 18.7 s at the median. The typical figure
	// is scaled from that ratio.
	ttlMeasuredMedian = 18700 * time.Millisecond
	ttlMeasuredAt     = 20 * time.Second
	// defaultDetectionGoal is issue 15's goal for an unplanned failover: a
	// third of the 26.3 s Patroni needs on its defaults.
	defaultDetectionGoal = 8800 * time.Millisecond
)

// Session check names with a meaning of their own: Consul's failure
// detector for the node, and the member's own agent-liveness service check.
const (
	serfCheck     = "serfHealth"
	livenessCheck = "liveness"
)

// detection estimates how long a dead member's host takes to be noticed and
// its lock to be free for a successor: Typical and Worst include the
// lock-delay in force for the member's session.
type detection struct {
	// Tie says what the session is tied to, as the status line shows it.
	Tie string
	// Via is what notices a dead host: serfHealth or the session TTL.
	Via       string
	Blind     bool // tied to checks, none of which sees a dead host
	LockDelay time.Duration
	Typical   time.Duration
	Worst     time.Duration
}

const (
	viaSerf = "serfHealth"
	viaTTL  = "session_ttl"
)

// estimateDetection applies the measured figures to a member's session
// checks under the cluster config. Only serfHealth, which Consul's servers
// judge from gossip, goes critical when the host dies; every other check
// (liveness, custom node checks) is run by the host's own Consul agent,
// which dies with it and leaves the catalog passing, so such a session
// ends by its TTL like a TTL-only one (with the checks' lock-delay).
func estimateDetection(cfg consulkv.ClusterConfig, checks []string) detection {
	cfg = cfg.WithDefaults()
	d := detection{LockDelay: cfg.LockDelayFor(len(checks) > 0)}
	var nodes []string
	service, serf := false, false
	for _, c := range checks {
		switch c {
		case livenessCheck:
			service = true
		case serfCheck:
			serf = true
			nodes = append(nodes, c)
		default:
			nodes = append(nodes, c)
		}
	}
	var typical, worst time.Duration
	if serf {
		d.Via = viaSerf
		typical, worst = serfDetectTypical, serfDetectWorst
	} else {
		d.Via = viaTTL
		// The session TTL is ttl/2, at least 1s (consulkv.LockOptions).
		worst = 2 * max(cfg.TTL.D()/2, time.Second)
		typical = time.Duration(float64(worst) * float64(ttlMeasuredMedian) / float64(ttlMeasuredAt))
	}
	d.Typical, d.Worst = typical+d.LockDelay, worst+d.LockDelay
	if len(checks) == 0 {
		d.Tie = "session TTL only"
		return d
	}
	var parts []string
	if len(nodes) > 0 {
		word := "node check "
		if len(nodes) > 1 {
			word = "node checks "
		}
		parts = append(parts, word+strings.Join(nodes, ", "))
	}
	if service {
		parts = append(parts, "service check "+livenessCheck)
	}
	d.Tie = "session tied to " + strings.Join(parts, " + ")
	if !serf {
		d.Blind = true
		d.Tie += ", dead host noticed by TTL"
	}
	return d
}

// fix is what brings the member's worst case under goal.
func (d detection) fix(goal time.Duration) string {
	if d.Via == viaSerf {
		if d.LockDelay > consulkv.MinChecksLockDelay && serfDetectWorst+consulkv.MinChecksLockDelay <= goal {
			return fmt.Sprintf("lower lock_delay (%s now, at least %s)", fmtDur(d.LockDelay), fmtDur(consulkv.MinChecksLockDelay))
		}
		return fmt.Sprintf("serf alone takes up to %s to call a host dead with Consul's default gossip, then lock_delay %s; only tuning Consul's gossip_lan shortens that",
			fmtDur(serfDetectWorst), fmtDur(d.LockDelay))
	}
	var fix string
	if d.Blind {
		fix = "add serfHealth to consul.session_checks, with a Consul client agent on each host (the checks tied now cannot fail when the host dies)"
	} else {
		fix = "run a Consul client agent on each host so sessions are tied to serfHealth (automatic when consul.session_checks is unset)"
	}
	fix += ", or lower ttl (Consul's session_ttl_min must allow ttl/2)"
	if d.LockDelay > 0 {
		fix += fmt.Sprintf(" and lock_delay (%s now)", fmtDur(d.LockDelay))
	}
	return fix
}

// fmtDur rounds to a tenth of a second, the precision the figures have.
func fmtDur(d time.Duration) string { return d.Round(100 * time.Millisecond).String() }

// seconds is d for -o json/yaml, to a tenth of a second.
func seconds(d time.Duration) float64 { return d.Round(100 * time.Millisecond).Seconds() }

// detectionSegment is one kind of session in a group and its members.
type detectionSegment struct {
	est     detection
	members []string
}

// detectionSegments groups a group's members by how they are detected, in
// member order.
func detectionSegments(g groupStatus) []detectionSegment {
	var out []detectionSegment
	idx := map[string]int{}
	for _, m := range g.Members {
		if m.detection == nil {
			continue
		}
		key := fmt.Sprintf("%s|%d|%d", m.detection.Tie, m.detection.Typical, m.detection.Worst)
		i, ok := idx[key]
		if !ok {
			i = len(out)
			idx[key] = i
			out = append(out, detectionSegment{est: *m.detection})
		}
		out[i].members = append(out[i].members, m.Name)
	}
	return out
}

// detectionLine says per group how each member's session is tied and how
// long a dead host takes until a successor may take the lock.
func detectionLine(g groupStatus) string {
	segs := detectionSegments(g)
	if len(segs) == 0 {
		return ""
	}
	parts := make([]string, 0, len(segs))
	for _, s := range segs {
		parts = append(parts, fmt.Sprintf("%s (%s) ~%s, worst %s", s.est.Tie, strings.Join(s.members, ", "),
			fmtDur(s.est.Typical), fmtDur(s.est.Worst)))
	}
	return "Failure detection (dead host until a successor may take the lock): " + strings.Join(parts, "; ")
}

// detectionWarnings are the warnings for the members of g whose worst case
// is slower than goal (none when goal is 0).
func detectionWarnings(g groupStatus, goal time.Duration) []string {
	if goal <= 0 {
		return nil
	}
	var out []string
	for _, s := range detectionSegments(g) {
		// The goal is a median (a third of Patroni's defaults' 26.3s), so
		// it is held against the typical figure; the worst case is shown.
		if s.est.Typical <= goal {
			continue
		}
		out = append(out, fmt.Sprintf("Slow failure detection in group %s: %s (%s) takes about %s (up to %s) to be noticed dead and free the lock, goal %s: %s.",
			g.Name, strings.Join(s.members, ", "), s.est.Tie, fmtDur(s.est.Typical), fmtDur(s.est.Worst), fmtDur(goal), s.est.fix(goal)))
	}
	return out
}
