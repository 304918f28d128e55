package main

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/urfave/cli/v2"
)

func baseConfig() consulkv.ClusterConfig {
	return consulkv.ClusterConfig{
		Version: 1, TTL: consulkv.Duration(20 * time.Second), LoopWait: consulkv.Duration(2 * time.Second),
		RetryTimeout: consulkv.Duration(5 * time.Second), Parameters: map[string]string{"work_mem": "4MB"},
	}
}

func TestApplySet(t *testing.T) {
	cfg := baseConfig()
	orig := baseConfig()
	err := applySet(&cfg, []string{"ttl=30s", "loop_wait=1", "lock_delay=0", "maximum_lag_on_failover=16MB",
		"parameters.max_connections=200", "parameters.work_mem=", "failsafe_mode=true"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.TTL.D() != 30*time.Second || cfg.LoopWait.D() != time.Second || cfg.MaximumLagOnFailover != 16<<20 || !cfg.FailsafeOn() || cfg.FailsafeMode == nil {
		t.Errorf("applied: %+v", cfg)
	}
	if !reflect.DeepEqual(cfg.Parameters, map[string]string{"max_connections": "200"}) {
		t.Errorf("parameters %v", cfg.Parameters)
	}
	if orig.Parameters["work_mem"] != "4MB" {
		t.Error("applySet changed the caller's parameters map in place")
	}
	for _, bad := range []struct{ arg, want string }{
		{"ttl", "want key=value"},
		{"ttl=soon", "ttl: invalid duration"},
		{"loop_wait=0s", "loop_wait: must be positive"},
		{"pause=true", "pgmesh pause"},
		{"max_connections=10", `unknown key "max_connections"`},
		{"maximum_lag_on_failover=lots", "maximum_lag_on_failover"},
		{"failsafe_mode=maybe", `failsafe_mode: "maybe" is not true or false`},
	} {
		c := baseConfig()
		err := applySet(&c, []string{bad.arg})
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: error %v, want %q", bad.arg, err, bad.want)
		}
	}
	if err := applySet(&cfg, nil); err == nil {
		t.Error("no assignments accepted")
	}
	// primary_start_timeout: 0 is a value (fail over at once), empty resets.
	if err := applySet(&cfg, []string{"primary_start_timeout=0"}); err != nil || cfg.PrimaryStartTimeout == nil || cfg.StartTimeout() != 0 {
		t.Errorf("primary_start_timeout=0: err %v, timeout %v", err, cfg.PrimaryStartTimeout)
	}
	if err := applySet(&cfg, []string{"primary_start_timeout="}); err != nil || cfg.StartTimeout() != 300*time.Second {
		t.Errorf("primary_start_timeout= (reset): err %v, timeout %s", err, cfg.StartTimeout())
	}
	if err := applySet(&cfg, []string{"primary_start_timeout=soon"}); err == nil || !strings.Contains(err.Error(), "primary_start_timeout") {
		t.Errorf("primary_start_timeout=soon: error %v", err)
	}
}

func TestSetThenValidateNamesField(t *testing.T) {
	cfg := baseConfig()
	if err := applySet(&cfg, []string{"ttl=1s"}); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err == nil || !strings.HasPrefix(err.Error(), "ttl 1s") {
		t.Errorf("validate: %v", err)
	}
}

func TestConfigYAMLRoundTrip(t *testing.T) {
	cfg := baseConfig()
	cfg.PausedGroups = []string{"g2"}
	y := configYAML(cfg)
	for _, want := range []string{"ttl: 20s\n", "loop_wait: 2s\n", "lock_delay: 0s\n", "maximum_lag_on_failover: 1048576\n", "paused_groups:\n  - g2\n", "parameters:\n  work_mem: 4MB\n"} {
		if !strings.Contains(y, want) {
			t.Errorf("yaml lacks %q:\n%s", want, y)
		}
	}
	back, err := parseEdited([]byte("# comment\n" + y))
	if err != nil {
		t.Fatal(err)
	}
	if configYAML(back) != y {
		t.Errorf("round trip changed the config:\n%s\nvs\n%s", configYAML(back), y)
	}
}

func TestParseEditedErrors(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"ttl: 20s\nloop_wiat: 1s\n", "loop_wiat"},
		{"ttl: forever\n", "ttl: invalid duration"},
		{"# all comments\n\n", "empty"},
		{"maximum_lag_on_failover: -1\n", "maximum_lag_on_failover"},
		{"paused_groups: [\"no way\"]\n", "paused_groups"},
	} {
		_, err := parseEdited([]byte(c.in))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want it to name %q", c.in, err, c.want)
		}
	}
	// Numbers of seconds, as Patroni writes them, are accepted.
	cfg, err := parseEdited([]byte("ttl: 30\nloop_wait: 10\nparameters:\n  max_connections: 100\n"))
	if err != nil || cfg.TTL.D() != 30*time.Second || cfg.Parameters["max_connections"] != "100" {
		t.Errorf("numeric values: %+v %v", cfg, err)
	}
}

