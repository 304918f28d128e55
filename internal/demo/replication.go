package demo

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgmesh/pgmesh/consulkv"
)

// Replication between the demo's groups: what makes it a multi-master
// mesh. With Spock, one table (demo_kv) is replicated between every pair
// of groups and can be written on any group; with native publications on
// PostgreSQL 15 (no origin filter, so no two-way replication of one table)
// each group writes its own table (demo_<group>) and subscribes to every
// other group's.

// GroupDSN is a libpq connection string to whichever member of group is
// writable (every member listed, target_session_attrs=read-write), as
// clients and Spock subscriptions use it.
func (m *Mesh) GroupDSN(group string) string {
	var hosts, ports []string
	for _, mem := range m.members {
		if mem.Group == group {
			hosts = append(hosts, "127.0.0.1")
			ports = append(ports, fmt.Sprint(mem.PGPort))
		}
	}
	return fmt.Sprintf("host=%s port=%s user=postgres password=demo-superuser dbname=postgres target_session_attrs=read-write connect_timeout=3",
		strings.Join(hosts, ","), strings.Join(ports, ","))
}

// Groups lists the group names in order.
func (m *Mesh) Groups() []string {
	var out []string
	for _, mem := range m.members {
		if len(out) == 0 || out[len(out)-1] != mem.Group {
			out = append(out, mem.Group)
		}
	}
	return out
}

func (m *Mesh) execOn(ctx context.Context, group string, sqls ...string) error {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(cctx, m.GroupDSN(group))
	if err != nil {
		return fmt.Errorf("connect to group %s: %w", group, err)
	}
	defer c.Close(context.Background())
	for _, sql := range sqls {
		if _, err := c.Exec(cctx, sql); err != nil {
			return fmt.Errorf("group %s: %s: %w", group, sql, err)
		}
	}
	return nil
}

// queryRow runs a one-row query on group's writable member.
func (m *Mesh) queryRow(ctx context.Context, group, sql string, args []any, dest ...any) error {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := pgx.Connect(cctx, m.GroupDSN(group))
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	return c.QueryRow(cctx, sql, args...).Scan(dest...)
}

