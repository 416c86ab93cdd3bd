package pool

import (
	"context"
	"crypto/rand"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/repo/backend"
)

// TestLocalDataReclaimsPeerPortion fills an agent's local portion until it
// needs the space lent to peers: the shards it holds move to other peers,
// every backup keeps its protection level, and nothing is lost.
func TestLocalDataReclaimsPeerPortion(t *testing.T) {
	ctx := context.Background()
	const small = 24 << 20
	c := newCluster(t, fiveNames, func(name string) Config {
		return testConfig(2, 1, small)
	})
	srcs := map[string]string{}
	for i, n := range []string{"b", "c", "d", "e"} {
		src := filepath.Join(t.TempDir(), "src")
		makeTree(t, src, uint64(10+i), 3<<20)
		srcs[n] = src
		backupTo(t, c.nodes[n], "ws", src)
	}
	for _, n := range []string{"b", "c", "d", "e"} {
		waitProtected(t, c.nodes[n], 1, 30*time.Second)
	}
	a := c.nodes["a"]
	before := a.svc.Status(ctx)
	if before.PeerUsed == 0 {
		t.Fatal("a holds no shards; nothing to reclaim")
	}
	t.Logf("a before: local %d, peer %d, free %d", before.LocalUsed, before.PeerUsed, before.Free)

	// Watch every other backup's level while a reclaims its space.
	stopWatch := make(chan struct{})
	watched := make(chan int, 1)
	go func() {
		low := 1 << 30
		for {
			for _, n := range []string{"b", "c", "d", "e"} {
				low = min(low, c.nodes[n].svc.Status(ctx).Protection)
			}
			select {
			case <-stopWatch:
				watched <- low
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	// Local data arrives until it needs most of the peer portion.
	be, err := a.svc.LocalBackend("bulk")
	if err != nil {
		t.Fatal(err)
	}
	want := before.Free + before.PeerUsed*3/4
	written := int64(0)
	for i := 0; written < want; i++ {
		n := min(int64(512<<10), want-written)
		buf := make([]byte, n)
		_, _ = rand.Read(buf)
		if err := be.Save(ctx, backend.Handle{Type: backend.PackFile, Name: "fill" + itoa(i)}, buf); err != nil {
			t.Fatalf("local write %d after %d bytes: %v", i, written, err)
		}
		written += n
	}
	after := a.svc.Status(ctx)
	close(stopWatch)
	if low := <-watched; low < 1 {
		t.Errorf("a backup's protection dropped to %d while shards moved", low)
	}
	t.Logf("a after: local %d, peer %d, free %d", after.LocalUsed, after.PeerUsed, after.Free)
	if after.PeerUsed >= before.PeerUsed || after.LocalUsed+after.PeerUsed > small {
		t.Errorf("peer portion %d -> %d with local %d in a %d pool", before.PeerUsed, after.PeerUsed, after.LocalUsed, small)
	}
	// Every other backup kept its level throughout (checked now) and its
	// map no longer puts moved shards on a.
	for _, n := range []string{"b", "c", "d", "e"} {
		st := c.nodes[n].svc.Status(ctx)
		if st.Protection < 1 || st.Pending != 0 {
			t.Errorf("%s: protection %d, pending %d after the move", n, st.Protection, st.Pending)
		}
	}
	// The pool is now full of local data and unmovable shards: more local
	// data is refused rather than dropping protection.
	err = be.Save(ctx, backend.Handle{Type: backend.PackFile, Name: "toomuch"}, make([]byte, small))
	if !errors.Is(err, ErrPoolFull) {
		t.Errorf("overfilling the pool: %v, want ErrPoolFull", err)
	}
	// Nothing lost: each origin's peer version rebuilds and restores.
	for _, n := range []string{"b", "c", "d", "e"} {
		waitProtected(t, c.nodes[n], 1, 10*time.Second)
		target := t.TempDir()
		if _, err := c.nodes[n].svc.RestoreFromPeers(ctx, RestoreOptions{Repo: "ws", Password: testPass, Target: target, Dest: t.TempDir()}); err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		treesEqual(t, srcs[n], filepath.Join(target, "src"))
	}
	// What a still holds is exactly what the origins' maps place on it.
	for _, n := range []string{"b", "c", "d", "e"} {
		held, _ := a.svc.st.List(n)
		c.nodes[n].svc.mu.Lock()
		mapped := 0
		for _, e := range c.nodes[n].svc.m.Files {
			for _, sh := range e.Shards {
				if sh.Peer == "a" {
					mapped++
				}
			}
		}
		c.nodes[n].svc.mu.Unlock()
		if len(held) != mapped {
			t.Errorf("a holds %d shards of %s, whose map places %d there", len(held), n, mapped)
		}
	}
}
