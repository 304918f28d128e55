// Package routing will build the mesh model (groups → members → role,
// health, lag, addresses) from Consul and render routing templates from it
// (HAProxy, pg_service.conf). It is issue 5's work and is empty until then.
package routing
