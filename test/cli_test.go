package test

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/test/testbed"
)

// TestCLI drives the operator CLI as a person would, against a real Consul
// and a real 3-member group: read the mesh, switch over, read the history,
// pause and resume, change the dynamic config and restart a member.
func TestCLI(t *testing.T) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	// retry_timeout 1s leaves room in the timing rule (loop_wait +
	// 2*retry_timeout <= ttl 4s) for `config set loop_wait=2s` below.
	g := startGroup(t, c, "g1", 3, nil, func(s *testbed.AgentSpec) { s.RetryTimeout = time.Second })
	start := time.Now()
	leader := g.waitHealthy(90 * time.Second)
	t.Logf("group healthy after %s, leader %s", time.Since(start).Round(100*time.Millisecond), leader)
	p := newPgmeshCLI(t, c.HTTPAddr, "itest")

	// status: the leader and two streaming replicas with no lag. Member
	// keys catch up within a loop, so poll.
	var out string
	testbed.Eventually(t, 20*time.Second, "status shows a healthy group", func() error {
		r := p.run("status")
		if r.code != 0 {
			return fmt.Errorf("%s", r)
		}
		out = r.stdout
		for _, m := range g.order {
			row := tableRow(out, m)
			want := []string{"Replica", "streaming"}
			if m == leader {
				want = []string{"Leader", "running"}
			}
			if len(row) < 4 || row[2] != want[0] || row[3] != want[1] {
				return fmt.Errorf("row %v, want role %s state %s:\n%s", row, want[0], want[1], out)
			}
			if m != leader && row[len(row)-1] != "0" {
				return fmt.Errorf("replica %s lag %v:\n%s", m, row, out)
			}
			if m == leader && len(row) != 6 { // name host:port role state TL LSN; no lag
				return fmt.Errorf("leader row %v", row)
			}
		}
		return nil
	})
	t.Logf("pgmesh status:\n%s", out)
	if !strings.HasPrefix(out, "Cluster: itest\n") || !regexp.MustCompile(`Group: g1 \(system id \d+\)`).MatchString(out) {
		t.Fatalf("status header:\n%s", out)
	}
	if !strings.Contains(out, "Member  Host:Port") || !strings.Contains(out, "Lag in MB") {
		t.Fatalf("status table header:\n%s", out)
	}

	// -o json is machine-readable.
	var doc struct {
		Cluster string
		Groups  []struct {
			Name, Leader string
			SystemID     string `json:"system_id"`
			Members      []struct {
				Name, Role, State string
				LagBytes          *uint64 `json:"lag_bytes"`
			}
		}
	}
	r := p.ok("status", "-o", "json")
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, r.stdout)
	}
	if doc.Cluster != "itest" || len(doc.Groups) != 1 || doc.Groups[0].Leader != leader || len(doc.Groups[0].Members) != 3 {
		t.Fatalf("status json: %+v", doc)
	}
	for _, m := range doc.Groups[0].Members {
		if (m.Name == leader) != (m.Role == "leader") || (m.Name != leader && m.LagBytes == nil) {
			t.Fatalf("json member %+v (leader %s)", m, leader)
		}
	}
	p.ok("status", "-o", "yaml", "--group", "g1")

	// Operator mistakes: a dead Consul, a cluster that does not exist,
	// a missing --group, a prompt without a terminal.
	dead := fmt.Sprintf("127.0.0.1:%d", testbed.FreePort(t))
	p.fails(1, []string{"cannot reach Consul at " + dead}, "status", "--consul", dead)
	p.fails(1, []string{`cluster "nosuch" has no data`}, "status", "--cluster", "nosuch")
	p.fails(2, []string{"--group is required"}, "switchover")
	p.fails(2, []string{"unknown command"}, "stauts")
	var replica string
	for _, m := range g.order {
		if m != leader {
			replica = m
			break
		}
	}
	yes := "y\n"
	if r := p.runWith(&yes, nil, "switchover", "--group", "g1", "--to", replica); r.code != 2 || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("switchover with piped stdin and no --force must refuse:\n%s", r)
	}
	if l, _ := g.leader(); l != leader {
		t.Fatalf("leader changed to %s after a refused switchover", l)
	}

	// Switchover to a named replica.
	start = time.Now()
	r = p.ok("switchover", "--group", "g1", "--to", replica, "--force")
	t.Logf("switchover took %s: %s", time.Since(start).Round(10*time.Millisecond), strings.TrimSpace(r.stdout))
	if !regexp.MustCompile(`^Switched over to ` + replica + ` \(timeline \d+\)\n$`).MatchString(r.stdout) {
		t.Fatalf("switchover output:\n%s", r)
	}
	r = p.ok("status")
	if row := tableRow(r.stdout, replica); len(row) < 3 || row[2] != "Leader" {
		t.Fatalf("status after switchover: %s is not Leader:\n%s", replica, r.stdout)
	}
	if row := tableRow(r.stdout, leader); len(row) < 3 || row[2] == "Leader" {
		t.Fatalf("status after switchover: old leader %s still Leader:\n%s", leader, r.stdout)
	}
	// A second switchover to the current leader is refused before asking.
	p.fails(1, []string{"already is the leader"}, "switchover", "-g", "g1", "--to", replica, "--force")

	// history shows it.
	r = p.ok("history", "--group", "g1")
	t.Logf("pgmesh history:\n%s", r.stdout)
	if row := tableRow(r.stdout, "1"); len(row) < 4 || !regexp.MustCompile(`^[0-9A-F]+/[0-9A-F]+$`).MatchString(row[1]) || row[len(row)-1] != replica {
		t.Fatalf("history row for timeline 1: %v\n%s", row, r.stdout)
	}
	var hist []struct {
		Timeline  int    `json:"timeline"`
		NewLeader string `json:"new_leader"`
		Reason    string `json:"reason"`
	}
	r = p.ok("history", "-g", "g1", "-o", "json")
	if err := json.Unmarshal([]byte(r.stdout), &hist); err != nil || len(hist) == 0 || hist[len(hist)-1].NewLeader != replica {
		t.Fatalf("history json: %v %+v\n%s", err, hist, r.stdout)
	}

	// pause / resume, cluster-wide and per group, waiting for the agents.
	r = p.ok("pause", "--wait", "--timeout", "20s")
	if !strings.Contains(r.stdout, "Cluster paused.") || !strings.Contains(r.stdout, "All 3 members of g1 report paused") {
		t.Fatalf("pause --wait:\n%s", r)
	}
	if r = p.ok("status"); !strings.Contains(r.stdout, "Cluster is paused") {
		t.Fatalf("status footer after pause:\n%s", r.stdout)
	}
	p.fails(1, []string{"whole cluster is paused"}, "resume", "--group", "g1")
	r = p.ok("resume", "--wait", "--timeout", "20s")
	if !strings.Contains(r.stdout, "Cluster resumed.") || !strings.Contains(r.stdout, "not paused") {
		t.Fatalf("resume --wait:\n%s", r)
	}
	if r = p.ok("status"); strings.Contains(r.stdout, "paused") {
		t.Fatalf("status still says paused after resume:\n%s", r.stdout)
	}
	p.ok("pause", "--group", "g1", "--wait", "--timeout", "20s")
	if r = p.ok("status"); !strings.Contains(r.stdout, "Group g1 is paused") {
		t.Fatalf("status footer after pause --group:\n%s", r.stdout)
	}
	t.Logf("pgmesh status with g1 paused:\n%s", r.stdout)
	p.ok("resume", "--group", "g1", "--wait", "--timeout", "20s")

	// restart and reload a member through its REST API.
	g.waitHealthy(30 * time.Second)
	r = p.ok("restart", leader, "--force")
	if !strings.Contains(r.stdout, leader+": restarted successfully") {
		t.Fatalf("restart:\n%s", r)
	}
	r = p.ok("reload", leader, "--group", "g1")
	if !strings.Contains(r.stdout, leader+": reload scheduled") {
		t.Fatalf("reload:\n%s", r)
	}
	p.fails(1, []string{`member "nobody" not found`}, "restart", "nobody", "--force")

	// failover back to the first leader once it streams again.
	g.waitHealthy(30 * time.Second)
	r = p.ok("failover", "--group", "g1", "--to", leader, "--force")
	if !regexp.MustCompile(`^Failed over to ` + leader + ` \(timeline \d+\)\n$`).MatchString(r.stdout) {
		t.Fatalf("failover output:\n%s", r)
	}
	if l, _ := g.leader(); l != leader {
		t.Fatalf("leader after failover: %s, want %s", l, leader)
	}

	// config: an invalid value is refused naming the field; a valid one is
	// shown by config show; an edit goes through $EDITOR.
	before := p.ok("config", "show").stdout
	p.fails(1, []string{"ttl 1s", "nothing written"}, "config", "set", "ttl=1s", "--force")
	if after := p.ok("config", "show").stdout; after != before {
		t.Fatalf("refused config set changed the config:\n%s\n->\n%s", before, after)
	}
	p.fails(2, []string{`unknown key "tll"`}, "config", "set", "tll=5s", "--force")
	// loop_wait 2s would outlast the leader's 1.6s lease at ttl 4s.
	p.fails(1, []string{"loop_wait 2s: must be at most 1.4s", "nothing written"}, "config", "set", "loop_wait=2s", "--force")
	r = p.ok("config", "set", "loop_wait=1200ms", "--force")
	t.Logf("pgmesh config set loop_wait=1200ms --force:\n%s", r.stdout)
	if !strings.Contains(r.stdout, "-loop_wait: 1s\n+loop_wait: 1.2s\n") {
		t.Fatalf("config set diff:\n%s", r)
	}
	if r = p.ok("config", "show"); !strings.Contains(r.stdout, "loop_wait: 1.2s\n") || !strings.Contains(r.stdout, "ttl: 4s\n") {
		t.Fatalf("config show after set:\n%s", r.stdout)
	}
	editor := []string{`EDITOR=sed -i -e s/^maximum_lag_on_failover:.*/maximum_lag_on_failover:\ 8MB/`}
	r = p.runWith(nil, editor, "config", "edit", "--force")
	if r.code != 0 || !strings.Contains(r.stdout, "+maximum_lag_on_failover: 8388608") {
		t.Fatalf("config edit:\n%s", r)
	}
	r = p.runWith(nil, []string{`EDITOR=sed -i -e s/^ttl:.*/tll:\ 9s/`}, "config", "edit", "--force")
	if r.code != 1 || !strings.Contains(r.stderr, `unknown key "tll"`) || !strings.Contains(r.stderr, "nothing written") {
		t.Fatalf("invalid config edit:\n%s", r)
	}
	if r = p.ok("config", "show", "-o", "json"); !strings.Contains(r.stdout, `"maximum_lag_on_failover": 8388608`) {
		t.Fatalf("config show -o json:\n%s", r.stdout)
	}

	if r = p.ok("completion", "bash"); !strings.Contains(r.stdout, "complete -o bashdefault") {
		t.Fatalf("completion bash:\n%s", r.stdout)
	}

	// --watch redraws until interrupted, then exits 0.
	w := p.watch(2500*time.Millisecond, "status", "--watch", "1")
	if w.code != 0 || strings.Count(w.stdout, "\033[H\033[2J") < 2 || strings.Count(w.stdout, "Cluster: itest") < 2 {
		t.Fatalf("status --watch:\n%s", w)
	}

	// A group whose agents cannot be reached and that holds a garbage key:
	// status names the key, a switchover falls back to the failover key
	// and withdraws it when nobody acts on it, a scheduled one stays
	// pending until cancelled.
	fakeGroup(t, c, "itest", "g9")
	r = p.ok("status", "--group", "g9")
	if !strings.Contains(r.stdout, `Consul problem: key "pgmesh/itest/groups/g9/members/f3": invalid JSON`) || strings.Contains(r.stdout, "g1-") {
		t.Fatalf("status --group g9:\n%s", r.stdout)
	}
	r = p.fails(1, []string{"writing the request into Consul instead", "no new leader", "withdrawn"},
		"switchover", "-g", "g9", "--to", "f2", "--force", "--timeout", "2s")
	if v, err := g.kv.ReadGroup(context.Background(), "g9"); err != nil || v.FailoverIndex != 0 {
		t.Fatalf("failover key left behind: %v %+v", err, v.Failover)
	}
	at := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	r = p.ok("switchover", "-g", "g9", "--to", "f2", "--at", at, "--force")
	if !strings.Contains(r.stdout, "scheduled") {
		t.Fatalf("scheduled switchover:\n%s", r)
	}
	if r = p.ok("status"); !strings.Contains(r.stdout, "Switchover scheduled in group g9 from f1 to f2 at ") {
		t.Fatalf("status footer for a scheduled switchover:\n%s", r.stdout)
	}
	t.Logf("pgmesh status with a fake group g9:\n%s", r.stdout)
	r = p.ok("switchover", "-g", "g9", "--cancel")
	if !strings.Contains(r.stdout, "Cancelled the switchover scheduled at") {
		t.Fatalf("cancel:\n%s", r)
	}
	g.waitHealthy(30 * time.Second)
}
