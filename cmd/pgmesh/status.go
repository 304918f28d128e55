package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/health"
	"github.com/urfave/cli/v2"
	"gopkg.in/yaml.v3"
)

// Roles as status reports them. They describe the group's lock and sync
// key, not PostgreSQL's recovery state, like patronictl's list.
const (
	roleLeader        = "leader"
	roleSyncStandby   = "sync_standby"
	roleReplica       = "replica"
	roleUninitialized = "uninitialized"
)

var roleTitles = map[string]string{
	roleLeader:        "Leader",
	roleSyncStandby:   "Sync Standby",
	roleReplica:       "Replica",
	roleUninitialized: "Uninitialized",
}

// statusDoc is the machine-readable status (-o json|yaml); the table is
// rendered from the same document so both always agree.
type statusDoc struct {
	Cluster     string        `json:"cluster" yaml:"cluster"`
	Paused      bool          `json:"paused" yaml:"paused"`
	Groups      []groupStatus `json:"groups" yaml:"groups"`
	Replication []replLink    `json:"replication,omitempty" yaml:"replication,omitempty"`
	Problems    []string      `json:"problems" yaml:"problems"`
	// DetectionGoal is --detection-goal: members whose worst-case
	// detection estimate exceeds it are warned about (absent: off).
	DetectionGoal float64 `json:"detection_goal_seconds,omitempty" yaml:"detection_goal_seconds,omitempty"`
	// Datacenters are the Consul datacenters shown (absent: the local one,
	// whose name Consul did not say).
	Datacenters []string `json:"datacenters,omitempty" yaml:"datacenters,omitempty"`
	// Unreachable: the datacenters that could not be read, and why.
	Unreachable map[string]string `json:"unreachable_datacenters,omitempty" yaml:"unreachable_datacenters,omitempty"`
}

// replLink is one subscription between groups, as its subscriber's leader
// reports it, matched to the publishing group by endpoint.
type replLink struct {
	From         string  `json:"from" yaml:"from"`
	To           string  `json:"to" yaml:"to"`
	Subscription string  `json:"subscription" yaml:"subscription"`
	Source       string  `json:"source" yaml:"source"`
	State        string  `json:"state" yaml:"state"`
	LagBytes     *uint64 `json:"lag_bytes,omitempty" yaml:"lag_bytes,omitempty"`
	LastMessage  string  `json:"last_message,omitempty" yaml:"last_message,omitempty"`
	// Problem is set when the link needs attention (down, disabled,
	// lagging, publisher unknown or its slot missing).
	Problem string `json:"problem,omitempty" yaml:"problem,omitempty"`
}

// replicationLagWarn marks a subscription as lagging in the table.
const replicationLagWarn = 16 << 20

