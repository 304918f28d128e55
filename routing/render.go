package routing

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"text/template"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/templates"
	"go.uber.org/zap"
)

// BuiltinPrefix marks a template shipped in the templates package:
// "builtin:haproxy.cfg.tmpl".
const BuiltinPrefix = "builtin:"

// RenderFileEnv is the environment variable Validate and Reload commands
// find the file in: the candidate for Validate, the installed file for
// Reload.
const RenderFileEnv = "PGMESH_RENDER_FILE"

// Defaults of Options.
const (
	DefaultDebounce       = 200 * time.Millisecond
	DefaultMaxDelay       = 2 * time.Second
	DefaultCommandTimeout = 60 * time.Second
	DefaultPerms          = fs.FileMode(0o644)
)

// Entry is one template to keep rendered.
type Entry struct {
	// Template is "builtin:<name>" (see templates.Names) or a file path.
	Template string
	// Destination is the file to write; "-" writes to standard output
	// (no validation, reload or atomic write).
	Destination string
	// Validate, if set, is run with /bin/sh -c before a new output is
	// installed; the candidate file is in $PGMESH_RENDER_FILE and replaces
	// the placeholder {{file}} (shell-quoted). A non-zero exit refuses the
	// output: the previous file stays and the error is returned.
	Validate string
	// Reload, if set, is run with /bin/sh -c after a changed output was
	// installed ($PGMESH_RENDER_FILE = Destination). Never run when the
	// output did not change.
	Reload string
	// Perms of a new file (default 0644). An existing file keeps its mode
	// and owner.
	Perms fs.FileMode
	// HAProxySocket, if set, is HAProxy's stats socket (level admin): when a
	// group's primary changes, pgmesh marks the new primary up and the old
	// one down (and shuts its sessions) at once through the runtime API,
	// instead of waiting for HAProxy's checks. Failures are logged only.
	HAProxySocket string
	// HAProxyBackends are the backends (path.Match patterns) whose servers
	// are checked on /primary, the only ones the hook touches. Default
	// DefaultHAProxyBackends, the shipped template's names.
	HAProxyBackends []string
	// Data overrides Options.Data for this entry.
	Data DataConfig
}

// Options configure a Renderer.
type Options struct {
	// Client reaches Consul; Run and RenderOnce need it, Render does not.
	Client *consulkv.Client
	// Cluster defaults to Client.Cluster().
	Cluster    string
	LocalGroup string
	Entries    []Entry
	// Data is the template data every entry starts from.
	Data DataConfig
	// Debounce is the quiet period after an output change before it is
	// installed; MaxDelay bounds the wait while changes keep coming.
	Debounce, MaxDelay time.Duration
	// CommandTimeout bounds Validate and Reload commands (default 60s).
	CommandTimeout time.Duration
	// Log defaults to a no-op logger; Stdout (for Destination "-") to
	// os.Stdout.
	Log    *zap.Logger
	Stdout io.Writer
	// AllowEmpty lets a mesh with no member address be rendered and
	// installed. Off, such a read (no token or one that cannot read the
	// cluster, a wrong cluster or prefix, Consul answering nothing) never
	// replaces what is installed: a routing config with no servers would
	// cut every client off.
	AllowEmpty bool
	// Metrics, when set, counts renders, reloads and failures.
	Metrics *Metrics
	// Datacenters are the Consul datacenters the mesh spans, read through
	// Client's agent (?dc=). Empty: the cluster config's datacenters, else
	// every datacenter Consul knows when it knows more than one, else the
	// local datacenter alone.
	Datacenters []string
}

// ErrEmptyMesh: the mesh read from Consul has no member with an address,
// or its KV tree read back empty, and Options.AllowEmpty is off; nothing
// was installed.
var ErrEmptyMesh = errors.New("the mesh read from Consul is empty")

