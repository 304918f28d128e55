package agent

import (
	"errors"

	"github.com/pgmesh/pgmesh/consulkv"
)

// adoptConfig decides, without I/O, whether the cluster config read from
// Consul (stored, or readErr when it could not be decoded) replaces the one
// in force for a member with the given local settings. It returns the
// config to adopt, or nil and the problem to report: an unreadable or
// unsafe config is never adopted, whoever wrote it (an older pgmesh, a
// hand edit, a tool that does not know the member's settings); the member
// keeps the last good one and says why in its logs, member key and REST
// status.
func adoptConfig(stored *consulkv.ClusterConfig, readErr error, member consulkv.MemberSettings) (*consulkv.ClusterConfig, string) {
	var de *consulkv.DecodeError
	if errors.As(readErr, &de) {
		return nil, "ignoring the unreadable cluster config (keeping the last good one): " + de.Error()
	}
	if readErr != nil || stored == nil {
		return nil, ""
	}
	next := stored.WithDefaults()
	if err := next.ValidateFor([]consulkv.MemberSettings{member}); err != nil {
		return nil, "not adopting the stored cluster config (keeping the last good one): " + err.Error()
	}
	return &next, ""
}
