package pool

import (
	"context"
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/peer"
	"github.com/holdfast/holdfast/internal/wire"
)

var fiveNames = []string{"e", "a", "b", "c", "d"}

// TestDeadPeerReprotectedWithinBound kills a holder for good and checks
// that every backup is back at its protection level within DeadAfter plus
// a few rounds.
func TestDeadPeerReprotectedWithinBound(t *testing.T) {
	c := newCluster(t, fiveNames, func(string) Config { return testConfig(2, 1, 256<<20) })
	a := c.nodes["a"]
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src, 2, 2<<20)
	backupTo(t, a, "laptop", src)
	waitProtected(t, a, 1, 30*time.Second)

	// Kill the peer holding the most shards of a.
	victim, most := "", 0
	for _, p := range a.svc.Status(context.Background()).Peers {
		if p.Holds > most {
			victim, most = p.Name, p.Holds
		}
	}
	if victim == "" || victim == "e" {
		// e holds the CA, but any peer may be killed; only a must stay.
		t.Logf("victim %s holds %d shards", victim, most)
	}
	killed := time.Now()
	c.kill(victim)
	waitFor(t, "a to see the loss", 10*time.Second, func() bool {
		return a.svc.Status(context.Background()).Protection < 1
	})
	bound := a.svc.cfg.DeadAfter.Duration + 10*a.svc.cfg.ScanInterval.Duration + 5*time.Second
	waitProtected(t, a, 1, bound)
	took := time.Since(killed)
	t.Logf("protection restored %v after the kill (bound %v)", took, bound)
	st := a.svc.Status(context.Background())
	for _, p := range st.Peers {
		if p.Name == victim && p.Holds > 0 {
			t.Errorf("the dead peer %s still holds %d shards in the map", victim, p.Holds)
		}
	}
	if st.Protection != 1 {
		t.Errorf("protection %d after repair, want 1", st.Protection)
	}
}

// TestLyingPeerMarkedAndReplaced makes one holder answer proofs wrongly:
// it must be marked and its shards re-created on the others.
func TestLyingPeerMarkedAndReplaced(t *testing.T) {
	c := newCluster(t, fiveNames, func(string) Config { return testConfig(2, 1, 256<<20) })
	a := c.nodes["a"]
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src, 3, 1<<20)
	backupTo(t, a, "laptop", src)
	waitProtected(t, a, 1, 30*time.Second)

	// Honest holders pass.
	for _, r := range a.svc.ProveAll(context.Background()) {
		if !r.OK {
			t.Fatalf("honest proof failed: %+v", r)
		}
	}
	liar := ""
	for _, p := range a.svc.Status(context.Background()).Peers {
		if p.Holds > 0 {
			liar = p.Name
			break
		}
	}
	// The liar deleted what it holds and makes answers up.
	c.nodes[liar].svc.proofHook = func(origin string, ch peer.Challenge, honest peer.Sum, err error) (peer.Sum, error) {
		return peer.SumOf([]byte("made up")), nil
	}
	results := a.svc.ProveAll(context.Background())
	failed := false
	for _, r := range results {
		if r.Peer == liar && !r.OK {
			failed = true
		}
		if r.Peer != liar && !r.OK {
			t.Errorf("honest peer %s failed: %+v", r.Peer, r)
		}
	}
	if !failed {
		t.Fatalf("the lying peer %s passed its proofs: %+v", liar, results)
	}
	waitFor(t, "the liar's shards re-created", 20*time.Second, func() bool {
		st := a.svc.Status(context.Background())
		for _, p := range st.Peers {
			if p.Name == liar && (p.Holds > 0 || p.Failed == "") {
				return false
			}
		}
		return st.Protection == 1
	})
}

