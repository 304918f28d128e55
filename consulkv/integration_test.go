package consulkv_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/test/testbed"
)

func newClient(t *testing.T, c *testbed.Consul) *consulkv.Client {
	t.Helper()
	cl, err := consulkv.New(consulkv.Config{Address: c.HTTPAddr, Cluster: "itest"})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

func TestLockContendersExactlyOneWins(t *testing.T) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	cl := newClient(t, c)
	ctx := context.Background()
	opts := consulkv.LockOptions{TTL: 4 * time.Second}
	var wg sync.WaitGroup
	wins := make(chan string, 5)
	for _, m := range []string{"m1", "m2", "m3", "m4", "m5"} {
		wg.Add(1)
		go func(m string) {
			defer wg.Done()
			l := cl.NewLock("g1", m, opts)
			if _, err := l.EnsureSession(ctx); err != nil {
				t.Error(err)
				return
			}
			ok, err := l.Acquire(ctx)
			if err != nil {
				t.Error(err)
			}
			if ok {
				wins <- m
			}
		}(m)
	}
	wg.Wait()
	close(wins)
	var winners []string
	for w := range wins {
		winners = append(winners, w)
	}
	if len(winners) != 1 {
		t.Fatalf("want exactly one winner, got %v", winners)
	}
	g, err := cl.ReadGroup(ctx, "g1")
	if err != nil {
		t.Fatal(err)
	}
	if g.Leader == nil || g.Leader.Member != winners[0] {
		t.Fatalf("leader key says %+v, winner %s", g.Leader, winners[0])
	}
}

func TestSessionExpiryFreesLockAndLockDelayHolds(t *testing.T) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	cl := newClient(t, c)
	ctx := context.Background()
	lockDelay := 3 * time.Second
	holder := cl.NewLock("g1", "a", consulkv.LockOptions{TTL: 2 * time.Second, LockDelay: lockDelay})
	if _, err := holder.EnsureSession(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, err := holder.Acquire(ctx); !ok || err != nil {
		t.Fatalf("acquire: %v %v", ok, err)
	}
	start := time.Now()
	if !holder.LeaseValid(start) {
		t.Fatal("fresh lease not valid")
	}
	// The lease must end before Consul could possibly free the lock.
	if until := holder.LeaseUntil(); until.Sub(start) >= time.Second {
		t.Fatalf("lease %s not shorter than the session TTL of 1s", until.Sub(start))
	}
	other := cl.NewLock("g1", "b", consulkv.LockOptions{TTL: 2 * time.Second})
	if _, err := other.EnsureSession(ctx); err != nil {
		t.Fatal(err)
	}
	// No renewals from the holder: the session expires (TTL 1s, Consul
	// waits up to 2x) and the key is deleted (Behavior=delete).
	var freedAt time.Time
	testbed.Eventually(t, 15*time.Second, "leader key deleted after session expiry", func() error {
		g, err := cl.ReadGroup(ctx, "g1")
		if err != nil {
			return err
		}
		if g.Leader != nil {
			return errors.New("leader key still held")
		}
		freedAt = time.Now()
		return nil
	})
	if freedAt.Sub(start) < time.Second {
		t.Fatalf("lock freed after %s, sooner than the session TTL", freedAt.Sub(start))
	}
	if holder.LeaseValid(freedAt) {
		t.Fatal("holder's lease outlived its session")
	}
	// Lock-delay: the other member cannot acquire until it has passed.
	var acquiredAt time.Time
	testbed.Eventually(t, 15*time.Second, "other member acquires", func() error {
		if _, err := other.EnsureSession(ctx); err != nil {
			return err
		}
		ok, err := other.Acquire(ctx)
		if err != nil {
			return err
		}
		if !ok {
			return errors.New("not acquired")
		}
		acquiredAt = time.Now()
		return nil
	})
	if acquiredAt.Sub(freedAt) < lockDelay-500*time.Millisecond {
		t.Fatalf("acquired %s after invalidation, lock-delay is %s", acquiredAt.Sub(freedAt), lockDelay)
	}
	t.Logf("session expired after %s; re-acquired %s later (lock-delay %s)", freedAt.Sub(start).Round(10*time.Millisecond), acquiredAt.Sub(freedAt).Round(10*time.Millisecond), lockDelay)
	// The old holder finds out its session is gone.
	if _, err := holder.EnsureSession(ctx); !errors.Is(err, consulkv.ErrSessionGone) {
		t.Fatalf("renew of an expired session: want ErrSessionGone, got %v", err)
	}
}

