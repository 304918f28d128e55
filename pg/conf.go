package pg

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"go.uber.org/zap"
)

// Role is what an instance should be.
type Role string

// Roles.
const (
	Primary Role = "primary"
	Replica Role = "replica"
)

// FollowTarget is the upstream a replica streams from.
type FollowTarget struct {
	Host     string
	Port     int
	SlotName string
}

// File names inside the data directory.
const (
	ManagedConfFile = "postgresql.pgmesh.conf"
	mainConfFile    = "postgresql.conf"
	hbaFile         = "pg_hba.conf"
	standbySignal   = "standby.signal"
	recoverySignal  = "recovery.signal"
)

// includeLine is appended to postgresql.conf. Being last, the managed file
// wins over anything initdb or an operator put earlier in postgresql.conf
// (postgresql.auto.conf, i.e. ALTER SYSTEM, still overrides both).
const includeLine = "include '" + ManagedConfFile + "'"

// minSenders is the floor for max_wal_senders and max_replication_slots:
// enough for a group of members plus clones and rewinds in flight.
const minSenders = 10

// replicaConnectTimeout bounds how long the walreceiver waits on a dead
// upstream before retrying, so a replica notices a new primary quickly.
const replicaConnectTimeout = 5

// postmasterParams are the PostgreSQL 15 settings with context
// "postmaster" (from `postgres --describe-config`): changing one only takes
// effect after a restart. Anything else is applied by a reload; callers can
// confirm with PendingRestart.
var postmasterParams = setOf(
	"archive_mode", "autovacuum_freeze_max_age", "autovacuum_max_workers",
	"autovacuum_multixact_freeze_max_age", "bonjour", "bonjour_name", "cluster_name",
	"config_file", "data_directory", "data_sync_retry", "dynamic_shared_memory_type",
	"event_source", "external_pid_file", "hba_file", "hot_standby", "huge_page_size",
	"huge_pages", "ident_file", "jit_provider", "listen_addresses", "logging_collector",
	"max_connections", "max_files_per_process", "max_locks_per_transaction",
	"max_logical_replication_workers", "max_pred_locks_per_transaction",
	"max_prepared_transactions", "max_replication_slots", "max_wal_senders",
	"max_worker_processes", "min_dynamic_shared_memory", "old_snapshot_threshold", "port",
	"recovery_target", "recovery_target_action", "recovery_target_inclusive",
	"recovery_target_lsn", "recovery_target_name", "recovery_target_time",
	"recovery_target_timeline", "recovery_target_xid", "shared_buffers",
	"shared_memory_type", "shared_preload_libraries", "superuser_reserved_connections",
	"track_activity_query_size", "track_commit_timestamp", "unix_socket_directories",
	"unix_socket_group", "unix_socket_permissions", "wal_buffers", "wal_decode_buffer_size",
	"wal_level", "wal_log_hints",
	// Spock's postmaster settings pgmesh writes.
	"spock.use_native_failover_slots",
)

