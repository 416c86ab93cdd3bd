package pool

import (
	"bytes"
	"context"
	"encoding/hex"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/holdfast/holdfast/internal/agent"
	"github.com/holdfast/holdfast/internal/bulk"
	"github.com/holdfast/holdfast/internal/repo"
	"github.com/holdfast/holdfast/internal/repo/backend"
)

// startBulkAgent starts one agent with a TCP API and the bulk transfer
// service, and a client identity (laptop) that runs no agent.
func startBulkAgent(t *testing.T) (n *tnode, apiAddr, clientDir string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	apiAddr = ln.Addr().String()
	ln.Close()
	c := &tcluster{t: t, root: t.TempDir(), nodes: map[string]*tnode{}, apiListen: map[string]string{"e": apiAddr}, bulk: true}
	dir := filepath.Join(c.root, "e")
	if _, err := agent.Init(dir, agent.InitOptions{Name: "e", Listen: "127.0.0.1:0"}); err != nil {
		t.Fatal(err)
	}
	c.caDir = dir
	n = c.start("e", dir, testConfig(1, 1, 256<<20))
	c.caAddr = n.addr
	clientDir = filepath.Join(c.root, "laptop")
	c.join("laptop", clientDir)
	return n, apiAddr, clientDir
}

// dialWhenUp dials the agent's TCP API, waiting for it to serve by
// creating the repository's directories.
func dialWhenUp(t *testing.T, apiAddr, clientDir, repoName string, o AgentBackendOptions) *AgentBackend {
	var be *AgentBackend
	waitFor(t, "the TCP API", 10*time.Second, func() bool {
		var err error
		be, err = DialAgentBackendWith(apiAddr, clientDir, repoName, o)
		if err != nil {
			t.Fatal(err)
		}
		if err = be.Create(context.Background()); err != nil {
			be.Close()
			return false
		}
		return true
	})
	t.Cleanup(func() { be.Close() })
	return be
}

