package consulkv

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/hashicorp/consul/api"
)

// A mesh may span Consul datacenters: each group lives in one, with its
// keys, sessions and services in that datacenter's Consul. Readers of the
// whole mesh (pgmesh status, pgmesh render) decide which datacenters to
// read the same way, with ChooseDatacenters.

// Where ChooseDatacenters took the datacenters from.
const (
	DatacentersExplicit = "flag"    // given by the caller (--datacenters, render.yml)
	DatacentersConfig   = "config"  // the cluster config's datacenters, as the local datacenter has it
	DatacentersCatalog  = "catalog" // every datacenter Consul knows, when more than one
	DatacentersLocal    = "local"   // only the local one: a mesh in one datacenter
)

// ChooseDatacenters decides which datacenters hold the mesh: explicit when
// given, else the cluster config's (cfg, read from the local datacenter;
// nil when unknown), else every datacenter Consul lists when it lists more
// than one (sorted, so the order does not follow round-trip times), else
// the local one alone — then the result is the catalog's single name, or
// nothing when the catalog is unknown.
func ChooseDatacenters(explicit []string, cfg *ClusterConfig, catalog []string) ([]string, string) {
	switch {
	case len(explicit) > 0:
		return explicit, DatacentersExplicit
	case cfg != nil && len(cfg.Datacenters) > 0:
		return cfg.Datacenters, DatacentersConfig
	case len(catalog) > 1:
		all := slices.Clone(catalog)
		slices.Sort(all)
		return all, DatacentersCatalog
	case len(catalog) == 1:
		return catalog, DatacentersLocal
	}
	return nil, DatacentersLocal
}

// ValidDatacenter checks a Consul datacenter name as pgmesh uses it: in
// ?dc= query strings and prepared-query failover lists.
func ValidDatacenter(dc string) error {
	if dc == "" {
		return errors.New("an empty datacenter name")
	}
	if strings.ContainsAny(dc, " \t\n/.?&#") {
		return fmt.Errorf("%q is not a Consul datacenter name", dc)
	}
	return nil
}

// Datacenters lists the datacenters Consul knows (/v1/catalog/datacenters,
// no ACL needed), bounded by the client's request timeout.
func (c *Client) Datacenters(ctx context.Context) ([]string, error) {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	var dcs []string
	if _, err := c.api.Raw().Query("/v1/catalog/datacenters", &dcs, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		return nil, classify("catalog datacenters", err)
	}
	return dcs, nil
}