// buildReplication derives the replication section: every subscription on
// a group's leader, with the publishing group found by host:port. unread
// are the datacenters of the mesh that could not be read: a publisher not
// found may live there.
func buildReplication(v *consulkv.ClusterView, now time.Time, unread ...string) []replLink {
	owner := map[string]string{}
	for _, gname := range v.GroupNames() {
		for _, m := range v.Groups[gname].Members {
			owner[fmt.Sprintf("%s:%d", m.Host, m.Port)] = gname
		}
	}
	var links []replLink
	for _, gname := range v.GroupNames() {
		g := v.Groups[gname]
		if g.Leader == nil || g.Members[g.Leader.Member] == nil || g.Members[g.Leader.Member].Logical == nil {
			continue
		}
		for _, sub := range g.Members[g.Leader.Member].Logical.Subscriptions {
			l := replLink{To: gname, Subscription: sub.Name, Source: sub.Source, From: "?"}
			for _, ep := range sub.Endpoints {
				if o, ok := owner[ep]; ok {
					l.From = o
					break
				}
			}
			if !sub.LastMsgReceipt.IsZero() {
				l.LastMessage = now.Sub(sub.LastMsgReceipt).Round(time.Second).String() + " ago"
			}
			if pub := v.Groups[l.From]; pub != nil && pub.Leader != nil && pub.Members[pub.Leader.Member] != nil {
				pm := pub.Members[pub.Leader.Member]
				found := false
				if pm.Logical != nil {
					for _, slot := range pm.Logical.Slots {
						if slot.Name == sub.Name {
							lag := slot.LagBytes
							l.LagBytes = &lag
							found = true
						}
					}
				}
				if !found && sub.Source == "native" {
					l.Problem = "no slot " + sub.Name + " on " + l.From + "'s leader"
				}
			}
			switch {
			case !sub.Enabled:
				l.State = "disabled"
				l.Problem = "subscription disabled"
			case !sub.Running:
				l.State = "DOWN"
				if l.Problem == "" {
					l.Problem = "no apply worker running"
				}
			case l.LagBytes != nil && *l.LagBytes > replicationLagWarn:
				l.State = "lagging"
				l.Problem = fmt.Sprintf("%.1f MB behind", float64(*l.LagBytes)/(1<<20))
			default:
				l.State = "replicating"
			}
			if l.From == "?" && l.Problem == "" {
				l.Problem = "publisher is not a member of this mesh"
				if len(unread) > 0 {
					l.Problem = "publisher not found: it may be in datacenter " + strings.Join(unread, ", ") + ", which could not be read"
				}
			}
			links = append(links, l)
		}
	}
	return links
}

type groupStatus struct {
	Name string `json:"name" yaml:"name"`
	// Datacenter is the Consul datacenter the group lives in (when known).
	Datacenter string `json:"datacenter,omitempty" yaml:"datacenter,omitempty"`
	SystemID   string `json:"system_id,omitempty" yaml:"system_id,omitempty"`
	Leader     string `json:"leader" yaml:"leader"`
	Paused     bool   `json:"paused" yaml:"paused"`
	Timeline   uint32 `json:"timeline,omitempty" yaml:"timeline,omitempty"`
	// LastLSN is the leader's last published position, the lag reference.
	LastLSN  string         `json:"last_lsn,omitempty" yaml:"last_lsn,omitempty"`
	Members  []memberStatus `json:"members" yaml:"members"`
	Pending  *pendingSwitch `json:"pending_switchover,omitempty" yaml:"pending_switchover,omitempty"`
	Problems []string       `json:"problems,omitempty" yaml:"problems,omitempty"`
	// DetectionWarnings name the members whose dead host would be noticed
	// more slowly than --detection-goal, with the fix.
	DetectionWarnings []string `json:"detection_warnings,omitempty" yaml:"detection_warnings,omitempty"`
	// SkippedChanges are other groups' changes the group's latest
	// promotion left out (they stay listed until the next promotion; the
	// history keeps them).
	SkippedChanges []skippedLine `json:"skipped_changes,omitempty" yaml:"skipped_changes,omitempty"`
	// SkippedBy is the promotion SkippedChanges belong to.
	SkippedBy *historyLine `json:"skipped_by,omitempty" yaml:"skipped_by,omitempty"`
}

