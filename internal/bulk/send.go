package bulk

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/holdfast/holdfast/internal/pace"
	"github.com/holdfast/holdfast/internal/wire"
)

// Scheduler limits.
const (
	// MinRoundTime is the shortest sub-transfer.
	MinRoundTime = 200 * time.Millisecond
	// slowFactor: a connection whose send rate in a sub-transfer is below
	// this fraction of the median is left out of the next ones.
	slowFactor = 0.33
	// benchRounds is how many sub-transfers a left-out connection sits out
	// before it is probed again with a small amount.
	benchRounds = 4
	// minStall is the least time without acks before a connection's
	// unacknowledged blocks are re-sent on others.
	minStall = 2 * time.Second
	// growMargin: --streams auto adds a connection while aggregate goodput
	// grows by more than this fraction per added connection.
	growMargin = 0.05
	// holdRounds: after a connection added did not help, the count is held
	// this many sub-transfers before growing is tried again.
	holdRounds = 10
	// minWindow is the least a connection may have unacknowledged.
	minWindow = 2 << 20
)

// minLearnTime is the shortest copy whose goodput goes into the path memory
// (a variable for tests).
var minLearnTime = 8 * time.Second

// Options shape one transfer.
type Options struct {
	// Streams is the number of connections; 0 means auto (start at 4,
	// grow while aggregate goodput grows, shrink when it does not).
	Streams int `json:"streams"`
	// MaxStreams bounds auto (default DefaultMaxStreams).
	MaxStreams int `json:"max_streams"`
	// BlockSize is the unit of checksums, acks and resume.
	BlockSize int `json:"block_size"`
	// Checksum is the per-block checksum (default ChecksumCRC32C).
	Checksum Checksum `json:"checksum,omitempty"`
	// Recursive copies directories.
	Recursive bool `json:"recursive"`
	// Resume continues an interrupted transfer from its verified blocks.
	Resume bool `json:"resume"`
	// RateLimit caps the transfer's aggregate rate (bytes/s; 0 = none).
	RateLimit float64 `json:"rate_limit"`
	// NoPace turns pacing off (sends as fast as the sockets take data).
	NoPace bool `json:"no_pace"`
	// Fair keeps the transfer to one flow's fair share on a shared
	// bottleneck: one connection, still primed and paced.
	Fair bool `json:"fair"`
	// RoundTime is the target duration of a sub-transfer (default: 4 RTT,
	// at least MinRoundTime).
	RoundTime time.Duration `json:"round_time"`

	// Progress, when set, is called about five times a second.
	Progress func(Progress) `json:"-"`
	// OnConn, when set, is called with each connection the transfer
	// starts using (for DSCP re-marking, diagnostics).
	OnConn func(id int, c *net.TCPConn) `json:"-"`
	// OnDial, when set, is called with each connection dialled for the
	// transfer as soon as TCP is connected, before TLS and priming, so that
	// a DSCP mark covers the priming traffic too.
	OnDial func(c *net.TCPConn) `json:"-"`
	// Tracer, when set, records every data message sent and acknowledged.
	Tracer Tracer `json:"-"`
	// Logger overrides the client's logger for this transfer.
	testHook func(event string, c int) `json:"-"`
}

func (o *Options) fill() error {
	if o.Streams < 0 || o.Streams > MaxStreams {
		return fmt.Errorf("bulk: %d streams: want 0 (auto) to %d", o.Streams, MaxStreams)
	}
	if o.MaxStreams == 0 {
		o.MaxStreams = DefaultMaxStreams
	}
	if o.MaxStreams < 1 || o.MaxStreams > MaxStreams {
		return fmt.Errorf("bulk: max streams %d: want 1 to %d", o.MaxStreams, MaxStreams)
	}
	if o.BlockSize == 0 {
		o.BlockSize = DefaultBlockSize
	}
	if o.BlockSize < MinBlockSize || o.BlockSize > MaxBlockSize {
		return fmt.Errorf("bulk: block size %d: want %d to %d", o.BlockSize, MinBlockSize, MaxBlockSize)
	}
	if o.RateLimit < 0 {
		return errors.New("bulk: negative rate limit")
	}
	if o.Checksum == "" {
		o.Checksum = ChecksumCRC32C
	}
	if !o.Checksum.valid() {
		return fmt.Errorf("bulk: unknown checksum %q (want %s or %s)", o.Checksum, ChecksumCRC32C, ChecksumBLAKE3)
	}
	if o.Fair {
		o.Streams = 1
	}
	return nil
}

