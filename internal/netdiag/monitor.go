package netdiag

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Sink receives records. Record must not block for long: it is called on
// the data path. [Recorder] is the sink that writes the log directory.
type Sink interface {
	Record(Record)
}

// SinkFunc adapts a function to a Sink.
type SinkFunc func(Record)

// Record calls f(r).
func (f SinkFunc) Record(r Record) { f(r) }

// ConnMonitor measures one TCP connection. It is itself a net.Conn: every
// write must go through it (it counts byte offsets to match kernel
// timestamps to writes), and reads should too (see Read). It deliberately
// has no ReadFrom/WriteTo so io.Copy cannot bypass it with splice.
type ConnMonitor struct {
	conn *net.TCPConn
	raw  syscall.RawConn
	cfg  Config
	sink Sink
	log  *slog.Logger
	id   string
	peer string

	tsOn bool   // kernel timestamps enabled on the socket
	oob  []byte // SO_TIMESTAMPING control message for sampled writes

	wmu     sync.Mutex // serialises writes so offsets stay exact
	offset  uint64     // bytes written through the monitor
	nwrites uint64
	// lastSample is when the last sampled write started (Unix ns).
	lastSample int64

	mu          sync.Mutex // guards everything below and error-queue reads
	pending     map[uint32]*WriteRecord
	order       []uint32 // keys of pending, oldest first
	errq        *errQueueReader
	msgs        map[uint64]pendingMsg
	nmsgs       uint64
	tsLost      uint64
	ackMissing  uint64
	sinceDrain  int // timestamped writes since the error queue was read
	tsUnmatched uint64

	closed atomic.Bool
	// readDeadline is the read deadline in Unix ns (0: none), for the
	// direct-read path.
	readDeadline atomic.Int64
	bytesRead    atomic.Uint64
	npRecovered  atomic.Uint64

	cancel    context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

type pendingMsg struct {
	offset uint64
	end    uint64 // byte offset just past the message's last byte
	size   int
	sentAt int64
}

var connSeq atomic.Uint64

func newConnID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d", hex.EncodeToString(b[:]), connSeq.Add(1))
}

// NewConnMonitor starts measuring conn. It must be called before the first
// byte is written through the monitor. When the kernel refuses
// SO_TIMESTAMPING the monitor logs a warning and measures with TCP_INFO and
// message records only. Close the monitor (which closes conn) to stop it.
func NewConnMonitor(conn *net.TCPConn, cfg Config, sink Sink, log *slog.Logger) (*ConnMonitor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("netdiag config: %w", err)
	}
	if sink == nil {
		sink = SinkFunc(func(Record) {})
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("getting raw connection: %w", err)
	}
	m := &ConnMonitor{
		conn:    conn,
		raw:     raw,
		cfg:     cfg,
		sink:    sink,
		log:     log,
		id:      newConnID(),
		peer:    cfg.Peer,
		pending: make(map[uint32]*WriteRecord),
		msgs:    make(map[uint64]pendingMsg),
		errq:    newErrQueueReader(),
		done:    make(chan struct{}),
	}
	if m.peer == "" {
		m.peer = conn.RemoteAddr().String()
	}
	if cfg.KernelTimestamps {
		if err := m.enableTimestamps(); err != nil {
			log.Warn("netdiag: kernel transmit timestamps unavailable; using TCP_INFO only", "peer", m.peer, "err", err)
		} else {
			m.tsOn = true
			m.oob = txCmsg()
		}
	}
	m.emit(Record{Kind: KindConn, Open: &ConnOpen{
		Local:            conn.LocalAddr().String(),
		Remote:           conn.RemoteAddr().String(),
		Role:             cfg.Role,
		KernelTimestamps: m.tsOn,
		WriteSampleEvery: cfg.WriteSampleEvery,
	}})
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	go m.run(ctx)
	return m, nil
}

