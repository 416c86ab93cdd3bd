package pool

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

// TestFiveAgentsDisasterRestore is the proof: five agents, a tree
// backed up on one, two peers killed (m = 2) and the origin's pool
// deleted; a fresh agent with the repository passphrase rebuilds the
// repository from the remaining peers and restores it byte for byte. No
// peer's state holds a byte of the marker plaintext.
func TestFiveAgentsDisasterRestore(t *testing.T) {
	ctx := context.Background()
	names := []string{"e", "a", "b", "c", "d"} // e holds the CA; a is the origin
	c := newCluster(t, names, func(string) Config { return testConfig(2, 2, 256<<20) })
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src, 1, 3<<20)
	if len(grepTree(t, src, []byte(marker))) == 0 {
		t.Fatal("the source tree lacks the marker; the plaintext check would prove nothing")
	}
	a := c.nodes["a"]
	backupTo(t, a, "laptop", src)
	waitProtected(t, a, 2, 30*time.Second)

	st := a.svc.Status(ctx)
	if st.Protection != 2 || len(st.Backups) != 1 || st.Backups[0].Files < 5 {
		t.Fatalf("status after protection: %+v", st)
	}
	// Every shard of every file on a distinct peer (4 peers, 2+2 shards).
	a.svc.mu.Lock()
	for k, e := range a.svc.m.Files {
		if h := e.Holders(); len(h) != 4 || h["a"] != 0 {
			t.Errorf("file %s: holders %v, want 4 distinct peers other than a", k, h)
		}
	}
	a.svc.mu.Unlock()
	for _, p := range []string{"b", "c", "d", "e"} {
		if hits := grepTree(t, c.nodes[p].dir, []byte(marker)); len(hits) > 0 {
			t.Errorf("peer %s holds plaintext: %v", p, hits)
		}
		if used, _ := c.nodes[p].svc.st.Held(); used == 0 {
			t.Errorf("peer %s holds no shards", p)
		}
	}

	// Disaster: the origin's pool and two peers are gone.
	c.kill("a")
	c.kill("b")
	c.kill("c")

	// A fresh agent re-joins under the origin's name with an empty pool.
	dir := filepath.Join(c.root, "a-new")
	c.join("a", dir)
	fresh := c.start("a", dir, testConfig(2, 2, 256<<20))
	c.waitPeers(fresh, 2)
	target := t.TempDir()
	res, err := fresh.svc.RestoreFromPeers(ctx, RestoreOptions{Repo: "laptop", Password: testPass, Target: target, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if res.Rebuild.Files != st.Backups[0].Files || !res.Rebuild.Adopted {
		t.Errorf("rebuild %+v, want %d files, adopted", res.Rebuild, st.Backups[0].Files)
	}
	treesEqual(t, src, filepath.Join(target, "src"))
}
