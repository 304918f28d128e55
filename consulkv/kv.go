package consulkv

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

func (c *Client) txn(ctx context.Context, ops api.TxnOps) (bool, *api.TxnResponse, error) {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	ok, resp, _, err := c.api.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return false, nil, classify("txn", err)
	}
	return ok, resp, nil
}

// LeaderPut writes key only while session holds the group's leader key,
// in one transaction: a member that lost the lock cannot overwrite what the
// new leader publishes.
func (c *Client) LeaderPut(ctx context.Context, group, session, key string, v Value) error {
	val, err := Encode(v)
	if err != nil {
		return err
	}
	ops := api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVCheckSession, Key: c.LeaderKey(group), Session: session}},
		{KV: &api.KVTxnOp{Verb: api.KVSet, Key: key, Value: val}},
	}
	ok, _, err := c.txn(ctx, ops)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("consulkv: write %s: %w", key, ErrNotHolder)
	}
	return nil
}

// LeaderDelete deletes key (if its ModifyIndex still is index, when index
// is non-zero) while session holds the group's leader key.
func (c *Client) LeaderDelete(ctx context.Context, group, session, key string, index uint64) error {
	op := &api.KVTxnOp{Verb: api.KVDelete, Key: key}
	if index != 0 {
		op = &api.KVTxnOp{Verb: api.KVDeleteCAS, Key: key, Index: index}
	}
	ops := api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVCheckSession, Key: c.LeaderKey(group), Session: session}},
		{KV: op},
	}
	ok, _, err := c.txn(ctx, ops)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("consulkv: delete %s: %w or it changed", key, ErrNotHolder)
	}
	return nil
}

// CAS writes v at key if the key's ModifyIndex is index (0 = only if the key
// does not exist). It returns false when someone else got there first.
func (c *Client) CAS(ctx context.Context, key string, v Value, index uint64) (bool, error) {
	val, err := Encode(v)
	if err != nil {
		return false, err
	}
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	ok, _, err := c.api.KV().CAS(&api.KVPair{Key: key, Value: val, ModifyIndex: index}, c.wopts(ctx))
	if err != nil {
		return false, classify("cas "+key, err)
	}
	return ok, nil
}

// DeleteCAS deletes key if its ModifyIndex is still index.
func (c *Client) DeleteCAS(ctx context.Context, key string, index uint64) (bool, error) {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	ok, _, err := c.api.KV().DeleteCAS(&api.KVPair{Key: key, ModifyIndex: index}, c.wopts(ctx))
	if err != nil {
		return false, classify("delete-cas "+key, err)
	}
	return ok, nil
}

// RaceInitialize is the bootstrap race: the first member to create the
// group's initialize key (CAS 0) wins and runs initdb.
func (c *Client) RaceInitialize(ctx context.Context, group, member string) (bool, error) {
	return c.CAS(ctx, c.InitializeKey(group), &Initialize{Version: ValueVersion, Member: member, At: time.Now().UTC()}, 0)
}

// RestoreInitialize rewrites the group's initialize key with the leader's
// system identifier, in one transaction that checks session still holds
// the leader key: index 0 creates the key only if it is absent, any other
// index replaces only the value seen at that ModifyIndex (an unreadable or
// unfilled one). It returns false when the key changed meanwhile; an error
// wrapping ErrNotHolder when session no longer holds the leader key.
func (c *Client) RestoreInitialize(ctx context.Context, group, session string, v *Initialize, index uint64) (bool, error) {
	val, err := Encode(v)
	if err != nil {
		return false, err
	}
	key := c.InitializeKey(group)
	ops := api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVCheckSession, Key: c.LeaderKey(group), Session: session}},
		{KV: &api.KVTxnOp{Verb: api.KVCAS, Key: key, Value: val, Index: index}},
	}
	ok, resp, err := c.txn(ctx, ops)
	if err != nil {
		return false, err
	}
	if ok {
		return true, nil
	}
	for _, e := range resp.Errors {
		if e.OpIndex == 0 {
			return false, fmt.Errorf("consulkv: restore %s: %w", key, ErrNotHolder)
		}
	}
	return false, nil
}