func setOf(names ...string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

type setting struct{ name, value string }

// settings computes the managed settings for a role, in a stable order so
// that an unchanged configuration renders byte-identical and WriteConfig can
// report "nothing changed".
func (c Config) settings(role Role, follow *FollowTarget) []setting {
	return c.settingsFor(role, follow, 0)
}

// settingsFor is settings for a data directory of the given major version
// (0: unknown, treated as before PostgreSQL 17).
func (c Config) settingsFor(role Role, follow *FollowTarget, major int) []setting {
	s := []setting{
		{"listen_addresses", c.ListenAddr},
		{"port", strconv.Itoa(c.Port)},
		// A private 0700 socket directory restricts the trusted local
		// connections in pg_hba.conf to the OS user, and lets several
		// instances share a host without fighting over /var/run/postgresql.
		{"unix_socket_directories", socketDir(c.DataDir)},
		{"cluster_name", c.Name},
		{"hot_standby", "on"},
		{"wal_level", "replica"},
		{"max_wal_senders", strconv.Itoa(minSenders)},
		{"max_replication_slots", strconv.Itoa(minSenders)},
		// pg_rewind needs hint bits WAL-logged unless data checksums are on;
		// a cluster cloned from one without checksums would otherwise be
		// un-rewindable.
		{"wal_log_hints", "on"},
		{"hot_standby_feedback", "on"},
		{"wal_keep_size", "128MB"},
		// Written for both roles: it is restart-only, so toggling it with
		// the role would force a needless restart after promotion.
		{"recovery_target_timeline", "latest"},
	}
	index := make(map[string]int, len(s))
	for n, st := range s {
		index[st.name] = n
	}
	extra := make([]string, 0, len(c.Parameters))
	for k := range c.Parameters {
		extra = append(extra, k)
	}
	sort.Strings(extra)
	for _, k := range extra {
		v := c.Parameters[k]
		if n, ok := index[k]; ok {
			s[n].value = v
			continue
		}
		s = append(s, setting{k, v})
	}
	// Replicas refuse to start with fewer senders/slots than their primary,
	// and every member needs room for its peers' slots: enforce the floor
	// even when Parameters ask for less.
	for _, name := range []string{"max_wal_senders", "max_replication_slots"} {
		n := index[name]
		if v, err := strconv.Atoi(s[n].value); err != nil || v < minSenders {
			s[n].value = strconv.Itoa(minSenders)
		}
	}
	if c.Spock && major >= 17 {
		s = append(s, setting{"spock.use_native_failover_slots", "on"})
	}
	if role == Replica && follow != nil {
		ci := ConnInfo{
			Host:           follow.Host,
			Port:           follow.Port,
			User:           c.Replication.User,
			Password:       c.Replication.Password,
			AppName:        c.Name,
			ConnectTimeout: replicaConnectTimeout,
		}
		// PostgreSQL 17 native failover slots: the slot sync worker needs a
		// dbname in primary_conninfo (physical streaming ignores it).
		slotSync := SlotSyncOnStandby(major, role, follow, map[string]string{"wal_level": s[index["wal_level"]].value})
		if slotSync {
			ci.DBName = slotSyncDB
		}
		s = append(s, setting{"primary_conninfo", ci.String()})
		if follow.SlotName != "" {
			s = append(s, setting{"primary_slot_name", follow.SlotName})
		}
		if slotSync {
			s = append(s, setting{"sync_replication_slots", "on"})
		}
		if c.Spock && major < 17 {
			// Spock's failover-slot worker (PostgreSQL 15/16) reads the
			// leader's slots over a plain connection to a database.
			dsn := ConnInfo{Host: follow.Host, Port: follow.Port, User: c.Superuser.User, DBName: "postgres",
				AppName: c.Name + "-spock-slots", ConnectTimeout: replicaConnectTimeout, Passfile: c.passfilePath()}
			s = append(s, setting{"spock.primary_dsn", dsn.String()})
		}
	}
	return s
}

// PassfileName is the libpq password file pgmesh keeps in the data
// directory for connections whose string must not hold the password
// (Spock logs its DSNs on connection errors).
const PassfileName = "pgmesh.pgpass"

func (c Config) passfilePath() string { return filepath.Join(c.DataDir, PassfileName) }

// renderPassfile is the superuser's entry for any host, port and database.
func renderPassfile(c Config) []byte {
	esc := strings.NewReplacer(`\`, `\\`, `:`, `\:`)
	return []byte("# Managed by pgmesh.\n*:*:*:" + esc.Replace(c.Superuser.User) + ":" + esc.Replace(c.Superuser.Password) + "\n")
}

// renderConf renders the managed configuration file.
func renderConf(c Config, role Role, follow *FollowTarget) []byte {
	return renderConfFor(c, role, follow, 0)
}

// renderConfFor renders the managed configuration file for a data
// directory of the given major version.
func renderConfFor(c Config, role Role, follow *FollowTarget, major int) []byte {
	var b bytes.Buffer
	b.WriteString("# Managed by pgmesh: rewritten on every role or configuration change.\n")
	b.WriteString("# Set parameters through pgmesh's configuration, not here.\n")
	fmt.Fprintf(&b, "# role: %s\n", role)
	for _, s := range c.settingsFor(role, follow, major) {
		fmt.Fprintf(&b, "%s = %s\n", s.name, quoteConfValue(s.value))
	}
	return b.Bytes()
}

// quoteConfValue quotes a value for postgresql.conf. Every value is quoted
// (PostgreSQL accepts quoted values for all types) so we never have to decide
// what is a bare word; inside quotes the parser treats backslash as an escape
// and a doubled single quote stands for one.
func quoteConfValue(v string) string {
	v = strings.ReplaceAll(v, `\`, `\\`)
	v = strings.ReplaceAll(v, `'`, `''`)
	return "'" + v + "'"
}

var confLineRe = regexp.MustCompile(`^\s*([A-Za-z0-9_.$]+)\s*=?\s*'((?:[^'\\]|''|\\.)*)'\s*(?:#.*)?$`)

// parseManagedConf reads back a file written by renderConf. It only needs
// to understand our own output, used to diff old and new settings.
func parseManagedConf(data []byte) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		sub := confLineRe.FindStringSubmatch(sc.Text())
		if sub == nil {
			continue
		}
		m[strings.ToLower(sub[1])] = unquoteConfValue(sub[2])
	}
	return m
}

