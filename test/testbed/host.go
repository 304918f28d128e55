package testbed

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// Host is a database host as production runs it: its own Consul client
// agent joined to a ConsulCluster, a pgmesh agent that talks to that client
// agent (never to a server), and the agent's PostgreSQL and fence watchdog.
// KillHost kills all of them at once, so Consul learns of the death only as
// it would of a real host: through the sessions' TTL, or through serf's
// failure detection marking the node's serfHealth critical.
type Host struct {
	Name   string
	Consul *ConsulNode
	Agent  *Agent
}

// NewHost starts the host's Consul client agent (node client-<spec.Name>,
// waited for until the catalog has it) and prepares its pgmesh agent with
// spec.ConsulAddr set to the client agent's HTTP address. Start the agent
// with h.Agent.Start (or use StartHost).
func NewHost(t testing.TB, cl *ConsulCluster, spec AgentSpec) *Host {
	t.Helper()
	c := cl.StartClient(t, spec.Name)
	spec.ConsulAddr = c.HTTPAddr
	return &Host{Name: spec.Name, Consul: c, Agent: NewAgent(t, spec)}
}

// StartHost is NewHost and starts the pgmesh agent.
func StartHost(t testing.TB, cl *ConsulCluster, spec AgentSpec) *Host {
	t.Helper()
	h := NewHost(t, cl, spec)
	h.Agent.Start()
	return h
}

// Node is the host's Consul node name: the node its agent's sessions and
// service belong to, and whose serfHealth check serf's failure detection
// turns critical.
func (h *Host) Node() string { return h.Consul.NodeName }

// KillHost kills the host: the Consul client agent is frozen first
// (SIGSTOP: from that instant it answers no gossip probe and forwards
// nothing), then the pgmesh agent, its fence watchdog, the postmaster and
// its backends are SIGKILLed (Agent.KillHost), then the client agent. It
// returns the instant of the SIGSTOP (a few milliseconds before the rest)
// and waits until every process is gone.
func (h *Host) KillHost() time.Time {
	var at time.Time
	if h.Consul.cmd != nil {
		at = time.Now()
		syscall.Kill(-h.Consul.cmd.Process.Pid, syscall.SIGSTOP)
	}
	if at.IsZero() {
		at = time.Now()
	}
	h.Agent.KillHost()
	h.Consul.Kill()
	return at
}

// Restart brings a killed host back: its Consul client agent (same node,
// data dir and ports) until serf calls it alive and its serfHealth passes
// in the catalog, then the pgmesh agent.
func (h *Host) Restart(cl *ConsulCluster, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	if !h.Consul.Running() {
		if err := h.Consul.Restart(timeout); err != nil {
			return err
		}
	}
	for {
		st, err := cl.NodeCheckStatus(h.Node(), "serfHealth")
		if err == nil && st == api.HealthPassing {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("testbed: host %s: serfHealth %q (%v) after %s", h.Name, st, err, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
	h.Agent.Start()
	return nil
}

// NodeCheckStatus is the catalog status of the node's check (e.g.
// "serfHealth"), read from the first running server; "" when the node has
// no such check.
func (cl *ConsulCluster) NodeCheckStatus(node, checkID string) (string, error) {
	for _, s := range cl.Servers {
		if !s.Running() {
			continue
		}
		checks, _, err := s.pollClient().Health().Node(node, nil)
		if err != nil {
			return "", err
		}
		for _, c := range checks {
			if c.CheckID == checkID {
				return c.Status, nil
			}
		}
		return "", nil
	}
	return "", fmt.Errorf("testbed: no Consul server running")
}
