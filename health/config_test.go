package health

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
)

func baseConfig() *consulkv.ClusterConfig {
	return &consulkv.ClusterConfig{
		Version:              1,
		TTL:                  consulkv.Duration(30 * time.Second),
		LoopWait:             consulkv.Duration(5 * time.Second),
		RetryTimeout:         consulkv.Duration(10 * time.Second),
		MaximumLagOnFailover: 1 << 20,
		Parameters:           map[string]string{"max_connections": "100", "wal_level": "logical"},
	}
}

func TestGetConfig(t *testing.T) {
	f := &fakeCtl{}
	h := newTestServer(f, Options{}).Handler()
	if code, _, _ := do(t, h, http.MethodGet, "/config", ""); code != 404 {
		t.Errorf("GET /config with none stored = %d, want 404", code)
	}
	f.cfg, f.cfgIndex = baseConfig(), 7
	code, body, _ := do(t, h, http.MethodGet, "/config", "")
	got, err := configFromBody(body)
	if code != 200 || err != nil || got.TTL.D() != 30*time.Second || got.Parameters["wal_level"] != "logical" {
		t.Errorf("GET /config = %d %s (%v)", code, body, err)
	}
	// Patroni's shape: numbers of seconds, parameters under postgresql.
	for _, want := range []string{`"ttl":30`, `"loop_wait":5`, `"retry_timeout":10`, `"postgresql":{"parameters":{"max_connections":"100","wal_level":"logical"},"use_pg_rewind":true,"use_slots":true}`} {
		if !strings.Contains(body, want) {
			t.Errorf("GET /config lacks %s: %s", want, body)
		}
	}
	f.cfgErr = errors.New("connection refused")
	if code, _, _ := do(t, h, http.MethodGet, "/config", ""); code != 503 {
		t.Errorf("GET /config with Consul down = %d, want 503", code)
	}
}

