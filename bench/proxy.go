package main

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
)

// countingProxy is a loopback TCP proxy in front of Consul's HTTP API that
// parses the client->Consul byte stream as HTTP/1.x and counts requests by
// kind. The bytes are forwarded untouched as they arrive; a blocking query
// counts once, when it is sent.
type countingProxy struct {
	Addr    string
	target  string
	ln      net.Listener
	label   func(*http.Request) string
	mu      sync.Mutex
	counts  map[string]int64
	conns   map[net.Conn]bool
	closed  bool
	total   atomic.Int64
	up      atomic.Int64 // bytes client -> Consul
	down    atomic.Int64 // bytes Consul -> client
	wg      sync.WaitGroup
	parseKO atomic.Int64
}

// proxyCounts is a snapshot of a proxy's counters.
type proxyCounts struct {
	Total, Up, Down int64
	ByKind          map[string]int64
}

// Sub is c - base, per counter.
func (c proxyCounts) Sub(base proxyCounts) proxyCounts {
	out := proxyCounts{Total: c.Total - base.Total, Up: c.Up - base.Up, Down: c.Down - base.Down, ByKind: map[string]int64{}}
	for k, v := range c.ByKind {
		if d := v - base.ByKind[k]; d != 0 {
			out.ByKind[k] = d
		}
	}
	return out
}

// startCountingProxy listens on a free loopback port (or addr) and forwards
// to target. label names a request's kind (nil: method and path).
func startCountingProxy(addr, target string, label func(*http.Request) string) (*countingProxy, error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	if label == nil {
		label = func(r *http.Request) string { return r.Method + " " + r.URL.Path }
	}
	p := &countingProxy{Addr: ln.Addr().String(), target: target, ln: ln, label: label, counts: map[string]int64{}, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

func (p *countingProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			c.Close()
			return
		}
		p.wg.Add(1)
		go p.handle(c)
	}
}

func (p *countingProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = true
	return true
}

func (p *countingProxy) untrack(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		delete(p.conns, c)
		c.Close()
	}
}

type countWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n.Add(int64(n))
	return n, err
}

func (p *countingProxy) handle(c net.Conn) {
	defer p.wg.Done()
	u, err := net.Dial("tcp", p.target)
	if err != nil {
		p.untrack(c)
		return
	}
	if !p.track(u) {
		p.untrack(c, u)
		return
	}
	go func() {
		io.Copy(countWriter{c, &p.down}, u)
		p.untrack(c, u)
	}()
	// Client -> Consul: everything read is written on at once (TeeReader);
	// the parser only looks.
	br := bufio.NewReader(io.TeeReader(c, countWriter{u, &p.up}))
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			if err != io.EOF && !strings.Contains(err.Error(), "use of closed") {
				p.parseKO.Add(1)
			}
			io.Copy(io.Discard, br) // keep forwarding whatever comes
			break
		}
		p.count(p.label(req))
		io.Copy(io.Discard, req.Body)
		req.Body.Close()
	}
	p.untrack(c, u)
}

func (p *countingProxy) count(kind string) {
	p.total.Add(1)
	p.mu.Lock()
	p.counts[kind]++
	p.mu.Unlock()
}

// Snapshot returns the counters so far.
func (p *countingProxy) Snapshot() proxyCounts {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := proxyCounts{Total: p.total.Load(), Up: p.up.Load(), Down: p.down.Load(), ByKind: make(map[string]int64, len(p.counts))}
	for k, v := range p.counts {
		out.ByKind[k] = v
	}
	return out
}

// Close stops accepting and drops every connection.
func (p *countingProxy) Close() {
	p.mu.Lock()
	p.closed = true
	p.ln.Close()
	for c := range p.conns {
		c.Close()
	}
	p.conns = map[net.Conn]bool{}
	p.mu.Unlock()
	p.wg.Wait()
}

// consulLabel names a Consul API request for the per-kind breakdown, with
// the cluster's KV prefix, group and member names and IDs folded:
// "GET kv groups/{g}/ (blocking)", "PUT session/renew", "PUT txn", ….
func consulLabel(kvPrefix string) func(*http.Request) string {
	return func(r *http.Request) string {
		path := r.URL.Path
		q := r.URL.Query()
		blocking := ""
		if q.Has("index") && q.Get("index") != "0" {
			blocking = " (blocking)"
		}
		switch {
		case strings.HasPrefix(path, "/v1/kv/"):
			key := strings.TrimPrefix(path, "/v1/kv/")
			key = strings.TrimPrefix(key, strings.TrimSuffix(kvPrefix, "/")+"/")
			parts := strings.Split(key, "/")
			for i := 1; i < len(parts); i++ {
				switch parts[i-1] {
				case "groups":
					parts[i] = "{g}"
				case "members":
					parts[i] = "{m}"
				}
			}
			extra := ""
			if q.Has("acquire") {
				extra = " ?acquire"
			} else if q.Has("cas") {
				extra = " ?cas"
			}
			k := strings.Join(parts, "/")
			if k == "" {
				k = "{cluster}/"
			}
			return r.Method + " kv " + k + extra + blocking
		case strings.HasPrefix(path, "/v1/session/"):
			parts := strings.Split(strings.TrimPrefix(path, "/v1/"), "/")
			if len(parts) > 2 {
				parts = parts[:2]
			}
			return r.Method + " " + strings.Join(parts, "/") + blocking
		case strings.HasPrefix(path, "/v1/agent/service/deregister/"):
			return r.Method + " agent/service/deregister"
		case strings.HasPrefix(path, "/v1/health/service/"):
			return r.Method + " health/service/{cluster}" + blocking
		default:
			return r.Method + " " + strings.TrimPrefix(path, "/v1/") + blocking
		}
	}
}
