package routing

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeTemplate puts a template file in dir and returns its path.
func writeTemplate(t *testing.T, dir, name, text string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func newRenderer(t *testing.T, entries ...Entry) *Renderer {
	t.Helper()
	r, err := New(Options{Cluster: "mesh1", LocalGroup: "n2", Entries: entries})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// primariesTemplate renders one line per writable primary.
const primariesTemplate = `cluster {{.Cluster}} local {{.Mesh.LocalGroup}}
{{range .Mesh.Primaries}}{{.Group}} {{.Name}} {{.Addr}}
{{end}}`

func TestRenderFileTemplate(t *testing.T) {
	dir := t.TempDir()
	tmpl := writeTemplate(t, dir, "p.tmpl", primariesTemplate)
	dest := filepath.Join(dir, "out", "p.txt")
	os.Mkdir(filepath.Dir(dest), 0o755)
	r := newRenderer(t, Entry{Template: tmpl, Destination: dest, Perms: 0o640})
	if err := r.Render(context.Background(), standardMesh("n2")); err != nil {
		t.Fatal(err)
	}
	want := "cluster mesh1 local n2\nn2 n2-a 127.0.0.1:5435\nn1 n1-a 127.0.0.1:5432\n"
	if got := readFile(t, dest); got != want {
		t.Fatalf("got %q want %q", got, want)
	}
	st, _ := os.Stat(dest)
	if st.Mode().Perm() != 0o640 {
		t.Fatalf("new file mode %v, want 0640", st.Mode().Perm())
	}
	assertNoTempFiles(t, filepath.Dir(dest))
}

func assertNoTempFiles(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".pgmesh-") {
			t.Fatalf("temp file left behind: %s", e.Name())
		}
	}
}

func TestRenderKeepsModeOfExistingFile(t *testing.T) {
	dir := t.TempDir()
	dest := filepath.Join(dir, "p.txt")
	if err := os.WriteFile(dest, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dest, 0o600)
	r := newRenderer(t, Entry{Template: writeTemplate(t, dir, "p.tmpl", primariesTemplate), Destination: dest, Perms: 0o644})
	if err := r.Render(context.Background(), standardMesh("n2")); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(dest)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want the existing 0600", st.Mode().Perm())
	}
	if !strings.HasPrefix(readFile(t, dest), "cluster mesh1") {
		t.Fatal("not rewritten")
	}
}

func TestRenderAtomicReplace(t *testing.T) {
	// A reader holding the old file keeps reading the old content: the new
	// one arrives by rename, never by truncate-and-write.
	dir := t.TempDir()
	dest := filepath.Join(dir, "p.txt")
	os.WriteFile(dest, []byte("old content\n"), 0o644)
	f, err := os.Open(dest)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := newRenderer(t, Entry{Template: writeTemplate(t, dir, "p.tmpl", primariesTemplate), Destination: dest})
	if err := r.Render(context.Background(), standardMesh("n2")); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	buf.ReadFrom(f)
	if buf.String() != "old content\n" {
		t.Fatalf("open handle sees %q", buf.String())
	}
	if !strings.HasPrefix(readFile(t, dest), "cluster") {
		t.Fatal("destination not replaced")
	}
}

