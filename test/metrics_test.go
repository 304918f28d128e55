package test

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/test/testbed"
)

// scrape GETs a member's /metrics and returns each sample (name with its
// labels as printed) and its value.
func scrape(t *testing.T, a *testbed.Agent) (map[string]float64, error) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 3 * time.Second}).Get(a.APIURL() + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("GET /metrics = %d %s", resp.StatusCode, b)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// TestMetrics scrapes live members the way Prometheus does: Patroni's
// gauge names with their labels say who is primary and who streams, and
// after a kill -9 of the primary's host the survivor's figures move: it is
// primary on a new timeline and counts one failover.
func TestMetrics(t *testing.T) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	g := startGroup(t, c, "mx", 2, nil, nil)
	leader := g.waitHealthy(90 * time.Second)
	replica := g.order[0]
	if replica == leader {
		replica = g.order[1]
	}
	lbl := func(m string) string { return fmt.Sprintf(`{cluster="itest",name="%s",scope="mx"}`, m) }
	expect := func(m string, want map[string]func(float64) bool) map[string]float64 {
		t.Helper()
		var got map[string]float64
		testbed.Eventually(t, 30*time.Second, m+"'s metrics", func() error {
			var err error
			if got, err = scrape(t, g.members[m]); err != nil {
				return err
			}
			for name, ok := range want {
				v, present := got[name]
				if !present {
					return fmt.Errorf("%s missing", name)
				}
				if !ok(v) {
					return fmt.Errorf("%s = %v", name, v)
				}
			}
			return nil
		})
		return got
	}
	is := func(x float64) func(float64) bool { return func(v float64) bool { return v == x } }
	positive := func(v float64) bool { return v > 0 }
	recent := func(v float64) bool { return time.Since(time.Unix(int64(v), 0)) < 30*time.Second }

	before := expect(leader, map[string]func(float64) bool{
		"patroni_primary" + lbl(leader):                 is(1),
		"patroni_replica" + lbl(leader):                 is(0),
		"patroni_postgres_running" + lbl(leader):        is(1),
		"patroni_cluster_unlocked" + lbl(leader):        is(0),
		"patroni_xlog_location" + lbl(leader):           positive,
		"patroni_postgres_server_version" + lbl(leader): func(v float64) bool { return v >= 150000 },
		"patroni_dcs_last_seen" + lbl(leader):           recent,
		"pgmesh_lease_remaining_seconds":                positive,
		"pgmesh_registered":                             is(1),
		`pgmesh_decisions_total{action="keep_leader"}`:  positive,
		"pgmesh_loop_duration_seconds_count":            positive,
	})
	expect(replica, map[string]func(float64) bool{
		"patroni_primary" + lbl(replica):                      is(0),
		"patroni_replica" + lbl(replica):                      is(1),
		"patroni_postgres_streaming" + lbl(replica):           is(1),
		"patroni_postgres_in_archive_recovery" + lbl(replica): is(0),
		"patroni_xlog_received_location" + lbl(replica):       positive,
		`pgmesh_leader_changes_total{kind="failover"}`:        is(0),
	})
	oldTimeline := before["patroni_postgres_timeline"+lbl(leader)]

	g.members[leader].KillHost()
	if nl := g.waitNewLeader(leader, 60*time.Second); nl != replica {
		t.Fatalf("new leader %s, want %s", nl, replica)
	}
	after := expect(replica, map[string]func(float64) bool{
		"patroni_primary" + lbl(replica):               is(1),
		"patroni_replica" + lbl(replica):               is(0),
		"patroni_postgres_timeline" + lbl(replica):     func(v float64) bool { return v > oldTimeline },
		`pgmesh_leader_changes_total{kind="failover"}`: is(1),
		`pgmesh_decisions_total{action="acquire"}`:     positive,
	})
	t.Logf("after the failover %s is primary on timeline %v (was %v), xlog_location %v", replica,
		after["patroni_postgres_timeline"+lbl(replica)], oldTimeline, after["patroni_xlog_location"+lbl(replica)])
}
