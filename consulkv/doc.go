// Package consulkv is everything pgmesh says to Consul: sessions, the group
// leader lock with its local monotonic lease, guarded (session-checked or
// CAS) writes, consistent reads of a group or the whole cluster, blocking
// watches, and the typed, versioned JSON values stored under the KV layout of
// DESIGN.md §3.
//
// Values read from Consul are validated on decode. A value that does not
// decode or validate is reported as a *DecodeError naming its key and is
// treated as absent by the readers, so garbage written by hand or by a buggy
// tool never crashes an agent.
//
// The client honours consul/api's environment conventions (CONSUL_HTTP_ADDR,
// CONSUL_HTTP_TOKEN, CONSUL_CACERT, CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY,
// CONSUL_HTTP_SSL, …); explicit Config fields override them.
package consulkv
