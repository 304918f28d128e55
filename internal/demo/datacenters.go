package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
)

// A demo across datacenters (Options.Datacenters > 1) runs one Consul
// server per datacenter (dc1..dcN), joined over the WAN pool on loopback:
// what a mesh across regions looks like in Consul, on one machine. Group i
// (n1, n2, … in order, counting from 0) lives in datacenter i mod N, and
// its agents talk to that datacenter's Consul only: its keys, sessions and
// services stay there. Every datacenter's agents seed the cluster config
// with datacenters: [dc1, …, dcN], so `pgmesh status` reads every
// datacenter and the prepared queries <cluster>-write / <cluster>-read fail
// over to the others.
//
// Ports: datacenter k (counting from 0) serves HTTP on ConsulHTTPPort+4k,
// its server RPC, LAN and WAN gossip on the next three ports, and DNS on
// ConsulDNSPort+k. With one datacenter that is the demo's usual layout.

// Datacenter is one of the demo's Consul datacenters: a single Consul
// server and the groups whose agents use it.
type Datacenter struct {
	Name string
	// Ports of its Consul server: HTTP API, DNS, server RPC, LAN and WAN
	// gossip.
	HTTPPort, DNSPort, ServerPort, SerfLANPort, SerfWANPort int
	// Dir holds Config (consul.hcl), the data dir, Log and PIDFile (which
	// Consul writes itself, so a Consul the user restarted by hand is found
	// and stopped with the demo too).
	Dir, Config, Log, PIDFile string
	// Groups are the groups that live in the datacenter, in order.
	Groups []string

	// The Consul process the demo started (guarded by Mesh.mu); done is
	// closed when it has exited.
	cmd  *exec.Cmd
	done chan struct{}
}

// HTTPAddr is the datacenter's Consul HTTP API (host:port).
func (d *Datacenter) HTTPAddr() string { return fmt.Sprintf("127.0.0.1:%d", d.HTTPPort) }

// DNSAddr is the datacenter's Consul DNS server (host:port).
func (d *Datacenter) DNSAddr() string { return fmt.Sprintf("127.0.0.1:%d", d.DNSPort) }

// planDatacenters lays out the datacenters: names, ports, directories.
func (o *Options) planDatacenters() []*Datacenter {
	n := o.Datacenters
	if n < 1 {
		n = 1
	}
	var dcs []*Datacenter
	for k := 0; k < n; k++ {
		http := o.ConsulHTTPPort + 4*k
		d := &Datacenter{Name: fmt.Sprintf("dc%d", k+1), HTTPPort: http, DNSPort: o.ConsulDNSPort + k,
			ServerPort: http + 1, SerfLANPort: http + 2, SerfWANPort: http + 3}
		d.Dir = filepath.Join(o.WorkDir, "consul")
		if n > 1 {
			d.Dir = filepath.Join(o.WorkDir, "consul-"+d.Name)
		}
		d.Config, d.Log, d.PIDFile = filepath.Join(d.Dir, "consul.hcl"), filepath.Join(d.Dir, "consul.log"), filepath.Join(d.Dir, "consul.pid")
		dcs = append(dcs, d)
	}
	return dcs
}

// datacenterOf is the datacenter of the group with index i (from 0).
func (m *Mesh) datacenterOf(i int) *Datacenter { return m.dcs[i%len(m.dcs)] }

// multiDC reports whether the demo spans more than one datacenter.
func (m *Mesh) multiDC() bool { return len(m.dcs) > 1 }

// Datacenters lists the demo's datacenters (one unless
// Options.Datacenters asked for more).
func (m *Mesh) Datacenters() []*Datacenter { return m.dcs }

// DatacenterNames are the datacenters' names in order.
func (m *Mesh) DatacenterNames() []string {
	var out []string
	for _, d := range m.dcs {
		out = append(out, d.Name)
	}
	return out
}

// Datacenter returns the datacenter named name (nil if there is none).
func (m *Mesh) Datacenter(name string) *Datacenter {
	for _, d := range m.dcs {
		if d.Name == name {
			return d
		}
	}
	return nil
}

// consulHCL is the configuration of datacenter d's Consul server.
func (m *Mesh) consulHCL(d *Datacenter) string {
	node, dcLine := "demo", ""
	if m.multiDC() {
		node = "demo-" + d.Name
		dcLine = fmt.Sprintf("datacenter = %q\n", d.Name)
	}
	hcl := fmt.Sprintf(`server = true
bootstrap_expect = 1
%snode_name = %q
data_dir = %q
pid_file = %q
bind_addr = "127.0.0.1"
client_addr = "127.0.0.1"
advertise_addr = "127.0.0.1"
session_ttl_min = "1s"
disable_update_check = true
ui_config { enabled = true }
ports {
  http = %d
  dns = %d
  server = %d
  serf_lan = %d
  serf_wan = %d
  grpc = -1
  grpc_tls = -1
}
dns_config { allow_stale = false, node_ttl = "0s", service_ttl { "*" = "0s" } }
`, dcLine, node, filepath.Join(d.Dir, "data"), d.PIDFile, d.HTTPPort, d.DNSPort, d.ServerPort, d.SerfLANPort, d.SerfWANPort)
	if m.multiDC() && d != m.dcs[0] {
		// Every other datacenter joins dc1's server over the WAN pool;
		// gossip then connects them all to each other.
		hcl += fmt.Sprintf("retry_join_wan = [\"127.0.0.1:%d\"]\nretry_interval_wan = \"1s\"\n", m.dcs[0].SerfWANPort)
	}
	if m.opts.ConsulExtraHCL != "" {
		hcl += m.opts.ConsulExtraHCL + "\n"
	}
	return hcl
}