func TestPatchConfig(t *testing.T) {
	cases := []struct {
		name  string
		patch string
		code  int
		check func(t *testing.T, c *consulkv.ClusterConfig)
		msg   string
	}{
		{name: "change one field", patch: `{"loop_wait":"2s"}`, code: 200, check: func(t *testing.T, c *consulkv.ClusterConfig) {
			if c.LoopWait.D() != 2*time.Second || c.TTL.D() != 30*time.Second || len(c.Parameters) != 2 {
				t.Errorf("config = %+v", c)
			}
		}},
		{name: "patroni numbers", patch: `{"ttl":20,"loop_wait":1,"retry_timeout":3}`, code: 200, check: func(t *testing.T, c *consulkv.ClusterConfig) {
			if c.TTL.D() != 20*time.Second || c.LoopWait.D() != time.Second || c.RetryTimeout.D() != 3*time.Second {
				t.Errorf("config = %+v", c)
			}
		}},
		{name: "nested merge and null delete", patch: `{"parameters":{"max_connections":null,"work_mem":"8MB","shared_buffers":128,"jit":false}}`, code: 200,
			check: func(t *testing.T, c *consulkv.ClusterConfig) {
				want := map[string]string{"wal_level": "logical", "work_mem": "8MB", "shared_buffers": "128", "jit": "off"}
				if len(c.Parameters) != len(want) {
					t.Errorf("parameters = %v", c.Parameters)
				}
				for k, v := range want {
					if c.Parameters[k] != v {
						t.Errorf("parameters = %v, want %v", c.Parameters, want)
					}
				}
			}},
		{name: "null resets to default", patch: `{"ttl":null,"retry_timeout":null,"loop_wait":null}`, code: 200, check: func(t *testing.T, c *consulkv.ClusterConfig) {
			if c.TTL != 0 || c.RetryTimeout != 0 || c.LoopWait != 0 || c.Version != 1 {
				t.Errorf("config = %+v", c)
			}
		}},
		{name: "null deletes a whole map", patch: `{"parameters":null}`, code: 200, check: func(t *testing.T, c *consulkv.ClusterConfig) {
			if len(c.Parameters) != 0 {
				t.Errorf("parameters = %v", c.Parameters)
			}
		}},
		{name: "version null stays current", patch: `{"version":null,"pause":true}`, code: 200, check: func(t *testing.T, c *consulkv.ClusterConfig) {
			if c.Version != consulkv.ValueVersion || !c.Paused {
				t.Errorf("config = %+v", c)
			}
		}},
		{name: "exact uint64", patch: `{"maximum_lag_on_failover":18446744073709551615}`, code: 200, check: func(t *testing.T, c *consulkv.ClusterConfig) {
			if c.MaximumLagOnFailover != 1<<64-1 {
				t.Errorf("maximum_lag_on_failover = %d", c.MaximumLagOnFailover)
			}
		}},
		{name: "empty patch", patch: `{}`, code: 200},
		{name: "timing rule", patch: `{"ttl":"5s"}`, code: 400, msg: "timing rule"},
		{name: "bad duration", patch: `{"ttl":"soon"}`, code: 400, msg: "invalid duration"},
		{name: "negative lag", patch: `{"maximum_lag_on_failover":-1}`, code: 400, msg: "invalid configuration"},
		{name: "unknown field", patch: `{"master_start_timeoutt":1}`, code: 400, msg: "unknown field"},
		{name: "patroni postgresql.parameters", patch: `{"postgresql":{"parameters":{"work_mem":"16MB","max_connections":null},"use_slots":true}}`, code: 200,
			check: func(t *testing.T, c *consulkv.ClusterConfig) {
				if c.Parameters["work_mem"] != "16MB" || c.Parameters["wal_level"] != "logical" || len(c.Parameters) != 2 {
					t.Errorf("parameters = %v", c.Parameters)
				}
			}},
		{name: "fractional seconds", patch: `{"loop_wait":1.5}`, code: 200, check: func(t *testing.T, c *consulkv.ClusterConfig) {
			if c.LoopWait.D() != 1500*time.Millisecond {
				t.Errorf("loop_wait = %s", c.LoopWait.D())
			}
		}},
		{name: "use_slots false", patch: `{"postgresql":{"use_slots":false}}`, code: 400, msg: "always uses pg_rewind and replication slots"},
		{name: "unknown postgresql key", patch: `{"postgresql":{"recovery_conf":{}}}`, code: 400, msg: "postgresql.recovery_conf"},
		{name: "bad parameter name", patch: `{"parameters":{"a b":"1"}}`, code: 400, msg: "parameter name"},
		{name: "future version", patch: `{"version":2}`, code: 400, msg: "unsupported version"},
		{name: "not an object", patch: `null`, code: 400, msg: "JSON object"},
		{name: "array", patch: `[1]`, code: 400, msg: "JSON object"},
		{name: "bad JSON", patch: `{"ttl":`, code: 400},
		{name: "trailing data", patch: `{} {}`, code: 400, msg: "trailing"},
		{name: "empty body", patch: ``, code: 400},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeCtl{cfg: baseConfig(), cfgIndex: 10}
			h := newTestServer(f, Options{}).Handler()
			code, body, _ := do(t, h, http.MethodPatch, "/config", tc.patch)
			if code != tc.code {
				t.Fatalf("PATCH %s = %d %s, want %d", tc.patch, code, body, tc.code)
			}
			if tc.msg != "" && !strings.Contains(body, tc.msg) {
				t.Errorf("body %q does not mention %q", body, tc.msg)
			}
			if code != 200 {
				if f.cfgIndex != 10 {
					t.Errorf("config written on a failed patch")
				}
				return
			}
			got, err := configFromBody(body)
			if err != nil {
				t.Fatalf("response %q: %v", body, err)
			}
			stored, _, _ := f.Config(t.Context())
			if tc.check != nil {
				tc.check(t, got)
				tc.check(t, stored)
			}
		})
	}
}

