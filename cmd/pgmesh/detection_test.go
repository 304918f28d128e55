package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
)

func TestEstimateDetection(t *testing.T) {
	def := consulkv.ClusterConfig{Version: 1}
	with := func(ttl, lockDelay time.Duration) consulkv.ClusterConfig {
		return consulkv.ClusterConfig{Version: 1, TTL: consulkv.Duration(ttl), LockDelay: consulkv.Duration(lockDelay)}
	}
	// The lock-delay a session tied to checks gets with lock_delay 0.
	auto := consulkv.DefaultChecksLockDelay
	ms := time.Millisecond
	for _, tc := range []struct {
		name           string
		cfg            consulkv.ClusterConfig
		checks         []string
		tie, via       string
		blind          bool
		lockDelay      time.Duration
		typical, worst time.Duration // compared as shown, to 0.1s
	}{
		// ttl 20s: session TTL 10s, freed up to 20s after the last renew.
		{"defaults, TTL only", def, nil, "session TTL only", viaTTL, false, 0, 18700 * ms, 20 * time.Second},
		{"empty list is TTL only", def, []string{}, "session TTL only", viaTTL, false, 0, 18700 * ms, 20 * time.Second},
		// serf 5.6s / 8.55s, then the automatic lock-delay.
		{"serfHealth, automatic lock-delay", def, []string{"serfHealth"}, "session tied to node check serfHealth", viaSerf, false, auto, 5600*ms + auto, 8550*ms + auto},
		{"serfHealth + liveness", def, []string{"serfHealth", "liveness"}, "session tied to node check serfHealth + service check liveness", viaSerf, false, auto, 5600*ms + auto, 8550*ms + auto},
		{"serfHealth, lock_delay 7.5s", with(20*time.Second, 7500*ms), []string{"serfHealth"}, "session tied to node check serfHealth", viaSerf, false, 7500 * ms, 13100 * ms, 16050 * ms},
		// liveness dies with the host: the TTL frees the session, then the
		// checks' lock-delay.
		{"liveness alone", def, []string{"liveness"}, "session tied to service check liveness, dead host noticed by TTL", viaTTL, true, auto, 18700*ms + auto, 20*time.Second + auto},
		{"custom node check", def, []string{"disk"}, "session tied to node check disk, dead host noticed by TTL", viaTTL, true, auto, 18700*ms + auto, 20*time.Second + auto},
		{"two node checks", def, []string{"serfHealth", "disk"}, "session tied to node checks serfHealth, disk", viaSerf, false, auto, 5600*ms + auto, 8550*ms + auto},
		// The fast profile: session TTL 2s, lock_delay 1s.
		{"ttl 4s, lock_delay 1s", with(4*time.Second, time.Second), nil, "session TTL only", viaTTL, false, time.Second, 4740 * ms, 5 * time.Second},
		// The session TTL is at least 1s.
		{"ttl 1s", with(time.Second, 0), nil, "session TTL only", viaTTL, false, 0, 1870 * ms, 2 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := estimateDetection(tc.cfg, tc.checks)
			if d.Tie != tc.tie || d.Via != tc.via || d.Blind != tc.blind || d.LockDelay != tc.lockDelay {
				t.Errorf("got tie %q via %s blind %v lock-delay %s, want %q %s %v %s", d.Tie, d.Via, d.Blind, d.LockDelay, tc.tie, tc.via, tc.blind, tc.lockDelay)
			}
			if fmtDur(d.Typical) != fmtDur(tc.typical) || fmtDur(d.Worst) != fmtDur(tc.worst) {
				t.Errorf("estimate ~%s worst %s, want ~%s worst %s", fmtDur(d.Typical), fmtDur(d.Worst), fmtDur(tc.typical), fmtDur(tc.worst))
			}
			if d.Typical > d.Worst {
				t.Errorf("typical %s above worst %s", d.Typical, d.Worst)
			}
		})
	}
}