// Tracer receives a record of every data message: the hook for network
// problem detection (internal/netdiag). Times on the receiver are the
// receiver's clock.
type Tracer interface {
	Sent(conn int, msg uint64, at time.Time, size int)
	Acked(conn int, msg uint64, recvAt, handoffAt, ackAt time.Time)
}

// Progress is a transfer's progress.
type Progress struct {
	Bytes   int64   `json:"bytes"`
	Total   int64   `json:"total"`
	Rate    float64 `json:"rate_bytes_per_sec"`
	Streams int     `json:"streams"`
	Elapsed time.Duration
}

// ConnReport is one connection's part in a transfer.
type ConnReport struct {
	ID          int           `json:"id"`
	Prime       PrimeStats    `json:"prime"`
	Bytes       int64         `json:"bytes"`
	Blocks      int           `json:"blocks"`
	Rounds      int           `json:"rounds"`
	LeftOut     int           `json:"rounds_left_out"`
	Benched     int           `json:"times_left_out"`
	Retransmits uint32        `json:"retransmits"`
	LostSegs    uint32        `json:"lost"`
	CwndEnd     int64         `json:"cwnd_end_bytes"`
	RTTEnd      time.Duration `json:"rtt_end_ns"`
	SendRate    float64       `json:"send_rate_bytes_per_sec"`
	Failed      string        `json:"failed,omitempty"`
	Pooled      bool          `json:"from_pool"`
}

// Report is the outcome of a transfer.
type Report struct {
	Peer               string        `json:"peer"`
	Dst                string        `json:"dst"`
	Files              int           `json:"files"`
	Entries            int           `json:"entries"`
	Bytes              int64         `json:"bytes"`      // file bytes in the transfer
	Sent               int64         `json:"bytes_sent"` // block bytes put on the wire (re-sends included)
	Resumed            int64         `json:"bytes_resumed"`
	Holes              int64         `json:"bytes_in_holes"`
	Remembered         float64       `json:"remembered_bandwidth_bytes_per_sec,omitempty"` // the path memory this transfer started from
	Checksum           Checksum      `json:"checksum"`                                     // per-block checksum
	Resent             int           `json:"blocks_resent"`
	Seconds            float64       `json:"seconds"`
	Goodput            float64       `json:"goodput_bits_per_sec"`
	Rounds             int           `json:"sub_transfers"`
	MaxStreams         int           `json:"max_streams_used"`
	PrimeTime          time.Duration `json:"prime_ns"`
	Pacing             pace.Snapshot `json:"pacing"`
	PaceRate           float64       `json:"pace_rate_bytes_per_sec"`
	Conns              []ConnReport  `json:"conns"`
	Errors             []string      `json:"errors,omitempty"`
	SlowStartAfterIdle int           `json:"tcp_slow_start_after_idle"`
}

type sendFile struct {
	src     source
	entry   int
	f       *os.File
	rd      blockReader
	regions [][2]int64
	n       int
	sums    [][32]byte
	summed  []bool
	acked   []bool
	nacked  int
	done    bool
	failed  bool
}

type blockRef struct {
	f   *sendFile
	idx int
}

