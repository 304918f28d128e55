package main

import (
	"reflect"
	"strings"
	"testing"
)

func TestInterspersed(t *testing.T) {
	app := newApp()
	for _, c := range []struct{ in, want string }{
		{"pgmesh restart n1 --force", "pgmesh restart --force n1"},
		{"pgmesh --cluster c restart n1 -g g1 --timeout 1m", "pgmesh --cluster c restart -g g1 --timeout 1m n1"},
		{"pgmesh restart --group g1 n1", "pgmesh restart --group g1 n1"},
		{"pgmesh config set ttl=5s --force loop_wait=1s", "pgmesh config set --force ttl=5s loop_wait=1s"},
		{"pgmesh config set --cluster=x ttl=5s", "pgmesh config set --cluster=x ttl=5s"},
		{"pgmesh reinit n1 -- --weird", "pgmesh reinit n1 -- --weird"},
		{"pgmesh restart n1 --generate-bash-completion", "pgmesh restart n1 --generate-bash-completion"},
		{"pgmesh status -o json", "pgmesh status -o json"},
		{"pgmesh nosuch a --b", "pgmesh nosuch a --b"},
	} {
		got := strings.Join(interspersed(app, strings.Fields(c.in)), " ")
		if got != c.want {
			t.Errorf("%s\n got %s\nwant %s", c.in, got, c.want)
		}
	}
	if got := interspersed(app, []string{"pgmesh"}); !reflect.DeepEqual(got, []string{"pgmesh"}) {
		t.Errorf("bare: %v", got)
	}
}