func TestValidateFailureKeepsLastGood(t *testing.T) {
	dir := t.TempDir()
	dest := filepath.Join(dir, "p.txt")
	log := filepath.Join(dir, "validate.log")
	// Validation sees the candidate both as {{file}} and in the environment,
	// and refuses any output naming n3-a.
	validate := fmt.Sprintf(`test "$PGMESH_RENDER_FILE" = {{file}} && test "$PGMESH_RENDER_FILE" != %s && echo "$PGMESH_RENDER_FILE" >> %s && ! grep -q n3-a {{file}} || { echo "n3-a not allowed" >&2; exit 1; }`, dest, log)
	reloads := filepath.Join(dir, "reloads")
	r := newRenderer(t, Entry{Template: writeTemplate(t, dir, "p.tmpl", primariesTemplate), Destination: dest,
		Validate: validate, Reload: "echo reload >> " + reloads})
	ctx := context.Background()
	if err := r.Render(ctx, standardMesh("n2")); err != nil {
		t.Fatal(err)
	}
	good := readFile(t, dest)

	// n3's leader becomes healthy: the output names n3-a and is refused.
	fs := standardFixtures()
	fs[5].healthy = true
	v, e := views(fs, nil)
	bad := BuildMesh(v, e, "n2")
	err := r.Render(ctx, bad)
	if err == nil || !strings.Contains(err.Error(), "validation") || !strings.Contains(err.Error(), "n3-a not allowed") || !strings.Contains(err.Error(), "p.tmpl") {
		t.Fatalf("want a validation error naming the template, got %v", err)
	}
	if got := readFile(t, dest); got != good {
		t.Fatalf("refused output installed: %q", got)
	}
	assertNoTempFiles(t, dir)
	if n := strings.Count(readFile(t, reloads), "reload"); n != 1 {
		t.Fatalf("%d reloads, want 1 (none for the refused output)", n)
	}
	if lines := strings.Count(readFile(t, log), "\n"); lines != 2 {
		t.Fatalf("validate saw the candidate %d times, want 2", lines)
	}
}

func TestReloadOnlyOnChange(t *testing.T) {
	dir := t.TempDir()
	dest := filepath.Join(dir, "p.txt")
	reloads := filepath.Join(dir, "reloads")
	tmpl := writeTemplate(t, dir, "p.tmpl", primariesTemplate)
	entry := Entry{Template: tmpl, Destination: dest, Reload: `echo "$PGMESH_RENDER_FILE" >> ` + reloads}
	ctx := context.Background()
	r := newRenderer(t, entry)
	count := func() int {
		b, _ := os.ReadFile(reloads)
		return strings.Count(string(b), dest)
	}
	for i := 0; i < 3; i++ {
		if err := r.Render(ctx, standardMesh("n2")); err != nil {
			t.Fatal(err)
		}
	}
	if count() != 1 {
		t.Fatalf("%d reloads for one output", count())
	}
	// Lag changes do not change this template's output: no reload.
	v, e := views(standardFixtures(), map[string]uint64{"n1": 99999})
	r.Render(ctx, BuildMesh(v, e, "n2"))
	if count() != 1 {
		t.Fatalf("%d reloads after a change that does not touch the output", count())
	}
	// A new renderer finds the same file on disk: no rewrite, no reload.
	r2 := newRenderer(t, entry)
	if err := r2.Render(ctx, standardMesh("n2")); err != nil {
		t.Fatal(err)
	}
	if count() != 1 {
		t.Fatalf("%d reloads after restart with an up-to-date file", count())
	}
	if err := r2.Render(ctx, standardMesh("n1")); err != nil {
		t.Fatal(err)
	}
	if count() != 2 {
		t.Fatalf("%d reloads after a real change, want 2", count())
	}
}

func TestReloadFailureIsReported(t *testing.T) {
	dir := t.TempDir()
	dest := filepath.Join(dir, "p.txt")
	r := newRenderer(t, Entry{Template: writeTemplate(t, dir, "p.tmpl", primariesTemplate), Destination: dest, Reload: "echo nope; exit 3"})
	err := r.Render(context.Background(), standardMesh("n2"))
	if err == nil || !strings.Contains(err.Error(), "reload failed") || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("err = %v", err)
	}
	if !strings.HasPrefix(readFile(t, dest), "cluster") {
		t.Fatal("output not installed")
	}
}

