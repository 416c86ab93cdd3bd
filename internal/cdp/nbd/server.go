package nbd

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

// Device is a block device served over NBD. Offsets and lengths are checked
// against Size before a Device method is called. Methods are called
// concurrently.
type Device interface {
	Size() int64
	ReadAt(ctx context.Context, p []byte, off int64) error
	// WriteAt writes p at off. The server reuses p once it returns: a
	// device must not keep it (WriteBatch likewise).
	WriteAt(ctx context.Context, p []byte, off int64, fua bool) error
	// Zero makes length bytes at off read as zeros (WRITE_ZEROES).
	Zero(ctx context.Context, off, length int64, fua bool) error
	// Trim discards length bytes at off; holdfast devices zero them.
	Trim(ctx context.Context, off, length int64) error
	// Flush makes every completed write durable.
	Flush(ctx context.Context) error
}

// Extent is a run of a device's blocks for BLOCK_STATUS.
type Extent struct {
	Length uint32
	Hole   bool // reads as zeros and takes no space
}

// Extenter is implemented by devices that know where their holes are;
// others report every range as allocated data.
type Extenter interface {
	Extents(ctx context.Context, off int64, length uint32) ([]Extent, error)
}

// WriteRequest is one write of a batch.
type WriteRequest struct {
	Off  int64
	Data []byte
}

// BatchWriter is implemented by devices that take several pipelined
// writes (no FUA) at once, e.g. with one append to a log. It returns one
// error per request.
type BatchWriter interface {
	WriteBatch(ctx context.Context, reqs []WriteRequest) []error
}

// payloadPools hold write payload buffers by size class (powers of two
// from 4 KiB), so that a stream of writes does not allocate (and have the
// garbage collector scan and free) a buffer per request.
var payloadPools [16]sync.Pool

func payloadClass(n int) int {
	c := 0
	for size := 4096; size < n && c < len(payloadPools); size <<= 1 {
		c++
	}
	return c
}

// getPayload returns a buffer of n bytes, from the pool when one fits.
func getPayload(n int) []byte {
	c := payloadClass(n)
	if c >= len(payloadPools) {
		return make([]byte, n)
	}
	if b, ok := payloadPools[c].Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return make([]byte, n, 4096<<c)
}

// putPayload gives a buffer from getPayload back.
func putPayload(b []byte) {
	c := payloadClass(cap(b))
	if c >= len(payloadPools) || cap(b) != 4096<<c {
		return
	}
	b = b[:cap(b)]
	payloadPools[c].Put(&b)
}

// maxWriteBatch bounds the writes gathered into one batch.
const maxWriteBatch = 64

// InlineWriter is implemented by devices whose writes without FUA never
// wait on anything slow (no fsync, no remote): the server then runs them in
// the connection's reader, in order, instead of in a goroutine each.
type InlineWriter interface {
	InlineWrites() bool
}

// Exports looks up devices by export name.
type Exports interface {
	Export(name string) (Device, error)
	ExportNames() []string
}

// Config configures a Server.
type Config struct {
	// MaxInFlight bounds the requests of one connection processed at once.
	MaxInFlight int
	// HandshakeTimeout bounds the option haggling.
	HandshakeTimeout time.Duration
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{MaxInFlight: 64, HandshakeTimeout: 30 * time.Second}
}

// Validate checks the config.
func (c Config) Validate() error {
	if c.MaxInFlight < 1 || c.MaxInFlight > 4096 {
		return fmt.Errorf("nbd: MaxInFlight %d out of range 1..4096", c.MaxInFlight)
	}
	if c.HandshakeTimeout <= 0 {
		return fmt.Errorf("nbd: HandshakeTimeout must be positive")
	}
	return nil
}

// Server serves NBD clients.
type Server struct {
	cfg     Config
	exports Exports
	logger  *slog.Logger

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// NewServer returns a server for exports.
func NewServer(cfg Config, exports Exports, logger *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Server{cfg: cfg, exports: exports, logger: logger, conns: make(map[net.Conn]struct{})}, nil
}

// Serve accepts connections on ln until ctx is cancelled or ln fails. It
// closes ln and every connection it accepted before returning.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer s.wg.Wait()
	defer s.closeAll()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("nbd: accepting: %w", err)
		}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.ServeConn(ctx, c); err != nil {
				s.logger.Debug("nbd connection ended", "remote", c.RemoteAddr(), "err", err)
			}
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

func (s *Server) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.Close()
	}
}

