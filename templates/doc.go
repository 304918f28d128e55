// Package templates will hold the routing templates pgmesh ships (HAProxy
// for the native renderer and for consul-template, pg_service.conf). It is
// issue 5's work and is empty until then.
package templates
