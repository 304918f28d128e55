package pg

import (
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// DefaultBinDir is where Debian's postgresql-15 package installs its server
// binaries.
const DefaultBinDir = "/usr/lib/postgresql/15/bin"

// Credentials is a PostgreSQL role name and password.
type Credentials struct {
	User     string
	Password string
}

// String hides the password so a Config printed with %v or %+v in a log or
// error message does not leak it.
func (c Credentials) String() string {
	if c.Password == "" {
		return c.User
	}
	return c.User + ":<redacted>"
}

// Config describes one PostgreSQL instance managed by pgmesh.
type Config struct {
	// Name is the member name. It is the application_name this member uses
	// when streaming, the cluster_name shown in process titles, and the base
	// of its replication slot name on the primary.
	Name string
	// DataDir is the PostgreSQL data directory (made absolute by New).
	DataDir string
	// BinDir holds initdb, pg_ctl, postgres, pg_basebackup, pg_rewind and
	// pg_controldata. Default DefaultBinDir.
	BinDir string
	// ListenAddr is written to listen_addresses, e.g. "127.0.0.1" or "*".
	ListenAddr string
	// ConnectHost is the address other members and the agent itself use to
	// reach this instance. Default: ListenAddr (loopback for wildcards).
	ConnectHost string
	Port        int
	Superuser   Credentials
	Replication Credentials
	// Parameters are extra settings written to the managed configuration
	// file. They override pgmesh's defaults (e.g. wal_level) but may not
	// set what pgmesh manages itself (port, primary_conninfo, ...).
	Parameters map[string]string
	// HBA lines are added to pg_hba.conf after the rules pgmesh needs for
	// replication and its own connections, and before the final
	// password-authenticated catch-all, so they can restrict or extend
	// access for ordinary clients.
	HBA []string
	// OSUser is the account PostgreSQL runs as when the agent runs as root
	// (PostgreSQL refuses to run as root). Ignored when not root: then
	// everything runs as the agent's own user.
	OSUser string
	// Spock: the member runs pgEdge Spock (replication profile spock). On
	// PostgreSQL 15/16 a replica's spock.primary_dsn points Spock's
	// failover-slot worker at the leader with the superuser and a passfile,
	// because the worker's fallback (primary_conninfo) carries a masked
	// password and never authenticates. On 17+ every member gets
	// spock.use_native_failover_slots = on (Spock's slots become failover
	// slots that PostgreSQL's own slot sync keeps).
	Spock bool
}

// ConfigError reports an invalid Config field.
type ConfigError struct {
	Field string
	Msg   string
}

func (e *ConfigError) Error() string {
	return "pg: invalid config: " + e.Field + ": " + e.Msg
}

func fieldErr(field, format string, args ...any) error {
	return &ConfigError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// managedParams are settings pgmesh derives from Config or role; letting
// Parameters override them would silently break replication or the agent's
// own connection, so they are rejected instead.
var managedParams = map[string]string{
	"listen_addresses":         "use ListenAddr",
	"port":                     "use Port",
	"unix_socket_directories":  "pgmesh places the socket in its own directory (SocketDir)",
	"primary_conninfo":         "set by role (WriteConfig)",
	"primary_slot_name":        "set by role (WriteConfig)",
	"recovery_target_timeline": "must stay 'latest' to follow promotions",
	"cluster_name":             "derived from Name",
	"hba_file":                 "pgmesh writes pg_hba.conf in the data directory",
	"config_file":              "pgmesh manages postgresql.conf",
	"data_directory":           "use DataDir",
}

var (
	memberNameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	gucNameRe    = regexp.MustCompile(`^[a-z_][a-z0-9_$]*(\.[a-z_][a-z0-9_$]*)?$`)
)

// sockPathMax is the usable length of sun_path on Linux (108 bytes minus the
// terminating NUL). The socket directory sits next to the data directory, so
// a deep data directory makes the server fail at start with an obscure
// error; we catch it at configuration time instead.
const sockPathMax = 107

// withDefaults returns a copy with defaults filled in and normalised, and
// validates it.
func (c Config) withDefaults() (Config, error) {
	if c.BinDir == "" {
		c.BinDir = DefaultBinDir
	}
	if !memberNameRe.MatchString(c.Name) {
		return c, fieldErr("Name", "%q must be 1-63 characters of letters, digits, '.', '_' or '-', starting with a letter or digit", c.Name)
	}
	if c.DataDir == "" {
		return c, fieldErr("DataDir", "required")
	}
	abs, err := filepath.Abs(c.DataDir)
	if err != nil {
		return c, fieldErr("DataDir", "%v", err)
	}
	c.DataDir = abs
	if c.DataDir == "/" {
		return c, fieldErr("DataDir", "must not be the root directory")
	}
	if !filepath.IsAbs(c.BinDir) {
		return c, fieldErr("BinDir", "%q must be an absolute path", c.BinDir)
	}
	c.BinDir = filepath.Clean(c.BinDir)
	if c.Port < 1 || c.Port > 65535 {
		return c, fieldErr("Port", "%d out of range 1-65535", c.Port)
	}
	if sock := len(socketDir(c.DataDir)) + len("/.s.PGSQL.") + len(strconv.Itoa(c.Port)); sock > sockPathMax {
		return c, fieldErr("DataDir", "%q is too long: the Unix socket path next to it would be %d bytes, the limit is %d", c.DataDir, sock, sockPathMax)
	}
	if strings.TrimSpace(c.ListenAddr) == "" {
		return c, fieldErr("ListenAddr", "required")
	}
	if strings.ContainsAny(c.ListenAddr, "\n\r\x00") {
		return c, fieldErr("ListenAddr", "contains a line break or NUL")
	}
	if c.ConnectHost == "" {
		c.ConnectHost = defaultConnectHost(c.ListenAddr)
	}
	if strings.ContainsAny(c.ConnectHost, " ,\n\r\x00") {
		return c, fieldErr("ConnectHost", "%q must be a single host name or address", c.ConnectHost)
	}
	if err := validateCredentials("Superuser", c.Superuser); err != nil {
		return c, err
	}
	if err := validateCredentials("Replication", c.Replication); err != nil {
		return c, err
	}
	params := make(map[string]string, len(c.Parameters))
	for k, v := range c.Parameters {
		// GUC names are case-insensitive; normalising keeps the managed
		// file free of duplicates like Wal_Level and wal_level.
		name := strings.ToLower(strings.TrimSpace(k))
		field := "Parameters[" + k + "]"
		if !gucNameRe.MatchString(name) {
			return c, fieldErr(field, "not a valid parameter name")
		}
		if why, ok := managedParams[name]; ok {
			return c, fieldErr(field, "managed by pgmesh: %s", why)
		}
		if _, dup := params[name]; dup {
			return c, fieldErr(field, "set twice with different letter case")
		}
		if strings.ContainsAny(v, "\n\r\x00") {
			return c, fieldErr(field, "value contains a line break or NUL")
		}
		params[name] = v
	}
	if params["wal_level"] == "minimal" {
		return c, fieldErr("Parameters[wal_level]", "minimal cannot feed replicas; use replica or logical")
	}
	c.Parameters = params
	for i, line := range c.HBA {
		if strings.ContainsAny(line, "\n\r\x00") {
			return c, fieldErr(fmt.Sprintf("HBA[%d]", i), "contains a line break or NUL")
		}
	}
	c.HBA = append([]string(nil), c.HBA...)
	return c, nil
}

func validateCredentials(field string, cr Credentials) error {
	if cr.User == "" {
		return fieldErr(field+".User", "required")
	}
	// pg_hba.conf has no escape for a double quote inside a quoted name.
	if strings.ContainsAny(cr.User, "\"\n\r\x00") {
		return fieldErr(field+".User", "must not contain double quotes, line breaks or NUL")
	}
	if cr.Password == "" {
		// Members authenticate to each other over TCP with scram-sha-256,
		// which needs a password.
		return fieldErr(field+".Password", "required")
	}
	// initdb --pwfile reads only the first line of the file.
	if strings.ContainsAny(cr.Password, "\n\r\x00") {
		return fieldErr(field+".Password", "must not contain line breaks or NUL")
	}
	return nil
}

// defaultConnectHost picks an address the agent can dial from
// listen_addresses: the first entry, with wildcards mapped to loopback.
func defaultConnectHost(listen string) string {
	first := strings.TrimSpace(strings.Split(listen, ",")[0])
	switch first {
	case "*", "0.0.0.0", "":
		return "127.0.0.1"
	case "::":
		return "::1"
	}
	if ip := net.ParseIP(first); ip != nil && ip.IsUnspecified() {
		return "127.0.0.1"
	}
	return first
}

// socketDir is where the server's Unix socket lives: a private directory
// next to the data directory. Not inside it: pg_rewind copies every entry
// of the source's data directory and fails on a socket, and the socket's
// lock file would travel to other members with clones.
func socketDir(dataDir string) string { return dataDir + ".run" }
