package testbed

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// Network partitions between members with Linux network namespaces.
//
// Topology: one bridge in the root namespace holds the host address
// (10.213.X.1/24, where Consul listens besides loopback and the test
// process lives); every member has its own namespace joined to the bridge
// by a veth pair, with address 10.213.X.(10+i)/24. Members reach each other
// over the bridge (layer 2, no ip_forward needed) and Consul at the host
// address. No iptables/nft needed: a path between two members is cut
// inside their namespaces, either with a permanent neighbour entry that
// sends the peer's packets to a MAC nobody has (Drop: they vanish on the
// wire, both sides run into timeouts, like a real partition) or with a
// route (Prohibit, Blackhole: the kernel refuses locally sent packets at
// once, EACCES / EINVAL); a member is cut off entirely by setting its veth
// down.
//
// Names carry the creating process id (pgmt<pid base 36>-…), so a run that
// crashed leaves only things whose pid is dead; NewNetns removes those
// before it creates its own.

const netnsPrefix = "pgmt"

// Netns is one test's private network.
type Netns struct {
	t        testing.TB
	tag      string
	Bridge   string
	HostAddr string // the bridge's address in the root namespace
	Members  []*NetnsMember

	mu     sync.Mutex
	routes map[string]string // "ns dest" -> kind of cut, for HealAll
	downs  map[string]bool   // veths set down
}

// NetnsMember is one namespace with its veth pair.
type NetnsMember struct {
	NS       string // namespace name (ip netns)
	Addr     string // the member's address inside it
	HostVeth string // root-namespace end, on the bridge
	NSVeth   string // namespace end
}

// NetnsAvailable says why namespaces cannot be used here ("" = they can).
func NetnsAvailable() string {
	if os.Geteuid() != 0 {
		return "network namespaces need root (ip netns add)"
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return "iproute2 (ip) not found"
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		return "setpriv (util-linux) not found"
	}
	return ""
}

// NewNetns creates the bridge and n member namespaces; everything is
// removed at cleanup, whatever the test's outcome.
func NewNetns(t testing.TB, n int) *Netns {
	t.Helper()
	if why := NetnsAvailable(); why != "" {
		t.Fatalf("testbed: %s", why)
	}
	removeStaleNetns(t)
	tag := netnsPrefix + strconv.FormatInt(int64(os.Getpid()), 36)
	nw := &Netns{t: t, tag: tag, Bridge: tag + "-br", routes: map[string]string{}, downs: map[string]bool{}}
	// Registered first, so it runs after every agent's clean-up (last in,
	// first out) and also when set-up fails half-way.
	t.Cleanup(nw.destroy)
	subnet := freeSubnet(t)
	nw.HostAddr = subnet + ".1"
	ipOrFatal(t, "link", "add", nw.Bridge, "type", "bridge")
	ipOrFatal(t, "addr", "add", nw.HostAddr+"/24", "dev", nw.Bridge)
	ipOrFatal(t, "link", "set", nw.Bridge, "up")
	for i := 0; i < n; i++ {
		m := &NetnsMember{
			NS:       fmt.Sprintf("%s-%d", tag, i),
			Addr:     fmt.Sprintf("%s.%d", subnet, 10+i),
			HostVeth: fmt.Sprintf("%s-h%d", tag, i),
			NSVeth:   fmt.Sprintf("%s-n%d", tag, i),
		}
		nw.Members = append(nw.Members, m)
		ipOrFatal(t, "netns", "add", m.NS)
		ipOrFatal(t, "link", "add", m.HostVeth, "type", "veth", "peer", "name", m.NSVeth)
		ipOrFatal(t, "link", "set", m.NSVeth, "netns", m.NS)
		ipOrFatal(t, "link", "set", m.HostVeth, "master", nw.Bridge)
		ipOrFatal(t, "link", "set", m.HostVeth, "up")
		ipOrFatal(t, "-n", m.NS, "link", "set", "lo", "up")
		ipOrFatal(t, "-n", m.NS, "addr", "add", m.Addr+"/24", "dev", m.NSVeth)
		ipOrFatal(t, "-n", m.NS, "link", "set", m.NSVeth, "up")
	}
	return nw
}

