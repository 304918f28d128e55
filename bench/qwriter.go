package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// qwriter is an application writing through Consul's DNS: at a steady rate
// it resolves a name (SRV, then the target's address, through the given
// Consul DNS servers, no caching), connects to the first answer and
// INSERTs one row, recording every attempt: when, the outcome, which server
// took the write and how long DNS took. With perWrite it resolves before
// every write and moves its connection when the answer changes (a client
// that does not cache DNS); without, it resolves only to (re)connect and
// keeps its connection until an error (a connection pool without a maximum
// lifetime). A qwriter without a resolver writes to a fixed address.
type qwriter struct {
	label    string
	resolve  resolveFunc
	target   string // fixed host:port when resolve is nil
	perWrite bool
	timeout  time.Duration // bounds DNS, connect and statement, each

	conn     *pgx.Conn
	connAddr string

	mu  sync.Mutex
	log []attempt
}

// attempt is one write attempt.
type attempt struct {
	start, end time.Time
	ok         bool
	// port is the PostgreSQL port that took the write (ok) or was tried
	// (0: none, DNS failed).
	port int
	// stage of a failure: "dns", "connect" or "write".
	stage, err string
	// dns is the time the lookup took (0: no lookup in this attempt), srv
	// the part of it the SRV query took; dnsVia names the DNS server that
	// answered, target the SRV answer's target name.
	dns, srv       time.Duration
	dnsVia, target string
}

// resolveFunc answers the addresses to try, in order.
type resolveFunc func(ctx context.Context) (resolved, error)

// resolved is a lookup's answer.
type resolved struct {
	addrs  []string // host:port
	via    string   // the DNS server that answered
	target string   // the first SRV target
	srv    time.Duration
}

// dnsServer is one Consul DNS server an application may ask.
type dnsServer struct {
	name, addr string
	r          *net.Resolver
}

// srvResolve resolves name (SRV + address) through the servers in order:
// the next one is asked only when one fails (a resolv.conf with several
// nameservers).
func srvResolve(name string, timeout time.Duration, servers ...dnsServer) resolveFunc {
	for i := range servers {
		servers[i].r = dnsResolver(servers[i].addr)
	}
	return func(ctx context.Context) (resolved, error) {
		var errs []string
		for _, s := range servers {
			c, cancel := context.WithTimeout(ctx, timeout)
			res, err := lookupSRVTarget(c, s.r, name)
			cancel()
			if err == nil {
				res.via = s.name
				return res, nil
			}
			errs = append(errs, s.name+": "+dnsErrText(err))
		}
		return resolved{}, errors.New(strings.Join(errs, "; "))
	}
}

// lookupSRVTarget is lookupSRV (SRV, then the targets' addresses, as a
// client library does) that also reports the first target's name and the
// SRV query's share of the time.
func lookupSRVTarget(ctx context.Context, r *net.Resolver, name string) (resolved, error) {
	var res resolved
	t := time.Now()
	_, srvs, err := r.LookupSRV(ctx, "", "", name)
	res.srv = time.Since(t)
	if err != nil {
		return res, err
	}
	if len(srvs) == 0 {
		return res, errors.New("no SRV records")
	}
	res.target = srvs[0].Target
	for _, s := range srvs {
		ips, err := r.LookupIPAddr(ctx, s.Target)
		if err != nil {
			return res, err
		}
		for _, ip := range ips {
			res.addrs = append(res.addrs, net.JoinHostPort(ip.IP.String(), strconv.Itoa(int(s.Port))))
		}
	}
	if len(res.addrs) == 0 {
		return res, errors.New("no address for " + res.target)
	}
	return res, nil
}

// dnsErrText is a lookup error without the resolv.conf server Go names
// in it (the bench's resolver dials Consul's DNS, whatever that says).
func dnsErrText(err error) string {
	var de *net.DNSError
	if errors.As(err, &de) {
		switch {
		case de.IsNotFound:
			return "lookup " + de.Name + ": no such name"
		case de.IsTimeout:
			return "lookup " + de.Name + ": timeout"
		default:
			return "lookup " + de.Name + ": " + de.Err
		}
	}
	return shortErr(err)
}

