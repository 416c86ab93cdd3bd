package netdiag

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

func loopbackPair(t *testing.T) (client *net.TCPConn, server net.Conn) {
	return loopbackPairOn(t, "127.0.0.1:0")
}

func loopbackPairOn(t *testing.T, addr string) (client *net.TCPConn, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot listen on %s: %v", addr, err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-acc
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s
}

// TestMonitorWriteRecords checks that kernel timestamps land on the right
// writes: one write in three is sampled, each record carries that write's
// byte offset and size and ordered kernel times, and the totals add up. It
// runs over IPv4 and IPv6, whose error-queue messages differ.
func TestMonitorWriteRecords(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		t.Run(addr, func(t *testing.T) { testMonitorWriteRecords(t, addr) })
	}
}

func testMonitorWriteRecords(t *testing.T, addr string) {
	c, s := loopbackPairOn(t, addr)
	got := make(chan int64, 1)
	go func() { n, _ := io.Copy(io.Discard, s); got <- n }()
	cfg := DefaultConfig()
	cfg.WriteSampleEvery = 3
	cfg.WriteSampleInterval = 0
	sink := &collect{}
	m, err := NewConnMonitor(c, cfg, sink, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	type span struct{ off, size uint64 }
	var want []span
	var total uint64
	for i := range 30 {
		size := 1 + (i*7919)%(200<<10)
		if i%3 == 0 {
			want = append(want, span{total, uint64(size)})
		}
		if _, err := m.Write(make([]byte, size)); err != nil {
			t.Fatal(err)
		}
		total += uint64(size)
	}
	if m.Offset() != total {
		t.Fatalf("Offset %d, want %d", m.Offset(), total)
	}
	if err := m.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if n := <-got; uint64(n) != total {
		t.Fatalf("receiver got %d bytes, want %d", n, total)
	}
	// Let the last ACK timestamps arrive (delayed ACKs, a loaded machine).
	for deadline := time.Now().Add(2 * time.Second); m.pendingWrites() > 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		m.drain()
	}
	m.Finish()
	var writes []WriteRecord
	var cl *ConnClose
	for _, r := range sink.all() {
		if r.Conn != m.ID() || r.Peer != c.RemoteAddr().String() {
			t.Fatalf("record for conn %s peer %s, want %s %s", r.Conn, r.Peer, m.ID(), c.RemoteAddr())
		}
		switch r.Kind {
		case KindWrite:
			writes = append(writes, *r.Write)
		case KindClose:
			cl = r.Close
		}
	}
	if len(writes) != len(want) {
		t.Fatalf("%d write records, want %d", len(writes), len(want))
	}
	var noAck uint64
	for i, w := range writes {
		if w.Offset != want[i].off || uint64(w.Size) != want[i].size {
			t.Errorf("write %d: offset %d size %d, want %d %d", i, w.Offset, w.Size, want[i].off, want[i].size)
		}
		if !(w.Start <= w.End && w.Sched > 0 && w.Sched <= w.Sent) || (w.Acked != 0 && w.Acked < w.Sent) {
			t.Errorf("write %d: times out of order: start %d end %d sched %d sent %d acked %d", i, w.Start, w.End, w.Sched, w.Sent, w.Acked)
		}
		if w.Acked == 0 {
			noAck++
		}
	}
	if cl == nil || cl.BytesWritten != total || cl.Writes != 30 || cl.TimestampsLost != 0 {
		t.Fatalf("close record %+v, want %d bytes in 30 writes, none lost", cl, total)
	}
	t.Logf("%d of %d sampled writes without ACK timestamp", noAck, len(writes))
	// The kernel now and then skips a write's ACK timestamp; the monitor
	// must say so, and it must stay the exception.
	if cl.AckTimestampsMissing != noAck || noAck > 1 {
		t.Fatalf("%d writes without ACK timestamp, close record says %d; want equal and at most one", noAck, cl.AckTimestampsMissing)
	}
}

// readBlockedWhileFilling starts a read through a fresh monitor (with
// the given read deadline, if any), then fills the socket with timestamped
// writes until it is no longer writable while the peer reads nothing, so
// that ACK timestamps keep arriving on a socket that is neither readable
// nor writable: the Go runtime then sees EPOLLERR alone.
func readBlockedWhileFilling(t *testing.T, deadline time.Duration) (*ConnMonitor, net.Conn, chan readResult) {
	t.Helper()
	c, s := loopbackPair(t)
	if err := c.SetWriteBuffer(64 << 10); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.DrainInterval = time.Hour // leave the error queue to fill
	cfg.WriteSampleInterval = 0
	cfg.TCPInfoInterval = 0
	m, err := NewConnMonitor(c, cfg, nil, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if deadline > 0 {
		if err := m.SetReadDeadline(time.Now().Add(deadline)); err != nil {
			t.Fatal(err)
		}
	}
	res := make(chan readResult, 1)
	go func() {
		b := make([]byte, 1)
		_, err := io.ReadFull(m, b)
		res <- readResult{b[0], err}
	}()
	if err := m.SetWriteDeadline(time.Now().Add(300 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16<<10)
	for {
		if _, err := m.Write(buf); err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("write: %v", err)
			}
			break
		}
	}
	return m, s, res
}

type readResult struct {
	b   byte
	err error
}

// TestReadSurvivesErrQueueWakeup reproduces the Go runtime hazard the
// monitor works around: with transmit timestamps queued while the socket
// is neither readable nor writable, epoll reports EPOLLERR alone and a
// plain read on the connection fails with "not pollable". The monitor's
// Read must deliver the peer's byte instead.
func TestReadSurvivesErrQueueWakeup(t *testing.T) {
	m, s, res := readBlockedWhileFilling(t, 0)
	time.Sleep(100 * time.Millisecond)
	if _, err := s.Write([]byte{42}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-res:
		if r.err != nil || r.b != 42 {
			t.Fatalf("read through monitor: byte %d, err %v; want 42", r.b, r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("read through monitor did not return")
	}
	t.Logf("not-pollable recoveries: %d", m.npRecovered.Load())
}

// TestReadDeadlineOnDirectPath: the same situation with a read deadline
// and nothing to read: the read must time out, also when it is on the
// direct-read path.
func TestReadDeadlineOnDirectPath(t *testing.T) {
	m, _, res := readBlockedWhileFilling(t, time.Second)
	select {
	case r := <-res:
		if !errors.Is(r.err, os.ErrDeadlineExceeded) {
			t.Fatalf("read with deadline: %v, want a timeout", r.err)
		}
		var ne net.Error
		if !errors.As(r.err, &ne) || !ne.Timeout() {
			t.Fatalf("read with deadline: %v is not a net.Error timeout", r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("read with a 1s deadline did not return after 5s")
	}
	t.Logf("not-pollable recoveries: %d", m.npRecovered.Load())
}
