// Package testbed starts the real components pgmesh's integration tests run
// against — a Consul agent, PostgreSQL 15 instances and HAProxy — on free
// loopback ports inside a test's temporary directory.
//
// Everything it starts is stopped by t.Cleanup, also when the test fails, and
// the logs of what it started are written to the test output when the test
// failed, so a red CI run says why. PostgreSQL refuses to run as root, so when
// the tests run as root (as in CI) the PostgreSQL processes are started as an
// unprivileged OS user (PGMESH_TEST_OS_USER, default "postgres").
package testbed
