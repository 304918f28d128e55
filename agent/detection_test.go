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
