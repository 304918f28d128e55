package health

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
)

// fakeCtl is a Controller for testing the HTTP layer alone.
type fakeCtl struct {
	mu sync.Mutex

	// members' published settings, checked by CASConfig as the agent does.
	members []consulkv.MemberSettings

	state      MemberState
	statePanic bool

	group    *consulkv.GroupView
	groupErr error

	cfg      *consulkv.ClusterConfig
	cfgIndex uint64
	cfgErr   error
	// casLosses makes that many CAS calls lose to a concurrent writer.
	casLosses int
	casCalls  int

	failovers []*consulkv.FailoverRequest
	// promoteAfter: once a request is this old, Group reports its
	// candidate (or promoteTo) as the leader, like a working HA loop.
	promoteAfter time.Duration
	promoteTo    string
	// abandonAfter: once a request is this old, its failover key is gone
	// with the leader unchanged (the leader gave up or it was cancelled).
	abandonAfter time.Duration
	requestedAt  time.Time
	failoverErr  error
	cancels      int

	restarts   int
	restartErr error
	reloads    int
	reinits    []bool
	wakes      int
}

func (f *fakeCtl) State() MemberState {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.statePanic {
		panic("boom")
	}
	return f.state
}

func (f *fakeCtl) Group(ctx context.Context) (*consulkv.GroupView, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.groupErr != nil {
		return nil, f.groupErr
	}
	if f.group == nil {
		return nil, errors.New("no group")
	}
	g := *f.group
	if len(f.failovers) > 0 && !(f.abandonAfter > 0 && time.Since(f.requestedAt) >= f.abandonAfter) {
		g.Failover, g.FailoverIndex = f.failovers[len(f.failovers)-1], 1
	}
	if len(f.failovers) > 0 && f.promoteAfter > 0 && time.Since(f.requestedAt) >= f.promoteAfter {
		to := f.promoteTo
		if to == "" {
			to = f.failovers[len(f.failovers)-1].Candidate
		}
		g.Leader = &consulkv.LeaderInfo{Member: to, Session: "s2"}
	}
	return &g, nil
}

func (f *fakeCtl) Cluster(context.Context) (*consulkv.ClusterView, error) {
	return nil, errors.New("not used by the API")
}

func (f *fakeCtl) Config(context.Context) (*consulkv.ClusterConfig, uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cfgErr != nil {
		return nil, f.cfgIndex, f.cfgErr
	}
	if f.cfg == nil {
		return nil, 0, nil
	}
	c := cloneConfig(f.cfg)
	return c, f.cfgIndex, nil
}

func cloneConfig(c *consulkv.ClusterConfig) *consulkv.ClusterConfig {
	n := *c
	if c.Parameters != nil {
		n.Parameters = map[string]string{}
		for k, v := range c.Parameters {
			n.Parameters[k] = v
		}
	}
	n.PausedGroups = append([]string(nil), c.PausedGroups...)
	return &n
}

func (f *fakeCtl) CASConfig(_ context.Context, cfg *consulkv.ClusterConfig, index uint64) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.casCalls++
	if f.casLosses > 0 {
		f.casLosses--
		f.cfgIndex++
		return false, nil
	}
	if index != f.cfgIndex {
		return false, nil
	}
	if _, err := consulkv.Encode(cfg); err != nil {
		return false, err
	}
	if err := cfg.ValidateFor(f.members); err != nil {
		return false, err
	}
	f.cfg = cloneConfig(cfg)
	f.cfgErr = nil
	f.cfgIndex++
	return true, nil
}

func (f *fakeCtl) RequestFailover(_ context.Context, req *consulkv.FailoverRequest) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failoverErr != nil {
		return f.failoverErr
	}
	if err := req.Validate(); err != nil {
		return err
	}
	f.failovers = append(f.failovers, req)
	f.requestedAt = time.Now()
	return nil
}

func (f *fakeCtl) CancelFailover(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cancels++
	return nil
}

func (f *fakeCtl) Restart(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.restarts++
	return f.restartErr
}

func (f *fakeCtl) Reload(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reloads++
	return nil
}

func (f *fakeCtl) Reinitialize(_ context.Context, force bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reinits = append(f.reinits, force)
	return nil
}

func (f *fakeCtl) Wake() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.wakes++
}

// States used across tests.

func primaryState() MemberState {
	return MemberState{
		Cluster: "mesh", Group: "n1", Name: "m1",
		Role: consulkv.RolePrimary, State: "running",
		IsLeader: true, Writable: true, PGRunning: true,
		Timeline: 3, WriteLSN: 500 << 20,
		LeaderName: "m1", LeaderLastLSN: 500 << 20,
		SystemID: "7268616322854375442", PGVersion: 150018,
		LastLoop: time.Now(), TTL: 20 * time.Second,
		StartTime: time.Date(2024, 8, 28, 19, 39, 26, 352526000, time.UTC),
	}
}

func replicaState() MemberState {
	return MemberState{
		Cluster: "mesh", Group: "n1", Name: "m2",
		Role: consulkv.RoleReplica, State: "running",
		PGRunning: true, Streaming: true,
		Timeline: 3, ReceiveLSN: 500 << 20, ReplayLSN: 499 << 20,
		LeaderName: "m1", LeaderLastLSN: 500 << 20,
		SystemID: "7268616322854375442", PGVersion: 150018,
		LastLoop: time.Now(), TTL: 20 * time.Second,
	}
}

func member(name, role, state string, lsn uint64) *consulkv.MemberStatus {
	m := &consulkv.MemberStatus{
		Version: 1, Name: name, Group: "n1", Role: role, State: state,
		APIURL: "http://" + name + ":8008/patroni", Host: name, Port: 5432, Timeline: 3,
	}
	if role == consulkv.RolePrimary {
		m.WriteLSN = lsn
	} else {
		m.ReceiveLSN, m.ReplayLSN, m.Streaming = lsn, lsn, state == "running"
	}
	return m
}

// threeMembers: m1 leads, m2 and m3 are running replicas.
func threeMembers() *consulkv.GroupView {
	return &consulkv.GroupView{
		Name:   "n1",
		Leader: &consulkv.LeaderInfo{Member: "m1", Session: "s1"},
		Members: map[string]*consulkv.MemberStatus{
			"m1": member("m1", consulkv.RolePrimary, "running", 500<<20),
			"m2": member("m2", consulkv.RoleReplica, "running", 500<<20),
			"m3": member("m3", consulkv.RoleReplica, "running", 498<<20),
		},
		Status: &consulkv.GroupStatus{Version: 1, Leader: "m1", LastLSN: 500 << 20, Timeline: 3},
	}
}

func newTestServer(f *fakeCtl, o Options) *Server {
	if o.SwitchoverTimeout == 0 {
		o.SwitchoverTimeout = 2 * time.Second
	}
	return NewServer(f, o)
}

// do runs one request through the handler.
func do(t testing.TB, h http.Handler, method, target, body string, hdr ...string) (int, string, http.Header) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, target, rd)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String(), rec.Header()
}
