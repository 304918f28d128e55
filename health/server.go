package health

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// DefaultListen is where the API listens when Options.Listen is empty:
// loopback, so an unconfigured agent does not expose management endpoints.
const DefaultListen = "127.0.0.1:8008"

// DefaultSwitchoverTimeout bounds POST /switchover and /failover.
const DefaultSwitchoverTimeout = 60 * time.Second

// maxBody caps request bodies; the largest legitimate one is a config.
const maxBody = 1 << 20

// BasicAuth is the username and password required on mutating requests.
type BasicAuth struct {
	Username string
	Password string
}

// Options configure a Server.
type Options struct {
	// Listen is host:port (DefaultListen when empty; port 0 picks one).
	Listen string
	// Auth, when set, is required on POST, PATCH, PUT and DELETE. Reads stay
	// open because HAProxy and peers poll them without credentials.
	Auth *BasicAuth
	// RefuseMutations, when set, is why every mutating request is refused
	// (403 with this text): the API is reachable from the network and
	// nothing authenticates callers.
	RefuseMutations string
	// Allow, when set, decides which client addresses may send mutating
	// requests (restapi.allowlist, members of the group); others get 403.
	Allow func(ip net.IP) bool
	// TLS, when set, makes the API speak HTTPS only. With VerifyClient
	// optional or required, mutating requests also need a client
	// certificate that verified against TLS.CAFile.
	TLS *TLSOptions
	// Metrics holds the agent's own metrics; GET /metrics serves them with
	// Patroni's gauges (a private registry when nil).
	Metrics *prometheus.Registry
	Log     *zap.Logger
	// SwitchoverTimeout bounds how long POST /switchover and /failover wait
	// for the new leader (DefaultSwitchoverTimeout when zero).
	SwitchoverTimeout time.Duration
}

// Server is pgmesh's REST API.
type Server struct {
	ctl     Controller
	opts    Options
	log     *zap.Logger
	routes  map[string]*route
	handler http.Handler
	// now is replaceable so tests can pin the clock for /liveness.
	now func() time.Time

	// base is the parent of every request context; Shutdown cancels it so
	// long polls (switchover) end instead of holding Shutdown up.
	base       context.Context
	cancelBase context.CancelFunc

	mu      sync.Mutex
	ln      net.Listener
	srv     *http.Server
	started bool
}

// route is one path: read handles GET, HEAD and OPTIONS (the last two answer
// the same status without a body, which is what HAProxy's httpchk reads);
// write holds the mutating methods.
type route struct {
	read  http.HandlerFunc
	write map[string]http.HandlerFunc
}

// NewServer builds the API over ctl. It does not listen until Start.
func NewServer(ctl Controller, o Options) *Server {
	if o.Listen == "" {
		o.Listen = DefaultListen
	}
	if o.SwitchoverTimeout <= 0 {
		o.SwitchoverTimeout = DefaultSwitchoverTimeout
	}
	lg := o.Log
	if lg == nil {
		lg = zap.NewNop()
	}
	s := &Server{ctl: ctl, opts: o, log: lg.Named("api"), now: time.Now}
	s.base, s.cancelBase = context.WithCancel(context.Background())
	s.routes = map[string]*route{}
	for path, chk := range healthChecks {
		s.routes[path] = &route{read: s.healthHandler(chk)}
	}
	s.routes["/patroni"] = &route{read: s.handlePatroni}
	s.routes["/status"] = &route{read: s.handlePatroni}
	s.routes["/cluster"] = &route{read: s.handleCluster}
	s.routes["/history"] = &route{read: s.handleHistory}
	s.routes["/metrics"] = &route{read: s.metricsHandler()}
	s.routes["/config"] = &route{read: s.handleGetConfig, write: map[string]http.HandlerFunc{
		http.MethodPatch: s.handlePatchConfig,
		http.MethodPut:   s.handlePutConfig,
	}}
	s.routes["/switchover"] = &route{write: map[string]http.HandlerFunc{
		http.MethodPost:   s.handleSwitchover,
		http.MethodDelete: s.handleCancelSwitchover,
	}}
	s.routes["/failsafe"] = &route{read: s.handleGetFailsafe, write: map[string]http.HandlerFunc{http.MethodPost: s.handlePostFailsafe}}
	s.routes["/failover"] = &route{write: map[string]http.HandlerFunc{http.MethodPost: s.handleFailover}}
	s.routes["/restart"] = &route{write: map[string]http.HandlerFunc{http.MethodPost: s.handleRestart}}
	s.routes["/reload"] = &route{write: map[string]http.HandlerFunc{http.MethodPost: s.handleReload}}
	s.routes["/reinitialize"] = &route{write: map[string]http.HandlerFunc{http.MethodPost: s.handleReinitialize}}
	s.handler = s.middleware(http.HandlerFunc(s.dispatch))
	return s
}