// transfer is one sending transfer.
type transfer struct {
	cl     *Client
	id     TransferID
	peer   string
	opts   Options
	files  []*sendFile
	bs     int
	est    *pace.Estimator
	pacer  *pace.Pacer
	ctx    context.Context
	cancel context.CancelCauseFunc

	mu            sync.Mutex
	cond          *sync.Cond
	queue         []blockRef
	conns         []*connState
	nextMsg       uint64
	acked         int64 // bytes acknowledged, this run
	sent          int64
	resent        int
	holes         int64
	commits       chan *sendFile
	errs          []string
	fatal         error
	rtt           time.Duration
	recvLast      ack
	commitsClosed bool
	lastAck       time.Time
	recvRate      float64
	endgame       bool         // the queue is empty: idle connections copy late blocks
	finished      bool         // no more blocks are taken
	medRate       float64      // median measured connection rate (bytes/s)
	paceWait      atomic.Int64 // ns workers spent waiting for pacing slots
	dialing       atomic.Int32 // connections the transfer will have once those being dialled join
	tcpDelivered  int64        // bytes TCP acknowledged on the transfer's connections (pacing tick only)
	sending       int          // workers between taking a block and its Send returning
	stopSends     context.CancelFunc
	sendCtx       context.Context // ends pacer waits when the transfer finishes
	wake          chan struct{}   // wakes the scheduler when a file is done or a connection fails
}

// blockReader reads block idx of a source into buf.
type blockReader interface {
	readBlock(f *sendFile, idx, bs int, buf []byte) error
	release(f *sendFile, idx int)
}

type fileReader struct{}

func (fileReader) readBlock(f *sendFile, idx, bs int, buf []byte) error {
	return readFull(f.f, buf, int64(idx)*int64(bs))
}
func (fileReader) release(*sendFile, int) {}

// SendFiles copies local srcs to dst on peer (a directory when there are
// several sources or it exists there) over primed connections from the
// pool, and reports what happened. A failed file does not stop the others;
// the returned error then names every failure, and Report.Errors lists them.
func (c *Client) SendFiles(ctx context.Context, peer string, srcs []string, dst string, opts Options) (*Report, error) {
	if err := opts.fill(); err != nil {
		return nil, err
	}
	if len(srcs) == 0 {
		return nil, errors.New("bulk: no sources")
	}
	entries, err := collect(srcs, opts.Recursive)
	if err != nil {
		return nil, err
	}
	t := &transfer{cl: c, peer: peer, opts: opts, bs: opts.BlockSize}
	for i := range entries {
		if entries[i].Type != TypeFile {
			continue
		}
		sf := &sendFile{src: entries[i], entry: i}
		t.files = append(t.files, sf)
	}
	return t.run(ctx, entries, dst, len(srcs) > 1)
}

// SendStream copies size bytes read from r to a file named name on peer.
// When r is an io.ReaderAt blocks are read where needed; otherwise r is
// read once, in order, and blocks are kept in memory until acknowledged.
func (c *Client) SendStream(ctx context.Context, peer, name string, r io.Reader, size int64, opts Options) (*Report, error) {
	if err := opts.fill(); err != nil {
		return nil, err
	}
	if size < 0 {
		return nil, errors.New("bulk: negative stream size")
	}
	now := time.Now().UnixNano()
	e := source{Entry: Entry{Path: "stream", Type: TypeFile, Mode: 0o644, MTime: now, Size: size}}
	t := &transfer{cl: c, peer: peer, opts: opts, bs: opts.BlockSize}
	sf := &sendFile{src: e, entry: 0}
	if ra, ok := r.(io.ReaderAt); ok {
		sf.rd = readerAt{ra}
	} else {
		sf.rd = &seqReader{r: r, cache: map[int][]byte{}}
	}
	t.files = []*sendFile{sf}
	return t.run(ctx, []source{e}, name, false)
}

type readerAt struct{ r io.ReaderAt }

func (ra readerAt) readBlock(f *sendFile, idx, bs int, buf []byte) error {
	n, err := ra.r.ReadAt(buf, int64(idx)*int64(bs))
	if n == len(buf) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: stream shorter than its size", ErrSourceChanged)
	}
	return err
}
func (readerAt) release(*sendFile, int) {}

// seqReader serves blocks of a plain io.Reader: it reads ahead in order and
// keeps each block until it is acknowledged, since a block may need to be
// sent again.
type seqReader struct {
	mu    sync.Mutex
	r     io.Reader
	next  int
	cache map[int][]byte
	bs    int
}

