package agent

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/pgmesh/pgmesh/health"
	"github.com/pgmesh/pgmesh/routing"
	"github.com/prometheus/client_golang/prometheus"
)

var fqNameRe = regexp.MustCompile(`fqName: "([a-z0-9_]+)"`)

// registeredNames lists the metric names a registry's collectors describe.
func registeredNames(t *testing.T, reg *prometheus.Registry) []string {
	t.Helper()
	ch := make(chan *prometheus.Desc, 100)
	go func() {
		for _, c := range []prometheus.Collector{reg} {
			c.Describe(ch)
		}
		close(ch)
	}()
	var names []string
	for d := range ch {
		if m := fqNameRe.FindStringSubmatch(d.String()); m != nil {
			names = append(names, m[1])
		}
	}
	return names
}

// TestMonitoringDocsUseServedNames: the alert rules and the Grafana
// dashboard in docs/monitoring only use metric names pgmesh serves, so a
// rename cannot silently blind them.
func TestMonitoringDocsUseServedNames(t *testing.T) {
	known := map[string]bool{}
	for _, n := range health.PatroniMetricNames() {
		known[n] = true
	}
	for _, n := range registeredNames(t, newAgentMetrics(&Agent{}).reg) {
		known[n] = true
	}
	rreg := prometheus.NewRegistry()
	routing.NewMetrics(rreg)
	for _, n := range registeredNames(t, rreg) {
		known[n] = true
	}
	for _, want := range []string{"patroni_primary", "pgmesh_lease_remaining_seconds", "pgmesh_loop_duration_seconds", "pgmesh_render_renders_total", "pgmesh_logical_slot_lag_bytes"} {
		if !known[want] {
			t.Fatalf("%s is not served (known: %v)", want, known)
		}
	}
	used := regexp.MustCompile(`\b(patroni|pgmesh)_[a-z0-9_]+`)
	for _, f := range []string{"alerts.yml", "grafana-dashboard.json"} {
		b, err := os.ReadFile(filepath.Join("..", "docs", "monitoring", f))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, name := range used.FindAllString(string(b), -1) {
			base := name
			for _, suf := range []string{"_bucket", "_count", "_sum"} {
				base = strings.TrimSuffix(base, suf)
			}
			if !known[name] && !known[base] {
				t.Errorf("%s uses %s, which pgmesh does not serve", f, name)
			}
			n++
		}
		if n < 10 {
			t.Errorf("%s names only %d metrics", f, n)
		}
	}
}