// startConsul starts every datacenter's Consul server and waits until each
// answers and, across datacenters, until each sees all of them in the WAN
// pool.
func (m *Mesh) startConsul(ctx context.Context) error {
	if m.multiDC() {
		m.say("[1/3] starting %d Consul datacenters (%s), one server each, WAN-joined on loopback", len(m.dcs), m.opts.ConsulBin)
	}
	for _, d := range m.dcs {
		if err := os.MkdirAll(d.Dir, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(d.Config, []byte(m.consulHCL(d)), 0o644); err != nil {
			return err
		}
		if m.multiDC() {
			m.say("      %s: HTTP %s, DNS %s, server/serf ports %d-%d", d.Name, d.HTTPAddr(), d.DNSAddr(), d.ServerPort, d.SerfWANPort)
		} else {
			m.say("[1/3] starting Consul (%s) on %s, DNS on %s", m.opts.ConsulBin, d.HTTPAddr(), d.DNSAddr())
		}
		if err := m.spawnConsul(d); err != nil {
			return err
		}
	}
	for _, d := range m.dcs {
		if err := m.waitConsul(ctx, d); err != nil {
			return err
		}
	}
	if !m.multiDC() {
		return nil
	}
	deadline := time.Now().Add(60 * time.Second)
	for _, d := range m.dcs {
		for {
			seen, err := catalogDatacenters(ctx, d.HTTPAddr())
			if err == nil && len(seen) == len(m.dcs) {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s's Consul sees datacenters %v (%v) after 60s, want %v (see %s)", d.Name, seen, err, m.DatacenterNames(), d.Log)
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	m.say("      every datacenter sees %s", strings.Join(m.DatacenterNames(), ", "))
	return nil
}

// waitConsul waits until d's Consul answers with a leader.
func (m *Mesh) waitConsul(ctx context.Context, d *Datacenter) error {
	kv, err := consulkv.New(consulkv.Config{Address: d.HTTPAddr(), Cluster: m.opts.Cluster})
	if err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := kv.Ping(ctx); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			return fmt.Errorf("consul of %s did not come up (see %s): %w", d.Name, d.Log, err)
		} else if ctx.Err() != nil {
			return ctx.Err()
		}
		select {
		case <-d.done:
			return fmt.Errorf("consul of %s exited; the end of %s:\n%s", d.Name, d.Log, tail(d.Log, 15))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// catalogDatacenters asks a Consul agent which datacenters it knows.
func catalogDatacenters(ctx context.Context, addr string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v1/catalog/datacenters", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s", resp.Status)
	}
	var dcs []string
	err = json.NewDecoder(resp.Body).Decode(&dcs)
	return dcs, err
}

// ConsulPIDOf is the pid of datacenter d's Consul server: the one the demo
// started while it runs, else whichever its pid file names (a Consul the
// user started again by hand); 0 when none runs.
func (m *Mesh) ConsulPIDOf(d *Datacenter) int {
	if cmd, _ := m.runningConsul(d); cmd != nil {
		return cmd.Process.Pid
	}
	return consulFromPIDFile(d)
}

// runningConsul is the Consul server of d the demo started, and the
// channel closed when it exits, while it runs (nil otherwise).
func (m *Mesh) runningConsul(d *Datacenter) (*exec.Cmd, <-chan struct{}) {
	m.mu.Lock()
	cmd, done := d.cmd, d.done
	m.mu.Unlock()
	if cmd == nil {
		return nil, nil
	}
	select {
	case <-done:
		return nil, nil
	default:
		return cmd, done
	}
}

// consulFromPIDFile is the pid in d's pid file when that process is a
// Consul agent running d's configuration (0 otherwise).
func consulFromPIDFile(d *Datacenter) int {
	data, err := os.ReadFile(d.PIDFile)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	if pid <= 1 || !procAlive(pid) {
		return 0
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if !strings.Contains(string(cmdline), d.Config) {
		return 0
	}
	return pid
}

// StopConsul stops datacenter d's Consul server (SIGTERM: it shuts down
// without leaving the WAN pool, as a lost datacenter looks to the others)
// and waits up to timeout before killing it. The groups of d keep running.
func (m *Mesh) StopConsul(d *Datacenter, timeout time.Duration) {
	if cmd, done := m.runningConsul(d); cmd != nil {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(timeout):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}
	// A Consul started again by hand (as the demo's summary shows) is no
	// child of the demo: stop it by its pid file.
	if pid := consulFromPIDFile(d); pid > 0 {
		syscall.Kill(pid, syscall.SIGTERM)
		end := time.Now().Add(timeout)
		for procAlive(pid) && time.Now().Before(end) {
			time.Sleep(100 * time.Millisecond)
		}
		if procAlive(pid) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// StartConsulAgain starts datacenter d's Consul server again after
// StopConsul (same configuration and data; it rejoins the WAN pool) and
// waits until it answers. It is a no-op while that Consul runs.
func (m *Mesh) StartConsulAgain(ctx context.Context, d *Datacenter) error {
	if m.ConsulPIDOf(d) > 0 {
		return nil
	}
	if err := m.spawnConsul(d); err != nil {
		return err
	}
	return m.waitConsul(ctx, d)
}

// spawnConsul starts datacenter d's Consul server from its config file.
func (m *Mesh) spawnConsul(d *Datacenter) error {
	cmd, done, err := m.spawn(m.opts.ConsulBin, []string{"agent", "-config-file", d.Config}, d.Log, false)
	if err != nil {
		return err
	}
	m.mu.Lock()
	d.cmd, d.done = cmd, done
	m.mu.Unlock()
	return nil
}
