package templates_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/pgmesh/pgmesh/internal/certgen"
	"github.com/pgmesh/pgmesh/routing"
	"github.com/pgmesh/pgmesh/templates"
)

// testMesh: local group n2 of three groups; n1's primary is a (healthy),
// n2's primary b, n3 has no writable primary (failover in progress).
func testMesh() *routing.Mesh {
	mem := func(g, n, role string, port int, leader, healthy bool) *routing.Member {
		return &routing.Member{Name: n, Group: g, Role: role, ServiceRole: role, Host: "127.0.0.1", Port: port,
			APIURL: "http://127.0.0.1:" + strings.TrimPrefix(n, g+"-"), APIHost: "127.0.0.1", APIPort: 8000 + port%100,
			Healthy: healthy, Leader: leader, InKV: true, Registered: true}
	}
	return &routing.Mesh{Cluster: "mesh1", LocalGroup: "n2", Groups: []*routing.Group{
		{Name: "n1", Leader: "n1-a", Members: routing.Members{mem("n1", "n1-a", "primary", 5401, true, true), mem("n1", "n1-b", "replica", 5402, false, true)}},
		{Name: "n2", Local: true, Leader: "n2-b", Members: routing.Members{mem("n2", "n2-a", "replica", 5411, false, true), mem("n2", "n2-b", "primary", 5412, true, true)}},
		{Name: "n3", Members: routing.Members{mem("n3", "n3-a", "replica", 5421, false, false)}},
	}}
}

func render(t *testing.T, name string, m *routing.Mesh, d routing.DataConfig) string {
	t.Helper()
	tmpl, err := routing.LoadTemplate("builtin:" + name)
	if err != nil {
		t.Fatal(err)
	}
	data, err := d.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	data.Mesh, data.Cluster = m, m.Cluster
	out, err := routing.Execute(tmpl, &data)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func TestNames(t *testing.T) {
	want := []string{"haproxy.cfg.tmpl", "haproxy.ctmpl", "pg_service.conf.tmpl"}
	if got := templates.Names(); !reflect.DeepEqual(got, want) {
		t.Fatalf("names %v", got)
	}
}

// section returns the lines of the HAProxy section that starts with head,
// up to the next blank line.
func section(cfg, head string) string {
	i := strings.Index(cfg, "\n"+head+"\n")
	if i < 0 {
		return ""
	}
	rest := cfg[i+1:]
	if j := strings.Index(rest, "\n\n"); j >= 0 {
		rest = rest[:j]
	}
	return rest
}

func TestHAProxyTemplate(t *testing.T) {
	cfg := render(t, "haproxy.cfg.tmpl", testMesh(), routing.DataConfig{
		Bind: "127.0.0.1", Socket: "/tmp/x.sock", MaxLag: "1MB",
		Ports: routing.PortConfig{Write: 15000, Read: 15001, Stats: 17000, GroupBase: 15100},
	})
	for _, want := range []string{
		"stats socket /tmp/x.sock mode 600 level admin",
		"default-server inter 1s fastinter 250ms fall 2 rise 1 on-marked-down shutdown-sessions",
		"timeout connect 2s", "timeout check 1s", "mode tcp",
		"use_backend read_replicas if { nbsrv(read_replicas) gt 0 }",
		"default_backend read_primaries",
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("missing %q", want)
		}
	}
	write := section(cfg, "listen write")
	wantWrite := []string{
		"listen write",
		"    bind 127.0.0.1:15000",
		"    balance first",
		"    option httpchk GET /primary",
		"    http-check expect status 200",
		// local group first as normal servers, then every other member as backup
		"    server n2.n2-a 127.0.0.1:5411 check port 8011 addr 127.0.0.1",
		"    server n2.n2-b 127.0.0.1:5412 check port 8012 addr 127.0.0.1",
		"    server n1.n1-a 127.0.0.1:5401 check port 8001 addr 127.0.0.1 backup",
		"    server n1.n1-b 127.0.0.1:5402 check port 8002 addr 127.0.0.1 backup",
		"    server n3.n3-a 127.0.0.1:5421 check port 8021 addr 127.0.0.1 backup",
	}
	if got := strings.Split(write, "\n"); !reflect.DeepEqual(got, wantWrite) {
		t.Fatalf("write listener:\n%s", write)
	}
	if rr := section(cfg, "backend read_replicas"); !strings.Contains(rr, "option httpchk GET /replica?lag=1048576") || strings.Count(rr, "server ") != 5 {
		t.Fatalf("read_replicas:\n%s", rr)
	}
	if rp := section(cfg, "backend read_primaries"); !strings.Contains(rp, "GET /primary") || strings.Count(rp, " backup") != 3 {
		t.Fatalf("read_primaries:\n%s", rp)
	}
	// Group listeners by name order: n1 5100+0, n2 +1, n3 +2.
	for i, g := range []string{"n1", "n2", "n3"} {
		s := section(cfg, "listen group_"+g)
		if !strings.Contains(s, "bind 127.0.0.1:1510"+string(rune('0'+i))) || strings.Contains(s, "backup") {
			t.Fatalf("group %s:\n%s", g, s)
		}
	}
	haproxyCheck(t, cfg)
}

