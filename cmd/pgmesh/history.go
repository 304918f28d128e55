package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/health"
	"github.com/urfave/cli/v2"
)

// historyLine is one promotion as -o json prints it. LSN is in PostgreSQL's
// X/X form because that is what operators paste into pg_waldump and logs.
type historyLine struct {
	Timeline  uint32    `json:"timeline" yaml:"timeline"`
	LSN       string    `json:"lsn" yaml:"lsn"`
	Reason    string    `json:"reason" yaml:"reason"`
	At        time.Time `json:"at" yaml:"at"`
	NewLeader string    `json:"new_leader" yaml:"new_leader"`
}

func historyLines(h *consulkv.History) []historyLine {
	out := []historyLine{}
	if h == nil {
		return out
	}
	for _, e := range h.Entries {
		out = append(out, historyLine{Timeline: e.Timeline, LSN: health.FormatLSN(e.LSN), Reason: e.Reason, At: e.At, NewLeader: e.NewLeader})
	}
	return out
}

func renderHistory(w io.Writer, lines []historyLine) {
	var tb strings.Builder
	tw := tabwriter.NewWriter(&tb, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TL\tLSN\tReason\tTime\tNew Leader")
	for _, l := range lines {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", strconv.FormatUint(uint64(l.Timeline), 10), l.LSN, l.Reason,
			l.At.Local().Format(time.RFC3339), l.NewLeader)
	}
	tw.Flush()
	writeTrimmed(w, tb.String())
}

func historyCommand() *cli.Command {
	return &cli.Command{
		Name:  "history",
		Usage: "list a group's promotions: the timeline that ended, where, why, when and who took over",
		Flags: append([]cli.Flag{
			groupFlag("the group (required)"),
			outputFlag("table, json or yaml"),
		}, connFlags()...),
		Action: func(c *cli.Context) error {
			format := c.String("output")
			if format != "table" && format != "json" && format != "yaml" {
				return usageErr("history: -o must be table, json or yaml, not %q", format)
			}
			group, err := requireGroup(c)
			if err != nil {
				return err
			}
			s, err := newOpConn(c)
			if err != nil {
				return err
			}
			g, err := s.readGroup(c.Context, group)
			if err != nil {
				return err
			}
			lines := historyLines(g.History)
			if format != "table" {
				return writeDoc(s.out, format, lines)
			}
			if len(lines) == 0 {
				fmt.Fprintf(s.out, "Group %s has no promotions in its history yet.\n", group)
				return nil
			}
			renderHistory(s.out, lines)
			return nil
		},
	}
}
