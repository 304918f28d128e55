// Package test holds pgmesh's integration and fault-injection tests. They
// run real Consul, PostgreSQL 15 and pgmesh agent processes (see
// test/testbed) and assert on what an operator would observe: which member
// accepts writes, whether acknowledged rows survive, how long a failover
// took.
package test
