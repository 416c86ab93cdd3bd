package pool

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/peer"
)

func TestRebalancePicksDoubledShards(t *testing.T) {
	cand := func(name string, free int64, ok bool) peer.Candidate {
		return peer.Candidate{Name: name, Domain: name, Free: free, Healthy: ok}
	}
	for _, tc := range []struct {
		name    string
		holders []string
		cands   []peer.Candidate
		want    string
	}{
		{"doubled, free peer appears", []string{"a", "a", "b", "c"}, []peer.Candidate{cand("a", 99, true), cand("b", 99, true), cand("c", 99, true), cand("d", 99, true)}, "[1]"},
		{"doubled, no other peer", []string{"a", "a", "b", "c"}, []peer.Candidate{cand("a", 99, true), cand("b", 99, true), cand("c", 99, true)}, "[]"},
		{"doubled, other peer full", []string{"a", "a", "b", "c"}, []peer.Candidate{cand("a", 99, true), cand("b", 99, true), cand("c", 99, true), cand("d", 1, true)}, "[]"},
		{"doubled, other peer unhealthy", []string{"a", "a", "b", "c"}, []peer.Candidate{cand("d", 99, false)}, "[]"},
		{"tripled, two free peers", []string{"a", "a", "a", "b"}, []peer.Candidate{cand("c", 99, true), cand("d", 99, true)}, "[1 2]"},
		{"already distinct", []string{"a", "b", "c", "d"}, []peer.Candidate{cand("e", 99, true)}, "[]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := &peer.FileEntry{Scheme: peer.Scheme{K: 2, M: 2}, ShardSize: 10}
			for _, h := range tc.holders {
				e.Shards = append(e.Shards, peer.Shard{Peer: h})
			}
			idxs, _ := rebalance(e, tc.cands)
			if got := fmt.Sprint(idxs); got != tc.want && !(got == "[]" && tc.want == "[]") {
				t.Errorf("rebalance moves %s, want %s", got, tc.want)
			}
		})
	}
}

// TestNewPeerRestoresTargetLevel starts with too few peers for 2+2 on
// distinct peers (shards double up: level 1), then adds a peer: shards
// spread onto it and the backup reaches its target level 2.
func TestNewPeerRestoresTargetLevel(t *testing.T) {
	c := newCluster(t, []string{"e", "a", "b", "c"}, func(string) Config { return testConfig(2, 2, 256<<20) })
	a := c.nodes["a"]
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src, 21, 1<<20)
	backupTo(t, a, "laptop", src)
	waitProtected(t, a, 1, 30*time.Second)
	if st := a.svc.Status(context.Background()); st.Protection != 1 {
		t.Fatalf("with 3 peers for 4 shards: protection %d, want 1", st.Protection)
	}
	c.join("d", filepath.Join(c.root, "d"))
	c.start("d", filepath.Join(c.root, "d"), testConfig(2, 2, 256<<20))
	took := waitProtected(t, a, 2, 30*time.Second)
	t.Logf("target level reached %v after the new peer started", took)
	held, _ := c.nodes["d"].svc.st.Held()
	if held == 0 {
		t.Error("the new peer holds no shards")
	}
	// Moved shards were deleted from their old holders: every holder's
	// store matches the map.
	for _, p := range []string{"b", "c", "d", "e"} {
		l, _ := c.nodes[p].svc.st.List("a")
		mapped := 0
		a.svc.mu.Lock()
		for _, e := range a.svc.m.Files {
			for _, sh := range e.Shards {
				if sh.Peer == p {
					mapped++
				}
			}
		}
		a.svc.mu.Unlock()
		if len(l) != mapped {
			waitFor(t, p+" store to match the map", 5*time.Second, func() bool {
				l, _ = c.nodes[p].svc.st.List("a")
				return len(l) == mapped
			})
		}
	}
}