func unquoteConfValue(v string) string {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		switch {
		case v[i] == '\\' && i+1 < len(v):
			i++
			b.WriteByte(v[i])
		case v[i] == '\'' && i+1 < len(v) && v[i+1] == '\'':
			i++
			b.WriteByte('\'')
		default:
			b.WriteByte(v[i])
		}
	}
	return b.String()
}

// diffNeedsRestart reports whether going from old to new settings changes a
// restart-only parameter.
func diffNeedsRestart(old, new map[string]string) (changed []string, restart bool) {
	keys := map[string]bool{}
	for k := range old {
		keys[k] = true
	}
	for k := range new {
		keys[k] = true
	}
	for k := range keys {
		ov, ook := old[k]
		nv, nok := new[k]
		if ook == nok && ov == nv {
			continue
		}
		changed = append(changed, k)
		if postmasterParams[k] {
			restart = true
		}
	}
	sort.Strings(changed)
	return changed, restart
}

var includeRe = regexp.MustCompile(`^\s*include(?:_if_exists)?\s*=?\s*'` + regexp.QuoteMeta(ManagedConfFile) + `'\s*(?:#.*)?$`)

// ensureInclude returns postgresql.conf content that includes the managed
// file exactly once, as its last directive. Duplicates appear when a data
// directory is cloned or rewound from a peer and then edited by hand; the
// include must be last so that our settings win.
func ensureInclude(conf []byte) []byte {
	var b bytes.Buffer
	for _, line := range strings.SplitAfter(string(conf), "\n") {
		if includeRe.MatchString(strings.TrimRight(line, "\r\n")) {
			continue
		}
		b.WriteString(line)
	}
	if b.Len() > 0 && !bytes.HasSuffix(b.Bytes(), []byte("\n")) {
		b.WriteByte('\n')
	}
	b.WriteString(includeLine + "\n")
	return b.Bytes()
}

// renderHBA renders pg_hba.conf. Order matters (first match wins):
//  1. local socket trust: the socket lives in a 0700 directory (SocketDir),
//     so only the OS user (and root) can reach it;
//  2. replication for the replication role from anywhere, with SCRAM;
//  3. the superuser from loopback, which the agent itself uses;
//  4. the operator's lines;
//  5. a SCRAM catch-all for everything else, so peers can run pg_rewind
//     and clients can connect unless the operator's lines say otherwise.
func renderHBA(c Config) []byte {
	var b bytes.Buffer
	line := func(typ, db, user, addr, method string) {
		fmt.Fprintf(&b, "%-7s %-15s %-23s %-23s %s\n", typ, db, user, addr, method)
	}
	repl := quoteHBAName(c.Replication.User)
	super := quoteHBAName(c.Superuser.User)
	b.WriteString("# Managed by pgmesh: rewritten on every configuration change.\n")
	b.WriteString("# Add rules through pgmesh's HBA setting, not here.\n")
	line("# TYPE", "DATABASE", "USER", "ADDRESS", "METHOD")
	line("local", "all", "all", "", "trust")
	line("local", "replication", "all", "", "trust")
	for _, addr := range []string{"127.0.0.1/32", "::1/128", "0.0.0.0/0", "::/0"} {
		line("host", "replication", repl, addr, "scram-sha-256")
	}
	for _, addr := range []string{"127.0.0.1/32", "::1/128"} {
		line("host", "all", super, addr, "scram-sha-256")
	}
	if len(c.HBA) > 0 {
		b.WriteString("# operator rules\n")
		for _, l := range c.HBA {
			b.WriteString(strings.TrimRight(l, " \t") + "\n")
		}
	}
	b.WriteString("# catch-all\n")
	for _, addr := range []string{"0.0.0.0/0", "::/0"} {
		line("host", "all", "all", addr, "scram-sha-256")
	}
	return b.Bytes()
}

// quoteHBAName double-quotes a role name so that names like "all" or
// "replication", or ones with spaces, are taken literally.
func quoteHBAName(name string) string {
	return `"` + name + `"`
}

