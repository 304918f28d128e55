package health

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestSyncAsyncStandbyLeaderEndpoints(t *testing.T) {
	syncReplica := replicaState()
	syncReplica.SyncStandby = true
	notStreaming := replicaState()
	notStreaming.Streaming = false
	lagging := replicaState()
	lagging.LeaderLastLSN = 510 << 20
	for _, tc := range []struct {
		name string
		st   MemberState
		want map[string]int
	}{
		{"primary", primaryState(), map[string]int{"/sync": 503, "/synchronous": 503, "/async": 503, "/asynchronous": 503, "/standby-leader": 503}},
		{"async replica", replicaState(), map[string]int{"/sync": 503, "/async": 200, "/asynchronous": 200, "/async?lag=1MB": 200, "/standby-leader": 503}},
		{"lagging async replica", lagging, map[string]int{"/async": 200, "/async?lag=1MB": 503, "/async?lag=16MB": 200}},
		{"sync replica", syncReplica, map[string]int{"/sync": 200, "/synchronous": 200, "/async": 503}},
		{"replica not streaming", notStreaming, map[string]int{"/async": 503, "/sync": 503}},
	} {
		h := newTestServer(&fakeCtl{state: tc.st}, Options{}).Handler()
		for path, want := range tc.want {
			if code, _, _ := do(t, h, http.MethodGet, path, ""); code != want {
				t.Errorf("%s: GET %s = %d, want %d", tc.name, path, code, want)
			}
		}
	}
}

func TestMetricsPatroniNames(t *testing.T) {
	st := replicaState()
	st.SyncStandby = true
	st.ReplayPaused = true
	st.ReplayTimestamp = time.Unix(1700000000, 0)
	st.DCSLastSeen = time.Unix(1700000100, 0)
	st.Paused = true
	reg := prometheus.NewRegistry()
	own := prometheus.NewCounter(prometheus.CounterOpts{Name: "pgmesh_test_total", Help: "test"})
	reg.MustRegister(own)
	own.Inc()
	h := newTestServer(&fakeCtl{state: st}, Options{Metrics: reg}).Handler()
	code, body, hdr := do(t, h, http.MethodGet, "/metrics", "")
	if code != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/plain") {
		t.Fatalf("GET /metrics = %d %s", code, hdr.Get("Content-Type"))
	}
	labels := `{cluster="mesh",name="m2",scope="n1"}`
	for _, want := range []string{
		"patroni_postgres_running" + labels + " 1",
		"patroni_primary" + labels + " 0",
		"patroni_master" + labels + " 0",
		"patroni_replica" + labels + " 1",
		"patroni_sync_standby" + labels + " 1",
		"patroni_xlog_received_location" + labels + " 5.24288e+08",
		"patroni_xlog_replayed_location" + labels + " 5.23239424e+08",
		"patroni_xlog_replayed_timestamp" + labels + " 1.7e+09",
		"patroni_xlog_paused" + labels + " 1",
		"patroni_postgres_streaming" + labels + " 1",
		"patroni_postgres_in_archive_recovery" + labels + " 0",
		"patroni_postgres_server_version" + labels + " 150018",
		"patroni_cluster_unlocked" + labels + " 0",
		"patroni_failsafe_mode_is_active" + labels + " 0",
		"patroni_postgres_timeline" + labels + " 3",
		"patroni_dcs_last_seen" + labels + " 1.7000001e+09",
		"patroni_pending_restart" + labels + " 0",
		"patroni_is_paused" + labels + " 1",
		"patroni_standby_leader" + labels + " 0",
		"patroni_xlog_location" + labels + " 0",
		"patroni_version" + labels,
		"patroni_postmaster_start_time" + labels,
		"pgmesh_test_total 1",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// The primary reports its write position and no replica figures.
	h = newTestServer(&fakeCtl{state: primaryState()}, Options{}).Handler()
	_, body, _ = do(t, h, http.MethodGet, "/metrics", "")
	for _, want := range []string{`patroni_primary{cluster="mesh",name="m1",scope="n1"} 1`, `patroni_xlog_location{cluster="mesh",name="m1",scope="n1"} 5.24288e+08`, `patroni_xlog_received_location{cluster="mesh",name="m1",scope="n1"} 0`} {
		if !strings.Contains(body, want) {
			t.Errorf("primary /metrics lacks %q:\n%s", want, body)
		}
	}
}

func TestVersionNumber(t *testing.T) {
	for v, want := range map[string]float64{"3.0.2": 30002, "0.1.0-dev": 100, "v1.12.3+abc": 11203, "garbage": 0, "2": 20000} {
		if got := VersionNumber(v); got != want {
			t.Errorf("VersionNumber(%q) = %v, want %v", v, got, want)
		}
	}
}

func TestPatroniStatusAdditions(t *testing.T) {
	st := primaryState()
	st.DCSLastSeen = time.Unix(1700000000, 0)
	st.Replication = []Replication{{Usename: "replicator", ApplicationName: "m2", ClientAddr: "127.0.0.1", State: "streaming", SyncState: "async"}}
	h := newTestServer(&fakeCtl{state: st}, Options{}).Handler()
	_, body, _ := do(t, h, http.MethodGet, "/patroni", "")
	for _, want := range []string{`"dcs_last_seen":1700000000`, `"replication":[{"usename":"replicator","application_name":"m2","client_addr":"127.0.0.1","state":"streaming","sync_state":"async","sync_priority":0}]`} {
		if !strings.Contains(body, want) {
			t.Errorf("/patroni lacks %s: %s", want, body)
		}
	}
}

// A leader whose lease ran out is not reported writable, even while the
// agent's loop (which would fence it) is still busy: HAProxy and the
// metrics stop calling it primary at once.
func TestPrimaryNeedsALiveLease(t *testing.T) {
	for _, tc := range []struct {
		name  string
		until time.Time
		known bool
		want  int
	}{
		{"lease valid", time.Now().Add(5 * time.Second), true, 200},
		{"lease ran out", time.Now().Add(-time.Millisecond), true, 503},
		{"no session", time.Time{}, true, 503},
		{"not reported", time.Time{}, false, 200},
	} {
		st := primaryState()
		st.LeaseKnown, st.LeaseUntil = tc.known, tc.until
		h := newTestServer(&fakeCtl{state: st}, Options{}).Handler()
		if code, _, _ := do(t, h, http.MethodGet, "/primary", ""); code != tc.want {
			t.Errorf("%s: /primary = %d, want %d", tc.name, code, tc.want)
		}
		_, body, _ := do(t, h, http.MethodGet, "/metrics", "")
		want := `patroni_primary{cluster="mesh",name="m1",scope="n1"} 1`
		if tc.want == 503 {
			want = `patroni_primary{cluster="mesh",name="m1",scope="n1"} 0`
		}
		if !strings.Contains(body, want) {
			t.Errorf("%s: metrics lack %s", tc.name, want)
		}
	}
}