// Renderer keeps a set of templates rendered from the live mesh. Its
// methods are not meant to run concurrently with each other: use Run, or
// RenderOnce/Render, from one goroutine.
type Renderer struct {
	opts    Options
	cluster string
	log     *zap.Logger
	entries []*entryState
	// primaries is the last group -> primary map Run saw (for logging).
	primaries map[string]string
	// emptyLogged is the empty-mesh refusal last logged ("" none).
	emptyLogged string
	// problemsLogged are the merge problems last logged.
	problemsLogged string

	// Datacenters (across.go): the local one's name once known, a client
	// per other datacenter, and the last preference order with the
	// round-trip times it came from.
	localDC   string
	dcMu      sync.Mutex
	dcClients map[string]*consulkv.Client
	dcOrder   []string
	dcRTT     map[string]time.Duration
}

type entryState struct {
	Entry
	tmpl *template.Template
	data RenderData

	// installed is what Destination holds (read from disk once).
	installed     []byte
	haveInstalled bool
	diskRead      bool
	// pending is an output waiting for the debounce to end.
	pending                  []byte
	pendingSince, lastChange time.Time
	// failed is the last output Validate refused; it is not retried until
	// the output changes.
	failed  []byte
	lastErr string
	// primaries seen by the HAProxy hook (group -> member).
	primaries map[string]string
	hookInit  bool
}

// New parses every entry's template (so a broken template is reported at
// start, with its name and line) and resolves its data.
func New(opts Options) (*Renderer, error) {
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	if opts.Stdout == nil {
		opts.Stdout = os.Stdout
	}
	if opts.Debounce <= 0 {
		opts.Debounce = DefaultDebounce
	}
	if opts.MaxDelay <= 0 {
		opts.MaxDelay = DefaultMaxDelay
	}
	if opts.MaxDelay < opts.Debounce {
		opts.MaxDelay = opts.Debounce
	}
	if opts.CommandTimeout <= 0 {
		opts.CommandTimeout = DefaultCommandTimeout
	}
	cluster := opts.Cluster
	if cluster == "" && opts.Client != nil {
		cluster = opts.Client.Cluster()
	}
	if len(opts.Entries) == 0 {
		return nil, errors.New("routing: no templates to render")
	}
	r := &Renderer{opts: opts, cluster: cluster, log: opts.Log}
	for i, e := range opts.Entries {
		if e.Template == "" {
			return nil, fmt.Errorf("routing: template %d: no template given", i+1)
		}
		if e.Destination == "" {
			return nil, fmt.Errorf("routing: template %s: no destination given", e.Template)
		}
		if e.Perms == 0 {
			e.Perms = DefaultPerms
		}
		if len(e.HAProxyBackends) == 0 {
			e.HAProxyBackends = DefaultHAProxyBackends
		}
		tmpl, err := LoadTemplate(e.Template)
		if err != nil {
			return nil, err
		}
		data, err := e.Data.Over(opts.Data).Resolve()
		if err != nil {
			return nil, fmt.Errorf("routing: template %s: data: %w", e.Template, err)
		}
		r.entries = append(r.entries, &entryState{Entry: e, tmpl: tmpl, data: data})
	}
	return r, nil
}

// LoadTemplate reads and parses a template: "builtin:<name>" from the
// templates package, anything else as a file. Errors name the template and,
// for syntax errors, the line.
func LoadTemplate(name string) (*template.Template, error) {
	var text []byte
	var err error
	tname := name
	if b, ok := strings.CutPrefix(name, BuiltinPrefix); ok {
		if strings.HasSuffix(b, ".ctmpl") {
			return nil, fmt.Errorf("routing: template %s is for consul-template, not pgmesh render (get it with: pgmesh render --show %s)", name, b)
		}
		text, err = templates.FS.ReadFile(b)
		if err != nil {
			return nil, fmt.Errorf("routing: template %s: no such builtin template (have %s)", name, strings.Join(templates.Names(), ", "))
		}
		tname = b
	} else {
		text, err = os.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("routing: template %s: %w", name, err)
		}
	}
	t, err := template.New(tname).Funcs(FuncMap()).Parse(string(text))
	if err != nil {
		// text/template's message is "template: <name>:<line>: …".
		return nil, fmt.Errorf("routing: template %s: %w", name, err)
	}
	return t, nil
}