// PutMember writes the member's status under its session, so the key
// vanishes when the session dies.
func (c *Client) PutMember(ctx context.Context, group, session string, m *MemberStatus) error {
	val, err := Encode(m)
	if err != nil {
		return err
	}
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	key := c.MemberKey(group, m.Name)
	ok, _, err := c.api.KV().Acquire(&api.KVPair{Key: key, Value: val, Session: session}, c.wopts(ctx))
	if err != nil {
		return classify("write "+key, err)
	}
	if !ok {
		return fmt.Errorf("consulkv: write %s: held by another session (lock-delay or a duplicate member name)", key)
	}
	return nil
}

// getPair reads one key consistently (nil when absent).
func (c *Client) getPair(ctx context.Context, key string) (*api.KVPair, error) {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	p, _, err := c.api.KV().Get(key, c.qopts(ctx))
	if err != nil {
		return nil, classify("read "+key, err)
	}
	return p, nil
}

// DeleteMember removes a member key (used on clean shutdown).
func (c *Client) DeleteMember(ctx context.Context, group, member string) error {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	_, err := c.api.KV().Delete(c.MemberKey(group, member), c.wopts(ctx))
	return classify("delete member", err)
}

// LeaderInfo is who holds a group's leader key.
type LeaderInfo struct {
	// Member is empty when the key's value is unreadable; the key is still
	// locked and must be respected.
	Member      string
	Session     string
	ModifyIndex uint64
}

// GroupView is one consistent read of a group's keys. Values that failed to
// decode are absent and listed in Problems.
type GroupView struct {
	Name            string
	Index           uint64
	Initialize      *Initialize
	InitializeIndex uint64
	Leader          *LeaderInfo
	Members         map[string]*MemberStatus
	Failover        *FailoverRequest
	FailoverIndex   uint64
	Status          *GroupStatus
	History         *History
	HistoryIndex    uint64
	Sync            *SyncState
	Problems        []error
}

