package routing

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"gopkg.in/yaml.v3"
)

// Config is the render configuration file (pgmesh render --config):
//
//	cluster: mesh1               # Consul service / KV cluster name
//	local_group: n1              # group this router sits beside (optional)
//	datacenters: [dc1, dc2, dc3] # Consul datacenters the mesh spans (default:
//	                             # the cluster config's, else every one Consul
//	                             # knows when it knows more than one)
//	consul:                      # default: CONSUL_HTTP_ADDR/CONSUL_HTTP_TOKEN
//	  address: 127.0.0.1:8500
//	  token: ""
//	  prefix: pgmesh
//	  datacenter: ""
//	  ca_file: ""                # cert_file, key_file as well
//	debounce: 200ms              # quiet period before installing a change
//	max_delay: 2s                # longest wait while changes keep coming
//	log: {level: info, format: json}
//	data:                        # template data for every template
//	  bind: ""                   # listen address ("" = all)
//	  socket: /run/haproxy/admin.sock
//	  max_lag: 16MB
//	  ports: {write: 5000, read: 5001, stats: 7000, group_base: 5100}
//	  dbname: postgres
//	  user: postgres
//	  sslmode: ""
//	  connect_timeout: 2
//	  vars: {any: string}
//	templates:
//	  - template: builtin:haproxy.cfg.tmpl   # or a file path
//	    destination: /etc/haproxy/haproxy.cfg
//	    perms: "0644"                        # new files only
//	    validate: haproxy -c -f {{file}}
//	    reload: systemctl reload haproxy
//	    haproxy_socket: /run/haproxy/admin.sock
//	    haproxy_backends: [write, read_primaries, "group_*"]
//	    data: {ports: {write: 6000}}         # overrides data for this one
//
// Unknown keys are errors, so a typo does not silently fall back to a
// default.
type Config struct {
	Cluster    string `yaml:"cluster"`
	LocalGroup string `yaml:"local_group"`
	// Datacenters are the Consul datacenters to read (Options.Datacenters).
	Datacenters []string          `yaml:"datacenters"`
	Consul      ConsulConfig      `yaml:"consul"`
	Debounce    consulkv.Duration `yaml:"debounce"`
	MaxDelay    consulkv.Duration `yaml:"max_delay"`
	// AllowEmpty installs outputs rendered from a mesh with no member
	// address (Options.AllowEmpty); off by default.
	AllowEmpty bool          `yaml:"allow_empty"`
	Log        LogConfig     `yaml:"log"`
	Data       DataConfig    `yaml:"data"`
	Templates  []EntryConfig `yaml:"templates"`
}

// ConsulConfig says how to reach Consul; empty fields fall back to
// consul/api's environment conventions.
type ConsulConfig struct {
	Address    string `yaml:"address"`
	Token      string `yaml:"token"`
	Prefix     string `yaml:"prefix"`
	Datacenter string `yaml:"datacenter"`
	CAFile     string `yaml:"ca_file"`
	CertFile   string `yaml:"cert_file"`
	KeyFile    string `yaml:"key_file"`
	// TLSServerName is the name Consul's certificate is checked against.
	TLSServerName string `yaml:"tls_server_name"`
}

// LogConfig is the logger's format (json|console) and level.
type LogConfig struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

// EntryConfig is one template in the YAML file; see Entry.
type EntryConfig struct {
	Template        string     `yaml:"template"`
	Destination     string     `yaml:"destination"`
	Validate        string     `yaml:"validate"`
	Reload          string     `yaml:"reload"`
	Perms           string     `yaml:"perms"`
	HAProxySocket   string     `yaml:"haproxy_socket"`
	HAProxyBackends []string   `yaml:"haproxy_backends"`
	Data            DataConfig `yaml:"data"`
}

// LoadConfig reads and checks a render configuration file.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseConfig(b)
}

// ParseConfig decodes a render configuration strictly and checks it.
func ParseConfig(b []byte) (*Config, error) {
	cfg := &Config{}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	// An empty file decodes to io.EOF; it then fails Check for want of
	// templates, with a clearer message.
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("render config: %w", err)
	}
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// Check validates the configuration without touching anything. Cluster may
// still be empty here (a flag or PGMESH_CLUSTER may supply it).
func (c *Config) Check() error {
	if c.Cluster != "" {
		if err := consulkv.ValidName("cluster", c.Cluster); err != nil {
			return fmt.Errorf("render config: %w", err)
		}
	}
	if c.LocalGroup != "" {
		if err := consulkv.ValidName("local_group", c.LocalGroup); err != nil {
			return fmt.Errorf("render config: %w", err)
		}
	}
	for _, dc := range c.Datacenters {
		if err := consulkv.ValidDatacenter(dc); err != nil {
			return fmt.Errorf("render config: datacenters: %w", err)
		}
	}
	if c.Debounce < 0 || c.MaxDelay < 0 {
		return errors.New("render config: debounce and max_delay must not be negative")
	}
	if _, err := c.Data.Resolve(); err != nil {
		return fmt.Errorf("render config: data: %w", err)
	}
	for i, t := range c.Templates {
		if _, err := t.Entry(); err != nil {
			return fmt.Errorf("render config: templates[%d]: %w", i, err)
		}
		if _, err := t.Data.Over(c.Data).Resolve(); err != nil {
			return fmt.Errorf("render config: templates[%d]: data: %w", i, err)
		}
	}
	return nil
}

// Entry converts the YAML form.
func (t EntryConfig) Entry() (Entry, error) {
	e := Entry{
		Template: t.Template, Destination: t.Destination, Validate: t.Validate, Reload: t.Reload,
		HAProxySocket: t.HAProxySocket, HAProxyBackends: t.HAProxyBackends, Data: t.Data,
	}
	if e.Template == "" {
		return e, errors.New("template: missing")
	}
	if e.Destination == "" {
		return e, errors.New("destination: missing")
	}
	if t.Perms != "" {
		p, err := ParsePerms(t.Perms)
		if err != nil {
			return e, err
		}
		e.Perms = p
	}
	return e, nil
}

// ParsePerms reads an octal file mode such as "0640" or "640".
func ParsePerms(s string) (fs.FileMode, error) {
	v, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimSpace(s), "0o"), 8, 32)
	if err != nil || v == 0 || v > 0o7777 {
		return 0, fmt.Errorf("perms %q: want an octal file mode like 0644", s)
	}
	return fs.FileMode(v), nil
}

// Entries converts every template of the file.
func (c *Config) Entries() ([]Entry, error) {
	out := make([]Entry, 0, len(c.Templates))
	for i, t := range c.Templates {
		e, err := t.Entry()
		if err != nil {
			return nil, fmt.Errorf("render config: templates[%d]: %w", i, err)
		}
		out = append(out, e)
	}
	return out, nil
}

// DebounceDurations returns debounce and max_delay with defaults applied.
func (c *Config) DebounceDurations() (time.Duration, time.Duration) {
	d, m := c.Debounce.D(), c.MaxDelay.D()
	if d <= 0 {
		d = DefaultDebounce
	}
	if m <= 0 {
		m = DefaultMaxDelay
	}
	return d, m
}
