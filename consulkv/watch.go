package consulkv

import (
	"context"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/hashicorp/consul/api"
)

// KVPairs is what a watch delivers.
type KVPairs = api.KVPairs

// WatchOptions tune a blocking watch.
type WatchOptions struct {
	// Wait is the longest one blocking query waits (default 5m).
	Wait time.Duration
	// MaxBackoff caps the retry delay after errors (default 10s).
	MaxBackoff time.Duration
	// OnError, if set, is told about every failed query.
	OnError func(error)
	// OnSuccess, if set, is told about every query that succeeded, changed
	// or not (WatchPrefix): how a watcher learns that a source that failed
	// is back although nothing under the prefix changed.
	OnSuccess func()
	// MinInterval, if set, is the shortest time between two deliveries:
	// under write load a prefix changes every few milliseconds (members
	// publish their WAL positions), and a consumer that re-reads the whole
	// tree on each change would keep Consul busy for nothing. A change
	// after a quiet period is still delivered at once.
	MinInterval time.Duration
}

// WatchPrefix calls fn with every new state of the keys under prefix, using
// Consul blocking queries (push-style: no polling), until ctx ends. The
// first call comes at once with the current state. Errors are retried with
// exponential backoff; the index is reset when Consul's index goes
// backwards (e.g. after a snapshot restore), as Consul's docs ask.
func (c *Client) WatchPrefix(ctx context.Context, prefix string, o WatchOptions, fn func(index uint64, pairs KVPairs)) {
	bo := o.withDefaults()
	var index uint64
	var delivered time.Time
	for ctx.Err() == nil {
		if wait := o.MinInterval - time.Since(delivered); o.MinInterval > 0 && wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
		pairs, newIndex, err := c.list(ctx, prefix, index, o.Wait)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if o.OnError != nil {
				o.OnError(err)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(bo.NextBackOff()):
			}
			continue
		}
		bo.Reset()
		if o.OnSuccess != nil {
			o.OnSuccess()
		}
		switch {
		case newIndex < index:
			index = 0
			continue
		case newIndex == index:
			continue // wait timed out with no change
		}
		if newIndex == 0 {
			newIndex = 1
		}
		index = newIndex
		delivered = time.Now()
		fn(index, pairs)
	}
}

// WatchKey calls fn with every new version of one key (pair nil while the
// key is absent), using blocking queries, until ctx ends. The first call
// comes at once with the current state. Unlike WatchPrefix it does not wake
// on writes to neighbouring keys: Consul's blocking query on a single key
// returns only when that key changes, which keeps an idle agent from being
// woken by every member-key write in its group.
func (c *Client) WatchKey(ctx context.Context, key string, o WatchOptions, fn func(index uint64, pair *api.KVPair)) {
	bo := o.withDefaults()
	var index uint64
	first := true
	var last *api.KVPair
	for ctx.Err() == nil {
		qctx, cancel := context.WithTimeout(ctx, o.Wait+o.Wait/16+c.timeout)
		q := &api.QueryOptions{WaitIndex: index, WaitTime: o.Wait}
		pair, meta, err := c.api.KV().Get(key, q.WithContext(qctx))
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if o.OnError != nil {
				o.OnError(classify("watch "+key, err))
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(bo.NextBackOff()):
			}
			continue
		}
		bo.Reset()
		newIndex := meta.LastIndex
		if newIndex < index {
			index = 0
			continue
		}
		if newIndex == 0 {
			newIndex = 1
		}
		index = newIndex
		if !first && samePair(last, pair) {
			continue // woken without a change to this key (index moved elsewhere)
		}
		first = false
		last = pair
		fn(index, pair)
	}
}

func samePair(x, y *api.KVPair) bool {
	if x == nil || y == nil {
		return x == nil && y == nil
	}
	return x.ModifyIndex == y.ModifyIndex && x.Session == y.Session && x.Flags == y.Flags
}

// withDefaults fills o's zero fields and returns the retry backoff.
func (o *WatchOptions) withDefaults() *backoff.ExponentialBackOff {
	if o.Wait <= 0 {
		o.Wait = 5 * time.Minute
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 10 * time.Second
	}
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 100 * time.Millisecond
	bo.MaxInterval = o.MaxBackoff
	bo.MaxElapsedTime = 0
	return bo
}
