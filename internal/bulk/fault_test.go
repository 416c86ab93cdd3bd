package bulk

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/pace"
)

// TestKilledConnectionSurvived closes one connection's socket in the middle
// of a transfer: the transfer must finish on the others, byte for byte.
func TestKilledConnectionSurvived(t *testing.T) {
	p := newPair(t)
	src := filepath.Join(t.TempDir(), "f")
	data := writeRandom(t, src, 24<<20)
	var mu sync.Mutex
	conns := map[int]*net.TCPConn{}
	var sent atomic.Int64
	victim := -1
	opts := Options{Streams: 3, BlockSize: 128 << 10, RateLimit: 40e6}
	opts.OnConn = func(id int, c *net.TCPConn) {
		mu.Lock()
		conns[id] = c
		if victim < 0 {
			victim = id
		}
		mu.Unlock()
	}
	opts.testHook = func(ev string, id int) {
		if sent.Add(1) == 30 {
			mu.Lock()
			c := conns[victim]
			mu.Unlock()
			c.Close() // the socket dies under TLS, as if the path broke
		}
	}
	rep, err := p.client.SendFiles(context.Background(), p.addr, []string{src}, "out", opts)
	if err != nil {
		t.Fatal(err)
	}
	mustEqualFile(t, filepath.Join(p.root, "out"), data)
	var failed, carried int
	var total int64
	for _, c := range rep.Conns {
		total += c.Bytes
		if c.Failed != "" {
			failed++
			if c.ID != victim {
				t.Errorf("conn %d failed, but conn %d was killed", c.ID, victim)
			}
		} else if c.Bytes > 0 {
			carried++
		}
	}
	if failed != 1 || carried < 1 {
		t.Fatalf("%d failed conns and %d carrying ones; want 1 killed and the others carrying: %+v", failed, carried, rep.Conns)
	}
	if total != int64(len(data)) {
		t.Errorf("acknowledged %d bytes across conns, want %d", total, len(data))
	}
	t.Logf("killed conn %d; %d blocks re-sent; %.0f Mbit/s", victim, rep.Resent, rep.Goodput/1e6)
}

// TestSlowConnectionLeftOut slows one connection with the kernel's pacing
// cap (a real slow path for that socket only): the scheduler must leave it
// out and let the others carry the transfer.
func TestSlowConnectionLeftOut(t *testing.T) {
	p := newPair(t)
	src := filepath.Join(t.TempDir(), "f")
	data := writeRandom(t, src, 48<<20)
	slow := -1
	opts := Options{Streams: 4, BlockSize: 256 << 10, NoPace: true}
	opts.OnConn = func(id int, c *net.TCPConn) {
		if slow < 0 {
			slow = id
			if err := pace.SetSocketRate(c, 1<<20); err != nil { // 1 MB/s
				t.Errorf("slowing conn: %v", err)
			}
		}
	}
	start := time.Now()
	rep, err := p.client.SendFiles(context.Background(), p.addr, []string{src}, "out", opts)
	if err != nil {
		t.Fatal(err)
	}
	mustEqualFile(t, filepath.Join(p.root, "out"), data)
	var slowRep ConnReport
	for _, c := range rep.Conns {
		t.Logf("conn %d: %d bytes, %d rounds, left out %d rounds (%d times), ack rate %.1f MB/s", c.ID, c.Bytes, c.Rounds, c.LeftOut, c.Benched, c.SendRate/1e6)
		if c.ID == slow {
			slowRep = c
		}
	}
	if slowRep.Benched == 0 {
		t.Errorf("slowed conn %d was never left out: %+v", slow, slowRep)
	}
	if frac := float64(slowRep.Bytes) / float64(len(data)); frac > 0.15 {
		t.Errorf("slowed conn carried %.0f%% of the data, want under 15%%", frac*100)
	}
	// Had the slowed conn kept a quarter of the data, the copy would take
	// 12 s at 1 MB/s.
	if d := time.Since(start); d > 8*time.Second {
		t.Errorf("transfer took %v: the slow connection held it back", d)
	}
}

type recvTrace struct {
	mu   sync.Mutex
	recv []time.Time
	size map[uint64]int
	got  []int
}

