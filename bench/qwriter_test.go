package main

import (
	"testing"
	"time"
)

// TestAnalyzeWindow checks the availability figures on a made-up log: a
// write every 100ms, dc1 (port 1) until the fault, nothing for 1s, then
// dc2 (port 2), then dc1 again.
func TestAnalyzeWindow(t *testing.T) {
	t0 := time.Unix(1000, 0)
	iv := 100 * time.Millisecond
	where := func(port int) (string, string) {
		return map[int]string{1: "dc1", 2: "dc2"}[port], "m"
	}
	var log []attempt
	add := func(at time.Duration, ok bool, port int, stage string) {
		s := t0.Add(at)
		log = append(log, attempt{start: s, end: s.Add(2 * time.Millisecond), ok: ok, port: port, stage: stage})
	}
	add(-200*time.Millisecond, true, 1, "")
	add(-100*time.Millisecond, true, 1, "")
	for at := time.Duration(0); at < 5*time.Second; at += iv {
		switch {
		case at < time.Second:
			add(at, false, 1, "connect")
		case at < 3*time.Second:
			add(at, true, 2, "")
		default:
			add(at, true, 1, "")
		}
	}
	st := analyze(log, t0, 5*time.Second, iv, where, "dc1")
	if st.slots != 50 || st.attempts != 50 || st.ok != 40 {
		t.Fatalf("slots %d attempts %d ok %d, want 50 50 40", st.slots, st.attempts, st.ok)
	}
	if st.avail != 0.8 {
		t.Errorf("avail %v, want 0.8", st.avail)
	}
	// From the last write before the fault (-98ms) to the first after it
	// (1.002s).
	if st.gap != 1100*time.Millisecond || st.gapOpen {
		t.Errorf("gap %v open %v, want 1.1s closed", st.gap, st.gapOpen)
	}
	if st.elsewhere != 1002*time.Millisecond || st.firstOK != 1002*time.Millisecond {
		t.Errorf("elsewhere %v firstOK %v, want 1.002s", st.elsewhere, st.firstOK)
	}
	if st.landed["dc1"] != 20 || st.landed["dc2"] != 20 || st.fails["connect"] != 10 || st.lastDC != "dc1" {
		t.Errorf("landed %v fails %v last %s", st.landed, st.fails, st.lastDC)
	}
	if back := firstIn(log, t0, "dc1", where); back != t0.Add(3*time.Second+2*time.Millisecond) {
		t.Errorf("back in dc1 at %v", back.Sub(t0))
	}
	// A window that ends in an outage: the gap runs to its end.
	st = analyze(log, t0, 900*time.Millisecond, iv, where, "dc1")
	if st.ok != 0 || !st.gapOpen || st.gap != 998*time.Millisecond {
		t.Errorf("outage window: ok %d gap %v open %v", st.ok, st.gap, st.gapOpen)
	}
}
