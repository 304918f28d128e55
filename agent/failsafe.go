package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/pgmesh/pgmesh/consulkv"
	"github.com/pgmesh/pgmesh/health"
	"go.uber.org/zap"
)

// Failsafe mode (failsafe_mode: true, Patroni's DCS failsafe mode) keeps a
// primary writable while Consul cannot be reached at all, for instance
// while its servers have lost quorum or elect a leader. A leader whose
// Consul round fails asks every other member it last saw in Consul (POST
// /failsafe). A member accepts only if it cannot reach Consul either (it
// tries, with a short timeout, when asked) and does not run as a primary;
// accepting is a promise not to take the leader lock for a ttl from then.
// Only when every member accepted does the leader stay primary, until
// 0.8·ttl after it sent the requests (so every promise outlasts it); then it
// asks again, each loop. A leader cut off from Consul alone is refused by
// members that still reach Consul, and demotes when its lease ends as
// without failsafe mode; replicas never promote without Consul.

// failsafeAskTimeout bounds one POST /failsafe; failsafeConsulProbe bounds
// the asked member's own Consul read, which must end well before the
// asker gives up on the answer.
const (
	failsafeAskTimeout   = 2 * time.Second
	failsafeConsulProbe  = 800 * time.Millisecond
	failsafePromiseSlack = 5 // the leader's hold is promise·(slack-1)/slack
)

// failsafeState is shared between the loop and the REST API.
type failsafeState struct {
	mu sync.Mutex
	// enabled and ttl mirror the cluster config the loop last adopted.
	enabled bool
	ttl     time.Duration
	// members: the group as last seen in Consul (name → REST API URL).
	members map[string]string
	// until: the leader's hold (zero when not in failsafe).
	until time.Time
	// promisedTo / promisedUntil: the leader this member promised not to
	// replace, and until when.
	promisedTo    string
	promisedUntil time.Time
}

func (f *failsafeState) configure(enabled bool, ttl time.Duration, g *consulkv.GroupView) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.enabled, f.ttl = enabled, ttl
	if !enabled {
		f.until, f.promisedTo, f.promisedUntil = time.Time{}, "", time.Time{}
	}
	if g != nil {
		m := map[string]string{}
		for name, st := range g.Members {
			if st.APIURL != "" {
				m[name] = st.APIURL
			}
		}
		f.members = m
	}
}

// settings is the mode and ttl the loop last adopted.
func (f *failsafeState) settings() (enabled bool, ttl time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.enabled, f.ttl
}

// holdUntil is the end of the leader's failsafe hold (zero: none).
func (f *failsafeState) holdUntil() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.until
}

func (f *failsafeState) setHold(until time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.until = until
}

// promise is the leader this member promised not to replace ("" none).
func (f *failsafeState) promise(now time.Time) (string, time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.promisedTo == "" || !now.Before(f.promisedUntil) {
		return "", time.Time{}
	}
	return f.promisedTo, f.promisedUntil
}

// Failsafe implements health.FailsafeController: it judges a leader's
// request as described above.
func (a *Agent) Failsafe(ctx context.Context, req health.FailsafeRequest) (health.FailsafeAnswer, error) {
	enabled, ttl := a.failsafe.settings()
	if !enabled {
		return health.FailsafeAnswer{}, health.ErrFailsafeOff
	}
	st := a.State()
	ans := health.FailsafeAnswer{LSN: max(st.ReceiveLSN, st.ReplayLSN)}
	switch {
	case req.Name == a.cfg.Name:
		ans.Refusal, ans.Code = "that is this member's own name", http.StatusConflict
		return ans, nil
	case st.PGRunning && st.Role == consulkv.RolePrimary:
		ans.Refusal = "Running as a leader"
		return ans, nil
	}
	// A member that still reaches Consul must not confirm: the leader is
	// cut off alone, and the group fails over without it as usual.
	pctx, cancel := context.WithTimeout(ctx, failsafeConsulProbe)
	defer cancel()
	if g, err := a.kv.ReadGroup(pctx, a.cfg.Group); err == nil {
		holder := "nobody"
		if g.Leader != nil && g.Leader.Member != "" {
			holder = g.Leader.Member
		}
		ans.Refusal, ans.Code = fmt.Sprintf("consul is reachable from %s (the leader key is held by %s): %s is cut off from Consul alone", a.cfg.Name, holder, req.Name), http.StatusConflict
		return ans, nil
	}
	now := time.Now()
	a.failsafe.mu.Lock()
	if a.failsafe.promisedTo != req.Name || !now.Before(a.failsafe.promisedUntil) {
		a.log.Warn("failsafe: consul unreachable from here too; promising not to take over from the leader", zap.String("leader", req.Name), zap.Duration("for", ttl))
	}
	a.failsafe.promisedTo, a.failsafe.promisedUntil = req.Name, now.Add(ttl)
	a.failsafe.mu.Unlock()
	ans.Accepted = true
	return ans, nil
}