func (r *recvTrace) Sent(conn int, msg uint64, at time.Time, size int) {
	r.mu.Lock()
	r.size[msg] = size
	r.mu.Unlock()
}

func (r *recvTrace) Acked(conn int, msg uint64, recvAt, handoffAt, ackAt time.Time) {
	r.mu.Lock()
	r.recv = append(r.recv, recvAt)
	r.got = append(r.got, r.size[msg])
	r.mu.Unlock()
}

// peak returns the largest number of bytes received in any window of d.
func (r *recvTrace) peak(d time.Duration) int {
	type ev struct {
		at time.Time
		n  int
	}
	var evs []ev
	for i := range r.recv {
		evs = append(evs, ev{r.recv[i], r.got[i]})
	}
	sort.Slice(evs, func(a, b int) bool { return evs[a].at.Before(evs[b].at) })
	best, sum, j := 0, 0, 0
	for i := range evs {
		sum += evs[i].n
		for evs[i].at.Sub(evs[j].at) >= d {
			sum -= evs[j].n
			j++
		}
		best = max(best, sum)
	}
	return best
}

// TestPacingBoundsPeakRate checks, on the receiver's clock, that the bytes
// arriving in any 100 ms window stay within the pacing rate (plus one
// message), while the same transfer unpaced bursts far above it.
func TestPacingBoundsPeakRate(t *testing.T) {
	p := newPair(t)
	src := filepath.Join(t.TempDir(), "f")
	writeRandom(t, src, 12<<20)
	const rate = 20e6 // bytes per second
	const bs = 64 << 10
	const win = 100 * time.Millisecond
	run := func(opts Options) (*recvTrace, *Report) {
		tr := &recvTrace{size: map[uint64]int{}}
		opts.Tracer = tr
		rep, err := p.client.SendFiles(context.Background(), p.addr, []string{src}, "out", opts)
		if err != nil {
			t.Fatal(err)
		}
		return tr, rep
	}
	paced, rep := run(Options{Streams: 4, BlockSize: bs, RateLimit: rate})
	limit := int(rate*win.Seconds()) + 2*(bs+blockHeaderSize)
	pk := paced.peak(win)
	t.Logf("paced: peak %d bytes per %v (limit %d), %.1f Mbit/s overall", pk, win, limit, rep.Goodput/1e6)
	if pk > limit {
		t.Errorf("paced transfer peaked at %d bytes in %v, above the %d the pacer allows", pk, win, limit)
	}
	if min := 12 << 20 / rate * 0.85; rep.Seconds < min {
		t.Errorf("paced transfer took %.2fs, faster than %.2fs the rate allows", rep.Seconds, min)
	}
	unpaced, rep2 := run(Options{Streams: 4, BlockSize: bs, NoPace: true})
	upk := unpaced.peak(win)
	t.Logf("unpaced: peak %d bytes per %v, %.1f Mbit/s overall", upk, win, rep2.Goodput/1e6)
	if upk < 2*limit {
		t.Errorf("unpaced peak %d is not above the paced limit %d: the test shows nothing", upk, limit)
	}
}

// TestSourceChangedDetected appends to the source while it is being sent.
func TestSourceChangedDetected(t *testing.T) {
	p := newPair(t)
	src := filepath.Join(t.TempDir(), "f")
	writeRandom(t, src, 4<<20)
	var once sync.Once
	opts := Options{Streams: 2, BlockSize: 64 << 10, RateLimit: 8e6}
	opts.testHook = func(ev string, id int) {
		once.Do(func() {
			f, _ := os.OpenFile(src, os.O_APPEND|os.O_WRONLY, 0)
			f.Write([]byte("more"))
			f.Close()
		})
	}
	rep, err := p.client.SendFiles(context.Background(), p.addr, []string{src}, "out", opts)
	if err == nil || rep == nil || len(rep.Errors) != 1 {
		t.Fatalf("got %v (report %+v), want the change reported", err, rep)
	}
	t.Logf("reported: %v", err)
	if _, err := os.Stat(filepath.Join(p.root, "out")); !os.IsNotExist(err) {
		t.Errorf("a changed source produced a final file: %v", err)
	}
}
