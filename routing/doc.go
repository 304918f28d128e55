// Package routing turns the live mesh into routing configuration: it builds
// a model of the cluster from Consul and renders templates from it
// (HAProxy, pg_service.conf, …), like consul-template but knowing what a
// pgmesh group, leader and replica are.
//
// The model (Mesh → Group → Member) is built by BuildMesh, a pure function
// of one consistent read of the cluster's KV tree (roles, leader keys,
// LSNs) and the Consul health entries of the cluster's service (check
// results). A member is in the mesh when it has a member key and/or a
// service entry. A group's writable primary is the member that holds the
// leader key, reports role primary, is registered as primary and passes
// every Consul check (Member.Writable); replicas are readable when they are
// healthy and within a lag bound (Member.Readable). Groups come local first
// (Mesh.LocalFirst), so templates can prefer the router's own group and use
// the others as backups.
//
// A mesh may span Consul datacenters (datacenters.go, across.go): the
// Renderer then reads every datacenter of the mesh through its local agent
// (?dc=), BuildMeshAcross merges the reads (each group carries its
// datacenter) and LocalFirst orders the groups local group, local
// datacenter, then the other datacenters nearest first by round-trip time
// from Consul's WAN coordinates (OrderDatacenters, with a dead band so
// coordinate noise never reorders). A datacenter that cannot be read keeps
// the groups last read from it and is marked unreachable.
//
// A Renderer executes Go text/template templates (builtin:<name> from the
// templates package, or files) with a RenderData (the Mesh plus ports,
// addresses, lag bound, libpq settings and free-form Vars) and the small
// FuncMap documented there. For every output that changed it writes a
// candidate next to the destination (fsync), runs the Validate command on
// it, renames it into place atomically (keeping an existing file's mode and
// owner) and runs the Reload command — only when the output changed, and
// never installing an output that failed validation. Template errors name
// the template and line.
//
// Renderer.Run watches Consul with blocking queries only (the cluster's KV
// prefix and the service's health), renders in memory on every change and
// installs a changed output after a quiet period (Debounce, default 200ms;
// at most MaxDelay, default 2s, after the first change), so the burst of
// updates of a failover costs one reload. When an entry names HAProxy's
// stats socket, primary changes are also pushed through HAProxy's runtime
// API at once (new primary "health up", old one "health down" and
// "shutdown sessions"), so HAProxy switches before its own checks notice.
// Renderer.RenderOnce renders once (pgmesh render --once).
package routing
