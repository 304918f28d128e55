package health

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestHealthEndpoints(t *testing.T) {
	fenced := primaryState()
	fenced.IsLeader, fenced.Writable, fenced.LeaderName = false, false, ""

	lagging := replicaState()
	lagging.LeaderLastLSN = lagging.ReceiveLSN + 4<<20

	stopped := replicaState()
	stopped.PGRunning, stopped.Streaming, stopped.State = false, false, "stopped"
	stopped.LastLoop = time.Now().Add(-time.Minute)

	noLB := replicaState()
	noLB.Tags.Custom = map[string]string{"noloadbalance": "true"}

	notStreaming := replicaState()
	notStreaming.Streaming = false

	// The leader's own agent published LSN but a fresh leader may not be
	// writable yet (still promoting).
	promoting := replicaState()
	promoting.IsLeader, promoting.LeaderName = true, "m2"

	paths := []string{"/", "/primary", "/master", "/read-write", "/leader", "/replica", "/replica?lag=1MB",
		"/read-only", "/read-only?lag=1MB", "/health", "/liveness", "/readiness"}
	cases := []struct {
		name  string
		st    MemberState
		codes []int // one per path above
	}{
		{"primary writable", primaryState(), []int{200, 200, 200, 200, 200, 503, 503, 200, 200, 200, 200, 200}},
		{"primary fenced", fenced, []int{503, 503, 503, 503, 503, 503, 503, 503, 503, 200, 200, 503}},
		{"replica streaming", replicaState(), []int{503, 503, 503, 503, 503, 200, 200, 200, 200, 200, 200, 200}},
		{"replica lagging", lagging, []int{503, 503, 503, 503, 503, 200, 503, 200, 503, 200, 200, 200}},
		{"stopped", stopped, []int{503, 503, 503, 503, 503, 503, 503, 503, 503, 503, 503, 503}},
		{"noloadbalance", noLB, []int{503, 503, 503, 503, 503, 503, 503, 503, 503, 200, 200, 200}},
		{"replica not streaming", notStreaming, []int{503, 503, 503, 503, 503, 503, 503, 200, 200, 200, 200, 503}},
		{"leader still promoting", promoting, []int{503, 503, 503, 503, 200, 503, 503, 503, 503, 200, 200, 200}},
	}
	for _, tc := range cases {
		f := &fakeCtl{state: tc.st}
		h := newTestServer(f, Options{}).Handler()
		for i, p := range paths {
			for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodOptions} {
				code, body, hdr := do(t, h, m, p, "")
				if code != tc.codes[i] {
					t.Errorf("%s: %s %s = %d, want %d", tc.name, m, p, code, tc.codes[i])
				}
				if m == http.MethodGet {
					var st Status
					if err := json.Unmarshal([]byte(body), &st); err != nil {
						t.Errorf("%s: GET %s body is not a Status: %v (%q)", tc.name, p, err, body)
					} else if st.Patroni.Name != tc.st.Name || st.State != tc.st.State {
						t.Errorf("%s: GET %s status = %+v", tc.name, p, st)
					}
					if ct := hdr.Get("Content-Type"); ct != "application/json" {
						t.Errorf("%s: GET %s content type %q", tc.name, p, ct)
					}
				} else if body != "" {
					t.Errorf("%s: %s %s has a body: %q", tc.name, m, p, body)
				}
			}
		}
	}
}

