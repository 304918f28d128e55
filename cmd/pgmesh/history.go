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
	// SkippedChanges are other groups' changes the promotion left out (see
	// consulkv.SkippedChanges).
	SkippedChanges []skippedLine `json:"skipped_changes,omitempty" yaml:"skipped_changes,omitempty"`
}

// skippedLine is a range of a publisher's WAL a promotion skipped.
type skippedLine struct {
	Origin    string `json:"origin" yaml:"origin"`
	Slot      string `json:"slot" yaml:"slot"`
	Publisher string `json:"publisher,omitempty" yaml:"publisher,omitempty"`
	From      string `json:"from" yaml:"from"`
	To        string `json:"to" yaml:"to"`
}

func skippedLines(in []consulkv.SkippedChanges) []skippedLine {
	var out []skippedLine
	for _, s := range in {
		out = append(out, skippedLine{Origin: s.Origin, Slot: s.Slot, Publisher: s.Publisher, From: health.FormatLSN(s.From), To: health.FormatLSN(s.To)})
	}
	return out
}

// sentence says what a skipped range means for the group that promoted.
func (s skippedLine) sentence() string {
	if s.Publisher == "" {
		return fmt.Sprintf("may lack changes its old leader had applied from slot %s (publisher's WAL %s to %s; no group publishes that slot, so they may not be sent again)", s.Slot, s.From, s.To)
	}
	return fmt.Sprintf("lacks changes of group %s (slot %s, %s's WAL %s to %s) that %s will not send again", s.Publisher, s.Slot, s.Publisher, s.From, s.To, s.Publisher)
}

func historyLines(h *consulkv.History) []historyLine {
	out := []historyLine{}
	if h == nil {
		return out
	}
	for _, e := range h.Entries {
		out = append(out, historyLine{Timeline: e.Timeline, LSN: health.FormatLSN(e.LSN), Reason: e.Reason, At: e.At, NewLeader: e.NewLeader,
			SkippedChanges: skippedLines(e.SkippedChanges)})
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
	for _, l := range lines {
		for _, sk := range l.SkippedChanges {
			fmt.Fprintf(w, "!! %s, promoted after timeline %d, %s\n", l.NewLeader, l.Timeline, sk.sentence())
		}
	}
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
