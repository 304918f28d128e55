package routing

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestRenderMetrics(t *testing.T) {
	dir := t.TempDir()
	tmpl := writeTemplate(t, dir, "p.tmpl", primariesTemplate)
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	ok := Entry{Template: tmpl, Destination: filepath.Join(dir, "ok.txt"), Reload: "true"}
	badReload := Entry{Template: tmpl, Destination: filepath.Join(dir, "reload.txt"), Reload: "exit 3"}
	refused := Entry{Template: tmpl, Destination: filepath.Join(dir, "refused.txt"), Validate: "false {{file}}"}
	r, err := New(Options{Cluster: "mesh1", LocalGroup: "n2", Entries: []Entry{ok, badReload, refused}, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	_ = r.Render(context.Background(), standardMesh("n2"))
	// An empty mesh is refused and counted; nothing else changes.
	if err := r.Render(context.Background(), &Mesh{Cluster: "mesh1"}); err == nil {
		t.Fatal("an empty mesh rendered")
	}
	for _, c := range []struct {
		name string
		got  float64
		want float64
	}{
		{"renders ok", testutil.ToFloat64(m.renders.WithLabelValues(tmpl)), 2}, // ok + the one whose reload failed
		{"reloads", testutil.ToFloat64(m.reloads.WithLabelValues(tmpl)), 1},
		{"reload failures", testutil.ToFloat64(m.failures.WithLabelValues(tmpl, stageReload)), 1},
		{"validate failures", testutil.ToFloat64(m.failures.WithLabelValues(tmpl, stageValidate)), 1},
		{"empty refusals", testutil.ToFloat64(m.emptyRefusals), 1},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestDatacenterMetrics(t *testing.T) {
	dir := t.TempDir()
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	r, err := New(Options{Cluster: "mesh1", Entries: []Entry{{Template: writeTemplate(t, dir, "p.tmpl", primariesTemplate), Destination: filepath.Join(dir, "out")}}, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	r.evaluate(context.Background(), meshAcross(t, "", errors.New("No path to datacenter")), time.Now())
	if got := testutil.ToFloat64(m.dcUp.WithLabelValues("dc2")); got != 0 {
		t.Errorf("dc2 up = %v, want 0", got)
	}
	if got := testutil.ToFloat64(m.dcUp.WithLabelValues("dc3")); got != 1 {
		t.Errorf("dc3 up = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.dcRTT.WithLabelValues("dc3")); got != 0.02 {
		t.Errorf("dc3 rtt = %v, want 0.02", got)
	}
	// A mesh read from one datacenter drops the gauges.
	r.evaluate(context.Background(), standardMesh(""), time.Now())
	if n := testutil.CollectAndCount(m.dcUp); n != 0 {
		t.Errorf("%d datacenter gauges left", n)
	}
}