// TestCorruptShardDetectedAndReplaced corrupts a held shard on disk: a
// rebuild detects it by checksum, uses another shard, restores the file
// intact, and the bad shard is replaced.
func TestCorruptShardDetectedAndReplaced(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, fiveNames, func(string) Config { return testConfig(2, 1, 256<<20) })
	a := c.nodes["a"]
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src, 4, 1<<20)
	backupTo(t, a, "laptop", src)
	waitProtected(t, a, 1, 30*time.Second)

	// Corrupt data shard 0 of the largest file where its holder keeps it.
	a.svc.mu.Lock()
	var big *peer.FileEntry
	for _, e := range a.svc.m.Files {
		if big == nil || e.Size > big.Size {
			big = e
		}
	}
	holder := big.Shards[0].Peer
	ref := big.FileRef
	a.svc.mu.Unlock()
	p := filepath.Join(c.nodes[holder].svc.st.Dir(), filepath.FromSlash(peer.ShardPath("a", ref, 0)))
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x40
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}

	// Lose the local copy, then rebuild from peers.
	if err := os.RemoveAll(a.svc.LocalRepoDir("laptop")); err != nil {
		t.Fatal(err)
	}
	res, err := a.svc.Rebuild(ctx, RebuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.CorruptShards) != 1 || !strings.Contains(res.CorruptShards[0], ref.Name+"#0@"+holder) {
		t.Fatalf("corrupt shards reported %v, want shard 0 of %s on %s", res.CorruptShards, ref.Name, holder)
	}
	got, err := a.svc.loadLocal(ctx, ref)
	if err != nil || peer.SumOf(got) != big.Sum {
		t.Fatalf("rebuilt %s does not match (err %v)", ref.Key(), err)
	}
	// The next rounds re-create the bad shard: the holder's copy is good
	// again or the shard lives elsewhere, and it checks out.
	waitFor(t, "the corrupt shard replaced", 20*time.Second, func() bool {
		a.svc.mu.Lock()
		e := a.svc.m.Files[ref.Key()]
		sh := e.Shards[0]
		a.svc.mu.Unlock()
		if sh.Peer == "" {
			return false
		}
		data, err := c.nodes[sh.Peer].svc.st.Read("a", peer.ShardID{Ref: ref, Idx: 0}, 0, 0)
		return err == nil && peer.SumOf(data) == sh.Sum
	})
	target := t.TempDir()
	if _, err := a.svc.RestoreFromPeers(ctx, RestoreOptions{Repo: "laptop", Password: testPass, Target: target, Dest: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	treesEqual(t, src, filepath.Join(target, "src"))
}

// TestFullPeerGetsNoShards gives one peer a pool with no room: placement
// goes to the others and protection is still reached.
func TestFullPeerGetsNoShards(t *testing.T) {
	c := newCluster(t, fiveNames, func(name string) Config {
		if name == "b" {
			return testConfig(2, 1, MinCapacity)
		}
		return testConfig(2, 1, 256<<20)
	})
	a := c.nodes["a"]
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src, 5, 3<<20)
	backupTo(t, a, "laptop", src)
	waitProtected(t, a, 1, 30*time.Second)
	held, _ := c.nodes["b"].svc.st.Held()
	if held > MinCapacity {
		t.Errorf("full peer b holds %d bytes, over its %d capacity", held, MinCapacity)
	}
	// A put beyond its room is refused by b itself.
	err := c.nodes["b"].svc.st.Put("a", peer.PutHeader{ShardID: peer.ShardID{Ref: peer.FileRef{Repo: "r", Type: "data", Name: "x"}}, Total: 2 * MinCapacity}, make([]byte, 10))
	if err == nil || !strings.Contains(err.Error(), "pool full") {
		t.Errorf("oversized put on a full peer: %v", err)
	}
}

// TestRogueWithoutCertificateRefused connects without a cluster
// certificate and asks for shards: the agent refuses.
func TestRogueWithoutCertificateRefused(t *testing.T) {
	c := newCluster(t, []string{"e", "a"}, func(string) Config { return testConfig(1, 1, 64<<20) })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// A rogue trusts the cluster (it could even have stolen the CA cert)
	// but has no node certificate of its own.
	ca := c.nodes["e"].a.Identity().ClientTLS(testLogger(t))
	rogueTLS := &tls.Config{RootCAs: ca.RootCAs, ServerName: ca.ServerName, InsecureSkipVerify: ca.InsecureSkipVerify, VerifyPeerCertificate: ca.VerifyPeerCertificate, MinVersion: tls.VersionTLS13}
	s, err := wire.Dial(ctx, "tcp", c.nodes["a"].addr, rogueTLS, &wire.Config{Node: "rogue"}, nil)
	if err != nil {
		return // refused at the handshake: good
	}
	defer s.Close()
	_, err = s.Call(ctx, peer.MsgMapGet, []byte(`{"origin":"a"}`))
	if err == nil {
		t.Fatal("a peer without a certificate read a shard map")
	}
	var re *wire.RemoteError
	if errors.As(err, &re) {
		t.Logf("refused with a remote error: %v", err)
	}
}
