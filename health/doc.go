// Package health serves pgmesh's REST API: the Patroni-compatible health
// endpoints HAProxy and monitoring poll (/primary, /replica, /health, …),
// the status JSON peers read during a leader race, and the management
// endpoints (switchover, failover, restart, reload, reinitialize, config).
//
// Health endpoints answer from the agent's last MemberState only, never
// from Consul or PostgreSQL, so a check costs nothing and still answers
// while the store is slow. GET returns the /patroni document with the
// status; HEAD and OPTIONS return the status alone (HAProxy's
// `option httpchk OPTIONS /primary` reads only that).
//
//	/ /primary /master /read-write   200 while the member is the writable leader
//	/leader                          200 while it holds the leader key and PostgreSQL runs
//	/replica                         200 for a running, streaming replica without
//	                                 noloadbalance; ?lag=16MB, ?replication_state=streaming
//	                                 and ?tag_<key>=<value> narrow it further
//	/read-only                       the writable leader, or a replica as above
//	                                 (streaming not required)
//	/health                          200 while PostgreSQL runs
//	/liveness                        200 while the HA loop completed within ttl
//	/readiness                       200 for the running leader or a streaming replica
//
// Management endpoints (POST /switchover, /failover, /restart, /reload,
// /reinitialize; PATCH and PUT /config; DELETE /switchover) require basic
// auth when Options.Auth is set. Their texts and status codes follow
// Patroni's so patronictl-era scripts keep working.
package health
