package health

import (
	"fmt"
	"math"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
)

// healthCheck decides a health endpoint's answer from the member's state
// alone. A non-nil error means the query itself is bad (400).
type healthCheck func(st MemberState, q url.Values, now time.Time) (bool, error)

// healthChecks maps each health path to its rule. Several paths share a rule
// because HAProxy configs written for different Patroni versions use them.
var healthChecks = map[string]healthCheck{
	"/":           checkPrimary,
	"/primary":    checkPrimary,
	"/master":     checkPrimary,
	"/read-write": checkPrimary,
	"/leader":     checkLeader,
	"/replica":    checkReplica,
	"/read-only":  checkReadOnly,
	"/health":     checkHealth,
	"/liveness":   checkLiveness,
	"/readiness":  checkReadiness,
	// Patroni's synchronous/asynchronous standby endpoints.
	"/sync":         checkSync,
	"/synchronous":  checkSync,
	"/async":        checkAsync,
	"/asynchronous": checkAsync,
	// pgmesh runs no standby clusters, so no member is ever a standby
	// leader; the path answers 503 instead of 404 so Patroni-era checks
	// read "no" rather than "misconfigured".
	"/standby-leader": checkStandbyLeader,
	"/standby_leader": checkStandbyLeader,
}

// checkSync: a running replica the leader lists as synchronous standby.
func checkSync(st MemberState, q url.Values, _ time.Time) (bool, error) {
	if st.Role != consulkv.RoleReplica || !st.PGRunning || st.IsLeader || !st.SyncStandby {
		return false, nil
	}
	return replicaFilters(st, q)
}

// checkAsync: a running, streaming replica that is not a synchronous
// standby (?lag= as for /replica).
func checkAsync(st MemberState, q url.Values, _ time.Time) (bool, error) {
	if st.Role != consulkv.RoleReplica || !st.PGRunning || !st.Streaming || st.IsLeader || st.SyncStandby {
		return false, nil
	}
	return replicaFilters(st, q)
}

func checkStandbyLeader(MemberState, url.Values, time.Time) (bool, error) { return false, nil }

// checkPrimary asks all three facts even though Writable should imply the
// others: routing writes to a member on a half-updated state is the one
// mistake this endpoint exists to prevent.
func checkPrimary(st MemberState, _ url.Values, now time.Time) (bool, error) {
	return st.Writable && st.IsLeader && st.PGRunning && leaseHolds(st, now), nil
}

// leaseHolds: the lease, when the agent reports it, has not run out.
func leaseHolds(st MemberState, now time.Time) bool {
	return !st.LeaseKnown || now.Before(st.LeaseUntil)
}

func checkLeader(st MemberState, _ url.Values, _ time.Time) (bool, error) {
	return st.IsLeader && st.PGRunning, nil
}

func checkHealth(st MemberState, _ url.Values, _ time.Time) (bool, error) {
	return st.PGRunning, nil
}

func checkLiveness(st MemberState, _ url.Values, now time.Time) (bool, error) {
	ttl := st.TTL
	if ttl <= 0 {
		ttl = consulkv.DefaultTTL
	}
	return !st.LastLoop.IsZero() && now.Sub(st.LastLoop) <= ttl, nil
}

func checkReadiness(st MemberState, q url.Values, _ time.Time) (bool, error) {
	if st.IsLeader && st.PGRunning {
		return true, nil
	}
	if st.Role != consulkv.RoleReplica || !st.PGRunning || !st.Streaming {
		return false, nil
	}
	return lagOK(st, q)
}

// checkReplica: a running, streaming replica that load balancers may use.
// A member holding the leader key is about to be (or is) the primary, so it
// is never offered for reads as a replica.
func checkReplica(st MemberState, q url.Values, _ time.Time) (bool, error) {
	if st.Role != consulkv.RoleReplica || !st.PGRunning || !st.Streaming || st.IsLeader {
		return false, nil
	}
	return replicaFilters(st, q)
}

func checkReadOnly(st MemberState, q url.Values, _ time.Time) (bool, error) {
	if !st.PGRunning {
		return false, nil
	}
	if st.Writable && st.IsLeader {
		return tagsMatch(st, q), nil
	}
	if st.Role != consulkv.RoleReplica || st.IsLeader {
		return false, nil
	}
	return replicaFilters(st, q)
}

// replicaFilters applies the query conditions Patroni applies to replicas:
// noloadbalance, ?lag=, ?replication_state= and ?tag_<key>=<value>.
func replicaFilters(st MemberState, q url.Values) (bool, error) {
	if strings.EqualFold(st.Tags.Custom[tagNoLoadBalance], "true") {
		return false, nil
	}
	if ok, err := lagOK(st, q); !ok || err != nil {
		return false, err
	}
	if want := q.Get("replication_state"); want != "" && !(want == "streaming" && st.Streaming) {
		return false, nil
	}
	return tagsMatch(st, q), nil
}

func lagOK(st MemberState, q url.Values) (bool, error) {
	v, ok := q["lag"]
	if !ok || len(v) == 0 {
		return true, nil
	}
	maxLag, err := ParseBytes(v[0])
	if err != nil {
		return false, fmt.Errorf("lag: %w", err)
	}
	return st.LagBytes() <= maxLag, nil
}

// tagsMatch: every ?tag_<key>=<value> must name a tag the member has with
// exactly that value.
func tagsMatch(st MemberState, q url.Values) bool {
	for k, vs := range q {
		key, ok := strings.CutPrefix(k, "tag_")
		if !ok || len(vs) == 0 {
			continue
		}
		have, ok := tagValue(st.Tags, key)
		if !ok || have != vs[0] {
			return false
		}
	}
	return true
}

// byteUnits are PostgreSQL's memory units (powers of 1024), which Patroni
// uses for ?lag=.
var byteUnits = map[string]float64{
	"":   1,
	"b":  1,
	"kb": 1 << 10,
	"mb": 1 << 20,
	"gb": 1 << 30,
	"tb": 1 << 40,
}

// ParseBytes reads a byte count such as "1048576", "1024kB", "16MB" or "1GB"
// (units are case-insensitive and powers of 1024, as in PostgreSQL).
//
// Unlike Patroni, which ignores a ?lag= it cannot parse, a bad value is an
// error: a typo in an HAProxy check must not silently route reads to
// replicas of any lag.
func ParseBytes(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	mult, ok := byteUnits[unit]
	if num == "" || !ok {
		return 0, fmt.Errorf("%q is not a size (use bytes or a unit: B, kB, MB, GB, TB)", s)
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size", s)
	}
	f *= mult
	if f >= math.MaxUint64 {
		return math.MaxUint64, nil
	}
	return uint64(f), nil
}
