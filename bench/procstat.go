package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// procCPU is a process's user+system CPU time so far.
func procCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	// Fields after the command name start with field 3 (state); utime and
	// stime are fields 14 and 15.
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / time.Duration(clockTicks()), nil
}

// procRSS is a process's resident set size in bytes (VmRSS).
func procRSS(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) >= 1 {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				return kb * 1024, err
			}
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}

var clkTck int64

// clockTicks is the kernel's USER_HZ (AT_CLKTCK from the aux vector; 100
// if it cannot be read).
func clockTicks() int64 {
	if clkTck != 0 {
		return clkTck
	}
	clkTck = 100
	data, err := os.ReadFile("/proc/self/auxv")
	if err == nil {
		for i := 0; i+16 <= len(data); i += 16 {
			k := binary.NativeEndian.Uint64(data[i:])
			v := binary.NativeEndian.Uint64(data[i+8:])
			if k == 17 && v > 0 { // AT_CLKTCK
				clkTck = int64(v)
				break
			}
		}
	}
	return clkTck
}

// cpuMeter measures a process's CPU share over an interval.
type cpuMeter struct {
	pid   int
	cpu0  time.Duration
	wall0 time.Time
}

func startCPU(pid int) *cpuMeter {
	c, _ := procCPU(pid)
	return &cpuMeter{pid: pid, cpu0: c, wall0: time.Now()}
}

// percent of one CPU used since start (-1 if the process is gone).
func (m *cpuMeter) percent() float64 {
	c, err := procCPU(m.pid)
	if err != nil {
		return -1
	}
	return 100 * float64(c-m.cpu0) / float64(time.Since(m.wall0))
}

// procUSS is a process's unique set size in bytes: its private pages
// (Private_Clean + Private_Dirty from smaps_rollup), i.e. what it costs on
// top of pages shared with other processes, such as the pgmesh binary's
// text that the agent and its watchdog both map.
func procUSS(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, err
	}
	var total int64
	found := false
	for _, l := range strings.Split(string(data), "\n") {
		for _, k := range []string{"Private_Clean:", "Private_Dirty:"} {
			if v, ok := strings.CutPrefix(l, k); ok {
				f := strings.Fields(v)
				if len(f) >= 1 {
					kb, err := strconv.ParseInt(f[0], 10, 64)
					if err != nil {
						return 0, err
					}
					total += kb * 1024
					found = true
				}
			}
		}
	}
	if !found {
		return 0, fmt.Errorf("/proc/%d/smaps_rollup: no Private_* lines", pid)
	}
	return total, nil
}
