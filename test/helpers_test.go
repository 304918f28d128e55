package test

import (
	"io"
	"net/http"

	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/test/testbed"
)

type group struct {
	t       *testing.T
	consul  *testbed.Consul
	kv      *consulkv.Client
	name    string
	members map[string]*testbed.Agent
	order   []string
}

// startGroup starts n members a, b, c… of group name; consulAddr gives each
// member's Consul address (nil = the Consul agent directly).
func startGroup(t *testing.T, c *testbed.Consul, name string, n int, consulAddr func(member string) string, tweak func(*testbed.AgentSpec)) *group {
	t.Helper()
	kv, err := consulkv.New(consulkv.Config{Address: c.HTTPAddr, Cluster: "itest", Token: c.ManagementToken,
		CAFile: c.CAFile, CertFile: c.ClientCert, KeyFile: c.ClientKey})
	if err != nil {
		t.Fatal(err)
	}
	g := &group{t: t, consul: c, kv: kv, name: name, members: map[string]*testbed.Agent{}}
	for i := 0; i < n; i++ {
		m := fmt.Sprintf("%s-%c", name, 'a'+i)
		addr := c.HTTPAddr
		if consulAddr != nil {
			addr = consulAddr(m)
		}
		spec := testbed.AgentSpec{Cluster: "itest", Group: name, Name: m, ConsulAddr: addr}
		if tweak != nil {
			tweak(&spec)
		}
		g.members[m] = testbed.StartAgent(t, spec)
		g.order = append(g.order, m)
	}
	return g
}

// leader returns the member named in the leader key ("" if none).
func (g *group) leader() (string, error) {
	v, err := g.kv.ReadGroup(context.Background(), g.name)
	if err != nil {
		return "", err
	}
	if v.Leader == nil {
		return "", nil
	}
	return v.Leader.Member, nil
}

// waitHealthy waits until there is a writable leader and every other
// running member streams from it; it returns the leader.
func (g *group) waitHealthy(timeout time.Duration, skip ...string) string {
	g.t.Helper()
	var leader string
	testbed.Eventually(g.t, timeout, "group "+g.name+" healthy", func() error {
		for _, m := range g.order {
			if code, exited := g.members[m].Wait(0); exited && !contains(skip, m) {
				g.t.Fatalf("agent %s exited with code %d", m, code)
			}
		}
		l, err := g.leader()
		if err != nil {
			return err
		}
		if l == "" {
			return errors.New("no leader key")
		}
		if w, err := g.members[l].IsWritable(context.Background()); err != nil || !w {
			return fmt.Errorf("leader %s not writable yet: %v", l, err)
		}
		if code, _, err := g.members[l].APIStatus("/primary"); code != 200 {
			return fmt.Errorf("leader %s /primary = %d %v", l, code, err)
		}
		for _, m := range g.order {
			if m == l || contains(skip, m) {
				continue
			}
			code, body, err := g.members[m].APIStatus("/replica")
			if code != 200 {
				return fmt.Errorf("%s /replica = %d (%v) %v", m, code, body["state"], err)
			}
		}
		leader = l
		return nil
	})
	return leader
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// writable lists members whose PostgreSQL accepts writes right now.
func (g *group) writable() []string {
	var out []string
	for _, m := range g.order {
		if w, err := g.members[m].IsWritable(context.Background()); err == nil && w {
			out = append(out, m)
		}
	}
	return out
}

// sampler records, every few milliseconds, which members are writable, to
// detect two writable primaries at once.
type sampler struct {
	mu       sync.Mutex
	overlaps []string
	maxBoth  time.Duration
	stop     chan struct{}
	done     chan struct{}
}

func (g *group) startSampler() *sampler {
	s := &sampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		var bothSince time.Time
		for {
			select {
			case <-s.stop:
				return
			default:
			}
			w := g.writableNow(500 * time.Millisecond)
			now := time.Now()
			s.mu.Lock()
			if len(w) > 1 {
				sort.Strings(w)
				if bothSince.IsZero() {
					bothSince = now
				}
				if d := now.Sub(bothSince); d > s.maxBoth {
					s.maxBoth = d
				}
				s.overlaps = append(s.overlaps, now.Format("15:04:05.000")+" "+strings.Join(w, ","))
			} else {
				bothSince = time.Time{}
			}
			s.mu.Unlock()
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return s
}

func (s *sampler) finish() ([]string, time.Duration) {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.overlaps, s.maxBoth
}

// count returns the number of rows in table on member m.
func (g *group) count(m, table string) (int, error) {
	return g.countWithin(m, table, 3*time.Second)
}

// countWithin is count with its own bound, for tables large enough that a
// cold, loaded server needs more than a few seconds to count them.
func (g *group) countWithin(m, table string, timeout time.Duration) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := g.members[m].Connect(ctx)
	if err != nil {
		return 0, err
	}
	defer c.Close(context.Background())
	var n int
	err = c.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n)
	return n, err
}

