package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/health"
	"github.com/urfave/cli/v2"
)

// Exit codes shared by every operator command, so scripts can tell a typo
// (2) from a cluster that said no or could not be reached (1).
const (
	exitFailed = 1
	exitUsage  = 2
)

func usageErr(format string, a ...any) error {
	return cli.Exit(fmt.Sprintf(format, a...), exitUsage)
}

func failErr(format string, a ...any) error {
	return cli.Exit(fmt.Sprintf(format, a...), exitFailed)
}

// connection settings: flag name, environment variable, default.
var connSettings = []struct{ flag, env, def, usage string }{
	{"consul", "CONSUL_HTTP_ADDR", "127.0.0.1:8500", "Consul HTTP address"},
	{"token", "CONSUL_HTTP_TOKEN", "", "Consul ACL token"},
	{"cluster", "PGMESH_CLUSTER", "", "cluster (mesh) name"},
	{"prefix", "PGMESH_PREFIX", consulkv.DefaultPrefix, "Consul KV prefix"},
	{"api-user", "PGMESH_RESTAPI_USERNAME", "", "username for the agents' REST API"},
	{"api-password", "PGMESH_RESTAPI_PASSWORD", "", "password for the agents' REST API"},
	{"api-cacert", "PGMESH_API_CACERT", "", "CA file that signed the agents' REST API certificates (HTTPS)"},
	{"api-cert", "PGMESH_API_CERT", "", "client certificate for the agents' REST API (restapi.verify_client)"},
	{"api-key", "PGMESH_API_KEY", "", "key of --api-cert"},
	{"api-insecure", "PGMESH_API_INSECURE", "", "true: do not verify the agents' certificates (not recommended)"},
}

// connFlags returns fresh flag values for one command. They are declared on
// the app and on every command so `pgmesh --cluster x status` and
// `pgmesh status --cluster x` both work; the environment is read by
// setting() rather than by urfave/cli, because cli would let an environment
// value shadow a flag given at the other level.
func connFlags() []cli.Flag {
	fl := make([]cli.Flag, 0, len(connSettings))
	for _, s := range connSettings {
		u := s.usage + " (env " + s.env
		if s.def != "" {
			u += ", default " + s.def
		}
		u += ")"
		fl = append(fl, &cli.StringFlag{Name: s.flag, Usage: u, Category: "Connection"})
	}
	return fl
}

// setting resolves a connection setting: a flag on the command, then a flag
// before the command, then the environment, then the default.
func setting(c *cli.Context, name string) string {
	for _, p := range c.Lineage() {
		if p.IsSet(name) {
			return p.String(name)
		}
	}
	for _, s := range connSettings {
		if s.flag == name {
			if v := os.Getenv(s.env); v != "" {
				return v
			}
			return s.def
		}
	}
	return ""
}

// opConn is what one command invocation needs to talk to the cluster.
type opConn struct {
	kv      *consulkv.Client
	addr    string
	token   string
	cluster string
	api     *apiClient
	out     io.Writer
	// kvConfig is what kv was made from; clients for other datacenters
	// (status across the mesh) are made from it.
	kvConfig consulkv.Config
}

// newOpConn builds the Consul client. It does not contact Consul, so
// usage errors are reported before any network wait.
func newOpConn(c *cli.Context) (*opConn, error) {
	cluster := setting(c, "cluster")
	if cluster == "" {
		return nil, usageErr("--cluster is required (or set PGMESH_CLUSTER)")
	}
	if err := consulkv.ValidName("cluster", cluster); err != nil {
		return nil, usageErr("--cluster: %v", err)
	}
	addr := setting(c, "consul")
	kvConfig := consulkv.Config{Address: addr, Token: setting(c, "token"), Cluster: cluster, Prefix: setting(c, "prefix")}
	kv, err := consulkv.New(kvConfig)
	if err != nil {
		return nil, usageErr("%v", err)
	}
	token := setting(c, "token")
	if token == "" {
		token = os.Getenv("CONSUL_HTTP_TOKEN")
	}
	api, err := newAPIClient(c)
	if err != nil {
		return nil, err
	}
	return &opConn{kv: kv, addr: addr, cluster: cluster, out: c.App.Writer, token: token, api: api, kvConfig: kvConfig}, nil
}

