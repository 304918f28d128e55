package routing

import (
	"fmt"

	"github.com/pgmesh/pgmesh/health"
)

// Ports are the listener ports the shipped HAProxy template uses.
type Ports struct {
	// Write is the write listener (every group's primary, local first).
	Write int
	// Read is the read listener (replicas within MaxLag, primaries as
	// fallback).
	Read int
	// Stats is HAProxy's stats page (HTTP).
	Stats int
	// GroupBase is the first per-group listener: group i of
	// Mesh.GroupNames() (name order, the same on every router whatever its
	// local group) listens on GroupBase+i.
	GroupBase int
}

// Default data values.
const (
	DefaultWritePort      = 5000
	DefaultReadPort       = 5001
	DefaultStatsPort      = 7000
	DefaultGroupBasePort  = 5100
	DefaultMaxLag         = 16 << 20
	DefaultDBName         = "postgres"
	DefaultDBUser         = "postgres"
	DefaultConnectTimeout = 2
)

// RenderData is what a template is executed with ("." in the template).
//
//	.Mesh            the *Mesh (groups, members, roles, health, lag)
//	.Cluster         the cluster name (= .Mesh.Cluster)
//	.Ports           .Write .Read .Stats .GroupBase (defaults 5000 5001 7000 5100)
//	.Bind            listen address for the listeners ("" = all addresses)
//	.Socket          HAProxy stats socket path ("" = no socket line)
//	.MaxLag          replica lag bound in bytes (default 16MB)
//	.DBName .DBUser  libpq dbname/user (default postgres/postgres)
//	.SSLMode         libpq sslmode ("" = libpq's default)
//	.ConnectTimeout  libpq connect_timeout seconds (default 2)
//	.Vars            free-form strings from the configuration
//	.GroupPort NAME  the per-group listener port of group NAME
//	.APICAFile       CA HAProxy verifies HTTPS REST APIs with (default @system-ca)
//	.APICert         certificate+key PEM HAProxy shows them ("" = none)
//	.Check MEMBER    HAProxy's check options for a member's REST API
type RenderData struct {
	Mesh           *Mesh
	Cluster        string
	Ports          Ports
	Bind           string
	Socket         string
	MaxLag         uint64
	DBName         string
	DBUser         string
	SSLMode        string
	ConnectTimeout int
	Vars           map[string]string
	APICAFile      string
	APICert        string
}

// DefaultAPICAFile is what HAProxy verifies agents' certificates with when
// the configuration names no CA: the system's trust store.
const DefaultAPICAFile = "@system-ca"

// Check is the HAProxy server options that health-check a member through
// its agent's REST API: the API's address and port and, when the API
// speaks HTTPS, TLS with the certificate verified (check-ssl verify
// required) and the client certificate the agents may require.
func (d *RenderData) Check(m *Member) string {
	out := "check"
	if m.APIPort != 0 {
		out += fmt.Sprintf(" port %d addr %s", m.APIPort, m.APIHost)
	}
	if m.APITLS {
		ca := d.APICAFile
		if ca == "" {
			ca = DefaultAPICAFile
		}
		out += " check-ssl verify required ca-file " + ca
		if d.APICert != "" {
			out += " crt " + d.APICert
		}
	}
	return out
}

// GroupPort is Ports.GroupBase + the group's index in Mesh.GroupNames(), or
// 0 for a group that is not in the mesh.
func (d *RenderData) GroupPort(group string) int {
	if d.Mesh == nil {
		return 0
	}
	for i, n := range d.Mesh.GroupNames() {
		if n == group {
			return d.Ports.GroupBase + i
		}
	}
	return 0
}

// DataConfig is the configurable part of RenderData, as written in the
// render YAML (top-level `data:` and per-template `data:`). Empty/zero
// fields inherit.
type DataConfig struct {
	Bind   string     `yaml:"bind"`
	Socket string     `yaml:"socket"`
	MaxLag string     `yaml:"max_lag"` // bytes or a size like "16MB"
	Ports  PortConfig `yaml:"ports"`
	DBName string     `yaml:"dbname"`
	DBUser string     `yaml:"user"`
	// SSLMode and ConnectTimeout go into libpq settings.
	SSLMode        string            `yaml:"sslmode"`
	ConnectTimeout int               `yaml:"connect_timeout"`
	Vars           map[string]string `yaml:"vars"`
	// APICAFile and APICert are for agents whose REST API speaks HTTPS:
	// the CA HAProxy verifies their certificates with and the client
	// certificate (certificate and key in one PEM) it shows them.
	APICAFile string `yaml:"api_ca_file"`
	APICert   string `yaml:"api_cert"`
}

