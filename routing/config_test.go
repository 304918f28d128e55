package routing

import (
	"os"
	"strings"
	"testing"
	"text/template"
	"time"
)

const sampleConfig = `
cluster: mesh1
local_group: n1
consul: {address: 127.0.0.1:8500, token: t0k, prefix: pgm}
debounce: 100ms
max_delay: 3s
log: {level: debug, format: console}
data:
  bind: 127.0.0.1
  max_lag: 1MB
  ports: {write: 6000, read: 6001}
  vars: {a: "1", b: "2"}
templates:
  - template: builtin:haproxy.cfg.tmpl
    destination: /tmp/h.cfg
    perms: 0640
    validate: haproxy -c -f {{file}}
    reload: kill -USR2 1
    haproxy_socket: /run/haproxy/admin.sock
    data:
      ports: {write: 7000}
      vars: {b: "3"}
  - template: /etc/pgmesh/x.tmpl
    destination: /tmp/x
    perms: "600"
`

func TestParseConfig(t *testing.T) {
	cfg, err := ParseConfig([]byte(sampleConfig))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Cluster != "mesh1" || cfg.LocalGroup != "n1" || cfg.Consul.Token != "t0k" || cfg.Consul.Prefix != "pgm" || cfg.Log.Format != "console" {
		t.Fatalf("%+v", cfg)
	}
	if d, m := cfg.DebounceDurations(); d != 100*time.Millisecond || m != 3*time.Second {
		t.Fatalf("durations %s %s", d, m)
	}
	es, err := cfg.Entries()
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 2 || es[0].Perms != 0o640 || es[1].Perms != 0o600 || es[0].Validate != "haproxy -c -f {{file}}" || es[0].HAProxySocket == "" {
		t.Fatalf("%+v", es)
	}
	rd, err := es[0].Data.Over(cfg.Data).Resolve()
	if err != nil {
		t.Fatal(err)
	}
	if rd.Ports != (Ports{Write: 7000, Read: 6001, Stats: DefaultStatsPort, GroupBase: DefaultGroupBasePort}) ||
		rd.Bind != "127.0.0.1" || rd.MaxLag != 1<<20 || rd.Vars["a"] != "1" || rd.Vars["b"] != "3" || rd.DBName != "postgres" || rd.ConnectTimeout != 2 {
		t.Fatalf("data %+v", rd)
	}
}

func TestParseConfigErrors(t *testing.T) {
	cases := map[string]string{
		"clusterr: x\n":                                                    "clusterr",
		"cluster: 'bad name'\n":                                            "cluster",
		"data: {max_lag: lots}\n":                                          "max_lag",
		"data: {ports: {write: 70000}}\n":                                  "ports.write",
		"templates: [{template: x}]\n":                                     "destination",
		"templates: [{destination: x}]\n":                                  "template",
		"templates: [{template: x, destination: y, perms: rw}]\n":          "perms",
		"templates: [{template: x, destination: y, data: {max_lag: q}}]\n": "templates[0]",
		"debounce: soon\n":                                                 "duration",
	}
	for in, want := range cases {
		_, err := ParseConfig([]byte(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err %v, want one naming %q", in, err, want)
		}
	}
	if _, err := ParseConfig(nil); err != nil {
		t.Fatalf("empty config: %v", err)
	}
	if _, err := LoadConfig("/nonexistent/render.yml"); err == nil {
		t.Fatal("missing file accepted")
	}
}

func TestFuncMap(t *testing.T) {
	os.Setenv("PGMESH_TEST_FUNC", "fromenv")
	defer os.Unsetenv("PGMESH_TEST_FUNC")
	cases := map[string]string{
		`{{join "," .Hosts}}`:                "a,b",
		`{{join ":" .Ports}}`:                "1:2",
		`{{.Name | replace "-" "_"}}`:        "my_name x",
		`{{lower "AbC"}}|{{upper "x"}}`:      "abc|X",
		`{{.Empty | default "dflt"}}`:        "dflt",
		`{{.Name | default "dflt"}}`:         "my-name x",
		`{{.Zero | default 7}}`:              "7",
		`{{.NoList | default "none"}}`:       "none",
		`{{mb 16}}`:                          "16777216",
		`{{add 5100 2}}`:                     "5102",
		`{{sanitize .Name}}|{{sanitize ""}}`: "my-name_x|_",
		`{{env "PGMESH_TEST_FUNC"}}`:         "fromenv",
	}
	data := map[string]any{"Hosts": []string{"a", "b"}, "Ports": []int{1, 2}, "Name": "my-name x", "Empty": "", "Zero": 0, "NoList": []string{}}
	for src, want := range cases {
		tm, err := template.New("t").Funcs(FuncMap()).Parse(src)
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		var b strings.Builder
		if err := tm.Execute(&b, data); err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		if b.String() != want {
			t.Errorf("%s = %q, want %q", src, b.String(), want)
		}
	}
	if _, err := joinAny(",", 5); err == nil {
		t.Fatal("join of a non-list")
	}
}