func (w *qwriter) dsn(addr string) string {
	host, port, _ := net.SplitHostPort(addr)
	return fmt.Sprintf("host=%s port=%s user=postgres password=demo-superuser dbname=postgres sslmode=disable connect_timeout=%d application_name=pgmesh-bench-dc",
		host, port, max(1, int(w.timeout/time.Second)))
}

// run writes every interval until ctx ends (a tick that finds the previous
// attempt still running is skipped: the slot counts as not written).
func (w *qwriter) run(ctx context.Context, interval time.Duration) {
	defer w.closeConn()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		a := w.once(ctx)
		if ctx.Err() != nil {
			return
		}
		w.mu.Lock()
		w.log = append(w.log, a)
		w.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (w *qwriter) once(ctx context.Context) (a attempt) {
	a.start = time.Now()
	defer func() { a.end = time.Now() }()
	addr := w.target
	if w.resolve != nil {
		addr = w.connAddr
		if w.perWrite || w.conn == nil {
			t := time.Now()
			res, err := w.resolve(ctx)
			a.dns, a.srv, a.dnsVia, a.target = time.Since(t), res.srv, res.via, res.target
			if err != nil {
				a.stage, a.err = "dns", err.Error()
				return a
			}
			addr = res.addrs[0]
		}
	}
	a.port = addrPort(addr)
	if w.conn != nil && w.connAddr != addr {
		w.closeConn()
	}
	if w.conn == nil {
		c, cancel := context.WithTimeout(ctx, w.timeout)
		conn, err := pgx.Connect(c, w.dsn(addr))
		cancel()
		if err != nil {
			a.stage, a.err = "connect", shortErr(err)
			return a
		}
		w.conn, w.connAddr = conn, addr
	}
	c, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	var port int32
	if err := w.conn.QueryRow(c, "INSERT INTO "+benchTable+"(tag) VALUES ($1) RETURNING inet_server_port()", w.label).Scan(&port); err != nil {
		a.stage, a.err = "write", shortErr(err)
		w.closeConn()
		return a
	}
	a.ok, a.port = true, int(port)
	return a
}

func (w *qwriter) closeConn() {
	if w.conn != nil {
		c, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		w.conn.Close(c)
		cancel()
		w.conn, w.connAddr = nil, ""
	}
}

func (w *qwriter) attempts() []attempt {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]attempt(nil), w.log...)
}

func addrPort(addr string) int {
	_, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	return n
}

// shortErr is the last part of an error chain (the cause), bounded.
func shortErr(err error) string {
	s := err.Error()
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return s
}

// writerStats are one writer's figures over one window [t0, t0+window].
type writerStats struct {
	slots, attempts, ok int
	avail               float64 // ok / slots
	gap                 time.Duration
	gapOpen             bool // the longest gap lasted to the end of the window
	// firstOK: the first write that committed after t0; elsewhere: the
	// first one in another datacenter than home (0: none).
	firstOK, elsewhere time.Duration
	landed             map[string]int // datacenter -> writes in the window
	fails              map[string]int // stage -> failed attempts in the window
	firstErr           map[string]string
	// DNS lookups in the window (seconds): answered with an address in
	// the home datacenter, in another one, failed.
	dnsHome, dnsAway, dnsFail []float64
	// The SRV query's part of the lookups answered in another datacenter.
	srvAway []float64
	// targets counts the SRV target names of the window's lookups.
	targets map[string]int
	lastDC  string
}

// where names a PostgreSQL port's datacenter and member.
type whereFunc func(port int) (dc, member string)

