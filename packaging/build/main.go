// Command build makes pgmesh's release artifacts from a checkout: the static
// binary (CGO_ENABLED=0, so the pure-Go DNS resolver and user lookup; the
// version stamped in with -ldflags) and a Debian package built with nfpm.
// scripts/package runs it; scripts/setup uses -binary so the binary the tests
// run is built exactly like the one that ships.
//
//	go run ./packaging/build [-out dist] [-version V] [-arch amd64]
//	go run ./packaging/build -binary PATH      # only the static binary
//	go run ./packaging/build -print-version
//
// The version comes from `git describe --tags --always --dirty --match 'v[0-9]*'`
// (see stampVersion) unless -version or PGMESH_VERSION gives one.
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
	"github.com/goreleaser/nfpm/v2/files"
	"github.com/pgmesh/pgmesh/internal/version"
)

const (
	module     = "github.com/pgmesh/pgmesh"
	versionVar = module + "/internal/version.Version"
	homepage   = "https://github.com/pgmesh/pgmesh"
	// defaultMaintainer is a placeholder (.invalid is never a real domain);
	// -maintainer or PGMESH_MAINTAINER sets a real one for published packages.
	defaultMaintainer = "pgmesh developers <maintainers@pgmesh.invalid>"
)

// options says what to build.
type options struct {
	Root       string // repository root (holds go.mod)
	Out        string // output directory
	Version    string // "" = from git (gitVersion)
	Arch       string // GOARCH, which is also the Debian architecture for amd64/arm64
	Maintainer string
}

// artifacts are the files a build made.
type artifacts struct {
	Version string // the version stamped into the binary
	Binary  string // the static binary
	Deb     string // the .deb
}

func main() {
	var (
		o            options
		binaryOnly   string
		printVersion bool
	)
	flag.StringVar(&o.Out, "out", "dist", "output `directory` (relative to the repository root)")
	flag.StringVar(&o.Version, "version", os.Getenv("PGMESH_VERSION"), "version to stamp (default: from git describe; env PGMESH_VERSION)")
	flag.StringVar(&o.Arch, "arch", runtime.GOARCH, "target architecture (GOARCH)")
	flag.StringVar(&o.Maintainer, "maintainer", envOr("PGMESH_MAINTAINER", defaultMaintainer), "Maintainer field of the package (env PGMESH_MAINTAINER)")
	flag.StringVar(&binaryOnly, "binary", "", "build only the static binary, to `PATH`")
	flag.BoolVar(&printVersion, "print-version", false, "print the version that would be stamped and exit")
	flag.Parse()
	if flag.NArg() > 0 {
		fatalf("unexpected arguments: %v", flag.Args())
	}
	root, err := findRoot()
	if err != nil {
		fatalf("%v", err)
	}
	o.Root = root
	if o.Version == "" {
		if o.Version, err = gitVersion(root); err != nil {
			fatalf("%v", err)
		}
	}
	if err := checkVersion(o.Version); err != nil {
		fatalf("%v", err)
	}
	ctx := context.Background()
	switch {
	case printVersion:
		fmt.Println(o.Version)
	case binaryOnly != "":
		if err := buildBinary(ctx, root, o.Version, o.Arch, binaryOnly); err != nil {
			fatalf("%v", err)
		}
	default:
		if !filepath.IsAbs(o.Out) {
			o.Out = filepath.Join(root, o.Out)
		}
		start := time.Now()
		a, err := build(ctx, o)
		if err != nil {
			fatalf("%v", err)
		}
		fi, _ := os.Stat(a.Deb)
		fmt.Printf("pgmesh %s (%s, static): %s\n", a.Version, o.Arch, rel(root, a.Binary))
		fmt.Printf("package: %s (%d KiB), SHA256SUMS; %.1fs\n", rel(root, a.Deb), fi.Size()/1024, time.Since(start).Seconds())
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "packaging/build: "+format+"\n", args...)
	os.Exit(1)
}

func rel(root, path string) string {
	if r, err := filepath.Rel(root, path); err == nil && !strings.HasPrefix(r, "..") {
		return r
	}
	return path
}

// findRoot walks up from the working directory to pgmesh's go.mod.
func findRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil {
			if first, _, _ := strings.Cut(string(b), "\n"); strings.TrimSpace(first) == "module "+module {
				return dir, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("not inside the %s checkout (no go.mod of that module above the working directory)", module)
		}
		dir = parent
	}
}