func TestTemplateErrorsNameTemplateAndLine(t *testing.T) {
	dir := t.TempDir()
	// Parse error on line 3.
	bad := writeTemplate(t, dir, "broken.tmpl", "line one\nline two\n{{ if }}\n")
	_, err := New(Options{Entries: []Entry{{Template: bad, Destination: filepath.Join(dir, "x")}}})
	if err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "broken.tmpl:3") {
		t.Fatalf("parse error %v", err)
	}
	// Unknown function.
	badFn := writeTemplate(t, dir, "fn.tmpl", "\n{{ nosuchfunc 1 }}")
	_, err = New(Options{Entries: []Entry{{Template: badFn, Destination: filepath.Join(dir, "x")}}})
	if err == nil || !strings.Contains(err.Error(), "fn.tmpl:2") || !strings.Contains(err.Error(), "nosuchfunc") {
		t.Fatalf("function error %v", err)
	}
	// Execution error on line 2: nothing is written.
	exec := writeTemplate(t, dir, "exec.tmpl", "ok\n{{ .Mesh.NoSuchField }}\n")
	dest := filepath.Join(dir, "out")
	r := newRenderer(t, Entry{Template: exec, Destination: dest})
	err = r.Render(context.Background(), standardMesh(""))
	if err == nil || !strings.Contains(err.Error(), "exec.tmpl:2") || !strings.Contains(err.Error(), "NoSuchField") {
		t.Fatalf("exec error %v", err)
	}
	if _, serr := os.Stat(dest); !os.IsNotExist(serr) {
		t.Fatal("output written despite the error")
	}
	// Unknown builtin and missing file.
	if _, err := New(Options{Entries: []Entry{{Template: "builtin:nope.tmpl", Destination: dest}}}); err == nil || !strings.Contains(err.Error(), "haproxy.cfg.tmpl") {
		t.Fatalf("unknown builtin: %v", err)
	}
	if _, err := New(Options{Entries: []Entry{{Template: "builtin:haproxy.ctmpl", Destination: dest}}}); err == nil || !strings.Contains(err.Error(), "consul-template") {
		t.Fatalf("consul-template builtin: %v", err)
	}
	if _, err := New(Options{Entries: []Entry{{Template: filepath.Join(dir, "missing"), Destination: dest}}}); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("missing file: %v", err)
	}
	if _, err := New(Options{}); err == nil {
		t.Fatal("no entries accepted")
	}
}

func TestBuiltinTemplatesRender(t *testing.T) {
	dir := t.TempDir()
	for name, want := range map[string]string{"haproxy.cfg.tmpl": "server n2.n2-a", "pg_service.conf.tmpl": "[mesh1-n2]"} {
		dest := filepath.Join(dir, name)
		r := newRenderer(t, Entry{Template: "builtin:" + name, Destination: dest})
		if err := r.Render(context.Background(), standardMesh("n2")); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !strings.Contains(readFile(t, dest), want) {
			t.Fatalf("%s: no %q in\n%s", name, want, readFile(t, dest))
		}
	}
}