func TestGuardedWritesRefuseNonHolders(t *testing.T) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	cl := newClient(t, c)
	ctx := context.Background()
	leader, follower := leaderAndFollower(t, cl)
	if ok, _ := leader.Acquire(ctx); !ok {
		t.Fatal("leader did not acquire")
	}
	st := &consulkv.GroupStatus{Version: 1, Leader: "b", LastLSN: 1}
	err := cl.LeaderPut(ctx, "g1", follower.Session(), cl.StatusKey("g1"), st)
	if !errors.Is(err, consulkv.ErrNotHolder) {
		t.Fatalf("non-holder write: want ErrNotHolder, got %v", err)
	}
	st.Leader = "a"
	if err := cl.LeaderPut(ctx, "g1", leader.Session(), cl.StatusKey("g1"), st); err != nil {
		t.Fatalf("holder write: %v", err)
	}
	if err := cl.AppendHistory(ctx, "g1", follower.Session(), consulkv.HistoryEntry{Timeline: 1}); !errors.Is(err, consulkv.ErrNotHolder) {
		t.Fatalf("non-holder history append: %v", err)
	}
	for i := 1; i <= 2; i++ {
		if err := cl.AppendHistory(ctx, "g1", leader.Session(), consulkv.HistoryEntry{Timeline: uint32(i), NewLeader: "a"}); err != nil {
			t.Fatal(err)
		}
	}
	// The bootstrap race: CAS 0 lets exactly one member initialize.
	won1, err1 := cl.RaceInitialize(ctx, "g1", "a")
	won2, err2 := cl.RaceInitialize(ctx, "g1", "b")
	if err1 != nil || err2 != nil || !won1 || won2 {
		t.Fatalf("initialize race: %v %v %v %v", won1, err1, won2, err2)
	}
	// Release by a non-holder is refused and leaves the key.
	if err := follower.Release(ctx); !errors.Is(err, consulkv.ErrNotHolder) {
		t.Fatalf("non-holder release: %v", err)
	}
	g, _ := cl.ReadGroup(ctx, "g1")
	if g.Leader == nil || g.Leader.Member != "a" || g.Status == nil || g.History == nil || len(g.History.Entries) != 2 || g.Initialize.Member != "a" {
		t.Fatalf("group view: leader %+v status %+v history %+v init %+v", g.Leader, g.Status, g.History, g.Initialize)
	}
	if err := leader.Release(ctx); err != nil {
		t.Fatal(err)
	}
	g, _ = cl.ReadGroup(ctx, "g1")
	if g.Leader != nil {
		t.Fatal("leader key still there after release")
	}
}

