package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/urfave/cli/v2"
	"gopkg.in/yaml.v3"
)

// configDoc is the dynamic config as operators read and edit it: durations
// as "10s" strings (consulkv.Duration has no YAML encoder, and a bare
// number of nanoseconds is unreadable) and defaults filled in, so what is
// shown is what the agents use.
type configDoc struct {
	TTL                  string            `yaml:"ttl" json:"ttl"`
	LoopWait             string            `yaml:"loop_wait" json:"loop_wait"`
	RetryTimeout         string            `yaml:"retry_timeout" json:"retry_timeout"`
	LockDelay            string            `yaml:"lock_delay" json:"lock_delay"`
	MaximumLagOnFailover uint64            `yaml:"maximum_lag_on_failover" json:"maximum_lag_on_failover"`
	Pause                bool              `yaml:"pause,omitempty" json:"pause,omitempty"`
	PausedGroups         []string          `yaml:"paused_groups,omitempty" json:"paused_groups,omitempty"`
	Parameters           map[string]string `yaml:"parameters,omitempty" json:"parameters,omitempty"`
}

func toDoc(c consulkv.ClusterConfig) configDoc {
	c = c.WithDefaults()
	return configDoc{
		TTL: c.TTL.String(), LoopWait: c.LoopWait.String(), RetryTimeout: c.RetryTimeout.String(),
		LockDelay: c.LockDelay.String(), MaximumLagOnFailover: c.MaximumLagOnFailover,
		Pause: c.Paused, PausedGroups: c.PausedGroups, Parameters: c.Parameters,
	}
}

// fromDoc converts an edited document back, naming the field that is wrong.
func fromDoc(d configDoc) (consulkv.ClusterConfig, error) {
	c := consulkv.ClusterConfig{Version: consulkv.ValueVersion, MaximumLagOnFailover: d.MaximumLagOnFailover,
		Paused: d.Pause, Parameters: d.Parameters}
	for _, f := range []struct {
		name string
		val  string
		dst  *consulkv.Duration
	}{{"ttl", d.TTL, &c.TTL}, {"loop_wait", d.LoopWait, &c.LoopWait}, {"retry_timeout", d.RetryTimeout, &c.RetryTimeout}, {"lock_delay", d.LockDelay, &c.LockDelay}} {
		if strings.TrimSpace(f.val) == "" {
			continue // default
		}
		if err := f.dst.Set(f.val); err != nil {
			return c, fmt.Errorf("%s: %v", f.name, err)
		}
	}
	for _, g := range d.PausedGroups {
		if err := consulkv.ValidName("paused_groups", g); err != nil {
			return c, err
		}
	}
	if len(d.PausedGroups) > 0 {
		c.PausedGroups = append([]string(nil), d.PausedGroups...)
		sort.Strings(c.PausedGroups)
	}
	if len(c.Parameters) == 0 {
		c.Parameters = nil
	}
	return c, nil
}

func configYAML(c consulkv.ClusterConfig) string {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	_ = enc.Encode(toDoc(c))
	_ = enc.Close()
	return b.String()
}

// settableKeys are the keys `config set` takes; pause state has its own
// commands because they also know how to wait for the agents.
var settableKeys = []string{"ttl", "loop_wait", "retry_timeout", "lock_delay", "maximum_lag_on_failover", "primary_start_timeout", "failsafe_mode", "datacenters", "prepared_queries", "parameters.<name>"}