func TestHealthQueryFilters(t *testing.T) {
	st := replicaState()
	st.Tags = consulkv.MemberTags{FailoverPriority: 2, Custom: map[string]string{"dc": "east", "backup": "true"}}
	st.LeaderLastLSN = st.ReceiveLSN + 1024
	h := newTestServer(&fakeCtl{state: st}, Options{}).Handler()
	cases := []struct {
		target string
		code   int
	}{
		{"/replica?tag_dc=east", 200},
		{"/replica?tag_dc=west", 503},
		{"/replica?tag_rack=1", 503},
		{"/replica?tag_dc=east&tag_backup=true", 200},
		{"/replica?tag_nofailover=false", 200},
		{"/replica?tag_failover_priority=2", 200},
		{"/read-only?tag_dc=west", 503},
		{"/primary?tag_dc=west", 503}, // not a primary anyway; tags ignored there
		{"/replica?lag=1024", 200},
		{"/replica?lag=1023", 503},
		{"/replica?lag=1kB", 200},
		{"/replica?lag=1kb", 200},
		{"/replica?lag=0.5kB", 503},
		{"/replica?lag=16MB", 200},
		{"/replica?lag=1GB", 200},
		{"/replica?lag=ten", 400},
		{"/replica?lag=10XB", 400},
		{"/replica?lag=-5", 400},
		{"/replica?replication_state=streaming", 200},
		{"/replica?replication_state=in%20archive%20recovery", 503},
		{"/readiness?lag=1kB", 200},
		{"/readiness?lag=1", 503},
	}
	for _, tc := range cases {
		if code, body, _ := do(t, h, http.MethodGet, tc.target, ""); code != tc.code {
			t.Errorf("GET %s = %d (%s), want %d", tc.target, code, body, tc.code)
		}
	}
	// A primary is routable regardless of tags on the write endpoints.
	p := primaryState()
	p.Tags.Custom = map[string]string{"dc": "east"}
	h = newTestServer(&fakeCtl{state: p}, Options{}).Handler()
	for target, want := range map[string]int{"/primary?tag_dc=west": 200, "/read-only?tag_dc=west": 503, "/read-only?tag_dc=east": 200} {
		if code, _, _ := do(t, h, http.MethodGet, target, ""); code != want {
			t.Errorf("primary GET %s = %d, want %d", target, code, want)
		}
	}
}

func TestLivenessUsesTTL(t *testing.T) {
	st := primaryState()
	f := &fakeCtl{state: st}
	s := newTestServer(f, Options{})
	s.now = func() time.Time { return st.LastLoop.Add(st.TTL) }
	if code, _, _ := do(t, s.Handler(), http.MethodGet, "/liveness", ""); code != 200 {
		t.Errorf("liveness at exactly ttl = %d, want 200", code)
	}
	s.now = func() time.Time { return st.LastLoop.Add(st.TTL + time.Millisecond) }
	if code, _, _ := do(t, s.Handler(), http.MethodGet, "/liveness", ""); code != 503 {
		t.Errorf("liveness past ttl = %d, want 503", code)
	}
	f.state.LastLoop = time.Time{}
	if code, _, _ := do(t, s.Handler(), http.MethodGet, "/liveness", ""); code != 503 {
		t.Errorf("liveness before the first loop = %d, want 503", code)
	}
}

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]uint64{
		"0": 0, "1048576": 1 << 20, "1024kB": 1 << 20, "16MB": 16 << 20, "1GB": 1 << 30,
		"1TB": 1 << 40, "10 MB": 10 << 20, "512B": 512, "1.5kB": 1536, "99999999TB": 1<<64 - 1,
	} {
		got, err := ParseBytes(in)
		if err != nil || got != want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MB", "1 PB", "-1", "1e3", "1..2kB", "0x10"} {
		if _, err := ParseBytes(in); err == nil {
			t.Errorf("ParseBytes(%q) accepted", in)
		}
	}
}

func TestPatroniStatusJSON(t *testing.T) {
	p := primaryState()
	p.Tags = consulkv.MemberTags{NoSync: true, FailoverPriority: 3, Custom: map[string]string{"clonefrom": "true", "dc": "east"}}
	p.PendingRestart = true
	r := replicaState()
	stopped := replicaState()
	stopped.PGRunning, stopped.State = false, "stopped"
	cases := []struct {
		name    string
		st      MemberState
		lastLSN uint64
		xlog    string
	}{
		{"primary", p, 500 << 20, `{"location":524288000}`},
		{"replica", r, 500 << 20, `{"received_location":524288000,"replayed_location":523239424,"paused":false}`},
		{"stopped", stopped, 0, ``},
	}
	for _, tc := range cases {
		h := newTestServer(&fakeCtl{state: tc.st}, Options{}).Handler()
		for _, path := range []string{"/patroni", "/status"} {
			code, body, _ := do(t, h, http.MethodGet, path, "")
			if code != 200 {
				t.Fatalf("%s: GET %s = %d", tc.name, path, code)
			}
			var st Status
			if err := json.Unmarshal([]byte(body), &st); err != nil {
				t.Fatalf("%s: decode: %v", tc.name, err)
			}
			if st.LastLSN() != tc.lastLSN {
				t.Errorf("%s: LastLSN = %d, want %d", tc.name, st.LastLSN(), tc.lastLSN)
			}
			var raw map[string]json.RawMessage
			_ = json.Unmarshal([]byte(body), &raw)
			if got := string(raw["xlog"]); got != tc.xlog {
				t.Errorf("%s: xlog = %s, want %s", tc.name, got, tc.xlog)
			}
			if st.Role != tc.st.Role || st.Timeline != 3 || st.ServerVersion != 150018 ||
				st.DatabaseSystemIdentifier != "7268616322854375442" || st.Patroni.Scope != "n1" ||
				st.Patroni.Cluster != "mesh" || st.Patroni.Version == "" || st.Leader != "m1" {
				t.Errorf("%s: status = %+v", tc.name, st)
			}
		}
	}

	// The primary's details, field by field, as Patroni tooling reads them.
	h := newTestServer(&fakeCtl{state: p}, Options{}).Handler()
	_, body, _ := do(t, h, http.MethodGet, "/patroni", "")
	var raw map[string]any
	if err := json.Unmarshal([]byte(body), &raw); err != nil {
		t.Fatal(err)
	}
	if raw["postmaster_start_time"] != "2024-08-28 19:39:26.352526+00:00" {
		t.Errorf("postmaster_start_time = %v", raw["postmaster_start_time"])
	}
	tags, _ := raw["tags"].(map[string]any)
	if tags["clonefrom"] != true || tags["dc"] != "east" || tags["nosync"] != true || tags["failover_priority"] != float64(3) {
		t.Errorf("tags = %v", tags)
	}
	if _, ok := tags["nofailover"]; ok {
		t.Errorf("unset nofailover written: %v", tags)
	}
	if raw["pending_restart"] != true || raw["state"] != "running" || raw["role"] != "primary" {
		t.Errorf("status = %v", raw)
	}
	var st Status
	_ = json.Unmarshal([]byte(body), &st)
	if got := consulkv.MemberTags(st.Tags); !got.NoSync || got.FailoverPriority != 3 || got.Custom["clonefrom"] != "true" || got.Custom["dc"] != "east" {
		t.Errorf("tags did not round-trip: %+v", got)
	}
}