func TestHAProxyTemplateEdgeCases(t *testing.T) {
	// An empty mesh, and a mesh without a local group, still give a
	// configuration HAProxy accepts.
	haproxyCheck(t, render(t, "haproxy.cfg.tmpl", &routing.Mesh{Cluster: "empty"}, routing.DataConfig{}))
	m := testMesh()
	m.LocalGroup = ""
	for _, g := range m.Groups {
		g.Local = false
	}
	cfg := render(t, "haproxy.cfg.tmpl", m, routing.DataConfig{Vars: map[string]string{"log": "stdout format raw local0"}})
	if !strings.Contains(cfg, "server n1.n1-a 127.0.0.1:5401 check port 8001 addr 127.0.0.1\n") || !strings.Contains(cfg, "n2.n2-b 127.0.0.1:5412 check port 8012 addr 127.0.0.1 backup") {
		t.Fatalf("without a local group the first group by name is preferred:\n%s", cfg)
	}
	if !strings.Contains(cfg, "    log stdout format raw local0") || strings.Contains(cfg, "stats socket") {
		t.Fatalf("log/socket:\n%s", cfg)
	}
	haproxyCheck(t, cfg)
}

// haproxyCheck runs `haproxy -c` on cfg when HAProxy is installed.
func haproxyCheck(t *testing.T, cfg string) {
	t.Helper()
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		t.Log("haproxy not installed; syntax not checked")
		return
	}
	p := filepath.Join(t.TempDir(), "haproxy.cfg")
	os.WriteFile(p, []byte(cfg), 0o644)
	out, err := exec.Command(bin, "-c", "-f", p).CombinedOutput()
	if err != nil {
		t.Fatalf("haproxy -c: %v\n%s\n---\n%s", err, out, cfg)
	}
	if strings.Contains(string(out), "WARNING") {
		t.Errorf("haproxy -c warns:\n%s", out)
	}
}

func TestPgServiceTemplate(t *testing.T) {
	out := render(t, "pg_service.conf.tmpl", testMesh(), routing.DataConfig{DBName: "app", DBUser: "appuser", SSLMode: "require", MaxLag: "1MB"})
	want := map[string][]string{
		"[mesh1-n1]": {"host=127.0.0.1,127.0.0.1", "port=5401,5402", "target_session_attrs=read-write", "dbname=app", "user=appuser", "sslmode=require", "connect_timeout=2"},
		// primary first
		"[mesh1-n2]":           {"port=5412,5411", "target_session_attrs=read-write", "# primary: n2-b"},
		"[mesh1-n3]":           {"port=5421", "# no writable primary at render time"},
		"[mesh1-any-writable]": {"port=5412,5401,5411,5402,5421", "target_session_attrs=read-write"},
		"[mesh1-read]":         {"port=5411,5402,5412,5401,5421", "target_session_attrs=prefer-standby"},
	}
	for head, lines := range want {
		s := section(out, head)
		for _, l := range lines {
			if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(l) + `$`).MatchString(s) {
				t.Errorf("%s lacks %q:\n%s", head, l, s)
			}
		}
	}
	if strings.Contains(out, "password") {
		t.Fatal("a password in the service file")
	}
}

// TestConsulTemplateParses checks haproxy.ctmpl is valid template syntax
// with consul-template's function names (the integration test runs the real
// consul-template).
func TestConsulTemplateParses(t *testing.T) {
	b, err := templates.FS.ReadFile("haproxy.ctmpl")
	if err != nil {
		t.Fatal(err)
	}
	stub := func(...any) any { return nil }
	funcs := template.FuncMap{"env": stub, "service": stub, "scratch": stub, "regexReplaceAll": stub, "parseInt": stub, "add": stub, "regexMatch": stub}
	if _, err := template.New("haproxy.ctmpl").Funcs(funcs).Parse(string(b)); err != nil {
		t.Fatal(err)
	}
	for _, env := range []string{"PGMESH_CLUSTER", "PGMESH_LOCAL_GROUP", "PGMESH_WRITE_PORT", "PGMESH_READ_PORT", "PGMESH_STATS_PORT", "PGMESH_GROUP_BASE_PORT", "PGMESH_MAX_LAG", "PGMESH_HAPROXY_SOCKET", "PGMESH_BIND", "PGMESH_API_CA_FILE", "PGMESH_API_CERT"} {
		if strings.Count(string(b), env) < 2 {
			t.Errorf("%s not documented and used", env)
		}
	}
}

