package health

import (
	"context"
	"net/http"
	"testing"
)

// failsafeCtl adds failsafe mode to the fake controller.
type failsafeCtl struct {
	*fakeCtl
	off    bool
	answer FailsafeAnswer
	got    []FailsafeRequest
}

func (f *failsafeCtl) Failsafe(_ context.Context, req FailsafeRequest) (FailsafeAnswer, error) {
	if f.off {
		return FailsafeAnswer{}, ErrFailsafeOff
	}
	f.got = append(f.got, req)
	return f.answer, nil
}

func (f *failsafeCtl) FailsafeMembers() (map[string]string, error) {
	if f.off {
		return nil, ErrFailsafeOff
	}
	return map[string]string{"a": "http://a:8008", "b": "http://b:8008"}, nil
}

func TestFailsafeEndpoint(t *testing.T) {
	auth := []string{"Authorization", basicHeader("admin", "pw")}
	body := `{"name":"a","api_url":"http://a:8008","members":{"a":"http://a:8008","b":"http://b:8008"}}`
	mk := func(fc *failsafeCtl) http.Handler {
		return NewServer(fc, Options{Auth: &BasicAuth{Username: "admin", Password: "pw"}}).Handler()
	}

	// A controller without failsafe support, or with the mode off: 502 as
	// Patroni.
	plain := NewServer(&fakeCtl{state: replicaState()}, Options{Auth: &BasicAuth{Username: "admin", Password: "pw"}}).Handler()
	if code, _, _ := do(t, plain, http.MethodPost, "/failsafe", body, auth...); code != http.StatusBadGateway {
		t.Errorf("POST /failsafe without failsafe support: %d, want 502", code)
	}
	off := &failsafeCtl{fakeCtl: &fakeCtl{state: replicaState()}, off: true}
	if code, _, _ := do(t, mk(off), http.MethodGet, "/failsafe", ""); code != http.StatusBadGateway {
		t.Errorf("GET /failsafe with the mode off: %d, want 502", code)
	}

	fc := &failsafeCtl{fakeCtl: &fakeCtl{state: replicaState()}, answer: FailsafeAnswer{Accepted: true, LSN: 4242}}
	h := mk(fc)
	// A promise not to take over is a change to the member: credentials.
	if code, _, _ := do(t, h, http.MethodPost, "/failsafe", body); code != http.StatusUnauthorized {
		t.Errorf("POST /failsafe without credentials: %d, want 401", code)
	}
	if len(fc.got) != 0 {
		t.Fatalf("an unauthenticated request reached the controller: %+v", fc.got)
	}
	code, msg, hdr := do(t, h, http.MethodPost, "/failsafe", body, auth...)
	if code != http.StatusOK || msg != "Accepted" || hdr.Get("lsn") != "4242" {
		t.Errorf("accepted: %d %q lsn=%q, want 200 Accepted lsn=4242", code, msg, hdr.Get("lsn"))
	}
	if len(fc.got) != 1 || fc.got[0].Name != "a" || fc.got[0].Members["b"] != "http://b:8008" {
		t.Errorf("request as decoded: %+v", fc.got)
	}
	if code, _, _ := do(t, h, http.MethodPost, "/failsafe", `{"api_url":"x"}`, auth...); code != http.StatusBadRequest {
		t.Errorf("no name: %d, want 400", code)
	}
	if code, _, _ := do(t, h, http.MethodPost, "/failsafe", `not json`, auth...); code != http.StatusBadRequest {
		t.Errorf("garbage body: %d, want 400", code)
	}
	if code, msg, _ := do(t, h, http.MethodGet, "/failsafe", ""); code != http.StatusOK || msg != `{"a":"http://a:8008","b":"http://b:8008"}` {
		t.Errorf("GET /failsafe: %d %s", code, msg)
	}

	fc.answer = FailsafeAnswer{Refusal: "Running as a leader"}
	if code, msg, _ := do(t, h, http.MethodPost, "/failsafe", body, auth...); code != http.StatusInternalServerError || msg != "Running as a leader" {
		t.Errorf("primary refuses: %d %q, want 500 Running as a leader", code, msg)
	}
	fc.answer = FailsafeAnswer{Refusal: "consul is reachable from b", Code: http.StatusConflict}
	if code, _, _ := do(t, h, http.MethodPost, "/failsafe", body, auth...); code != http.StatusConflict {
		t.Errorf("member that reaches Consul: %d, want 409", code)
	}
}

func basicHeader(user, pass string) string {
	req, _ := http.NewRequest(http.MethodGet, "/", nil)
	req.SetBasicAuth(user, pass)
	return req.Header.Get("Authorization")
}
