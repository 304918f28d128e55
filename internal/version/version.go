// Package version holds the build's version string (set with -ldflags).
package version

// Version is overridden at link time: -X github.com/pgmesh/pgmesh/internal/version.Version=v1.2.3
var Version = "0.1.0-dev"
