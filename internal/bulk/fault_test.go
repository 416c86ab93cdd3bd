package bulk

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/lab"
	"github.com/holdfast/holdfast/internal/pace"
)

// TestKilledConnectionSurvived closes one connection's socket in the middle
// of a transfer: the transfer must finish on the others, byte for byte.
func TestKilledConnectionSurvived(t *testing.T) { envs(t, testPath, killedConnection) }

// testPath is the lab path of the fault tests: small enough to be quick.
var testPath = lab.Path{Rate: 100e6, Delay: 10 * time.Millisecond}

func killedConnection(t *testing.T, p *pair) {
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
func TestSlowConnectionLeftOut(t *testing.T) { envs(t, testPath, slowConnection) }

func slowConnection(t *testing.T, p *pair) {
	src := filepath.Join(t.TempDir(), "f")
	data := writeRandom(t, src, 16<<20)
	slow := -1
	opts := Options{Streams: 4, BlockSize: 256 << 10, NoPace: true}
	opts.OnConn = func(id int, c *net.TCPConn) {
		if slow < 0 {
			slow = id
			if err := pace.SetSocketRate(c, 256<<10); err != nil { // 256 KB/s
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
	// Blocks are taken one at a time by connections with room, so the
	// slowed connection holds at most its window; the scheduler must send
	// what it holds again elsewhere, and leave it out of the sub-transfers
	// that follow (a copy over in the first one has none).
	if slowRep.Benched == 0 && rep.Rounds > 2 {
		t.Errorf("slowed conn %d was never left out in %d sub-transfers: %+v", slow, rep.Rounds, slowRep)
	}
	if rep.Resent == 0 && slowRep.Bytes < int64(len(data))/4 {
		t.Errorf("no block was sent again elsewhere, yet the slowed conn delivered only %d bytes", slowRep.Bytes)
	}
	if frac := float64(slowRep.Bytes) / float64(len(data)); frac > 0.15 {
		t.Errorf("slowed conn carried %.0f%% of the data, want under 15%%", frac*100)
	}
	// Had the slowed conn kept a quarter of the data, the copy would take
	// 16 s at 256 KB/s.
	if d := time.Since(start); d > 12*time.Second {
		t.Errorf("transfer took %v: the slow connection held it back", d)
	}
}

// sendTrace records when each data message was handed to the kernel.
type sendTrace struct {
	mu    sync.Mutex
	at    []time.Time
	size  []int
	first func() // called once, at the first data message
	once  sync.Once
}

func (r *sendTrace) Sent(conn int, msg uint64, at time.Time, size int) {
	if r.first != nil {
		r.once.Do(r.first)
	}
	r.mu.Lock()
	r.at = append(r.at, at)
	r.size = append(r.size, size)
	r.mu.Unlock()
}

func (r *sendTrace) Acked(conn int, msg uint64, recvAt, handoffAt, ackAt time.Time) {}

// peak returns the largest number of bytes handed over in any window of d.
func (r *sendTrace) peak(d time.Duration) int {
	best, sum, j := 0, 0, 0
	for i := range r.at { // in order: Sent is called after the pacer's slot
		sum += r.size[i]
		for r.at[i].Sub(r.at[j]) >= d {
			sum -= r.size[j]
			j++
		}
		best = max(best, sum)
	}
	return best
}

// TestPacingBoundsPeakRate checks that, across all connections, the bytes
// handed to the kernel in any 500 ms stay within the pacing rate (plus one
// message), while the same transfer unpaced bursts far above it; on the lab
// it also checks the rate the emulator delivered in each 500 ms interval.
func TestPacingBoundsPeakRate(t *testing.T) { envs(t, testPath, pacingBound) }

func pacingBound(t *testing.T, p *pair) {
	src := filepath.Join(t.TempDir(), "f")
	writeRandom(t, src, 8<<20)
	const rate = 3e6 // bytes per second, under the lab path's 12.5e6
	const bs = 64 << 10
	// Half a second: long enough that the scheduling delays of this
	// loaded machine (timers firing late) are small next to it.
	const win = 500 * time.Millisecond
	var wireMu sync.Mutex
	var wirePeak float64
	run := func(opts Options) (*sendTrace, *Report) {
		tr := &sendTrace{}
		opts.Tracer = tr
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		wirePeak = 0
		if p.lab != nil {
			// Watch the path from the first data message on: priming
			// traffic is not paced.
			tr.first = func() {
				go func() {
					defer close(done)
					p.lab.Watch(ctx, win, func(r lab.Report) {
						for _, pr := range r.Paths {
							if pr.From == 0 && pr.To == 1 {
								wireMu.Lock()
								wirePeak = max(wirePeak, pr.OutBitsPerSecond/8)
								wireMu.Unlock()
							}
						}
					})
				}()
			}
		} else {
			close(done)
		}
		rep, err := p.client.SendFiles(context.Background(), p.addr, []string{src}, "out", opts)
		cancel()
		<-done
		if err != nil {
			t.Fatal(err)
		}
		return tr, rep
	}
	paced, rep := run(Options{Streams: 4, BlockSize: bs, RateLimit: rate})
	// The pacer allows one message of burst; timers firing late on this
	// loaded machine shift a few more into a window.
	limit := int(1.15*rate*win.Seconds()) + 2*(bs+blockHeaderSize)
	pk := paced.peak(win)
	t.Logf("paced: peak %d bytes per %v handed to the kernel (limit %d), %.1f Mbit/s overall; wire peak %.2f MB/s", pk, win, limit, rep.Goodput/1e6, wirePeak/1e6)
	if pk > limit {
		t.Errorf("paced transfer handed %d bytes to the kernel in %v, above the %d the pacer allows", pk, win, limit)
	}
	if p.lab != nil && wirePeak > 1.3*rate {
		t.Errorf("the lab path carried %.2f MB/s in a %v interval, above 1.3 x the %.1f MB/s pacing rate", wirePeak/1e6, win, rate/1e6)
	}
	if min := 8 << 20 / rate * 0.85; rep.Seconds < min {
		t.Errorf("paced transfer took %.2fs, faster than %.2fs the rate allows", rep.Seconds, min)
	}
	unpaced, rep2 := run(Options{Streams: 4, BlockSize: bs, NoPace: true})
	upk := unpaced.peak(win)
	t.Logf("unpaced: peak %d bytes per %v, %.1f Mbit/s overall; wire peak %.2f MB/s", upk, win, rep2.Goodput/1e6, wirePeak/1e6)
	if upk <= limit {
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