// WriteConfig brings the data directory's configuration in line with the
// role: the managed settings file, the include in postgresql.conf,
// pg_hba.conf and standby.signal. follow is the upstream for a replica and
// ignored for a primary; a replica with nil follow runs as a standby without
// upstream (waiting for a leader).
//
// changed reports whether anything was written; restartNeeded whether a
// running server must be restarted rather than reloaded for the change to
// take effect (standby.signal or a restart-only parameter). primary_conninfo
// and primary_slot_name only need a reload on PostgreSQL 13 and later.
func (i *Instance) WriteConfig(role Role, follow *FollowTarget) (changed, restartNeeded bool, err error) {
	if role != Primary && role != Replica {
		return false, false, fmt.Errorf("write config: unknown role %q", role)
	}
	if role == Replica && follow != nil {
		if follow.Host == "" || follow.Port < 1 || follow.Port > 65535 {
			return false, false, fmt.Errorf("write config: follow target needs a host and a port 1-65535, got %q:%d", follow.Host, follow.Port)
		}
	}
	if !i.HasDataDir() {
		return false, false, fmt.Errorf("write config: no initialised data directory at %s", i.cfg.DataDir)
	}

	var changedWhat []string

	// Managed settings.
	confPath := i.dataFile(ManagedConfFile)
	major, _ := i.MajorVersion() // 0 if unreadable: render as before 17
	newConf := renderConfFor(i.cfg, role, follow, major)
	oldConf, err := os.ReadFile(confPath)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, false, fmt.Errorf("write config: read %s: %w", confPath, err)
	}
	wrote, err := i.writeFileAtomic(confPath, newConf, 0o600)
	if err != nil {
		return false, false, fmt.Errorf("write config: %w", err)
	}
	if wrote {
		params, restart := diffNeedsRestart(parseManagedConf(oldConf), parseManagedConf(newConf))
		changed = true
		restartNeeded = restartNeeded || restart
		changedWhat = append(changedWhat, ManagedConfFile+"("+strings.Join(params, ",")+")")
	}

	// Include directive.
	mainPath := i.dataFile(mainConfFile)
	mainConf, err := os.ReadFile(mainPath)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return changed, restartNeeded, fmt.Errorf("write config: read %s: %w", mainPath, err)
	}
	wrote, err = i.writeFileAtomic(mainPath, ensureInclude(mainConf), 0o600)
	if err != nil {
		return changed, restartNeeded, fmt.Errorf("write config: %w", err)
	}
	if wrote {
		// Without the include the running server never saw our settings;
		// some of them are restart-only.
		changed, restartNeeded = true, true
		changedWhat = append(changedWhat, mainConfFile)
	}

	if i.cfg.Spock {
		if _, err := i.writeFileAtomic(i.cfg.passfilePath(), renderPassfile(i.cfg), 0o600); err != nil {
			return changed, restartNeeded, fmt.Errorf("write config: %w", err)
		}
	}

	// Client authentication: always reloadable.
	wrote, err = i.writeFileAtomic(i.dataFile(hbaFile), renderHBA(i.cfg), 0o600)
	if err != nil {
		return changed, restartNeeded, fmt.Errorf("write config: %w", err)
	}
	if wrote {
		changed = true
		changedWhat = append(changedWhat, hbaFile)
	}

	// Standby signal: PostgreSQL reads it only at startup.
	sigPath := i.dataFile(standbySignal)
	if role == Replica {
		if _, statErr := os.Stat(sigPath); errors.Is(statErr, fs.ErrNotExist) {
			if _, err := i.writeFileAtomic(sigPath, nil, 0o600); err != nil {
				return changed, restartNeeded, fmt.Errorf("write config: %w", err)
			}
			changed, restartNeeded = true, true
			changedWhat = append(changedWhat, "+"+standbySignal)
		} else if statErr != nil {
			return changed, restartNeeded, fmt.Errorf("write config: stat %s: %w", sigPath, statErr)
		}
	} else {
		removed, err := removeFile(sigPath)
		if err != nil {
			return changed, restartNeeded, fmt.Errorf("write config: %w", err)
		}
		if removed {
			changed, restartNeeded = true, true
			changedWhat = append(changedWhat, "-"+standbySignal)
		}
	}

	fields := []zap.Field{zap.String("role", string(role)), zap.Bool("changed", changed), zap.Bool("restart_needed", restartNeeded)}
	if follow != nil && role == Replica {
		fields = append(fields, zap.String("upstream", follow.Host+":"+strconv.Itoa(follow.Port)), zap.String("slot", follow.SlotName))
	}
	if changed {
		fields = append(fields, zap.Strings("files", changedWhat))
	}
	i.log.Info("wrote postgres configuration", fields...)
	return changed, restartNeeded, nil
}