func quoteLit(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// ReplicationTable is the table a row written on one group shows up in on
// the others.
func (m *Mesh) ReplicationTable(group string) string {
	if m.opts.Replication == consulkv.ReplicationSpock {
		return "demo_kv"
	}
	return "demo_" + group
}

// SetupReplication creates the demo tables on every group's primary and
// replicates them between all groups (Spock nodes and subscriptions, or
// native publications and subscriptions), waiting until every
// subscription replicates.
func (m *Mesh) SetupReplication(ctx context.Context) error {
	groups := m.Groups()
	switch m.opts.Replication {
	case consulkv.ReplicationSpock:
		m.say("[+] replication between groups: Spock nodes and subscriptions between every pair of groups (table demo_kv)")
		for _, g := range groups {
			if err := m.execOn(ctx, g,
				"CREATE EXTENSION IF NOT EXISTS spock",
				"CREATE TABLE IF NOT EXISTS demo_kv(k text PRIMARY KEY, v text, written_on text NOT NULL DEFAULT current_setting('cluster_name'), at timestamptz NOT NULL DEFAULT clock_timestamp())",
				fmt.Sprintf("SELECT spock.node_create(%s, %s)", quoteLit(g), quoteLit(m.GroupDSN(g))),
				"SELECT spock.repset_add_table('default', 'demo_kv')",
			); err != nil {
				return err
			}
		}
		for _, g := range groups {
			for _, o := range groups {
				if o != g {
					if err := m.execOn(ctx, g, fmt.Sprintf("SELECT spock.sub_create(%s, %s)", quoteLit("sub_"+g+"_from_"+o), quoteLit(m.GroupDSN(o)))); err != nil {
						return err
					}
				}
			}
		}
		return m.waitSubscriptions(ctx, "SELECT count(*) FILTER (WHERE status = 'replicating'), count(*) FROM spock.sub_show_status()")
	case consulkv.ReplicationNative:
		m.say("[+] replication between groups: native publications and subscriptions (each group writes its own table demo_<group>)")
		var tables []string
		for _, g := range groups {
			tables = append(tables, fmt.Sprintf("CREATE TABLE IF NOT EXISTS demo_%s(k text PRIMARY KEY, v text, written_on text NOT NULL DEFAULT current_setting('cluster_name'), at timestamptz NOT NULL DEFAULT clock_timestamp())", g))
		}
		for _, g := range groups {
			if err := m.execOn(ctx, g, append(tables, fmt.Sprintf("CREATE PUBLICATION pub_%s FOR TABLE demo_%s", g, g))...); err != nil {
				return err
			}
		}
		for _, g := range groups {
			for _, o := range groups {
				if o != g {
					if err := m.execOn(ctx, g, fmt.Sprintf("CREATE SUBSCRIPTION sub_%s_from_%s CONNECTION %s PUBLICATION pub_%s", g, o, quoteLit(m.GroupDSN(o)), o)); err != nil {
						return err
					}
				}
			}
		}
		return m.waitSubscriptions(ctx, "SELECT count(*) FILTER (WHERE pid IS NOT NULL), count(*) FROM pg_stat_subscription")
	}
	return nil
}

// waitSubscriptions waits until query (running, total) says every group's
// subscriptions to the others run.
func (m *Mesh) waitSubscriptions(ctx context.Context, query string) error {
	groups := m.Groups()
	deadline := time.Now().Add(90 * time.Second)
	for _, g := range groups {
		for {
			var running, total int
			err := m.queryRow(ctx, g, query, nil, &running, &total)
			if err == nil && total == len(groups)-1 && running == total {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("group %s: %d of %d subscriptions running after 90s (%v)", g, running, len(groups)-1, err)
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			time.Sleep(300 * time.Millisecond)
		}
	}
	return nil
}

// ProveReplication writes a row on the first group (through its writable
// member) and reads it back on every other group, returning a one-line
// account with how long each took.
func (m *Mesh) ProveReplication(ctx context.Context) (string, error) {
	groups := m.Groups()
	if len(groups) < 2 {
		return "", errors.New("one group: nothing to replicate to")
	}
	first := groups[0]
	table := m.ReplicationTable(first)
	key := fmt.Sprintf("written-on-%s-at-%s", first, time.Now().Format("15:04:05.000"))
	start := time.Now()
	if err := m.execOn(ctx, first, fmt.Sprintf("INSERT INTO %s(k, v) VALUES (%s, 'hello from the demo')", table, quoteLit(key))); err != nil {
		return "", err
	}
	var parts []string
	for _, g := range groups[1:] {
		for {
			var n int
			err := m.queryRow(ctx, g, fmt.Sprintf("SELECT count(*) FROM %s WHERE k = $1", table), []any{key}, &n)
			if err == nil && n == 1 {
				parts = append(parts, fmt.Sprintf("on %s after %s", g, time.Since(start).Round(time.Millisecond)))
				break
			}
			if time.Since(start) > 30*time.Second {
				return "", fmt.Errorf("the row written on %s did not reach %s within 30s (%v)", first, g, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return fmt.Sprintf("a row written on %s (%s, key %s) was read back %s", first, table, key, strings.Join(parts, ", ")), nil
}

// WaitSlotCopies waits until every group's standbys report current copies
// of the logical slots the other groups consume from (logical_slots_ready):
// before that, a switchover is refused and a failover would cost the other
// groups their place in this group's changes. It returns how long it took.
func (m *Mesh) WaitSlotCopies(ctx context.Context, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	deadline := start.Add(timeout)
	for _, d := range m.dcs {
		kv, err := consulkv.New(consulkv.Config{Address: d.HTTPAddr(), Cluster: m.opts.Cluster})
		if err != nil {
			return 0, err
		}
		for _, g := range m.Groups() {
			if m.groupDatacenter(g) != d.Name {
				continue
			}
			for {
				v, err := kv.ReadGroup(ctx, g)
				why := ""
				if err != nil {
					why = err.Error()
				} else {
					why = slotCopiesMissing(v)
				}
				if why == "" {
					break
				}
				if time.Now().After(deadline) {
					return 0, fmt.Errorf("group %s after %s: %s", g, timeout, why)
				}
				select {
				case <-ctx.Done():
					return 0, ctx.Err()
				case <-time.After(300 * time.Millisecond):
				}
			}
		}
	}
	return time.Since(start), nil
}

// groupDatacenter is the datacenter group g lives in.
func (m *Mesh) groupDatacenter(g string) string {
	for _, mem := range m.members {
		if mem.Group == g {
			return mem.Datacenter
		}
	}
	return ""
}

// slotCopiesMissing says which standby of g lacks current copies of the
// leader's logical slots ("" when every one has them).
func slotCopiesMissing(g *consulkv.GroupView) string {
	leader := ""
	if g.Leader != nil {
		leader = g.Leader.Member
	}
	if g.Status == nil || g.Status.Leader != leader || !g.PublishesLogicalSlots() {
		return "its leader publishes no logical slots yet"
	}
	for _, n := range g.MemberNames() {
		if m := g.Members[n]; n != leader && m != nil && g.LacksSlotCopies(m) {
			return n + " has no current copies of the logical slots yet"
		}
	}
	return ""
}