// consulErr turns a consulkv error into the one line an operator needs:
// where Consul was expected and what the transport said, without the
// request URL and wrapping noise.
func (s *opConn) consulErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, consulkv.ErrPermission) {
		return failErr("Consul at %s refused: %s (token from --token or CONSUL_HTTP_TOKEN%s)", s.addr, permissionText(err), tokenHint(s.token))
	}
	if errors.Is(err, consulkv.ErrUnreachable) {
		var se api.StatusError
		if errors.As(err, &se) {
			return failErr("Consul at %s is not working: %s", s.addr, strings.TrimSpace(se.Body))
		}
		return failErr("cannot reach Consul at %s: %s%s", s.addr, rootCause(err), clientCertHint(s.addr))
	}
	var se api.StatusError
	if errors.As(err, &se) {
		return failErr("Consul at %s refused the request (%d): %s", s.addr, se.Code, strings.TrimSpace(se.Body))
	}
	return failErr("%s", trimPkg(err.Error()))
}

// permissionText is what Consul said when it refused (its text names the
// missing permission), without consulkv's wrapping.
func permissionText(err error) string {
	msg := err.Error()
	if i := strings.Index(msg, consulkv.ErrPermission.Error()+": "); i >= 0 {
		return msg[i+len(consulkv.ErrPermission.Error())+2:]
	}
	return trimPkg(msg)
}

func tokenHint(token string) string {
	if token == "" {
		return "; none was given, so Consul used its anonymous token"
	}
	return ""
}

// clientCertHint: over HTTPS without a client certificate, a Consul with
// verify_incoming ends the handshake, and depending on timing the client
// sees "certificate required" or only a broken pipe; say what may be
// missing.
func clientCertHint(addr string) string {
	https := strings.HasPrefix(addr, "https://") || os.Getenv("CONSUL_HTTP_SSL") == "true"
	if !https || os.Getenv("CONSUL_CLIENT_CERT") != "" {
		return ""
	}
	return " (no client certificate was given: if Consul verifies clients (verify_incoming), set CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY)"
}

// rootCause drops the request URL that net/http puts in front of the
// reason; the URL only repeats the address the message names already.
func rootCause(err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return "no answer in time"
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
}

func trimPkg(s string) string { return strings.TrimPrefix(s, "consulkv: ") }

// readCluster reads the whole cluster and fails when there is nothing to
// show: an empty prefix almost always means a wrong --cluster or --prefix,
// which an empty table would hide.
func (s *opConn) readCluster(ctx context.Context) (*consulkv.ClusterView, error) {
	v, err := s.kv.ReadCluster(ctx)
	if err != nil {
		return nil, s.consulErr(err)
	}
	if err := s.emptyViewErr(v); err != nil {
		return nil, err
	}
	return v, nil
}

// emptyViewErr is readCluster's refusal of a view without groups (nil when
// there are some).
func (s *opConn) emptyViewErr(v *consulkv.ClusterView) error {
	if len(v.Groups) != 0 {
		return nil
	}
	what := "no data"
	if v.ConfigIndex != 0 {
		what = "a config but no groups"
	}
	if v.DefaultACLPolicy == "deny" && v.ConfigIndex == 0 {
		return failErr("Consul at %s answered nothing under %s and denies by default (ACLs): the token (from --token or CONSUL_HTTP_TOKEN%s) may lack key_prefix %q read (pgmesh consul-policy readonly), or --cluster/--prefix is wrong",
			s.addr, s.kv.ClusterPrefix(), tokenHint(s.token), s.kv.ClusterPrefix())
	}
	return failErr("cluster %q has %s in Consul at %s (under %s); check --cluster and --prefix",
		s.cluster, what, s.addr, s.kv.ClusterPrefix())
}

