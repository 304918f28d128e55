package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const minimalYAML = `
cluster: demo
group: n1
name: n1-a
postgresql:
  data_dir: /var/lib/pgmesh/n1-a
  superuser: {username: postgres, password: s}
  replication: {username: replicator, password: r}
`

func TestParseConfigDefaultsAndEnv(t *testing.T) {
	cfg, err := ParseConfig([]byte(minimalYAML+`
bootstrap:
  dcs:
    ttl: 30
    loop_wait: 5s
    retry_timeout: 10
`), []string{
		"PGMESH_POSTGRESQL_PORT=6543",
		"PGMESH_TAGS_NOFAILOVER=true",
		"PGMESH_BOOTSTRAP_DCS_LOOP_WAIT=3s",
		"PGMESH_POSTGRESQL_PARAMETERS_WORK_MEM=64MB",
		"PGMESH_CONSUL_SESSION_CHECKS=",
		"UNRELATED=1",
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.PostgreSQL.Port != 6543 || !cfg.Tags.NoFailover {
		t.Fatalf("env overrides not applied: port %d nofailover %v", cfg.PostgreSQL.Port, cfg.Tags.NoFailover)
	}
	if cfg.PostgreSQL.Parameters["work_mem"] != "64MB" {
		t.Fatalf("map override: %v", cfg.PostgreSQL.Parameters)
	}
	dyn := cfg.Bootstrap.DCS.ClusterConfig()
	if dyn.TTL.D() != 30*time.Second || dyn.LoopWait.D() != 3*time.Second || dyn.RetryTimeout.D() != 10*time.Second {
		t.Fatalf("dcs: %+v", dyn)
	}
	if cfg.RestAPI.Listen != "127.0.0.1:8008" || cfg.PostgreSQL.BinDir == "" || cfg.Consul.Prefix != "pgmesh" {
		t.Fatalf("defaults: %+v", cfg)
	}
}

func TestParseConfigErrorsNameTheField(t *testing.T) {
	cases := []struct {
		yaml  string
		env   []string
		field string
	}{
		{yaml: strings.Replace(minimalYAML, "name: n1-a", "name: n1 a", 1), field: "name"},
		{yaml: strings.Replace(minimalYAML, "cluster: demo", "", 1), field: "cluster"},
		{yaml: strings.Replace(minimalYAML, "data_dir: /var/lib/pgmesh/n1-a", "data_dir: relative/dir", 1), field: "postgresql.data_dir"},
		{yaml: strings.Replace(minimalYAML, "password: r", "password: \"\"", 1), field: "postgresql.replication.password"},
		{yaml: minimalYAML + "bootstrap: {dcs: {ttl: 10, loop_wait: 5, retry_timeout: 5}}\n", field: "timing rule"},
		{yaml: minimalYAML + "restapi: {listen: nonsense}\n", field: "restapi.listen"},
		{yaml: minimalYAML + "unknown_section: 1\n", field: "unknown_section"},
		{yaml: minimalYAML + "tags: {failover_priority: -1}\n", field: "tags.failover_priority"},
		{yaml: minimalYAML, env: []string{"PGMESH_POSTGRESQL_PORT=abc"}, field: "postgresql_port"},
		{yaml: minimalYAML, env: []string{"PGMESH_TAGS_NOFAILOVER=maybe"}, field: "tags_nofailover"},
		{yaml: minimalYAML + "bootstrap: {dcs: {ttl: banana}}\n", field: "duration"},
		{yaml: minimalYAML + "consul: {session_checks: [liveness]}\nbootstrap: {dcs: {lock_delay: 500ms}}\n", field: "lock_delay"},
		{yaml: minimalYAML + "log: {format: xml}\n", field: "log.format"},
	}
	for _, tc := range cases {
		_, err := ParseConfig([]byte(tc.yaml), tc.env)
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("want an error naming %q, got %v", tc.field, err)
		}
	}
}

// FuzzParseConfig: any bytes give a config or an error, never a panic.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(minimalYAML), "PGMESH_POSTGRESQL_PORT=1")
	f.Add([]byte("cluster: [\n"), "")
	f.Add([]byte(minimalYAML+"bootstrap: {dcs: {ttl: 1e400}}"), "PGMESH_BOOTSTRAP_DCS_TTL=-5")
	f.Fuzz(func(t *testing.T, data []byte, env string) {
		cfg, err := ParseConfig(data, strings.Split(env, "\n"))
		if err == nil && cfg.Validate() != nil {
			t.Fatal("ParseConfig returned a config that does not validate")
		}
	})
}

