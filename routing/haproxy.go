package routing

import (
	"context"
	"fmt"
	"io"
	"net"
	"path"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"
)

// DefaultHAProxyBackends are the backends of the shipped haproxy.cfg.tmpl
// whose servers are checked on /primary: the write listener, the read
// fallback and the per-group listeners.
var DefaultHAProxyBackends = []string{"write", "read_primaries", "group_*"}

// hook pushes primary changes to HAProxy's runtime API: the new primary of a
// group is marked up at once, and a former primary that no longer holds its
// group's leader key is marked down and its sessions are shut. HAProxy's
// checks would get there too (within inter × fall); this only makes it
// faster. A primary that merely fails a Consul check while still holding
// the leader key is left to HAProxy's own checks, so a flapping check never
// cuts sessions. The first mesh only records the state.
func (r *Renderer) hook(ctx context.Context, e *entryState, m *Mesh) {
	if e.HAProxySocket == "" {
		return
	}
	cur := m.primaryMap()
	if !e.hookInit {
		e.primaries, e.hookInit = cur, true
		return
	}
	var up, down []*Member
	member := func(group, name string) *Member {
		if g := m.Group(group); g != nil {
			for _, x := range g.Members {
				if x.Name == name {
					return x
				}
			}
		}
		return &Member{Group: group, Name: name}
	}
	for g, old := range e.primaries {
		if cur[g] == old {
			continue
		}
		if grp := m.Group(g); grp != nil && grp.Leader == old {
			// Still the leader, only failing a check: HAProxy's own checks
			// decide. Remember it, so the down/shutdown is sent once the
			// leader key moves on.
			if _, ok := cur[g]; !ok {
				cur[g] = old
			}
			continue
		}
		down = append(down, member(g, old))
	}
	for g, nw := range cur {
		if e.primaries[g] != nw {
			up = append(up, member(g, nw))
		}
	}
	e.primaries = cur
	if len(up)+len(down) == 0 {
		return
	}
	sort.Slice(up, func(i, j int) bool { return up[i].ServerName() < up[j].ServerName() })
	sort.Slice(down, func(i, j int) bool { return down[i].ServerName() < down[j].ServerName() })
	start := time.Now()
	n, err := pushRuntime(ctx, e.HAProxySocket, e.HAProxyBackends, up, down)
	log := r.log.With(zap.String("socket", e.HAProxySocket), zap.Strings("up", names(up)), zap.Strings("down", names(down)))
	switch {
	case err != nil:
		log.Warn("HAProxy runtime update failed; HAProxy's checks will catch up", zap.Error(err))
	case n == 0:
		log.Debug("HAProxy runtime: HAProxy's checks already had the primary change")
	default:
		log.Info("HAProxy runtime: pushed the primary change", zap.Int("commands", n), zap.Duration("took", time.Since(start)))
	}
}

func names(ms []*Member) []string {
	if len(ms) == 0 {
		return nil
	}
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.ServerName()
	}
	return out
}

// haproxyServer is one line of `show servers state`.
type haproxyServer struct {
	backend, server string
	opState         string // 0 stopped, 1 starting, 2 running, 3 stopping
}

// pushRuntime sends the runtime API commands for a primary change and
// returns how many it sent.
func pushRuntime(ctx context.Context, socket string, patterns []string, up, down []*Member) (int, error) {
	state, err := haproxyCommand(ctx, socket, "show servers state")
	if err != nil {
		return 0, err
	}
	servers := parseServersState(state)
	var cmds []string
	for _, s := range servers {
		if !matchAny(patterns, s.backend) {
			continue
		}
		ref := s.backend + "/" + s.server
		for _, m := range down {
			if m.ServerName() == s.server {
				if s.opState != "0" {
					cmds = append(cmds, "set server "+ref+" health down")
				}
				cmds = append(cmds, "shutdown sessions server "+ref)
			}
		}
		for _, m := range up {
			// Only the operational state: an operator's maintenance or
			// drain (admin state) is left alone.
			if m.ServerName() == s.server && s.opState != "2" {
				cmds = append(cmds, "set server "+ref+" health up")
			}
		}
	}
	var errs []string
	for _, c := range cmds {
		res, err := haproxyCommand(ctx, socket, c)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", c, err)
		}
		if res = strings.TrimSpace(res); res != "" {
			errs = append(errs, c+": "+res)
		}
	}
	if len(errs) > 0 {
		return len(cmds), fmt.Errorf("HAProxy answered: %s", strings.Join(errs, "; "))
	}
	return len(cmds), nil
}

func matchAny(patterns []string, name string) bool {
	for _, p := range patterns {
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
}

// parseServersState reads `show servers state` (format version 1:
// be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state …).
func parseServersState(s string) []haproxyServer {
	var out []haproxyServer
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 7 {
			continue // the version line
		}
		out = append(out, haproxyServer{backend: f[1], server: f[3], opState: f[5]})
	}
	return out
}

// haproxyCommand sends one command over HAProxy's stats socket (a unix
// socket path, or host:port for a TCP stats socket) and returns the answer.
func haproxyCommand(ctx context.Context, socket, cmd string) (string, error) {
	network := "unix"
	if !strings.HasPrefix(socket, "/") && strings.Contains(socket, ":") {
		network = "tcp"
	}
	d := net.Dialer{Timeout: time.Second}
	c, err := d.DialContext(ctx, network, socket)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(c, cmd+"\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return string(b), err
	}
	return string(b), nil
}