// conn is one client connection.
type conn struct {
	s          *Server
	c          net.Conn
	br         *bufio.Reader
	wmu        sync.Mutex
	bw         *bufio.Writer
	replies    chan [2][]byte // header, data; nil before transmission
	noZeroes   bool
	structured bool
	metaSet    bool
	dev        Device
	name       string
}

// ServeConn runs the handshake and then the transmission phase on c and
// closes c.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) error {
	defer c.Close()
	cn := &conn{s: s, c: c, br: bufio.NewReaderSize(c, 256<<10), bw: bufio.NewWriterSize(c, 256<<10)}
	c.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	if err := cn.handshake(); err != nil {
		return fmt.Errorf("nbd handshake: %w", err)
	}
	c.SetDeadline(time.Time{})
	s.logger.Debug("nbd client attached", "export", cn.name, "structured", cn.structured)
	return cn.transmit(ctx)
}

func (cn *conn) handshake() error {
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:], magicInit)
	binary.BigEndian.PutUint64(hello[8:], magicOpt)
	binary.BigEndian.PutUint16(hello[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := cn.c.Write(hello[:]); err != nil {
		return fmt.Errorf("writing greeting: %w", err)
	}
	var cf [4]byte
	if _, err := io.ReadFull(cn.br, cf[:]); err != nil {
		return fmt.Errorf("reading client flags: %w", err)
	}
	flags := binary.BigEndian.Uint32(cf[:])
	if flags&^uint32(flagFixedNewstyle|flagNoZeroes) != 0 {
		return fmt.Errorf("unknown client flags %#x", flags)
	}
	cn.noZeroes = flags&flagNoZeroes != 0
	for {
		var oh [16]byte
		if _, err := io.ReadFull(cn.br, oh[:]); err != nil {
			return fmt.Errorf("reading option: %w", err)
		}
		if binary.BigEndian.Uint64(oh[0:]) != magicOpt {
			return errors.New("bad option magic")
		}
		opt := binary.BigEndian.Uint32(oh[8:])
		n := binary.BigEndian.Uint32(oh[12:])
		if n > MaxOptionLength {
			if n > maxDiscard {
				return fmt.Errorf("option %d of %d bytes", opt, n)
			}
			if _, err := io.CopyN(io.Discard, cn.br, int64(n)); err != nil {
				return fmt.Errorf("discarding option data: %w", err)
			}
			if err := cn.optReply(opt, repErrTooBig, []byte("option too long")); err != nil {
				return err
			}
			continue
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(cn.br, data); err != nil {
			return fmt.Errorf("reading option data: %w", err)
		}
		done, err := cn.option(opt, data)
		if err != nil || done {
			return err
		}
	}
}

// errAbort ends the handshake without an error worth logging.
var errAbort = errors.New("client aborted the handshake")

// option handles one option; done reports that transmission starts.
func (cn *conn) option(opt uint32, data []byte) (done bool, err error) {
	switch opt {
	case optExportName:
		dev, err := cn.s.exports.Export(string(data))
		if err != nil {
			return false, fmt.Errorf("export %q: %w", data, err)
		}
		cn.dev, cn.name = dev, string(data)
		b := make([]byte, 10, 10+124)
		binary.BigEndian.PutUint64(b[0:], uint64(dev.Size()))
		binary.BigEndian.PutUint16(b[8:], cn.transmissionFlags())
		if !cn.noZeroes {
			b = b[:10+124]
		}
		_, err = cn.c.Write(b)
		return true, err
	case optAbort:
		cn.optReply(opt, repAck, nil)
		return false, errAbort
	case optList:
		if len(data) != 0 {
			return false, cn.optReply(opt, repErrInvalid, []byte("LIST takes no data"))
		}
		for _, name := range cn.s.exports.ExportNames() {
			b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
			if err := cn.optReply(opt, repServer, append(b, name...)); err != nil {
				return false, err
			}
		}
		return false, cn.optReply(opt, repAck, nil)
	case optStructuredReply:
		if len(data) != 0 {
			return false, cn.optReply(opt, repErrInvalid, []byte("STRUCTURED_REPLY takes no data"))
		}
		cn.structured = true
		return false, cn.optReply(opt, repAck, nil)
	case optInfo, optGo:
		return cn.infoGo(opt, data)
	case optListMetaContext, optSetMetaContext:
		return false, cn.metaContext(opt, data)
	case optStartTLS:
		return false, cn.optReply(opt, repErrPolicy, []byte("TLS is not offered on this export; use a unix socket or the loopback"))
	default:
		return false, cn.optReply(opt, repErrUnsup, []byte("option not supported"))
	}
}

func (cn *conn) transmissionFlags() uint16 {
	f := uint16(tflagHasFlags | tflagSendFlush | tflagSendFUA | tflagSendTrim | tflagSendWriteZeros | tflagCanMultiConn | tflagSendCache)
	if cn.structured {
		f |= tflagSendDF
	}
	return f
}

// parseNameAndList parses "u32 name length, name, then the rest".
func parseName(data []byte) (string, []byte, bool) {
	if len(data) < 4 {
		return "", nil, false
	}
	n := binary.BigEndian.Uint32(data)
	if n > MaxExportName || uint64(n) > uint64(len(data)-4) {
		return "", nil, false
	}
	return string(data[4 : 4+n]), data[4+n:], true
}

func (cn *conn) infoGo(opt uint32, data []byte) (bool, error) {
	name, rest, ok := parseName(data)
	if !ok || len(rest) < 2 {
		return false, cn.optReply(opt, repErrInvalid, []byte("malformed INFO/GO request"))
	}
	nreq := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*nreq {
		return false, cn.optReply(opt, repErrInvalid, []byte("malformed INFO/GO information requests"))
	}
	dev, err := cn.s.exports.Export(name)
	if err != nil {
		return false, cn.optReply(opt, repErrUnknown, []byte(err.Error()))
	}
	wantName, wantBS := false, false
	for i := 0; i < nreq; i++ {
		switch binary.BigEndian.Uint16(rest[2*i:]) {
		case infoName:
			wantName = true
		case infoBlockSize:
			wantBS = true
		}
	}
	b := binary.BigEndian.AppendUint16(nil, infoExport)
	b = binary.BigEndian.AppendUint64(b, uint64(dev.Size()))
	b = binary.BigEndian.AppendUint16(b, cn.transmissionFlags())
	if err := cn.optReply(opt, repInfo, b); err != nil {
		return false, err
	}
	if wantName {
		b = binary.BigEndian.AppendUint16(nil, infoName)
		if err := cn.optReply(opt, repInfo, append(b, name...)); err != nil {
			return false, err
		}
	}
	if wantBS {
		b = binary.BigEndian.AppendUint16(nil, infoBlockSize)
		b = binary.BigEndian.AppendUint32(b, 1)
		b = binary.BigEndian.AppendUint32(b, PreferredBlockSize)
		b = binary.BigEndian.AppendUint32(b, MaxRequestLength)
		if err := cn.optReply(opt, repInfo, b); err != nil {
			return false, err
		}
	}
	if err := cn.optReply(opt, repAck, nil); err != nil {
		return false, err
	}
	if opt == optGo {
		cn.dev, cn.name = dev, name
		return true, nil
	}
	return false, nil
}

func (cn *conn) metaContext(opt uint32, data []byte) error {
	if opt == optSetMetaContext && !cn.structured {
		return cn.optReply(opt, repErrInvalid, []byte("SET_META_CONTEXT needs structured replies"))
	}
	name, rest, ok := parseName(data)
	if !ok || len(rest) < 4 {
		return cn.optReply(opt, repErrInvalid, []byte("malformed meta context request"))
	}
	if _, err := cn.s.exports.Export(name); err != nil {
		return cn.optReply(opt, repErrUnknown, []byte(err.Error()))
	}
	nq := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	var queries []string
	for i := uint32(0); i < nq; i++ {
		q, r, ok := parseName(rest)
		if !ok {
			return cn.optReply(opt, repErrInvalid, []byte("malformed meta context query"))
		}
		queries = append(queries, q)
		rest = r
	}
	if len(rest) != 0 {
		return cn.optReply(opt, repErrInvalid, []byte("trailing data in meta context request"))
	}
	match := false
	if opt == optListMetaContext && len(queries) == 0 {
		match = true
	}
	for _, q := range queries {
		if q == "base:allocation" || (opt == optListMetaContext && q == "base:") {
			match = true
		}
	}
	if opt == optSetMetaContext {
		cn.metaSet = match
	}
	if match {
		b := binary.BigEndian.AppendUint32(nil, metaContextA)
		if err := cn.optReply(opt, repMetaContext, append(b, "base:allocation"...)); err != nil {
			return err
		}
	}
	return cn.optReply(opt, repAck, nil)
}

func (cn *conn) optReply(opt, typ uint32, data []byte) error {
	b := make([]byte, 20, 20+len(data))
	binary.BigEndian.PutUint64(b[0:], magicOptReply)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], typ)
	binary.BigEndian.PutUint32(b[16:], uint32(len(data)))
	if _, err := cn.c.Write(append(b, data...)); err != nil {
		return fmt.Errorf("writing option reply: %w", err)
	}
	return nil
}