// FailsafeMembers implements health.FailsafeController (GET /failsafe).
func (a *Agent) FailsafeMembers() (map[string]string, error) {
	a.failsafe.mu.Lock()
	defer a.failsafe.mu.Unlock()
	if !a.failsafe.enabled {
		return nil, health.ErrFailsafeOff
	}
	out := map[string]string{}
	for k, v := range a.failsafe.members {
		out[k] = v
	}
	return out, nil
}

// failsafeRound is the leader's side: with Consul unreachable, ask every
// other member; when all accept, hold the primary until 0.8·ttl after the
// requests went out. It returns the hold (zero when refused) and why not.
func (a *Agent) failsafeRound(ctx context.Context, timeline uint32) (time.Time, string) {
	a.failsafe.mu.Lock()
	members := map[string]string{}
	for k, v := range a.failsafe.members {
		members[k] = v
	}
	ttl := a.failsafe.ttl
	a.failsafe.mu.Unlock()
	if len(members) == 0 {
		return time.Time{}, "no group view from Consul to ask"
	}
	if _, ok := members[a.cfg.Name]; !ok {
		members[a.cfg.Name] = a.apiURL()
	}
	body, _ := json.Marshal(health.FailsafeRequest{Name: a.cfg.Name, APIURL: a.apiURL(), ConnURL: a.connURL(), Timeline: timeline, Members: members})
	sent := time.Now()
	client := a.peerClient(failsafeAskTimeout)
	defer client.CloseIdleConnections()
	var mu sync.Mutex
	var refusals []string
	var wg sync.WaitGroup
	for name, url := range members {
		if name == a.cfg.Name {
			continue
		}
		wg.Add(1)
		go func(name, url string) {
			defer wg.Done()
			if why := a.askFailsafe(ctx, client, url, body); why != "" {
				mu.Lock()
				refusals = append(refusals, name+": "+why)
				mu.Unlock()
			}
		}(name, url)
	}
	wg.Wait()
	if len(refusals) > 0 {
		sort.Strings(refusals)
		return time.Time{}, strings.Join(refusals, "; ")
	}
	return sent.Add(ttl * (failsafePromiseSlack - 1) / failsafePromiseSlack), ""
}

// askFailsafe posts the request to one member: "" when it accepted, else
// what it said.
func (a *Agent) askFailsafe(ctx context.Context, client *http.Client, url string, body []byte) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/failsafe", bytes.NewReader(body))
	if err != nil {
		return err.Error()
	}
	req.Header.Set("Content-Type", "application/json")
	if ba := a.basicAuth(); ba != nil {
		req.SetBasicAuth(ba.Username, ba.Password)
	}
	resp, err := client.Do(req)
	if err != nil {
		return shortErr(err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode == http.StatusOK && string(msg) == "Accepted" {
		return ""
	}
	return fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(msg)))
}

// observeFailsafe fills the observation's failsafe fields: a leader that
// could not reach Consul this round asks its members (each round, so the
// hold is renewed before it ends); a member reports its promise.
func (a *Agent) observeFailsafe(ctx context.Context, o *Observation) {
	o.PromisedTo, o.PromisedUntil = a.failsafe.promise(o.Now)
	if o.ConsulOK {
		if !a.failsafe.holdUntil().IsZero() {
			a.failsafe.setHold(time.Time{})
			a.log.Info("failsafe: consul reachable again; leaving failsafe mode")
		}
		return
	}
	if !a.dyn.FailsafeOn() || !o.Local.Running || o.Local.InRecovery {
		return
	}
	// Only the member that led when Consul went away (or holds already).
	if !a.State().IsLeader && !o.Now.Before(a.failsafe.holdUntil()) {
		return
	}
	until, why := a.failsafeRound(ctx, o.Local.Timeline)
	had := o.Now.Before(a.failsafe.holdUntil())
	// The round took up to failsafeAskTimeout: judge the lease as of now.
	o.Now = time.Now()
	o.LeaseValid = a.lock.LeaseValid(o.Now)
	if why != "" {
		o.FailsafeWhy = why
		a.failsafe.setHold(time.Time{})
		a.log.Warn("failsafe: not every member confirmed; the primary stays only while its lease lasts", zap.String("refused_by", why))
		return
	}
	a.failsafe.setHold(until)
	o.FailsafeUntil = until
	if !had {
		a.log.Warn("failsafe: consul unreachable; every member of the group confirmed, staying primary", zap.Time("hold_until", until))
	}
}