func TestPatchConfigCAS(t *testing.T) {
	// Two lost races, then a win: the patch applies on the re-read value.
	f := &fakeCtl{cfg: baseConfig(), cfgIndex: 10, casLosses: 2}
	h := newTestServer(f, Options{}).Handler()
	if code, body, _ := do(t, h, http.MethodPatch, "/config", `{"loop_wait":"1s"}`); code != 200 {
		t.Fatalf("PATCH after 2 conflicts = %d %s", code, body)
	}
	if f.casCalls != 3 || f.cfg.LoopWait.D() != time.Second || f.wakes != 1 {
		t.Errorf("cas calls %d, loop_wait %s, wakes %d", f.casCalls, f.cfg.LoopWait, f.wakes)
	}

	f = &fakeCtl{cfg: baseConfig(), cfgIndex: 10, casLosses: 100}
	h = newTestServer(f, Options{}).Handler()
	if code, _, _ := do(t, h, http.MethodPatch, "/config", `{"loop_wait":"1s"}`); code != 409 {
		t.Errorf("PATCH that keeps conflicting = %d, want 409", code)
	}
	if f.casCalls != configAttempts {
		t.Errorf("cas calls = %d, want %d", f.casCalls, configAttempts)
	}

	// No stored config: the patch creates one (CAS 0).
	f = &fakeCtl{}
	h = newTestServer(f, Options{}).Handler()
	if code, body, _ := do(t, h, http.MethodPatch, "/config", `{"loop_wait":"1s"}`); code != 200 || f.cfg == nil || f.cfg.Version != 1 {
		t.Errorf("PATCH with none stored = %d %s", code, body)
	}

	// An unreadable stored config cannot be patched, but can be replaced.
	f = &fakeCtl{cfgIndex: 4, cfgErr: &consulkv.DecodeError{Key: "pgmesh/mesh/config", Err: errors.New("invalid JSON")}}
	h = newTestServer(f, Options{}).Handler()
	if code, body, _ := do(t, h, http.MethodPatch, "/config", `{"loop_wait":"1s"}`); code != 409 || !strings.Contains(body, "PUT") {
		t.Errorf("PATCH onto invalid config = %d %s", code, body)
	}
	if code, body, _ := do(t, h, http.MethodPut, "/config", `{"ttl":"30s"}`); code != 200 || f.cfg == nil || f.cfg.TTL.D() != 30*time.Second {
		t.Errorf("PUT over invalid config = %d %s", code, body)
	}

	f = &fakeCtl{cfgErr: errors.New("connection refused")}
	h = newTestServer(f, Options{}).Handler()
	if code, _, _ := do(t, h, http.MethodPatch, "/config", `{"loop_wait":"1s"}`); code != 503 {
		t.Errorf("PATCH with Consul down = %d, want 503", code)
	}
}

func TestPutConfig(t *testing.T) {
	f := &fakeCtl{cfg: baseConfig(), cfgIndex: 3}
	h := newTestServer(f, Options{}).Handler()
	code, body, _ := do(t, h, http.MethodPut, "/config", `{"ttl":"12s","loop_wait":"1s","retry_timeout":"2s"}`)
	if code != 200 || f.cfg.TTL.D() != 12*time.Second || f.cfg.Parameters != nil || f.cfg.MaximumLagOnFailover != 0 {
		t.Errorf("PUT = %d %s; stored %+v", code, body, f.cfg)
	}
	for _, bad := range []string{`{"ttl":"1s"}`, `{"nope":1}`, `[]`, ``} {
		if code, _, _ := do(t, h, http.MethodPut, "/config", bad); code != 400 {
			t.Errorf("PUT %s = %d, want 400", bad, code)
		}
	}
	f.casLosses = 100
	if code, _, _ := do(t, h, http.MethodPut, "/config", `{"ttl":"30s"}`); code != 409 {
		t.Errorf("PUT that keeps conflicting = %d, want 409", code)
	}
}