// Handler is the API as an http.Handler (for tests and embedding).
func (s *Server) Handler() http.Handler { return s.handler }

// Start listens on Options.Listen and serves in the background. It fails
// at once when the address is taken, so the agent can refuse to start
// rather than run without the endpoints HAProxy needs.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("health: server already started")
	}
	var tlsCfg *tls.Config
	if s.opts.TLS != nil {
		c, err := ServerTLSConfig(*s.opts.TLS, s.log)
		if err != nil {
			return fmt.Errorf("health: %w", err)
		}
		tlsCfg = c
	}
	ln, err := net.Listen("tcp", s.opts.Listen)
	if err != nil {
		return fmt.Errorf("health: listen on %s: %w", s.opts.Listen, err)
	}
	if tlsCfg != nil {
		ln = tls.NewListener(ln, tlsCfg)
	}
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		// No WriteTimeout: switchover and restart answer only when done.
		IdleTimeout: 2 * time.Minute,
		BaseContext: func(net.Listener) context.Context { return s.base },
		ErrorLog:    mustStdLog(s.log),
	}
	s.ln, s.srv, s.started = ln, srv, true
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("REST API stopped", zap.Error(err))
		}
	}()
	s.log.Info("REST API listening", zap.String("addr", ln.Addr().String()), zap.String("scheme", s.Scheme()))
	return nil
}

// Scheme is https when the API is configured with TLS, else http.
func (s *Server) Scheme() string {
	if s.opts.TLS != nil {
		return "https"
	}
	return "http"
}

// Addr is the address the server listens on ("" before Start).
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Shutdown stops accepting requests, ends pending switchover polls and waits
// (bounded by ctx) for in-flight requests.
func (s *Server) Shutdown(ctx context.Context) error {
	s.cancelBase()
	s.mu.Lock()
	srv := s.srv
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	return srv.Shutdown(ctx)
}

// mustStdLog routes net/http's own complaints (accept errors, bad
// requests) to the agent log as warnings.
func mustStdLog(l *zap.Logger) *log.Logger {
	std, err := zap.NewStdLogAt(l, zapcore.WarnLevel)
	if err != nil {
		return zap.NewStdLog(l)
	}
	return std
}

func isMutating(method string) bool {
	switch method {
	case http.MethodPost, http.MethodPatch, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

func (s *Server) dispatch(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	if len(p) > 1 {
		p = strings.TrimSuffix(p, "/")
	}
	rt, ok := s.routes[p]
	if !ok {
		writeText(w, r, http.StatusNotFound, "not found")
		return
	}
	var h http.HandlerFunc
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		h = rt.read
	default:
		h = rt.write[r.Method]
	}
	if h == nil {
		w.Header().Set("Allow", strings.Join(rt.allowed(), ", "))
		writeText(w, r, http.StatusMethodNotAllowed, "method not allowed")
		return
	}
	if isMutating(r.Method) {
		if s.opts.RefuseMutations != "" {
			writeText(w, r, http.StatusForbidden, s.opts.RefuseMutations)
			return
		}
		if s.opts.Allow != nil {
			if ip := remoteIP(r); ip == nil || !s.opts.Allow(ip) {
				writeText(w, r, http.StatusForbidden, fmt.Sprintf("address %s is not allowed to change this member (restapi.allowlist)", r.RemoteAddr))
				return
			}
		}
		if s.needsClientCert() && !hasVerifiedClientCert(r) {
			writeText(w, r, http.StatusForbidden, fmt.Sprintf("a verified client certificate is required to change this member (restapi.verify_client: %s)", s.opts.TLS.VerifyClient))
			return
		}
		if !s.authorized(r) {
			w.Header().Set("WWW-Authenticate", `Basic realm="pgmesh"`)
			writeText(w, r, http.StatusUnauthorized, "authentication required")
			return
		}
	}
	if r.Body != nil {
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	}
	h(w, r)
}

func (rt *route) allowed() []string {
	var m []string
	if rt.read != nil {
		m = append(m, http.MethodGet, http.MethodHead, http.MethodOptions)
	}
	for k := range rt.write {
		m = append(m, k)
	}
	sort.Strings(m)
	return m
}

// remoteIP is the client's address (nil when unparsable).
func remoteIP(r *http.Request) net.IP {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	return net.ParseIP(host)
}

func (s *Server) needsClientCert() bool {
	t := s.opts.TLS
	return t != nil && (t.VerifyClient == VerifyClientOptional || t.VerifyClient == VerifyClientRequired)
}

// hasVerifiedClientCert: the handshake verified a client certificate
// against restapi.cafile (an unverifiable one fails the handshake).
func hasVerifiedClientCert(r *http.Request) bool {
	return r.TLS != nil && len(r.TLS.VerifiedChains) > 0
}

// authorized compares hashes in constant time so neither the length nor a
// prefix of the credentials leaks through timing.
func (s *Server) authorized(r *http.Request) bool {
	a := s.opts.Auth
	if a == nil {
		return true
	}
	user, pass, ok := r.BasicAuth()
	uh, wuh := sha256.Sum256([]byte(user)), sha256.Sum256([]byte(a.Username))
	ph, wph := sha256.Sum256([]byte(pass)), sha256.Sum256([]byte(a.Password))
	match := subtle.ConstantTimeCompare(uh[:], wuh[:]) & subtle.ConstantTimeCompare(ph[:], wph[:])
	return ok && match == 1
}

// recorder remembers the status (for the log) and, on mutating requests,
// the start of the body so the log line carries the outcome.
type recorder struct {
	http.ResponseWriter
	status  int
	wrote   bool
	capture bool
	result  []byte
}

func (r *recorder) WriteHeader(code int) {
	if !r.wrote {
		r.status, r.wrote = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if !r.wrote {
		r.WriteHeader(http.StatusOK)
	}
	if r.capture && len(r.result) < 200 {
		r.result = append(r.result, b[:min(len(b), 200-len(r.result))]...)
	}
	return r.ResponseWriter.Write(b)
}

func (s *Server) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		mutating := isMutating(r.Method)
		rec := &recorder{ResponseWriter: w, capture: mutating}
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.log.Error("panic in REST handler",
					zap.String("method", r.Method), zap.String("path", r.URL.Path),
					zap.Any("panic", p), zap.ByteString("stack", debug.Stack()))
				if !rec.wrote {
					writeText(rec, r, http.StatusInternalServerError, "internal error")
				}
			}
			lvl := zapcore.DebugLevel
			if mutating {
				lvl = zapcore.InfoLevel
			}
			// Check first: HAProxy polls every second and the fields cost
			// allocations that a disabled debug level should not pay.
			if ce := s.log.Check(lvl, "REST request"); ce != nil {
				status := rec.status
				if !rec.wrote {
					status = http.StatusOK
				}
				fields := []zap.Field{
					zap.String("method", r.Method),
					zap.String("path", r.URL.Path),
					zap.Int("status", status),
					zap.Duration("took", time.Since(start)),
					zap.String("remote", r.RemoteAddr),
				}
				if r.URL.RawQuery != "" {
					fields = append(fields, zap.String("query", r.URL.RawQuery))
				}
				if mutating {
					fields = append(fields, zap.String("result", strings.TrimSpace(string(rec.result))))
				}
				ce.Write(fields...)
			}
		}()
		next.ServeHTTP(rec, r)
	})
}

