package routing

import (
	"bufio"
	"context"
	"net"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
)

// fakeHAProxy answers the runtime API on a unix socket like HAProxy does in
// non-interactive mode: one command, one answer, close.
type fakeHAProxy struct {
	path  string
	state string
	mu    sync.Mutex
	cmds  []string
}

func startFakeHAProxy(t *testing.T, state string) *fakeHAProxy {
	t.Helper()
	f := &fakeHAProxy{path: filepath.Join(t.TempDir(), "admin.sock"), state: state}
	ln, err := net.Listen("unix", f.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			line, _ := bufio.NewReader(c).ReadString('\n')
			line = strings.TrimSpace(line)
			if line == "show servers state" {
				c.Write([]byte(f.state))
			} else {
				f.mu.Lock()
				f.cmds = append(f.cmds, line)
				f.mu.Unlock()
				c.Write([]byte("\n"))
			}
			c.Close()
		}
	}()
	return f
}

func (f *fakeHAProxy) commands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := append([]string(nil), f.cmds...)
	f.cmds = nil
	return out
}

// serversState lists n1-a (running) and n1-b (stopped) in the primary
// backends and in read_replicas, which the hook must not touch.
const serversState = `1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 write 1 n1.n1-a 127.0.0.1 2 0 1 1 10 6 3 4 6 0 0 0 - 5432 - 0 8008 127.0.0.1 - 0
3 write 2 n1.n1-b 127.0.0.1 0 0 1 1 10 6 3 4 6 0 0 0 - 5433 - 0 8009 127.0.0.1 - 0
5 read_replicas 1 n1.n1-a 127.0.0.1 0 0 1 1 10 6 3 4 6 0 0 0 - 5432 - 0 8008 127.0.0.1 - 0
5 read_replicas 2 n1.n1-b 127.0.0.1 2 0 1 1 10 6 3 4 6 0 0 0 - 5433 - 0 8009 127.0.0.1 - 0
7 group_n1 1 n1.n1-a 127.0.0.1 2 0 1 1 10 6 3 4 6 0 0 0 - 5432 - 0 8008 127.0.0.1 - 0
7 group_n1 2 n1.n1-b 127.0.0.1 0 0 1 1 10 6 3 4 6 0 0 0 - 5433 - 0 8009 127.0.0.1 - 0
`

func TestHAProxyHookOnFailover(t *testing.T) {
	fake := startFakeHAProxy(t, serversState)
	r := newRenderer(t, Entry{Template: "builtin:haproxy.cfg.tmpl", Destination: filepath.Join(t.TempDir(), "h.cfg"), HAProxySocket: fake.path})
	e := r.entries[0]
	ctx := context.Background()
	before := []fixture{
		{group: "n1", name: "n1-a", role: "primary", leader: true, kv: true, service: "primary", healthy: true},
		{group: "n1", name: "n1-b", role: "replica", kv: true, service: "replica", healthy: true},
	}
	v, es := views(before, nil)
	r.hook(ctx, e, BuildMesh(v, es, "n1"))
	if c := fake.commands(); len(c) != 0 {
		t.Fatalf("first mesh sent %v", c)
	}

	// The leader's check flaps while it still holds the key: nothing.
	flap := append([]fixture(nil), before...)
	flap[0].healthy = false
	v, es = views(flap, nil)
	r.hook(ctx, e, BuildMesh(v, es, "n1"))
	if c := fake.commands(); len(c) != 0 {
		t.Fatalf("check flap sent %v", c)
	}
	// It recovers: marked up again where HAProxy has it down (nowhere).
	v, es = views(before, nil)
	r.hook(ctx, e, BuildMesh(v, es, "n1"))
	if c := fake.commands(); len(c) != 0 {
		t.Fatalf("recovery sent %v", c)
	}

	// n1-a's host dies: its checks fail first while the leader key is
	// still held (nothing is sent, HAProxy's checks see it too) …
	flap[0].kv = false
	v, es = views(flap, nil)
	r.hook(ctx, e, BuildMesh(v, es, "n1"))
	if c := fake.commands(); len(c) != 0 {
		t.Fatalf("dying leader sent %v", c)
	}
	// … then the key moves: n1-b leads and passes; n1-a is marked down
	// (where HAProxy still has it up) and its sessions are shut.
	after := []fixture{
		{group: "n1", name: "n1-a", role: "primary", service: "primary", healthy: false},
		{group: "n1", name: "n1-b", role: "primary", leader: true, kv: true, service: "primary", healthy: true},
	}
	v, es = views(after, nil)
	r.hook(ctx, e, BuildMesh(v, es, "n1"))
	want := []string{
		"set server write/n1.n1-a health down",
		"shutdown sessions server write/n1.n1-a",
		"set server write/n1.n1-b health up",
		"set server group_n1/n1.n1-a health down",
		"shutdown sessions server group_n1/n1.n1-a",
		"set server group_n1/n1.n1-b health up",
	}
	if got := fake.commands(); !reflect.DeepEqual(got, want) {
		t.Fatalf("commands\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestHAProxyHookSocketDownIsNotFatal(t *testing.T) {
	r := newRenderer(t, Entry{Template: "builtin:haproxy.cfg.tmpl", Destination: filepath.Join(t.TempDir(), "h.cfg"),
		HAProxySocket: filepath.Join(t.TempDir(), "nothing.sock")})
	e := r.entries[0]
	r.hook(context.Background(), e, standardMesh("n1"))
	fs := standardFixtures()
	fs[0].leader = false
	fs[1].leader = true
	fs[1].role = "primary"
	fs[1].service = "primary"
	v, es := views(fs, nil)
	r.hook(context.Background(), e, BuildMesh(v, es, "n1")) // logs, does not panic or block
	if e.primaries["n1"] != "n1-b" {
		t.Fatalf("state not advanced: %v", e.primaries)
	}
}

func TestParseServersState(t *testing.T) {
	s := parseServersState(serversState)
	if len(s) != 6 || s[0] != (haproxyServer{backend: "write", server: "n1.n1-a", opState: "2"}) {
		t.Fatalf("%+v", s)
	}
	if !matchAny(DefaultHAProxyBackends, "group_x") || matchAny(DefaultHAProxyBackends, "read_replicas") {
		t.Fatal("default backend patterns")
	}
}
