package bulk

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/holdfast/holdfast/internal/cluster"
	"time"
)

// TestPathMemoryAcrossClients checks that what one client learns of a path
// is known to the next client using the same memory file, that a stale
// bandwidth is not used, and that a damaged file is ignored with a warning.
func TestPathMemoryAcrossClients(t *testing.T) {
	file := filepath.Join(t.TempDir(), "paths.json")
	id, err := cluster.Init(t.TempDir(), "alpha")
	if err != nil {
		t.Fatal(err)
	}
	tlsc := id.ClientTLS(testLogger(t))
	a, err2 := NewClient(ClientConfig{TLS: tlsc, PathMemory: file, Logger: testLogger(t)})
	if err2 != nil {
		t.Fatal(err2)
	}
	a.learn("peer-1:7470", 40*time.Millisecond, 12.5e6, 6)
	a.learn("peer-2:7470", 90*time.Millisecond, 0, 0) // RTT only
	a.Close()

	b, err := NewClient(ClientConfig{TLS: tlsc, PathMemory: file, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	p, ok := b.path("peer-1:7470")
	if !ok || p.bw != 12.5e6 || p.rtt != 40*time.Millisecond || p.streams != 6 || !p.fresh(time.Now()) {
		t.Fatalf("peer-1 in a new client: %+v %v, want 12.5e6 B/s, 40 ms, 6 streams, fresh", p, ok)
	}
	if p, ok := b.path("peer-2:7470"); !ok || p.bw != 0 || p.fresh(time.Now()) {
		t.Fatalf("peer-2 (no bandwidth measured): %+v %v", p, ok)
	}
	if p.fresh(time.Now().Add(PathMemoryTTL + time.Second)) {
		t.Error("a bandwidth older than PathMemoryTTL counts as fresh")
	}
	// A later copy that measured no bandwidth keeps the earlier one.
	b.learn("peer-1:7470", 41*time.Millisecond, 0, 0)
	if p, _ := b.path("peer-1:7470"); p.bw != 12.5e6 || p.streams != 6 || p.rtt != 41*time.Millisecond {
		t.Errorf("after an RTT-only update: %+v", p)
	}
	// Entries past their time are dropped when the file is written.
	b.mu.Lock()
	b.paths[b.pathKey("old:1")] = pathInfo{rtt: time.Millisecond, bw: 1e6, at: time.Now().Add(-2 * PathMemoryTTL)}
	b.mu.Unlock()
	b.learn("peer-3:7470", time.Millisecond, 1e6, 2)
	got, err := loadPaths(file)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := got["old:1"]; ok || len(got) != 3 {
		t.Errorf("saved memory %v: want peer-1..3 without the stale entry", got)
	}

	// The same peer under another congestion control is another path.
	cub, err := NewClient(ClientConfig{TLS: tlsc, CC: "cubic", PathMemory: file, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := cub.path("peer-1:7470"); ok {
		t.Errorf("a cubic client got the path measured under the default: %+v", p)
	}
	cub.Close()

	if err := os.WriteFile(file, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(ClientConfig{TLS: tlsc, PathMemory: file, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("a damaged path memory stopped the client: %v", err)
	}
	defer c.Close()
	if _, ok := c.path("peer-1:7470"); ok {
		t.Error("a damaged path memory gave a path")
	}
}