// build makes the static binary, the .deb and SHA256SUMS in o.Out.
func build(ctx context.Context, o options) (artifacts, error) {
	a := artifacts{Version: o.Version}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return a, err
	}
	a.Binary = filepath.Join(o.Out, fmt.Sprintf("pgmesh_%s_linux_%s", o.Version, o.Arch))
	if err := buildBinary(ctx, o.Root, o.Version, o.Arch, a.Binary); err != nil {
		return a, err
	}
	mtime, err := sourceTime(o.Root)
	if err != nil {
		return a, err
	}
	if a.Deb, err = buildDeb(o, a.Binary, mtime); err != nil {
		return a, err
	}
	if err := writeSums(filepath.Join(o.Out, "SHA256SUMS"), a.Binary, a.Deb); err != nil {
		return a, err
	}
	return a, nil
}

// buildBinary builds cmd/pgmesh without cgo (statically linked, pure-Go
// resolver and os/user), stripped, with the version stamped in.
func buildBinary(ctx context.Context, root, ver, arch, dest string) error {
	if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
		return err
	}
	tmp := dest + ".tmp"
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath",
		"-ldflags", "-s -w -X "+versionVar+"="+ver,
		"-o", tmp, "./cmd/pgmesh")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("go build ./cmd/pgmesh: %v\n%s", err, out)
	}
	return os.Rename(tmp, dest)
}

// packageFile is one file of the package: where it comes from (relative to
// the repository root, or absolute), where it goes, its mode and nfpm type.
type packageFile struct {
	src, dst string
	mode     os.FileMode
	typ      string // "" file, files.TypeConfig (a conffile), files.TypeDir
}

// packageFiles lists the package's contents; binary is the built pgmesh.
func packageFiles(binary string) []packageFile {
	return []packageFile{
		{binary, "/usr/bin/pgmesh", 0o755, ""},
		{"packaging/pgmesh@.service", "/lib/systemd/system/pgmesh@.service", 0o644, ""},
		{"packaging/pgmesh-render.service", "/lib/systemd/system/pgmesh-render.service", 0o644, ""},
		{"", "/etc/pgmesh", 0o755, files.TypeDir},
		{"packaging/agent.yml.example", "/etc/pgmesh/agent.yml.example", 0o644, files.TypeConfig},
		{"packaging/render.yml.example", "/etc/pgmesh/render.yml.example", 0o644, files.TypeConfig},
		{"README.md", "/usr/share/doc/pgmesh/README.md", 0o644, ""},
		{"docs/deploy.md", "/usr/share/doc/pgmesh/deploy.md", 0o644, ""},
	}
}

// buildDeb packages the binary with nfpm and returns the .deb's path.
func buildDeb(o options, binary string, mtime time.Time) (string, error) {
	var contents files.Contents
	for _, f := range packageFiles(binary) {
		src := f.src
		if src != "" && !filepath.IsAbs(src) {
			src = filepath.Join(o.Root, src)
		}
		contents = append(contents, &files.Content{
			Source:      src,
			Destination: f.dst,
			Type:        f.typ,
			FileInfo:    &files.ContentFileInfo{Owner: "root", Group: "root", Mode: f.mode, MTime: mtime},
		})
	}
	info := nfpm.WithDefaults(&nfpm.Info{
		Name:        "pgmesh",
		Arch:        o.Arch,
		Platform:    "linux",
		Version:     o.Version,
		Section:     "database",
		Priority:    "optional",
		Maintainer:  o.Maintainer,
		Homepage:    homepage,
		Description: description,
		MTime:       mtime,
		Overridables: nfpm.Overridables{
			// Nothing hard: the binary is static, and PostgreSQL or HAProxy
			// may come from elsewhere (PGDG, a source build, another host).
			Recommends: []string{"postgresql"},
			Suggests:   []string{"haproxy"},
			Contents:   contents,
			Scripts: nfpm.Scripts{
				PostInstall: filepath.Join(o.Root, "packaging/postinst"),
				PostRemove:  filepath.Join(o.Root, "packaging/postrm"),
			},
			Deb: nfpm.Deb{Compression: "xz"},
		},
	})
	if err := nfpm.PrepareForPackager(info, "deb"); err != nil {
		return "", fmt.Errorf("nfpm: %w", err)
	}
	pkg, err := nfpm.Get("deb")
	if err != nil {
		return "", err
	}
	dest := filepath.Join(o.Out, pkg.ConventionalFileName(info))
	f, err := os.Create(dest + ".tmp")
	if err != nil {
		return "", err
	}
	info.Target = dest
	if err := pkg.Package(info, f); err != nil {
		f.Close()
		os.Remove(f.Name())
		return "", fmt.Errorf("nfpm deb: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return dest, os.Rename(f.Name(), dest)
}

const description = `keeps a multi-master PostgreSQL mesh highly available with Consul
 pgmesh runs one agent beside each PostgreSQL: it elects each group's primary
 through a Consul session and lock, fails over and switches over, fences a
 primary that loses Consul, registers every member in Consul's catalog and
 serves a Patroni-compatible REST API. pgmesh render keeps HAProxy and
 pg_service.conf routing in step so clients find every writable node of a
 pgEdge/Spock style mesh.
 .
 Units: pgmesh@<name>.service (one agent per /etc/pgmesh/<name>.yml) and
 pgmesh-render.service. Nothing is enabled or started by the package.`

// sourceTime is the time stamped on every file of the package, so that the
// same commit gives the same package: SOURCE_DATE_EPOCH when set, else the
// last commit's time, else now (not a git checkout).
func sourceTime(root string) (time.Time, error) {
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH %q: %v", s, err)
		}
		return time.Unix(n, 0).UTC(), nil
	}
	out, err := git(root, "log", "-1", "--format=%ct")
	if err != nil {
		return time.Now().UTC(), nil
	}
	n, err := strconv.ParseInt(out, 10, 64)
	if err != nil {
		return time.Now().UTC(), nil
	}
	return time.Unix(n, 0).UTC(), nil
}