func TestHAProxyTemplateChecksHTTPSAgents(t *testing.T) {
	dir := t.TempDir()
	ca, err := certgen.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, ca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	pair, err := ca.Issue("haproxy", nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := pair.WriteFiles(dir, "haproxy"); err != nil {
		t.Fatal(err)
	}
	m := testMesh()
	m.Groups[0].Members[0].APIURL = "https://127.0.0.1:8001"
	m.Groups[0].Members[0].APITLS = true
	crt := filepath.Join(dir, "haproxy.pem")
	cfg := render(t, "haproxy.cfg.tmpl", m, routing.DataConfig{APICAFile: caFile, APICert: crt})
	want := "server n1.n1-a 127.0.0.1:5401 check port 8001 addr 127.0.0.1 check-ssl verify required ca-file " + caFile + " crt " + crt
	if !strings.Contains(cfg, want) {
		t.Fatalf("an https member is not checked over verified TLS; want %q in:\n%s", want, cfg)
	}
	if strings.Contains(cfg, "n1.n1-b 127.0.0.1:5402 check port 8002 addr 127.0.0.1 check-ssl") {
		t.Fatal("an http member got check-ssl")
	}
	haproxyCheck(t, cfg)
	// Without a CA file HAProxy verifies against the system's trust store.
	cfg = render(t, "haproxy.cfg.tmpl", m, routing.DataConfig{})
	if !strings.Contains(cfg, "check-ssl verify required ca-file @system-ca\n") {
		t.Fatalf("default CA:\n%s", cfg)
	}
}

// TestTemplatesAcrossDatacenters: with groups in three datacenters (local
// dc1; dc3 nearer than dc2) the write listener's backups and the services'
// host lists go nearest datacenter first, and each group names its
// datacenter.
func TestTemplatesAcrossDatacenters(t *testing.T) {
	m := testMesh()
	m.LocalGroup = ""
	m.Groups[1].Local = false
	m.Datacenter = "dc1"
	m.Groups[0].Datacenter, m.Groups[1].Datacenter, m.Groups[2].Datacenter = "dc2", "dc1", "dc3"
	m.Datacenters = []routing.Datacenter{{Name: "dc1", Local: true, Reachable: true},
		{Name: "dc3", RTT: 20 * time.Millisecond, HasRTT: true, Reachable: true},
		{Name: "dc2", RTT: 80 * time.Millisecond, HasRTT: true, Reachable: true}}
	// n3 (dc3) gets a writable primary so the order of primaries shows.
	m.Groups[2].Leader = "n3-a"
	m.Groups[2].Members[0].Leader, m.Groups[2].Members[0].Role, m.Groups[2].Members[0].ServiceRole, m.Groups[2].Members[0].Healthy = true, "primary", "primary", true

	cfg := render(t, "haproxy.cfg.tmpl", m, routing.DataConfig{Bind: "127.0.0.1"})
	if !strings.Contains(cfg, "# Datacenters, nearest first: dc1 (local), dc3, dc2.") {
		t.Fatalf("no datacenter line:\n%s", cfg)
	}
	write := section(cfg, "listen write")
	var servers []string
	for _, l := range strings.Split(write, "\n") {
		if f := strings.Fields(l); len(f) > 1 && (f[0] == "server" || f[0] == "#") {
			servers = append(servers, strings.Join(f[:2], " ")+map[bool]string{true: " backup", false: ""}[strings.HasSuffix(l, " backup")])
		}
	}
	want := []string{"# group", "server n2.n2-a", "server n2.n2-b", "# group", "server n3.n3-a backup", "# group", "server n1.n1-a backup", "server n1.n1-b backup"}
	if !reflect.DeepEqual(servers, want) {
		t.Fatalf("write listener %v, want %v:\n%s", servers, want, write)
	}
	for _, l := range []string{"    # group n2, datacenter dc1", "    # group n3, datacenter dc3", "    # group n1, datacenter dc2", "# Group n3 (datacenter dc3): its primary only."} {
		if !strings.Contains(cfg, l+"\n") {
			t.Errorf("no %q", l)
		}
	}
	haproxyCheck(t, cfg)

	svc := render(t, "pg_service.conf.tmpl", m, routing.DataConfig{})
	if s := section(svc, "[mesh1-any-writable]"); !strings.Contains(s, "port=5412,5421,5401,5411,5402\n") {
		t.Fatalf("any-writable not nearest first:\n%s", s)
	}
	if s := section(svc, "[mesh1-n3]"); !strings.Contains(s, "# primary: n3-a; datacenter dc3") {
		t.Fatalf("n3 service:\n%s", s)
	}

	// Read from one datacenter, nothing about datacenters is written.
	if out := render(t, "haproxy.cfg.tmpl", testMesh(), routing.DataConfig{}); strings.Contains(out, "atacenter") {
		t.Fatalf("single datacenter output mentions datacenters")
	}
}
