package test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/test/testbed"
)

// TestCallbacks: postgresql.callbacks run as Patroni runs them, with
// `<action> <role> <scope>` (scope = the group): on_start when the group
// bootstraps and a replica joins, on_stop and on_role_change replica on the
// old leader and on_role_change primary on the new one in a switchover,
// on_reload after a reload and on_restart after a restart. A recording
// script (run as the agents' OS user) writes one line per call.
func TestCallbacks(t *testing.T) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	dir := testbed.OwnedDir(t)
	rec := filepath.Join(dir, "record.sh")
	// One file per member; a timestamp (unix seconds.nanos) first.
	if err := os.WriteFile(rec, []byte(`#!/bin/sh
echo "$(date +%s.%N) $1 $2 $3" >> `+dir+`/calls-$PGMESH_MEMBER.log
`), 0o755); err != nil {
		t.Fatal(err)
	}
	kv, err := consulkv.New(consulkv.Config{Address: c.HTTPAddr, Cluster: "itest"})
	if err != nil {
		t.Fatal(err)
	}
	g := &group{t: t, consul: c, kv: kv, name: "cb", members: map[string]*testbed.Agent{}}
	for _, m := range []string{"cb-a", "cb-b"} {
		a := testbed.NewAgent(t, testbed.AgentSpec{Cluster: "itest", Group: g.name, Name: m, ConsulAddr: c.HTTPAddr})
		addToPostgreSQLSection(t, a.CfgPath, fmt.Sprintf(`  callbacks:
    on_start: %[1]s
    on_stop: %[1]s
    on_restart: %[1]s
    on_reload: %[1]s
    on_role_change: %[1]s
  callbacks_timeout: 30s
`, rec))
		g.members[m], g.order = a, append(g.order, m)
		a.Start()
	}
	calls := func(m string) []call { return readCalls(t, filepath.Join(dir, "calls-"+m+".log")) }

	started := time.Now()
	leader := g.waitHealthy(90 * time.Second)
	replica := other(g, leader)
	t.Logf("healthy after %s: leader %s, replica %s", time.Since(started).Round(100*time.Millisecond), leader, replica)

	// Bootstrap: the leader started as primary, the replica (cloned) as a
	// replica. Nothing else yet: no role change, no stop.
	waitCall(t, calls, leader, "on_start primary", time.Time{}, 20*time.Second)
	waitCall(t, calls, replica, "on_start replica", time.Time{}, 20*time.Second)
	for _, m := range g.order {
		for _, cl := range calls(m) {
			if cl.scope != g.name {
				t.Fatalf("%s: callback got scope %q, want the group %q", m, cl.scope, g.name)
			}
			if cl.action != "on_start" {
				t.Fatalf("%s: unexpected %s %s after bootstrap: %v", m, cl.action, cl.role, calls(m))
			}
		}
	}
	waitLog(t, g.members[leader], `"msg":"callback finished"`, `"action":"on_start"`, `"exit_code":0`)

	// Switchover: the old leader reports on_role_change replica (its on_stop
	// primary may be replaced by it, as in Patroni), the new one
	// on_role_change primary.
	requested := time.Now()
	code, body := post(t, g.members[leader].APIAddr, "/switchover", fmt.Sprintf(`{"leader":%q,"candidate":%q}`, leader, replica))
	if code != 200 {
		t.Fatalf("switchover: %d %s", code, body)
	}
	if l := g.waitNewLeader(leader, 60*time.Second); l != replica {
		t.Fatalf("new leader %s, want %s", l, replica)
	}
	promoted := waitCall(t, calls, replica, "on_role_change primary", requested, 30*time.Second)
	demoted := waitCall(t, calls, leader, "on_role_change replica", requested, 30*time.Second)
	t.Logf("switchover requested -> on_role_change primary on %s after %s, on_role_change replica on %s after %s",
		replica, promoted.at.Sub(requested).Round(time.Millisecond), leader, demoted.at.Sub(requested).Round(time.Millisecond))
	for _, cl := range calls(leader) {
		if !cl.at.Before(requested) && cl.action == "on_stop" && cl.role != "primary" {
			t.Fatalf("old leader's on_stop with role %s", cl.role)
		}
	}
	for _, cl := range calls(replica) {
		if !cl.at.Before(requested) && cl.action != "on_role_change" {
			t.Fatalf("new leader ran %s %s in the switchover: %v", cl.action, cl.role, calls(replica))
		}
	}
	waitLog(t, g.members[leader], `"msg":"callback finished"`, `"action":"on_role_change"`, `"role":"replica"`)
	waitLog(t, g.members[replica], `"msg":"callback finished"`, `"action":"on_role_change"`, `"role":"primary"`)
	newLeader, oldLeader := replica, leader
	g.waitHealthy(60 * time.Second)

	// Reload (REST POST /reload): on_reload with the member's role.
	for m, role := range map[string]string{newLeader: "primary", oldLeader: "replica"} {
		asked := time.Now()
		if code, body := post(t, g.members[m].APIAddr, "/reload", ""); code != 202 && code != 200 {
			t.Fatalf("reload %s: %d %s", m, code, body)
		}
		cl := waitCall(t, calls, m, "on_reload "+role, asked, 20*time.Second)
		t.Logf("reload of %s -> on_reload %s after %s", m, role, cl.at.Sub(asked).Round(time.Millisecond))
	}

	// Restart of the replica (REST POST /restart): on_restart replica.
	asked := time.Now()
	if code, body := post(t, g.members[oldLeader].APIAddr, "/restart", "{}"); code != 200 {
		t.Fatalf("restart %s: %d %s", oldLeader, code, body)
	}
	cl := waitCall(t, calls, oldLeader, "on_restart replica", asked, 30*time.Second)
	t.Logf("restart of %s -> on_restart replica after %s", oldLeader, cl.at.Sub(asked).Round(time.Millisecond))
	g.waitHealthy(60 * time.Second)

	// An agent that starts and finds PostgreSQL running reports on_start
	// on its first loop (as Patroni): kill -9 the replica's agent only and
	// start it again.
	g.members[oldLeader].KillAgent()
	asked = time.Now()
	g.members[oldLeader].Start()
	cl = waitCall(t, calls, oldLeader, "on_start replica", asked, 30*time.Second)
	t.Logf("agent of %s restarted with PostgreSQL running -> on_start replica after %s", oldLeader, cl.at.Sub(asked).Round(time.Millisecond))
	g.waitHealthy(60 * time.Second)
	for _, m := range g.order {
		var lines []string
		for _, cl := range calls(m) {
			lines = append(lines, fmt.Sprintf("+%s %s %s %s", cl.at.Sub(started).Round(time.Millisecond), cl.action, cl.role, cl.scope))
		}
		t.Logf("%s callbacks recorded:\n  %s", m, strings.Join(lines, "\n  "))
		lines = nil
		for _, l := range strings.Split(g.members[m].Log(), "\n") {
			var e struct {
				Msg, Action, Role, Killed string
				ExitCode                  int `json:"exit_code"`
				Took                      any
			}
			if json.Unmarshal([]byte(l), &e) == nil && e.Msg == "callback finished" {
				lines = append(lines, fmt.Sprintf("%s %s exit %d took %v %s", e.Action, e.Role, e.ExitCode, e.Took, e.Killed))
				if e.ExitCode != 0 && e.Killed == "" {
					t.Errorf("%s: callback failed: %s", m, l)
				}
			}
		}
		t.Logf("%s callback runs logged:\n  %s", m, strings.Join(lines, "\n  "))
	}

	// A clean stop of the agent (SIGTERM) reports on_stop and waits for it
	// before the agent exits.
	asked = time.Now()
	g.members[oldLeader].Stop()
	cl = waitCall(t, calls, oldLeader, "on_stop replica", asked, 5*time.Second)
	t.Logf("SIGTERM to %s's agent -> on_stop replica after %s", oldLeader, cl.at.Sub(asked).Round(time.Millisecond))
	log := g.members[oldLeader].Log()
	finishedAt, stoppedAt := strings.LastIndex(log, `"msg":"callback finished"`), strings.LastIndex(log, `"msg":"stopped"`)
	if finishedAt < 0 || stoppedAt < finishedAt || !strings.Contains(log[finishedAt:stoppedAt], `"action":"on_stop"`) {
		t.Fatalf("the agent did not wait for its on_stop before it exited:\n%s", log[max(0, len(log)-3000):])
	}
}

