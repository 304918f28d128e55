// Package agent is pgmesh's HA loop: observe (Consul view + local PostgreSQL
// state + peers + clock) → decide → act, every loop_wait or sooner when a
// watch or a REST request wakes it.
//
// The decision core (Decide) is a pure function with no I/O, so every HA rule
// of DESIGN.md §4 is covered by table tests; the loop around it does the
// talking to Consul and PostgreSQL.
package agent