func TestWatchWakesOnChangeAndGarbageIsReported(t *testing.T) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	cl := newClient(t, c)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	views := make(chan *consulkv.GroupView, 16)
	go cl.WatchPrefix(ctx, cl.GroupPrefix("g1"), consulkv.WatchOptions{Wait: 30 * time.Second}, func(idx uint64, pairs api.KVPairs) {
		views <- cl.DecodeGroup("g1", idx, pairs)
	})
	first := <-views
	if first.Leader != nil {
		t.Fatal("unexpected leader")
	}
	kv := c.Client().KV()
	put := func(k, v string) {
		if _, err := kv.Put(&api.KVPair{Key: k, Value: []byte(v)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	put(cl.FailoverKey("g1"), `{"version":1,"kind":"failover","candidate":"b","requested_at":"2026-01-01T00:00:00Z"}`)
	select {
	case v := <-views:
		if v.Failover == nil || v.Failover.Candidate != "b" {
			t.Fatalf("watch delivered %+v", v.Failover)
		}
		t.Logf("watch woke %s after the write", time.Since(start).Round(time.Millisecond))
	case <-time.After(5 * time.Second):
		t.Fatal("watch did not wake within 5s of a change (wait was 30s)")
	}
	put(cl.MemberKey("g1", "x"), `{"version":1,"name":"x","role":"chief"}`)
	select {
	case v := <-views:
		if len(v.Problems) != 1 || len(v.Members) != 0 {
			t.Fatalf("garbage member: problems %v members %v", v.Problems, v.Members)
		}
		var de *consulkv.DecodeError
		if !errors.As(v.Problems[0], &de) || de.Key != cl.MemberKey("g1", "x") {
			t.Fatalf("problem does not name the key: %v", v.Problems[0])
		}
	case <-time.After(5 * time.Second):
		t.Fatal("watch did not wake for the garbage value")
	}
	// Garbage config: ReadConfig returns a DecodeError with the index so an
	// editor can still overwrite it.
	put(cl.ConfigKey(), `{"version":1,"ttl":"banana"}`)
	cfg, idx, err := cl.ReadConfig(ctx)
	var de *consulkv.DecodeError
	if cfg != nil || idx == 0 || !errors.As(err, &de) {
		t.Fatalf("garbage config: %v %d %v", cfg, idx, err)
	}
	ok, err := cl.CAS(ctx, cl.ConfigKey(), &consulkv.ClusterConfig{Version: 1}, idx)
	if !ok || err != nil {
		t.Fatalf("CAS over garbage config: %v %v", ok, err)
	}
}

func TestUnreachableConsulIsAClearError(t *testing.T) {
	port := testbed.FreePort(t)
	cl, err := consulkv.New(consulkv.Config{Address: "127.0.0.1:" + strconv.Itoa(port), Cluster: "itest", RequestTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	_, err = cl.ReadGroup(context.Background(), "g1")
	if !errors.Is(err, consulkv.ErrUnreachable) {
		t.Fatalf("want ErrUnreachable, got %v", err)
	}
	if err := cl.Ping(context.Background()); !errors.Is(err, consulkv.ErrUnreachable) {
		t.Fatalf("ping: %v", err)
	}
}

// TestWatchKeySeesOnlyItsKey: an agent's leader/failover/config watches must
// wake for their own key (created, changed, lock released, deleted) and stay
// asleep while other keys of the group are written every loop.
func TestWatchKeySeesOnlyItsKey(t *testing.T) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	cl := newClient(t, c)
	kv := c.Client().KV()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	key := cl.FailoverKey("g1")
	type seen struct {
		at   time.Time
		pair *api.KVPair
	}
	calls := make(chan seen, 16)
	go cl.WatchKey(ctx, key, consulkv.WatchOptions{Wait: 5 * time.Second}, func(_ uint64, p *api.KVPair) {
		calls <- seen{time.Now(), p}
	})
	next := func(what string) seen {
		t.Helper()
		select {
		case s := <-calls:
			return s
		case <-time.After(3 * time.Second):
			t.Fatalf("watch did not fire for %s", what)
		}
		return seen{}
	}
	if s := next("initial state"); s.pair != nil {
		t.Fatalf("initial call: want absent key, got %q", s.pair.Value)
	}
	// Neighbours written many times: no call, even across a wait timeout.
	for i := 0; i < 20; i++ {
		if _, err := kv.Put(&api.KVPair{Key: cl.MemberKey("g1", "m"+strconv.Itoa(i%3)), Value: []byte(strconv.Itoa(i))}, nil); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case s := <-calls:
		t.Fatalf("watch fired for a neighbour's write (pair %+v)", s.pair)
	case <-time.After(1500 * time.Millisecond):
	}
	written := time.Now()
	if _, err := kv.Put(&api.KVPair{Key: key, Value: []byte("x")}, nil); err != nil {
		t.Fatal(err)
	}
	s := next("creation")
	if s.pair == nil || string(s.pair.Value) != "x" {
		t.Fatalf("after creation: got %+v", s.pair)
	}
	t.Logf("watch fired %s after the key was written", s.at.Sub(written).Round(time.Millisecond))
	if _, err := kv.Put(&api.KVPair{Key: key, Value: []byte("y")}, nil); err != nil {
		t.Fatal(err)
	}
	if s := next("change"); s.pair == nil || string(s.pair.Value) != "y" {
		t.Fatalf("after change: got %+v", s.pair)
	}
	if _, err := kv.Delete(key, nil); err != nil {
		t.Fatal(err)
	}
	if s := next("deletion"); s.pair != nil {
		t.Fatalf("after deletion: want nil, got %+v", s.pair)
	}
}

// TestWatchPrefixMinInterval: a prefix written every 20ms is delivered at
// most once per MinInterval, and a change after a quiet period at once.
func TestWatchPrefixMinInterval(t *testing.T) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	cl := newClient(t, c)
	kv := c.Client().KV()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var times []time.Time
	go cl.WatchPrefix(ctx, cl.GroupPrefix("g1"), consulkv.WatchOptions{Wait: 5 * time.Second, MinInterval: 300 * time.Millisecond}, func(uint64, consulkv.KVPairs) {
		mu.Lock()
		times = append(times, time.Now())
		mu.Unlock()
	})
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(times) }
	deadline := time.Now().Add(3 * time.Second)
	for count() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	writes := 0
	for time.Since(start) < 1500*time.Millisecond {
		if _, err := kv.Put(&api.KVPair{Key: cl.MemberKey("g1", "m"), Value: []byte(strconv.Itoa(writes))}, nil); err != nil {
			t.Fatal(err)
		}
		writes++
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(400 * time.Millisecond)
	during := count() - 1
	t.Logf("%d writes in 1.5s delivered %d times", writes, during)
	if during > 7 || during < 3 {
		t.Errorf("%d deliveries for %d writes in 1.5s with MinInterval 300ms, want 3..7", during, writes)
	}
	time.Sleep(time.Second) // quiet
	before := count()
	wrote := time.Now()
	if _, err := kv.Put(&api.KVPair{Key: cl.LeaderKey("g1"), Value: []byte("x")}, nil); err != nil {
		t.Fatal(err)
	}
	for count() == before && time.Since(wrote) < 2*time.Second {
		time.Sleep(5 * time.Millisecond)
	}
	if took := time.Since(wrote); took > 150*time.Millisecond {
		t.Errorf("a change after a quiet period was delivered after %s, want at once", took)
	}
}

// TestRestoreInitialize: only the leader key's holder may rewrite the
// initialize key; absent it is created (CAS 0), unreadable it is replaced
// at the index it was seen at, and a key that changed meanwhile is left.
func TestRestoreInitialize(t *testing.T) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	cl := newClient(t, c)
	ctx := context.Background()
	leader, follower := leaderAndFollower(t, cl)
	if ok, _ := leader.Acquire(ctx); !ok {
		t.Fatal("leader did not acquire")
	}
	init := &consulkv.Initialize{Version: consulkv.ValueVersion, Member: "a", SystemID: "7300000000000000001", At: time.Now().UTC()}
	if _, err := cl.RestoreInitialize(ctx, "g1", follower.Session(), init, 0); !errors.Is(err, consulkv.ErrNotHolder) {
		t.Fatalf("non-holder restore: want ErrNotHolder, got %v", err)
	}
	if g, _ := cl.ReadGroup(ctx, "g1"); g.InitializeIndex != 0 {
		t.Fatalf("a refused restore wrote the key: %+v", g.Initialize)
	}
	if ok, err := cl.RestoreInitialize(ctx, "g1", leader.Session(), init, 0); err != nil || !ok {
		t.Fatalf("restore of an absent key: ok=%v err=%v", ok, err)
	}
	// CAS 0 on a key that exists: left alone, no error.
	if ok, err := cl.RestoreInitialize(ctx, "g1", leader.Session(), init, 0); err != nil || ok {
		t.Fatalf("restore over an existing key with index 0: ok=%v err=%v", ok, err)
	}
	if _, err := c.Client().KV().Put(&api.KVPair{Key: cl.InitializeKey("g1"), Value: []byte("garbage{")}, nil); err != nil {
		t.Fatal(err)
	}
	g, err := cl.ReadGroup(ctx, "g1")
	if err != nil || g.Initialize != nil || g.InitializeIndex == 0 {
		t.Fatalf("garbage initialize key: %+v index %d err %v", g.Initialize, g.InitializeIndex, err)
	}
	if ok, err := cl.RestoreInitialize(ctx, "g1", leader.Session(), init, g.InitializeIndex-1); err != nil || ok {
		t.Fatalf("restore at a stale index: ok=%v err=%v", ok, err)
	}
	if ok, err := cl.RestoreInitialize(ctx, "g1", leader.Session(), init, g.InitializeIndex); err != nil || !ok {
		t.Fatalf("restore over garbage: ok=%v err=%v", ok, err)
	}
	g, _ = cl.ReadGroup(ctx, "g1")
	if g.Initialize == nil || g.Initialize.SystemID != init.SystemID {
		t.Fatalf("restored key: %+v", g.Initialize)
	}
}

// leaderAndFollower are two members of group g1 with a session each; the
// caller decides who acquires.
func leaderAndFollower(t *testing.T, cl *consulkv.Client) (leader, follower *consulkv.Lock) {
	t.Helper()
	opts := consulkv.LockOptions{TTL: 10 * time.Second}
	leader, follower = cl.NewLock("g1", "a", opts), cl.NewLock("g1", "b", opts)
	for _, l := range []*consulkv.Lock{leader, follower} {
		if _, err := l.EnsureSession(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	return leader, follower
}
