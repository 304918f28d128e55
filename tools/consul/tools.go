//go:build tools

// Package tools pins the Consul server version that the test bed builds.
// It lives in its own module so the main go.mod never carries Consul's
// server dependencies.
package tools

import _ "github.com/hashicorp/consul"