func (m *ConnMonitor) enableTimestamps() error {
	var serr error
	err := m.raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPING, timestampingFlags)
		if serr != nil {
			// Kernels before 6.2 lack OPT_ID_TCP; the key then counts from
			// snd_una, which equals our offset 0 on a fresh connection.
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPING,
				timestampingFlags&^unix.SOF_TIMESTAMPING_OPT_ID_TCP)
		}
	})
	if err != nil {
		return fmt.Errorf("setting SO_TIMESTAMPING: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("setting SO_TIMESTAMPING: %w", serr)
	}
	return nil
}

// ID returns the connection's identifier in the log.
func (m *ConnMonitor) ID() string { return m.id }

// Peer returns the peer label used in the log.
func (m *ConnMonitor) Peer() string { return m.peer }

// TCPConn returns the underlying connection for socket options. Writing to
// it directly breaks the offset accounting.
func (m *ConnMonitor) TCPConn() *net.TCPConn { return m.conn }

// Offset returns the number of bytes written through the monitor, which is
// the offset the next write will start at.
func (m *ConnMonitor) Offset() uint64 {
	m.wmu.Lock()
	defer m.wmu.Unlock()
	return m.offset
}

func (m *ConnMonitor) emit(r Record) {
	if r.Time == 0 {
		r.Time = time.Now().UnixNano()
	}
	r.Conn = m.id
	r.Peer = m.peer
	m.sink.Record(r)
}

// Write writes p and records it. Sampled writes (one in WriteSampleEvery,
// at most one per WriteSampleInterval) are sent with a per-write
// SO_TIMESTAMPING control message so that the kernel reports their
// scheduled, sent and acknowledged times.
func (m *ConnMonitor) Write(p []byte) (int, error) {
	m.wmu.Lock()
	defer m.wmu.Unlock()
	m.nwrites++
	off := m.offset
	start := time.Now().UnixNano()
	sample := (m.nwrites-1)%uint64(m.cfg.WriteSampleEvery) == 0 &&
		(m.lastSample == 0 || start-m.lastSample >= int64(m.cfg.WriteSampleInterval))
	if sample {
		m.lastSample = start
	}
	var (
		n   int
		err error
	)
	if sample && m.tsOn {
		n, err = m.sendTimestamped(p)
	} else {
		n, err = m.conn.Write(p)
	}
	end := time.Now().UnixNano()
	m.offset += uint64(n)
	if sample && n > 0 {
		w := &WriteRecord{Offset: off, Size: n, Start: start, End: end}
		if m.tsOn {
			m.mu.Lock()
			m.addPending(uint32(off+uint64(n)-1), w)
			// Error-queue entries count against the socket's receive
			// buffer and the kernel drops timestamps beyond it: when
			// writes are timestamped faster than the drain ticker empties
			// the queue, drain here too.
			if m.sinceDrain++; m.sinceDrain >= drainEveryWrites {
				m.drainLocked()
			}
			m.mu.Unlock()
		} else {
			m.emit(Record{Kind: KindWrite, Write: w})
		}
	}
	return n, err
}

// sendTimestamped writes all of p with sendmsg carrying the timestamp
// request, waiting through the runtime poller (honouring write deadlines).
func (m *ConnMonitor) sendTimestamped(p []byte) (int, error) {
	var (
		written int
		serr    error
	)
	err := m.raw.Write(func(fd uintptr) bool {
		for written < len(p) {
			// MSG_EOR ends the segment at this write's last byte, so that a
			// later write is not appended to it and does not take over its
			// timestamp key (the kernel keeps one key per segment).
			n, err := unix.SendmsgN(int(fd), p[written:], m.oob, nil, unix.MSG_NOSIGNAL|unix.MSG_EOR)
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN:
				return false
			case err != nil:
				serr = err
				return true
			}
			written += n
		}
		return true
	})
	if serr != nil {
		err = serr
	}
	if err != nil {
		return written, &net.OpError{Op: "write", Net: "tcp", Source: m.conn.LocalAddr(), Addr: m.conn.RemoteAddr(), Err: err}
	}
	return written, nil
}