func (s *seqReader) readBlock(f *sendFile, idx, _ int, buf []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.next <= idx {
		n := blockLen(f.src.Size, s.bs, s.next)
		b := make([]byte, n)
		if _, err := io.ReadFull(s.r, b); err != nil {
			return fmt.Errorf("reading stream block %d: %w", s.next, err)
		}
		s.cache[s.next] = b
		s.next++
	}
	b, ok := s.cache[idx]
	if !ok {
		return fmt.Errorf("bulk: stream block %d already released", idx)
	}
	copy(buf, b)
	return nil
}

func (s *seqReader) release(f *sendFile, idx int) {
	s.mu.Lock()
	delete(s.cache, idx)
	s.mu.Unlock()
}

func (t *transfer) logf(msg string, args ...any) { t.cl.log.Info(msg, args...) }

func (t *transfer) run(ctx context.Context, entries []source, dst string, multi bool) (*Report, error) {
	start := time.Now()
	if _, err := rand.Read(t.id[:]); err != nil {
		return nil, err
	}
	t.cond = sync.NewCond(&t.mu)
	t.wake = make(chan struct{}, 1)
	if isLoopback(t.peer) && t.opts.RateLimit == 0 && !t.opts.NoPace {
		// No switch buffer to overrun between two ends on one host, and
		// pacing timers cost CPU there (measured: 4.65 against 5.75 Gbit/s
		// for a 2 GiB copy, bench/bulk/loopback.sh).
		t.opts.NoPace = true
		t.cl.log.Debug("loopback peer: not pacing", "peer", t.peer)
	}
	t.pacer = pace.NewPacer(t.opts.RateLimit)
	rep := &Report{Peer: t.peer, Checksum: t.opts.Checksum, Entries: len(entries), Files: len(t.files), SlowStartAfterIdle: sysctlInt("net.ipv4.tcp_slow_start_after_idle")}
	remembered := 0.0
	pi, known := t.cl.path(t.peer)
	if known && pi.fresh(time.Now()) && !t.opts.NoPace && t.opts.RateLimit == 0 {
		remembered = pi.bw
		t.cl.log.Debug("pacing from the path's remembered bandwidth", "peer", t.peer, "mbit", pi.bw*8/1e6, "age", time.Since(pi.at).Round(time.Second))
	}
	t.est = newEstimator(t.opts, remembered)
	rep.Remembered = remembered
	for _, f := range t.files {
		rep.Bytes += f.src.Size
		f.n = numBlocks(f.src.Size, t.bs)
		f.sums = make([][32]byte, f.n)
		f.summed = make([]bool, f.n)
		f.acked = make([]bool, f.n)
		if sr, ok := f.rd.(*seqReader); ok {
			sr.bs = t.bs
		}
	}
	var cancel context.CancelCauseFunc
	t.ctx, cancel = context.WithCancelCause(ctx)
	t.cancel = cancel
	t.sendCtx, t.stopSends = context.WithCancel(t.ctx)
	defer t.stopSends()
	defer cancel(nil)

	// Open the files and find their holes.
	for _, f := range t.files {
		if f.rd != nil {
			continue
		}
		fh, err := os.Open(f.src.local)
		if err != nil {
			return nil, fmt.Errorf("opening %s: %w", f.src.local, err)
		}
		defer fh.Close()
		f.f, f.rd = fh, fileReader{}
		if f.regions, err = dataRegions(fh, f.src.Size); err != nil {
			return nil, err
		}
	}
	for _, f := range t.files {
		if f.f == nil && f.rd != nil && f.regions == nil {
			f.regions = [][2]int64{{0, f.src.Size}}
		}
	}

	want := t.opts.Streams
	if want == 0 {
		want = min(4, t.opts.MaxStreams)
		// A path measured before starts with the connections that
		// carried it (cubic on a lossy path needs dozens). Not under BBR,
		// which fills a path with a few: started with the dozen an earlier
		// copy had grown to, copies got 10-15% less (bulk scenario 1).
		if remembered > 0 && pi.streams > want && t.cl.cfg.CC != "bbr" {
			want = min(pi.streams, t.opts.MaxStreams)
		}
	}
	pooledBefore := t.cl.Pooled(t.peer)
	t0 := time.Now()
	t.dialing.Store(int32(want))
	cs, err := t.cl.acquire(t.ctx, t.peer, want, acquireOpts{onDial: t.onDial})
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", t.peer, err)
	}
	rep.PrimeTime = time.Since(t0)
	for i, cn := range cs {
		t.addConn(cn, i < pooledBefore)
	}
	defer func() {
		var keep []*conn
		for _, st := range t.conns {
			keep = append(keep, st.c)
		}
		t.cl.release(t.peer, keep)
	}()

	// Begin: the receiver opens partial files and, resuming, says what
	// it already holds.
	br := beginReq{ID: t.id, Dst: dst, Multi: multi, BlockSize: t.bs, Checksum: t.opts.Checksum, Resume: t.opts.Resume}
	for _, e := range entries {
		br.Entries = append(br.Entries, e.Entry)
	}
	payload, err := json.Marshal(br)
	if err != nil {
		return nil, err
	}
	if len(payload) > MaxBeginSize {
		return nil, fmt.Errorf("bulk: transfer description of %d bytes exceeds %d: copy fewer files at once", len(payload), MaxBeginSize)
	}
	respB, err := t.call(MsgBegin, payload)
	if err != nil {
		return nil, fmt.Errorf("starting transfer to %s: %w", t.peer, err)
	}
	var resp beginResp
	if err := json.Unmarshal(respB, &resp); err != nil {
		return nil, fmt.Errorf("bulk: decoding begin response: %w", err)
	}
	rep.Dst = resp.Dst
	if err := t.plan(resp, rep); err != nil {
		return nil, err
	}

	t.commits = make(chan *sendFile, len(t.files)+1)
	var cwg sync.WaitGroup
	cwg.Add(1)
	go func() {
		defer cwg.Done()
		t.committer()
	}()
	for _, f := range t.files {
		if f.nacked == f.n {
			t.commits <- f
		}
	}

	var pwg sync.WaitGroup
	if t.opts.Progress != nil {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			t.progressLoop(start, rep.Bytes-rep.Resumed)
		}()
	}
	t.schedule(rep)
	close(t.commits)
	cwg.Wait()
	t.stopSending()
	cancel(nil)
	pwg.Wait()

	if t.fatal == nil {
		if _, err := t.call(MsgEnd, mustJSON(endReq{ID: t.id})); err != nil {
			t.errs = append(t.errs, err.Error())
		}
	}
	rep.Seconds = time.Since(start).Seconds()
	t.mu.Lock()
	rep.Sent = t.sent
	rep.Resent = t.resent
	rep.Holes = t.holes
	moved := t.acked
	t.mu.Unlock()
	rep.Goodput = float64(moved) * 8 / rep.Seconds
	rep.Pacing = t.est.Snapshot()
	rep.PaceRate = t.pacer.RateNow()
	for _, st := range t.conns {
		r := st.rep
		r.ID = st.c.id
		r.Prime = st.c.prime
		r.Pooled = st.pooled
		r.SendRate = st.rate
		r.Benched = st.benched
		if info, err := tcpInfo(st.c.tcp); err == nil {
			r.Retransmits = info.Total_retrans
			r.LostSegs = info.Lost
			r.CwndEnd = cwndBytes(info)
			r.RTTEnd = time.Duration(info.Rtt) * time.Microsecond
		}
		rep.Conns = append(rep.Conns, r)
	}
	if len(rep.Conns) > 0 {
		// The bandwidth is worth remembering when it was measured over a
		// paced copy long enough for its startup to be a small part of it
		// (minLearnTime) and not held under a limit (an unpaced copy's rate
		// is what its own losses left). It is the copy's goodput, not the
		// estimator's last max-filtered sample, whose window ends in the
		// copy's tail. A short copy's goodput is mostly its startup: a
		// pooled 20 MiB copy that started from it took 1.25x longer than a
		// fresh one (bulk scenario 3).
		bw := rep.Goodput / 8
		if t.opts.RateLimit > 0 || t.opts.NoPace || time.Duration(rep.Seconds*float64(time.Second)) < minLearnTime || rep.Sent < 16*int64(t.bs) {
			bw = 0
		}
		t.cl.learn(t.peer, rep.Conns[0].Prime.RTT, bw, rep.MaxStreams)
	}
	rep.Errors = append(rep.Errors, t.errs...)
	if t.fatal != nil {
		return rep, t.fatal
	}
	if len(t.errs) > 0 {
		return rep, fmt.Errorf("bulk: %d of %d files failed: %s", len(t.errs), len(t.files), t.errs[0])
	}
	return rep, nil
}

