package consulkv

import (
	"testing"

	"github.com/hashicorp/consul/api"
)

func kvPairs(values map[string]string, sessions map[string]string) api.KVPairs {
	var out api.KVPairs
	i := uint64(1)
	for k, v := range values {
		out = append(out, &api.KVPair{Key: k, Value: []byte(v), ModifyIndex: i, Session: sessions[k]})
		i++
	}
	return out
}

// FuzzDecodeValues feeds arbitrary bytes to every value decoder: they must
// return an error or a value that validates, never panic.
func FuzzDecodeValues(f *testing.F) {
	f.Add([]byte(`{"version":1,"member":"a"}`))
	f.Add([]byte(`{"version":1,"name":"a","role":"primary","port":5432}`))
	f.Add([]byte(`{"version":1,"kind":"switchover","leader":"a","scheduled_at":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"version":1,"ttl":"30s","loop_wait":10,"retry_timeout":10}`))
	f.Add([]byte(`{"version":1,"entries":[{"timeline":1,"lsn":5}]}`))
	f.Add([]byte("\x00\xff"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, v := range []Value{&Initialize{}, &Leader{}, &MemberStatus{}, &FailoverRequest{}, &GroupStatus{}, &History{}, &SyncState{}, &ClusterConfig{}} {
			if err := Decode("k", data, v); err == nil {
				if err := v.Validate(); err != nil {
					t.Fatalf("%T decoded but does not validate: %v", v, err)
				}
			}
		}
	})
}

// FuzzDecodeGroup checks that no key/value combination breaks the group view.
func FuzzDecodeGroup(f *testing.F) {
	f.Add("members/a", []byte(`{"version":1,"name":"a","role":"replica"}`), "s")
	f.Add("leader", []byte(`junk`), "")
	f.Add("failover", []byte(`{"version":1}`), "")
	c, _ := New(Config{Cluster: "c"})
	f.Fuzz(func(t *testing.T, leaf string, value []byte, session string) {
		g := c.DecodeGroup("g", 1, api.KVPairs{{Key: c.GroupPrefix("g") + leaf, Value: value, Session: session, ModifyIndex: 1}})
		for name, m := range g.Members {
			if m == nil || m.Name != name {
				t.Fatalf("member %q decoded inconsistently: %+v", name, m)
			}
		}
	})
}
