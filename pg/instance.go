package pg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
)

// ErrNotRunning is returned by operations that need a running server.
var ErrNotRunning = errors.New("postgres is not running")

// Instance controls one local PostgreSQL instance. It is safe for
// concurrent use, but callers are expected to serialise lifecycle actions
// (start, stop, promote, rewind) themselves, as an HA loop naturally does.
type Instance struct {
	cfg   Config
	log   *zap.Logger
	runAs *osUser // nil: run everything as the current user

	mu   sync.Mutex // guards conn
	conn *pgx.Conn
}

// osUser is the account PostgreSQL binaries run as when we are root.
type osUser struct {
	name   string
	uid    uint32
	gid    uint32
	groups []uint32
	home   string
}

// New validates cfg and returns an Instance. It performs no I/O on the data
// directory; the only lookup is the OS user, so a misspelt OSUser fails
// here rather than at the first initdb.
func New(cfg Config, log *zap.Logger) (*Instance, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = zap.NewNop()
	}
	inst := &Instance{cfg: c, log: log.With(zap.String("member", c.Name), zap.String("data_dir", c.DataDir))}
	if c.OSUser != "" && os.Geteuid() == 0 {
		u, err := lookupOSUser(c.OSUser)
		if err != nil {
			return nil, fieldErr("OSUser", "%v", err)
		}
		if u.uid == 0 {
			return nil, fieldErr("OSUser", "%q is root; PostgreSQL refuses to run as root", c.OSUser)
		}
		inst.runAs = u
	}
	return inst, nil
}

func lookupOSUser(name string) (*osUser, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("look up OS user %q: %w", name, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("OS user %q: uid %q: %w", name, u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("OS user %q: gid %q: %w", name, u.Gid, err)
	}
	ou := &osUser{name: u.Username, uid: uint32(uid), gid: uint32(gid), home: u.HomeDir}
	// Supplementary groups matter, e.g. ssl-cert for reading TLS keys.
	if gids, err := u.GroupIds(); err == nil {
		for _, g := range gids {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				ou.groups = append(ou.groups, uint32(n))
			}
		}
	}
	return ou, nil
}

// Config returns the effective configuration (defaults applied).
func (i *Instance) Config() Config { return i.cfg }

// DataDir returns the absolute data directory.
func (i *Instance) DataDir() string { return i.cfg.DataDir }

// LogFile is where pg_ctl sends the server's stderr. It sits next to the
// data directory rather than inside it so that pg_basebackup and pg_rewind
// neither copy a peer's log over ours nor ship ours to peers.
func (i *Instance) LogFile() string { return i.cfg.DataDir + ".log" }

// SocketDir is the directory holding the server's Unix socket, for local
// (trusted) connections as the OS user.
func (i *Instance) SocketDir() string { return socketDir(i.cfg.DataDir) }

// HasDataDir reports whether the data directory holds an initialised
// cluster.
func (i *Instance) HasDataDir() bool {
	_, err := os.Stat(filepath.Join(i.cfg.DataDir, "PG_VERSION"))
	return err == nil
}

func (i *Instance) dataFile(name string) string { return filepath.Join(i.cfg.DataDir, name) }

// runOpts tunes how a PostgreSQL binary is executed.
type runOpts struct {
	// env is appended to the sanitised environment (e.g. PGPASSWORD).
	env []string
	// ownGroup puts the command in its own process group and kills the
	// whole group on cancellation, because initdb, pg_basebackup and
	// pg_rewind fork helpers that would otherwise outlive the context.
	ownGroup bool
}

// outputLimit bounds how much of a command's output we keep for error
// messages; the tail carries the actual error.
const outputLimit = 16 << 10

// run executes a binary from BinDir as the PostgreSQL OS user and returns
// its combined output. Errors include the tail of the output because
// PostgreSQL tools explain failures there, not in exit codes.
func (i *Instance) run(ctx context.Context, bin string, args []string, o runOpts) (string, error) {
	path := filepath.Join(i.cfg.BinDir, bin)
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(i.baseEnv(), o.env...)
	// A working directory the OS user may not enter makes initdb and
	// pg_ctl fail with "could not identify current directory".
	cmd.Dir = "/"
	out := &tailBuffer{max: outputLimit}
	cmd.Stdout = out
	cmd.Stderr = out
	attr := &syscall.SysProcAttr{}
	if i.runAs != nil {
		attr.Credential = &syscall.Credential{Uid: i.runAs.uid, Gid: i.runAs.gid, Groups: i.runAs.groups}
	}
	if o.ownGroup {
		attr.Setpgid = true
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	}
	cmd.SysProcAttr = attr
	// Daemonised grandchildren (the postmaster started by pg_ctl) must not
	// keep us waiting on inherited output pipes.
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	text := strings.TrimSpace(out.String())
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return text, fmt.Errorf("%s: %w (output: %s)", strings.TrimSpace(bin+" "+firstArg(args)), ctxErr, oneLine(text))
		}
		return text, fmt.Errorf("%s: %w: %s", strings.TrimSpace(bin+" "+firstArg(args)), err, oneLine(text))
	}
	return text, nil
}

// firstArg names the pg_ctl subcommand in errors; flags (which may carry
// paths) are left out.
func firstArg(args []string) string {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return ""
	}
	return args[0]
}

// oneLine keeps multi-line tool output readable inside a single log field.
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return "(no output)"
	}
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " | ")), " ")
}

// baseEnv is the environment for PostgreSQL binaries: the agent's own, minus
// anything that would change where or how tools connect (PG*), and with the C
// locale so that messages and pg_controldata output are parseable.
func (i *Instance) baseEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, "PG"), strings.HasPrefix(k, "LC_"), k == "LANG", k == "LANGUAGE":
			continue
		case i.runAs != nil && (k == "HOME" || k == "USER" || k == "LOGNAME"):
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "LC_ALL=C", "LANG=C")
	if i.runAs != nil {
		env = append(env, "HOME="+i.runAs.home, "USER="+i.runAs.name, "LOGNAME="+i.runAs.name)
	}
	return env
}

// chown hands a file or directory we created as root to the OS user;
// PostgreSQL refuses a data directory it does not own.
func (i *Instance) chown(path string) error {
	if i.runAs == nil {
		return nil
	}
	if err := os.Lchown(path, int(i.runAs.uid), int(i.runAs.gid)); err != nil {
		return fmt.Errorf("chown %s to %s: %w", path, i.runAs.name, err)
	}
	return nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	buf bytes.Buffer
	cut bool
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	n := len(p)
	t.buf.Write(p)
	if over := t.buf.Len() - t.max; over > 0 {
		t.buf.Next(over)
		t.cut = true
	}
	return n, nil
}

func (t *tailBuffer) String() string {
	if t.cut {
		return "..." + t.buf.String()
	}
	return t.buf.String()
}

// waitSeconds converts the context deadline into a pg_ctl -t value, leaving
// a second so that pg_ctl reports its own timeout before we kill it.
func waitSeconds(ctx context.Context, def time.Duration) int {
	d := def
	if dl, ok := ctx.Deadline(); ok {
		d = time.Until(dl) - time.Second
	}
	s := int(d / time.Second)
	if s < 1 {
		s = 1
	}
	return s
}