func (m *ConnMonitor) addPending(key uint32, w *WriteRecord) {
	if old, ok := m.pending[key]; ok {
		// Only possible after 4 GiB in flight; log the old one as is.
		m.emit(Record{Kind: KindWrite, Write: old})
	}
	m.pending[key] = w
	m.order = append(m.order, key)
	for len(m.order) > MaxPendingWrites {
		k := m.order[0]
		m.order = m.order[1:]
		if old, ok := m.pending[k]; ok {
			delete(m.pending, k)
			m.tsLost++
			m.emit(Record{Kind: KindWrite, Write: old})
		}
	}
}

// drain reads every entry of the socket error queue.
func (m *ConnMonitor) drain() {
	if !m.tsOn {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.drainLocked()
}

func (m *ConnMonitor) drainLocked() {
	m.sinceDrain = 0
	_ = m.raw.Control(func(fd uintptr) {
		m.errq.read(int(fd), func(oob []byte) {
			if oob == nil {
				m.tsLost++
				return
			}
			ts, err := parseTxTimestamp(oob)
			if err != nil {
				m.tsLost++
				return
			}
			m.applyTimestamp(ts)
		})
	})
}

func (m *ConnMonitor) applyTimestamp(ts txTimestamp) {
	w, ok := m.pending[ts.Key]
	if !ok {
		// Intermediate sendmsg of a write split by the kernel, or a write
		// already evicted.
		m.tsUnmatched++
		return
	}
	switch ts.Stage {
	case StageSched:
		if w.Sched == 0 {
			w.Sched = ts.UnixNano
		}
	case StageSent:
		if w.Sent == 0 {
			w.Sent = ts.UnixNano
		}
	case StageAcked:
		// ACKs are cumulative: older writes still waiting will not get
		// their own acknowledgement timestamp any more (the kernel
		// occasionally skips one, e.g. when a later write's data was
		// appended to the same segment). Log them without it, in order.
		for _, k := range m.order {
			if k == ts.Key {
				break
			}
			if old, ok := m.pending[k]; ok {
				delete(m.pending, k)
				m.ackMissing++
				m.emit(Record{Kind: KindWrite, Write: old})
			}
		}
		w.Acked = ts.UnixNano
		delete(m.pending, ts.Key)
		m.emit(Record{Kind: KindWrite, Write: w})
		m.compactOrder()
	}
}

// compactOrder drops keys of completed writes from the head of the queue.
func (m *ConnMonitor) compactOrder() {
	i := 0
	for i < len(m.order) {
		if _, ok := m.pending[m.order[i]]; ok {
			break
		}
		i++
	}
	m.order = m.order[i:]
}

// pendingWrites returns how many sampled writes still wait for their
// acknowledgement timestamp.
func (m *ConnMonitor) pendingWrites() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.pending)
}

// Sent records that message msgID of size bytes, starting at byte offset
// (see Offset), was handed to the connection at t.
func (m *ConnMonitor) Sent(msgID uint64, offset uint64, size int, t time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.msgs) >= MaxPendingMsgs {
		return
	}
	m.msgs[msgID] = pendingMsg{offset: offset, end: offset + uint64(size), size: size, sentAt: t.UnixNano()}
}

// SentEnd records that the last byte of message msgID has just been
// written through the monitor. Call it after writing when a layer above the
// monitor (TLS, framing) changes the number of bytes on the wire, so that
// Sent's offset+size is not where the message ends on the connection; the
// message's transit can then be split at the kernel's timestamps of its
// last write. Unknown ids (already acknowledged) are ignored.
func (m *ConnMonitor) SentEnd(msgID uint64) {
	end := m.Offset()
	m.mu.Lock()
	defer m.mu.Unlock()
	if pm, ok := m.msgs[msgID]; ok {
		pm.end = end
		m.msgs[msgID] = pm
	}
}

// ErrUnknownMsg is returned by Acked for an id that Sent never recorded
// (or that was already acknowledged).
var ErrUnknownMsg = errors.New("acknowledgement for unknown message")