// Peers may be Patroni-shaped; their tags must decode without failing the
// whole status.
func TestTagsDecodePatroniShapes(t *testing.T) {
	var tg Tags
	in := `{"nofailover":"yes","nosync":false,"failover_priority":"2","clonefrom":true,"weight":5,"note":null,"x":{"a":1}}`
	if err := json.Unmarshal([]byte(in), &tg); err != nil {
		t.Fatal(err)
	}
	if !tg.NoFailover || tg.NoSync || tg.FailoverPriority != 2 ||
		tg.Custom["clonefrom"] != "true" || tg.Custom["weight"] != "5" || tg.Custom["x"] != `{"a":1}` {
		t.Errorf("tags = %+v", tg)
	}
	if _, ok := tg.Custom["note"]; ok {
		t.Errorf("null tag kept: %+v", tg)
	}
}

func TestClusterAndHistory(t *testing.T) {
	g := threeMembers()
	g.Members["m3"].Tags = consulkv.MemberTags{NoFailover: true}
	g.Members["m4"] = member("m4", consulkv.RoleReplica, "starting", 0)
	g.Sync = &consulkv.SyncState{Version: 1, Leader: "m1", SyncStandbys: []string{"m2"}}
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	g.Failover = &consulkv.FailoverRequest{Version: 1, Kind: consulkv.KindSwitchover, Leader: "m1", Candidate: "m3", ScheduledAt: &at}
	g.History = &consulkv.History{Version: 1, Entries: []consulkv.HistoryEntry{
		{Timeline: 2, LSN: 25623960, Reason: "switchover", At: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC), NewLeader: "m1"},
	}}
	f := &fakeCtl{state: primaryState(), group: g, cfg: &consulkv.ClusterConfig{Version: 1, PausedGroups: []string{"n1"}}}
	h := newTestServer(f, Options{}).Handler()

	code, body, _ := do(t, h, http.MethodGet, "/cluster", "")
	if code != 200 {
		t.Fatalf("GET /cluster = %d %s", code, body)
	}
	var cs ClusterStatus
	if err := json.Unmarshal([]byte(body), &cs); err != nil {
		t.Fatal(err)
	}
	if !cs.Pause || cs.Scope != "n1" || cs.Cluster != "mesh" || len(cs.Members) != 4 {
		t.Fatalf("cluster = %+v", cs)
	}
	if s := cs.ScheduledSwitchover; s == nil || !s.At.Equal(at) || s.From != "m1" || s.To != "m3" {
		t.Errorf("scheduled_switchover = %+v", s)
	}
	want := []struct {
		name, role, state string
		lag               *Lag
	}{
		{"m1", "leader", "running", nil},
		{"m2", "sync_standby", "streaming", &Lag{Known: true}},
		{"m3", "replica", "streaming", &Lag{Known: true, Bytes: 2 << 20}},
		{"m4", "replica", "starting", &Lag{}},
	}
	for i, w := range want {
		m := cs.Members[i]
		if m.Name != w.name || m.Role != w.role || m.State != w.state || m.Host != w.name || m.Port != 5432 ||
			m.APIURL == "" || m.Timeline != 3 {
			t.Errorf("member %d = %+v, want %+v", i, m, w)
		}
		if (m.Lag == nil) != (w.lag == nil) || (m.Lag != nil && *m.Lag != *w.lag) {
			t.Errorf("member %s lag = %+v, want %+v", m.Name, m.Lag, w.lag)
		}
	}
	if !strings.Contains(body, `"lag":"unknown"`) || !cs.Members[2].Tags.NoFailover {
		t.Errorf("body = %s", body)
	}

	code, body, _ = do(t, h, http.MethodGet, "/history", "")
	if code != 200 || body != `[[2,25623960,"switchover","2024-01-01T00:00:00Z","m1"]]` {
		t.Errorf("GET /history = %d %s", code, body)
	}
	f.group = &consulkv.GroupView{Name: "n1"}
	if code, body, _ = do(t, h, http.MethodGet, "/history", ""); code != 200 || body != `[]` {
		t.Errorf("empty history = %d %s", code, body)
	}
	f.groupErr = errors.New("consul down")
	for _, p := range []string{"/cluster", "/history"} {
		if code, _, _ = do(t, h, http.MethodGet, p, ""); code != 503 {
			t.Errorf("GET %s with Consul down = %d, want 503", p, code)
		}
	}
}

