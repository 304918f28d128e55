package consulkv

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// MemberService describes how a member appears in Consul's catalog:
// service <cluster>, ID <cluster>/<group>/<member>, PostgreSQL's address and
// port, role tags, and HTTP checks against the agent's REST API.
type MemberService struct {
	Group, Member string
	Role          string // primary | replica | unknown
	Address       string
	Port          int
	APIURL        string
	Timeline      uint32
	ExtraTags     []string
	// CheckInterval/CheckTimeout of the role check (default 1s/1s);
	// DeregisterAfter removes a member whose check stays critical (≥1m).
	CheckInterval, CheckTimeout, DeregisterAfter time.Duration
	// Passing marks the role check passing at registration, so DNS answers
	// at once instead of after the first check run; set it only when the
	// agent's own view says the check would pass.
	Passing bool
	// CheckTLSServerName and CheckTLSSkipVerify tune how Consul checks an
	// HTTPS REST API: Consul verifies the member's certificate with its
	// own CA settings (enable_agent_tls_for_checks), against this name
	// when the certificate does not carry the dialled address.
	CheckTLSServerName string
	CheckTLSSkipVerify bool
}

// ServiceID is the member's service ID.
func (c *Client) ServiceID(group, member string) string {
	return c.cluster + "/" + group + "/" + member
}

// RoleCheckID and LivenessCheckID name the member's two checks.
func (c *Client) RoleCheckID(group, member string) string {
	return "pgmesh:" + c.ServiceID(group, member) + ":role"
}
func (c *Client) LivenessCheckID(group, member string) string {
	return "pgmesh:" + c.ServiceID(group, member) + ":liveness"
}

// Tags returns the service tags for s: role, group, group-role, extras.
func (s MemberService) Tags() []string {
	tags := []string{s.Group}
	if s.Role == RolePrimary || s.Role == RoleReplica {
		tags = append([]string{s.Role}, tags...)
		tags = append(tags, s.Group+"-"+s.Role)
	}
	for _, t := range s.ExtraTags {
		if t != "" && !containsString(tags, t) {
			tags = append(tags, t)
		}
	}
	return tags
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Signature changes whenever the registration must be redone.
func (s MemberService) Signature() string {
	t := s.Tags()
	sort.Strings(t)
	return fmt.Sprintf("%s|%s|%d|%s|%d|%s|%s|%t", s.Role, s.Address, s.Port, s.APIURL, s.Timeline, strings.Join(t, ","), s.CheckTLSServerName, s.CheckTLSSkipVerify)
}

// RegisterMember (re-)registers the member with the local Consul agent.
func (c *Client) RegisterMember(ctx context.Context, s MemberService) error {
	interval, timeout, dereg := s.CheckInterval, s.CheckTimeout, s.DeregisterAfter
	if interval <= 0 {
		interval = time.Second
	}
	if timeout <= 0 {
		timeout = time.Second
	}
	if dereg < time.Minute {
		dereg = time.Minute
	}
	path := "/replica"
	if s.Role == RolePrimary {
		path = "/primary"
	}
	status := api.HealthCritical
	if s.Passing {
		status = api.HealthPassing
	}
	id := c.ServiceID(s.Group, s.Member)
	reg := &api.AgentServiceRegistration{
		ID:      id,
		Name:    c.cluster,
		Tags:    s.Tags(),
		Address: s.Address,
		Port:    s.Port,
		Meta: map[string]string{
			"group": s.Group, "member": s.Member, "role": s.Role,
			"timeline": fmt.Sprint(s.Timeline), "api_url": s.APIURL,
		},
		Checks: api.AgentServiceChecks{
			{
				CheckID:                        c.RoleCheckID(s.Group, s.Member),
				Name:                           "pgmesh " + s.Role + " check (GET " + path + ")",
				HTTP:                           s.APIURL + path,
				Method:                         "GET",
				Interval:                       interval.String(),
				Timeout:                        timeout.String(),
				Status:                         status,
				DeregisterCriticalServiceAfter: dereg.String(),
				TLSServerName:                  s.CheckTLSServerName,
				TLSSkipVerify:                  s.CheckTLSSkipVerify,
			},
			{
				CheckID:  c.LivenessCheckID(s.Group, s.Member),
				Name:     "pgmesh agent liveness (GET /liveness)",
				HTTP:     s.APIURL + "/liveness",
				Method:   "GET",
				Interval: interval.String(),
				Timeout:  timeout.String(),
				Status:   api.HealthPassing,
				// The liveness check may tie the leader lock to it, so it
				// is checked exactly like the role check.
				TLSServerName: s.CheckTLSServerName,
				TLSSkipVerify: s.CheckTLSSkipVerify,
			},
		},
	}
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	opts := api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx)
	if err := c.api.Agent().ServiceRegisterOpts(reg, opts); err != nil {
		return classify("register service "+id, err)
	}
	return nil
}

// DeregisterMember removes the member's service and checks.
func (c *Client) DeregisterMember(ctx context.Context, group, member string) error {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	id := c.ServiceID(group, member)
	if err := c.api.Agent().ServiceDeregisterOpts(id, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		return classify("deregister service "+id, err)
	}
	return nil
}

// LocalAgent describes the Consul agent this client talks to.
type LocalAgent struct {
	NodeName string
	// Server: the agent is a Consul server, not a client agent.
	Server bool
	// Datacenter is the agent's datacenter.
	Datacenter string
	// Addr is the agent's gossip (LAN) address.
	Addr string
	// LeaveOnTerm: the agent leaves the cluster when it gets SIGTERM
	// (leave_on_terminate; Consul's default for client agents). A leave
	// deregisters the node, and with it ends every session on the node.
	LeaveOnTerm bool
}

// Self asks the Consul agent about itself (/v1/agent/self; needs agent:read
// on its node when ACLs are on).
func (c *Client) Self(ctx context.Context) (LocalAgent, error) {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	type answer struct {
		self map[string]map[string]interface{}
		err  error
	}
	// The API call takes no context; bound the wait ourselves.
	ch := make(chan answer, 1)
	go func() {
		self, err := c.api.Agent().Self()
		ch <- answer{self, err}
	}()
	var self map[string]map[string]interface{}
	select {
	case <-ctx.Done():
		return LocalAgent{}, classify("agent self", ctx.Err())
	case a := <-ch:
		if a.err != nil {
			return LocalAgent{}, classify("agent self", a.err)
		}
		self = a.self
	}
	var la LocalAgent
	if cfg, ok := self["Config"]; ok {
		la.NodeName, _ = cfg["NodeName"].(string)
		la.Server, _ = cfg["Server"].(bool)
		la.Datacenter, _ = cfg["Datacenter"].(string)
	}
	if m, ok := self["Member"]; ok {
		la.Addr, _ = m["Addr"].(string)
	}
	if dc, ok := self["DebugConfig"]; ok {
		la.LeaveOnTerm, _ = dc["LeaveOnTerm"].(bool)
	}
	if la.NodeName == "" {
		return la, fmt.Errorf("agent self: no node name in the answer")
	}
	return la, nil
}
