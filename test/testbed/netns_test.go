package testbed

import (
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// probe dials addr from inside m's namespace (bash's /dev/tcp, 1.5 s) and
// says what happened: "connected", "refused" (the path works, no
// listener), "timeout", or the error bash printed.
func probe(m *NetnsMember, addr string) string {
	host, port, _ := net.SplitHostPort(addr)
	out, err := m.Command(nil, "timeout", "1.5", "bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/%s/%s", host, port)).CombinedOutput()
	switch {
	case err == nil:
		return "connected"
	case strings.Contains(string(out), "Connection refused"):
		return "refused"
	}
	if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 124 {
		return "timeout"
	}
	s := strings.TrimSpace(string(out))
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[i+2:]
	}
	return s
}

func TestNetns(t *testing.T) {
	if why := NetnsAvailable(); why != "" {
		t.Skip(why)
	}
	nw := NewNetns(t, 2)
	a, b := nw.Members[0], nw.Members[1]
	ln, err := net.Listen("tcp", nw.HostAddr+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	host := ln.Addr().String()
	peer := func(m *NetnsMember) string { return m.Addr + ":1" } // closed port: "refused" = reachable
	expect := func(step string, m *NetnsMember, addr, want string) {
		t.Helper()
		if got := probe(m, addr); got != want {
			t.Errorf("%s: %s -> %s: %s, want %s", step, m.NS, addr, got, want)
		}
	}
	expect("start", a, host, "connected")
	expect("start", a, peer(b), "refused")
	expect("start", b, peer(a), "refused")

	for kind, want := range map[string]string{Drop: "timeout", Prohibit: "Permission denied", Blackhole: "Invalid argument"} {
		if err := nw.Block(a, b, kind); err != nil {
			t.Fatal(err)
		}
		expect(kind, a, peer(b), want)
		expect(kind, b, peer(a), want)
		expect(kind, a, host, "connected")
		expect(kind, b, host, "connected")
		if err := nw.Unblock(a, b); err != nil {
			t.Fatal(err)
		}
		expect(kind+" healed", a, peer(b), "refused")
	}

	if err := nw.LinkDown(a, false); err != nil {
		t.Fatal(err)
	}
	expect("namespace side down", a, host, "Network is unreachable")
	expect("namespace side down", b, peer(a), "timeout")
	if err := nw.LinkUp(a); err != nil {
		t.Fatal(err)
	}
	expect("namespace side up", a, host, "connected")
	if err := nw.LinkDown(b, true); err != nil {
		t.Fatal(err)
	}
	if err := nw.Block(a, b, Prohibit); err != nil {
		t.Fatal(err)
	}
	expect("bridge side down", b, host, "timeout")
	if err := nw.HealAll(); err != nil {
		t.Fatal(err)
	}
	expect("healed", b, host, "connected")
	expect("healed", a, peer(b), "refused")

	// Programs run inside the namespace as the PostgreSQL OS user.
	u, err := PostgresOSUser()
	if err != nil {
		t.Fatal(err)
	}
	out, err := a.Command(u, "sh", "-c", "id -un; ip -o -4 addr show").CombinedOutput()
	if err != nil {
		t.Fatalf("command in %s: %v: %s", a.NS, err, out)
	}
	if u != nil && !strings.HasPrefix(string(out), u.Name+"\n") {
		t.Errorf("command in %s runs as %q, want %s", a.NS, strings.SplitN(string(out), "\n", 2)[0], u.Name)
	}
	if !strings.Contains(string(out), a.Addr+"/24") || strings.Contains(string(out), nw.HostAddr+"/24") {
		t.Errorf("command in %s does not see the namespace's addresses:\n%s", a.NS, out)
	}
}

// A namespace and a link named after a process that no longer exists (a
// crashed run) are removed before a new network is built.
func TestNetnsRemovesStale(t *testing.T) {
	if why := NetnsAvailable(); why != "" {
		t.Skip(why)
	}
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	tag := netnsPrefix + strconv.FormatInt(int64(cmd.Process.Pid), 36)
	ns, link := tag+"-0", tag+"-br"
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", ns).Run()
		exec.Command("ip", "link", "del", link).Run()
	})
	for _, args := range [][]string{{"netns", "add", ns}, {"link", "add", link, "type", "bridge"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	NewNetns(t, 1)
	Eventually(t, 5*time.Second, "stale namespace and link removed", func() error {
		nsList, _ := exec.Command("ip", "netns", "list").Output()
		links, _ := exec.Command("ip", "-o", "link", "show").Output()
		if strings.Contains(string(nsList), ns) || strings.Contains(string(links), link) {
			return fmt.Errorf("still there: namespaces %q", strings.TrimSpace(string(nsList)))
		}
		return nil
	})
}
