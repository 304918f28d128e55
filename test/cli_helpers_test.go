package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/test/testbed"
)

// cliResult is one run of the pgmesh binary.
type cliResult struct {
	args   []string
	stdout string
	stderr string
	code   int
}

func (r cliResult) String() string {
	return "pgmesh " + strings.Join(r.args, " ") + "\nexit " + strconv.Itoa(r.code) + "\nstdout:\n" + r.stdout + "stderr:\n" + r.stderr
}

// pgmeshCLI runs the operator CLI the way a person would: the built binary,
// Consul and cluster from the environment, no terminal on stdin.
type pgmeshCLI struct {
	t   *testing.T
	bin string
	env []string
}

func newPgmeshCLI(t *testing.T, consulAddr, cluster string) *pgmeshCLI {
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CONSUL_") && !strings.HasPrefix(kv, "PGMESH_") {
			env = append(env, kv)
		}
	}
	env = append(env, "CONSUL_HTTP_ADDR="+consulAddr, "PGMESH_CLUSTER="+cluster)
	return &pgmeshCLI{t: t, bin: testbed.PgmeshBinary(t), env: env}
}

// run executes pgmesh with args; stdin, when not nil, is piped in.
func (p *pgmeshCLI) runWith(stdin *string, extraEnv []string, args ...string) cliResult {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, p.bin, args...)
	cmd.Env = append(append([]string{}, p.env...), extraEnv...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != nil {
		cmd.Stdin = strings.NewReader(*stdin)
	}
	err := cmd.Run()
	r := cliResult{args: args, stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		p.t.Fatalf("pgmesh %v: %v", args, err)
	}
	if strings.Contains(r.stderr, "goroutine ") || strings.Contains(r.stderr, "panic:") {
		p.t.Fatalf("pgmesh crashed:\n%s", r)
	}
	return r
}

// watch runs a long-lived pgmesh command for d, then interrupts it as
// Ctrl-C would and returns what it printed.
func (p *pgmeshCLI) watch(d time.Duration, args ...string) cliResult {
	p.t.Helper()
	cmd := exec.Command(p.bin, args...)
	cmd.Env = p.env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	time.Sleep(d) // the command's own refresh interval is what is tested
	cmd.Process.Signal(os.Interrupt)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		p.t.Fatalf("pgmesh %v did not stop on SIGINT", args)
	}
	r := cliResult{args: args, stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	}
	return r
}

func (p *pgmeshCLI) run(args ...string) cliResult {
	p.t.Helper()
	return p.runWith(nil, nil, args...)
}

// ok runs pgmesh and fails the test unless it exits 0.
func (p *pgmeshCLI) ok(args ...string) cliResult {
	p.t.Helper()
	r := p.run(args...)
	if r.code != 0 {
		p.t.Fatalf("want exit 0:\n%s", r)
	}
	return r
}

// fails runs pgmesh and fails the test unless it exits with code and
// stderr contains every one of wants.
func (p *pgmeshCLI) fails(code int, wants []string, args ...string) cliResult {
	p.t.Helper()
	r := p.run(args...)
	if r.code != code {
		p.t.Fatalf("want exit %d:\n%s", code, r)
	}
	for _, w := range wants {
		if !strings.Contains(r.stderr, w) {
			p.t.Fatalf("stderr lacks %q:\n%s", w, r)
		}
	}
	return r
}

// tableRow returns the whitespace-separated cells of the status table row
// for member (nil when absent).
func tableRow(out, member string) []string {
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == member {
			return f
		}
	}
	return nil
}

// fakeGroup writes a group whose agents do not exist into Consul: a leader
// key held by a test session and member keys whose REST APIs point at a
// closed port, plus one garbage member key. It is how the CLI's paths for
// "the agent cannot be reached" and "a key is unreadable" are exercised
// without killing real members.
func fakeGroup(t *testing.T, c *testbed.Consul, cluster, group string) {
	t.Helper()
	cl := c.Client()
	sess, _, err := cl.Session().Create(&api.SessionEntry{TTL: "120s", Behavior: api.SessionBehaviorRelease, LockDelay: time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Session().Destroy(sess, nil) })
	prefix := "pgmesh/" + cluster + "/groups/" + group + "/"
	deadAPI := fmt.Sprintf("http://127.0.0.1:%d", testbed.FreePort(t))
	put := func(key string, v any, session string) {
		t.Helper()
		b, ok := v.([]byte)
		if !ok {
			var err error
			if b, err = json.Marshal(v); err != nil {
				t.Fatal(err)
			}
		}
		p := &api.KVPair{Key: prefix + key, Value: b}
		if session != "" {
			p.Session = session
			if ok, _, err := cl.KV().Acquire(p, nil); err != nil || !ok {
				t.Fatalf("acquire %s: %v %v", key, ok, err)
			}
			return
		}
		if _, err := cl.KV().Put(p, nil); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now().UTC()
	put("initialize", consulkv.Initialize{Version: 1, Member: "f1", SystemID: "7000000000000000001", At: now}, "")
	put("leader", consulkv.Leader{Version: 1, Member: "f1"}, sess)
	for i, name := range []string{"f1", "f2"} {
		role := consulkv.RolePrimary
		if i > 0 {
			role = consulkv.RoleReplica
		}
		put("members/"+name, consulkv.MemberStatus{Version: 1, Name: name, Group: group, Role: role, State: "running",
			APIURL: deadAPI, Host: "127.0.0.1", Port: 1, Timeline: 1, SystemID: "7000000000000000001",
			WriteLSN: 0x3000000, ReplayLSN: 0x3000000, ReceiveLSN: 0x3000000, UpdatedAt: now}, "")
	}
	put("members/f3", []byte("{not json"), "")
}
