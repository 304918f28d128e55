// Command bench holds pgmesh's benchmark programs. Each prints a table of
// figures (median, min, max) and the raw per-run lines it computed them
// from; none of them is a timed test.
//
//	go run ./bench failover   [-runs 5] [-profile default|fast|checks|checks-fast|node|node-fast|patroni-defaults|patroni-tuned] [-hosts]
//	go run ./bench switchover [-runs 5] [-profile …]
//	go run ./bench footprint  [-duration 60s] [-profiles default,fast]
//	go run ./bench scale      [-groups 10,50,100] [-duration 30s] [-profile default|fast]
//	go run ./bench datacenters [-runs 5] [-profile default|fast] [-scenarios group,datacenter,consul]
//
// failover, switchover and footprint run real components on loopback: the
// demo's Consul (internal/demo, session_ttl_min 1s) and a group of three
// PostgreSQL 15 members, each managed by a pgmesh agent process built from
// this repository (or -pgmesh PATH). failover kills the primary's "host"
// (agent, fence watchdog, postmaster and backends, SIGKILL) and times the
// first successful write: directly, through Consul DNS and through HAProxy
// configured by pgmesh's renderer. failover -hosts models the hosts as
// production runs them: the demo's Consul becomes one of three servers (two
// more join it), every member gets its own Consul client agent that its
// pgmesh agent talks to, and the kill takes that client agent too, so Consul
// learns of the death only through the session TTL or serf's failure
// detection (the node's serfHealth check), on Consul's default gossip
// timings; profiles node and node-fast tie the session to serfHealth and
// need -hosts. switchover runs `pgmesh switchover --force --to X` under
// clients writing every 10ms (directly and through HAProxy) and reports the
// longest gap between writes. footprint measures
// each idle agent's RSS, CPU and Consul requests per second through a
// counting proxy between the agent and Consul.
//
// scale SIMULATES agents: goroutines that speak pgmesh's Consul protocol
// through package consulkv (sessions renewed every loop_wait, member keys,
// one leader lock per group, the leader's status key, the group watch,
// service registrations with HTTP checks answered by the generator) for
// 10, 50 and 100 groups of three members, and measures the Consul requests
// per second they make, Consul's CPU, and the routing renderer's input and
// render latency and change-to-file convergence against that load.
//
// datacenters runs the demo across three Consul datacenters (one group
// each) and measures write availability as applications see it when they
// find the writable primary only through <cluster>-write.query.consul: a
// group failover in dc1, the loss of all of dc1's database hosts, and the
// loss of dc3's Consul server.
//
// Every program cleans up what it started (also on Ctrl-C or failure),
// bounds its run time (-timeout) and uses loopback only. See
// docs/benchmarks.md for what each figure means and the measured results.
package main
