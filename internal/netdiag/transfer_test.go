package netdiag

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// testWriter sends log output to t.Log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// scenario describes a message transfer between a real TCP sender that is
// monitored and a real TCP receiver that acknowledges every message.
type scenario struct {
	Duration     time.Duration // how long the sender sends
	MsgSize      int           // payload bytes per message
	SenderPause  time.Duration // sender sleeps this long after each message
	ReadChunk    int           // receiver reads at most this much per read
	ReadSleep    time.Duration // receiver sleeps after each read
	HandoffDelay time.Duration // receiver holds each message before hand-off
	// PacingRate (bytes/s) caps the sender's kernel with SO_MAX_PACING_RATE,
	// standing in for a clean bottleneck link on loopback, where an unpaced
	// sender overflows the per-CPU backlog of a loaded machine and loses
	// packets.
	PacingRate uint64
	// RecvBuf, if set, is the receiver's SO_RCVBUF (a slow reader with an
	// ordinary buffer rather than one autotuned to megabytes).
	RecvBuf int
}

// msgHeader is the test protocol's message header: id and payload size.
const msgHeaderSize = 12

// serveReceiver accepts one connection on ln and receives messages,
// acknowledging each with an Ack, until EOF.
func serveReceiver(ctx context.Context, ln net.Listener, sc scenario) error {
	c, err := ln.Accept()
	if err != nil {
		return fmt.Errorf("accept: %w", err)
	}
	defer c.Close()
	go func() { <-ctx.Done(); c.Close() }()
	if sc.RecvBuf > 0 {
		if err := c.(*net.TCPConn).SetReadBuffer(sc.RecvBuf); err != nil {
			return fmt.Errorf("setting SO_RCVBUF: %w", err)
		}
	}
	chunk := sc.ReadChunk
	if chunk == 0 {
		chunk = 1 << 20
	}
	buf := make([]byte, chunk)
	hdr := make([]byte, msgHeaderSize)
	ackb := make([]byte, 0, AckSize)
	for {
		if _, err := io.ReadFull(c, hdr); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("reading header: %w", err)
		}
		id := binary.BigEndian.Uint64(hdr[:8])
		left := int(binary.BigEndian.Uint32(hdr[8:]))
		for left > 0 {
			n, err := c.Read(buf[:min(left, len(buf))])
			if err != nil {
				return fmt.Errorf("reading message %d: %w", id, err)
			}
			left -= n
			if sc.ReadSleep > 0 {
				time.Sleep(sc.ReadSleep)
			}
		}
		recv := time.Now()
		if sc.HandoffDelay > 0 {
			time.Sleep(sc.HandoffDelay)
		}
		ackb, _ = NewAck(id, recv, time.Now()).AppendBinary(ackb[:0])
		if _, err := c.Write(ackb); err != nil {
			return fmt.Errorf("writing ack: %w", err)
		}
	}
}

// runSender dials, monitors the connection and sends messages for
// sc.Duration, reading acks concurrently. It returns the bytes sent.
func runSender(ctx context.Context, t testing.TB, conn *net.TCPConn, sc scenario, cfg Config, sink Sink) (uint64, error) {
	if sc.PacingRate > 0 {
		rc, err := conn.SyscallConn()
		if err != nil {
			return 0, err
		}
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_MAX_PACING_RATE, sc.PacingRate)
		}); err != nil {
			return 0, err
		}
		if serr != nil {
			return 0, fmt.Errorf("setting SO_MAX_PACING_RATE: %w", serr)
		}
	}
	mon, err := NewConnMonitor(conn, cfg, sink, testLogger(t))
	if err != nil {
		return 0, err
	}
	defer mon.Close()
	var wg sync.WaitGroup
	ackErr := make(chan error, 1)
	acked := make(chan uint64, 1)
	wg.Go(func() {
		b := make([]byte, AckSize)
		var n uint64
		defer func() { acked <- n }()
		for {
			if _, err := io.ReadFull(mon, b); err != nil {
				if !errors.Is(err, io.EOF) {
					ackErr <- fmt.Errorf("reading ack: %w", err)
				}
				return
			}
			var a Ack
			if err := a.UnmarshalBinary(b); err != nil {
				ackErr <- err
				return
			}
			if err := mon.AckedFrom(a); err != nil {
				ackErr <- err
				return
			}
			n++
		}
	})
	payload := make([]byte, msgHeaderSize+sc.MsgSize)
	deadline := time.Now().Add(sc.Duration)
	var id uint64
	for time.Now().Before(deadline) && ctx.Err() == nil {
		id++
		binary.BigEndian.PutUint64(payload[:8], id)
		binary.BigEndian.PutUint32(payload[8:12], uint32(sc.MsgSize))
		off := mon.Offset()
		mon.Sent(id, off, len(payload), time.Now())
		if _, err := mon.Write(payload); err != nil {
			return 0, fmt.Errorf("writing message %d: %w", id, err)
		}
		if sc.SenderPause > 0 {
			time.Sleep(sc.SenderPause)
		}
	}
	sent := mon.Offset()
	// Wait for the last acks so the records are complete, then close.
	if err := mon.CloseWrite(); err != nil {
		return 0, err
	}
	wg.Wait()
	select {
	case err := <-ackErr:
		return 0, err
	default:
	}
	if n := <-acked; n != id {
		return 0, fmt.Errorf("%d of %d messages acknowledged", n, id)
	}
	return sent, nil
}