// applySet applies key=value assignments to cfg. An empty value (or
// "null") for parameters.<name> removes the parameter.
func applySet(cfg *consulkv.ClusterConfig, args []string) error {
	if len(args) == 0 {
		return errors.New("nothing to set: give key=value pairs (keys: " + strings.Join(settableKeys, ", ") + ")")
	}
	if cfg.Parameters != nil {
		p := make(map[string]string, len(cfg.Parameters))
		for k, v := range cfg.Parameters {
			p[k] = v
		}
		cfg.Parameters = p
	}
	for _, a := range args {
		key, val, ok := strings.Cut(a, "=")
		key = strings.TrimSpace(key)
		if !ok || key == "" {
			return fmt.Errorf("%q: want key=value", a)
		}
		val = strings.TrimSpace(val)
		var dst *consulkv.Duration
		switch key {
		case "ttl":
			dst = &cfg.TTL
		case "loop_wait":
			dst = &cfg.LoopWait
		case "retry_timeout":
			dst = &cfg.RetryTimeout
		case "lock_delay":
			dst = &cfg.LockDelay
		case "primary_start_timeout":
			if val == "" || val == "null" {
				cfg.PrimaryStartTimeout = nil // back to the default
				continue
			}
			d := new(consulkv.Duration)
			if err := d.Set(val); err != nil {
				return fmt.Errorf("%s: %v", key, err)
			}
			cfg.PrimaryStartTimeout = d
			continue
		case "maximum_lag_on_failover":
			n, err := parseSize(val)
			if err != nil {
				return fmt.Errorf("maximum_lag_on_failover: %v", err)
			}
			cfg.MaximumLagOnFailover = n
			continue
		case "failsafe_mode", "prepared_queries":
			b, err := strconv.ParseBool(val)
			if err != nil {
				return fmt.Errorf("%s: %q is not true or false", key, val)
			}
			if key == "failsafe_mode" {
				cfg.FailsafeMode = &b
			} else {
				cfg.PreparedQueries = &b
			}
			continue
		case "datacenters":
			// Comma-separated; empty clears the list.
			cfg.Datacenters = nil
			for _, dc := range strings.Split(val, ",") {
				if dc = strings.TrimSpace(dc); dc != "" {
					cfg.Datacenters = append(cfg.Datacenters, dc)
				}
			}
			continue
		case "pause", "paused_groups":
			return fmt.Errorf("%s: use `pgmesh pause` / `pgmesh resume`", key)
		default:
			name, isParam := strings.CutPrefix(key, "parameters.")
			if !isParam || name == "" {
				return fmt.Errorf("unknown key %q (keys: %s)", key, strings.Join(settableKeys, ", "))
			}
			if val == "" || val == "null" {
				delete(cfg.Parameters, name)
				if len(cfg.Parameters) == 0 {
					cfg.Parameters = nil
				}
				continue
			}
			if cfg.Parameters == nil {
				cfg.Parameters = map[string]string{}
			}
			cfg.Parameters[name] = val
			continue
		}
		if err := dst.Set(val); err != nil {
			return fmt.Errorf("%s: %v", key, err)
		}
		if dst.D() <= 0 && key != "lock_delay" {
			return fmt.Errorf("%s: must be positive", key)
		}
	}
	return nil
}

// parseSize reads a byte count, optionally with PostgreSQL's units (kB, MB,
// GB; powers of 1024), since WAL lag is usually thought of in MB.
func parseSize(s string) (uint64, error) {
	units := []struct {
		suffix string
		mult   uint64
	}{{"GB", 1 << 30}, {"MB", 1 << 20}, {"kB", 1 << 10}, {"B", 1}}
	num, mult := s, uint64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			num, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a number of bytes (units kB, MB, GB allowed)", s)
	}
	return n * mult, nil
}

// lineDiff renders a unified diff (3 lines of context) of two texts. The
// configs are short, so a quadratic LCS is plenty.
func lineDiff(oldName, newName, a, b string) string {
	x := splitLines(a)
	y := splitLines(b)
	n, m := len(x), len(y)
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if x[i] == y[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	type op struct {
		kind byte // ' ', '-', '+'
		text string
		i, j int // line numbers (0-based) in a and b before this op
	}
	var ops []op
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && x[i] == y[j]:
			ops = append(ops, op{' ', x[i], i, j})
			i, j = i+1, j+1
		case i < n && (j == m || lcs[i+1][j] >= lcs[i][j+1]):
			ops = append(ops, op{'-', x[i], i, j})
			i++
		default:
			ops = append(ops, op{'+', y[j], i, j})
			j++
		}
	}
	const ctx = 3
	var out strings.Builder
	for k := 0; k < len(ops); {
		if ops[k].kind == ' ' {
			k++
			continue
		}
		// A hunk: from ctx lines before this change to ctx lines after the
		// last change that is within 2*ctx of the previous one.
		start := max(0, k-ctx)
		end := k
		for e := k; e < len(ops); e++ {
			if ops[e].kind != ' ' {
				end = e
			} else if e-end > 2*ctx {
				break
			}
		}
		end = min(len(ops), end+ctx+1)
		if out.Len() == 0 {
			fmt.Fprintf(&out, "--- %s\n+++ %s\n", oldName, newName)
		}
		var la, lb int
		for _, o := range ops[start:end] {
			if o.kind != '+' {
				la++
			}
			if o.kind != '-' {
				lb++
			}
		}
		fmt.Fprintf(&out, "@@ -%d,%d +%d,%d @@\n", ops[start].i+1, la, ops[start].j+1, lb)
		for _, o := range ops[start:end] {
			fmt.Fprintf(&out, "%c%s\n", o.kind, o.text)
		}
		k = end
	}
	return out.String()
}

