package pool

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/peer"
	"github.com/holdfast/holdfast/internal/repo/backend"
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

// TestRemovedFilesDropPeerVersionLostFilesKeepIt: a file a client removes
// through the agent (prune) loses its peer version; files that vanish
// otherwise (a lost directory) keep theirs, so they can be restored.
func TestRemovedFilesDropPeerVersionLostFilesKeepIt(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, []string{"e", "a", "b", "c"}, func(string) Config { return testConfig(1, 1, 64<<20) })
	a := c.nodes["a"]
	be, err := a.svc.LocalBackend("r")
	if err != nil {
		t.Fatal(err)
	}
	if err := be.Create(ctx); err != nil {
		t.Fatal(err)
	}
	for _, h := range []backend.Handle{{Type: backend.ConfigFile}, {Type: backend.PackFile, Name: "p1"}, {Type: backend.PackFile, Name: "p2"}} {
		if err := be.Save(ctx, h, []byte("ciphertext of "+h.String())); err != nil {
			t.Fatal(err)
		}
	}
	waitProtected(t, a, 1, 20*time.Second)
	files := func() int {
		a.svc.mu.Lock()
		defer a.svc.mu.Unlock()
		return len(a.svc.m.Files)
	}
	if n := files(); n != 3 {
		t.Fatalf("%d files in the peer version, want 3", n)
	}
	if err := be.Remove(ctx, backend.Handle{Type: backend.PackFile, Name: "p1"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the removed pack's peer version dropped", 10*time.Second, func() bool { return files() == 2 })
	waitFor(t, "its shards deleted", 10*time.Second, func() bool {
		for _, p := range []string{"b", "c", "e"} {
			l, _ := c.nodes[p].svc.st.List("a")
			for _, h := range l {
				if h.Ref.Name == "p1" {
					return false
				}
			}
		}
		return true
	})
	// p2 disappears behind the agent's back: it is a lost copy.
	if err := os.Remove(filepath.Join(a.svc.LocalRepoDir("r"), "data", "p2"[:2], "p2")); err != nil {
		t.Fatal(err)
	}
	if err := a.svc.Round(ctx); err != nil {
		t.Fatal(err)
	}
	if n := files(); n != 2 {
		t.Fatalf("a lost local file dropped its peer version: %d files left, want 2", n)
	}
}