// freeSubnet picks 10.213.X with no address of this host in it.
func freeSubnet(t testing.TB) string {
	t.Helper()
	out, err := exec.Command("ip", "-o", "-4", "addr", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("testbed: ip addr: %v: %s", err, out)
	}
	start := os.Getpid() % 240
	for i := 0; i < 240; i++ {
		s := fmt.Sprintf("10.213.%d", 1+(start+i)%240)
		if !strings.Contains(string(out), " "+s+".") {
			return s
		}
	}
	t.Fatal("testbed: no free 10.213.X.0/24 subnet")
	return ""
}

// removeStaleNetns deletes namespaces and links of earlier runs whose
// process is gone (a crashed or killed test), with whatever still runs
// inside those namespaces (their agents and PostgreSQL).
func removeStaleNetns(t testing.TB) {
	stale := func(name string) bool {
		rest, ok := strings.CutPrefix(name, netnsPrefix)
		if !ok {
			return false
		}
		end := strings.IndexByte(rest, '-')
		if end <= 0 {
			return false
		}
		pid, err := strconv.ParseInt(rest[:end], 36, 64)
		if err != nil || pid <= 0 {
			return false
		}
		if int(pid) == os.Getpid() {
			return false
		}
		err = syscall.Kill(int(pid), 0)
		return err == syscall.ESRCH
	}
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || !stale(f[0]) {
			continue
		}
		pids, _ := exec.Command("ip", "netns", "pids", f[0]).Output()
		for _, p := range strings.Fields(string(pids)) {
			if pid, err := strconv.Atoi(p); err == nil && pid > 1 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if o, err := exec.Command("ip", "netns", "del", f[0]).CombinedOutput(); err != nil {
			t.Logf("testbed: removing stale namespace %s: %v: %s", f[0], err, o)
		} else {
			t.Logf("testbed: removed stale namespace %s", f[0])
		}
	}
	out, _ = exec.Command("ip", "-o", "link", "show").Output()
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		if !stale(name) {
			continue
		}
		if o, err := exec.Command("ip", "link", "del", name).CombinedOutput(); err != nil {
			t.Logf("testbed: removing stale link %s: %v: %s", name, err, o)
		} else {
			t.Logf("testbed: removed stale link %s", name)
		}
	}
}

