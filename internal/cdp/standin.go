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

// StandInCaller is a Caller over the stand-in transport: one connection,
// calls in turn, redialled after a failure.
type StandInCaller struct {
	Network, Addr string

	mu sync.Mutex
	c  net.Conn
	br *bufio.Reader
}

// ErrRemote wraps an error the remote agent answered with.
var ErrRemote = errors.New("remote agent")

// Call sends one request and waits for its answer.
func (s *StandInCaller) Call(ctx context.Context, msgType uint16, payload []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c == nil {
		var d net.Dialer
		c, err := d.DialContext(ctx, s.Network, s.Addr)
		if err != nil {
			return nil, fmt.Errorf("dialing %s: %w", s.Addr, err)
		}
		s.c, s.br = c, bufio.NewReaderSize(c, 1<<20)
	}
	resp, err := s.call(ctx, msgType, payload)
	if err != nil && !errors.Is(err, ErrRemote) {
		s.c.Close()
		s.c = nil
	}
	return resp, err
}

func (s *StandInCaller) call(ctx context.Context, msgType uint16, payload []byte) ([]byte, error) {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(time.Minute)
	}
	s.c.SetDeadline(dl)
	h := make([]byte, 6, 6+len(payload))
	binary.BigEndian.PutUint32(h, uint32(len(payload)))
	binary.BigEndian.PutUint16(h[4:], msgType)
	if _, err := s.c.Write(append(h, payload...)); err != nil {
		return nil, fmt.Errorf("sending to %s: %w", s.Addr, err)
	}
	var rh [5]byte
	if _, err := io.ReadFull(s.br, rh[:]); err != nil {
		return nil, fmt.Errorf("reading answer from %s: %w", s.Addr, err)
	}
	n := binary.BigEndian.Uint32(rh[1:])
	if n > maxStandInFrame {
		return nil, fmt.Errorf("answer of %d bytes from %s", n, s.Addr)
	}
	resp := make([]byte, n)
	if _, err := io.ReadFull(s.br, resp); err != nil {
		return nil, fmt.Errorf("reading answer from %s: %w", s.Addr, err)
	}
	if rh[0] != 0 {
		return nil, fmt.Errorf("%w %s: %s", ErrRemote, s.Addr, resp)
	}
	return resp, nil
}

// Close closes the connection.
func (s *StandInCaller) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c != nil {
		return s.c.Close()
	}
	return nil
}