func TestMergePatchRFC7386(t *testing.T) {
	// The examples of RFC 7386 appendix A.
	cases := [][3]string{
		{`{"a":"b"}`, `{"a":"c"}`, `{"a":"c"}`},
		{`{"a":"b"}`, `{"b":"c"}`, `{"a":"b","b":"c"}`},
		{`{"a":"b"}`, `{"a":null}`, `{}`},
		{`{"a":"b","b":"c"}`, `{"a":null}`, `{"b":"c"}`},
		{`{"a":["b"]}`, `{"a":"c"}`, `{"a":"c"}`},
		{`{"a":"c"}`, `{"a":["b"]}`, `{"a":["b"]}`},
		{`{"a":{"b":"c"}}`, `{"a":{"b":"d","c":null}}`, `{"a":{"b":"d"}}`},
		{`{"a":[{"b":"c"}]}`, `{"a":[1]}`, `{"a":[1]}`},
		{`["a","b"]`, `["c","d"]`, `["c","d"]`},
		{`{"a":"b"}`, `["c"]`, `["c"]`},
		{`{"a":"foo"}`, `null`, `null`},
		{`{"a":"foo"}`, `"bar"`, `"bar"`},
		{`{"e":null}`, `{"a":1}`, `{"a":1,"e":null}`},
		{`[1,2]`, `{"a":"b","c":null}`, `{"a":"b"}`},
		{`{}`, `{"a":{"bb":{"ccc":null}}}`, `{"a":{"bb":{}}}`},
	}
	for _, c := range cases {
		var target, patch any
		_ = json.Unmarshal([]byte(c[0]), &target)
		_ = json.Unmarshal([]byte(c[1]), &patch)
		got, _ := json.Marshal(mergePatch(target, patch))
		if string(got) != c[2] {
			t.Errorf("MergePatch(%s, %s) = %s, want %s", c[0], c[1], got, c[2])
		}
	}
}

// FuzzPatchConfig: whatever the body, PATCH /config answers 200, 400 or 409
// and never panics.
func FuzzPatchConfig(f *testing.F) {
	for _, seed := range []string{
		`{"ttl":30}`, `{"parameters":{"a":null,"b":1,"c":true,"d":{"x":1}}}`, `{"ttl":null}`, `null`, `[]`, `"x"`,
		`{"ttl":1e400}`, `{"ttl":-1e300}`, `{"loop_wait":"1h","ttl":"1ns"}`, `{"paused_groups":[1,null]}`,
		`{"maximum_lag_on_failover":1.5}`, `{"version":0}`, `{"lock_delay":"-1s"}`, `{`, ``, `{"a":{"b":{"c":null}}}`,
		`{"parameters":{"":"x"}}`, `{"parameters":[]}`, `{"pause":"yes"}`, "{\"ttl\":\"\u0000\"}", `{"ttl":"30s"} x`,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, body string) {
		fc := &fakeCtl{cfg: baseConfig(), cfgIndex: 5}
		h := newTestServer(fc, Options{}).Handler()
		code, resp, _ := do(t, h, http.MethodPatch, "/config", body)
		switch code {
		case 200:
			var c consulkv.ClusterConfig
			if err := consulkv.Decode("config", []byte(resp), &c); err != nil {
				t.Fatalf("200 with an invalid config %q: %v", resp, err)
			}
		case 400, 409:
		default:
			t.Fatalf("PATCH %q = %d %s", body, code, resp)
		}
	})
}

// A config that breaks a rule depending on a member's settings is refused
// with 400 naming the rule and the member, and nothing is written.
func TestPatchConfigRefusesUnsafeForAMember(t *testing.T) {
	f := &fakeCtl{cfg: baseConfig(), cfgIndex: 10, members: []consulkv.MemberSettings{{Member: "n1-b", SessionChecks: []string{"liveness"}}}}
	h := newTestServer(f, Options{}).Handler()
	for _, patch := range []string{`{"lock_delay":"0.9s"}`, `{"lock_delay":"500ms"}`} {
		code, body, _ := do(t, h, http.MethodPatch, "/config", patch)
		if code != 400 || !strings.Contains(body, "session-checks-lock-delay rule broken for member n1-b") || !strings.Contains(body, "nothing written") {
			t.Fatalf("PATCH %s = %d %q", patch, code, body)
		}
		if f.cfgIndex != 10 {
			t.Fatal("config written")
		}
	}
	if code, body, _ := do(t, h, http.MethodPatch, "/config", `{"lock_delay":"16s"}`); code != 200 {
		t.Fatalf("a safe lock_delay was refused: %d %s", code, body)
	}
}

// configFromBody reads a /config answer (Patroni's shape) back into the
// stored form, as a client that PATCHes what it GOT would.
func configFromBody(body string) (*consulkv.ClusterConfig, error) {
	obj, err := decodeObject([]byte(body))
	if err != nil {
		return nil, err
	}
	return configFromObject(obj)
}
