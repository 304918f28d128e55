// Package health serves pgmesh's REST API: the Patroni-compatible health
// endpoints HAProxy and monitoring poll (/primary, /replica, /health, …),
// the status JSON peers read during a leader race, and the management
// endpoints (switchover, failover, restart, reload, reinitialize, config).
package health