func TestRoutingAndMethods(t *testing.T) {
	h := newTestServer(&fakeCtl{state: primaryState()}, Options{}).Handler()
	cases := []struct {
		method, target string
		code           int
		allow          string
	}{
		{http.MethodGet, "/nope", 404, ""},
		{http.MethodGet, "/primary/extra", 404, ""},
		{http.MethodGet, "/primary/", 200, ""},
		{http.MethodPost, "/primary", 405, "GET, HEAD, OPTIONS"},
		{http.MethodGet, "/switchover", 405, "DELETE, POST"},
		{http.MethodDelete, "/config", 405, "GET, HEAD, OPTIONS, PATCH, PUT"},
		{http.MethodPut, "/restart", 405, "POST"},
	}
	for _, tc := range cases {
		code, _, hdr := do(t, h, tc.method, tc.target, "")
		if code != tc.code || hdr.Get("Allow") != tc.allow {
			t.Errorf("%s %s = %d allow %q, want %d %q", tc.method, tc.target, code, hdr.Get("Allow"), tc.code, tc.allow)
		}
	}
}

func TestAuth(t *testing.T) {
	f := &fakeCtl{state: replicaState(), group: threeMembers()}
	h := newTestServer(f, Options{Auth: &BasicAuth{Username: "admin", Password: "s3cret"}}).Handler()
	basic := func(u, p string) string {
		req, _ := http.NewRequest(http.MethodGet, "/", nil)
		req.SetBasicAuth(u, p)
		return req.Header.Get("Authorization")
	}
	cases := []struct {
		name, method, target, auth string
		code                       int
	}{
		{"no credentials", http.MethodPost, "/reload", "", 401},
		{"wrong password", http.MethodPost, "/reload", basic("admin", "nope"), 401},
		{"wrong user", http.MethodPost, "/reload", basic("root", "s3cret"), 401},
		{"prefix of password", http.MethodPost, "/reload", basic("admin", "s3c"), 401},
		{"not basic", http.MethodPost, "/reload", "Bearer s3cret", 401},
		{"right", http.MethodPost, "/reload", basic("admin", "s3cret"), 202},
		{"read needs none", http.MethodGet, "/replica", "", 200},
		{"delete needs auth", http.MethodDelete, "/switchover", "", 401},
		{"patch needs auth", http.MethodPatch, "/config", "", 401},
	}
	for _, tc := range cases {
		var hdr []string
		if tc.auth != "" {
			hdr = []string{"Authorization", tc.auth}
		}
		code, _, rh := do(t, h, tc.method, tc.target, "", hdr...)
		if code != tc.code {
			t.Errorf("%s: %d, want %d", tc.name, code, tc.code)
		}
		if code == 401 && rh.Get("WWW-Authenticate") != `Basic realm="pgmesh"` {
			t.Errorf("%s: WWW-Authenticate = %q", tc.name, rh.Get("WWW-Authenticate"))
		}
	}
	if f.reloads != 1 {
		t.Errorf("reloads = %d, want 1 (only the authorised request)", f.reloads)
	}
}

