package agent

import (
	"errors"
	"net"
	"sync/atomic"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/prometheus/client_golang/prometheus"
)

// agentMetrics are pgmesh's own metrics, served by GET /metrics beside
// Patroni's gauges (health.Server). Counters count on this member; a
// group's figure is the sum over its members.
type agentMetrics struct {
	reg          *prometheus.Registry
	loopDuration prometheus.Histogram
	decisions    *prometheus.CounterVec
	leaderTaken  *prometheus.CounterVec
	consulErrors *prometheus.CounterVec
	// logical is the leader's last view of logical replication (slots and
	// subscriptions), copied by publish for the scrape goroutine.
	logical atomic.Pointer[consulkv.LogicalStatus]
}

func newAgentMetrics(a *Agent) *agentMetrics {
	m := &agentMetrics{reg: prometheus.NewRegistry()}
	m.loopDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "pgmesh_loop_duration_seconds",
		Help:    "Duration of one HA loop (observe, decide, act, publish).",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	})
	m.decisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgmesh_decisions_total",
		Help: "HA loop decisions by action (none and keep_leader are the quiet ones).",
	}, []string{"action"})
	m.leaderTaken = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgmesh_leader_changes_total",
		Help: "Times this member became its group's leader, by kind: failover (the leader was gone), switchover (a switchover or manual failover request), bootstrap.",
	}, []string{"kind"})
	m.consulErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgmesh_consul_errors_total",
		Help: "Consul requests of the HA loop that failed, by kind: permission (ACL refusal), timeout, unreachable, other.",
	}, []string{"kind"})
	m.reg.MustRegister(m.loopDuration, m.decisions, m.leaderTaken, m.consulErrors,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pgmesh_lease_remaining_seconds",
			Help: "How long this member's Consul session (and the leader lock, when it holds it) stays valid without another renew; 0 without a session.",
		}, func() float64 {
			u := a.lock.LeaseUntil()
			if u.IsZero() {
				return 0
			}
			return max(0, time.Until(u).Seconds())
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pgmesh_registered",
			Help: "1 while the member's service registration with the Consul agent is current, 0 otherwise.",
		}, func() float64 {
			if a.reg.registered() {
				return 1
			}
			return 0
		}),
		&logicalCollector{m: m},
	)
	for _, kind := range []string{"failover", "switchover", "bootstrap"} {
		m.leaderTaken.WithLabelValues(kind)
	}
	for _, kind := range []string{"permission", "timeout", "unreachable", "other"} {
		m.consulErrors.WithLabelValues(kind)
	}
	return m
}

// consulErrorKind sorts a failed Consul request for the error counter.
func consulErrorKind(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, consulkv.ErrPermission):
		return "permission"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.As(err, new(*net.OpError)):
		return "unreachable"
	}
	return "other"
}

var (
	slotLagDesc = prometheus.NewDesc("pgmesh_logical_slot_lag_bytes",
		"On a leader: how far each logical slot's confirmed position trails the current WAL position (the consuming group's lag).",
		[]string{"slot", "database"}, nil)
	slotActiveDesc = prometheus.NewDesc("pgmesh_logical_slot_active",
		"On a leader: 1 while a consumer (another group's subscription) is connected to the logical slot.",
		[]string{"slot", "database"}, nil)
	subRunningDesc = prometheus.NewDesc("pgmesh_subscription_running",
		"On a leader: 1 while the subscription from another group has a running apply worker (0: enabled but not running, or disabled).",
		[]string{"subscription", "source"}, nil)
)

// logicalCollector reports logical replication between groups from the
// leader's last view.
type logicalCollector struct{ m *agentMetrics }

func (c *logicalCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- slotLagDesc
	ch <- slotActiveDesc
	ch <- subRunningDesc
}

func (c *logicalCollector) Collect(ch chan<- prometheus.Metric) {
	ls := c.m.logical.Load()
	if ls == nil {
		return
	}
	for _, s := range ls.Slots {
		ch <- prometheus.MustNewConstMetric(slotLagDesc, prometheus.GaugeValue, float64(s.LagBytes), s.Name, s.Database)
		ch <- prometheus.MustNewConstMetric(slotActiveDesc, prometheus.GaugeValue, b2f(s.Active), s.Name, s.Database)
	}
	for _, s := range ls.Subscriptions {
		ch <- prometheus.MustNewConstMetric(subRunningDesc, prometheus.GaugeValue, b2f(s.Enabled && s.Running), s.Name, s.Source)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