// isLoopback reports whether peer (host:port) is a loopback address.
func isLoopback(peer string) bool {
	host, _, err := net.SplitHostPort(peer)
	if err != nil {
		host = peer
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// call sends a request on the first live connection.
func (t *transfer) call(typ wire.MsgType, payload []byte) ([]byte, error) {
	var lastErr error = errors.New("no live connection")
	for _, st := range t.liveConns() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		b, err := st.c.sess.Call(ctx, typ, payload)
		cancel()
		if err == nil {
			return b, nil
		}
		lastErr = err
		if st.c.alive() {
			return nil, err // the peer answered with an error
		}
	}
	return nil, lastErr
}

// liveConns returns the usable connections, the best for a request first:
// least data waiting in front of it, then fastest (a request sent behind
// megabytes on a slow connection waits for all of them).
func (t *transfer) liveConns() []*connState {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []*connState
	for _, st := range t.conns {
		if !st.dead && st.c.alive() {
			out = append(out, st)
		}
	}
	sort.SliceStable(out, func(a, b int) bool {
		if out[a].unacked != out[b].unacked {
			return out[a].unacked < out[b].unacked
		}
		return out[a].rate > out[b].rate
	})
	return out
}

// plan fills the queue: every block the receiver does not hold, and for
// those it holds, a local checksum compared with the receiver's (so a
// resumed copy is checked end to end against the current source).
func (t *transfer) plan(resp beginResp, rep *Report) error {
	buf := make([]byte, t.bs)
	for _, f := range t.files {
		have := map[uint32][32]byte{}
		for _, h := range resp.Have[f.entry] {
			have[h.Index] = h.Sum
		}
		for i := 0; i < f.n; i++ {
			n := blockLen(f.src.Size, t.bs, i)
			if s, ok := have[uint32(i)]; ok {
				var sum [32]byte
				if blockIsHole(f.regions, int64(i)*int64(t.bs), int64(n)) {
					sum = t.opts.Checksum.zero(n)
				} else {
					if err := f.rd.readBlock(f, i, t.bs, buf[:n]); err != nil {
						return fmt.Errorf("reading %s: %w", f.src.local, err)
					}
					sum = t.opts.Checksum.sum(buf[:n])
				}
				if sum == s {
					f.sums[i], f.summed[i], f.acked[i] = sum, true, true
					f.nacked++
					rep.Resumed += int64(n)
					f.rd.release(f, i)
					continue
				}
			}
			t.queue = append(t.queue, blockRef{f, i})
		}
	}
	return nil
}

func (t *transfer) addConn(cn *conn, pooled bool) *connState {
	st := &connState{c: cn, pooled: pooled, infl: map[uint64]inflight{}, lastAck: time.Now()}
	st.rep.ID = cn.id
	t.mu.Lock()
	t.conns = append(t.conns, st)
	if t.rtt == 0 || cn.prime.RTT < t.rtt {
		t.rtt = cn.prime.RTT
		t.est.SetRTT(t.rtt)
	}
	t.mu.Unlock()
	cn.setAckHandler(func(c *conn, a ack) { t.onAck(st, a) })
	if t.opts.OnConn != nil {
		t.opts.OnConn(cn.id, cn.tcp)
	}
	go t.worker(st)
	return st
}
