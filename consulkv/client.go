package consulkv

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// DefaultPrefix is the KV prefix all pgmesh keys live under.
const DefaultPrefix = "pgmesh"

// DefaultRequestTimeout bounds every non-blocking request unless
// Config.RequestTimeout says otherwise.
const DefaultRequestTimeout = 5 * time.Second

// Config says how to reach Consul and where the cluster's keys are. Empty
// fields fall back to consul/api's environment conventions.
type Config struct {
	Address    string // host:port or URL; default $CONSUL_HTTP_ADDR or 127.0.0.1:8500
	Scheme     string // http or https
	Token      string // ACL token; default $CONSUL_HTTP_TOKEN
	Datacenter string
	CAFile     string
	CertFile   string
	KeyFile    string
	// InsecureSkipVerify disables TLS verification (tests only).
	InsecureSkipVerify bool
	// TLSServerName is the name Consul's certificate is checked against
	// (default: the address's host).
	TLSServerName string
	Prefix        string // default "pgmesh"
	Cluster       string
	// RequestTimeout bounds every non-blocking request (default 5s).
	RequestTimeout time.Duration
}

// Client is pgmesh's typed view of one cluster's Consul data.
type Client struct {
	cfg     Config
	api     *api.Client
	prefix  string
	cluster string
	timeout time.Duration
}

// New validates cfg and builds a client. It does not contact Consul.
func New(cfg Config) (*Client, error) {
	if err := validName("cluster", cfg.Cluster); err != nil {
		return nil, fmt.Errorf("consulkv: %w", err)
	}
	ac := api.DefaultConfig()
	if cfg.Address != "" {
		addr := cfg.Address
		if strings.HasPrefix(addr, "https://") {
			ac.Scheme = "https"
		}
		addr = strings.TrimPrefix(strings.TrimPrefix(addr, "http://"), "https://")
		ac.Address = addr
	}
	if cfg.Scheme != "" {
		ac.Scheme = cfg.Scheme
	}
	if cfg.Token != "" {
		ac.Token = cfg.Token
	}
	if cfg.Datacenter != "" {
		ac.Datacenter = cfg.Datacenter
	}
	if cfg.CAFile != "" {
		ac.TLSConfig.CAFile = cfg.CAFile
	}
	if cfg.CertFile != "" {
		ac.TLSConfig.CertFile = cfg.CertFile
	}
	if cfg.KeyFile != "" {
		ac.TLSConfig.KeyFile = cfg.KeyFile
	}
	if cfg.InsecureSkipVerify {
		ac.TLSConfig.InsecureSkipVerify = true
	}
	if cfg.TLSServerName != "" {
		ac.TLSConfig.Address = cfg.TLSServerName
	}
	cl, err := api.NewClient(ac)
	if err != nil {
		return nil, fmt.Errorf("consulkv: consul client: %w", err)
	}
	prefix := strings.Trim(cfg.Prefix, "/")
	if prefix == "" {
		prefix = DefaultPrefix
	}
	timeout := cfg.RequestTimeout
	if timeout <= 0 {
		timeout = DefaultRequestTimeout
	}
	return &Client{cfg: cfg, api: cl, prefix: prefix, cluster: cfg.Cluster, timeout: timeout}, nil
}

// InDatacenter returns a client for the same cluster in another Consul
// datacenter, reached through the same agent (?dc=): its KV, sessions and
// catalog are that datacenter's.
func (c *Client) InDatacenter(dc string) (*Client, error) {
	cfg := c.cfg
	cfg.Datacenter = dc
	return New(cfg)
}

// Datacenter is the datacenter the client was configured for ("" = the
// local agent's).
func (c *Client) Datacenter() string { return c.cfg.Datacenter }

// API exposes the underlying consul/api client (service registration, DNS
// helpers and tests use it).
func (c *Client) API() *api.Client { return c.api }

// Cluster is the cluster name the client was made for.
func (c *Client) Cluster() string { return c.cluster }

// ClusterPrefix is "<prefix>/<cluster>/".
func (c *Client) ClusterPrefix() string { return c.prefix + "/" + c.cluster + "/" }

// ConfigKey is the dynamic configuration key.
func (c *Client) ConfigKey() string { return c.ClusterPrefix() + "config" }

// GroupPrefix is "<prefix>/<cluster>/groups/<group>/".
func (c *Client) GroupPrefix(group string) string {
	return c.ClusterPrefix() + "groups/" + group + "/"
}

// Key names of one group.
func (c *Client) InitializeKey(group string) string { return c.GroupPrefix(group) + "initialize" }
func (c *Client) LeaderKey(group string) string     { return c.GroupPrefix(group) + "leader" }
func (c *Client) FailoverKey(group string) string   { return c.GroupPrefix(group) + "failover" }
func (c *Client) StatusKey(group string) string     { return c.GroupPrefix(group) + "status" }
func (c *Client) HistoryKey(group string) string    { return c.GroupPrefix(group) + "history" }
func (c *Client) SyncKey(group string) string       { return c.GroupPrefix(group) + "sync" }
func (c *Client) MemberKey(group, member string) string {
	return c.GroupPrefix(group) + "members/" + member
}

// ErrUnreachable wraps failures to talk to Consul at all (as opposed to
// Consul answering "no").
var ErrUnreachable = errors.New("consul unreachable")

// ErrPermission wraps Consul's refusals for want of an ACL permission: a
// 403 (Consul's text names the missing permission) or a read whose results
// Consul filtered out. It is never "unreachable": retrying does not help,
// the token does.
var ErrPermission = errors.New("Consul refused the request")

func (c *Client) ctx(parent context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(parent, c.timeout)
}

func (c *Client) wopts(ctx context.Context) *api.WriteOptions {
	return (&api.WriteOptions{}).WithContext(ctx)
}

func (c *Client) qopts(ctx context.Context) *api.QueryOptions {
	return (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx)
}

// classify marks transport failures with ErrUnreachable and keeps Consul's
// own answers (4xx) as they are.
func classify(op string, err error) error {
	if err == nil {
		return nil
	}
	var se api.StatusError
	if errors.As(err, &se) && se.Code == http.StatusForbidden {
		return fmt.Errorf("consulkv: %s: %w: %s", op, ErrPermission, strings.TrimSpace(se.Body))
	}
	if errors.As(err, &se) && se.Code < http.StatusInternalServerError {
		return fmt.Errorf("consulkv: %s: %w", op, err)
	}
	return fmt.Errorf("consulkv: %s: %w: %w", op, ErrUnreachable, err)
}

// Ping checks Consul answers and has a leader.
func (c *Client) Ping(ctx context.Context) error {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	var leader string
	_, err := c.api.Raw().Query("/v1/status/leader", &leader, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return classify("ping", err)
	}
	if leader == "" {
		return fmt.Errorf("consulkv: ping: %w: no raft leader", ErrUnreachable)
	}
	return nil
}
