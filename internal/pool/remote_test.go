package pool

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/agent"
	"github.com/holdfast/holdfast/internal/repo"
	"github.com/holdfast/holdfast/internal/repo/backend"
)

// TestBackupClientThroughAgentAPI backs up through the agent's API (what
// `holdfast backup --server` does), restores through it, and checks that
// bad requests are refused and that the backup gets its peer version.
func TestBackupClientThroughAgentAPI(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, []string{"e", "a", "b"}, func(string) Config { return testConfig(1, 1, 64<<20) })
	a := c.nodes["a"]
	be, err := DialAgentBackend(a.dir, "", "client1", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	r, err := repo.Init(ctx, be, testPass, testInitOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src, 9, 1<<20)
	sn, _, err := r.Backup(ctx, []string{src}, repo.BackupOptions{Hostname: "client1"})
	if err != nil {
		t.Fatal(err)
	}
	target := t.TempDir()
	if _, err := r.Restore(ctx, sn.ID, target, repo.RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	r.Close()
	treesEqual(t, src, filepath.Join(target, "src"))
	// The files landed in a's local portion, and get protected.
	if hits := grepTree(t, a.svc.LocalRepoDir("client1"), []byte(marker)); len(hits) != 0 {
		t.Errorf("the agent's copy holds plaintext: %v", hits)
	}
	waitProtected(t, a, 1, 20*time.Second)

	// Bad requests: a missing file is ErrNotExist; odd names are refused.
	if _, err := be.Load(ctx, backend.Handle{Type: backend.PackFile, Name: "0000"}, 0, 0); !errors.Is(err, backend.ErrNotExist) {
		t.Errorf("loading a missing pack: %v", err)
	}
	hc := be.hc
	for _, u := range []string{
		"http://agent/v1/pool/repos/client1/list/..",
		"http://agent/v1/pool/repos/client1/list/config",
		"http://agent/v1/pool/repos/..%2Fx/list/data",
		"http://agent/v1/pool/repos/client1/files/data/a%2Fb",
	} {
		resp, err := hc.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode/100 == 2 {
			t.Errorf("GET %s: %s, want a refusal", u, resp.Status)
		}
	}
	// A write that does not fit in the pool is refused as pool full.
	big := bytes.Repeat([]byte{1}, 70<<20)
	req, _ := http.NewRequestWithContext(ctx, "PUT", "http://agent/v1/pool/repos/client1/files/data/"+strings.Repeat("ab", 32), bytes.NewReader(big))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusInsufficientStorage {
		t.Errorf("oversized write: %s, want 507", resp.Status)
	}
}

// TestBackupClientOverMTLS backs up to an agent's TCP API from a machine
// with only a cluster identity, and checks that a client without one is
// refused.
func TestBackupClientOverMTLS(t *testing.T) {
	ctx := context.Background()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	apiAddr := ln.Addr().String()
	ln.Close()
	c := &tcluster{t: t, root: t.TempDir(), nodes: map[string]*tnode{}, apiListen: map[string]string{"e": apiAddr}}
	dir := filepath.Join(c.root, "e")
	if _, err := agent.Init(dir, agent.InitOptions{Name: "e", Listen: "127.0.0.1:0"}); err != nil {
		t.Fatal(err)
	}
	c.caDir = dir
	n := c.start("e", dir, testConfig(1, 1, 64<<20))
	c.caAddr = n.addr
	// The client joins the cluster for a certificate but runs no agent.
	clientDir := filepath.Join(c.root, "laptop")
	c.join("laptop", clientDir)
	var be *AgentBackend
	waitFor(t, "the TCP API", 10*time.Second, func() bool {
		be, err = DialAgentBackend(apiAddr, clientDir, "laptop", testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		err = be.Create(ctx)
		return err == nil
	})
	r, err := repo.Init(ctx, be, testPass, testInitOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src, 31, 512<<10)
	sn, _, err := r.Backup(ctx, []string{src}, repo.BackupOptions{Hostname: "laptop"})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	// The snapshot is in the agent's local portion, readable there.
	local, _ := backend.NewLocal(n.svc.LocalRepoDir("laptop"))
	lr, err := repo.Open(ctx, local, testPass, repo.OpenOptions{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	target := t.TempDir()
	if _, err := lr.Restore(ctx, sn.ID, target, repo.RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	lr.Close()
	treesEqual(t, src, filepath.Join(target, "src"))

	// Without a cluster identity: refused before any request.
	if _, err := DialAgentBackend(apiAddr, t.TempDir(), "laptop", nil); err == nil {
		t.Error("a client without an identity got a backend")
	}
	noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	if resp, err := noCert.Get("https://" + apiAddr + "/v1/pool/repos/laptop/list/snapshots"); err == nil {
		resp.Body.Close()
		t.Errorf("a client without a certificate got %s", resp.Status)
	}
}

// TestQuickstartCycle runs the Go calls the quick start uses: backup to an
// agent, wait for peer protection, restore from the peers' shards into a
// fresh directory.
func TestQuickstartCycle(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, []string{"e", "a", "b", "c"}, func(string) Config {
		s := SchemeFor(3)
		return testConfig(s.K, s.M, 64<<20)
	})
	a := c.nodes["a"]
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src, 41, 1<<20)
	sn, _, err := BackupToAgent(ctx, a.dir, "qs", testPass, []string{src}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, _, err := WaitProtected(wctx, a.dir, 1)
	if err != nil || st.Protection != 1 {
		t.Fatalf("WaitProtected: %v (%+v)", err, st)
	}
	target := t.TempDir()
	res, err := RestoreThroughAgent(ctx, a.dir, RestoreOptions{Repo: "qs", Password: testPass, Target: target, Dest: t.TempDir(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if res.Snapshot != sn.ID.String() || res.Rebuild.Files == 0 || res.Rebuild.Skipped != 0 {
		t.Errorf("restore result %+v (snapshot %s)", res.Rebuild, sn.ID)
	}
	treesEqual(t, src, filepath.Join(target, "src"))
	// A wrong password is refused without writing anything.
	bad := t.TempDir()
	if _, err := RestoreThroughAgent(ctx, a.dir, RestoreOptions{Repo: "qs", Password: "wrong", Target: filepath.Join(bad, "t"), Dest: t.TempDir()}); !errors.Is(err, repo.ErrWrongPassword) {
		t.Errorf("wrong password: %v", err)
	}
}