func ipOrFatal(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("testbed: ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
}

func (nw *Netns) ip(args ...string) error {
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// destroy removes every namespace, veth and the bridge of this test. Any
// process still inside a namespace (a member the test did not stop) is
// killed first, so the veth goes with the namespace.
func (nw *Netns) destroy() {
	for _, m := range nw.Members {
		pids, _ := exec.Command("ip", "netns", "pids", m.NS).Output()
		for _, p := range strings.Fields(string(pids)) {
			if pid, err := strconv.Atoi(p); err == nil && pid > 1 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		exec.Command("ip", "netns", "del", m.NS).Run()
		exec.Command("ip", "link", "del", m.HostVeth).Run() // gone with the namespace unless something held it
	}
	exec.Command("ip", "link", "del", nw.Bridge).Run()
	// Links named after this process can be left only by a failed set-up.
	out, _ := exec.Command("ip", "-o", "link", "show").Output()
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && strings.HasPrefix(f[1], nw.tag+"-") {
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			exec.Command("ip", "link", "del", name).Run()
		}
	}
}

// Command returns a command that runs argv inside m's namespace as u (as
// the caller for nil u): ip netns exec NS setpriv … -- argv. Both exec in
// place, so the command's pid is argv's pid.
func (m *NetnsMember) Command(u *OSUser, argv ...string) *exec.Cmd {
	args := []string{"netns", "exec", m.NS}
	if u != nil {
		args = append(args, "setpriv", "--reuid="+u.Name, "--regid="+strconv.FormatUint(uint64(u.GID), 10), "--init-groups", "--")
	}
	cmd := exec.Command("ip", append(args, argv...)...)
	if u != nil {
		cmd.Env = append(os.Environ(), "HOME="+os.TempDir(), "USER="+u.Name)
	}
	return cmd
}

// Kinds of cut for Block.
const (
	// Drop: packets to the peer go to a MAC nobody has and vanish; new
	// connections and established ones time out.
	Drop = "drop"
	// Prohibit: a prohibit route; locally sent packets fail at once with
	// EACCES ("permission denied").
	Prohibit = "prohibit"
	// Blackhole: a blackhole route; locally sent packets fail at once with
	// EINVAL (a blackhole route drops forwarded packets silently, not
	// locally sent ones).
	Blackhole = "blackhole"
)

// deadMAC is a locally administered unicast address no interface has.
const deadMAC = "02:00:5e:de:ad:01"

// Block cuts the path between a and b both ways (kind: Drop, Prohibit or
// Blackhole) inside both namespaces; both still reach the host (Consul,
// the test) and every other member.
func (nw *Netns) Block(a, b *NetnsMember, kind string) error {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	for _, p := range [][2]*NetnsMember{{a, b}, {b, a}} {
		if err := nw.ip(blockArgs(p[0], p[1].Addr, kind, "replace")...); err != nil {
			return err
		}
		nw.routes[p[0].NS+" "+p[1].Addr] = kind
	}
	return nil
}

// blockArgs is the ip command adding (op "replace") or removing (op "del")
// a cut of kind from m to dest.
func blockArgs(m *NetnsMember, dest, kind, op string) []string {
	if kind == Drop {
		args := []string{"-n", m.NS, "neigh", op, dest}
		if op != "del" {
			args = append(args, "lladdr", deadMAC, "nud", "permanent")
		}
		return append(args, "dev", m.NSVeth)
	}
	return []string{"-n", m.NS, "route", op, kind, dest + "/32"}
}

// Unblock removes the routes Block added between a and b.
func (nw *Netns) Unblock(a, b *NetnsMember) error {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	var first error
	for _, p := range [][2]*NetnsMember{{a, b}, {b, a}} {
		key := p[0].NS + " " + p[1].Addr
		kind, ok := nw.routes[key]
		if !ok {
			continue
		}
		if err := nw.ip(blockArgs(p[0], p[1].Addr, kind, "del")...); err != nil && first == nil {
			first = err
		}
		delete(nw.routes, key)
	}
	return first
}

// LinkDown takes m off the network: its veth end in the namespace (the
// member sees "network unreachable" at once) or on the host's bridge (the
// cable pulled: the member's packets vanish, everyone runs into timeouts).
func (nw *Netns) LinkDown(m *NetnsMember, hostSide bool) error {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	var err error
	if hostSide {
		err = nw.ip("link", "set", m.HostVeth, "down")
		nw.downs[m.HostVeth] = true
	} else {
		err = nw.ip("-n", m.NS, "link", "set", m.NSVeth, "down")
		nw.downs[m.NSVeth] = true
	}
	return err
}

// LinkUp puts m back on the network (both ends up; the namespace's
// connected route comes back with its link).
func (nw *Netns) LinkUp(m *NetnsMember) error {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	return nw.linkUpLocked(m)
}

func (nw *Netns) linkUpLocked(m *NetnsMember) error {
	var first error
	if err := nw.ip("link", "set", m.HostVeth, "up"); err != nil {
		first = err
	}
	if err := nw.ip("-n", m.NS, "link", "set", m.NSVeth, "up"); err != nil && first == nil {
		first = err
	}
	delete(nw.downs, m.HostVeth)
	delete(nw.downs, m.NSVeth)
	return first
}

// HealAll removes every partition route and brings every link up.
func (nw *Netns) HealAll() error {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	var first error
	for key, kind := range nw.routes {
		ns, dest, _ := strings.Cut(key, " ")
		for _, m := range nw.Members {
			if m.NS != ns {
				continue
			}
			if err := nw.ip(blockArgs(m, dest, kind, "del")...); err != nil && first == nil {
				first = err
			}
		}
		delete(nw.routes, key)
	}
	for _, m := range nw.Members {
		if err := nw.linkUpLocked(m); err != nil && first == nil {
			first = err
		}
	}
	return first
}

func (s AgentSpec) host() string {
	if s.Host != "" {
		return s.Host
	}
	return "127.0.0.1"
}

// socketDSN reaches a namespaced member's PostgreSQL through its Unix
// socket (pgmesh puts it in <data dir>.run): a file-system socket is not
// bound to a network namespace, so the test sees every member whatever the
// partition, like a client on the member's own host.
func (a *Agent) socketDSN() string {
	return fmt.Sprintf("host=%s.run port=%d user=postgres password='super secret' dbname=postgres sslmode=disable connect_timeout=2", a.DataDir, a.PGPort)
}