func git(root string, args ...string) (string, error) {
	cmd := exec.Command("git", args...)
	cmd.Dir = root
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("git %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

// gitVersion is the version of the checkout at root: git describe, mapped by
// stampVersion onto the unstamped version.Version ("0.1.0-dev"). Without git
// (a source tarball) it is version.Version as it is, with a warning.
func gitVersion(root string) (string, error) {
	d, err := git(root, "describe", "--tags", "--always", "--dirty", "--match", "v[0-9]*")
	if err != nil {
		fmt.Fprintf(os.Stderr, "packaging/build: warning: no version given (-version, PGMESH_VERSION) and %v; using %s\n", err, version.Version)
		return version.Version, nil
	}
	return stampVersion(d, version.Version)
}

var (
	describeHash = regexp.MustCompile(`^([0-9a-f]{4,40})(-dirty)?$`)
	describeTag  = regexp.MustCompile(`^v([0-9][0-9A-Za-z.+-]*?)(?:-([0-9]+)-g([0-9a-f]{4,40}))?(-dirty)?$`)
)

// stampVersion turns `git describe --tags --always --dirty` output into a
// semantic version that is also a valid Debian version (nfpm writes a
// prerelease "-x" as "~x", which sorts before the release):
//
//	74c547e             -> <base>+g74c547e        (no tag yet: base is 0.1.0-dev)
//	74c547e-dirty       -> <base>+g74c547e.dirty
//	v1.2.0              -> 1.2.0
//	v1.2.0-rc1          -> 1.2.0-rc1              (deb 1.2.0~rc1)
//	v1.2.0-3-gabc1234   -> 1.2.0+3.gabc1234       (after the tag: sorts above it)
//	v1.2.0-dirty        -> 1.2.0+dirty
func stampVersion(describe, base string) (string, error) {
	var v string
	var meta []string
	if m := describeHash.FindStringSubmatch(describe); m != nil {
		v = base
		meta = append(meta, "g"+m[1])
		if m[2] != "" {
			meta = append(meta, "dirty")
		}
	} else if m := describeTag.FindStringSubmatch(describe); m != nil {
		v = m[1]
		if m[2] != "" {
			meta = append(meta, m[2], "g"+m[3])
		}
		if m[4] != "" {
			meta = append(meta, "dirty")
		}
	} else {
		return "", fmt.Errorf("cannot make a version of git describe's %q", describe)
	}
	if len(meta) > 0 {
		sep := "+"
		if strings.Contains(v, "+") {
			sep = "."
		}
		v += sep + strings.Join(meta, ".")
	}
	return v, checkVersion(v)
}

// semverRE is semver 2.0's grammar (without the leading "v").
var semverRE = regexp.MustCompile(`^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)` +
	`(?:-((?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?` +
	`(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$`)

// checkVersion accepts semantic versions only: nfpm splits them into a
// Debian version (prerelease after "~", build metadata after "+"); anything
// else could make a package dpkg refuses.
func checkVersion(v string) error {
	m := semverRE.FindStringSubmatch(v)
	if m == nil {
		return fmt.Errorf("version %q is not a semantic version (MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD])", v)
	}
	// In a Debian version without a revision a hyphen is not allowed, and
	// nfpm copies prerelease and build metadata as they are.
	if strings.Contains(m[4], "-") || strings.Contains(m[5], "-") {
		return fmt.Errorf("version %q: no hyphen inside the prerelease or build metadata (Debian versions forbid it)", v)
	}
	return nil
}

// debVersion is the Version field nfpm writes for v (see stampVersion).
func debVersion(v string) string {
	core, meta, hasMeta := strings.Cut(v, "+")
	core, pre, hasPre := strings.Cut(core, "-")
	if hasPre {
		core += "~" + pre
	}
	if hasMeta {
		core += "+" + meta
	}
	return core
}

func writeSums(path string, names ...string) error {
	var b strings.Builder
	for _, name := range names {
		sum, err := fileSHA256(name)
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s  %s\n", sum, filepath.Base(name))
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, bufio.NewReader(f)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