// backupRestore initialises a repository on be, backs up a generated tree
// of size bytes into it, restores it through be and compares.
func backupRestore(t *testing.T, be backend.Backend, seed uint64, size int) (src string, sn *repo.Snapshot) {
	t.Helper()
	ctx := context.Background()
	r, err := repo.Init(ctx, be, testPass, testInitOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	src = filepath.Join(t.TempDir(), "src")
	makeTree(t, src, seed, size)
	sn, _, err = r.Backup(ctx, []string{src}, repo.BackupOptions{Hostname: "laptop"})
	if err != nil {
		t.Fatal(err)
	}
	target := t.TempDir()
	if _, err := r.Restore(ctx, sn.ID, target, repo.RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	treesEqual(t, src, filepath.Join(target, "src"))
	return src, sn
}

// agentRepo creates repository name in n's pool through its unix socket
// API (directories and a config file) and returns the backend.
func agentRepo(t *testing.T, n *tnode, name string) *AgentBackend {
	t.Helper()
	ctx := context.Background()
	be, err := DialAgentBackend(n.dir, "", name, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	if err := be.Create(ctx); err != nil {
		t.Fatal(err)
	}
	if err := be.Save(ctx, backend.Handle{Type: backend.ConfigFile}, []byte("config")); err != nil {
		t.Fatal(err)
	}
	return be
}

// packSizes lists the pack files of a local repository directory.
func packSizes(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	l, err := backend.NewLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	if err := l.List(context.Background(), backend.PackFile, func(fi backend.FileInfo) error { out[fi.Name] = fi.Size; return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

// filesUnder lists the regular files under dir (relative paths).
func filesUnder(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

// TestBackupPacksByBulk backs up to an agent over its mTLS API with packs
// above the threshold travelling by bulk transfer and adopted by the pool:
// every such pack went that way (and no smaller one did), the agent
// adopted exactly those bytes, nothing is left in its staging directory,
// and the repository passes check --read-data and restores.
func TestBackupPacksByBulk(t *testing.T) {
	ctx := context.Background()
	n, apiAddr, clientDir := startBulkAgent(t)
	const threshold = 256 << 10
	be := dialWhenUp(t, apiAddr, clientDir, "laptop", AgentBackendOptions{BulkThreshold: threshold, Logger: testLogger(t)})
	src, sn := backupRestore(t, be, 57, 6<<20)

	packs := packSizes(t, n.svc.LocalRepoDir("laptop"))
	var big, bigBytes, small, smallBytes int64
	for _, sz := range packs {
		if sz >= threshold {
			big, bigBytes = big+1, bigBytes+sz
		} else {
			small, smallBytes = small+1, smallBytes+sz
		}
	}
	pt := be.PackTransfers()
	t.Logf("packs: %d by bulk (%d bytes), %d through the API (%d bytes)", pt.Bulk, pt.BulkBytes, pt.API, pt.APIBytes)
	if big == 0 || pt.Bulk != big || pt.BulkBytes != bigBytes || pt.API != small || pt.APIBytes != smallBytes {
		t.Errorf("pack transfers %+v; the repository holds %d packs ≥ threshold (%d bytes) and %d smaller (%d bytes)", pt, big, bigBytes, small, smallBytes)
	}
	if ap, ab := n.svc.Adopted(); ap != big || ab != bigBytes {
		t.Errorf("the agent adopted %d packs (%d bytes), want %d (%d)", ap, ab, big, bigBytes)
	}
	if left := filesUnder(t, filepath.Join(n.dir, bulk.InboxDir)); len(left) != 0 {
		t.Errorf("files left in the transfer root: %v", left)
	}

	// The agent's copy is a sound repository.
	local, _ := backend.NewLocal(n.svc.LocalRepoDir("laptop"))
	lr, err := repo.Open(ctx, local, testPass, repo.OpenOptions{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer lr.Close()
	res, err := lr.Check(ctx, repo.CheckOptions{ReadData: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Errors)+len(res.DamagedPacks)+len(res.DamagedBlobs)+len(res.UnreferencedPacks) != 0 || res.PacksRead != int64(len(packs)) {
		t.Fatalf("check --read-data of the agent's copy: %+v (%d packs stored)", res, len(packs))
	}
	target := t.TempDir()
	if _, err := lr.Restore(ctx, sn.ID, target, repo.RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	treesEqual(t, src, filepath.Join(target, "src"))
}

// TestBackupBulkUnreachable sends packs to a wire address nobody serves:
// the first bulk transfer fails, the pack and every later one go through
// the API, and the backup is whole.
func TestBackupBulkUnreachable(t *testing.T) {
	n, apiAddr, clientDir := startBulkAgent(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	be := dialWhenUp(t, apiAddr, clientDir, "laptop", AgentBackendOptions{Bulk: dead, BulkThreshold: 1, Logger: testLogger(t)})
	backupRestore(t, be, 58, 2<<20)
	packs := packSizes(t, n.svc.LocalRepoDir("laptop"))
	if pt := be.PackTransfers(); pt.Bulk != 0 || pt.API != int64(len(packs)) {
		t.Errorf("pack transfers %+v, want all %d packs through the API", pt, len(packs))
	}
}

// TestAdoptRefusals asks the adopt route to take files it must refuse and
// checks each answer and that nothing reached the repository.
func TestAdoptRefusals(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, []string{"e"}, func(string) Config { return testConfig(1, 1, 64<<20) })
	n := c.nodes["e"]
	be := agentRepo(t, n, "r1")
	root := filepath.Join(n.dir, bulk.InboxDir)
	stage := filepath.Join(root, AdoptDir, "r1")
	if err := os.MkdirAll(stage, 0o700); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	content := func(size int) ([]byte, string) {
		b := make([]byte, size)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		s := blake3.Sum256(b)
		return b, hex.EncodeToString(s[:])
	}
	write := func(p string, b []byte) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	adoptIn := func(repoName, typ, name, from string) (int, string) {
		t.Helper()
		u := "http://agent/v1/pool/repos/" + repoName + "/adopt/" + typ + "/" + name + "?from=" + url.QueryEscape(from)
		req, _ := http.NewRequestWithContext(ctx, "POST", u, nil)
		resp, err := be.hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var buf bytes.Buffer
		buf.ReadFrom(resp.Body)
		return resp.StatusCode, buf.String()
	}
	adopt := func(typ, name, from string) (int, string) {
		t.Helper()
		return adoptIn("r1", typ, name, from)
	}
	stored := func(name string) bool {
		_, err := os.Stat(filepath.Join(n.svc.LocalRepoDir("r1"), "data", name[:2], name))
		return err == nil
	}

	good, goodName := content(100 << 10)
	outside := filepath.Join(t.TempDir(), "secret")
	write(outside, good)
	write(filepath.Join(root, "other", goodName), good)
	write(filepath.Join(root, AdoptDir, "r2", goodName), good)
	if err := os.Symlink(outside, filepath.Join(stage, "link")); err != nil {
		t.Fatal(err)
	}
	bad, _ := content(50 << 10)
	write(filepath.Join(stage, "bad"), bad)
	write(filepath.Join(stage, "ix"), good)
	for _, tc := range []struct {
		what, typ, name, from string
		code                  int
		msg                   string
	}{
		{"a path climbing out of the root", "data", goodName, "../../" + outside, 400, "not a clean path"},
		{"an absolute path", "data", goodName, outside, 400, "not a clean path"},
		{"a file in the root outside the staging directory", "data", goodName, "other/" + goodName, 400, "staging directory"},
		{"another repository's staging directory", "data", goodName, AdoptDir + "/r2/" + goodName, 400, "staging directory"},
		{"a symlink to a file outside", "data", goodName, AdoptDir + "/r1/link", 400, "not a regular file"},
		{"content that does not hash to its name", "data", goodName, AdoptDir + "/r1/bad", 400, "hashes to"},
		{"a file type other than packs", "index", goodName, AdoptDir + "/r1/ix", 400, "only pack files"},
		{"a staged file that does not exist", "data", goodName, AdoptDir + "/r1/missing", 404, "does not exist"},
		{"no from", "data", goodName, "", 400, "no staged file"},
	} {
		code, msg := adopt(tc.typ, tc.name, tc.from)
		if code != tc.code || !strings.Contains(msg, tc.msg) {
			t.Errorf("%s: %d %s, want %d with %q", tc.what, code, strings.TrimSpace(msg), tc.code, tc.msg)
		}
	}
	if stored(goodName) {
		t.Fatal("a refused adoption stored the pack")
	}
	if got, err := os.ReadFile(outside); err != nil || !bytes.Equal(got, good) {
		t.Errorf("the symlink's target was touched: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "other", goodName)); err != nil {
		t.Errorf("a file outside the staging directory was moved: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(stage, "bad")); err == nil {
		t.Error("a staged file with the wrong content was left behind")
	}
	if p, _ := n.svc.Adopted(); p != 0 {
		t.Errorf("%d adoptions counted after refusals", p)
	}

	// The right file is adopted: moved, not copied, and readable.
	write(filepath.Join(stage, "ok"), good)
	if code, msg := adopt("data", goodName, AdoptDir+"/r1/ok"); code != 200 {
		t.Fatalf("adopting a good pack: %d %s", code, msg)
	}
	if got, err := be.Load(ctx, backend.Handle{Type: backend.PackFile, Name: goodName}, 0, 0); err != nil || !bytes.Equal(got, good) {
		t.Fatalf("loading the adopted pack: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(stage, "ok")); err == nil {
		t.Error("the adopted file is still staged")
	}
	// The same pack again (a retried request) is accepted and not counted
	// twice in the pool's local usage.
	// Usage is first brought up to date with the disk: the repository's
	// config, saved before, is counted only by the next protection round's
	// scan, which may come at any moment.
	used, err := n.svc.scanLocalUsage()
	if err != nil {
		t.Fatal(err)
	}
	write(filepath.Join(stage, "again"), good)
	if code, msg := adopt("data", goodName, AdoptDir+"/r1/again"); code != 200 {
		t.Errorf("adopting the same pack again: %d %s", code, msg)
	}
	if u := n.svc.Info().LocalUsed; u != used {
		t.Errorf("local usage went from %d to %d adopting a pack already stored", used, u)
	}
	// A different file under the pack's name is a conflict.
	other, otherName := content(10 << 10)
	write(filepath.Join(n.svc.LocalRepoDir("r1"), "data", otherName[:2], otherName), []byte("damaged"))
	write(filepath.Join(stage, "other"), other)
	if code, msg := adopt("data", otherName, AdoptDir+"/r1/other"); code != 409 {
		t.Errorf("adopting over a different file: %d %s, want 409", code, msg)
	}
	// A pack that does not fit in the pool: 507, nothing stored.
	huge, hugeName := content(70 << 20)
	write(filepath.Join(stage, "huge"), huge)
	if code, msg := adopt("data", hugeName, AdoptDir+"/r1/huge"); code != http.StatusInsufficientStorage {
		t.Errorf("adopting a pack larger than the pool: %d %s, want 507", code, msg)
	}
	if stored(hugeName) {
		t.Error("a pack that does not fit was stored")
	}
	// A staging directory that is a symlink to a directory elsewhere.
	agentRepo(t, n, "r3")
	elsewhere := t.TempDir()
	write(filepath.Join(elsewhere, "p"), good)
	if err := os.Symlink(elsewhere, filepath.Join(root, AdoptDir, "r3")); err != nil {
		t.Fatal(err)
	}
	if code, msg := adoptIn("r3", "data", goodName, AdoptDir+"/r3/p"); code != 400 || !strings.Contains(msg, "not a directory") {
		t.Errorf("adopting through a symlinked staging directory: %d %s, want 400", code, msg)
	}
	if _, err := os.Stat(filepath.Join(elsewhere, "p")); err != nil {
		t.Errorf("the file behind a symlinked staging directory was moved: %v", err)
	}
	// A repository that does not exist.
	write(filepath.Join(root, AdoptDir, "nope", "x"), good)
	if code, msg := adoptIn("nope", "data", goodName, AdoptDir+"/nope/x"); code != 404 {
		t.Errorf("adopting into a missing repository: %d %s, want 404", code, msg)
	}
	if p, b := n.svc.Adopted(); p != 2 || b != 2*int64(len(good)) {
		t.Errorf("adopted %d packs, %d bytes; want 2, %d", p, b, 2*len(good))
	}
}

// TestSweepStaged checks that staged files older than StagedMaxAge (what a
// killed client leaves) are removed and recent ones, possibly still in
// transfer, stay.
func TestSweepStaged(t *testing.T) {
	c := newCluster(t, []string{"e"}, func(string) Config { return testConfig(1, 1, 64<<20) })
	n := c.nodes["e"]
	stage := filepath.Join(n.dir, bulk.InboxDir, AdoptDir, "r1")
	if err := os.MkdirAll(stage, 0o700); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-StagedMaxAge - time.Hour)
	for _, name := range []string{".holdfast-part.p1", ".holdfast-journal.p1", "p2", "fresh", ".holdfast-part.fresh"} {
		p := filepath.Join(stage, name)
		if err := os.WriteFile(p, []byte(name), 0o600); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(name, "fresh") {
			if err := os.Chtimes(p, old, old); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got := n.svc.sweepStaged(time.Now().Add(-StagedMaxAge)); got != 3 {
		t.Errorf("swept %d files, want 3", got)
	}
	left := filesUnder(t, stage)
	if len(left) != 2 || left[0] != ".holdfast-part.fresh" || left[1] != "fresh" {
		t.Errorf("left staged: %v, want the two fresh files", left)
	}
}

// TestAdoptAcrossFileSystems puts the pool on another file system than the
// transfer root (tmpfs): adoption copies the staged pack instead of
// renaming it, and the result is the same.
func TestAdoptAcrossFileSystems(t *testing.T) {
	shm, err := os.MkdirTemp("/dev/shm", "holdfast-pool-")
	if err != nil {
		t.Skipf("no /dev/shm for a second file system: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(shm) })
	var a, b syscall.Stat_t
	if syscall.Stat(shm, &a) != nil || syscall.Stat(t.TempDir(), &b) != nil || a.Dev == b.Dev {
		t.Skip("/dev/shm is on the same file system as the test's temporary directory")
	}
	c := newCluster(t, []string{"e"}, func(string) Config {
		cfg := testConfig(1, 1, 64<<20)
		cfg.Dir = shm
		return cfg
	})
	n := c.nodes["e"]
	agentRepo(t, n, "r1")
	ctx := context.Background()
	data := bytes.Repeat([]byte("pack across file systems "), 40000)
	sum := blake3.Sum256(data)
	name := hex.EncodeToString(sum[:])
	stage := filepath.Join(n.dir, bulk.InboxDir, AdoptDir, "r1")
	if err := os.MkdirAll(stage, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stage, "p"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	size, err := n.svc.Adopt(ctx, "r1", backend.Handle{Type: backend.PackFile, Name: name}, AdoptDir+"/r1/p")
	if err != nil || size != int64(len(data)) {
		t.Fatalf("adopt across file systems: %d, %v", size, err)
	}
	got, err := os.ReadFile(filepath.Join(shm, LocalDir, "r1", "data", name[:2], name))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("adopted pack on the other file system: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(stage, "p")); err == nil {
		t.Error("the staged copy was left behind")
	}
}
