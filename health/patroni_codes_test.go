package health

import (
	"net/http"
	"testing"
)

// TestPatroniStatusCodes holds the REST API against Patroni's status codes
// per path × method × role, as Patroni 3's REST API documentation states
// them (health checks: 200 or 503 by role; status documents: 200). HEAD and
// OPTIONS answer what GET answers, without a body. The only deliberate
// difference is kept separate: unknown paths are 404 here.
func TestPatroniStatusCodes(t *testing.T) {
	syncReplica := replicaState()
	syncReplica.SyncStandby = true
	stopped := replicaState()
	stopped.PGRunning, stopped.Streaming, stopped.State = false, false, "stopped"
	roles := map[string]MemberState{"primary": primaryState(), "replica": replicaState(), "sync": syncReplica, "stopped": stopped}
	// path -> role -> code (roles: primary, async replica, sync replica,
	// stopped member).
	table := map[string][4]int{
		"/":                   {200, 503, 503, 503},
		"/primary":            {200, 503, 503, 503},
		"/master":             {200, 503, 503, 503},
		"/read-write":         {200, 503, 503, 503},
		"/leader":             {200, 503, 503, 503},
		"/standby-leader":     {503, 503, 503, 503},
		"/replica":            {503, 200, 200, 503},
		"/replica?lag=16MB":   {503, 200, 200, 503},
		"/read-only":          {200, 200, 200, 503},
		"/synchronous":        {503, 503, 200, 503},
		"/sync":               {503, 503, 200, 503},
		"/asynchronous":       {503, 200, 503, 503},
		"/async":              {503, 200, 503, 503},
		"/health":             {200, 200, 200, 503},
		"/liveness":           {200, 200, 200, 200},
		"/readiness":          {200, 200, 200, 503},
		"/patroni":            {200, 200, 200, 200},
		"/cluster":            {200, 200, 200, 200},
		"/history":            {200, 200, 200, 200},
		"/config":             {200, 200, 200, 200},
		"/metrics":            {200, 200, 200, 200},
		"/no-such-endpoint":   {404, 404, 404, 404},
		"/replica?lag=banana": {503, 400, 400, 503},
	}
	order := []string{"primary", "replica", "sync", "stopped"}
	for path, codes := range table {
		for i, role := range order {
			f := &fakeCtl{state: roles[role], group: threeMembers(), cfg: baseConfig(), cfgIndex: 1}
			h := newTestServer(f, Options{}).Handler()
			for _, method := range []string{http.MethodGet, http.MethodHead, http.MethodOptions} {
				code, body, _ := do(t, h, method, path, "")
				if code != codes[i] {
					t.Errorf("%s %s as %s = %d, want %d", method, path, role, code, codes[i])
				}
				if method != http.MethodGet && body != "" {
					t.Errorf("%s %s as %s has a body", method, path, role)
				}
			}
		}
	}
	// Mutating methods on read-only paths are refused with 405 and Allow.
	h := newTestServer(&fakeCtl{state: primaryState()}, Options{}).Handler()
	for _, path := range []string{"/primary", "/patroni", "/metrics", "/cluster"} {
		code, _, hdr := do(t, h, http.MethodPost, path, "{}")
		if code != http.StatusMethodNotAllowed || hdr.Get("Allow") == "" {
			t.Errorf("POST %s = %d (Allow %q), want 405", path, code, hdr.Get("Allow"))
		}
	}
}
