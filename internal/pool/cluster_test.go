package pool

import (
	"bytes"
	"context"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/agent"
	"github.com/holdfast/holdfast/internal/bulk"
	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/repo"
	"github.com/holdfast/holdfast/internal/repo/chunker"
)

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < d {
		if cond() {
			return time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting for %s", d, what)
	return 0
}

// testConfig is a pool configuration with short intervals.
func testConfig(k, m int, capacity int64) Config {
	c := DefaultConfig()
	c.K, c.M, c.Capacity = k, m, capacity
	c.ScanInterval = Duration{300 * time.Millisecond}
	c.ProofInterval = Duration{time.Hour} // tests call ProveAll
	c.DeadAfter = Duration{1500 * time.Millisecond}
	c.CallTimeout = Duration{5 * time.Second}
	c.Gossip = "local"
	return c
}

// tnode is one in-process agent of a test cluster.
type tnode struct {
	name, dir, addr string
	cfg             Config
	a               *agent.Agent
	svc             *Service
	cancel          context.CancelFunc
	done            chan error
	stopped         bool
}

func (n *tnode) stop(t *testing.T) {
	if n.stopped {
		return
	}
	n.stopped = true
	n.cancel()
	if err := <-n.done; err != nil {
		t.Errorf("agent %s: %v", n.name, err)
	}
}

type tcluster struct {
	t      *testing.T
	root   string
	caDir  string
	caAddr string
	nodes  map[string]*tnode
	// apiListen, when set before start, gives agents a TCP API address.
	apiListen map[string]string
	// bulk, when set before start, runs the bulk transfer service
	// (root <state>/inbox) in every agent, as `holdfast agent` does.
	bulk bool
}

// newCluster starts in-process agents; the first name holds the cluster CA.
func newCluster(t *testing.T, names []string, cfg func(name string) Config) *tcluster {
	c := &tcluster{t: t, root: t.TempDir(), nodes: map[string]*tnode{}}
	for i, name := range names {
		dir := filepath.Join(c.root, name)
		if i == 0 {
			if _, err := agent.Init(dir, agent.InitOptions{Name: name, Listen: "127.0.0.1:0"}); err != nil {
				t.Fatal(err)
			}
			c.caDir = dir
		} else {
			c.join(name, dir)
		}
		n := c.start(name, dir, cfg(name))
		if i == 0 {
			c.caAddr = n.addr
		}
	}
	c.waitMesh(names)
	return c
}

func (c *tcluster) join(name, dir string) {
	t := c.t
	ca, err := cluster.LoadCA(c.caDir)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := ca.IssueToken(time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agent.Join(context.Background(), dir, c.caAddr, tok, agent.InitOptions{Name: name, Listen: "127.0.0.1:0", Labels: map[string]string{"zone": "z-" + name}}, testLogger(t)); err != nil {
		t.Fatalf("join %s: %v", name, err)
	}
}

func (c *tcluster) start(name, dir string, pc Config) *tnode {
	t := c.t
	ac, err := agent.LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	ac.HeartbeatInterval = agent.Duration{Duration: 200 * time.Millisecond}
	ac.PeerTimeout = agent.Duration{Duration: time.Second}
	if ac.Labels == nil {
		ac.Labels = map[string]string{}
	}
	ac.Labels["zone"] = "z-" + name
	if c.apiListen != nil {
		ac.APIListen = c.apiListen[name]
	}
	if err := agent.WriteConfig(dir, ac); err != nil {
		t.Fatal(err)
	}
	svc := NewService(Options{Config: &pc})
	services := []agent.Service{svc}
	if c.bulk {
		services = append(services, bulk.NewAgentService(""))
	}
	a, err := agent.New(dir, agent.Options{Logger: testLogger(t).With("n", name), Services: services})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &tnode{name: name, dir: dir, cfg: pc, a: a, svc: svc, cancel: cancel, done: make(chan error, 1)}
	go func() { n.done <- a.Run(ctx) }()
	waitFor(t, name+" listening", 10*time.Second, func() bool {
		st, err := agent.NewClient(dir).Status(context.Background())
		if err != nil {
			return false
		}
		n.addr = st.Listen
		return n.addr != ""
	})
	t.Cleanup(func() { n.stop(t) })
	c.nodes[name] = n
	return n
}

func (c *tcluster) waitMesh(names []string) {
	for _, name := range names {
		n := c.nodes[name]
		c.waitPeers(n, len(names)-1)
	}
}

func (c *tcluster) waitPeers(n *tnode, want int) {
	waitFor(c.t, n.name+" connected to all peers", 15*time.Second, func() bool {
		k := 0
		for _, p := range n.a.Peers() {
			if p.Connected {
				k++
			}
		}
		return k >= want
	})
}

// kill stops an agent and deletes its state, as a machine lost for good.
func (c *tcluster) kill(name string) {
	n := c.nodes[name]
	n.stop(c.t)
	if err := os.RemoveAll(n.dir); err != nil {
		c.t.Fatal(err)
	}
	delete(c.nodes, name)
}

const testPass = "pool test passphrase"

func testInitOptions(t *testing.T) repo.InitOptions {
	return repo.InitOptions{
		Chunker:  chunker.Params{Min: 64 << 10, Avg: 128 << 10, Max: 512 << 10},
		PackSize: 512 << 10,
		KDF:      repo.KDFParams{Time: 1, Memory: 64, Threads: 1},
		Logger:   testLogger(t),
	}
}

// marker is plaintext that appears in every backed-up tree; no peer may
// ever hold it.
const marker = "HOLDFAST-PLAINTEXT-MARKER-5b1e0c"

// makeTree writes a tree of random (incompressible) and text files
// carrying marker, about size bytes.
func makeTree(t *testing.T, dir string, seed uint64, size int) {
	r := rand.New(rand.NewPCG(seed, seed^0x9e37))
	for i := 0; size > 0; i++ {
		sub := filepath.Join(dir, "d"+string(rune('a'+i%4)))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		var data []byte
		if i%3 == 0 {
			data = bytes.Repeat([]byte(marker+" line of a text file\n"), 1+r.IntN(2000))
		} else {
			data = make([]byte, 1+r.IntN(400<<10))
			for j := range data {
				data[j] = byte(r.Uint32())
			}
		}
		if err := os.WriteFile(filepath.Join(sub, "f"+string(rune('0'+i%10))+"-"+itoa(i)), data, 0o644); err != nil {
			t.Fatal(err)
		}
		size -= len(data)
	}
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}

// backupTo makes repository name in n's local portion and backs up src.
func backupTo(t *testing.T, n *tnode, name, src string) *repo.Snapshot {
	ctx := context.Background()
	be, err := n.svc.LocalBackend(name)
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(ctx, be, testPass, repo.OpenOptions{Logger: testLogger(t)})
	if err != nil {
		r, err = repo.Init(ctx, be, testPass, testInitOptions(t))
		if err != nil {
			t.Fatal(err)
		}
	}
	defer r.Close()
	sn, _, err := r.Backup(ctx, []string{src}, repo.BackupOptions{Hostname: "client"})
	if err != nil {
		t.Fatal(err)
	}
	n.svc.trigger()
	return sn
}

// waitProtected waits until every local file of n is in the peer version
// at level at least want, and every connected peer holds the current map.
func waitProtected(t *testing.T, n *tnode, want int, d time.Duration) time.Duration {
	t.Helper()
	return waitFor(t, n.name+" protected at level "+itoa(want), d, func() bool {
		st := n.svc.Status(context.Background())
		if st.Pending != 0 || len(st.Backups) == 0 {
			return false
		}
		for _, b := range st.Backups {
			if b.Level < want {
				return false
			}
		}
		n.svc.mu.Lock()
		dirty := n.svc.dirty
		n.svc.mu.Unlock()
		return !dirty
	})
}

// treesEqual compares two directory trees byte for byte.
func treesEqual(t *testing.T, want, got string) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(want, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(want, p)
		q := filepath.Join(got, rel)
		if d.IsDir() {
			if fi, err := os.Stat(q); err != nil || !fi.IsDir() {
				t.Errorf("directory %s missing in restore", rel)
			}
			return nil
		}
		a, _ := os.ReadFile(p)
		b, err := os.ReadFile(q)
		if err != nil {
			t.Errorf("file %s missing in restore: %v", rel, err)
			return nil
		}
		if !bytes.Equal(a, b) {
			t.Errorf("file %s differs after restore (%d vs %d bytes)", rel, len(a), len(b))
		}
		n++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("compared no files")
	}
}

// grepTree reports the files under dir containing needle.
func grepTree(t *testing.T, dir string, needle []byte) []string {
	var hits []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Type()&fs.ModeSocket != 0 {
			return err
		}
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, needle) {
			hits = append(hits, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return hits
}

var _ = sync.Mutex{}