// transmit serves requests until DISC, EOF or an unrecoverable error.
func (cn *conn) transmit(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, cn.s.cfg.MaxInFlight)
	var wg sync.WaitGroup
	cn.replies = make(chan [2][]byte, cn.s.cfg.MaxInFlight+1)
	writerDone := make(chan struct{})
	go cn.replyWriter(writerDone)
	defer func() {
		wg.Wait()
		close(cn.replies)
		<-writerDone
	}()
	inline := false
	if iw, ok := cn.dev.(InlineWriter); ok {
		inline = iw.InlineWrites()
	}
	size := uint64(cn.dev.Size())
	var hb [requestSize]byte
	for {
		if _, err := io.ReadFull(cn.br, hb[:]); err != nil {
			if err == io.EOF {
				return nil
			}
			return fmt.Errorf("reading request: %w", err)
		}
		req, err := parseRequest(hb[:])
		if err != nil {
			return err
		}
		if req.typ == cmdDisc {
			return nil
		}
		errno := req.check(size, cn.structured, cn.metaSet)
		var payload []byte
		if req.typ == cmdWrite {
			if req.length > MaxRequestLength {
				if req.length > maxDiscard {
					return fmt.Errorf("write of %d bytes refused and too large to skip", req.length)
				}
				if _, err := io.CopyN(io.Discard, cn.br, int64(req.length)); err != nil {
					return fmt.Errorf("discarding refused write payload: %w", err)
				}
			} else {
				payload = getPayload(int(req.length))
				if _, err := io.ReadFull(cn.br, payload); err != nil {
					return fmt.Errorf("reading write payload: %w", err)
				}
			}
		}
		if errno != 0 {
			if err := cn.replyError(req, errno, "invalid request"); err != nil {
				return err
			}
			continue
		}
		if inline && req.flags&cmdFlagFUA == 0 && (req.typ == cmdWrite || req.typ == cmdWriteZeroes || req.typ == cmdTrim) {
			if bw, ok := cn.dev.(BatchWriter); ok && req.typ == cmdWrite {
				if err := cn.writeBatch(ctx, bw, req, payload, size); err != nil {
					return err
				}
				continue
			}
			if err := cn.handle(ctx, req, payload); err != nil {
				return err
			}
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := cn.handle(ctx, req, payload); err != nil {
				cn.s.logger.Debug("nbd reply failed", "err", err)
				cn.c.Close()
			}
		}()
	}
}