// bodyless: HEAD and OPTIONS answer with the status only, as Patroni does.
func bodyless(r *http.Request) bool {
	return r.Method == http.MethodHead || r.Method == http.MethodOptions
}

func writeText(w http.ResponseWriter, r *http.Request, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	if !bodyless(r) {
		_, _ = w.Write([]byte(msg))
	}
}

func writeJSON(w http.ResponseWriter, r *http.Request, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeText(w, r, http.StatusInternalServerError, "cannot encode response: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	if !bodyless(r) {
		_, _ = w.Write(b)
	}
}

func (s *Server) healthHandler(chk healthCheck) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		st := s.ctl.State()
		ok, err := chk(st, r.URL.Query(), s.now())
		if err != nil {
			writeText(w, r, http.StatusBadRequest, err.Error())
			return
		}
		code := http.StatusServiceUnavailable
		if ok {
			code = http.StatusOK
		}
		writeJSON(w, r, code, NewStatus(st))
	}
}

func (s *Server) handlePatroni(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, r, http.StatusOK, NewStatus(s.ctl.State()))
}

func (s *Server) handleCluster(w http.ResponseWriter, r *http.Request) {
	st := s.ctl.State()
	g, err := s.ctl.Group(r.Context())
	if err != nil {
		writeText(w, r, http.StatusServiceUnavailable, "cannot read the group from Consul: "+err.Error())
		return
	}
	if g == nil {
		writeText(w, r, http.StatusServiceUnavailable, "cannot read the group from Consul")
		return
	}
	// The stored config is the truth right after `pgmesh pause`; the
	// member's own view catches up only on its next loop.
	paused := st.Paused
	if cfg, _, err := s.ctl.Config(r.Context()); err == nil && cfg != nil {
		paused = cfg.GroupPaused(g.Name)
	}
	cs := newClusterStatus(g, st.Cluster, paused)
	if cs.Scope == "" {
		cs.Scope = st.Group
	}
	writeJSON(w, r, http.StatusOK, cs)
}

func (s *Server) handleHistory(w http.ResponseWriter, r *http.Request) {
	g, err := s.ctl.Group(r.Context())
	if err != nil {
		writeText(w, r, http.StatusServiceUnavailable, "cannot read the group from Consul: "+err.Error())
		return
	}
	writeJSON(w, r, http.StatusOK, historyLines(g))
}
