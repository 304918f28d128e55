package agent

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// roleMarker remembers, across agent restarts and crashes, that a data dir
// last ran as a primary on some timeline and has not been rewound since. It
// lives beside the data dir, not in it, so pg_basebackup and pg_rewind never
// copy it to another member.
type roleMarker struct {
	Role     string `json:"role"`
	Timeline uint32 `json:"timeline"`
}

func markerPath(dataDir string) string {
	return filepath.Clean(dataDir) + ".pgmesh-state.json"
}

func readMarker(dataDir string) (roleMarker, error) {
	data, err := os.ReadFile(markerPath(dataDir))
	if os.IsNotExist(err) {
		return roleMarker{}, nil
	}
	if err != nil {
		return roleMarker{}, fmt.Errorf("read role marker: %w", err)
	}
	var m roleMarker
	if err := json.Unmarshal(data, &m); err != nil {
		// A torn or hand-edited marker: assume the worst (it was a primary
		// on an unknown timeline), which only costs a pg_rewind.
		return roleMarker{Role: "primary"}, nil
	}
	return m, nil
}

func writeMarker(dataDir string, m roleMarker) error {
	data, _ := json.Marshal(m)
	path := markerPath(dataDir)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("write role marker: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write role marker: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write role marker: %w", err)
	}
	f.Close()
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write role marker: %w", err)
	}
	return nil
}
