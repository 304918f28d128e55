package routing

import "github.com/prometheus/client_golang/prometheus"

// Metrics count what the renderer does (pgmesh render --metrics-listen).
// A nil *Metrics counts nothing.
type Metrics struct {
	renders       *prometheus.CounterVec
	reloads       *prometheus.CounterVec
	failures      *prometheus.CounterVec
	emptyRefusals prometheus.Counter
	watchErrors   prometheus.Counter
	dcUp          *prometheus.GaugeVec
	dcRTT         *prometheus.GaugeVec
}

// Failure stages of pgmesh_render_failures_total.
const (
	stageTemplate = "template"
	stageValidate = "validate"
	stageWrite    = "write"
	stageReload   = "reload"
)

// NewMetrics registers the renderer's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		renders: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgmesh_render_renders_total",
			Help: "Changed outputs installed (written to their destination), by template.",
		}, []string{"template"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgmesh_render_reloads_total",
			Help: "Reload commands that succeeded after an install, by template.",
		}, []string{"template"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgmesh_render_failures_total",
			Help: "Renders that failed, by template and stage (template, validate, write, reload); the installed file stays as it was unless the stage is reload.",
		}, []string{"template", "stage"}),
		emptyRefusals: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgmesh_render_empty_refusals_total",
			Help: "Mesh reads that were empty (no member address) and so were not rendered; the last good files stay.",
		}),
		watchErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgmesh_render_consul_errors_total",
			Help: "Failed Consul reads of the renderer's watches (retried).",
		}),
	}
	m.dcUp = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "pgmesh_render_datacenter_up",
		Help: "1 when the last read of a datacenter of the mesh succeeded, 0 while it cannot be read (routing keeps its last groups); only for a mesh read across datacenters.",
	}, []string{"datacenter"})
	m.dcRTT = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "pgmesh_render_datacenter_rtt_seconds",
		Help: "Estimated round-trip time from the renderer's datacenter to another one (Consul WAN coordinates), which orders the datacenters.",
	}, []string{"datacenter"})
	reg.MustRegister(m.renders, m.reloads, m.failures, m.emptyRefusals, m.watchErrors, m.dcUp, m.dcRTT)
	return m
}

func (m *Metrics) rendered(template string) {
	if m != nil {
		m.renders.WithLabelValues(template).Inc()
	}
}

func (m *Metrics) reloaded(template string) {
	if m != nil {
		m.reloads.WithLabelValues(template).Inc()
	}
}

func (m *Metrics) failed(template, stage string) {
	if m != nil {
		m.failures.WithLabelValues(template, stage).Inc()
	}
}

func (m *Metrics) empty() {
	if m != nil {
		m.emptyRefusals.Inc()
	}
}

func (m *Metrics) watchError() {
	if m != nil {
		m.watchErrors.Inc()
	}
}

// datacenters sets the per-datacenter gauges from a mesh's datacenters,
// dropping those no longer read.
func (m *Metrics) datacenters(dcs []Datacenter) {
	if m == nil {
		return
	}
	m.dcUp.Reset()
	m.dcRTT.Reset()
	for _, d := range dcs {
		if d.Name == "" {
			continue
		}
		up := 0.0
		if d.Reachable {
			up = 1
		}
		m.dcUp.WithLabelValues(d.Name).Set(up)
		if d.HasRTT {
			m.dcRTT.WithLabelValues(d.Name).Set(d.RTT.Seconds())
		}
	}
}
