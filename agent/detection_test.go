package agent

import (
	"strings"
	"testing"

	"github.com/pgmesh/pgmesh/consulkv"
)

func TestDetectionProblem(t *testing.T) {
	client := consulkv.LocalAgent{NodeName: "db1"}
	server := consulkv.LocalAgent{NodeName: "consul1", Server: true}
	for _, tc := range []struct {
		checks  []string
		address string
		self    consulkv.LocalAgent
		want    string
	}{
		{nil, "10.0.0.5:8500", server, ""},
		{[]string{"liveness"}, "10.0.0.5:8500", server, ""},
		{[]string{"serfHealth"}, "127.0.0.1:8500", client, ""},
		{[]string{"serfHealth"}, "", client, ""},
		{[]string{"serfHealth"}, "https://localhost:8501", client, ""},
		{[]string{"serfHealth", "liveness"}, "127.0.0.1:8500", server, "is a server"},
		{[]string{"serfHealth"}, "10.0.0.5:8500", client, "not on this host"},
		{[]string{"serfHealth"}, "https://consul.example:8501", client, "not on this host"},
	} {
		got := detectionProblem(tc.checks, tc.address, tc.self)
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%v at %q (server %v): %q, want %q", tc.checks, tc.address, tc.self.Server, got, tc.want)
		}
	}
}

func TestLeaveProblem(t *testing.T) {
	if p := leaveProblem(consulkv.LocalAgent{NodeName: "db1", LeaveOnTerm: true}); !strings.Contains(p, "leave_on_terminate = false") {
		t.Errorf("leaving agent: %q", p)
	}
	if p := leaveProblem(consulkv.LocalAgent{NodeName: "db1"}); p != "" {
		t.Errorf("staying agent: %q", p)
	}
}

func TestAutoChecks(t *testing.T) {
	client := consulkv.LocalAgent{NodeName: "db1"}
	server := consulkv.LocalAgent{NodeName: "consul1", Server: true}
	for _, tc := range []struct {
		address string
		self    consulkv.LocalAgent
		want    string
		why     string
	}{
		{"127.0.0.1:8500", client, "serfHealth", ""},
		{"", client, "serfHealth", ""},
		{"127.0.0.1:8500", server, "", "is a server"},
		{"10.0.0.5:8500", client, "", "not on this host"},
	} {
		checks, why := autoChecks(tc.address, tc.self)
		if strings.Join(checks, ",") != tc.want || !strings.Contains(why, tc.why) || (tc.why == "") != (why == "") {
			t.Errorf("%q server=%v: %v %q, want [%s] %q", tc.address, tc.self.Server, checks, why, tc.want, tc.why)
		}
		if checks == nil {
			t.Errorf("%q: nil checks (nil means undecided; TTL only is an empty list)", tc.address)
		}
	}
}

// Unset session_checks is automatic (nil); an empty list, in YAML or from
// the environment, is TTL only.
func TestSessionChecksUnsetIsAutomatic(t *testing.T) {
	for _, tc := range []struct {
		yaml string
		env  []string
		auto bool
	}{
		{minimalYAML, nil, true},
		{minimalYAML + "consul: {session_checks: []}\n", nil, false},
		{minimalYAML, []string{"PGMESH_CONSUL_SESSION_CHECKS="}, false},
		{minimalYAML + "consul: {session_checks: [serfHealth]}\n", nil, false},
	} {
		c, err := ParseConfig([]byte(tc.yaml), tc.env)
		if err != nil {
			t.Fatal(err)
		}
		if (c.Consul.SessionChecks == nil) != tc.auto {
			t.Errorf("%q %v: session_checks %#v, automatic %v", tc.yaml, tc.env, c.Consul.SessionChecks, tc.auto)
		}
	}
}
