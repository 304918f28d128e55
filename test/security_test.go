package test

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/test/testbed"
)

// TestRESTAPISecureByDefault: a member whose REST API listens beyond
// loopback refuses every mutating request while no credentials are
// configured (and says why in the 403 and at start); health endpoints stay
// open; with credentials from files, mutations need basic auth; an
// allowlist that leaves the caller out refuses it with the address named.
func TestRESTAPISecureByDefault(t *testing.T) {
	c := testbed.StartConsul(t, testbed.ConsulOptions{})
	open := testbed.StartAgent(t, testbed.AgentSpec{Cluster: "itest", Group: "sd", Name: "sd-a", ConsulAddr: c.HTTPAddr, RestAPIAnyAddress: true})
	// Secret files readable only by the agent's OS user.
	dir := testbed.OwnedDir(t)
	u, err := testbed.PostgresOSUser()
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"user": "ops\n", "pass": "s3cret pass\n"} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if u != nil {
			os.Chown(p, int(u.UID), int(u.GID))
		}
	}
	authed := testbed.StartAgent(t, testbed.AgentSpec{Cluster: "itest", Group: "se", Name: "se-a", ConsulAddr: c.HTTPAddr, RestAPIAnyAddress: true,
		RestAPIExtra: fmt.Sprintf("username_file: %s\npassword_file: %s", filepath.Join(dir, "user"), filepath.Join(dir, "pass"))})
	fenced := testbed.StartAgent(t, testbed.AgentSpec{Cluster: "itest", Group: "sf", Name: "sf-a", ConsulAddr: c.HTTPAddr, RestAPIAnyAddress: true,
		RestAPIExtra: "username: ops\npassword: pw\nallowlist: [10.255.255.0/24]"})
	for _, a := range []*testbed.Agent{open, authed, fenced} {
		testbed.Eventually(t, 90*time.Second, a.Spec.Name+" healthy", func() error {
			if code, _, err := a.APIStatus("/primary"); code != 200 {
				return fmt.Errorf("/primary %d %v", code, err)
			}
			return nil
		})
	}
	do := func(a *testbed.Agent, method, path, user, pass string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://"+a.APIAddr+path, strings.NewReader(`{}`))
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	// No credentials, listening on 0.0.0.0: refused, with the reason.
	for _, path := range []string{"/restart", "/reload", "/failover", "/reinitialize"} {
		code, body := do(open, http.MethodPost, path, "", "")
		if code != 403 || !strings.Contains(body, "no credentials are configured") || !strings.Contains(body, "restapi.username") {
			t.Fatalf("POST %s without credentials: %d %q", path, code, body)
		}
	}
	if code, body := do(open, http.MethodPatch, "/config", "", ""); code != 403 {
		t.Fatalf("PATCH /config without credentials: %d %q", code, body)
	}
	if code, _, _ := open.APIStatus("/health"); code != 200 {
		t.Fatalf("/health must stay open: %d", code)
	}
	if !strings.Contains(readFile(t, open.LogPath), "mutating requests are refused") {
		t.Fatal("the agent did not say at start that it refuses mutations")
	}

	// Credentials from files: basic auth required and accepted.
	if code, _ := do(authed, http.MethodPost, "/reload", "", ""); code != 401 {
		t.Fatalf("POST /reload without auth: %d", code)
	}
	if code, _ := do(authed, http.MethodPost, "/reload", "ops", "wrong"); code != 401 {
		t.Fatalf("POST /reload with a wrong password: %d", code)
	}
	if code, body := do(authed, http.MethodPost, "/reload", "ops", "s3cret pass"); code != 200 && code != 202 {
		t.Fatalf("POST /reload with the credentials from the files: %d %q", code, body)
	}
	if strings.Contains(readFile(t, authed.LogPath), "s3cret") || strings.Contains(readFile(t, authed.CfgPath), "s3cret") {
		t.Fatal("the password from the file leaked into the log or config")
	}

	// An allowlist without the caller's address: refused, address named,
	// even with the right credentials.
	code, body := do(fenced, http.MethodPost, "/reload", "ops", "pw")
	if code != 403 || !strings.Contains(body, "127.0.0.1") || !strings.Contains(body, "restapi.allowlist") {
		t.Fatalf("POST /reload from outside the allowlist: %d %q", code, body)
	}
}