func TestPrimaryStartTimeoutFromYAMLAndEnv(t *testing.T) {
	base := minimalYAML
	cfg, err := ParseConfig([]byte(base), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Bootstrap.DCS.ClusterConfig().StartTimeout(); got != 300*time.Second {
		t.Fatalf("unset primary_start_timeout = %s, want the 300s default", got)
	}
	cfg, err = ParseConfig([]byte(base+"bootstrap:\n  dcs:\n    primary_start_timeout: 0s\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Bootstrap.DCS.ClusterConfig().StartTimeout(); got != 0 {
		t.Fatalf("primary_start_timeout: 0s gave %s, want 0 (fail over at once)", got)
	}
	cfg, err = ParseConfig([]byte(base), []string{"PGMESH_BOOTSTRAP_DCS_PRIMARY_START_TIMEOUT=45s"})
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Bootstrap.DCS.ClusterConfig().StartTimeout(); got != 45*time.Second {
		t.Fatalf("from the environment: %s, want 45s", got)
	}
	if _, err := ParseConfig([]byte(base+"bootstrap:\n  dcs:\n    primary_start_timeout: 2h\n"), nil); err == nil || !strings.Contains(err.Error(), "primary_start_timeout") {
		t.Fatalf("2h: want an error naming primary_start_timeout, got %v", err)
	}
}

func TestRestAPISecrets(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "u"), []byte("ops\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "p"), []byte("pw\r\n"), 0o600)
	cfg, err := ParseConfig([]byte(minimalYAML+"restapi: {listen: 0.0.0.0:8008, username_file: "+filepath.Join(dir, "u")+", password_file: "+filepath.Join(dir, "p")+"}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.RestAPI.Username != "ops" || cfg.RestAPI.Password != "pw" {
		t.Fatalf("credentials from files: %q %q", cfg.RestAPI.Username, cfg.RestAPI.Password)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"restapi: {username: a, username_file: " + filepath.Join(dir, "u") + ", password: b}\n", "restapi.username and restapi.username_file are both set"},
		{"restapi: {username: a, password_file: /nonexistent/p}\n", "restapi.password_file"},
		{"restapi: {allowlist: [10.0.0.0/8, nonsense]}\n", "restapi.allowlist"},
		{"restapi: {certfile: " + filepath.Join(dir, "u") + "}\n", "restapi.certfile and restapi.keyfile go together"},
		{"restapi: {certfile: /nonexistent/c, keyfile: " + filepath.Join(dir, "u") + "}\n", "restapi.certfile"},
		{"restapi: {certfile: " + filepath.Join(dir, "u") + ", keyfile: " + filepath.Join(dir, "p") + ", verify_client: sometimes}\n", "restapi.verify_client"},
		{"restapi: {verify_client: optional}\n", "need restapi.certfile"},
		{"restapi: {cafile: " + filepath.Join(dir, "u") + "}\n", "need restapi.certfile"},
	} {
		if _, err := ParseConfig([]byte(minimalYAML+tc.yaml), nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error naming %q", tc.yaml, err, tc.want)
		}
	}
	for listen, beyond := range map[string]bool{"127.0.0.1:8008": false, "localhost:8008": false, "[::1]:8008": false, "0.0.0.0:8008": true, ":8008": true, "10.1.2.3:8008": true} {
		c := &Config{RestAPI: RestAPIConfig{Listen: listen}}
		if got := c.ListensBeyondLoopback(); got != beyond {
			t.Errorf("%s: beyond loopback %v, want %v", listen, got, beyond)
		}
	}
}

func TestCallbacksConfig(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "cb.sh")
	os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755)
	plain := filepath.Join(dir, "plain.sh")
	os.WriteFile(plain, []byte("#!/bin/sh\n"), 0o644)

	cfg, err := ParseConfig([]byte(minimalYAML), nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.PostgreSQL.CallbacksTimeout.D() != DefaultCallbacksTimeout {
		t.Fatalf("default callbacks_timeout %s", cfg.PostgreSQL.CallbacksTimeout)
	}
	cfg, err = ParseConfig([]byte(minimalYAML+"  callbacks:\n    on_role_change: "+exe+" --vip 10.0.0.5\n    on_start: "+exe+"\n  callbacks_timeout: 15s\n"),
		[]string{"PGMESH_POSTGRESQL_CALLBACKS_ON_STOP=" + exe})
	if err != nil {
		t.Fatal(err)
	}
	cb := cfg.PostgreSQL.Callbacks
	if cb.OnRoleChange != exe+" --vip 10.0.0.5" || cb.OnStart != exe || cb.OnStop != exe || cb.OnReload != "" || cfg.PostgreSQL.CallbacksTimeout.D() != 15*time.Second {
		t.Fatalf("callbacks %+v timeout %s", cb, cfg.PostgreSQL.CallbacksTimeout)
	}

	for _, tc := range []struct{ yaml, want string }{
		{"  callbacks: {on_role_change: cb.sh}\n", `postgresql.callbacks.on_role_change: "cb.sh" is not an absolute path`},
		{"  callbacks: {on_start: " + filepath.Join(dir, "missing.sh") + "}\n", "postgresql.callbacks.on_start: stat"},
		{"  callbacks: {on_stop: " + plain + "}\n", "postgresql.callbacks.on_stop: " + plain + " is not executable"},
		{"  callbacks: {on_reload: " + dir + "}\n", "postgresql.callbacks.on_reload: " + dir + " is not a regular file"},
		{"  callbacks: {on_restart: \"" + exe + " 'open\"}\n", "postgresql.callbacks.on_restart: unterminated single quote"},
		{"  callbacks_timeout: -1s\n", "postgresql.callbacks_timeout"},
		{"  callbacks: {on_promote: " + exe + "}\n", "on_promote"},
	} {
		if _, err := ParseConfig([]byte(minimalYAML+tc.yaml), nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error with %q", tc.yaml, err, tc.want)
		}
	}
	if _, err := ParseConfig([]byte(minimalYAML), []string{"PGMESH_POSTGRESQL_CALLBACKS_ON_ROLE_CHANGE=relative/cb"}); err == nil || !strings.Contains(err.Error(), "postgresql.callbacks.on_role_change") {
		t.Errorf("from the environment: %v", err)
	}
}