// addToPostgreSQLSection inserts yaml (indented for the section) right
// after the "postgresql:" line of an agent's config file.
func addToPostgreSQLSection(t *testing.T, path, yaml string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	if !strings.Contains(s, "\npostgresql:\n") {
		t.Fatalf("%s has no postgresql section:\n%s", path, s)
	}
	s = strings.Replace(s, "\npostgresql:\n", "\npostgresql:\n"+yaml, 1)
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func other(g *group, m string) string {
	for _, o := range g.order {
		if o != m {
			return o
		}
	}
	return ""
}

// call is one line the recording script wrote.
type call struct {
	at                  time.Time
	action, role, scope string
}

func readCalls(t *testing.T, path string) []call {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []call
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(l)
		if len(f) != 4 {
			t.Fatalf("%s: malformed line %q", path, l)
		}
		sec, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			t.Fatalf("%s: timestamp in %q: %v", path, l, err)
		}
		out = append(out, call{at: time.Unix(0, int64(sec*1e9)), action: f[1], role: f[2], scope: f[3]})
	}
	return out
}

// waitCall waits until member m's script recorded "action role" at or
// after since, and returns that call.
func waitCall(t *testing.T, calls func(string) []call, m, what string, since time.Time, timeout time.Duration) call {
	t.Helper()
	var found call
	testbed.Eventually(t, timeout, m+" records "+what, func() error {
		var seen []string
		for _, cl := range calls(m) {
			seen = append(seen, cl.action+" "+cl.role)
			// The script's clock and ours are the same host's; allow for
			// date's rounding.
			if cl.action+" "+cl.role == what && !cl.at.Before(since.Add(-10*time.Millisecond)) {
				found = cl
				return nil
			}
		}
		return fmt.Errorf("calls so far: %v", seen)
	})
	return found
}

// waitLog waits until one line of the agent's log contains every part.
func waitLog(t *testing.T, a *testbed.Agent, parts ...string) {
	t.Helper()
	testbed.Eventually(t, 20*time.Second, a.Spec.Name+" logs "+strings.Join(parts, " "), func() error {
		for _, l := range strings.Split(a.Log(), "\n") {
			ok := true
			for _, p := range parts {
				ok = ok && strings.Contains(l, p)
			}
			if ok {
				return nil
			}
		}
		return fmt.Errorf("no such line")
	})
}
