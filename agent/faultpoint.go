package agent

import (
	"os"
	"strings"
	"syscall"
	"time"
)

// Fault points let the test suite freeze the agent at an exact step, which
// a SIGSTOP from outside can only hit by luck. PGMESH_FAULT_POINT names
// points and what happens there, e.g. "before-start=stop": the agent stops
// itself (SIGSTOP, the whole process, as a freeze would) right before it
// runs pg_ctl start for a start that may make PostgreSQL writable. Unset in
// production; the variable is read once at start.
var faultPoints = parseFaultPoints(os.Getenv("PGMESH_FAULT_POINT"))

func parseFaultPoints(s string) map[string]string {
	out := map[string]string{}
	for _, part := range strings.Split(s, ",") {
		if name, what, ok := strings.Cut(strings.TrimSpace(part), "="); ok {
			out[name] = what
		}
	}
	return out
}

// faultPoint returns the action configured at point name (nil: none).
func faultPoint(name string) func() {
	switch faultPoints[name] {
	case "stop":
		return func() {
			syscall.Kill(os.Getpid(), syscall.SIGSTOP)
			// kill returns before every thread has stopped: this goroutine
			// could run the next step before the freeze lands (seen: the
			// lease check after the fault point passed, and the freeze hit
			// inside pg_ctl start). Wait until the clock jumps, i.e. this
			// thread was frozen and resumed.
			last := time.Now()
			for deadline := last.Add(10 * time.Minute); last.Before(deadline); {
				time.Sleep(10 * time.Millisecond)
				now := time.Now()
				if now.Sub(last) > 500*time.Millisecond {
					return
				}
				last = now
			}
		}
	}
	return nil
}