// writeBatch gathers the plain writes already received after req (whole,
// in the read buffer) and hands them to the device at once.
func (cn *conn) writeBatch(ctx context.Context, bw BatchWriter, req request, payload []byte, size uint64) error {
	reqs := []request{req}
	wr := []WriteRequest{{Off: int64(req.offset), Data: payload}}
	for len(reqs) < maxWriteBatch && cn.br.Buffered() >= requestSize {
		hdr, err := cn.br.Peek(requestSize)
		if err != nil {
			break
		}
		next, err := parseRequest(hdr)
		if err != nil || next.typ != cmdWrite || next.flags != 0 || next.check(size, cn.structured, cn.metaSet) != 0 ||
			cn.br.Buffered() < requestSize+int(next.length) {
			break
		}
		cn.br.Discard(requestSize)
		p := getPayload(int(next.length))
		if _, err := io.ReadFull(cn.br, p); err != nil {
			return fmt.Errorf("reading write payload: %w", err)
		}
		reqs = append(reqs, next)
		wr = append(wr, WriteRequest{Off: int64(next.offset), Data: p})
	}
	errs := bw.WriteBatch(ctx, wr)
	for _, w := range wr {
		putPayload(w.Data)
	}
	for i, r := range reqs {
		var err error
		if i < len(errs) {
			err = errs[i]
		}
		if err != nil {
			cn.s.logger.Warn("nbd write failed", "export", cn.name, "offset", r.offset, "length", r.length, "err", err)
			if rerr := cn.replyError(r, Errno(err), err.Error()); rerr != nil {
				return rerr
			}
			continue
		}
		if err := cn.replyOK(r); err != nil {
			return err
		}
	}
	return nil
}

