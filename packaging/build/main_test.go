package main

import (
	"bytes"
	"context"
	"debug/elf"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/goreleaser/nfpm/v2/files"
	"github.com/pgmesh/pgmesh/agent"
	"github.com/pgmesh/pgmesh/routing"
)

func TestStampVersion(t *testing.T) {
	for _, c := range []struct{ describe, want, deb string }{
		{"74c547e", "0.1.0-dev+g74c547e", "0.1.0~dev+g74c547e"},
		{"74c547e-dirty", "0.1.0-dev+g74c547e.dirty", "0.1.0~dev+g74c547e.dirty"},
		{"v1.2.0", "1.2.0", "1.2.0"},
		{"v1.2.0-dirty", "1.2.0+dirty", "1.2.0+dirty"},
		{"v1.2.0-rc1", "1.2.0-rc1", "1.2.0~rc1"},
		{"v1.2.0-3-gabc1234", "1.2.0+3.gabc1234", "1.2.0+3.gabc1234"},
		{"v1.2.0-rc.1-12-gabc1234-dirty", "1.2.0-rc.1+12.gabc1234.dirty", "1.2.0~rc.1+12.gabc1234.dirty"},
	} {
		got, err := stampVersion(c.describe, "0.1.0-dev")
		if err != nil || got != c.want {
			t.Errorf("stampVersion(%q) = %q, %v; want %q", c.describe, got, err, c.want)
			continue
		}
		if d := debVersion(got); d != c.deb {
			t.Errorf("debVersion(%q) = %q, want %q", got, d, c.deb)
		}
	}
	for _, bad := range []string{"", "release-1", "v1.2", "vx"} {
		if got, err := stampVersion(bad, "0.1.0-dev"); err == nil {
			t.Errorf("stampVersion(%q) = %q, want an error", bad, got)
		}
	}
	for _, bad := range []string{"1.2", "v1.2.3", "1.2.3-rc-1", "1.2.3+a-b", "01.2.3"} {
		if checkVersion(bad) == nil {
			t.Errorf("checkVersion(%q) accepted it", bad)
		}
	}
}