func (g *group) waitRows(m, table string, want int, timeout time.Duration) {
	g.t.Helper()
	testbed.Eventually(g.t, timeout, fmt.Sprintf("%d rows in %s on %s", want, table, m), func() error {
		n, err := g.count(m, table)
		if err != nil {
			return err
		}
		if n < want {
			return fmt.Errorf("%d rows", n)
		}
		return nil
	})
}

// writer inserts uniquely numbered rows into the group's writable member
// and records every acknowledged id and the longest gap between acks.
type writer struct {
	mu     sync.Mutex
	acked  []int
	maxGap time.Duration
	stop   chan struct{}
	done   chan struct{}
}

func (g *group) startWriter(table string) *writer {
	w := &writer{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		id := 0
		last := time.Now()
		target := ""
		for {
			select {
			case <-w.stop:
				return
			default:
			}
			if target == "" {
				if ws := g.writable(); len(ws) == 1 {
					target = ws[0]
				} else {
					time.Sleep(20 * time.Millisecond)
					continue
				}
			}
			id++
			err := g.members[target].Exec(context.Background(), "INSERT INTO "+table+"(id) VALUES ($1)", id)
			if err != nil {
				target = ""
				time.Sleep(20 * time.Millisecond)
				continue
			}
			now := time.Now()
			w.mu.Lock()
			w.acked = append(w.acked, id)
			if gap := now.Sub(last); gap > w.maxGap {
				w.maxGap = gap
			}
			w.mu.Unlock()
			last = now
			time.Sleep(10 * time.Millisecond)
		}
	}()
	return w
}

func (w *writer) finish() ([]int, time.Duration) {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.acked, w.maxGap
}

// missing returns acked ids absent from table on member m.
func (g *group) missing(m, table string, acked []int) ([]int, error) {
	have, err := g.ids(m, table)
	if err != nil {
		return nil, err
	}
	var miss []int
	for _, id := range acked {
		if !have[id] {
			miss = append(miss, id)
		}
	}
	return miss, nil
}

func containsStr(s, sub string) bool { return strings.Contains(s, sub) }

// post sends a JSON body to a member's REST API.
func post(t *testing.T, addr, path, body string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 90 * time.Second}
	resp, err := client.Post("http://"+addr+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitNewLeader waits until a member other than old holds the leader key
// and accepts writes, and returns it.
func (g *group) waitNewLeader(old string, timeout time.Duration) string {
	g.t.Helper()
	var next string
	testbed.Eventually(g.t, timeout, "a member other than "+old+" leads and is writable", func() error {
		l, err := g.leader()
		if err != nil || l == "" || l == old {
			return fmt.Errorf("leader %q %v", l, err)
		}
		if w, err := g.members[l].IsWritable(context.Background()); err != nil || !w {
			return fmt.Errorf("%s not writable yet", l)
		}
		next = l
		return nil
	})
	return next
}

// waitReadOnly waits until member m no longer accepts writes and returns
// how long after since that was seen.
func (g *group) waitReadOnly(m string, since time.Time, timeout time.Duration) time.Duration {
	g.t.Helper()
	var took time.Duration
	testbed.Eventually(g.t, timeout, m+" stops accepting writes", func() error {
		if w, err := g.members[m].IsWritable(context.Background()); err == nil && w {
			return errors.New("still writable")
		}
		took = time.Since(since)
		return nil
	})
	return took
}

// writableNow asks every member at once whether it accepts writes, each
// within timeout, so one snapshot covers all members at nearly one instant.
func (g *group) writableNow(timeout time.Duration) []string {
	var w []string
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, m := range g.order {
		wg.Add(1)
		go func(m string) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			if ok, err := g.members[m].IsWritable(ctx); err == nil && ok {
				mu.Lock()
				w = append(w, m)
				mu.Unlock()
			}
		}(m)
	}
	wg.Wait()
	return w
}