type memberStatus struct {
	Name       string `json:"name" yaml:"name"`
	Host       string `json:"host" yaml:"host"`
	Port       int    `json:"port" yaml:"port"`
	Role       string `json:"role" yaml:"role"`
	State      string `json:"state" yaml:"state"`
	Timeline   uint32 `json:"timeline,omitempty" yaml:"timeline,omitempty"`
	WriteLSN   string `json:"write_lsn,omitempty" yaml:"write_lsn,omitempty"`
	ReceiveLSN string `json:"receive_lsn,omitempty" yaml:"receive_lsn,omitempty"`
	ReplayLSN  string `json:"replay_lsn,omitempty" yaml:"replay_lsn,omitempty"`
	// LagBytes is absent for the leader and when either position is unknown.
	LagBytes *uint64           `json:"lag_bytes,omitempty" yaml:"lag_bytes,omitempty"`
	Tags     map[string]string `json:"tags,omitempty" yaml:"tags,omitempty"`
	APIURL   string            `json:"api_url,omitempty" yaml:"api_url,omitempty"`
	Message  string            `json:"message,omitempty" yaml:"message,omitempty"`
	// ConfigProblem: why the member runs on an older cluster config.
	ConfigProblem string `json:"config_problem,omitempty" yaml:"config_problem,omitempty"`
	// SessionChecks are the health checks the member's Consul session is
	// tied to (none: the session ends only when its TTL runs out).
	SessionChecks []string `json:"session_checks,omitempty" yaml:"session_checks,omitempty"`
	// DetectionVia is what notices the member's host dying: serfHealth or
	// session_ttl. DetectionTypical and DetectionEstimate (the worst case)
	// are the seconds until a successor may take the lock, lock-delay
	// included (see estimateDetection).
	DetectionVia      string    `json:"detection_via" yaml:"detection_via"`
	DetectionTypical  float64   `json:"detection_typical_seconds" yaml:"detection_typical_seconds"`
	DetectionEstimate float64   `json:"detection_estimate_seconds" yaml:"detection_estimate_seconds"`
	Updated           time.Time `json:"updated_at" yaml:"updated_at"`

	detection *detection
}

type pendingSwitch struct {
	Kind        string     `json:"kind" yaml:"kind"`
	From        string     `json:"from,omitempty" yaml:"from,omitempty"`
	To          string     `json:"to,omitempty" yaml:"to,omitempty"`
	ScheduledAt *time.Time `json:"scheduled_at,omitempty" yaml:"scheduled_at,omitempty"`
	RequestedAt time.Time  `json:"requested_at" yaml:"requested_at"`
}

// formatLSN leaves unknown positions blank rather than printing 0/0, which
// would read as "at the very start of WAL".
func formatLSN(l uint64) string {
	if l == 0 {
		return ""
	}
	return health.FormatLSN(l)
}

// buildStatus turns one consistent read of the cluster into the status
// document. It is pure so the table can be tested without Consul. goal is
// --detection-goal (0: no detection warnings). buildMeshStatus does the
// same for several datacenters.
func buildStatus(cluster string, v *consulkv.ClusterView, only string, goal time.Duration) statusDoc {
	return buildMeshStatus(cluster, []dcView{{View: v}}, only, goal)
}