// Acked records the receiver's acknowledgement of msgID, arriving now.
// recv and handoff are the receiver's timestamps from its [Ack]; only their
// difference is used, so the receiver's clock may differ from ours.
func (m *ConnMonitor) Acked(msgID uint64, recv, handoff time.Time) error {
	now := time.Now().UnixNano()
	m.mu.Lock()
	pm, ok := m.msgs[msgID]
	if ok {
		delete(m.msgs, msgID)
		m.nmsgs++
	}
	n := m.nmsgs
	m.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: id %d", ErrUnknownMsg, msgID)
	}
	if (n-1)%uint64(m.cfg.MsgSampleEvery) != 0 {
		return nil
	}
	rec := &MsgRecord{
		ID: msgID, Offset: pm.offset, End: pm.end, Size: pm.size,
		SentAt: pm.sentAt, AckedAt: now,
		RecvAt: recv.UnixNano(), HandoffAt: handoff.UnixNano(),
	}
	rec.Transit = max(now-pm.sentAt, 0)
	rec.ReceiverApp = min(max(rec.HandoffAt-rec.RecvAt, 0), rec.Transit)
	rec.Network = rec.Transit - rec.ReceiverApp
	m.emit(Record{Time: now, Kind: KindMsg, Msg: rec})
	return nil
}

// AckedFrom is Acked with the fields of a decoded [Ack].
func (m *ConnMonitor) AckedFrom(a Ack) error {
	return m.Acked(a.MsgID, time.Unix(0, a.RecvUnixNano), time.Unix(0, a.HandoffUnixNano))
}

// Read reads from the connection. It also works around a Go runtime
// behaviour: transmit timestamps make the socket report EPOLLERR, and when
// that arrives alone (socket neither readable nor writable) the runtime
// marks the descriptor and fails the next read wait with "not pollable"
// until another event arrives. Read then drains the error queue and reads
// with poll(2) directly until the runtime's state clears, honouring the
// read deadline set through the monitor.
func (m *ConnMonitor) Read(p []byte) (int, error) {
	n, err := m.conn.Read(p)
	if err != nil && m.tsOn && isNotPollable(err) {
		m.npRecovered.Add(1)
		n, err = m.readDirect(p)
	}
	m.bytesRead.Add(uint64(n))
	return n, err
}

func isNotPollable(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Err != nil && oe.Err.Error() == "not pollable"
}

// drainEveryWrites is how many timestamped writes may queue their
// timestamps (three each) before a write reads the error queue itself.
const drainEveryWrites = 8

// readDirectPoll is the poll(2) timeout of one readDirect wait, which is
// also the longest a concurrent Close waits for it.
const readDirectPoll = 10 // ms