func splitLines(s string) []string {
	s = strings.TrimSuffix(s, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

func configCommand() *cli.Command {
	return &cli.Command{
		Name:  "config",
		Usage: "show or change the cluster's dynamic configuration (shared by every agent, stored in Consul)",
		Subcommands: []*cli.Command{
			{
				Name:   "show",
				Usage:  "print the dynamic configuration (defaults filled in) as YAML",
				Flags:  append([]cli.Flag{outputFlag("yaml or json")}, connFlags()...),
				Action: runConfigShow,
			},
			{
				Name:      "set",
				Usage:     "change settings: key=value … (" + strings.Join(settableKeys, ", ") + ")",
				ArgsUsage: "KEY=VALUE [KEY=VALUE…]",
				Flags:     append([]cli.Flag{forceFlag("do not ask for confirmation")}, connFlags()...),
				Action:    runConfigSet,
			},
			{
				Name:   "edit",
				Usage:  "edit the dynamic configuration in $EDITOR",
				Flags:  append([]cli.Flag{forceFlag("do not ask for confirmation after editing")}, connFlags()...),
				Action: runConfigEdit,
			},
		},
	}
}

func runConfigShow(c *cli.Context) error {
	format := c.String("output")
	if format == "table" {
		format = "yaml"
	}
	if format != "yaml" && format != "json" {
		return usageErr("config show: -o must be yaml or json, not %q", format)
	}
	s, err := newOpConn(c)
	if err != nil {
		return err
	}
	cfg, _, err := s.kv.ReadConfig(c.Context)
	var de *consulkv.DecodeError
	switch {
	case errors.As(err, &de):
		return failErr("the config key is unreadable (%s); repair it with `pgmesh config edit`", trimPkg(err.Error()))
	case err != nil:
		return s.consulErr(err)
	case cfg == nil:
		return failErr("cluster %q has no dynamic config in Consul at %s (under %s); check --cluster and --prefix", s.cluster, s.addr, s.kv.ClusterPrefix())
	}
	return writeDoc(s.out, format, toDoc(*cfg))
}

// commitConfig shows the change, asks, and writes it with CAS so an edit
// based on a stale read never silently replaces someone else's change.
func commitConfig(c *cli.Context, s *opConn, old *consulkv.ClusterConfig, next consulkv.ClusterConfig, index uint64) error {
	if err := next.Validate(); err != nil {
		return failErr("invalid config, nothing written: %v", err)
	}
	// Some rules depend on members' local settings, which they publish.
	cv, err := s.kv.ReadCluster(c.Context)
	if err != nil {
		return s.consulErr(err)
	}
	if err := next.ValidateFor(cv.MemberSettings()); err != nil {
		return failErr("unsafe config, nothing written: %v", err)
	}
	oldYAML := ""
	if old != nil {
		oldYAML = configYAML(*old)
	}
	newYAML := configYAML(next)
	if oldYAML == newYAML {
		fmt.Fprintln(s.out, "No changes.")
		return nil
	}
	fmt.Fprint(s.out, lineDiff("stored", "new", oldYAML, newYAML))
	if err := confirm(c, "Apply these changes?"); err != nil {
		return err
	}
	ok, err := s.kv.CAS(c.Context, s.kv.ConfigKey(), &next, index)
	if err != nil {
		return s.consulErr(err)
	}
	if !ok {
		return failErr("the config changed in Consul since it was read (someone else wrote it); nothing written, run the command again")
	}
	fmt.Fprintln(s.out, "Config updated; the agents apply it on their next loop.")
	return nil
}

func runConfigSet(c *cli.Context) error {
	s, err := newOpConn(c)
	if err != nil {
		return err
	}
	// Parse before reading Consul so a typo is a usage error, not a wait.
	if err := applySet(&consulkv.ClusterConfig{}, c.Args().Slice()); err != nil {
		return usageErr("config set: %v", err)
	}
	cfg, idx, err := s.kv.ReadConfig(c.Context)
	var de *consulkv.DecodeError
	switch {
	case errors.As(err, &de):
		return failErr("the config key is unreadable (%s); repair it with `pgmesh config edit`", trimPkg(err.Error()))
	case err != nil:
		return s.consulErr(err)
	case cfg == nil:
		return failErr("cluster %q has no dynamic config in Consul at %s yet (has any agent started?)", s.cluster, s.addr)
	}
	next := *cfg
	if err := applySet(&next, c.Args().Slice()); err != nil {
		return usageErr("config set: %v", err)
	}
	return commitConfig(c, s, cfg, next, idx)
}

// editorCommand runs $VISUAL or $EDITOR through the shell, so values such
// as "code --wait" work, as they do for git.
func editorCommand(path string) *exec.Cmd {
	ed := os.Getenv("VISUAL")
	if ed == "" {
		ed = os.Getenv("EDITOR")
	}
	if ed == "" {
		ed = "vi"
	}
	cmd := exec.Command("sh", "-c", ed+` "$1"`, "pgmesh-editor", path)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	return cmd
}

// parseEdited decodes the edited YAML strictly, key by key, so that every
// error names its key: a misspelt key would otherwise be dropped without a
// word and the operator would believe it set, and yaml's own type errors
// only give a line number.
func parseEdited(data []byte) (consulkv.ClusterConfig, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return consulkv.ClusterConfig{}, fmt.Errorf("not valid YAML: %s", cleanYAMLErr(err))
	}
	if root.Kind != yaml.DocumentNode || len(root.Content) == 0 || len(bytes.TrimSpace(stripComments(data))) == 0 {
		return consulkv.ClusterConfig{}, errors.New("the file is empty")
	}
	m := root.Content[0]
	if m.Kind != yaml.MappingNode {
		return consulkv.ClusterConfig{}, fmt.Errorf("line %d: want a mapping of key: value", m.Line)
	}
	var d configDoc
	var lag string
	fields := map[string]any{
		"ttl": &d.TTL, "loop_wait": &d.LoopWait, "retry_timeout": &d.RetryTimeout, "lock_delay": &d.LockDelay,
		"maximum_lag_on_failover": &lag, "pause": &d.Pause, "paused_groups": &d.PausedGroups, "parameters": &d.Parameters,
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		dst, ok := fields[k.Value]
		if !ok {
			return consulkv.ClusterConfig{}, fmt.Errorf("line %d: unknown key %q (keys: ttl, loop_wait, retry_timeout, lock_delay, maximum_lag_on_failover, pause, paused_groups, parameters)", k.Line, k.Value)
		}
		if seen[k.Value] {
			return consulkv.ClusterConfig{}, fmt.Errorf("line %d: %s appears twice", k.Line, k.Value)
		}
		seen[k.Value] = true
		if err := v.Decode(dst); err != nil {
			return consulkv.ClusterConfig{}, fmt.Errorf("%s: %s", k.Value, cleanYAMLErr(err))
		}
	}
	if strings.TrimSpace(lag) != "" {
		n, err := parseSize(strings.TrimSpace(lag))
		if err != nil {
			return consulkv.ClusterConfig{}, fmt.Errorf("maximum_lag_on_failover: %v", err)
		}
		d.MaximumLagOnFailover = n
	}
	return fromDoc(d)
}

// cleanYAMLErr makes yaml's multi-line "unmarshal errors" one line.
func cleanYAMLErr(err error) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	msg = strings.TrimPrefix(msg, "unmarshal errors:\n")
	return strings.Join(strings.Fields(msg), " ")
}