func buildGroup(g *consulkv.GroupView, cfg consulkv.ClusterConfig) groupStatus {
	gs := groupStatus{Name: g.Name, Paused: cfg.GroupPaused(g.Name), Members: []memberStatus{}}
	leader := leaderName(g)
	gs.Leader = leader
	if g.Initialize != nil {
		gs.SystemID = g.Initialize.SystemID
	}
	// The same lag reference the agents use (health.newClusterStatus): the
	// leader's published position, or its own member key if that is newer.
	var ref uint64
	if g.Status != nil && g.Status.Leader == leader {
		ref = g.Status.LastLSN
		gs.Timeline = g.Status.Timeline
	}
	if lm := g.Members[leader]; lm != nil {
		ref = max(ref, lm.LastLSN())
		if lm.Timeline > gs.Timeline {
			gs.Timeline = lm.Timeline
		}
	}
	gs.LastLSN = formatLSN(ref)
	var sync []string
	if g.Sync != nil && leader != "" && g.Sync.Leader == leader {
		sync = g.Sync.SyncStandbys
	}
	for _, n := range g.MemberNames() {
		m := g.Members[n]
		if m == nil {
			continue // no member key: nothing to show
		}
		est := estimateDetection(cfg, m.SessionChecks)
		ms := memberStatus{
			Name: n, Host: m.Host, Port: m.Port, State: m.State, Timeline: m.Timeline,
			WriteLSN: formatLSN(m.WriteLSN), ReceiveLSN: formatLSN(m.ReceiveLSN), ReplayLSN: formatLSN(m.ReplayLSN),
			Tags: tagMap(m.Tags), APIURL: m.APIURL, Message: m.Message, ConfigProblem: m.ConfigProblem, Updated: m.UpdatedAt,
			SessionChecks: m.SessionChecks,
			DetectionVia:  est.Via, DetectionTypical: seconds(est.Typical), DetectionEstimate: seconds(est.Worst),
			detection: &est,
		}
		switch {
		case n == leader:
			ms.Role = roleLeader
		case contains(sync, n):
			ms.Role = roleSyncStandby
		case m.Role != consulkv.RolePrimary && m.Timeline == 0 && m.SystemID == "":
			// No data directory yet (bootstrapping or cloning): calling it a
			// replica would suggest it could take over.
			ms.Role = roleUninitialized
		default:
			ms.Role = roleReplica
		}
		if n != leader {
			if own := max(m.ReceiveLSN, m.ReplayLSN); ref != 0 && own != 0 {
				var lag uint64
				if own < ref {
					lag = ref - own
				}
				ms.LagBytes = &lag
			}
			if m.Role == consulkv.RoleReplica && m.State == "running" && m.Streaming {
				ms.State = "streaming"
			}
		}
		gs.Members = append(gs.Members, ms)
	}
	if f := g.Failover; f != nil {
		gs.Pending = &pendingSwitch{Kind: f.Kind, From: f.Leader, To: f.Candidate, ScheduledAt: f.ScheduledAt, RequestedAt: f.RequestedAt}
	}
	if leader == "" && g.Leader != nil {
		gs.Problems = append(gs.Problems, "the leader key is locked but its value is unreadable")
	}
	for _, p := range g.Problems {
		gs.Problems = append(gs.Problems, trimPkg(p.Error()))
	}
	if g.History != nil && len(g.History.Entries) > 0 {
		if lines := historyLines(&consulkv.History{Entries: g.History.Entries[len(g.History.Entries)-1:]}); len(lines[0].SkippedChanges) > 0 {
			by := lines[0]
			by.SkippedChanges = nil
			gs.SkippedChanges, gs.SkippedBy = lines[0].SkippedChanges, &by
		}
	}
	return gs
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// tagMap flattens member tags the way the REST API shows them.
func tagMap(t consulkv.MemberTags) map[string]string {
	m := map[string]string{}
	for k, v := range t.Custom {
		m[k] = v
	}
	if t.NoFailover {
		m["nofailover"] = "true"
	}
	if t.NoSync {
		m["nosync"] = "true"
	}
	if t.FailoverPriority != 0 {
		m["failover_priority"] = strconv.Itoa(t.FailoverPriority)
	}
	if len(m) == 0 {
		return nil
	}
	return m
}

func formatTags(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		if m[k] == "true" {
			parts = append(parts, k)
		} else {
			parts = append(parts, k+"="+m[k])
		}
	}
	return strings.Join(parts, " ")
}

// formatLagMB rounds like patronictl (whole MB); a replica that is behind
// by less than half a MB shows 0, one whose lag is unknown says so.
func formatLagMB(m memberStatus) string {
	if m.Role == roleLeader {
		return ""
	}
	if m.LagBytes == nil {
		return "unknown"
	}
	return strconv.FormatUint((*m.LagBytes+(1<<19))>>20, 10)
}