// MemberNames returns the members sorted by name.
func (g *GroupView) MemberNames() []string {
	names := make([]string, 0, len(g.Members))
	for n := range g.Members {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// PublishesLogicalSlots: the group's status lists logical slots that other
// groups consume from, so a standby needs current copies of them before it
// may take over in a switchover (and is preferred in a failover).
func (g *GroupView) PublishesLogicalSlots() bool {
	return g != nil && g.Status != nil && len(g.Status.LogicalSlots) > 0
}

// LacksSlotCopies: the group publishes logical slots and m does not report
// current copies of them (logical_slots_ready).
func (g *GroupView) LacksSlotCopies(m *MemberStatus) bool {
	return g.PublishesLogicalSlots() && (m == nil || !m.LogicalSlotsReady)
}

// ClusterView is one consistent read of the whole cluster.
type ClusterView struct {
	Index uint64
	// DefaultACLPolicy is Consul's default ACL policy as it answered the
	// read ("deny": an empty view may mean a token that may not read it;
	// Consul does not flag results it hid from the anonymous token).
	DefaultACLPolicy string
	Config           *ClusterConfig
	ConfigIndex      uint64
	Groups           map[string]*GroupView
	Problems         []error
}

// GroupNames returns the groups sorted by name.
func (v *ClusterView) GroupNames() []string {
	names := make([]string, 0, len(v.Groups))
	for n := range v.Groups {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// MemberSettings lists the published local settings of every member of
// every group, for ClusterConfig.ValidateFor.
func (v *ClusterView) MemberSettings() []MemberSettings {
	var out []MemberSettings
	for _, gn := range v.GroupNames() {
		g := v.Groups[gn]
		for _, mn := range g.MemberNames() {
			out = append(out, MemberSettings{Member: mn, SessionChecks: g.Members[mn].SessionChecks})
		}
	}
	return out
}

// DecodeGroup builds a GroupView from the pairs under GroupPrefix(group).
func (c *Client) DecodeGroup(group string, index uint64, pairs api.KVPairs) *GroupView {
	prefix := c.GroupPrefix(group)
	g := &GroupView{Name: group, Index: index, Members: map[string]*MemberStatus{}}
	for _, p := range pairs {
		rest := strings.TrimPrefix(p.Key, prefix)
		if rest == p.Key {
			continue
		}
		var err error
		switch {
		case rest == "initialize":
			v := &Initialize{}
			if err = Decode(p.Key, p.Value, v); err == nil {
				g.Initialize, g.InitializeIndex = v, p.ModifyIndex
			} else {
				// An unreadable initialize key still means the group was
				// claimed; keep its index so nobody races it again.
				g.InitializeIndex = p.ModifyIndex
			}
		case rest == "leader":
			if p.Session == "" {
				// A leader key nobody's session holds is stale (e.g. written
				// by hand); it grants nothing.
				break
			}
			li := &LeaderInfo{Session: p.Session, ModifyIndex: p.ModifyIndex}
			v := &Leader{}
			if err = Decode(p.Key, p.Value, v); err == nil {
				li.Member = v.Member
			}
			g.Leader = li
		case strings.HasPrefix(rest, "members/"):
			name := strings.TrimPrefix(rest, "members/")
			v := &MemberStatus{}
			if err = Decode(p.Key, p.Value, v); err == nil {
				if v.Name != name {
					err = &DecodeError{Key: p.Key, Err: fmt.Errorf("name %q does not match the key", v.Name)}
				} else {
					g.Members[name] = v
				}
			}
		case rest == "failover":
			v := &FailoverRequest{}
			if err = Decode(p.Key, p.Value, v); err == nil {
				g.Failover = v
			}
			g.FailoverIndex = p.ModifyIndex
		case rest == "status":
			v := &GroupStatus{}
			if err = Decode(p.Key, p.Value, v); err == nil {
				g.Status = v
			}
		case rest == "history":
			v := &History{}
			if err = Decode(p.Key, p.Value, v); err == nil {
				g.History = v
			}
			g.HistoryIndex = p.ModifyIndex
		case rest == "sync":
			v := &SyncState{}
			if err = Decode(p.Key, p.Value, v); err == nil {
				g.Sync = v
			}
		}
		if err != nil {
			g.Problems = append(g.Problems, err)
		}
	}
	return g
}

func (c *Client) list(ctx context.Context, prefix string, waitIndex uint64, wait time.Duration) (api.KVPairs, uint64, error) {
	pairs, meta, err := c.listMeta(ctx, prefix, waitIndex, wait)
	if err != nil {
		return nil, 0, err
	}
	return pairs, meta.LastIndex, nil
}

func (c *Client) listMeta(ctx context.Context, prefix string, waitIndex uint64, wait time.Duration) (api.KVPairs, *api.QueryMeta, error) {
	var cancel context.CancelFunc
	if waitIndex == 0 {
		ctx, cancel = c.ctx(ctx)
	} else {
		ctx, cancel = context.WithTimeout(ctx, wait+wait/16+c.timeout)
	}
	defer cancel()
	q := &api.QueryOptions{WaitIndex: waitIndex, WaitTime: wait}
	if waitIndex == 0 {
		q.RequireConsistent = true
	}
	pairs, meta, err := c.api.KV().List(prefix, q.WithContext(ctx))
	if err != nil {
		return nil, nil, classify("list "+prefix, err)
	}
	if meta.ResultsFilteredByACLs {
		// A partial view is worse than none: a hidden leader key reads as
		// "no leader", a hidden config as "seed one".
		return nil, nil, fmt.Errorf("consulkv: list %s: %w: keys filtered out by ACLs (the token needs key_prefix %q read)", prefix, ErrPermission, prefix)
	}
	return pairs, meta, nil
}

// ReadGroup reads all of a group's keys consistently.
func (c *Client) ReadGroup(ctx context.Context, group string) (*GroupView, error) {
	pairs, idx, err := c.list(ctx, c.GroupPrefix(group), 0, 0)
	if err != nil {
		return nil, err
	}
	return c.DecodeGroup(group, idx, pairs), nil
}

// DecodeCluster builds a ClusterView from the pairs under ClusterPrefix.
func (c *Client) DecodeCluster(index uint64, pairs api.KVPairs) *ClusterView {
	v := &ClusterView{Index: index, Groups: map[string]*GroupView{}}
	byGroup := map[string]api.KVPairs{}
	groupsPrefix := c.ClusterPrefix() + "groups/"
	for _, p := range pairs {
		if p.Key == c.ConfigKey() {
			cfg := &ClusterConfig{}
			if err := Decode(p.Key, p.Value, cfg); err != nil {
				v.Problems = append(v.Problems, err)
			} else {
				v.Config = cfg
			}
			v.ConfigIndex = p.ModifyIndex
			continue
		}
		rest := strings.TrimPrefix(p.Key, groupsPrefix)
		if rest == p.Key {
			continue
		}
		name, _, ok := strings.Cut(rest, "/")
		if !ok || name == "" {
			continue
		}
		byGroup[name] = append(byGroup[name], p)
	}
	for name, ps := range byGroup {
		g := c.DecodeGroup(name, index, ps)
		v.Groups[name] = g
		v.Problems = append(v.Problems, g.Problems...)
	}
	return v
}

// ReadCluster reads the whole cluster consistently.
func (c *Client) ReadCluster(ctx context.Context) (*ClusterView, error) {
	pairs, meta, err := c.listMeta(ctx, c.ClusterPrefix(), 0, 0)
	if err != nil {
		return nil, err
	}
	v := c.DecodeCluster(meta.LastIndex, pairs)
	v.DefaultACLPolicy = meta.DefaultACLPolicy
	return v, nil
}

// ReadConfig returns the dynamic configuration and its ModifyIndex (nil, 0
// when absent). An invalid value is returned as a *DecodeError with the
// index, so an editor can still overwrite it with CAS.
func (c *Client) ReadConfig(ctx context.Context) (*ClusterConfig, uint64, error) {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	p, _, err := c.api.KV().Get(c.ConfigKey(), c.qopts(ctx))
	if err != nil {
		return nil, 0, classify("read config", err)
	}
	return DecodeConfigPair(p)
}

// DecodeConfigPair decodes the config key as read or watched: (nil, 0, nil)
// when absent, a *DecodeError with the index when unreadable.
func DecodeConfigPair(p *api.KVPair) (*ClusterConfig, uint64, error) {
	if p == nil {
		return nil, 0, nil
	}
	cfg := &ClusterConfig{}
	if err := Decode(p.Key, p.Value, cfg); err != nil {
		return nil, p.ModifyIndex, err
	}
	return cfg, p.ModifyIndex, nil
}

// AppendHistory adds an entry to the group history while session holds the
// leader key (CAS on the history's index inside the same transaction).
func (c *Client) AppendHistory(ctx context.Context, group, session string, e HistoryEntry) error {
	for attempt := 0; attempt < 3; attempt++ {
		g, err := c.ReadGroup(ctx, group)
		if err != nil {
			return err
		}
		h := &History{Version: ValueVersion}
		if g.History != nil {
			h.Entries = append(h.Entries, g.History.Entries...)
		}
		h.Entries = append(h.Entries, e)
		if len(h.Entries) > 100 {
			h.Entries = h.Entries[len(h.Entries)-100:]
		}
		val, err := Encode(h)
		if err != nil {
			return err
		}
		verb := &api.KVTxnOp{Verb: api.KVCAS, Key: c.HistoryKey(group), Value: val, Index: g.HistoryIndex}
		ops := api.TxnOps{
			{KV: &api.KVTxnOp{Verb: api.KVCheckSession, Key: c.LeaderKey(group), Session: session}},
			{KV: verb},
		}
		ok, _, err := c.txn(ctx, ops)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
	}
	return fmt.Errorf("consulkv: append history of %s: %w or history kept changing", group, ErrNotHolder)
}

// GroupNames lists the cluster's groups (one cheap keys-only read).
func (c *Client) GroupNames(ctx context.Context) ([]string, error) {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	prefix := c.ClusterPrefix() + "groups/"
	keys, _, err := c.api.KV().Keys(prefix, "/", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, classify("list groups", err)
	}
	var names []string
	for _, k := range keys {
		if n := strings.Trim(strings.TrimPrefix(k, prefix), "/"); n != "" {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names, nil
}