func (m *ConnMonitor) readDirect(p []byte) (int, error) {
	for {
		if m.closed.Load() {
			return 0, net.ErrClosed
		}
		wait := readDirectPoll
		if dl := m.readDeadline.Load(); dl != 0 {
			left := time.Until(time.Unix(0, dl))
			if left <= 0 {
				return 0, &net.OpError{Op: "read", Net: "tcp", Source: m.conn.LocalAddr(), Addr: m.conn.RemoteAddr(), Err: os.ErrDeadlineExceeded}
			}
			wait = min(wait, int(left.Milliseconds())+1)
		}
		m.drain()
		var (
			n    int
			rerr error
		)
		cerr := m.raw.Control(func(fd uintptr) {
			n, rerr = unix.Read(int(fd), p)
			if rerr == unix.EAGAIN {
				fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
				_, _ = unix.Poll(fds, wait)
			}
		})
		switch {
		case cerr != nil:
			return 0, fmt.Errorf("reading %s: %w", m.peer, cerr)
		case rerr == unix.EAGAIN || rerr == unix.EINTR:
			continue
		case rerr != nil:
			return 0, &net.OpError{Op: "read", Net: "tcp", Source: m.conn.LocalAddr(), Addr: m.conn.RemoteAddr(), Err: rerr}
		case n == 0 && len(p) > 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

func (m *ConnMonitor) run(ctx context.Context) {
	defer close(m.done)
	var tiC, drC <-chan time.Time
	if m.cfg.TCPInfoInterval > 0 {
		t := time.NewTicker(m.cfg.TCPInfoInterval)
		defer t.Stop()
		tiC = t.C
		m.sampleTCPInfo()
	}
	if m.tsOn {
		t := time.NewTicker(m.cfg.DrainInterval)
		defer t.Stop()
		drC = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tiC:
			m.sampleTCPInfo()
		case <-drC:
			m.drain()
		}
	}
}

// Sample records one TCP_INFO sample now, in addition to the periodic ones.
func (m *ConnMonitor) Sample() { m.sampleTCPInfo() }

func (m *ConnMonitor) sampleTCPInfo() {
	var (
		s    TCPInfoSample
		serr error
	)
	if err := m.raw.Control(func(fd uintptr) { s, serr = readTCPInfo(int(fd)) }); err != nil {
		return // closed
	}
	if serr != nil {
		m.log.Debug("netdiag: TCP_INFO sample failed", "peer", m.peer, "err", serr)
		return
	}
	m.emit(Record{Kind: KindTCPInfo, TCPInfo: &s})
}

// Finish stops measuring and records the connection's totals without
// closing it. It is idempotent; Close calls it.
func (m *ConnMonitor) Finish() {
	m.closeOnce.Do(func() {
		m.cancel()
		<-m.done
		m.drain()
		m.sampleTCPInfo()
		m.mu.Lock()
		for _, k := range m.order {
			if w, ok := m.pending[k]; ok {
				if w.Acked == 0 {
					m.ackMissing++
				}
				m.emit(Record{Kind: KindWrite, Write: w})
			}
		}
		m.pending = map[uint32]*WriteRecord{}
		m.order = nil
		lost, missing := m.tsLost, m.ackMissing
		m.mu.Unlock()
		m.wmu.Lock()
		c := &ConnClose{BytesWritten: m.offset, Writes: m.nwrites}
		m.wmu.Unlock()
		c.BytesRead = m.bytesRead.Load()
		c.TimestampsLost = lost
		c.AckTimestampsMissing = missing
		c.NotPollableRecoveries = m.npRecovered.Load()
		m.emit(Record{Kind: KindClose, Close: c})
	})
}

// Close finishes the measurement and closes the connection.
func (m *ConnMonitor) Close() error {
	m.Finish()
	m.closed.Store(true)
	if err := m.conn.Close(); err != nil {
		return fmt.Errorf("closing connection to %s: %w", m.peer, err)
	}
	return nil
}

// CloseWrite finishes nothing; it shuts down the sending side.
func (m *ConnMonitor) CloseWrite() error { return m.conn.CloseWrite() }

// LocalAddr returns the local address.
func (m *ConnMonitor) LocalAddr() net.Addr { return m.conn.LocalAddr() }

// RemoteAddr returns the remote address.
func (m *ConnMonitor) RemoteAddr() net.Addr { return m.conn.RemoteAddr() }

// SetDeadline sets the read and write deadlines.
func (m *ConnMonitor) SetDeadline(t time.Time) error {
	m.storeReadDeadline(t)
	return m.conn.SetDeadline(t)
}

// SetReadDeadline sets the read deadline. The direct-read path (see Read)
// honours it too.
func (m *ConnMonitor) SetReadDeadline(t time.Time) error {
	m.storeReadDeadline(t)
	return m.conn.SetReadDeadline(t)
}

func (m *ConnMonitor) storeReadDeadline(t time.Time) {
	if t.IsZero() {
		m.readDeadline.Store(0)
		return
	}
	m.readDeadline.Store(t.UnixNano())
}

// SetWriteDeadline sets the write deadline.
func (m *ConnMonitor) SetWriteDeadline(t time.Time) error { return m.conn.SetWriteDeadline(t) }

var _ net.Conn = (*ConnMonitor)(nil)
