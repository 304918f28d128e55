package agent

import (
	"os"
	"os/signal"
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
			// kill returns before every thread has stopped, so this
			// goroutine could run the next step before the freeze lands
			// (seen: the lease check after the fault point passed, and the
			// freeze hit inside pg_ctl start). Return only once SIGCONT
			// arrived, i.e. after the process was stopped and continued.
			cont := make(chan os.Signal, 1)
			signal.Notify(cont, syscall.SIGCONT)
			defer signal.Stop(cont)
			syscall.Kill(os.Getpid(), syscall.SIGSTOP)
			select {
			case <-cont:
			case <-time.After(10 * time.Minute):
			}
		}
	}
	return nil
}