func TestLineDiff(t *testing.T) {
	a := "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\nk\n"
	b := "a\nb\nc\nd\nE\nf\ng\nh\ni\nj\nk\nl\n"
	got := lineDiff("stored", "new", a, b)
	want := `--- stored
+++ new
@@ -2,10 +2,11 @@
 b
 c
 d
-e
+E
 f
 g
 h
 i
 j
 k
+l
`
	if got != want {
		t.Errorf("diff:\n%s\nwant:\n%s", got, want)
	}
	if d := lineDiff("x", "y", a, a); d != "" {
		t.Errorf("identical texts diff: %q", d)
	}
	// Far-apart changes make separate hunks.
	long := strings.Repeat("x\n", 20)
	d := lineDiff("x", "y", "A\n"+long+"B\n", "a\n"+long+"b\n")
	if strings.Count(d, "@@ -") != 2 {
		t.Errorf("want two hunks:\n%s", d)
	}
}

func TestPauseChange(t *testing.T) {
	cfg := consulkv.ClusterConfig{Version: 1}
	steps := []struct {
		pause   bool
		group   string
		changed bool
		err     bool
		paused  bool
		groups  []string
	}{
		{true, "g2", true, false, false, []string{"g2"}},
		{true, "g1", true, false, false, []string{"g1", "g2"}},
		{true, "g1", false, false, false, []string{"g1", "g2"}},
		{false, "g1", true, false, false, []string{"g2"}},
		{false, "g3", false, false, false, []string{"g2"}},
		{true, "", true, false, true, []string{"g2"}},
		{false, "g2", false, true, true, []string{"g2"}},
		{false, "", true, false, false, nil},
		{false, "", false, false, false, nil},
	}
	for i, s := range steps {
		changed, msg, err := pauseChange(&cfg, s.pause, s.group)
		if changed != s.changed || (err != nil) != s.err || cfg.Paused != s.paused || !reflect.DeepEqual(cfg.PausedGroups, s.groups) {
			t.Fatalf("step %d (pause=%v group=%q): changed %v err %v msg %q -> paused %v groups %v",
				i, s.pause, s.group, changed, err, msg, cfg.Paused, cfg.PausedGroups)
		}
	}
}

// TestConnectionSettings checks precedence: a flag after the command, then
// before it, then the environment, then the default.
func TestConnectionSettings(t *testing.T) {
	run := func(env map[string]string, args ...string) map[string]string {
		for k, v := range env {
			t.Setenv(k, v)
		}
		got := map[string]string{}
		app := newApp()
		app.Writer, app.ErrWriter = &bytes.Buffer{}, &bytes.Buffer{}
		app.Commands = append(app.Commands, &cli.Command{
			Name: "probe", Flags: connFlags(),
			Action: func(c *cli.Context) error {
				for _, s := range connSettings {
					got[s.flag] = setting(c, s.flag)
				}
				return nil
			},
		})
		if err := app.Run(append([]string{"pgmesh"}, args...)); err != nil {
			t.Fatal(err)
		}
		return got
	}
	t.Setenv("CONSUL_HTTP_ADDR", "")
	t.Setenv("PGMESH_CLUSTER", "")
	t.Setenv("PGMESH_PREFIX", "")
	got := run(nil, "probe")
	if got["consul"] != "127.0.0.1:8500" || got["prefix"] != "pgmesh" || got["cluster"] != "" {
		t.Errorf("defaults: %v", got)
	}
	got = run(map[string]string{"PGMESH_CLUSTER": "env", "CONSUL_HTTP_ADDR": "envhost:1"}, "probe")
	if got["cluster"] != "env" || got["consul"] != "envhost:1" {
		t.Errorf("env: %v", got)
	}
	got = run(nil, "--cluster", "before", "probe")
	if got["cluster"] != "before" {
		t.Errorf("flag before the command: %v", got)
	}
	got = run(nil, "--cluster", "before", "probe", "--cluster", "after", "--prefix", "p2")
	if got["cluster"] != "after" || got["prefix"] != "p2" {
		t.Errorf("flag after the command: %v", got)
	}
}

func TestConfirmWithoutTerminal(t *testing.T) {
	old := stdinIsTerminal
	defer func() { stdinIsTerminal = old }()
	var answered error
	app := newApp()
	app.Writer = &bytes.Buffer{}
	app.Reader = strings.NewReader("y\n")
	app.Commands = append(app.Commands, &cli.Command{
		Name: "ask", Flags: []cli.Flag{forceFlag("")},
		Action: func(c *cli.Context) error { answered = confirm(c, "Really?"); return nil },
	})
	stdinIsTerminal = func() bool { return false }
	app.Run([]string{"pgmesh", "ask"})
	if answered == nil || exitCode(answered) != exitUsage || !strings.Contains(answered.Error(), "--force") {
		t.Errorf("pipe without --force: %v", answered)
	}
	app.Run([]string{"pgmesh", "ask", "--force"})
	if answered != nil {
		t.Errorf("--force: %v", answered)
	}
	stdinIsTerminal = func() bool { return true }
	app.Run([]string{"pgmesh", "ask"})
	if answered != nil {
		t.Errorf("answered y: %v", answered)
	}
	app.Reader = strings.NewReader("\n")
	app.Run([]string{"pgmesh", "ask"})
	if answered == nil || exitCode(answered) != exitFailed {
		t.Errorf("default answer must be no: %v", answered)
	}
}
