package pool

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/peer"
)

// TestGossipSpreadsPoolInfoAndHealth checks that memberlist, running over
// the agents' mTLS sessions, tells every agent every other agent's pool
// (failure domain, capacity) and notices an agent that is gone.
func TestGossipSpreadsPoolInfoAndHealth(t *testing.T) {
	c := newCluster(t, fiveNames, func(name string) Config {
		cfg := testConfig(2, 1, 64<<20)
		if name == "c" {
			cfg.Capacity = 32 << 20
		}
		return cfg
	})
	learned := func(n *tnode) bool {
		ms := n.svc.g.Members()
		alive := 0
		for _, m := range ms {
			var info peer.PoolInfo
			if !m.Alive || json.Unmarshal(m.Meta, &info) != nil {
				return false
			}
			want := int64(64 << 20)
			if m.Name == "c" {
				want = 32 << 20
			}
			if info.Name != m.Name || info.Domain != "z-"+m.Name || info.Capacity != want {
				return false
			}
			alive++
		}
		return alive == len(fiveNames)
	}
	for _, name := range fiveNames {
		n := c.nodes[name]
		waitFor(t, name+" to learn every pool by gossip", 20*time.Second, func() bool { return learned(n) })
	}
	// The pool's view of its peers comes from gossip: domains and room.
	a := c.nodes["a"]
	if err := a.svc.Round(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, p := range a.svc.Status(context.Background()).Peers {
		if p.Domain != "z-"+p.Name || !p.Up || p.Lendable <= 0 {
			t.Errorf("a's view of %s: %+v", p.Name, p)
		}
	}
	c.kill("d")
	waitFor(t, "gossip to find d gone", 20*time.Second, func() bool {
		for _, m := range a.svc.g.Members() {
			if m.Name == "d" && m.Alive {
				return false
			}
		}
		return true
	})
}
