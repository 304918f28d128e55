package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/internal/demo"
)

// leaderWatch follows a group's leader key with a blocking query and
// records, after arm, when the old leader's key disappeared and when
// another member held it.
type leaderWatch struct {
	mu               sync.Mutex
	old              string
	t0               time.Time
	freedAt, takenAt time.Time
	takenBy          string
}

// watchLeader starts the watch and returns once it has Consul's current
// state.
func watchLeader(ctx context.Context, kv *consulkv.Client, group, old string) (*leaderWatch, error) {
	w := &leaderWatch{old: old}
	ready := make(chan struct{})
	var once sync.Once
	go kv.WatchPrefix(ctx, kv.GroupPrefix(group), consulkv.WatchOptions{Wait: 10 * time.Second}, func(_ uint64, pairs consulkv.KVPairs) {
		now := time.Now()
		g := kv.DecodeGroup(group, 0, pairs)
		w.mu.Lock()
		if !w.t0.IsZero() {
			if (g.Leader == nil || g.Leader.Member != w.old) && w.freedAt.IsZero() {
				w.freedAt = now
			}
			if g.Leader != nil && g.Leader.Member != w.old && w.takenAt.IsZero() {
				w.takenAt, w.takenBy = now, g.Leader.Member
			}
		}
		w.mu.Unlock()
		once.Do(func() { close(ready) })
	})
	select {
	case <-ready:
		return w, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// arm starts recording; durations are measured from t0.
func (w *leaderWatch) arm(t0 time.Time) {
	w.mu.Lock()
	w.t0 = t0
	w.mu.Unlock()
}

// wait gives the watch up to d to see the new leader (it may trail the
// first write by a few milliseconds).
func (w *leaderWatch) wait(d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		w.mu.Lock()
		done := !w.takenAt.IsZero()
		w.mu.Unlock()
		if done {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// result returns freed and taken relative to t0 (0 when not seen) and
// who took the key.
func (w *leaderWatch) result() (freed, taken time.Duration, by string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.freedAt.IsZero() {
		freed = w.freedAt.Sub(w.t0)
	}
	if !w.takenAt.IsZero() {
		taken = w.takenAt.Sub(w.t0)
	}
	return freed, taken, w.takenBy
}

// waitMemberKeys waits until Consul holds a leader key and a member key for
// every member of the group: the REST API can report a healthy replica a
// loop before its member key is back (after its session was re-created,
// lock-delay refuses the key for a moment), and `pgmesh switchover` reads
// the candidates from the member keys.
func waitMemberKeys(ctx context.Context, kv *consulkv.Client, group string, members []string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		g, err := kv.ReadGroup(ctx, group)
		missing := []string{}
		if err == nil {
			for _, m := range members {
				if g.Members[m] == nil {
					missing = append(missing, m)
				}
			}
			if g.Leader == nil {
				missing = append(missing, "leader")
			}
			if len(missing) == 0 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("group %s: keys missing in Consul after %s: %v (last error %v)", group, timeout, missing, err)
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

func memberNames(ms []*demo.Member) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Name)
	}
	return out
}
