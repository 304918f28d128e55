package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/urfave/cli/v2"
)

// Consul ACL policies for pgmesh, least privilege: what each role reads and
// writes, and nothing else. Printed as HCL for `consul acl policy create
// -rules @file` and tested against a Consul with default-deny ACLs
// (test/acl_test.go).

// policyKinds are the roles, with what they are for.
var policyKinds = map[string]string{
	"agent":    "a pgmesh agent: its cluster's keys, sessions on its Consul node, the cluster's service registration",
	"readonly": "pgmesh status and pgmesh render: read the cluster's keys and its service's health",
	"operator": "pgmesh pause/resume, config set/edit, switchover/failover requests: write the cluster's keys",
	"dns":      "Consul DNS (usually the anonymous token): resolve <tag>.<cluster>.service.consul",
}

// ConsulPolicy returns the HCL rules of a role for cluster under prefix;
// node, when set, narrows an agent's session rule to that Consul node.
func ConsulPolicy(kind, cluster, prefix, node string) (string, error) {
	if err := consulkv.ValidName("cluster", cluster); err != nil {
		return "", err
	}
	if prefix == "" {
		prefix = consulkv.DefaultPrefix
	}
	keys := strconv.Quote(strings.TrimSuffix(prefix, "/") + "/" + cluster + "/")
	svc := strconv.Quote(cluster)
	var b strings.Builder
	fmt.Fprintf(&b, "# pgmesh %s policy for cluster %q: %s.\n", kind, cluster, policyKinds[kind])
	switch kind {
	case "agent":
		fmt.Fprintf(&b, "\n# Leader lock, member and status keys, config (seeded on first start).\nkey_prefix %s {\n  policy = \"write\"\n}\n", keys)
		if node != "" {
			fmt.Fprintf(&b, "\n# Sessions on the Consul node the agent talks to.\nsession %s {\n  policy = \"write\"\n}\n", strconv.Quote(node))
		} else {
			b.WriteString("\n# Sessions on the Consul node the agent talks to (narrow it with --node).\nsession_prefix \"\" {\n  policy = \"write\"\n}\n")
		}
		fmt.Fprintf(&b, "\n# The member's service registration and its checks.\nservice %s {\n  policy = \"write\"\n}\n", svc)
		b.WriteString("\n# Sessions tied to node checks, and the catalog view of nodes.\nnode_prefix \"\" {\n  policy = \"read\"\n}\n")
		fmt.Fprintf(&b, "\n# The prepared queries %s-write and %s-read in this datacenter.\nquery_prefix %s {\n  policy = \"write\"\n}\n", cluster, cluster, strconv.Quote(cluster+"-"))
	case "readonly":
		fmt.Fprintf(&b, "\nkey_prefix %s {\n  policy = \"read\"\n}\n", keys)
		fmt.Fprintf(&b, "\n# Health of the cluster's service (render's server list).\nservice %s {\n  policy = \"read\"\n}\n", svc)
		b.WriteString("\n# Health entries carry their node; without it Consul filters them out.\nnode_prefix \"\" {\n  policy = \"read\"\n}\n")
	case "operator":
		fmt.Fprintf(&b, "\n# pause/resume and config write the config key; switchover and failover\n# store requests in the group's failover key.\nkey_prefix %s {\n  policy = \"write\"\n}\n", keys)
		fmt.Fprintf(&b, "\nservice %s {\n  policy = \"read\"\n}\n", svc)
		b.WriteString("\nnode_prefix \"\" {\n  policy = \"read\"\n}\n")
	case "dns":
		fmt.Fprintf(&b, "\nservice %s {\n  policy = \"read\"\n}\n", svc)
		b.WriteString("\nnode_prefix \"\" {\n  policy = \"read\"\n}\n")
	default:
		return "", fmt.Errorf("unknown policy %q: use agent, readonly, operator or dns", kind)
	}
	return b.String(), nil
}

func consulPolicyCommand() *cli.Command {
	return &cli.Command{
		Name:      "consul-policy",
		Usage:     "print the least-privilege Consul ACL policy (HCL) of a pgmesh role",
		ArgsUsage: "agent|readonly|operator|dns",
		Description: "Roles:\n" +
			"  agent     " + policyKinds["agent"] + "\n" +
			"  readonly  " + policyKinds["readonly"] + "\n" +
			"  operator  " + policyKinds["operator"] + "\n" +
			"  dns       " + policyKinds["dns"] + "\n\n" +
			"Example:\n" +
			"  pgmesh consul-policy agent --cluster mesh1 > agent.hcl\n" +
			"  consul acl policy create -name pgmesh-agent -rules @agent.hcl\n" +
			"  consul acl token create -policy-name pgmesh-agent",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "node", Usage: "agent policy: allow sessions only on this Consul `NODE` (default: any node)"},
		}, connFlags()...),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageErr("consul-policy: give one role: agent, readonly, operator or dns")
			}
			cluster := setting(c, "cluster")
			if cluster == "" {
				return usageErr("--cluster is required (or set PGMESH_CLUSTER)")
			}
			hcl, err := ConsulPolicy(c.Args().First(), cluster, setting(c, "prefix"), c.String("node"))
			if err != nil {
				return usageErr("consul-policy: %v", err)
			}
			fmt.Fprint(c.App.Writer, hcl)
			return nil
		},
	}
}