func (cn *conn) handle(ctx context.Context, req request, payload []byte) error {
	off, n := int64(req.offset), int64(req.length)
	fua := req.flags&cmdFlagFUA != 0
	var err error
	switch req.typ {
	case cmdRead:
		buf := make([]byte, n)
		if err = cn.dev.ReadAt(ctx, buf, off); err == nil {
			return cn.replyData(req, buf)
		}
	case cmdWrite:
		err = cn.dev.WriteAt(ctx, payload, off, fua)
		putPayload(payload)
	case cmdWriteZeroes:
		err = cn.dev.Zero(ctx, off, n, fua)
	case cmdTrim:
		err = cn.dev.Trim(ctx, off, n)
		if err == nil && fua {
			err = cn.dev.Flush(ctx)
		}
	case cmdFlush:
		err = cn.dev.Flush(ctx)
	case cmdCache:
	case cmdBlockStatus:
		return cn.replyBlockStatus(ctx, req)
	}
	if err != nil {
		cn.s.logger.Warn("nbd request failed", "export", cn.name, "cmd", req.typ, "offset", off, "length", n, "err", err)
		return cn.replyError(req, Errno(err), err.Error())
	}
	return cn.replyOK(req)
}

// replyWriter writes queued replies, flushing only when the queue is empty
// so that replies to pipelined requests share system calls.
func (cn *conn) replyWriter(done chan struct{}) {
	defer close(done)
	failed := false
	for r := range cn.replies {
		if failed {
			continue
		}
		cn.bw.Write(r[0])
		cn.bw.Write(r[1])
		if len(cn.replies) == 0 {
			if err := cn.bw.Flush(); err != nil {
				failed = true
				cn.c.Close()
			}
		}
	}
}

func (cn *conn) send(parts ...[]byte) error {
	if cn.replies != nil {
		var r [2][]byte
		copy(r[:], parts)
		cn.replies <- r
		return nil
	}
	cn.wmu.Lock()
	defer cn.wmu.Unlock()
	for _, p := range parts {
		if _, err := cn.bw.Write(p); err != nil {
			return fmt.Errorf("writing reply: %w", err)
		}
	}
	if err := cn.bw.Flush(); err != nil {
		return fmt.Errorf("writing reply: %w", err)
	}
	return nil
}

func simpleHeader(cookie uint64, errno uint32) []byte {
	b := make([]byte, 16)
	binary.BigEndian.PutUint32(b[0:], magicSimple)
	binary.BigEndian.PutUint32(b[4:], errno)
	binary.BigEndian.PutUint64(b[8:], cookie)
	return b
}

func chunkHeader(cookie uint64, flags, typ uint16, length int) []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint32(b[0:], magicStructured)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], typ)
	binary.BigEndian.PutUint64(b[8:], cookie)
	binary.BigEndian.PutUint32(b[16:], uint32(length))
	return b
}

func (cn *conn) replyOK(req request) error {
	if cn.structured {
		return cn.send(chunkHeader(req.cookie, replyFlagDone, replyTypeNone, 0))
	}
	return cn.send(simpleHeader(req.cookie, 0))
}

func (cn *conn) replyData(req request, data []byte) error {
	if !cn.structured {
		return cn.send(simpleHeader(req.cookie, 0), data)
	}
	h := chunkHeader(req.cookie, replyFlagDone, replyTypeOffsetData, 8+len(data))
	h = binary.BigEndian.AppendUint64(h, req.offset)
	return cn.send(h, data)
}

func (cn *conn) replyError(req request, errno uint32, msg string) error {
	if !cn.structured {
		return cn.send(simpleHeader(req.cookie, errno))
	}
	if len(msg) > 4096 {
		msg = msg[:4096]
	}
	h := chunkHeader(req.cookie, replyFlagDone, replyTypeError, 6+len(msg))
	h = binary.BigEndian.AppendUint32(h, errno)
	h = binary.BigEndian.AppendUint16(h, uint16(len(msg)))
	return cn.send(h, []byte(msg))
}

// replyBlockStatus reports the base:allocation extents of the requested
// range (one extent with REQ_ONE).
func (cn *conn) replyBlockStatus(ctx context.Context, req request) error {
	exts := []Extent{{Length: req.length}}
	if ex, ok := cn.dev.(Extenter); ok {
		got, err := ex.Extents(ctx, int64(req.offset), req.length)
		if err != nil {
			return cn.replyError(req, Errno(err), err.Error())
		}
		if len(got) > 0 {
			exts = got
		}
	}
	if req.flags&cmdFlagReqOne != 0 {
		exts = exts[:1]
	}
	if len(exts) > maxExtents {
		exts = exts[:maxExtents]
	}
	h := chunkHeader(req.cookie, replyFlagDone, replyTypeBlockStatus, 4+8*len(exts))
	h = binary.BigEndian.AppendUint32(h, metaContextA)
	for _, e := range exts {
		h = binary.BigEndian.AppendUint32(h, e.Length)
		var st uint32
		if e.Hole {
			st = stateHole | stateZero
		}
		h = binary.BigEndian.AppendUint32(h, st)
	}
	return cn.send(h)
}