func TestPanicRecoveredAndLogged(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	f := &fakeCtl{state: primaryState(), statePanic: true}
	h := newTestServer(f, Options{Log: zap.New(core)}).Handler()
	if code, _, _ := do(t, h, http.MethodGet, "/primary", ""); code != 500 {
		t.Errorf("panicking handler = %d, want 500", code)
	}
	p := logs.FilterMessage("panic in REST handler").All()
	if len(p) != 1 || p[0].ContextMap()["path"] != "/primary" {
		t.Errorf("panic log = %+v", p)
	}
}

func TestRequestLogging(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	f := &fakeCtl{state: replicaState()}
	h := newTestServer(f, Options{Log: zap.New(core)}).Handler()
	do(t, h, http.MethodGet, "/replica?lag=1MB", "")
	do(t, h, http.MethodPost, "/reload", "")
	entries := logs.FilterMessage("REST request").All()
	if len(entries) != 2 {
		t.Fatalf("got %d request logs", len(entries))
	}
	if e := entries[0]; e.Level != zap.DebugLevel || e.ContextMap()["status"] != int64(200) || e.ContextMap()["query"] != "lag=1MB" {
		t.Errorf("GET log = %v %v", e.Level, e.ContextMap())
	}
	if e := entries[1]; e.Level != zap.InfoLevel || e.ContextMap()["result"] != "reload scheduled" || e.ContextMap()["status"] != int64(202) {
		t.Errorf("POST log = %v %v", e.Level, e.ContextMap())
	}
}

func TestStartAddrShutdown(t *testing.T) {
	f := &fakeCtl{state: primaryState()}
	s := NewServer(f, Options{Listen: "127.0.0.1:0"})
	if s.Addr() != "" {
		t.Errorf("Addr before Start = %q", s.Addr())
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err == nil {
		t.Error("second Start succeeded")
	}
	resp, err := http.Get("http://" + s.Addr() + "/primary")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("GET /primary over TCP = %d", resp.StatusCode)
	}

	busy := NewServer(f, Options{Listen: s.Addr()})
	if err := busy.Start(); err == nil {
		_ = busy.Shutdown(context.Background())
		t.Error("Start on a busy port succeeded")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", s.Addr(), time.Second); err == nil {
		c.Close()
		t.Error("still accepting after Shutdown")
	}
	if err := NewServer(f, Options{}).Shutdown(ctx); err != nil {
		t.Errorf("Shutdown of an unstarted server: %v", err)
	}
}

// Shutdown must end a switchover that is waiting for a new leader instead
// of waiting the whole switchover timeout.
func TestShutdownEndsSwitchoverPoll(t *testing.T) {
	f := &fakeCtl{state: primaryState(), group: threeMembers()}
	s := NewServer(f, Options{Listen: "127.0.0.1:0", SwitchoverTimeout: time.Minute})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan int, 1)
	go func() {
		resp, err := http.Post("http://"+s.Addr()+"/switchover", "application/json", strings.NewReader(`{"leader":"m1"}`))
		if err != nil {
			done <- -1
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		f.mu.Lock()
		n := len(f.failovers)
		f.mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("switchover request never reached the controller")
		}
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if code := <-done; code != 503 {
		t.Errorf("switchover during shutdown = %d, want 503", code)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Shutdown took %s", d)
	}
}

func TestMutationPolicy(t *testing.T) {
	f := &fakeCtl{state: primaryState(), cfg: baseConfig(), cfgIndex: 1}
	refuse := newTestServer(f, Options{RefuseMutations: "mutating requests are refused: no credentials"}).Handler()
	if code, body, _ := do(t, refuse, http.MethodPost, "/restart", ""); code != 403 || !strings.Contains(body, "no credentials") {
		t.Fatalf("refused server: POST /restart = %d %q", code, body)
	}
	if code, _, _ := do(t, refuse, http.MethodGet, "/primary", ""); code != 200 {
		t.Fatalf("refused server: GET /primary = %d (health stays open)", code)
	}
	deny := newTestServer(f, Options{Allow: func(ip net.IP) bool { return ip.Equal(net.ParseIP("10.0.0.9")) }}).Handler()
	if code, body, _ := do(t, deny, http.MethodPost, "/reload", ""); code != 403 || !strings.Contains(body, "restapi.allowlist") {
		t.Fatalf("allowlist: POST /reload from outside = %d %q", code, body)
	}
}
