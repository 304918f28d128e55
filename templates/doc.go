// Package templates holds the routing templates pgmesh ships, embedded in
// the binary:
//
//   - haproxy.cfg.tmpl: HAProxy for the native renderer (pgmesh render,
//     Go text/template over routing.RenderData): a write listener with every
//     group's primary (local group first, the others as backups), a read
//     listener (replicas within a lag bound, primaries as fallback), one
//     listener per group and a stats page. HAProxy checks the agents' REST
//     API (/primary, /replica?lag=).
//   - haproxy.ctmpl: the same routing for consul-template users, built on
//     the Consul service tags (primary.<cluster>, <group>-primary.<cluster>,
//     replica.<cluster>) and the service meta api_url; configured through
//     environment variables (see the file's header).
//   - pg_service.conf.tmpl: a libpq service file with one service per group
//     (<cluster>-<group>, read-write), <cluster>-any-writable (every member,
//     primaries first, read-write) and <cluster>-read (prefer-standby).
//
// Use them as "builtin:<name>" in a render configuration, or copy one out
// (`pgmesh render --show builtin:<name>`) as a starting point for your own.
package templates
