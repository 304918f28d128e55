package pg

import (
	"bufio"
	"context"
	"fmt"
	"strconv"
	"strings"
)

// Database cluster states as printed by pg_controldata (C locale).
const (
	StateStartingUp         = "starting up"
	StateShutDown           = "shut down"
	StateShutDownInRecovery = "shut down in recovery"
	StateShuttingDown       = "shutting down"
	StateInCrashRecovery    = "in crash recovery"
	StateInArchiveRecovery  = "in archive recovery"
	StateInProduction       = "in production"
)

// ControlData is the part of pg_control the agent decides on. It can be
// read while the server is down, which is exactly when the agent needs to
// know the system identifier and timeline (rule 3 and rewind decisions).
type ControlData struct {
	SystemID               uint64 `json:"system_id"`
	State                  string `json:"state"`
	Timeline               uint32 `json:"timeline"`
	PrevTimeline           uint32 `json:"prev_timeline"`
	CheckpointLSN          LSN    `json:"checkpoint_lsn"`
	RedoLSN                LSN    `json:"redo_lsn"`
	MinRecoveryEnd         LSN    `json:"min_recovery_end"`
	MinRecoveryEndTimeline uint32 `json:"min_recovery_end_timeline"`
	WalLevel               string `json:"wal_level"`
	WalLogHints            bool   `json:"wal_log_hints"`
	DataChecksums          bool   `json:"data_checksums"`
	// Raw holds every line pg_controldata printed, keyed by its label.
	Raw map[string]string `json:"-"`
}

// CleanShutdown reports whether the cluster was shut down cleanly, the
// precondition pg_rewind checks.
func (c ControlData) CleanShutdown() bool {
	return c.State == StateShutDown || c.State == StateShutDownInRecovery
}

// ControlData runs pg_controldata on the data directory.
func (i *Instance) ControlData(ctx context.Context) (ControlData, error) {
	out, err := i.run(ctx, "pg_controldata", []string{"-D", i.cfg.DataDir}, runOpts{})
	if err != nil {
		return ControlData{}, fmt.Errorf("read control data: %w", err)
	}
	cd, err := parseControlData(out)
	if err != nil {
		return ControlData{}, fmt.Errorf("read control data of %s: %w", i.cfg.DataDir, err)
	}
	return cd, nil
}

// parseControlData parses pg_controldata output produced under LC_ALL=C.
func parseControlData(text string) (ControlData, error) {
	cd := ControlData{Raw: map[string]string{}}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		// Labels never contain ':', values may ("NextXID: 0:724").
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		cd.Raw[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	if err := sc.Err(); err != nil {
		return cd, fmt.Errorf("scan pg_controldata output: %w", err)
	}

	var errs []string
	need := func(key string) string {
		v, ok := cd.Raw[key]
		if !ok {
			errs = append(errs, fmt.Sprintf("missing %q", key))
		}
		return v
	}
	parseU := func(key string, bits int) uint64 {
		v := need(key)
		if v == "" {
			return 0
		}
		n, err := strconv.ParseUint(v, 10, bits)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%q: %v", key, err))
		}
		return n
	}
	parseL := func(key string) LSN {
		v := need(key)
		if v == "" {
			return 0
		}
		l, err := ParseLSN(v)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%q: %v", key, err))
		}
		return l
	}

	cd.SystemID = parseU("Database system identifier", 64)
	cd.State = need("Database cluster state")
	cd.Timeline = uint32(parseU("Latest checkpoint's TimeLineID", 32))
	cd.PrevTimeline = uint32(parseU("Latest checkpoint's PrevTimeLineID", 32))
	cd.CheckpointLSN = parseL("Latest checkpoint location")
	cd.RedoLSN = parseL("Latest checkpoint's REDO location")
	cd.MinRecoveryEnd = parseL("Minimum recovery ending location")
	cd.MinRecoveryEndTimeline = uint32(parseU("Min recovery ending loc's timeline", 32))
	cd.WalLevel = cd.Raw["wal_level setting"]
	cd.WalLogHints = cd.Raw["wal_log_hints setting"] == "on"
	cd.DataChecksums = cd.Raw["Data page checksum version"] != "" && cd.Raw["Data page checksum version"] != "0"

	if len(errs) > 0 {
		return cd, fmt.Errorf("unexpected pg_controldata output: %s", strings.Join(errs, "; "))
	}
	return cd, nil
}