// renderStatus writes the human table: a header, one table per group and
// footer lines for whatever needs an operator's attention.
func renderStatus(w io.Writer, doc statusDoc) {
	fmt.Fprintf(w, "Cluster: %s\n", doc.Cluster)
	for _, g := range doc.Groups {
		sys := g.SystemID
		if sys == "" {
			sys = "not initialized"
		}
		if len(doc.Datacenters) > 1 && g.Datacenter != "" {
			fmt.Fprintf(w, "\nGroup: %s (datacenter %s, system id %s)\n", g.Name, g.Datacenter, sys)
		} else {
			fmt.Fprintf(w, "\nGroup: %s (system id %s)\n", g.Name, sys)
		}
		var tb strings.Builder
		tw := tabwriter.NewWriter(&tb, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "Member\tHost:Port\tRole\tState\tTL\tReceive LSN\tReplay LSN\tLag in MB\tTags")
		for _, m := range g.Members {
			tl := ""
			if m.Timeline != 0 {
				tl = strconv.FormatUint(uint64(m.Timeline), 10)
			}
			hp := m.Host
			if m.Port != 0 {
				hp = fmt.Sprintf("%s:%d", m.Host, m.Port)
			}
			recv, replay := m.ReceiveLSN, m.ReplayLSN
			if m.Role == roleLeader {
				recv = m.WriteLSN
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Name, hp, roleTitles[m.Role], m.State, tl,
				recv, replay, formatLagMB(m), formatTags(m.Tags))
		}
		tw.Flush()
		writeTrimmed(w, tb.String())
		if line := detectionLine(g); line != "" {
			fmt.Fprintln(w, line)
		}
	}
	if len(doc.Replication) > 0 {
		fmt.Fprintf(w, "\nReplication between groups\n")
		var tb strings.Builder
		tw := tabwriter.NewWriter(&tb, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "From\tTo\tSubscription\tState\tLag in MB\tLast message\tProblem")
		for _, l := range doc.Replication {
			lag := ""
			if l.LagBytes != nil {
				lag = fmt.Sprintf("%.1f", float64(*l.LagBytes)/(1<<20))
			}
			problem := l.Problem
			if problem != "" {
				problem = "!! " + problem
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", l.From, l.To, l.Subscription, l.State, lag, l.LastMessage, problem)
		}
		tw.Flush()
		writeTrimmed(w, tb.String())
	}
	if lines := footer(doc); len(lines) > 0 {
		fmt.Fprintln(w)
		for _, l := range lines {
			fmt.Fprintln(w, l)
		}
	}
}

// writeTrimmed drops the padding tabwriter leaves after the last non-empty
// cell, so copied output and golden comparisons carry no trailing blanks.
func writeTrimmed(w io.Writer, s string) {
	for _, l := range strings.SplitAfter(s, "\n") {
		if l == "" {
			continue
		}
		fmt.Fprintln(w, strings.TrimRight(l, " \n"))
	}
}

func footer(doc statusDoc) []string {
	var out []string
	if doc.Paused {
		out = append(out, "Cluster is paused: no automatic failover, start or stop in any group.")
	}
	for _, g := range doc.Groups {
		if g.Paused && !doc.Paused {
			out = append(out, fmt.Sprintf("Group %s is paused: no automatic failover, start or stop.", g.Name))
		}
		if g.Leader == "" && len(g.Members) > 0 {
			out = append(out, fmt.Sprintf("Group %s has no leader.", g.Name))
		}
		for _, m := range g.Members {
			if m.ConfigProblem != "" {
				out = append(out, fmt.Sprintf("Member %s: %s", m.Name, m.ConfigProblem))
			}
		}
		if p := g.Pending; p != nil {
			what := "Switchover"
			if p.Kind == consulkv.KindFailover {
				what = "Failover"
			}
			to := p.To
			if to == "" {
				to = "any healthy replica"
			}
			from := ""
			if p.From != "" {
				from = " from " + p.From
			}
			if p.ScheduledAt != nil {
				out = append(out, fmt.Sprintf("%s scheduled in group %s%s to %s at %s.", what, g.Name, from, to, p.ScheduledAt.Local().Format(time.RFC3339)))
			} else {
				out = append(out, fmt.Sprintf("%s pending in group %s%s to %s (requested %s).", what, g.Name, from, to, p.RequestedAt.Local().Format(time.RFC3339)))
			}
		}
		out = append(out, g.DetectionWarnings...)
		for _, sk := range g.SkippedChanges {
			why := "the old leader had confirmed them before its standby had them"
			if sk.Publisher == "" {
				why = "the old leader had applied them before its standby had them"
			}
			out = append(out, fmt.Sprintf("!! Group %s %s: its promotion of %s at %s left them out (%s). Compare the groups' tables and repair.",
				g.Name, sk.sentence(), g.SkippedBy.NewLeader, g.SkippedBy.At.Local().Format(time.RFC3339), why))
		}
		for _, p := range g.Problems {
			out = append(out, "Consul problem: "+p)
		}
	}
	// Cluster problems repeat every group's (shown above, or filtered out
	// by --group); what is left is the config key's.
	for _, p := range doc.Problems {
		if !groupProblem(p) {
			out = append(out, "Consul problem: "+p)
		}
	}
	return append(out, datacenterFooter(doc)...)
}

// groupProblem: a cluster-level problem that belongs to some group (maybe
// one filtered out by --group, which must not be reported).
func groupProblem(p string) bool { return strings.Contains(p, "/groups/") }

func outputFlag(values string) cli.Flag {
	return &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "output format: " + values}
}

