package agent

import (
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/pgmesh/pgmesh/internal/logging"
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

// PGMESH_FAULT_GC puts the agent under garbage-collector pressure while a
// control file exists, for the no-false-failover test: a goroutine
// allocates garbage at a fixed rate and keeps a pointer-rich live heap
// (which every GC cycle has to mark), with GOGC lowered, so the collector
// runs nearly all the time and charges the agent's own goroutines with
// mark assists. The value is comma-separated key=value pairs:
//
//	file=<path>   the control file (required); pressure while it exists
//	mbps=<n>      garbage allocated per second, in MB (default 256)
//	live=<n>      live heap kept while on, in MB (default 128)
//	gogc=<n>      GOGC while on (default 25; the previous value is restored)
//
// e.g. PGMESH_FAULT_GC=file=/tmp/gc-on,mbps=256,live=128,gogc=25. The
// variable is read once at start and removed from the environment, so the
// fence watchdog, PostgreSQL and callbacks do not inherit it. Each switch
// on and off is logged; the "off" line carries the cycles, pauses and GC
// CPU time of the episode. Unset in production.
func init() {
	v, ok := os.LookupEnv("PGMESH_FAULT_GC")
	if !ok {
		return
	}
	os.Unsetenv("PGMESH_FAULT_GC")
	p, err := parseGCPressure(v)
	if err != nil {
		fmt.Fprintf(os.Stderr, "PGMESH_FAULT_GC=%q: %v\n", v, err)
		return
	}
	go p.run()
}

type gcPressure struct {
	file             string
	mbps, live, gogc int
}

func parseGCPressure(s string) (gcPressure, error) {
	p := gcPressure{mbps: 256, live: 128, gogc: 25}
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return p, fmt.Errorf("%q: want key=value", part)
		}
		if k == "file" {
			p.file = v
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return p, fmt.Errorf("%s=%q: want a number ≥ 0", k, v)
		}
		switch k {
		case "mbps":
			p.mbps = n
		case "live":
			p.live = n
		case "gogc":
			p.gogc = n
		default:
			return p, fmt.Errorf("unknown key %q (file, mbps, live, gogc)", k)
		}
	}
	if p.file == "" {
		return p, fmt.Errorf("file=<control file> is required")
	}
	return p, nil
}

// gcNode is 64 bytes with a pointer, so the live heap is all objects for
// the collector to trace, not one big noscan block.
type gcNode struct {
	next *gcNode
	_    [56]byte
}

// gcSink keeps the latest garbage chain reachable just long enough that
// the allocations cannot be optimised away.
var gcSink *gcNode

func gcChain(n int) *gcNode {
	var head *gcNode
	for i := 0; i < n; i++ {
		head = &gcNode{next: head}
	}
	return head
}

const gcNodeSize = 64

func (p gcPressure) run() {
	log, err := logging.New("json", "info")
	if err != nil {
		return
	}
	log = log.Named("fault").With(zap.String("fault", "gc-pressure"), zap.String("file", p.file))
	const tick = 10 * time.Millisecond
	const slots = 64
	perTick := p.mbps << 20 / int(time.Second/tick) / gcNodeSize
	perSlot := p.live << 20 / slots / gcNodeSize
	var (
		on        bool
		since     time.Time
		live      []*gcNode
		slot      int
		prevGC    int
		start     runtime.MemStats
		startCPU  float64
		lastCheck time.Time
	)
	for {
		now := time.Now()
		if now.Sub(lastCheck) >= 100*time.Millisecond {
			lastCheck = now
			_, err := os.Stat(p.file)
			switch {
			case err == nil && !on:
				on, since = true, now
				runtime.ReadMemStats(&start)
				startCPU = gcCPUSeconds()
				log.Warn("fault point: GC pressure on", zap.Int("mb_per_s", p.mbps), zap.Int("live_mb", p.live), zap.Int("gogc", p.gogc))
				prevGC = debug.SetGCPercent(p.gogc)
				live = make([]*gcNode, slots)
				for i := range live {
					live[i] = gcChain(perSlot)
				}
			case err != nil && on:
				on, live = false, nil
				debug.SetGCPercent(prevGC)
				var end runtime.MemStats
				runtime.ReadMemStats(&end)
				// PauseNs holds the last 256 cycles' pauses, cycle k at
				// [(k-1)%256].
				var maxPause uint64
				first := start.NumGC
				if end.NumGC-first > 256 {
					first = end.NumGC - 256
				}
				for i := first; i < end.NumGC; i++ {
					if d := end.PauseNs[i%256]; d > maxPause {
						maxPause = d
					}
				}
				log.Warn("fault point: GC pressure off",
					zap.Duration("held", now.Sub(since)),
					zap.Uint64("allocated_mb", (end.TotalAlloc-start.TotalAlloc)>>20),
					zap.Uint32("gc_cycles", end.NumGC-start.NumGC),
					zap.Duration("gc_pause_total", time.Duration(end.PauseTotalNs-start.PauseTotalNs)),
					zap.Duration("gc_pause_max", time.Duration(maxPause)),
					zap.Float64("gc_cpu_seconds", gcCPUSeconds()-startCPU))
			}
		}
		if !on {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		// Churn the live set (one slot's chain becomes garbage) and drop
		// fresh garbage, perTick nodes in all, then wait for the next tick.
		live[slot%slots] = gcChain(perSlot)
		slot++
		for n := perTick - perSlot; n > 0; n -= 1024 {
			gcSink = gcChain(min(n, 1024))
		}
		gcSink = nil
		if d := tick - time.Since(now); d > 0 {
			time.Sleep(d)
		}
	}
}

// gcCPUSeconds is the process's GC CPU time so far (runtime/metrics; 0 if
// the runtime does not report it).
func gcCPUSeconds() float64 {
	s := []metrics.Sample{{Name: "/cpu/classes/gc/total:cpu-seconds"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindFloat64 {
		return 0
	}
	return s[0].Value.Float64()
}