// analyze computes the figures of attempts (ordered by start) for the
// window starting at t0.
func analyze(log []attempt, t0 time.Time, window, interval time.Duration, where whereFunc, home string) writerStats {
	end := t0.Add(window)
	st := writerStats{slots: int(window / interval), landed: map[string]int{}, fails: map[string]int{}, firstErr: map[string]string{}, targets: map[string]int{}}
	prev := t0
	for _, a := range log {
		if a.ok && !a.end.After(t0) {
			prev = a.end // the last write before the window
		}
	}
	for _, a := range log {
		if a.start.Before(t0) || !a.start.Before(end) {
			continue
		}
		st.attempts++
		dc := ""
		if a.port != 0 {
			dc, _ = where(a.port)
		}
		if a.dns > 0 {
			switch {
			case a.stage == "dns":
				st.dnsFail = append(st.dnsFail, secs(a.dns))
			case dc == home:
				st.dnsHome = append(st.dnsHome, secs(a.dns))
			default:
				st.dnsAway = append(st.dnsAway, secs(a.dns))
				st.srvAway = append(st.srvAway, secs(a.srv))
			}
			if a.target != "" {
				st.targets[a.target]++
			}
		}
		if !a.ok {
			st.fails[a.stage]++
			if st.firstErr[a.stage] == "" {
				st.firstErr[a.stage] = a.err
			}
			continue
		}
		st.ok++
		st.landed[dc]++
		st.lastDC = dc
		if st.firstOK == 0 {
			st.firstOK = a.end.Sub(t0)
		}
		if dc != home && st.elsewhere == 0 {
			st.elsewhere = a.end.Sub(t0)
		}
		if g := a.end.Sub(prev); g > st.gap {
			st.gap, st.gapOpen = g, false
		}
		prev = a.end
	}
	if g := end.Sub(prev); g > st.gap {
		st.gap, st.gapOpen = g, true
	}
	if st.slots > 0 {
		// A tick delayed by a slow attempt can put one attempt more
		// than slots into the window.
		st.avail = float64(min(st.ok, st.slots)) / float64(st.slots)
	}
	return st
}

// firstIn is the first committed write after since that landed in dc
// (zero time: none).
func firstIn(log []attempt, since time.Time, dc string, where whereFunc) time.Time {
	for _, a := range log {
		if a.ok && !a.start.Before(since) {
			if d, _ := where(a.port); d == dc {
				return a.end
			}
		}
	}
	return time.Time{}
}

// summary is a one-line account of a writer's window.
func (st writerStats) summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s ok (%d/%d slots, %d attempts), longest gap %.2fs", fmtPct(st.avail), st.ok, st.slots, st.attempts, secs(st.gap))
	if st.gapOpen {
		b.WriteString(" (to the window's end)")
	}
	var landed []string
	for _, dc := range sortedStringKeys(st.landed) {
		landed = append(landed, fmt.Sprintf("%s %d", dc, st.landed[dc]))
	}
	if len(landed) > 0 {
		fmt.Fprintf(&b, "; landed %s", strings.Join(landed, ", "))
	}
	for _, stage := range sortedStringKeys(st.fails) {
		fmt.Fprintf(&b, "; %d failed at %s (%s)", st.fails[stage], stage, st.firstErr[stage])
	}
	return b.String()
}

// dnsLine is a one-line account of the window's lookups.
func (st writerStats) dnsLine() string {
	var tg []string
	for _, t := range sortedStringKeys(st.targets) {
		tg = append(tg, fmt.Sprintf("%s %d", t, st.targets[t]))
	}
	return fmt.Sprintf("DNS median: answer at home %s (%d), elsewhere %s (%d; SRV part %s), failed %s (%d); SRV targets: %s",
		fmtMs1(summarize(st.dnsHome).median), len(st.dnsHome), fmtMs1(summarize(st.dnsAway).median), len(st.dnsAway),
		fmtMs1(summarize(st.srvAway).median), fmtMs1(summarize(st.dnsFail).median), len(st.dnsFail), strings.Join(tg, ", "))
}

func sortedStringKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func fmtPct(x float64) string {
	if x != x { // NaN
		return "-"
	}
	return fmt.Sprintf("%.2f%%", 100*x)
}
