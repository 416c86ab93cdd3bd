package cdp

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// This file is a STAND-IN for the agent-to-agent wire (internal/wire,
// mTLS sessions) until the agent mounts HandleRemote on it: a plain,
// unauthenticated request/response framing over a unix or TCP socket on
// this machine, used by `holdfast volume serve --peer` and tests. It must
// not cross hosts.
//
//	request:  u32 length | u16 message type | payload
//	response: u8 status (0 ok, 1 error) | u32 length | payload or message

// maxStandInFrame bounds one frame.
const maxStandInFrame = MaxAppendBytes + 1024

// ServeStandIn answers requests on ln with handle until ctx ends.
func ServeStandIn(ctx context.Context, ln net.Listener, handle func(context.Context, uint16, []byte) ([]byte, error), logger *slog.Logger) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("stand-in transport: accepting: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			cstop := context.AfterFunc(ctx, func() { c.Close() })
			defer cstop()
			br := bufio.NewReaderSize(c, 1<<20)
			for {
				var h [6]byte
				if _, err := io.ReadFull(br, h[:]); err != nil {
					return
				}
				n := binary.BigEndian.Uint32(h[:])
				if n > maxStandInFrame {
					logger.Warn("stand-in transport: oversized frame", "bytes", n)
					return
				}
				payload := make([]byte, n)
				if _, err := io.ReadFull(br, payload); err != nil {
					return
				}
				resp, herr := handle(ctx, binary.BigEndian.Uint16(h[4:]), payload)
				out := make([]byte, 5)
				if herr != nil {
					out[0] = 1
					resp = []byte(herr.Error())
				}
				binary.BigEndian.PutUint32(out[1:], uint32(len(resp)))
				if _, err := c.Write(append(out, resp...)); err != nil {
					return
				}
			}
		}()
	}
}

// StandInCaller is a Caller over the stand-in transport: one connection
// carrying any number of calls at once (the server answers them in order),
// redialled after a failure.
type StandInCaller struct {
	Network, Addr string

	wmu     sync.Mutex // serializes request writes (taken before mu)
	mu      sync.Mutex
	c       net.Conn
	pending []chan standInResult // waiters, in the order requests were sent
}

type standInResult struct {
	resp []byte
	err  error
}

// ErrRemote wraps an error the remote agent answered with.
var ErrRemote = errors.New("remote agent")

// Call sends one request and waits for its answer.
func (s *StandInCaller) Call(ctx context.Context, msgType uint16, payload []byte) ([]byte, error) {
	ch := make(chan standInResult, 1)
	// The request is written without holding mu, so that the reader can
	// hand out answers meanwhile; wmu keeps requests and waiters in the
	// same order.
	s.wmu.Lock()
	s.mu.Lock()
	if s.c == nil {
		var d net.Dialer
		c, err := d.DialContext(ctx, s.Network, s.Addr)
		if err != nil {
			s.mu.Unlock()
			s.wmu.Unlock()
			return nil, fmt.Errorf("dialing %s: %w", s.Addr, err)
		}
		s.c = c
		go s.readLoop(c)
	}
	c := s.c
	s.pending = append(s.pending, ch)
	s.mu.Unlock()
	h := make([]byte, 6, 6+len(payload))
	binary.BigEndian.PutUint32(h, uint32(len(payload)))
	binary.BigEndian.PutUint16(h[4:], msgType)
	c.SetWriteDeadline(time.Now().Add(time.Minute))
	_, werr := c.Write(append(h, payload...))
	s.wmu.Unlock()
	if werr != nil {
		s.mu.Lock()
		s.failLocked(c, fmt.Errorf("sending to %s: %w", s.Addr, werr))
		s.mu.Unlock()
	}
	select {
	case r := <-ch:
		return r.resp, r.err
	case <-ctx.Done():
		// The answer can no longer be matched to a caller that waits:
		// reset the connection (every call on it fails and is retried).
		s.mu.Lock()
		s.failLocked(c, fmt.Errorf("call to %s: %w", s.Addr, ctx.Err()))
		s.mu.Unlock()
		return nil, ctx.Err()
	}
}

func (s *StandInCaller) readLoop(c net.Conn) {
	br := bufio.NewReaderSize(c, 1<<20)
	for {
		var rh [5]byte
		_, err := io.ReadFull(br, rh[:])
		var resp []byte
		if err == nil {
			n := binary.BigEndian.Uint32(rh[1:])
			if n > maxStandInFrame {
				err = fmt.Errorf("answer of %d bytes", n)
			} else {
				resp = make([]byte, n)
				_, err = io.ReadFull(br, resp)
			}
		}
		s.mu.Lock()
		if err != nil {
			s.failLocked(c, fmt.Errorf("reading answer from %s: %w", s.Addr, err))
			s.mu.Unlock()
			return
		}
		if s.c != c || len(s.pending) == 0 {
			s.mu.Unlock()
			return
		}
		ch := s.pending[0]
		s.pending = s.pending[1:]
		s.mu.Unlock()
		if rh[0] != 0 {
			ch <- standInResult{err: fmt.Errorf("%w %s: %s", ErrRemote, s.Addr, resp)}
		} else {
			ch <- standInResult{resp: resp}
		}
	}
}

// failLocked ends connection c (if still current), failing every call
// waiting on it.
func (s *StandInCaller) failLocked(c net.Conn, err error) {
	if s.c != c {
		return
	}
	c.Close()
	s.c = nil
	for _, ch := range s.pending {
		ch <- standInResult{err: err}
	}
	s.pending = nil
}

// Close closes the connection.
func (s *StandInCaller) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c != nil {
		s.failLocked(s.c, errors.New("stand-in caller closed"))
	}
	return nil
}