// PortConfig is Ports in YAML.
type PortConfig struct {
	Write     int `yaml:"write"`
	Read      int `yaml:"read"`
	Stats     int `yaml:"stats"`
	GroupBase int `yaml:"group_base"`
}

// Over returns d with its empty fields taken from base; Vars are merged
// (d's win).
func (d DataConfig) Over(base DataConfig) DataConfig {
	str := func(a, b string) string {
		if a != "" {
			return a
		}
		return b
	}
	num := func(a, b int) int {
		if a != 0 {
			return a
		}
		return b
	}
	out := DataConfig{
		Bind: str(d.Bind, base.Bind), Socket: str(d.Socket, base.Socket), MaxLag: str(d.MaxLag, base.MaxLag),
		Ports: PortConfig{
			Write: num(d.Ports.Write, base.Ports.Write), Read: num(d.Ports.Read, base.Ports.Read),
			Stats: num(d.Ports.Stats, base.Ports.Stats), GroupBase: num(d.Ports.GroupBase, base.Ports.GroupBase),
		},
		DBName: str(d.DBName, base.DBName), DBUser: str(d.DBUser, base.DBUser), SSLMode: str(d.SSLMode, base.SSLMode),
		ConnectTimeout: num(d.ConnectTimeout, base.ConnectTimeout),
		APICAFile:      str(d.APICAFile, base.APICAFile), APICert: str(d.APICert, base.APICert),
	}
	if len(d.Vars)+len(base.Vars) > 0 {
		out.Vars = map[string]string{}
		for k, v := range base.Vars {
			out.Vars[k] = v
		}
		for k, v := range d.Vars {
			out.Vars[k] = v
		}
	}
	return out
}

// Resolve validates d and returns the RenderData it describes (without a
// mesh), defaults filled in.
func (d DataConfig) Resolve() (RenderData, error) {
	rd := RenderData{
		Bind: d.Bind, Socket: d.Socket, DBName: d.DBName, DBUser: d.DBUser, SSLMode: d.SSLMode,
		ConnectTimeout: d.ConnectTimeout, Vars: d.Vars, MaxLag: DefaultMaxLag, APICAFile: d.APICAFile, APICert: d.APICert,
		Ports: Ports{Write: d.Ports.Write, Read: d.Ports.Read, Stats: d.Ports.Stats, GroupBase: d.Ports.GroupBase},
	}
	if d.MaxLag != "" {
		v, err := health.ParseBytes(d.MaxLag)
		if err != nil {
			return rd, fmt.Errorf("max_lag: %w", err)
		}
		rd.MaxLag = v
	}
	def := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	def(&rd.Ports.Write, DefaultWritePort)
	def(&rd.Ports.Read, DefaultReadPort)
	def(&rd.Ports.Stats, DefaultStatsPort)
	def(&rd.Ports.GroupBase, DefaultGroupBasePort)
	def(&rd.ConnectTimeout, DefaultConnectTimeout)
	for name, p := range map[string]int{"write": rd.Ports.Write, "read": rd.Ports.Read, "stats": rd.Ports.Stats, "group_base": rd.Ports.GroupBase} {
		if p < 1 || p > 65535 {
			return rd, fmt.Errorf("ports.%s %d: out of range", name, p)
		}
	}
	if rd.ConnectTimeout < 0 {
		return rd, fmt.Errorf("connect_timeout %d: must not be negative", rd.ConnectTimeout)
	}
	if rd.DBName == "" {
		rd.DBName = DefaultDBName
	}
	if rd.DBUser == "" {
		rd.DBUser = DefaultDBUser
	}
	if rd.Vars == nil {
		rd.Vars = map[string]string{}
	}
	return rd, nil
}
