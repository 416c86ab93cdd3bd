package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"
)

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimSpace(p)))
	return len(p), nil
}

// memDevice is an in-memory Device for protocol tests.
type memDevice struct {
	mu      sync.Mutex
	data    []byte
	flushes int
}

func (d *memDevice) Size() int64 { return int64(len(d.data)) }
func (d *memDevice) ReadAt(_ context.Context, p []byte, off int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(p, d.data[off:])
	return nil
}
func (d *memDevice) WriteAt(_ context.Context, p []byte, off int64, _ bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(d.data[off:], p)
	return nil
}
func (d *memDevice) Zero(_ context.Context, off, n int64, _ bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	clear(d.data[off : off+n])
	return nil
}
func (d *memDevice) Trim(ctx context.Context, off, n int64) error { return d.Zero(ctx, off, n, false) }
func (d *memDevice) Flush(context.Context) error {
	d.mu.Lock()
	d.flushes++
	d.mu.Unlock()
	return nil
}

type memExports map[string]Device

func (e memExports) Export(name string) (Device, error) {
	if d, ok := e[name]; ok {
		return d, nil
	}
	return nil, errors.New("no such export")
}
func (e memExports) ExportNames() []string { return []string{"disk"} }

func newTestServer(t *testing.T) (*Server, *memDevice) {
	dev := &memDevice{data: make([]byte, 1<<20)}
	s, err := NewServer(DefaultConfig(), memExports{"disk": dev}, slog.New(slog.NewTextHandler(tWriter{t}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return s, dev
}

// client is a minimal NBD client for protocol tests (the real clients,
// qemu-io, nbdinfo and nbdcopy, are used in package cdp's tests).
type client struct {
	t *testing.T
	c net.Conn
}

func dialTest(t *testing.T, s *Server, structured bool) *client {
	a, b := net.Pipe()
	done := make(chan struct{})
	go func() { s.ServeConn(context.Background(), b); close(done) }()
	t.Cleanup(func() { a.Close(); <-done })
	c := &client{t: t, c: a}
	a.SetDeadline(time.Now().Add(10 * time.Second))
	hello := make([]byte, 18)
	io.ReadFull(a, hello)
	if binary.BigEndian.Uint64(hello) != magicInit || binary.BigEndian.Uint64(hello[8:]) != magicOpt {
		t.Fatalf("bad greeting %x", hello)
	}
	a.Write(binary.BigEndian.AppendUint32(nil, flagFixedNewstyle|flagNoZeroes))
	if structured {
		c.option(optStructuredReply, nil)
		if typ, _ := c.optReply(); typ != repAck {
			t.Fatalf("structured reply refused: %#x", typ)
		}
	}
	data := binary.BigEndian.AppendUint32(nil, 4)
	data = append(data, "disk"...)
	data = binary.BigEndian.AppendUint16(data, 0)
	c.option(optGo, data)
	for {
		typ, _ := c.optReply()
		if typ == repAck {
			break
		}
		if typ != repInfo {
			t.Fatalf("GO reply %#x", typ)
		}
	}
	return c
}

func (c *client) option(opt uint32, data []byte) {
	b := binary.BigEndian.AppendUint64(nil, magicOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	c.c.Write(append(b, data...))
}

func (c *client) optReply() (uint32, []byte) {
	h := make([]byte, 20)
	if _, err := io.ReadFull(c.c, h); err != nil {
		c.t.Fatalf("reading option reply: %v", err)
	}
	data := make([]byte, binary.BigEndian.Uint32(h[16:]))
	io.ReadFull(c.c, data)
	return binary.BigEndian.Uint32(h[12:]), data
}

func (c *client) request(typ, flags uint16, cookie, off uint64, length uint32, payload []byte) {
	b := binary.BigEndian.AppendUint32(nil, magicRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	if _, err := c.c.Write(append(b, payload...)); err != nil {
		c.t.Fatalf("sending request: %v", err)
	}
}

// simpleReply reads a simple reply and, if dataLen > 0 and no error, its data.
func (c *client) simpleReply(dataLen int) (errno uint32, cookie uint64, data []byte) {
	h := make([]byte, 16)
	if _, err := io.ReadFull(c.c, h); err != nil {
		c.t.Fatalf("reading reply: %v", err)
	}
	if binary.BigEndian.Uint32(h) != magicSimple {
		c.t.Fatalf("reply magic %x", h[:4])
	}
	errno = binary.BigEndian.Uint32(h[4:])
	if errno == 0 && dataLen > 0 {
		data = make([]byte, dataLen)
		io.ReadFull(c.c, data)
	}
	return errno, binary.BigEndian.Uint64(h[8:]), data
}

// TestBadRequestsGetErrorsAndServerGoesOn sends malformed and out-of-range
// requests; each gets the NBD error the protocol asks for, and a valid
// request after them still works.
func TestBadRequestsGetErrorsAndServerGoesOn(t *testing.T) {
	s, dev := newTestServer(t)
	c := dialTest(t, s, false)
	size := uint64(dev.Size())
	tests := []struct {
		name    string
		typ     uint16
		flags   uint16
		off     uint64
		length  uint32
		payload bool
		want    uint32
	}{
		{"read past end", cmdRead, 0, size - 10, 20, false, errInval},
		{"read offset overflow", cmdRead, 0, ^uint64(0) - 5, 4096, false, errInval},
		{"read too long", cmdRead, 0, 0, MaxRequestLength + 1, false, errInval},
		{"write past end", cmdWrite, 0, size - 10, 20, true, errNoSpc},
		{"write too long (payload skipped)", cmdWrite, 0, 0, MaxRequestLength + 4096, true, errInval},
		{"zero-length read", cmdRead, 0, 0, 0, false, errInval},
		{"unknown command", 42, 0, 0, 512, false, errInval},
		{"unknown flag", cmdRead, 1 << 9, 0, 512, false, errInval},
		{"DF without structured replies", cmdRead, cmdFlagDF, 0, 512, false, errInval},
		{"flush with a range", cmdFlush, 0, 4096, 4096, false, errInval},
		{"trim past end", cmdTrim, 0, size, 1, false, errInval},
		{"block status unnegotiated", cmdBlockStatus, 0, 0, 4096, false, errInval},
		{"fast zero not offered", cmdWriteZeroes, cmdFlagFastZero, 0, 4096, false, errNotSup},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c.t = t
			var p []byte
			if tc.payload {
				p = make([]byte, tc.length)
			}
			c.request(tc.typ, tc.flags, uint64(i+100), tc.off, tc.length, p)
			errno, cookie, _ := c.simpleReply(0)
			if errno != tc.want || cookie != uint64(i+100) {
				t.Fatalf("errno %d cookie %d, want errno %d cookie %d", errno, cookie, tc.want, i+100)
			}
		})
	}
	c.t = t
	c.request(cmdWrite, cmdFlagFUA, 7, 4096, 5, []byte("hello"))
	if errno, _, _ := c.simpleReply(0); errno != 0 {
		t.Fatalf("valid write after bad requests: errno %d", errno)
	}
	c.request(cmdRead, 0, 8, 4096, 5, nil)
	if errno, _, data := c.simpleReply(5); errno != 0 || string(data) != "hello" {
		t.Fatalf("valid read after bad requests: errno %d data %q", errno, data)
	}
	c.request(cmdFlush, 0, 9, 0, 0, nil)
	if errno, _, _ := c.simpleReply(0); errno != 0 || dev.flushes != 1 {
		t.Fatalf("flush: errno %d flushes %d", errno, dev.flushes)
	}
}

func TestStructuredReadAndError(t *testing.T) {
	s, dev := newTestServer(t)
	copy(dev.data[8192:], "structured")
	c := dialTest(t, s, true)
	c.request(cmdRead, 0, 1, 8192, 10, nil)
	h := make([]byte, 20)
	io.ReadFull(c.c, h)
	if binary.BigEndian.Uint32(h) != magicStructured || binary.BigEndian.Uint16(h[6:]) != replyTypeOffsetData || binary.BigEndian.Uint16(h[4:])&replyFlagDone == 0 {
		t.Fatalf("structured read header %x", h)
	}
	body := make([]byte, binary.BigEndian.Uint32(h[16:]))
	io.ReadFull(c.c, body)
	if binary.BigEndian.Uint64(body) != 8192 || string(body[8:]) != "structured" {
		t.Fatalf("structured read body %q", body)
	}
	c.request(cmdRead, 0, 2, uint64(dev.Size()), 10, nil)
	io.ReadFull(c.c, h)
	if binary.BigEndian.Uint16(h[6:]) != replyTypeError {
		t.Fatalf("structured error type %d", binary.BigEndian.Uint16(h[6:]))
	}
	body = make([]byte, binary.BigEndian.Uint32(h[16:]))
	io.ReadFull(c.c, body)
	if binary.BigEndian.Uint32(body) != errInval {
		t.Fatalf("structured error errno %d", binary.BigEndian.Uint32(body))
	}
}

func TestBadMagicClosesOnlyThatConnection(t *testing.T) {
	s, _ := newTestServer(t)
	c := dialTest(t, s, false)
	c.c.Write(make([]byte, requestSize)) // zero magic
	if _, err := c.c.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection with a bad request magic stayed open")
	}
	c2 := dialTest(t, s, false)
	c2.request(cmdRead, 0, 1, 0, 16, nil)
	if errno, _, _ := c2.simpleReply(16); errno != 0 {
		t.Fatalf("second connection: errno %d", errno)
	}
}

func FuzzParseRequest(f *testing.F) {
	ok := binary.BigEndian.AppendUint32(nil, magicRequest)
	ok = append(ok, make([]byte, 24)...)
	f.Add(ok, true, true)
	f.Add([]byte("short"), false, false)
	f.Fuzz(func(t *testing.T, b []byte, structured, meta bool) {
		r, err := parseRequest(b)
		if err != nil {
			return
		}
		const size = 1 << 30
		if errno := r.check(size, structured, meta); errno == 0 {
			end := r.offset + uint64(r.length)
			switch r.typ {
			case cmdRead, cmdWrite, cmdTrim, cmdWriteZeroes, cmdBlockStatus, cmdCache:
				if end < r.offset || end > size {
					t.Fatalf("accepted out-of-range request %+v", r)
				}
			case cmdFlush:
			default:
				t.Fatalf("accepted unknown command %d", r.typ)
			}
			if (r.typ == cmdRead || r.typ == cmdWrite) && r.length > MaxRequestLength {
				t.Fatalf("accepted oversized request %+v", r)
			}
		}
	})
}

// FuzzSession feeds arbitrary bytes as a whole client session (handshake
// and requests): the server must neither panic nor hang, and must answer a
// fresh well-formed client afterwards.
func FuzzSession(f *testing.F) {
	var seed bytes.Buffer
	seed.Write(binary.BigEndian.AppendUint32(nil, flagFixedNewstyle|flagNoZeroes))
	opt := func(o uint32, data []byte) {
		b := binary.BigEndian.AppendUint64(nil, magicOpt)
		b = binary.BigEndian.AppendUint32(b, o)
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		seed.Write(append(b, data...))
	}
	opt(optStructuredReply, nil)
	opt(optList, nil)
	name := append(binary.BigEndian.AppendUint32(nil, 4), "disk"...)
	meta := append(append([]byte{}, name...), binary.BigEndian.AppendUint32(nil, 1)...)
	meta = append(meta, append(binary.BigEndian.AppendUint32(nil, 15), "base:allocation"...)...)
	opt(optSetMetaContext, meta)
	opt(optGo, append(name, 0, 0))
	req := func(typ uint16, off uint64, n uint32, payload []byte) {
		b := binary.BigEndian.AppendUint32(nil, magicRequest)
		b = binary.BigEndian.AppendUint16(b, 0)
		b = binary.BigEndian.AppendUint16(b, typ)
		b = binary.BigEndian.AppendUint64(b, 1)
		b = binary.BigEndian.AppendUint64(b, off)
		b = binary.BigEndian.AppendUint32(b, n)
		seed.Write(append(b, payload...))
	}
	req(cmdWrite, 0, 4, []byte("abcd"))
	req(cmdRead, 0, 4, nil)
	req(cmdBlockStatus, 0, 4096, nil)
	req(cmdDisc, 0, 0, nil)
	f.Add(seed.Bytes())
	f.Fuzz(func(t *testing.T, in []byte) {
		// Half the sessions go to a device that takes write batches and
		// inline writes, half to one that does not.
		var dev Device = &memDevice{data: make([]byte, 1<<16)}
		if len(in)%2 == 0 {
			dev = &batchDevice{memDevice: memDevice{data: make([]byte, 1<<16)}}
		}
		s, _ := NewServer(Config{MaxInFlight: 4, HandshakeTimeout: time.Second}, memExports{"disk": dev}, slog.New(slog.DiscardHandler))
		a, b := net.Pipe()
		done := make(chan struct{})
		go func() { s.ServeConn(context.Background(), b); close(done) }()
		go io.Copy(io.Discard, a)
		a.Write(in)
		a.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("server did not finish after the client closed")
		}
	})
}

// batchDevice is a memDevice that takes batches and records their sizes.
type batchDevice struct {
	memDevice
	mu      sync.Mutex
	batches []int
}

func (d *batchDevice) InlineWrites() bool { return true }

func (d *batchDevice) WriteBatch(ctx context.Context, reqs []WriteRequest) []error {
	d.mu.Lock()
	d.batches = append(d.batches, len(reqs))
	d.mu.Unlock()
	errs := make([]error, len(reqs))
	for i, r := range reqs {
		errs[i] = d.WriteAt(ctx, r.Data, r.Off, false)
	}
	return errs
}

// TestPipelinedWritesAreBatched sends writes back to back in one packet:
// the server hands them to the device together, answers each, and stops a
// batch at a request that must be refused.
func TestPipelinedWritesAreBatched(t *testing.T) {
	dev := &batchDevice{memDevice: memDevice{data: make([]byte, 1<<20)}}
	s, err := NewServer(DefaultConfig(), memExports{"disk": dev}, slog.New(slog.NewTextHandler(tWriter{t}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	c := dialTest(t, s, false)
	var burst bytes.Buffer
	req := func(cookie, off uint64, n uint32, fill byte) {
		b := binary.BigEndian.AppendUint32(nil, magicRequest)
		b = binary.BigEndian.AppendUint16(b, 0)
		b = binary.BigEndian.AppendUint16(b, cmdWrite)
		b = binary.BigEndian.AppendUint64(b, cookie)
		b = binary.BigEndian.AppendUint64(b, off)
		b = binary.BigEndian.AppendUint32(b, n)
		burst.Write(append(b, bytes.Repeat([]byte{fill}, int(n))...))
	}
	for i := 0; i < 8; i++ {
		req(uint64(i), uint64(i)*4096, 4096, byte(i+1))
	}
	req(8, 1<<20, 4096, 9) // past the end: ENOSPC, ends the batch
	req(9, 0, 512, 10)
	go c.c.Write(burst.Bytes())
	got := map[uint64]uint32{}
	for i := 0; i < 10; i++ {
		errno, cookie, _ := c.simpleReply(0)
		got[cookie] = errno
	}
	for i := uint64(0); i < 10; i++ {
		want := uint32(0)
		if i == 8 {
			want = errNoSpc
		}
		if e, ok := got[i]; !ok || e != want {
			t.Fatalf("reply to %d: errno %d (present %v), want %d", i, e, ok, want)
		}
	}
	if dev.data[0] != 10 || dev.data[512] != 1 || dev.data[7*4096] != 8 {
		t.Fatalf("device content wrong: %d %d %d", dev.data[0], dev.data[512], dev.data[7*4096])
	}
	dev.mu.Lock()
	defer dev.mu.Unlock()
	maxBatch := 0
	for _, n := range dev.batches {
		maxBatch = max(maxBatch, n)
	}
	if maxBatch < 2 {
		t.Fatalf("writes were not batched: %v", dev.batches)
	}
}
