package bulk

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/lab"
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

// TestPathMemoryStartsAKnownPath copies twice over a lab path with two
// clients sharing a path memory file (two runs of holdfast cp): the second
// copy starts from the first one's goodput and connection count, and its
// connections are capped at their share of that rate from the moment they
// connect, not left to slow start.
func TestPathMemoryStartsAKnownPath(t *testing.T) {
	lp := newLabPair(t, lab.Path{Rate: 40e6, Delay: 10 * time.Millisecond})
	file := filepath.Join(t.TempDir(), "paths.json")
	log := testLogger(t)
	cli := lp.lab.Host(0)
	dial := func(ctx context.Context, network, addr string, control func(string, string, syscall.RawConn) error) (net.Conn, error) {
		return cli.DialWith(ctx, &net.Dialer{Control: control}, network, addr)
	}
	client := func() *Client {
		c, err := NewClient(ClientConfig{TLS: lp.id.ClientTLS(log), Node: lp.id.Name, Logger: log, CC: "cubic", Dial: dial, PathMemory: file})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	src := filepath.Join(t.TempDir(), "f")
	writeRandom(t, src, 12<<20) // about 2.5 s at 40 Mbit/s
	defer func(d time.Duration) { minLearnTime = d }(minLearnTime)
	minLearnTime = 2 * time.Second
	// A short copy measures mostly its own startup: not remembered.
	small := filepath.Join(t.TempDir(), "small")
	writeRandom(t, small, 1<<20)
	c0 := client()
	if _, err := c0.SendFiles(context.Background(), lp.addr, []string{small}, "s", Options{BlockSize: 64 << 10}); err != nil {
		t.Fatal(err)
	}
	if p, ok := c0.path(lp.addr); !ok || p.bw != 0 {
		t.Fatalf("after a short copy the path memory holds %+v (%v), want its RTT and no bandwidth", p, ok)
	}
	first, err := client().SendFiles(context.Background(), lp.addr, []string{src}, "a", Options{BlockSize: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if first.Remembered != 0 {
		t.Fatalf("the first copy started from a remembered %v B/s", first.Remembered)
	}
	t.Logf("first copy: %.1f Mbit/s in %.1fs over %d connections", first.Goodput/1e6, first.Seconds, first.MaxStreams)

	second := client()
	var mu sync.Mutex
	var caps []uint64
	opts := Options{BlockSize: 256 << 10, OnConn: func(_ int, c *net.TCPConn) {
		if info, err := tcpInfo(c); err == nil {
			mu.Lock()
			caps = append(caps, info.Max_pacing_rate)
			mu.Unlock()
		}
	}}
	rep, err := second.SendFiles(context.Background(), lp.addr, []string{src}, "b", opts)
	if err != nil {
		t.Fatal(err)
	}
	mustEqualFile(t, filepath.Join(lp.root, "b"), mustRead(t, src))
	want := first.Goodput / 8
	t.Logf("second copy: started from %.1f Mbit/s, %.1f Mbit/s over %d connections; caps at start %v", rep.Remembered*8/1e6, rep.Goodput/1e6, rep.MaxStreams, caps)
	if rep.Remembered < 0.99*want || rep.Remembered > 1.01*want {
		t.Errorf("second copy started from %v B/s, want the first copy's goodput %v", rep.Remembered, want)
	}
	if rep.MaxStreams < first.MaxStreams {
		t.Errorf("second copy used %d connections, fewer than the %d the path memory holds", rep.MaxStreams, first.MaxStreams)
	}
	n := max(first.MaxStreams, 4)
	for _, c := range caps {
		if c == 0 || float64(c) > 1.01*shareGain*want/float64(min(n, len(caps)))+1 {
			t.Errorf("a connection started with SO_MAX_PACING_RATE %d, want its share of %v B/s (%d connections)", c, want, n)
		}
	}
	if len(caps) == 0 {
		t.Error("no connection reported")
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
