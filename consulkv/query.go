package consulkv

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/hashicorp/consul/api"
)

// Prepared queries let clients ask Consul's DNS for "the nearest writable
// primary of the mesh": <cluster>-write.query.consul answers the passing
// primaries of the asking agent's datacenter, nearest first, and when that
// datacenter has none (its group is failing over, or it is lost) the
// primaries of the QueryNearestN nearest other datacenters by network
// coordinates, then of the cluster's listed datacenters. Prepared queries
// live in one datacenter each, so every datacenter of the mesh gets its own
// copy from the agents there.

// QueryNearestN is how many other datacenters, nearest first by Consul's
// network coordinates, a query tries when its own has no passing instance.
const QueryNearestN = 3

// ClusterQueries are the prepared queries pgmesh keeps for cluster:
// <cluster>-write (tag primary) and <cluster>-read (tag replica: streaming
// replicas, whose check is /replica), both passing-only and sorted by
// distance from the agent that answers, failing over to the nearest
// datacenters and then to datacenters (the cluster config's list).
func ClusterQueries(cluster string, datacenters []string) []*api.PreparedQueryDefinition {
	mk := func(suffix, tag string) *api.PreparedQueryDefinition {
		return &api.PreparedQueryDefinition{
			Name: cluster + "-" + suffix,
			Service: api.ServiceQuery{
				Service:     cluster,
				Tags:        []string{tag},
				OnlyPassing: true,
				Near:        "_agent",
				Failover:    api.QueryFailoverOptions{NearestN: QueryNearestN, Datacenters: slices.Clone(datacenters)},
			},
			// No DNS caching: a failover must show at the next lookup.
			DNS: api.QueryDNSOptions{TTL: "0s"},
		}
	}
	return []*api.PreparedQueryDefinition{mk("write", RolePrimary), mk("read", RoleReplica)}
}

// EnsureQueries creates the queries in the agent's datacenter, or updates
// the ones of the same name that differ; it reports the names it wrote.
// Concurrent callers (every agent keeps them) converge: a create that lost
// the race fails with a name conflict and the next round updates instead.
func (c *Client) EnsureQueries(ctx context.Context, defs []*api.PreparedQueryDefinition) ([]string, error) {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	have, _, err := c.api.PreparedQuery().List((&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, classify("list prepared queries", err)
	}
	byName := map[string]*api.PreparedQueryDefinition{}
	for _, q := range have {
		byName[q.Name] = q
	}
	var wrote []string
	for _, want := range defs {
		cur := byName[want.Name]
		switch {
		case cur == nil:
			if _, _, err := c.api.PreparedQuery().Create(want, c.wopts(ctx)); err != nil {
				return wrote, classify("create prepared query "+want.Name, err)
			}
		case !sameQuery(cur, want):
			upd := *want
			upd.ID = cur.ID
			if _, err := c.api.PreparedQuery().Update(&upd, c.wopts(ctx)); err != nil {
				return wrote, classify("update prepared query "+want.Name, err)
			}
		default:
			continue
		}
		wrote = append(wrote, want.Name)
	}
	return wrote, nil
}

// sameQuery compares what pgmesh sets in a query.
func sameQuery(a, b *api.PreparedQueryDefinition) bool {
	as, bs := a.Service, b.Service
	return as.Service == bs.Service && slices.Equal(as.Tags, bs.Tags) && as.OnlyPassing == bs.OnlyPassing &&
		as.Near == bs.Near && as.Failover.NearestN == bs.Failover.NearestN &&
		slices.Equal(sortedCopy(as.Failover.Datacenters), sortedCopy(bs.Failover.Datacenters)) &&
		normTTL(a.DNS.TTL) == normTTL(b.DNS.TTL) && a.Template.Type == b.Template.Type
}

func sortedCopy(s []string) []string {
	out := slices.Clone(s)
	sort.Strings(out)
	if len(out) == 0 {
		return nil
	}
	return out
}

func normTTL(s string) string {
	if s == "" || s == "0" || s == "0s" {
		return "0s"
	}
	return s
}

// ExecuteQuery runs a prepared query by name and returns the addresses
// ("host:port", datacenter) it answered with, in its order.
func (c *Client) ExecuteQuery(ctx context.Context, name string) (addrs []string, dc string, err error) {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	res, _, err := c.api.PreparedQuery().Execute(name, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, "", classify("execute prepared query "+name, err)
	}
	for _, n := range res.Nodes {
		host := n.Service.Address
		if host == "" {
			host = n.Node.Address
		}
		addrs = append(addrs, fmt.Sprintf("%s:%d", host, n.Service.Port))
	}
	return addrs, res.Datacenter, nil
}

// QueryNames lists the names ClusterQueries gives cluster (for messages).
func QueryNames(cluster string) string {
	var n []string
	for _, q := range ClusterQueries(cluster, nil) {
		n = append(n, q.Name)
	}
	return strings.Join(n, ", ")
}