// TestPackage builds the binary and the .deb exactly as scripts/package does
// (go run ./packaging/build), unpacks the package into a scratch root and
// checks what an installation would get: the files and their modes, the
// control fields and conffiles, a statically linked binary that prints the
// stamped version, example configurations that pgmesh accepts, and unit
// files that systemd-analyze verify finds nothing to say about.
func TestPackage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds pgmesh and a .deb (-short)")
	}
	for _, tool := range []string{"go", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found: %v", tool, err)
		}
	}
	root, err := findRoot()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	tmp := t.TempDir()
	dist := filepath.Join(tmp, "dist")

	start := time.Now()
	cmd := exec.CommandContext(ctx, "go", "run", "./packaging/build", "-out", dist)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go run ./packaging/build: %v\n%s", err, out)
	}
	t.Logf("built in %.1fs:\n%s", time.Since(start).Seconds(), out)
	m := regexp.MustCompile(`(?m)^pgmesh (\S+) \(`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no version in the builder's output:\n%s", out)
	}
	ver := string(m[1])
	if err := checkVersion(ver); err != nil {
		t.Fatal(err)
	}
	debs, _ := filepath.Glob(filepath.Join(dist, "*.deb"))
	if len(debs) != 1 {
		t.Fatalf("want one .deb in %s, got %v", dist, debs)
	}
	deb := debs[0]
	if fi, err := os.Stat(deb); err == nil {
		t.Logf("%s: %d KiB", filepath.Base(deb), fi.Size()/1024)
	}
	if sums, err := os.ReadFile(filepath.Join(dist, "SHA256SUMS")); err != nil || !bytes.Contains(sums, []byte(filepath.Base(deb))) {
		t.Errorf("SHA256SUMS does not list %s (%v):\n%s", filepath.Base(deb), err, sums)
	}

	run := func(name string, args ...string) string {
		t.Helper()
		c := exec.CommandContext(ctx, name, args...)
		var stderr bytes.Buffer
		c.Stderr = &stderr
		b, err := c.Output()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, b, stderr.Bytes())
		}
		return string(b)
	}

	// Control fields: no hard dependency, the version nfpm derived.
	fields := map[string]string{}
	for _, f := range []string{"Package", "Version", "Architecture", "Depends", "Pre-Depends", "Recommends", "Suggests", "Maintainer"} {
		fields[f] = strings.TrimSpace(run("dpkg-deb", "-f", deb, f))
	}
	want := map[string]string{"Package": "pgmesh", "Version": debVersion(ver), "Depends": "", "Pre-Depends": "",
		"Recommends": "postgresql", "Suggests": "haproxy"}
	for f, w := range want {
		if fields[f] != w {
			t.Errorf("control field %s = %q, want %q", f, fields[f], w)
		}
	}
	if fields["Architecture"] == "" || fields["Maintainer"] == "" {
		t.Errorf("control fields Architecture/Maintainer missing: %v", fields)
	}
	if _, err := exec.LookPath("dpkg"); err == nil {
		run("dpkg", "--validate-version", fields["Version"])
	}

	// Control archive: conffiles and maintainer scripts.
	ctrl := filepath.Join(tmp, "control")
	run("dpkg-deb", "-e", deb, ctrl)
	conffiles, _ := os.ReadFile(filepath.Join(ctrl, "conffiles"))
	if got, w := strings.Fields(string(conffiles)), []string{"/etc/pgmesh/agent.yml.example", "/etc/pgmesh/render.yml.example"}; strings.Join(got, " ") != strings.Join(w, " ") {
		t.Errorf("conffiles = %v, want %v", got, w)
	}
	for _, s := range []string{"postinst", "postrm"} {
		p := filepath.Join(ctrl, s)
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("maintainer script %s: %v (mode %v), want 0755", s, err, fi)
			continue
		}
		run("sh", "-n", p)
	}

	// The files, as dpkg would unpack them.
	inst := filepath.Join(tmp, "root")
	run("dpkg-deb", "-x", deb, inst)
	wantFiles := map[string]fs.FileMode{}
	for _, f := range packageFiles("") {
		mode := f.mode
		if f.typ == files.TypeDir {
			mode |= fs.ModeDir
		}
		wantFiles[f.dst] = mode
		for d := filepath.Dir(f.dst); d != "/"; d = filepath.Dir(d) {
			if _, ok := wantFiles[d]; !ok {
				wantFiles[d] = fs.ModeDir | 0o755
			}
		}
	}
	gotFiles := map[string]fs.FileMode{}
	filepath.WalkDir(inst, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Errorf("walk %s: %v", p, err)
			return nil
		}
		if p == inst {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			t.Errorf("stat %s: %v", p, err)
			return nil
		}
		gotFiles["/"+filepath.ToSlash(strings.TrimPrefix(p, inst+"/"))] = fi.Mode() & (fs.ModeType | fs.ModePerm)
		return nil
	})
	var names []string
	for p := range wantFiles {
		names = append(names, p)
	}
	for p := range gotFiles {
		if _, ok := wantFiles[p]; !ok {
			names = append(names, p)
		}
	}
	sort.Strings(names)
	for _, p := range names {
		w, wok := wantFiles[p]
		g, gok := gotFiles[p]
		switch {
		case !gok:
			t.Errorf("%s missing from the package", p)
		case !wok:
			t.Errorf("%s in the package but not expected (mode %v)", p, g)
		case g != w:
			t.Errorf("%s has mode %v, want %v", p, g, w)
		}
	}
	for _, doc := range []string{"README.md", "deploy.md"} {
		if fi, err := os.Stat(filepath.Join(inst, "usr/share/doc/pgmesh", doc)); err != nil {
			t.Error(err)
		} else if fi.Size() < 1000 {
			t.Errorf("/usr/share/doc/pgmesh/%s has %d bytes: want the document", doc, fi.Size())
		}
	}

	// The binary: statically linked, and stamped.
	bin := filepath.Join(inst, "usr/bin/pgmesh")
	if f, err := elf.Open(bin); err != nil {
		t.Errorf("%s: %v", bin, err)
	} else {
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("%s has a program interpreter: dynamically linked", bin)
			}
		}
		if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
			t.Errorf("%s needs shared libraries %v", bin, libs)
		}
		f.Close()
	}
	if _, err := exec.LookPath("file"); err != nil {
		t.Logf("file(1) not installed; the ELF headers were checked instead")
	} else if desc := run("file", bin); !strings.Contains(desc, "statically linked") {
		t.Errorf("file says %q, want statically linked", strings.TrimSpace(desc))
	}
	if got := run(bin, "version"); !strings.HasPrefix(got, "pgmesh "+ver+" (") {
		t.Errorf("pgmesh version printed %q, want pgmesh %s (…)", strings.TrimSpace(got), ver)
	}

	// The example configurations are accepted as they ship.
	if b, err := os.ReadFile(filepath.Join(inst, "etc/pgmesh/agent.yml.example")); err != nil {
		t.Error(err)
	} else if _, err := agent.ParseConfig(b, nil); err != nil {
		t.Errorf("agent.yml.example: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(inst, "etc/pgmesh/render.yml.example")); err != nil {
		t.Error(err)
	} else if _, err := routing.ParseConfig(b); err != nil {
		t.Errorf("render.yml.example: %v", err)
	}

	// The units name the installed paths.
	units := filepath.Join(inst, "lib/systemd/system")
	for unit, line := range map[string]string{
		"pgmesh@.service":       "ExecStart=/usr/bin/pgmesh agent --config /etc/pgmesh/%i.yml\n",
		"pgmesh-render.service": "ExecStart=/usr/bin/pgmesh render --config /etc/pgmesh/render.yml\n",
	} {
		b, err := os.ReadFile(filepath.Join(units, unit))
		if err != nil || !strings.Contains(string(b), line) {
			t.Errorf("%s: %v: want the line %q", unit, err, strings.TrimSpace(line))
		}
	}
	verifyUnits(t, ctx, units, bin)
}

// verifyUnits runs systemd-analyze verify on the packaged units. verify
// checks that ExecStart= names an executable on this host, and with --root it
// looks for systemd's own units (sysinit.target…) in the scratch root too, so
// the units are verified as copies whose /usr/bin/pgmesh is the unpacked
// binary; the template is verified as the instance pgmesh@n1-a. Unknown or
// malformed directives only make verify print (its exit status stays 0), so
// any output fails the test.
func verifyUnits(t *testing.T, ctx context.Context, units, bin string) {
	t.Helper()
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Logf("systemd-analyze not installed: unit files not verified")
		return
	}
	dir := t.TempDir()
	var args []string
	for unit, as := range map[string]string{"pgmesh@.service": "pgmesh@n1-a.service", "pgmesh-render.service": ""} {
		b, err := os.ReadFile(filepath.Join(units, unit))
		if err != nil {
			t.Fatal(err)
		}
		text := strings.ReplaceAll(string(b), "/usr/bin/pgmesh ", bin+" ")
		p := filepath.Join(dir, unit)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		if as != "" {
			p += ":" + as
		}
		args = append(args, p)
	}
	sort.Strings(args)
	cmd := exec.CommandContext(ctx, sa, append([]string{"verify", "--man=no", "--recursive-errors=yes"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}