func TestStdoutDestination(t *testing.T) {
	var out bytes.Buffer
	r, err := New(Options{Cluster: "mesh1", Entries: []Entry{{Template: "builtin:pg_service.conf.tmpl", Destination: "-"}}, Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Render(context.Background(), standardMesh("n1")); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "[mesh1-n1]") {
		t.Fatalf("stdout:\n%s", out.String())
	}
}

// meshWithPrimaryPort returns the standard mesh with n2-a on a different
// port, so every call can produce a distinct output.
func meshWithPrimaryPort(port int) *Mesh {
	fs := standardFixtures()
	fs[3].port = port
	v, e := views(fs, nil)
	return BuildMesh(v, e, "n2")
}

func TestDebounce(t *testing.T) {
	dir := t.TempDir()
	dest := filepath.Join(dir, "p.txt")
	reloads := filepath.Join(dir, "reloads")
	r, err := New(Options{Cluster: "mesh1", Debounce: 150 * time.Millisecond, MaxDelay: 5 * time.Second,
		Entries: []Entry{{Template: writeTemplate(t, dir, "p.tmpl", primariesTemplate), Destination: dest, Reload: "echo r >> " + reloads}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan *Mesh, 1)
	done := make(chan struct{})
	go func() { r.loop(ctx, ch); close(done) }()
	defer func() { cancel(); <-done }()

	// A burst of five different outputs 30ms apart: one install, the last.
	for i := 0; i < 5; i++ {
		sendLatest(ch, meshWithPrimaryPort(6000+i))
		time.Sleep(30 * time.Millisecond)
	}
	if _, err := os.Stat(dest); err == nil {
		t.Fatal("installed during the burst")
	}
	waitFor(t, 3*time.Second, func() bool { return strings.Contains(readIfExists(dest), ":6004") })
	time.Sleep(300 * time.Millisecond)
	if n := strings.Count(readIfExists(reloads), "r"); n != 1 {
		t.Fatalf("%d reloads for one burst", n)
	}
	// A mesh whose output equals the installed file changes nothing.
	sendLatest(ch, meshWithPrimaryPort(6004))
	time.Sleep(300 * time.Millisecond)
	if n := strings.Count(readIfExists(reloads), "r"); n != 1 {
		t.Fatalf("%d reloads after a no-op change", n)
	}
}

func TestDebounceMaxDelay(t *testing.T) {
	dir := t.TempDir()
	dest := filepath.Join(dir, "p.txt")
	reloads := filepath.Join(dir, "reloads")
	r, err := New(Options{Cluster: "mesh1", Debounce: 200 * time.Millisecond, MaxDelay: 300 * time.Millisecond,
		Entries: []Entry{{Template: writeTemplate(t, dir, "p.tmpl", primariesTemplate), Destination: dest, Reload: "echo r >> " + reloads}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan *Mesh, 1)
	done := make(chan struct{})
	go func() { r.loop(ctx, ch); close(done) }()
	defer func() { cancel(); <-done }()
	// Changes every 50ms for 1.2s never leave a 200ms quiet period; the
	// 300ms cap still installs every ~300ms.
	start := time.Now()
	for i := 0; time.Since(start) < 1200*time.Millisecond; i++ {
		sendLatest(ch, meshWithPrimaryPort(7000+i))
		time.Sleep(50 * time.Millisecond)
	}
	n := strings.Count(readIfExists(reloads), "r")
	if n < 2 || n > 6 {
		t.Fatalf("%d installs in 1.2s of constant change with max_delay 300ms", n)
	}
}

func waitFor(t *testing.T, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func readIfExists(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

func TestRenderDataGroupPort(t *testing.T) {
	d := RenderData{Mesh: standardMesh("n3"), Ports: Ports{GroupBase: 5100}}
	if d.GroupPort("n1") != 5100 || d.GroupPort("n3") != 5102 || d.GroupPort("zz") != 0 {
		t.Fatalf("ports %d %d %d", d.GroupPort("n1"), d.GroupPort("n3"), d.GroupPort("zz"))
	}
	if (&RenderData{}).GroupPort("n1") != 0 {
		t.Fatal("port without mesh")
	}
}

// A mesh read with no member address never replaces what is installed
// (no token, a wrong cluster): a routing config with no servers would cut
// every client off. AllowEmpty installs it anyway.
func TestRenderRefusesAnEmptyMesh(t *testing.T) {
	dir := t.TempDir()
	tmpl := writeTemplate(t, dir, "p.tmpl", primariesTemplate)
	dest := filepath.Join(dir, "p.txt")
	r := newRenderer(t, Entry{Template: tmpl, Destination: dest})
	if err := r.Render(context.Background(), standardMesh("n2")); err != nil {
		t.Fatal(err)
	}
	good := readFile(t, dest)
	catalogOnly := standardMesh("n2")
	catalogOnly.NoKV = true // the token may read the service but not the keys
	for _, empty := range []*Mesh{{Cluster: "mesh1"}, {Cluster: "mesh1", Groups: []*Group{{Name: "n1", Members: Members{{Name: "n1-a", Group: "n1"}}}}}, catalogOnly} {
		err := r.Render(context.Background(), empty)
		if !errors.Is(err, ErrEmptyMesh) || !strings.Contains(err.Error(), "keeping what is installed") {
			t.Fatalf("empty mesh: %v", err)
		}
		if got := readFile(t, dest); got != good {
			t.Fatalf("an empty mesh replaced the installed file: %q", got)
		}
	}
	// The continuous path keeps the file too.
	r.evaluate(context.Background(), &Mesh{Cluster: "mesh1"}, time.Now())
	if _, ok := r.nextDue(); ok {
		t.Fatal("an empty mesh was scheduled for installation")
	}
	allow, err := New(Options{Cluster: "mesh1", Entries: []Entry{{Template: tmpl, Destination: dest}}, AllowEmpty: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := allow.Render(context.Background(), &Mesh{Cluster: "mesh1"}); err != nil {
		t.Fatalf("AllowEmpty: %v", err)
	}
	if got := readFile(t, dest); got != "cluster mesh1 local \n" {
		t.Fatalf("AllowEmpty installed %q", got)
	}
}