func TestDetectionWarnings(t *testing.T) {
	def := consulkv.ClusterConfig{Version: 1}
	auto := consulkv.DefaultChecksLockDelay
	for _, tc := range []struct {
		name   string
		cfg    consulkv.ClusterConfig
		checks map[string][]string // member → session checks
		goal   time.Duration
		want   []string // substrings, one entry per expected warning
	}{
		{"goal 0 turns it off", def, map[string][]string{"a": nil}, 0, nil},
		{"TTL only over the default goal", def, map[string][]string{"a": nil, "b": nil}, defaultDetectionGoal,
			[]string{"group g: a, b (session TTL only) takes about 18.7s (up to 20s) to be noticed dead and free the lock, goal 8.8s: run a Consul client agent on each host so sessions are tied to serfHealth (automatic when consul.session_checks is unset), or lower ttl"}},
		{"typical figure equal to the goal is fine", def, map[string][]string{"a": nil}, 18700 * time.Millisecond, nil},
		{"TTL only under a looser goal", def, map[string][]string{"a": nil}, 30 * time.Second, nil},
		{"fast TTL profile meets the goal", consulkv.ClusterConfig{Version: 1, TTL: consulkv.Duration(4 * time.Second), LockDelay: consulkv.Duration(time.Second)},
			map[string][]string{"a": nil}, defaultDetectionGoal, nil},
		{"TTL only with a lock_delay", consulkv.ClusterConfig{Version: 1, LockDelay: consulkv.Duration(3 * time.Second)},
			map[string][]string{"a": nil}, defaultDetectionGoal, []string{"up to 23s", "or lower ttl (Consul's session_ttl_min must allow ttl/2) and lock_delay (3s now)"}},
		{"liveness alone cannot see a dead host", def, map[string][]string{"a": {"liveness"}}, defaultDetectionGoal,
			[]string{"a (session tied to service check liveness, dead host noticed by TTL) takes about", "(up to " + fmtDur(20*time.Second+auto) + ")", "add serfHealth to consul.session_checks"}},
		{"serfHealth on the defaults meets 8.8s", def, map[string][]string{"a": {"serfHealth"}}, defaultDetectionGoal, nil},
		{"serfHealth: a tighter goal needs gossip tuning", def, map[string][]string{"a": {"serfHealth"}}, 7 * time.Second,
			[]string{"a (session tied to node check serfHealth) takes about " + fmtDur(5600*time.Millisecond+auto) + " (up to " + fmtDur(8550*time.Millisecond+auto) + ")", "goal 7s", "serf alone takes up to 8.6s", "then lock_delay " + fmtDur(auto) + ";"}},
		{"serfHealth with a long lock_delay", consulkv.ClusterConfig{Version: 1, LockDelay: consulkv.Duration(7500 * time.Millisecond)},
			map[string][]string{"a": {"serfHealth", "liveness"}}, 10 * time.Second,
			[]string{"up to 16.1s", "goal 10s: lower lock_delay (7.5s now, at least 1s)."}},
		{"one warning per kind of session", def, map[string][]string{"a": nil, "b": {"serfHealth"}, "c": nil, "d": {"serfHealth"}}, 7 * time.Second,
			[]string{"a, c (session TTL only)", "b, d (session tied to node check serfHealth)"}},
		{"only the slow members", def, map[string][]string{"a": nil, "b": {"serfHealth"}}, 15 * time.Second,
			[]string{"group g: a (session TTL only) takes about 18.7s (up to 20s)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &consulkv.GroupView{Name: "g", Members: map[string]*consulkv.MemberStatus{}}
			for name, checks := range tc.checks {
				g.Members[name] = &consulkv.MemberStatus{Version: 1, Name: name, Role: consulkv.RoleReplica, State: "running", SessionChecks: checks}
			}
			got := detectionWarnings(buildGroup(g, tc.cfg), tc.goal)
			if len(tc.want) == 0 {
				if len(got) != 0 {
					t.Errorf("unexpected warnings: %q", got)
				}
				return
			}
			if tc.name == "one warning per kind of session" {
				if len(got) != 2 || !strings.Contains(got[0], tc.want[0]) || !strings.Contains(got[1], tc.want[1]) {
					t.Errorf("warnings %q, want one per kind: %q", got, tc.want)
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("warnings %q, want one", got)
			}
			if !strings.HasPrefix(got[0], "Slow failure detection in group g: ") || !strings.HasSuffix(got[0], ".") {
				t.Errorf("warning shape: %q", got[0])
			}
			for _, w := range tc.want {
				if !strings.Contains(got[0], w) {
					t.Errorf("warning %q lacks %q", got[0], w)
				}
			}
		})
	}
}

func TestDetectionInJSON(t *testing.T) {
	v := testView()
	v.Groups["g1"].Members["n3"].SessionChecks = []string{"serfHealth", "liveness"}
	doc := buildStatus("prod", v, "g1", defaultDetectionGoal)
	var b bytes.Buffer
	if err := writeDoc(&b, "json", doc); err != nil {
		t.Fatal(err)
	}
	var back struct {
		Goal   float64 `json:"detection_goal_seconds"`
		Groups []struct {
			Warnings []string `json:"detection_warnings"`
			Members  []struct {
				Name     string  `json:"name"`
				Via      string  `json:"detection_via"`
				Typical  float64 `json:"detection_typical_seconds"`
				Estimate float64 `json:"detection_estimate_seconds"`
			} `json:"members"`
		} `json:"groups"`
	}
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if back.Goal != 8.8 || len(back.Groups) != 1 || len(back.Groups[0].Warnings) != 1 {
		t.Fatalf("goal %v, groups %+v\n%s", back.Goal, back.Groups, b.String())
	}
	for _, m := range back.Groups[0].Members {
		want := struct {
			via               string
			typical, estimate float64
		}{viaTTL, 18.7, 20}
		if m.Name == "n3" {
			want.via, want.typical, want.estimate = viaSerf, seconds(5600*time.Millisecond+consulkv.DefaultChecksLockDelay), seconds(8550*time.Millisecond+consulkv.DefaultChecksLockDelay)
		}
		if m.Via != want.via || m.Typical != want.typical || m.Estimate != want.estimate {
			t.Errorf("%s: via %s ~%v worst %v, want %s ~%v worst %v", m.Name, m.Via, m.Typical, m.Estimate, want.via, want.typical, want.estimate)
		}
	}
	// Goal 0: no warnings and no goal in the document.
	b.Reset()
	if err := writeDoc(&b, "json", buildStatus("prod", v, "g1", 0)); err != nil {
		t.Fatal(err)
	}
	if s := b.String(); strings.Contains(s, "detection_warnings") || strings.Contains(s, "detection_goal_seconds") || !strings.Contains(s, "detection_estimate_seconds") {
		t.Errorf("goal 0:\n%s", s)
	}
}

func TestDetectionGoalFlag(t *testing.T) {
	found := false
	for _, f := range statusCommand().Flags {
		if f.Names()[0] != "detection-goal" {
			continue
		}
		found = true
		df := f.(interface{ GetEnvVars() []string })
		if env := df.GetEnvVars(); len(env) != 1 || env[0] != "PGMESH_DETECTION_GOAL" {
			t.Errorf("env vars %v", env)
		}
		if v := f.(interface{ GetValue() string }).GetValue(); v != "8.8s" {
			t.Errorf("default %q", v)
		}
	}
	if !found {
		t.Fatal("status has no --detection-goal")
	}
	run := func(args ...string) error {
		app := newApp()
		app.Writer, app.ErrWriter = &bytes.Buffer{}, &bytes.Buffer{}
		return app.Run(append([]string{"pgmesh", "--cluster", "c", "--consul", "127.0.0.1:1"}, args...))
	}
	if err := run("status", "--detection-goal", "-1s"); err == nil || exitCode(err) != exitUsage || !strings.Contains(err.Error(), "detection-goal") {
		t.Errorf("negative goal: %v", err)
	}
	t.Setenv("PGMESH_DETECTION_GOAL", "-2s")
	if err := run("status"); err == nil || exitCode(err) != exitUsage || !strings.Contains(err.Error(), "detection-goal") {
		t.Errorf("negative goal from the environment: %v", err)
	}
}
