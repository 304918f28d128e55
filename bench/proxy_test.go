package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestCountingProxyCountsEveryRequestOnKeepAlive(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	}))
	defer srv.Close()
	p, err := startCountingProxy("", strings.TrimPrefix(srv.URL, "http://"), consulLabel("pgmesh/c1"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c := &http.Client{}
	for i := 0; i < 3; i++ {
		resp, err := c.Get("http://" + p.Addr + "/v1/kv/pgmesh/c1/groups/n1/?recurse=&index=42")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	for i := 0; i < 2; i++ {
		req, _ := http.NewRequest("PUT", "http://"+p.Addr+"/v1/kv/pgmesh/c1/groups/n1/members/n1-a?acquire=abc", strings.NewReader(`{"x":1}`))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	// The proxy forwards bytes as they arrive and counts a request once its
	// parser has read it, which can be after the response reached the client:
	// wait for the count instead of reading it at once.
	got := p.Snapshot()
	for deadline := time.Now().Add(5 * time.Second); got.Total < 5 && time.Now().Before(deadline); got = p.Snapshot() {
		time.Sleep(5 * time.Millisecond)
	}
	if got.Total != 5 {
		t.Fatalf("total %d, want 5: %v", got.Total, got.ByKind)
	}
	if got.ByKind["GET kv groups/{g}/ (blocking)"] != 3 || got.ByKind["PUT kv groups/{g}/members/{m} ?acquire"] != 2 {
		t.Fatalf("by kind: %v", got.ByKind)
	}
}

func TestSummarize(t *testing.T) {
	s := summarize([]float64{3, 1, 2, 10})
	if s.median != 2.5 || s.min != 1 || s.max != 10 || s.n != 4 {
		t.Fatalf("%+v", s)
	}
	if s := summarize([]float64{5, 1, 3}); s.median != 3 {
		t.Fatalf("%+v", s)
	}
}
