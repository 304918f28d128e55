package agent

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"go.uber.org/zap"
)

// consulIsLocal reports whether the configured Consul address is on this
// host (loopback, or the default), the only place where a client agent's
// serfHealth speaks for this member's host.
func consulIsLocal(address string) bool {
	addr := strings.TrimPrefix(strings.TrimPrefix(address, "https://"), "http://")
	if addr == "" {
		return true
	}
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// nodeChecks are the configured session checks that are node checks (all
// but the member's own liveness check).
func nodeChecks(checks []string) []string {
	var out []string
	for _, c := range checks {
		if c != "liveness" {
			out = append(out, c)
		}
	}
	return out
}

// detectionProblem says why node checks in session_checks cannot detect
// this host's death ("" when they can): they are only meaningful on a
// Consul client agent running on this host.
func detectionProblem(checks []string, address string, self consulkv.LocalAgent) string {
	nc := nodeChecks(checks)
	if len(nc) == 0 {
		return ""
	}
	switch {
	case self.Server:
		return fmt.Sprintf("consul.session_checks names %s, but the Consul agent at %s is a server (node %s): its node checks say nothing about this host, so a dead host is noticed only when the session's TTL runs out; point consul.address at a Consul client agent on this host", strings.Join(nc, ", "), address, self.NodeName)
	case !consulIsLocal(address):
		return fmt.Sprintf("consul.session_checks names %s, but the Consul agent at %s is not on this host (node %s): its node checks say nothing about this host, so a dead host is noticed only when the session's TTL runs out; point consul.address at the Consul client agent on this host", strings.Join(nc, ", "), address, self.NodeName)
	}
	return ""
}

// AutoSessionCheck is the node check that automatic failure detection
// (consul.session_checks unset) ties sessions to when the agent talks to a
// Consul client agent on its own host: Consul's failure detector for the
// host, which frees a dead host's sessions within seconds.
const AutoSessionCheck = "serfHealth"

// autoChecks decides the automatic session checks from what the Consul
// agent said about itself: serfHealth on a client agent on this host, else
// TTL only (and why).
func autoChecks(address string, self consulkv.LocalAgent) ([]string, string) {
	switch {
	case self.Server:
		return []string{}, fmt.Sprintf("the Consul agent at %s is a server (node %s), whose serfHealth says nothing about this host", address, self.NodeName)
	case !consulIsLocal(address):
		return []string{}, fmt.Sprintf("the Consul agent at %s is not on this host (node %s), so its serfHealth says nothing about this host", address, self.NodeName)
	}
	return []string{AutoSessionCheck}, ""
}

// sessionChecks are the checks this member's sessions are tied to: as
// configured, or as automatic detection decided (nil until it has).
func (a *Agent) sessionChecks() []string {
	if a.cfg.Consul.SessionChecks != nil {
		return a.cfg.Consul.SessionChecks
	}
	if p := a.autoChecks.Load(); p != nil {
		return *p
	}
	return nil
}

// logFailureDetection says at start how a dead member will be noticed, and
// warns when the session checks cannot work where the agent points. With
// automatic detection it first asks the Consul agent about itself (briefly
// here, then in the background until it answers; TTL only meanwhile).
func (a *Agent) logFailureDetection(ctx context.Context) {
	checks := a.cfg.Consul.SessionChecks
	if checks == nil {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		self, err := a.kv.Self(sctx)
		cancel()
		if err == nil {
			a.adoptAutoChecks(self)
			return
		}
		a.log.Info("failure detection (automatic): could not ask the Consul agent about itself yet; session TTL only until it answers", zap.Error(err))
		go a.resolveAutoChecks(ctx)
		return
	}
	a.logDetection(checks, "")
	// Asked in the background: an unreachable Consul must not hold up the
	// start (the HA loop copes with that on its own).
	go a.checkConsulAgent(ctx, checks)
}

// logDetection is the start line that says how a dead member is noticed.
func (a *Agent) logDetection(checks []string, how string) {
	ttl := a.dyn.TTL.D()
	if len(checks) == 0 {
		a.log.Info("failure detection: session TTL only; a dead member's session ends up to twice the session TTL after its last renew (about ttl)",
			zap.Duration("ttl", ttl), zap.String("automatic", how))
		return
	}
	a.log.Info("failure detection: session tied to health checks; a dead member's session ends when one of them goes critical",
		zap.Strings("session_checks", checks), zap.Duration("lock_delay", a.dyn.LockDelayFor(true)), zap.String("automatic", how))
}

// resolveAutoChecks asks the Consul agent about itself until it answers
// (backing off to a minute), then adopts the automatic checks; the session
// is rolled over to them at the next loop.
func (a *Agent) resolveAutoChecks(ctx context.Context) {
	wait := time.Second
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		self, err := a.kv.Self(ctx)
		if err == nil {
			a.adoptAutoChecks(self)
			return
		}
		wait = min(2*wait, time.Minute)
	}
}

// adoptAutoChecks stores the automatic checks and says what they are.
func (a *Agent) adoptAutoChecks(self consulkv.LocalAgent) {
	checks, why := autoChecks(a.cfg.Consul.Address, self)
	a.autoChecks.Store(&checks)
	how := "the Consul agent is a client agent on this host (node " + self.NodeName + ")"
	if why != "" {
		how = why
	}
	a.logDetection(checks, how)
	if p := leaveProblem(self); p != "" {
		a.log.Warn(p)
	}
}

// checkConsulAgent asks the Consul agent about itself and warns about
// settings that defeat failure detection.
func (a *Agent) checkConsulAgent(ctx context.Context, checks []string) {
	self, err := a.kv.Self(ctx)
	if err != nil {
		if len(nodeChecks(checks)) > 0 {
			a.log.Warn("could not ask the Consul agent about itself to check that its node checks cover this host (needs agent:read)", zap.Error(err))
		} else {
			a.log.Info("could not ask the Consul agent about itself (needs agent:read); not checking its leave_on_terminate", zap.Error(err))
		}
		return
	}
	if p := detectionProblem(checks, a.cfg.Consul.Address, self); p != "" {
		a.log.Warn(p)
	}
	if p := leaveProblem(self); p != "" {
		a.log.Warn(p)
	}
}

// leaveProblem warns about a Consul agent that leaves the cluster when it
// is stopped: the leave deregisters its node, which ends every session on
// it, so a routine restart of the agent (an upgrade, `systemctl restart
// consul`) costs the group its leader. Found by TestNoFalseFailovers.
func leaveProblem(self consulkv.LocalAgent) string {
	if !self.LeaveOnTerm {
		return ""
	}
	return fmt.Sprintf("the Consul agent (node %s) leaves the cluster when stopped (leave_on_terminate, Consul's default for client agents): restarting it ends this member's session, and a leader's group fails over; set leave_on_terminate = false in that agent's configuration", self.NodeName)
}