func stripComments(data []byte) []byte {
	var out [][]byte
	for _, l := range bytes.Split(data, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(l), []byte("#")) {
			out = append(out, l)
		}
	}
	return bytes.Join(out, []byte("\n"))
}

func runConfigEdit(c *cli.Context) error {
	s, err := newOpConn(c)
	if err != nil {
		return err
	}
	cfg, idx, err := s.kv.ReadConfig(c.Context)
	var de *consulkv.DecodeError
	header := fmt.Sprintf("# Dynamic config of pgmesh cluster %q (%s).\n# Durations: 10s, 500ms, 1m. Save and quit to apply; an empty file aborts.\n", s.cluster, s.kv.ConfigKey())
	start := consulkv.ClusterConfig{Version: consulkv.ValueVersion}
	switch {
	case errors.As(err, &de):
		// Start from the defaults so the operator can repair the key.
		header += "# The stored value is unreadable: " + strings.ReplaceAll(trimPkg(err.Error()), "\n", " ") + "\n# Starting from the defaults.\n"
		cfg = nil
	case err != nil:
		return s.consulErr(err)
	case cfg == nil:
		header += "# There is no config yet; this creates it.\n"
	default:
		start = *cfg
	}
	f, err := os.CreateTemp("", "pgmesh-config-*.yaml")
	if err != nil {
		return failErr("cannot create a temporary file: %v", err)
	}
	path := f.Name()
	defer os.Remove(path)
	_, err = f.WriteString(header + configYAML(start))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return failErr("cannot write %s: %v", path, err)
	}
	if err := editorCommand(path).Run(); err != nil {
		return failErr("editor failed: %v; nothing written", err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return failErr("cannot read %s: %v", filepath.Base(path), err)
	}
	next, err := parseEdited(data)
	if err != nil {
		return failErr("invalid config, nothing written: %v", err)
	}
	return commitConfig(c, s, cfg, next, idx)
}
