package main

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/urfave/cli/v2"
)

// findMember locates a member by name. Names are only unique within a
// group, so without --group a name found in two groups is refused rather
// than guessed: restarting the wrong primary is not a recoverable typo.
func findMember(v *consulkv.ClusterView, name, group string) (string, *consulkv.MemberStatus, error) {
	if group != "" {
		g := v.Groups[group]
		if g == nil {
			return "", nil, failErr("group %q not found (groups: %s)", group, strings.Join(v.GroupNames(), ", "))
		}
		m := g.Members[name]
		if m == nil {
			return "", nil, failErr("member %q not found in group %s (members: %s); a member whose agent is down has no key", name, group, strings.Join(g.MemberNames(), ", "))
		}
		return group, m, nil
	}
	var found []string
	for _, gn := range v.GroupNames() {
		if v.Groups[gn].Members[name] != nil {
			found = append(found, gn)
		}
	}
	switch len(found) {
	case 0:
		return "", nil, failErr("member %q not found in any group; a member whose agent is down has no key", name)
	case 1:
		return found[0], v.Groups[found[0]].Members[name], nil
	}
	sort.Strings(found)
	return "", nil, usageErr("member %q exists in groups %s; say which with --group", name, strings.Join(found, ", "))
}

// memberAction is one REST call on one member.
type memberAction struct {
	name        string
	usage       string
	path        string
	destructive bool
	timeout     time.Duration
	extraFlags  []cli.Flag
	body        func(c *cli.Context) map[string]any
	question    func(member, group, role string) string
}

func memberCommand(a memberAction) *cli.Command {
	flags := []cli.Flag{groupFlag("the member's group (needed only when the name is in several groups)")}
	if a.destructive {
		flags = append(flags, forceFlag("do not ask for confirmation"))
	}
	flags = append(flags, a.extraFlags...)
	flags = append(flags, timeoutFlag(a.timeout, "how long to wait for the agent's answer"))
	return &cli.Command{
		Name:      a.name,
		Usage:     a.usage,
		ArgsUsage: "MEMBER",
		Flags:     append(flags, connFlags()...),
		Action:    func(c *cli.Context) error { return runMemberAction(c, a) },
	}
}

func runMemberAction(c *cli.Context, a memberAction) error {
	if c.NArg() != 1 {
		return usageErr("%s: give exactly one MEMBER", a.name)
	}
	name := c.Args().First()
	s, err := newOpConn(c)
	if err != nil {
		return err
	}
	v, err := s.readCluster(c.Context)
	if err != nil {
		return err
	}
	group, m, err := findMember(v, name, c.String("group"))
	if err != nil {
		return err
	}
	role := "replica"
	if leaderName(v.Groups[group]) == name {
		role = "leader"
	}
	if a.destructive {
		if err := confirm(c, a.question(name, group, role)); err != nil {
			return err
		}
	}
	var body any
	if a.body != nil {
		body = a.body(c)
	}
	ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
	defer cancel()
	ans, err := s.api.do(ctx, http.MethodPost, m.APIURL, a.path, body)
	if err != nil {
		return failErr("%s: %s failed: %s", name, a.name, shortHTTPErr(err))
	}
	if !ans.ok() {
		return failErr("%s: %s (HTTP %d)", name, ans.Body, ans.Code)
	}
	fmt.Fprintf(s.out, "%s: %s\n", name, ans.Body)
	return nil
}

func restartCommand() *cli.Command {
	return memberCommand(memberAction{
		name: "restart", usage: "restart a member's PostgreSQL (its role is kept)", path: "/restart",
		destructive: true, timeout: 5 * time.Minute,
		extraFlags: []cli.Flag{
			&cli.BoolFlag{Name: "pending", Usage: "only if a changed parameter needs a restart"},
		},
		body: func(c *cli.Context) map[string]any {
			b := map[string]any{}
			if c.Bool("pending") {
				b["restart_pending"] = true
			}
			return b
		},
		question: func(m, g, role string) string {
			q := fmt.Sprintf("Restart PostgreSQL of %s (group %s, %s)?", m, g, role)
			if role == "leader" {
				q += " Writes to the group stop until it is back."
			}
			return q
		},
	})
}

func reloadCommand() *cli.Command {
	return memberCommand(memberAction{
		name: "reload", usage: "make a member rewrite and reload its PostgreSQL configuration", path: "/reload",
		timeout: time.Minute,
	})
}

func reinitCommand() *cli.Command {
	return memberCommand(memberAction{
		name: "reinit", usage: "wipe a replica's data directory and clone it again from the leader", path: "/reinitialize",
		destructive: true, timeout: 30 * time.Minute,
		body: func(c *cli.Context) map[string]any { return map[string]any{"force": c.Bool("force")} },
		question: func(m, g, role string) string {
			return fmt.Sprintf("Reinitialize %s (group %s, %s)? Its data directory is deleted and cloned again from the leader.", m, g, role)
		},
	})
}