// readGroup reads one group and fails when it does not exist.
func (s *opConn) readGroup(ctx context.Context, group string) (*consulkv.GroupView, error) {
	g, err := s.kv.ReadGroup(ctx, group)
	if err != nil {
		return nil, s.consulErr(err)
	}
	if len(g.Members) == 0 && g.Leader == nil && g.InitializeIndex == 0 && g.History == nil {
		return nil, failErr("group %q of cluster %q not found in Consul", group, s.cluster)
	}
	return g, nil
}

func leaderName(g *consulkv.GroupView) string {
	if g == nil || g.Leader == nil {
		return ""
	}
	return g.Leader.Member
}

// stdinIsTerminal is a variable so unit tests can pretend.
var stdinIsTerminal = func() bool { return isTerminal(os.Stdin) }

// confirm asks a yes/no question. Without a terminal it refuses instead of
// reading a pipe, because a script that forgot --force should not have its
// input swallowed as an answer to a destructive question.
func confirm(c *cli.Context, question string) error {
	if c.Bool("force") {
		return nil
	}
	if !stdinIsTerminal() {
		return usageErr("%s\nstdin is not a terminal, so pgmesh cannot ask; add --force to go ahead", question)
	}
	fmt.Fprintf(c.App.Writer, "%s [y/N] ", question)
	line, _ := bufio.NewReader(c.App.Reader).ReadString('\n')
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return nil
	}
	return failErr("aborted, nothing changed")
}

func forceFlag(usage string) cli.Flag {
	return &cli.BoolFlag{Name: "force", Aliases: []string{"f"}, Usage: usage}
}

func groupFlag(usage string) cli.Flag {
	return &cli.StringFlag{Name: "group", Aliases: []string{"g"}, Usage: usage}
}

func timeoutFlag(def time.Duration, usage string) cli.Flag {
	return &cli.DurationFlag{Name: "timeout", Value: def, Usage: usage}
}

// requireGroup reads --group, which most commands cannot guess safely.
func requireGroup(c *cli.Context) (string, error) {
	g := c.String("group")
	if g == "" {
		return "", usageErr("%s: --group is required", c.Command.Name)
	}
	if err := consulkv.ValidName("group", g); err != nil {
		return "", usageErr("--group: %v", err)
	}
	return g, nil
}

// apiClient talks to the agents' REST API.
type apiClient struct {
	user, password string
	http           *http.Client
	// caSet / certSet: the user gave a CA (or --api-insecure) / a client
	// certificate, so a TLS error is not explained as their absence.
	caSet, certSet bool
}

// newAPIClient reads the REST API connection settings. The CA and client
// certificate files are checked now, so a typo is a usage error before any
// cluster change starts.
func newAPIClient(c *cli.Context) (*apiClient, error) {
	a := &apiClient{user: setting(c, "api-user"), password: setting(c, "api-password"), http: http.DefaultClient}
	insecure := false
	if v := setting(c, "api-insecure"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, usageErr("--api-insecure / PGMESH_API_INSECURE %q: want true or false", v)
		}
		insecure = b
	}
	o := health.ClientTLSOptions{
		CAFile: setting(c, "api-cacert"), CertFile: setting(c, "api-cert"), KeyFile: setting(c, "api-key"),
		InsecureSkipVerify: insecure,
	}
	if o.CAFile == "" && o.CertFile == "" && o.KeyFile == "" && !insecure {
		return a, nil
	}
	ct, err := health.NewClientTLS(o, nil)
	if err != nil {
		return nil, usageErr("REST API TLS (--api-cacert, --api-cert, --api-key): %v", err)
	}
	a.caSet, a.certSet = o.CAFile != "" || insecure, o.CertFile != ""
	a.http = &http.Client{Transport: &http.Transport{TLSClientConfig: ct.Config(), Proxy: http.ProxyFromEnvironment}}
	return a, nil
}

