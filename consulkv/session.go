package consulkv

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"
)

// ErrSessionGone means Consul no longer knows the session: it expired, was
// invalidated by a failing check, or was destroyed.
var ErrSessionGone = errors.New("session no longer exists")

// SessionOptions describe an agent's session.
type SessionOptions struct {
	Name string
	// TTL is the session TTL Consul enforces; Consul invalidates the session
	// no earlier than TTL after the last renew it saw (in practice up to 2×).
	TTL time.Duration
	// LockDelay blocks re-acquiring the session's locks after an
	// invalidation. Zero means "as small as Consul allows" (1ms), never
	// Consul's 15s default.
	LockDelay time.Duration
	// NodeChecks and ServiceChecks tie the session to health checks: one
	// going critical invalidates the session at once. Empty NodeChecks means
	// none (not even serfHealth).
	NodeChecks    []string
	ServiceChecks []api.ServiceCheck
	// Node is the Consul node the session belongs to (default: the agent's).
	Node string
}

// CreateSession creates a session with Behavior=delete, so the keys it holds
// disappear with it.
func (c *Client) CreateSession(ctx context.Context, o SessionOptions) (string, error) {
	if o.TTL < time.Second {
		return "", fmt.Errorf("consulkv: session TTL %s below 1s", o.TTL)
	}
	lockDelay := o.LockDelay
	if lockDelay <= 0 {
		lockDelay = time.Millisecond
	}
	// Built by hand rather than with Session().Create: an absent NodeChecks
	// makes Consul tie the session to serfHealth, and only an explicit empty
	// list turns that off.
	body := map[string]interface{}{
		"Name":      o.Name,
		"TTL":       o.TTL.String(),
		"Behavior":  api.SessionBehaviorDelete,
		"LockDelay": fmt.Sprintf("%dms", lockDelay.Milliseconds()),
	}
	if lockDelay < time.Millisecond {
		body["LockDelay"] = "1ms"
	}
	if o.Node != "" {
		body["Node"] = o.Node
	}
	if o.NodeChecks == nil {
		body["NodeChecks"] = []string{}
	} else {
		body["NodeChecks"] = o.NodeChecks
	}
	if len(o.ServiceChecks) > 0 {
		body["ServiceChecks"] = o.ServiceChecks
	}
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	var out struct{ ID string }
	if _, err := c.api.Raw().Write("/v1/session/create", body, &out, c.wopts(ctx)); err != nil {
		return "", classify("create session", err)
	}
	id := out.ID
	return id, nil
}

// RenewSession renews a session; ErrSessionGone when Consul dropped it.
func (c *Client) RenewSession(ctx context.Context, id string) error {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	entry, _, err := c.api.Session().Renew(id, c.wopts(ctx))
	if err != nil {
		var se api.StatusError
		if errors.As(err, &se) && se.Code == 404 {
			return fmt.Errorf("consulkv: renew session %s: %w", id, ErrSessionGone)
		}
		return classify("renew session", err)
	}
	if entry == nil {
		return fmt.Errorf("consulkv: renew session %s: %w", id, ErrSessionGone)
	}
	return nil
}

// DestroySession destroys a session, releasing (and, with Behavior=delete,
// deleting) every key it holds.
func (c *Client) DestroySession(ctx context.Context, id string) error {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	_, err := c.api.Session().Destroy(id, c.wopts(ctx))
	return classify("destroy session", err)
}

// SessionInfo returns what Consul holds for session id (nil when it has
// no such session), read consistently so a session just created is seen.
func (c *Client) SessionInfo(ctx context.Context, id string) (*api.SessionEntry, error) {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	entry, _, err := c.api.Session().Info(id, c.qopts(ctx))
	if err != nil {
		return nil, classify("session info", err)
	}
	return entry, nil
}

// SessionExists reports whether Consul still has the session.
func (c *Client) SessionExists(ctx context.Context, id string) (bool, error) {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	entry, _, err := c.api.Session().Info(id, c.qopts(ctx))
	if err != nil {
		return false, classify("session info", err)
	}
	return entry != nil, nil
}
