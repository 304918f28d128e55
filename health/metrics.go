package health

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/internal/version"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// patroniMetric is one gauge of Patroni's GET /metrics, computed from the
// member's state at scrape time.
type patroniMetric struct {
	name, help string
	value      func(st MemberState, now time.Time) float64
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func unixOrZero(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}

// VersionNumber turns "1.2.3[-suffix]" into Patroni's numeric form
// (major*10000 + minor*100 + patch), 0 when it does not parse.
func VersionNumber(v string) float64 {
	v = strings.TrimPrefix(v, "v")
	if i := strings.IndexAny(v, "-+"); i >= 0 {
		v = v[:i]
	}
	parts := strings.Split(v, ".")
	n := 0
	for i := 0; i < 3; i++ {
		x := 0
		if i < len(parts) {
			var err error
			if x, err = strconv.Atoi(parts[i]); err != nil {
				return 0
			}
		}
		n = n*100 + x
	}
	return float64(n)
}

func isPrimary(st MemberState, now time.Time) bool {
	return st.PGRunning && st.Role == consulkv.RolePrimary && st.IsLeader && leaseHolds(st, now)
}

func isReplica(st MemberState) bool {
	return st.PGRunning && st.Role == consulkv.RoleReplica
}

// patroniMetrics are Patroni's metric names with the meaning they have
// here; dashboards and alert rules written for Patroni read them unchanged.
var patroniMetrics = []patroniMetric{
	{"patroni_version", "Patroni-compatible version of this pgmesh agent (major*10000+minor*100+patch).",
		func(MemberState, time.Time) float64 { return VersionNumber(version.Version) }},
	{"patroni_postgres_running", "Value is 1 if PostgreSQL is running, 0 otherwise.",
		func(st MemberState, _ time.Time) float64 { return b2f(st.PGRunning) }},
	{"patroni_postmaster_start_time", "Epoch seconds since PostgreSQL started.",
		func(st MemberState, _ time.Time) float64 {
			if !st.PGRunning {
				return 0
			}
			return unixOrZero(st.StartTime)
		}},
	{"patroni_primary", "Value is 1 if this node is the leader (writable primary), 0 otherwise.",
		func(st MemberState, now time.Time) float64 { return b2f(isPrimary(st, now)) }},
	{"patroni_master", "Value is 1 if this node is the leader, 0 otherwise (the name before Patroni 3).",
		func(st MemberState, now time.Time) float64 { return b2f(isPrimary(st, now)) }},
	{"patroni_xlog_location", "Current location of the PostgreSQL transaction log, 0 for replicas.",
		func(st MemberState, now time.Time) float64 {
			if !isPrimary(st, now) {
				return 0
			}
			return float64(st.WriteLSN)
		}},
	{"patroni_standby_leader", "Value is 1 if this node is the standby leader, 0 otherwise (pgmesh runs no standby clusters).",
		func(MemberState, time.Time) float64 { return 0 }},
	{"patroni_replica", "Value is 1 if this node is a replica, 0 otherwise.",
		func(st MemberState, _ time.Time) float64 { return b2f(isReplica(st)) }},
	{"patroni_sync_standby", "Value is 1 if this node is a sync standby replica, 0 otherwise.",
		func(st MemberState, _ time.Time) float64 { return b2f(isReplica(st) && st.SyncStandby) }},
	{"patroni_xlog_received_location", "Current location of the received PostgreSQL transaction log, 0 for the primary.",
		func(st MemberState, _ time.Time) float64 {
			if !isReplica(st) {
				return 0
			}
			return float64(max(st.ReceiveLSN, st.ReplayLSN))
		}},
	{"patroni_xlog_replayed_location", "Current location of the replayed PostgreSQL transaction log, 0 for the primary.",
		func(st MemberState, _ time.Time) float64 {
			if !isReplica(st) {
				return 0
			}
			return float64(st.ReplayLSN)
		}},
	{"patroni_xlog_replayed_timestamp", "Current timestamp of the replayed PostgreSQL transaction log, 0 if none.",
		func(st MemberState, _ time.Time) float64 {
			if !isReplica(st) {
				return 0
			}
			return unixOrZero(st.ReplayTimestamp)
		}},
	{"patroni_xlog_paused", "Value is 1 if the replay of the PostgreSQL transaction log is paused, 0 otherwise.",
		func(st MemberState, _ time.Time) float64 { return b2f(isReplica(st) && st.ReplayPaused) }},
	{"patroni_postgres_streaming", "Value is 1 if a replica streams WAL from the leader, 0 otherwise.",
		func(st MemberState, _ time.Time) float64 { return b2f(isReplica(st) && st.Streaming) }},
	{"patroni_postgres_in_archive_recovery", "Value is 1 if a running replica is not streaming (recovering from what it has or an archive), 0 otherwise.",
		func(st MemberState, _ time.Time) float64 { return b2f(st.InArchiveRecovery()) }},
	{"patroni_postgres_server_version", "Version of PostgreSQL (server_version_num).",
		func(st MemberState, _ time.Time) float64 { return float64(st.PGVersion) }},
	{"patroni_cluster_unlocked", "Value is 1 if the group's leader lock is free, 0 otherwise.",
		func(st MemberState, _ time.Time) float64 { return b2f(st.LeaderName == "") }},
	{"patroni_failsafe_mode_is_active", "Value is 1 if failsafe mode is active, 0 otherwise.",
		func(st MemberState, _ time.Time) float64 { return b2f(st.FailsafeActive) }},
	{"patroni_postgres_timeline", "PostgreSQL timeline of this node (0 while it is not running).",
		func(st MemberState, _ time.Time) float64 {
			if !st.PGRunning {
				return 0
			}
			return float64(st.Timeline)
		}},
	{"patroni_dcs_last_seen", "Epoch seconds when Consul was last contacted successfully.",
		func(st MemberState, _ time.Time) float64 {
			if st.DCSLastSeen.IsZero() {
				return 0
			}
			return float64(st.DCSLastSeen.Unix())
		}},
	{"patroni_pending_restart", "Value is 1 if the node needs a restart, 0 otherwise.",
		func(st MemberState, _ time.Time) float64 { return b2f(st.PendingRestart) }},
	{"patroni_is_paused", "Value is 1 if automatic failover is paused for this group, 0 otherwise.",
		func(st MemberState, _ time.Time) float64 { return b2f(st.Paused) }},
}

// patroniCollector serves patroniMetrics with Patroni's labels: scope (the
// group, as in /patroni) and name (the member), plus cluster (the mesh).
type patroniCollector struct {
	ctl   Controller
	now   func() time.Time
	descs []*prometheus.Desc
}

func newPatroniCollector(ctl Controller, now func() time.Time) *patroniCollector {
	c := &patroniCollector{ctl: ctl, now: now}
	for _, m := range patroniMetrics {
		c.descs = append(c.descs, prometheus.NewDesc(m.name, m.help, []string{"scope", "name", "cluster"}, nil))
	}
	return c
}

func (c *patroniCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c *patroniCollector) Collect(ch chan<- prometheus.Metric) {
	st, now := c.ctl.State(), c.now()
	for i, m := range patroniMetrics {
		ch <- prometheus.MustNewConstMetric(c.descs[i], prometheus.GaugeValue, m.value(st, now), st.Group, st.Name, st.Cluster)
	}
}

// metricsHandler serves GET /metrics from the registry (Options.Metrics
// plus Patroni's gauges).
func (s *Server) metricsHandler() http.HandlerFunc {
	reg := s.opts.Metrics
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	// A second Server over the same registry (tests) must not fail on a
	// duplicate registration; the first collector serves both.
	_ = reg.Register(newPatroniCollector(s.ctl, func() time.Time { return s.now() }))
	h := promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
	return func(w http.ResponseWriter, r *http.Request) {
		if bodyless(r) {
			w.WriteHeader(http.StatusOK)
			return
		}
		h.ServeHTTP(w, r)
	}
}

// PatroniMetricNames lists the Patroni gauge names GET /metrics serves.
func PatroniMetricNames() []string {
	out := make([]string, 0, len(patroniMetrics))
	for _, m := range patroniMetrics {
		out = append(out, m.name)
	}
	return out
}