// apiAnswer is an agent's reply: the status and its text.
type apiAnswer struct {
	Code int
	Body string
}

func (a apiAnswer) ok() bool { return a.Code >= 200 && a.Code < 300 }

func (a *apiClient) do(ctx context.Context, method, base, path string, body any) (apiAnswer, error) {
	if base == "" {
		return apiAnswer{}, &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("member published no api_url")}
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return apiAnswer{}, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(base, "/")+path, rd)
	if err != nil {
		return apiAnswer{}, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if a.user != "" {
		req.SetBasicAuth(a.user, a.password)
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return apiAnswer{}, a.explainTLS(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	ans := apiAnswer{Code: resp.StatusCode, Body: strings.TrimSpace(string(b))}
	if resp.StatusCode == http.StatusUnauthorized {
		return ans, fmt.Errorf("%s refused the credentials (HTTP 401); set --api-user/--api-password or PGMESH_RESTAPI_USERNAME/PASSWORD", base)
	}
	if resp.StatusCode == http.StatusForbidden && strings.Contains(ans.Body, "client certificate") && !a.certSet {
		ans.Body += " (pass one with --api-cert/--api-key or PGMESH_API_CERT/PGMESH_API_KEY)"
	}
	return ans, nil
}

// tlsError is a REST API call that failed in the TLS handshake: it never
// reached the agent, and retrying another way would hide a configuration
// the operator has to fix.
type tlsError struct{ err error }

func (e *tlsError) Error() string { return e.err.Error() }
func (e *tlsError) Unwrap() error { return e.err }

func isTLSError(err error) bool {
	var te *tlsError
	return errors.As(err, &te)
}

// explainTLS adds the setting that fixes a TLS failure to its error.
func (a *apiClient) explainTLS(err error) error {
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var verifyErr *tls.CertificateVerificationError
	msg := err.Error()
	switch {
	case errors.As(err, &unknownCA) && !a.caSet:
		return &tlsError{fmt.Errorf("%w (the agent's certificate is not signed by a CA this host trusts: pass the CA with --api-cacert or PGMESH_API_CACERT)", err)}
	case errors.As(err, &unknownCA):
		return &tlsError{fmt.Errorf("%w (the agent's certificate is not signed by the CA in --api-cacert)", err)}
	case errors.As(err, &hostErr):
		return &tlsError{fmt.Errorf("%w (the agent's certificate does not name the address it publishes as api_url)", err)}
	case strings.Contains(msg, "certificate required") || (strings.Contains(msg, "remote error: tls") && !a.certSet):
		return &tlsError{fmt.Errorf("%w (the agent requires a client certificate: restapi.verify_client: required; pass one with --api-cert/--api-key or PGMESH_API_CERT/PGMESH_API_KEY)", err)}
	case errors.As(err, &verifyErr) || strings.Contains(msg, "remote error: tls") || strings.Contains(msg, "tls: "):
		return &tlsError{err}
	case strings.Contains(msg, "server gave HTTP response to HTTPS client"):
		return &tlsError{fmt.Errorf("%w (the agent serves plain HTTP)", err)}
	}
	return err
}

// getJSON GETs path and decodes the JSON answer into out.
func (a *apiClient) getJSON(ctx context.Context, base, path string, out any) error {
	ans, err := a.do(ctx, http.MethodGet, base, path, nil)
	if err != nil {
		return err
	}
	if !ans.ok() {
		return fmt.Errorf("%s%s: HTTP %d %s", base, path, ans.Code, ans.Body)
	}
	return json.Unmarshal([]byte(ans.Body), out)
}

// notDelivered tells whether a request never reached the agent (so it
// cannot have acted on it and another path is safe to try).
func notDelivered(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// shortHTTPErr strips the URL net/http repeats in front of the reason.
func shortHTTPErr(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		if ue.Timeout() {
			return "no answer in time"
		}
		return ue.Err.Error()
	}
	return err.Error()
}
