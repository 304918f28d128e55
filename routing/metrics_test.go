package routing

import (
	"context"
	"path/filepath"
	"testing"

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
