package agent

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/health"
	"gopkg.in/yaml.v3"
)

// Config is one agent's static configuration (its YAML file). Dynamic,
// cluster-wide settings live in Consul's config key and are seeded from
// Bootstrap on first start.
type Config struct {
	Cluster    string           `yaml:"cluster"`
	Group      string           `yaml:"group"`
	Name       string           `yaml:"name"`
	Consul     ConsulConfig     `yaml:"consul"`
	RestAPI    RestAPIConfig    `yaml:"restapi"`
	PostgreSQL PostgreSQLConfig `yaml:"postgresql"`
	Tags       TagsConfig       `yaml:"tags"`
	Bootstrap  BootstrapConfig  `yaml:"bootstrap"`
	Log        LogConfig        `yaml:"log"`
}

// ConsulConfig says how to reach Consul.
type ConsulConfig struct {
	Address            string `yaml:"address"`
	Scheme             string `yaml:"scheme"`
	Token              string `yaml:"token"`
	Datacenter         string `yaml:"datacenter"`
	CAFile             string `yaml:"ca_file"`
	CertFile           string `yaml:"cert_file"`
	KeyFile            string `yaml:"key_file"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
	TLSServerName      string `yaml:"tls_server_name"`
	Prefix             string `yaml:"prefix"`
	// ServiceTags are added to the member's service registration.
	ServiceTags []string `yaml:"service_tags"`
	// DisableRegistration keeps the member out of Consul's catalog (no
	// service, no DNS, no checks); the HA loop works the same.
	DisableRegistration bool `yaml:"disable_registration"`
	// SessionChecks tie the session (and so the leader lock) to health
	// checks: "liveness" is the member's own agent-liveness check, any
	// other value a node check ID such as "serfHealth". A check going
	// critical frees the lock at once instead of after ttl. Unset (nil):
	// automatic, [serfHealth] when Consul is a client agent on this host,
	// else TTL only; an empty list: TTL only.
	SessionChecks []string `yaml:"session_checks"`
	// ServiceCheckTLSServerName is the name Consul checks the REST API's
	// certificate against (Patroni's service_check_tls_server_name);
	// ServiceCheckTLSSkipVerify turns that check off (not recommended:
	// give Consul the CA with enable_agent_tls_for_checks instead).
	ServiceCheckTLSServerName string `yaml:"service_check_tls_server_name"`
	ServiceCheckTLSSkipVerify bool   `yaml:"service_check_tls_skip_verify"`
}

// RestAPIConfig configures the REST API.
type RestAPIConfig struct {
	Listen         string `yaml:"listen"`
	ConnectAddress string `yaml:"connect_address"`
	// Username and Password protect the mutating endpoints (basic auth);
	// UsernameFile / PasswordFile read them from files instead (trailing
	// newline dropped), so they stay out of the config file.
	Username     string `yaml:"username"`
	Password     string `yaml:"password"`
	UsernameFile string `yaml:"username_file"`
	PasswordFile string `yaml:"password_file"`
	// Allowlist limits the addresses that may send mutating requests
	// (CIDRs or addresses); AllowlistIncludeMembers adds the hosts of the
	// group's members (from their member keys).
	Allowlist               []string `yaml:"allowlist"`
	AllowlistIncludeMembers bool     `yaml:"allowlist_include_members"`
	// AllowUnauthenticated lets a REST API that listens beyond loopback
	// accept mutating requests without credentials. Off by default: such
	// an API refuses them (and says so at start and in every 403).
	AllowUnauthenticated bool `yaml:"allow_unauthenticated"`
	// CertFile and KeyFile make the API speak HTTPS (rotated files are
	// picked up without a restart). CAFile verifies client certificates
	// and, for calls to peers, the other members' certificates.
	CertFile string `yaml:"certfile"`
	KeyFile  string `yaml:"keyfile"`
	CAFile   string `yaml:"cafile"`
	// VerifyClient: none (default), optional (a verified client
	// certificate is needed for mutating requests only) or required (for
	// every request, health checks included), as in Patroni.
	VerifyClient string `yaml:"verify_client"`
}

// TLSEnabled reports whether the REST API speaks HTTPS.
func (r RestAPIConfig) TLSEnabled() bool { return r.CertFile != "" }

// ClientCertsRequired reports whether mutating requests need a verified
// client certificate.
func (r RestAPIConfig) ClientCertsRequired() bool {
	return r.TLSEnabled() && (r.VerifyClient == health.VerifyClientOptional || r.VerifyClient == health.VerifyClientRequired)
}

// Credentials of a PostgreSQL role.
type Credentials struct {
	Username string `yaml:"username"`
	Password string `yaml:"password"`
}

// PostgreSQLConfig describes the local PostgreSQL.
type PostgreSQLConfig struct {
	DataDir        string            `yaml:"data_dir"`
	BinDir         string            `yaml:"bin_dir"`
	Listen         string            `yaml:"listen"`
	ConnectAddress string            `yaml:"connect_address"`
	Port           int               `yaml:"port"`
	Superuser      Credentials       `yaml:"superuser"`
	Replication    Credentials       `yaml:"replication"`
	Parameters     map[string]string `yaml:"parameters"`
	PgHBA          []string          `yaml:"pg_hba"`
	// OSUser: when the agent runs as root, PostgreSQL programs run as this
	// user (PostgreSQL refuses root).
	OSUser string `yaml:"os_user"`
	// Callbacks are commands run after PostgreSQL starts, stops, restarts,
	// reloads or changes role, as Patroni's postgresql.callbacks (see
	// callbacks.go). CallbacksTimeout bounds each run (default 60s).
	Callbacks        CallbacksConfig   `yaml:"callbacks"`
	CallbacksTimeout consulkv.Duration `yaml:"callbacks_timeout"`
}

// CallbacksConfig names the command run for each event: an absolute path
// to an executable, optionally followed by arguments (split like a shell
// would, quotes allowed, no expansion). The agent appends three
// arguments, as Patroni does: the action, the role and the scope (the
// group's name).
type CallbacksConfig struct {
	OnStart      string `yaml:"on_start"`
	OnStop       string `yaml:"on_stop"`
	OnRestart    string `yaml:"on_restart"`
	OnReload     string `yaml:"on_reload"`
	OnRoleChange string `yaml:"on_role_change"`
}

// DefaultCallbacksTimeout bounds a callback run when
// postgresql.callbacks_timeout is not set.
const DefaultCallbacksTimeout = 60 * time.Second

// byAction lists the configured commands by action name.
func (c CallbacksConfig) byAction() map[string]string {
	return map[string]string{
		CallbackOnStart: c.OnStart, CallbackOnStop: c.OnStop, CallbackOnRestart: c.OnRestart,
		CallbackOnReload: c.OnReload, CallbackOnRoleChange: c.OnRoleChange,
	}
}

// validate checks every configured command at load time: an absolute path
// to an executable regular file. Errors name the field.
func (c CallbacksConfig) validate() error {
	for _, action := range callbackActions {
		cmd := c.byAction()[action]
		if strings.TrimSpace(cmd) == "" {
			continue
		}
		field := "postgresql.callbacks." + action
		argv, err := splitCommand(cmd)
		if err != nil {
			return fmt.Errorf("config: %s: %w", field, err)
		}
		path := argv[0]
		if !filepath.IsAbs(path) {
			return fmt.Errorf("config: %s: %q is not an absolute path", field, path)
		}
		fi, err := os.Stat(path)
		if err != nil {
			return fmt.Errorf("config: %s: %w", field, err)
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("config: %s: %s is not a regular file", field, path)
		}
		if fi.Mode().Perm()&0o111 == 0 || syscall.Access(path, 1 /* X_OK */) != nil {
			return fmt.Errorf("config: %s: %s is not executable (by this user)", field, path)
		}
	}
	return nil
}

// TagsConfig are the member's HA tags.
type TagsConfig struct {
	NoFailover       bool              `yaml:"nofailover"`
	FailoverPriority int               `yaml:"failover_priority"`
	NoSync           bool              `yaml:"nosync"`
	Custom           map[string]string `yaml:"custom"`
}

// BootstrapConfig seeds the cluster's dynamic config on first start.
type BootstrapConfig struct {
	DCS DynamicConfig `yaml:"dcs"`
}

// DynamicConfig is the YAML form of consulkv.ClusterConfig.
type DynamicConfig struct {
	TTL                  consulkv.Duration  `yaml:"ttl"`
	LoopWait             consulkv.Duration  `yaml:"loop_wait"`
	RetryTimeout         consulkv.Duration  `yaml:"retry_timeout"`
	LockDelay            consulkv.Duration  `yaml:"lock_delay"`
	MaximumLagOnFailover uint64             `yaml:"maximum_lag_on_failover"`
	Parameters           map[string]string  `yaml:"parameters"`
	SynchronousMode      string             `yaml:"synchronous_mode"`
	SynchronousNodeCount int                `yaml:"synchronous_node_count"`
	Replication          string             `yaml:"replication"`
	PrimaryStartTimeout  *consulkv.Duration `yaml:"primary_start_timeout"`
	FailsafeMode         *bool              `yaml:"failsafe_mode"`
	Datacenters          []string           `yaml:"datacenters"`
	PreparedQueries      *bool              `yaml:"prepared_queries"`
}

// ClusterConfig converts to the stored form (defaults filled).
func (d DynamicConfig) ClusterConfig() consulkv.ClusterConfig {
	return consulkv.ClusterConfig{
		Version:              consulkv.ValueVersion,
		TTL:                  d.TTL,
		LoopWait:             d.LoopWait,
		RetryTimeout:         d.RetryTimeout,
		LockDelay:            d.LockDelay,
		MaximumLagOnFailover: d.MaximumLagOnFailover,
		Parameters:           d.Parameters,
		SynchronousMode:      d.SynchronousMode,
		SynchronousNodeCount: d.SynchronousNodeCount,
		Replication:          d.Replication,
		PrimaryStartTimeout:  d.PrimaryStartTimeout,
		FailsafeMode:         d.FailsafeMode,
		Datacenters:          d.Datacenters,
		PreparedQueries:      d.PreparedQueries,
	}.WithDefaults()
}

// LogConfig sets logging.
type LogConfig struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

// LoadConfig reads a YAML file, applies PGMESH_* environment overrides and
// defaults, and validates. Errors name the offending field.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return ParseConfig(data, os.Environ())
}

// ParseConfig is LoadConfig without the file: YAML bytes plus an
// environment ("KEY=value" strings).
func ParseConfig(data []byte, environ []string) (*Config, error) {
	cfg := &Config{}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && err.Error() != "EOF" {
		return nil, fmt.Errorf("config: %w", err)
	}
	if err := applyEnv(reflect.ValueOf(cfg).Elem(), "PGMESH", envMap(environ)); err != nil {
		return nil, err
	}
	cfg.applyDefaults()
	if err := cfg.readSecretFiles(); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

func envMap(environ []string) map[string]string {
	m := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, "PGMESH_") {
			m[k] = v
		}
	}
	return m
}

var durationType = reflect.TypeOf(consulkv.Duration(0))

// applyEnv sets every scalar field from PGMESH_<YAML_PATH> (upper case, dots
// as underscores), e.g. PGMESH_POSTGRESQL_DATA_DIR or PGMESH_TAGS_NOFAILOVER.
// Maps take PGMESH_<PATH>_<KEY> (e.g. PGMESH_POSTGRESQL_PARAMETERS_WORK_MEM
// sets work_mem).
func applyEnv(v reflect.Value, prefix string, env map[string]string) error {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if tag == "" || tag == "-" {
			continue
		}
		name := prefix + "_" + strings.ToUpper(tag)
		fv := v.Field(i)
		if f.Type.Kind() == reflect.Struct {
			if err := applyEnv(fv, name, env); err != nil {
				return err
			}
			continue
		}
		if f.Type.Kind() == reflect.Map && f.Type.Key().Kind() == reflect.String && f.Type.Elem().Kind() == reflect.String {
			for k, val := range env {
				if key, ok := strings.CutPrefix(k, name+"_"); ok && key != "" {
					if fv.IsNil() {
						fv.Set(reflect.MakeMap(f.Type))
					}
					fv.SetMapIndex(reflect.ValueOf(strings.ToLower(key)), reflect.ValueOf(val))
				}
			}
			continue
		}
		raw, ok := env[name]
		if !ok {
			continue
		}
		field := strings.ToLower(strings.TrimPrefix(name, "PGMESH_"))
		switch {
		case f.Type == durationType:
			var d consulkv.Duration
			if err := d.Set(raw); err != nil {
				return fmt.Errorf("config: %s (from %s): %v", field, name, err)
			}
			fv.SetInt(int64(d))
		case f.Type == reflect.PointerTo(durationType):
			// An optional duration: set means "this value, even 0".
			d := new(consulkv.Duration)
			if err := d.Set(raw); err != nil {
				return fmt.Errorf("config: %s (from %s): %v", field, name, err)
			}
			fv.Set(reflect.ValueOf(d))
		case f.Type.Kind() == reflect.String:
			fv.SetString(raw)
		case f.Type.Kind() == reflect.Bool:
			b, err := strconv.ParseBool(raw)
			if err != nil {
				return fmt.Errorf("config: %s (from %s): %q is not a boolean", field, name, raw)
			}
			fv.SetBool(b)
		case f.Type.Kind() == reflect.Int:
			n, err := strconv.Atoi(raw)
			if err != nil {
				return fmt.Errorf("config: %s (from %s): %q is not an integer", field, name, raw)
			}
			fv.SetInt(int64(n))
		case f.Type.Kind() == reflect.Uint64:
			n, err := strconv.ParseUint(raw, 10, 64)
			if err != nil {
				return fmt.Errorf("config: %s (from %s): %q is not a non-negative integer", field, name, raw)
			}
			fv.SetUint(n)
		case f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.String:
			// Set but empty is an empty list, not "unset" (for
			// consul.session_checks: TTL only rather than automatic).
			parts := []string{}
			for _, p := range strings.Split(raw, ";") {
				if p = strings.TrimSpace(p); p != "" {
					parts = append(parts, p)
				}
			}
			fv.Set(reflect.ValueOf(parts))
		}
	}
	return nil
}

func (c *Config) applyDefaults() {
	if c.Consul.Prefix == "" {
		c.Consul.Prefix = consulkv.DefaultPrefix
	}
	if c.RestAPI.Listen == "" {
		c.RestAPI.Listen = "127.0.0.1:8008"
	}
	if c.RestAPI.ConnectAddress == "" {
		c.RestAPI.ConnectAddress = c.RestAPI.Listen
	}
	if c.PostgreSQL.BinDir == "" {
		c.PostgreSQL.BinDir = "/usr/lib/postgresql/15/bin"
	}
	if c.PostgreSQL.Listen == "" {
		c.PostgreSQL.Listen = "127.0.0.1"
	}
	if c.PostgreSQL.ConnectAddress == "" {
		c.PostgreSQL.ConnectAddress = c.PostgreSQL.Listen
	}
	if c.PostgreSQL.Port == 0 {
		c.PostgreSQL.Port = 5432
	}
	if c.PostgreSQL.Superuser.Username == "" {
		c.PostgreSQL.Superuser.Username = "postgres"
	}
	if c.PostgreSQL.Replication.Username == "" {
		c.PostgreSQL.Replication.Username = "replicator"
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "json"
	}
	if c.PostgreSQL.CallbacksTimeout == 0 {
		c.PostgreSQL.CallbacksTimeout = consulkv.Duration(DefaultCallbacksTimeout)
	}
}

// Validate checks the configuration; errors name the field.
func (c *Config) Validate() error {
	for field, v := range map[string]string{"cluster": c.Cluster, "group": c.Group, "name": c.Name} {
		if err := consulkv.ValidName(field, v); err != nil {
			return fmt.Errorf("config: %w", err)
		}
	}
	if c.PostgreSQL.DataDir == "" {
		return fmt.Errorf("config: postgresql.data_dir is required")
	}
	if !strings.HasPrefix(c.PostgreSQL.DataDir, "/") {
		return fmt.Errorf("config: postgresql.data_dir %q must be an absolute path", c.PostgreSQL.DataDir)
	}
	if c.PostgreSQL.Port < 1 || c.PostgreSQL.Port > 65535 {
		return fmt.Errorf("config: postgresql.port %d out of range", c.PostgreSQL.Port)
	}
	if _, _, err := net.SplitHostPort(c.RestAPI.Listen); err != nil {
		return fmt.Errorf("config: restapi.listen %q: want host:port", c.RestAPI.Listen)
	}
	if _, _, err := net.SplitHostPort(c.RestAPI.ConnectAddress); err != nil {
		return fmt.Errorf("config: restapi.connect_address %q: want host:port", c.RestAPI.ConnectAddress)
	}
	if c.PostgreSQL.Replication.Password == "" {
		return fmt.Errorf("config: postgresql.replication.password is required (replicas authenticate with it)")
	}
	if c.PostgreSQL.Superuser.Password == "" {
		return fmt.Errorf("config: postgresql.superuser.password is required (pg_rewind and peers use it)")
	}
	if c.PostgreSQL.Superuser.Username == c.PostgreSQL.Replication.Username {
		return fmt.Errorf("config: postgresql.replication.username must differ from postgresql.superuser.username")
	}
	if (c.RestAPI.Username == "") != (c.RestAPI.Password == "") {
		return fmt.Errorf("config: restapi.username and restapi.password go together")
	}
	if err := c.RestAPI.validateTLS(); err != nil {
		return err
	}
	if _, err := parseAllowlist(c.RestAPI.Allowlist); err != nil {
		return fmt.Errorf("config: restapi.allowlist: %w", err)
	}
	if c.PostgreSQL.CallbacksTimeout < 0 {
		return fmt.Errorf("config: postgresql.callbacks_timeout %s must not be negative", c.PostgreSQL.CallbacksTimeout)
	}
	if err := c.PostgreSQL.Callbacks.validate(); err != nil {
		return err
	}
	if c.Tags.FailoverPriority < 0 {
		return fmt.Errorf("config: tags.failover_priority %d must not be negative", c.Tags.FailoverPriority)
	}
	dyn := c.Bootstrap.DCS.ClusterConfig()
	if err := dyn.Validate(); err != nil {
		return fmt.Errorf("config: bootstrap.dcs: %w", err)
	}
	if c.Consul.DisableRegistration && containsStr(c.Consul.SessionChecks, "liveness") {
		return fmt.Errorf("config: consul.session_checks: \"liveness\" needs the service registration (consul.disable_registration is set)")
	}
	// The same check every agent makes before it adopts a stored config.
	if err := dyn.ValidateFor([]consulkv.MemberSettings{c.Settings()}); err != nil {
		return fmt.Errorf("config: bootstrap.dcs: %w", err)
	}
	switch c.Log.Format {
	case "json", "console":
	default:
		return fmt.Errorf("config: log.format %q: use json or console", c.Log.Format)
	}
	return nil
}

// Settings are the member's local settings the cluster config's safety
// rules depend on (published in its member key).
func (c *Config) Settings() consulkv.MemberSettings {
	checks := c.Consul.SessionChecks
	if checks == nil {
		// Automatic: judged as the node check it may become.
		checks = []string{AutoSessionCheck + " (automatic)"}
	}
	return consulkv.MemberSettings{Member: c.Name, SessionChecks: checks}
}

// readSecretFiles fills restapi.username/password from their *_file
// settings (read once, when the configuration is loaded; never logged).
func (c *Config) readSecretFiles() error {
	for _, f := range []struct {
		name string
		file string
		dst  *string
	}{{"restapi.username", c.RestAPI.UsernameFile, &c.RestAPI.Username}, {"restapi.password", c.RestAPI.PasswordFile, &c.RestAPI.Password}} {
		if f.file == "" {
			continue
		}
		if *f.dst != "" {
			return fmt.Errorf("config: %s and %s_file are both set; use one", f.name, f.name)
		}
		b, err := os.ReadFile(f.file)
		if err != nil {
			return fmt.Errorf("config: %s_file: %w", f.name, err)
		}
		*f.dst = strings.TrimRight(string(b), "\r\n")
		if *f.dst == "" {
			return fmt.Errorf("config: %s_file %s is empty", f.name, f.file)
		}
	}
	return nil
}

func (r RestAPIConfig) validateTLS() error {
	if (r.CertFile == "") != (r.KeyFile == "") {
		return fmt.Errorf("config: restapi.certfile and restapi.keyfile go together")
	}
	if !health.ValidVerifyClient(r.VerifyClient) {
		return fmt.Errorf("config: restapi.verify_client %q: want none, optional or required", r.VerifyClient)
	}
	if r.CertFile == "" && (r.CAFile != "" || (r.VerifyClient != "" && r.VerifyClient != health.VerifyClientNone)) {
		return fmt.Errorf("config: restapi.cafile and restapi.verify_client need restapi.certfile and keyfile (the API speaks HTTPS only with a certificate)")
	}
	for _, f := range []struct{ name, path string }{{"restapi.certfile", r.CertFile}, {"restapi.keyfile", r.KeyFile}, {"restapi.cafile", r.CAFile}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return fmt.Errorf("config: %s: %w", f.name, err)
		}
	}
	return nil
}

// parseAllowlist turns CIDRs and single addresses into networks.
func parseAllowlist(list []string) ([]*net.IPNet, error) {
	var out []*net.IPNet
	for _, e := range list {
		e = strings.TrimSpace(e)
		if !strings.Contains(e, "/") {
			ip := net.ParseIP(e)
			if ip == nil {
				return nil, fmt.Errorf("%q is neither an address nor a CIDR", e)
			}
			bits := 32
			if ip.To4() == nil {
				bits = 128
			}
			e = fmt.Sprintf("%s/%d", ip, bits)
		}
		_, n, err := net.ParseCIDR(e)
		if err != nil {
			return nil, fmt.Errorf("%q: %v", e, err)
		}
		out = append(out, n)
	}
	return out, nil
}

// ListensBeyondLoopback reports whether the REST API can be reached from
// other hosts (a wildcard or non-loopback listen address).
func (c *Config) ListensBeyondLoopback() bool {
	host, _, err := net.SplitHostPort(c.RestAPI.Listen)
	if err != nil {
		return true
	}
	if host == "localhost" {
		return false
	}
	ip := net.ParseIP(host)
	return ip == nil || !ip.IsLoopback()
}

// MemberTags converts the tags to their stored form.
func (c *Config) MemberTags() consulkv.MemberTags {
	return consulkv.MemberTags{
		NoFailover:       c.Tags.NoFailover,
		FailoverPriority: c.Tags.FailoverPriority,
		NoSync:           c.Tags.NoSync,
		Custom:           c.Tags.Custom,
	}
}

func containsStr(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
