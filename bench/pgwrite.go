package main

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgmesh/pgmesh/internal/demo"
)

const benchTable = "pgmesh_bench_writes"

// writer keeps one connection to a PostgreSQL address and makes one small
// write per call, reconnecting after any error.
type writer struct {
	dsn  string
	conn *pgx.Conn
	// timeout bounds connect and statement.
	timeout time.Duration
	lastErr error
	// lastPort is the server port that took the last write (which member
	// answered, also behind a proxy).
	lastPort int
}

func newWriter(host string, port int, timeout time.Duration) *writer {
	return &writer{timeout: timeout, dsn: fmt.Sprintf("host=%s port=%d user=postgres password=demo-superuser dbname=postgres sslmode=disable connect_timeout=2 application_name=pgmesh-bench", host, port)}
}

// write inserts one row; true when it committed.
func (w *writer) write(ctx context.Context, tag string) bool {
	ctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	if w.conn == nil {
		c, err := pgx.Connect(ctx, w.dsn)
		if err != nil {
			w.lastErr = err
			return false
		}
		w.conn = c
	}
	var port int32
	if err := w.conn.QueryRow(ctx, "INSERT INTO "+benchTable+"(tag) VALUES ($1) RETURNING inet_server_port()", tag).Scan(&port); err != nil {
		w.lastErr = err
		// A read-only replica keeps the session (it may be promoted under
		// it); anything else reconnects.
		if !strings.Contains(err.Error(), "read-only transaction") {
			w.close()
		}
		return false
	}
	w.lastErr, w.lastPort = nil, int(port)
	return true
}

func (w *writer) close() {
	if w.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		w.conn.Close(ctx)
		cancel()
		w.conn = nil
	}
}

// memberByPort names the member whose PostgreSQL listens on port.
func memberByPort(m *demo.Mesh, port int) string {
	for _, mem := range m.Members() {
		if mem.PGPort == port {
			return mem.Name
		}
	}
	return fmt.Sprintf("port %d", port)
}

// createBenchTable creates the table the write probes insert into, on the
// group's primary (it replicates to the others).
func createBenchTable(ctx context.Context, m *demo.Mesh, primary *demo.Member) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, m.DSN(primary))
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	_, err = c.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+benchTable+" (id bigserial PRIMARY KEY, tag text, at timestamptz DEFAULT clock_timestamp())")
	return err
}

// dnsResolver asks only the given DNS server (Consul's), without caching.
func dnsResolver(addr string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		d := net.Dialer{Timeout: 500 * time.Millisecond}
		return d.DialContext(ctx, "udp", addr)
	}}
}

// lookupSRV resolves an SRV name and the targets' addresses through r and
// returns host:port pairs.
func lookupSRV(ctx context.Context, r *net.Resolver, name string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, srvs, err := r.LookupSRV(ctx, "", "", name)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range srvs {
		ips, err := r.LookupIPAddr(ctx, s.Target)
		if err != nil {
			return nil, err
		}
		for _, ip := range ips {
			out = append(out, net.JoinHostPort(ip.IP.String(), strconv.Itoa(int(s.Port))))
		}
	}
	return out, nil
}