// Execute renders one template with data (Mesh and Cluster set by the
// caller). It is what the Renderer does for every entry, exposed for tests
// and tools.
func Execute(t *template.Template, data *RenderData) ([]byte, error) {
	var buf bytes.Buffer
	if err := t.Execute(&buf, data); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func (r *Renderer) execute(e *entryState, m *Mesh) ([]byte, error) {
	data := e.data
	data.Mesh = m
	data.Cluster = m.Cluster
	out, err := Execute(e.tmpl, &data)
	if err != nil {
		r.opts.Metrics.failed(e.Template, stageTemplate)
		return nil, fmt.Errorf("routing: template %s: %w", e.Template, err)
	}
	return out, nil
}

// Mesh reads the cluster's KV tree and service health once (consistent
// reads, no blocking) and builds the model.
func (r *Renderer) Mesh(ctx context.Context) (*Mesh, error) {
	if r.opts.Client == nil {
		return nil, errors.New("routing: no Consul client")
	}
	local := r.readDatacenter(ctx, "")
	if local.Err != nil {
		return nil, local.Err
	}
	if dcs := r.wantedDatacenters(ctx, local.View.Config); len(dcs) > 0 {
		return r.readAcross(ctx, local, dcs), nil
	}
	return r.build(local.View, local.Entries), nil
}

func (r *Renderer) build(view *consulkv.ClusterView, entries []*api.ServiceEntry) *Mesh {
	m := BuildMesh(view, entries, r.opts.LocalGroup)
	if r.cluster != "" {
		m.Cluster = r.cluster
	}
	return m
}

// RenderOnce reads the mesh once and renders, validates, installs and
// reloads every entry whose output changed (pgmesh render --once). Every
// entry is tried; the errors are joined.
func (r *Renderer) RenderOnce(ctx context.Context) error {
	m, err := r.Mesh(ctx)
	if err != nil {
		return fmt.Errorf("routing: read mesh: %w", err)
	}
	return r.Render(ctx, m)
}

// Render renders every entry from m and installs what changed, without
// debounce. It needs no Consul client. An empty mesh is refused with
// ErrEmptyMesh unless Options.AllowEmpty.
func (r *Renderer) Render(ctx context.Context, m *Mesh) error {
	if err := r.checkNotEmpty(m); err != nil {
		return err
	}
	var errs []error
	for _, e := range r.entries {
		out, err := r.execute(e, m)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if _, err := r.install(ctx, e, out); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// checkNotEmpty refuses a mesh without a single member address (unless
// AllowEmpty), naming the likely causes.
func (r *Renderer) checkNotEmpty(m *Mesh) error {
	if r.opts.AllowEmpty || (m.Servers() > 0 && !m.NoKV) {
		return nil
	}
	prefix := ""
	if r.opts.Client != nil {
		prefix = r.opts.Client.ClusterPrefix()
	}
	r.opts.Metrics.empty()
	what := "no member with an address"
	if m.NoKV {
		what = "no group readable in Consul's KV"
	}
	return fmt.Errorf("%w: %s (cluster %q, %d groups, KV prefix %q): a wrong cluster or prefix, a Consul token that may not read them (key_prefix read, service read), or a mesh not bootstrapped yet; keeping what is installed (allow_empty / --allow-empty installs it anyway)",
		ErrEmptyMesh, what, m.Cluster, len(m.Groups), prefix)
}

// readDisk loads what Destination holds, once, so an unchanged file is
// neither rewritten nor reloaded when pgmesh starts.
func (e *entryState) readDisk() {
	if e.diskRead || e.Destination == "-" {
		return
	}
	e.diskRead = true
	if b, err := os.ReadFile(e.Destination); err == nil {
		e.installed, e.haveInstalled = b, true
	}
}

// install writes out to the entry's destination if it differs from what is
// there: candidate file, Validate, atomic rename, Reload. It reports whether
// the destination changed.
func (r *Renderer) install(ctx context.Context, e *entryState, out []byte) (bool, error) {
	e.readDisk()
	if e.Destination == "-" {
		if e.haveInstalled && bytes.Equal(out, e.installed) {
			return false, nil
		}
		e.installed, e.haveInstalled = out, true
		_, err := r.opts.Stdout.Write(out)
		return true, err
	}
	if e.haveInstalled && bytes.Equal(out, e.installed) {
		return false, nil
	}
	start := time.Now()
	if refused, err := r.writeAtomic(ctx, e, out); err != nil {
		stage := stageWrite
		if refused {
			e.failed = out
			stage = stageValidate
		}
		r.opts.Metrics.failed(e.Template, stage)
		return false, err
	}
	r.opts.Metrics.rendered(e.Template)
	e.installed, e.haveInstalled, e.failed = out, true, nil
	log := r.log.With(zap.String("template", e.Template), zap.String("destination", e.Destination))
	if e.Reload != "" {
		if res, err := r.runCommand(ctx, e.Reload, e.Destination); err != nil {
			log.Error("installed, but the reload command failed", zap.String("command", e.Reload), zap.String("output", res), zap.Error(err))
			r.opts.Metrics.failed(e.Template, stageReload)
			return true, fmt.Errorf("routing: template %s: installed %s, but reload failed: %w: %s", e.Template, e.Destination, err, res)
		}
	}
	if e.Reload != "" {
		r.opts.Metrics.reloaded(e.Template)
	}
	log.Info("rendered", zap.Int("bytes", len(out)), zap.Bool("reloaded", e.Reload != ""), zap.Duration("took", time.Since(start)))
	return true, nil
}

// writeAtomic writes a candidate next to the destination (same file system,
// so the rename is atomic), fsyncs it, gives it the destination's mode and
// owner, validates it and renames it into place. refused is true when
// Validate rejected the output.
func (r *Renderer) writeAtomic(ctx context.Context, e *entryState, out []byte) (refused bool, err error) {
	dest := e.Destination
	dir, base := filepath.Split(dest)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".pgmesh-*")
	if err != nil {
		return false, fmt.Errorf("routing: template %s: %w", e.Template, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if _, err = f.Write(out); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return false, fmt.Errorf("routing: template %s: write %s: %w", e.Template, tmp, err)
	}
	mode := e.Perms
	if st, serr := os.Stat(dest); serr == nil {
		mode = st.Mode().Perm()
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			if cerr := os.Chown(tmp, int(sys.Uid), int(sys.Gid)); cerr != nil && os.Geteuid() == 0 {
				return false, fmt.Errorf("routing: template %s: keep owner of %s: %w", e.Template, dest, cerr)
			}
		}
	}
	if err = os.Chmod(tmp, mode); err != nil {
		return false, fmt.Errorf("routing: template %s: %w", e.Template, err)
	}
	if e.Validate != "" {
		if res, verr := r.runCommand(ctx, strings.ReplaceAll(e.Validate, "{{file}}", shellQuote(tmp)), tmp); verr != nil {
			err = verr
			return true, fmt.Errorf("routing: template %s: validation of the new %s failed (%s), keeping the current file: %w\n%s",
				e.Template, dest, e.Validate, verr, strings.TrimSpace(res))
		}
	}
	if err = os.Rename(tmp, dest); err != nil {
		return false, fmt.Errorf("routing: template %s: install %s: %w", e.Template, dest, err)
	}
	if d, derr := os.Open(dir); derr == nil {
		d.Sync()
		d.Close()
	}
	return false, nil
}

// runCommand runs cmd with /bin/sh -c, $PGMESH_RENDER_FILE set to file, and
// returns its combined output (truncated).
func (r *Renderer) runCommand(ctx context.Context, command, file string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, r.opts.CommandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", command)
	cmd.Env = append(os.Environ(), RenderFileEnv+"="+file)
	// A reload command may leave a daemon holding our pipes; stop waiting
	// for them soon after the shell exits.
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	const max = 4 << 10
	if len(out) > max {
		out = append(out[:max], "…"...)
	}
	return string(out), err
}

// shellQuote quotes s for /bin/sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