func writeDoc(w io.Writer, format string, doc any) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(doc)
	case "yaml":
		enc := yaml.NewEncoder(w)
		enc.SetIndent(2)
		if err := enc.Encode(doc); err != nil {
			return err
		}
		return enc.Close()
	}
	return fmt.Errorf("unknown output format %q", format)
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:    "status",
		Aliases: []string{"list"},
		Usage:   "show every group and member of the mesh: roles, state, timelines, lag",
		Flags: append([]cli.Flag{
			groupFlag("show only this group"),
			outputFlag("table, json or yaml"),
			&cli.IntFlag{Name: "watch", Aliases: []string{"w"}, Usage: "refresh every `N` seconds until Ctrl-C"},
			&cli.StringFlag{Name: "datacenters", EnvVars: []string{"PGMESH_DATACENTERS"},
				Usage: "show the groups of these Consul datacenters (`DC1,DC2`; default: the cluster config's datacenters, else every datacenter Consul knows)"},
			&cli.DurationFlag{Name: "detection-goal", Value: defaultDetectionGoal, EnvVars: []string{"PGMESH_DETECTION_GOAL"},
				Usage: "warn about members whose dead host may take longer than `DURATION` to be noticed and free the lock (0: no warning)"},
		}, connFlags()...),
		Action: runStatus,
	}
}

func runStatus(c *cli.Context) error {
	format := c.String("output")
	switch format {
	case "table", "json", "yaml":
	default:
		return usageErr("status: -o must be table, json or yaml, not %q", format)
	}
	if c.Int("watch") < 0 {
		return usageErr("status: --watch must be a positive number of seconds")
	}
	goal := c.Duration("detection-goal")
	if goal < 0 {
		return usageErr("status: --detection-goal must not be negative (0 turns the warning off)")
	}
	dcs, err := parseDatacenters(c.String("datacenters"))
	if err != nil {
		return usageErr("status: --datacenters: %v", err)
	}
	s, err := newOpConn(c)
	if err != nil {
		return err
	}
	group := c.String("group")
	src := s.meshSource()
	once := func(ctx context.Context) error {
		read, _ := readMesh(ctx, src, dcs)
		views, err := s.meshResult(read)
		if err != nil {
			return err
		}
		if group != "" && !meshHasGroup(views, group) {
			return failErr("group %q not found in cluster %q (groups: %s%s)", group, s.cluster, strings.Join(meshGroupNames(views), ", "), notReadHint(views))
		}
		doc := buildMeshStatus(s.cluster, views, group, goal)
		if format == "table" {
			renderStatus(s.out, doc)
			return nil
		}
		return writeDoc(s.out, format, doc)
	}
	n := c.Int("watch")
	if n == 0 {
		return once(c.Context)
	}
	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	tick := time.NewTicker(time.Duration(n) * time.Second)
	defer tick.Stop()
	for {
		// Clear and home the cursor; errors are shown in place of the table
		// so a Consul outage is visible without ending the watch.
		fmt.Fprint(s.out, "\033[H\033[2J")
		fmt.Fprintf(s.out, "%s, every %ds (Ctrl-C to stop)\n\n", time.Now().Format("2006-01-02 15:04:05"), n)
		if err := once(ctx); err != nil {
			fmt.Fprintln(s.out, err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}
