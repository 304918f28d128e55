package agent

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/health"
	"github.com/pgmesh/pgmesh/pg"
	"go.uber.org/zap"
)

// A subscriber's apply worker (Spock's, and PostgreSQL's own with the
// default synchronous_commit = off for subscriptions) confirms a change to
// the publisher once it is flushed on the subscriber's primary, without
// waiting for that primary's standbys. When the primary dies before a
// standby received the change, the promoted standby resumes from its older
// replication-origin position and the publisher, whose slot has moved on,
// skips ahead: the change stays on the publishing group only. pgmesh cannot
// hold the confirmation back, so the new leader at least finds the ranges
// and says so (log, history, status).

// publishedSlot is a logical slot as a publishing group's leader published
// it.
type publishedSlot struct {
	group     string
	confirmed uint64
	ambiguous bool // several groups publish a slot of that name
}

// publishedSlots indexes the logical slots of every group but self.
func publishedSlots(groups map[string]*consulkv.GroupView, self string) map[string]publishedSlot {
	out := map[string]publishedSlot{}
	for name, g := range groups {
		if name == self || g == nil || g.Status == nil {
			continue
		}
		for slot, s := range g.Status.LogicalSlots {
			if p, seen := out[slot]; seen {
				p.ambiguous = true
				out[slot] = p
				continue
			}
			out[slot] = publishedSlot{group: name, confirmed: s.ConfirmedFlush}
		}
	}
	return out
}

// skippedChanges compares how far the old leader had applied each origin
// (prev, its last published status) with what this member replayed (own),
// bounded by what the publisher confirmed: a publisher that confirmed no
// further than own sends the rest again, so nothing is skipped. An origin
// whose slot no group publishes keeps the old leader's bound and no
// publisher name (part of it may still arrive).
func skippedChanges(prev map[string]uint64, own []pg.ReplicationOrigin, slots map[string]publishedSlot) []consulkv.SkippedChanges {
	mine := map[string]pg.ReplicationOrigin{}
	for _, o := range own {
		mine[o.Name] = o
	}
	names := make([]string, 0, len(prev))
	for name := range prev {
		names = append(names, name)
	}
	sort.Strings(names)
	var out []consulkv.SkippedChanges
	for _, name := range names {
		own, ok := mine[name]
		if !ok {
			// Not even created here: the standby stopped receiving before
			// the subscription's origin existed (seen), or the origin was
			// dropped since (a finished sync). Only a slot a group still
			// publishes under that name tells the first case.
			if p, live := slots[name]; !live || p.ambiguous {
				continue
			}
			own = pg.ReplicationOrigin{Name: name, Slot: name}
		}
		from, to := uint64(own.RemoteLSN), prev[name]
		if to <= from {
			continue
		}
		slot := own.Slot
		publisher := ""
		if p, ok := slots[slot]; ok && !p.ambiguous {
			if p.confirmed <= from {
				continue
			}
			if p.confirmed < to {
				to = p.confirmed
			}
			publisher = p.group
		}
		out = append(out, consulkv.SkippedChanges{Origin: name, Slot: slot, Publisher: publisher, From: from, To: to})
	}
	return out
}

// leaderOrigins is what the leader publishes in the group status.
func (a *Agent) leaderOrigins(ctx context.Context) map[string]uint64 {
	origins, err := a.pgi().ReplicationOrigins(ctx)
	if err != nil {
		a.log.Debug("reading replication origins failed", zap.Error(err))
		return nil
	}
	if len(origins) == 0 {
		return nil
	}
	out := make(map[string]uint64, len(origins))
	for _, o := range origins {
		if o.RemoteLSN != 0 {
			out[o.Name] = uint64(o.RemoteLSN)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// replayedOrigins is how far this standby replayed each publisher's
// changes, read just before its promotion: before Spock's or PostgreSQL's
// apply workers start on the new primary and move the origins, and after
// replay has caught up with the WAL received (promotion replays it anyway,
// so waiting costs little; a position read earlier would report received
// changes as skipped). WAL still arriving (an old primary not quite gone)
// can keep replay behind: after a second the check is given up rather than
// the promotion delayed.
func (a *Agent) replayedOrigins(ctx context.Context, inst *pg.Instance) ([]pg.ReplicationOrigin, error) {
	deadline := time.Now().Add(time.Second)
	for {
		done, err := inst.ReplayCaughtUp(ctx)
		if err != nil {
			return nil, fmt.Errorf("replay position: %w", err)
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			return nil, errors.New("replay still behind the received WAL after 1s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return inst.ReplicationOrigins(ctx)
}

// findSkippedChanges runs after a promotion: own is what this member had
// replayed of each origin just before it was promoted, prev the status the
// old leader published last.
func (a *Agent) findSkippedChanges(ctx context.Context, prev *consulkv.GroupStatus, own []pg.ReplicationOrigin) []consulkv.SkippedChanges {
	if prev == nil || prev.Leader == a.cfg.Name || len(prev.Origins) == 0 {
		return nil
	}
	var slots map[string]publishedSlot
	for attempt := 1; ; attempt++ {
		cv, err := a.kv.ReadCluster(ctx)
		if err == nil {
			slots = publishedSlots(cv.Groups, a.cfg.Group)
			break
		}
		if attempt == 3 || ctx.Err() != nil {
			a.log.Warn("could not read the publishers' slots: skipped ranges are reported with the old leader's bound only", zap.Error(err))
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	skipped := skippedChanges(prev.Origins, own, slots)
	if len(skipped) == 0 {
		mine := make(map[string]string, len(own))
		for _, o := range own {
			mine[o.Name] = o.RemoteLSN.String()
		}
		theirs := make(map[string]string, len(prev.Origins))
		for n, l := range prev.Origins {
			theirs[n] = health.FormatLSN(l)
		}
		a.log.Info("no changes of other groups skipped by this promotion", zap.String("old_leader", prev.Leader),
			zap.Any("old_leader_applied", theirs), zap.Any("replayed_here", mine))
	}
	for _, s := range skipped {
		fields := []zap.Field{zap.String("origin", s.Origin), zap.String("slot", s.Slot), zap.String("old_leader", prev.Leader),
			zap.String("from", health.FormatLSN(s.From)), zap.String("to", health.FormatLSN(s.To)), zap.Uint64("publisher_wal_bytes", s.To-s.From)}
		if s.Publisher != "" {
			a.log.Error("this promotion skipped changes from another group: the old leader applied and confirmed them, this member never received them, and the publisher will not send them again; compare the groups' tables and repair",
				append(fields, zap.String("publisher", s.Publisher))...)
		} else {
			a.log.Error("this promotion may have skipped changes from another group: the old leader had applied them, this member never received them (no group publishes the slot, so whether the publisher sends them again is unknown)", fields...)
		}
	}
	return skipped
}
