package lab

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// packet is one IP packet in flight through the emulator.
type packet struct {
	buf     []byte // len(buf) == MTU; the packet is buf[:n]
	n       int
	dscp    uint8
	class   uint8
	arrival int64 // emulator clock, ns
	depart  int64 // when it leaves the delay line
	seq     uint64
}

// clock is the emulator's time: nanoseconds since the lab started, read
// from Go's monotonic clock (vDSO, cheap), and convertible to the kernel's
// CLOCK_MONOTONIC for absolute timerfd deadlines.
type clock struct {
	epoch time.Time
	off   int64 // CLOCK_MONOTONIC = now() + off
}

func newClock() (*clock, error) {
	c := &clock{epoch: time.Now().Add(-time.Second)} // now() is never 0
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return nil, fmt.Errorf("reading CLOCK_MONOTONIC: %w", err)
	}
	c.off = ts.Nano() - c.now()
	return c, nil
}

func (c *clock) now() int64 { return int64(time.Since(c.epoch)) }

// wakeTimer is a timerfd registered with Go's network poller. Go's own
// timers fire up to a millisecond late on Linux (the poller sleeps in whole
// milliseconds); a timerfd wakes the poller within tens of microseconds,
// which keeps emulated delays and rates exact at WAN time scales.
type wakeTimer struct {
	fd  int
	f   *os.File
	off int64
	buf [8]byte
}

func newWakeTimer(off int64) (*wakeTimer, error) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("creating timerfd: %w", err)
	}
	return &wakeTimer{fd: fd, f: os.NewFile(uintptr(fd), "lab-timer"), off: off}, nil
}

// arm sets the one-shot deadline to t on the emulator clock; 0 disarms.
func (w *wakeTimer) arm(t int64) error {
	var its unix.ItimerSpec
	if t > 0 {
		its.Value = unix.NsecToTimespec(t + w.off)
	}
	return unix.TimerfdSettime(w.fd, unix.TFD_TIMER_ABSTIME, &its, nil)
}

// wait blocks until the deadline passes or the timer is closed.
func (w *wakeTimer) wait() error {
	_, err := w.f.Read(w.buf[:])
	return err
}

func (w *wakeTimer) close() error { return w.f.Close() }

// fifo is a queue of packets.
type fifo struct {
	pkts []*packet
	head int
}

func (q *fifo) len() int         { return len(q.pkts) - q.head }
func (q *fifo) peek() *packet    { return q.pkts[q.head] }
func (q *fifo) push(p *packet)   { q.pkts = append(q.pkts, p) }
func (q *fifo) drain() []*packet { return q.pkts[q.head:] }

func (q *fifo) pop() *packet {
	p := q.pkts[q.head]
	q.pkts[q.head] = nil
	q.head++
	if q.head == len(q.pkts) {
		q.pkts, q.head = q.pkts[:0], 0
	} else if q.head > 1024 && q.head*2 > len(q.pkts) {
		n := copy(q.pkts, q.pkts[q.head:])
		clear(q.pkts[n:])
		q.pkts, q.head = q.pkts[:n], 0
	}
	return p
}

// delayLine is a min-heap of packets ordered by departure time, then by
// sequence number.
type delayLine []*packet

func (h delayLine) less(i, j int) bool {
	return h[i].depart < h[j].depart || (h[i].depart == h[j].depart && h[i].seq < h[j].seq)
}

func (h *delayLine) push(p *packet) {
	*h = append(*h, p)
	s := *h
	for i := len(s) - 1; i > 0; {
		parent := (i - 1) / 2
		if !s.less(i, parent) {
			break
		}
		s[i], s[parent] = s[parent], s[i]
		i = parent
	}
}

func (h *delayLine) pop() *packet {
	s := *h
	p := s[0]
	last := len(s) - 1
	s[0] = s[last]
	s[last] = nil
	s = s[:last]
	for i := 0; ; {
		l, r, m := 2*i+1, 2*i+2, i
		if l < len(s) && s.less(l, m) {
			m = l
		}
		if r < len(s) && s.less(r, m) {
			m = r
		}
		if m == i {
			break
		}
		s[i], s[m] = s[m], s[i]
		i = m
	}
	*h = s
	return p
}

// ClassStats counts what one DSCP class (or, as PathStats.Total, the whole
// path) saw.
type ClassStats struct {
	// Class is the class name ("total" for PathStats.Total).
	Class string `json:"class"`
	// InPackets and InBytes count packets that entered the path.
	InPackets uint64 `json:"in_packets"`
	InBytes   uint64 `json:"in_bytes"`
	// OutPackets and OutBytes count packets delivered to the destination.
	OutPackets uint64 `json:"out_packets"`
	OutBytes   uint64 `json:"out_bytes"`
	// LossDrops counts packets dropped by random loss.
	LossDrops uint64 `json:"loss_drops"`
	// QueueDrops counts packets dropped because the queue was full.
	QueueDrops uint64 `json:"queue_drops"`
	// QueueBytes is the queue occupancy now, in bytes.
	QueueBytes int `json:"queue_bytes"`
	// MaxQueueBytes is the highest occupancy seen, in bytes.
	MaxQueueBytes int `json:"max_queue_bytes"`
}

// Drops returns all packets the class lost (random loss and tail drop).
func (c ClassStats) Drops() uint64 { return c.LossDrops + c.QueueDrops }

// PathStats is a snapshot of one direction of a path.
type PathStats struct {
	// From and To are the host indexes.
	From int `json:"from"`
	To   int `json:"to"`
	// Path is the configuration in force.
	Path string `json:"path"`
	// Classes has one entry per DSCP class, in scheduler order.
	Classes []ClassStats `json:"classes"`
	// Total sums the classes; its MaxQueueBytes is the highest total
	// occupancy seen (not the sum of the classes' maxima).
	Total ClassStats `json:"total"`
	// WriteErrors counts packets the destination's TUN device refused.
	WriteErrors uint64 `json:"write_errors"`
	// MaxLag is the furthest behind its own schedule the emulator
	// delivered a packet. It is tens of microseconds on an idle machine;
	// milliseconds mean the emulator was starved of CPU and the path was
	// not faithful while it lasted.
	MaxLag time.Duration `json:"max_lag_ns"`
	// LatePackets counts packets delivered more than LateThreshold behind
	// schedule.
	LatePackets uint64 `json:"late_packets"`
}

// LateThreshold is how far behind schedule a delivery counts as late in
// PathStats.LatePackets.
const LateThreshold = time.Millisecond

// Class returns the statistics of the class called name, or a zero value.
func (s PathStats) Class(name string) ClassStats {
	for _, c := range s.Classes {
		if c.Class == name {
			return c
		}
	}
	return ClassStats{Class: name}
}

// String formats s as one line for people.
func (s PathStats) String() string {
	t := s.Total
	return fmt.Sprintf("h%d->h%d in %d pkt/%s out %d pkt/%s drop loss %d queue %d, queue %s (max %s)",
		s.From, s.To, t.InPackets, formatBytes(t.InBytes), t.OutPackets, formatBytes(t.OutBytes),
		t.LossDrops, t.QueueDrops, formatBytes(uint64(t.QueueBytes)), formatBytes(uint64(t.MaxQueueBytes)))
}

// link emulates one direction of a path: loss, bottleneck queue with DSCP
// classes, token-bucket server, delay line, then the destination device.
type link struct {
	from, to int
	clk      *clock
	mtu      int
	out      func([]byte) error
	free     func(*packet)
	log      *slog.Logger
	timer    *wakeTimer

	mu         sync.Mutex
	path       Path
	classes    []Class
	table      [64]uint8
	limits     []int // per physical queue
	quantum    []int
	queues     []fifo // one under SchedFIFO, else one per class
	qbytes     []int  // per physical queue
	qtotal     int
	tokens     float64 // bytes
	tLast      int64
	bpn        float64 // bytes per ns; 0 = no rate limit
	burst      float64
	dl         delayLine
	lastDepart int64
	seq        uint64
	deficit    []int
	drrCur     int
	drrFresh   bool
	rng        *rand.Rand
	stats      []ClassStats
	maxTotal   int
	writeErrs  uint64
	maxLag     int64
	late       uint64
	lossBad    bool // Gilbert model state: in a loss burst
	armed      int64
	closed     bool

	// wmu is taken before mu is released by whoever pops due packets, so
	// batches reach the destination in the order they left the delay line.
	wmu sync.Mutex
}

func newLink(from, to int, clk *clock, mtu int, p Path, seed uint64, out func([]byte) error, free func(*packet), log *slog.Logger) (*link, error) {
	t, err := newWakeTimer(clk.off)
	if err != nil {
		return nil, err
	}
	l := &link{
		from: from, to: to, clk: clk, mtu: mtu, out: out, free: free, timer: t,
		log: log.With("link", fmt.Sprintf("h%d->h%d", from, to)),
		rng: rand.New(rand.NewPCG(seed, uint64(from)<<32|uint64(to))),
	}
	l.mu.Lock()
	l.setPathLocked(p)
	l.tokens = l.burst
	l.tLast = clk.now()
	l.mu.Unlock()
	return l, nil
}

// setPathLocked installs p, keeping queued packets and counters (counters
// of classes whose names survive the change).
func (l *link) setPathLocked(p Path) {
	classes := p.Sched.classes()
	nq := 1
	if p.Sched.Mode != SchedFIFO {
		nq = len(classes)
	}
	// Re-queue what is waiting under the new classes, in arrival order.
	var waiting []*packet
	for i := range l.queues {
		waiting = append(waiting, l.queues[i].drain()...)
	}
	slices.SortFunc(waiting, func(a, b *packet) int {
		if a.seq < b.seq {
			return -1
		}
		return 1
	})
	old := l.stats
	l.path = p
	l.classes = classes
	l.table = classTable(classes)
	l.queues = make([]fifo, nq)
	l.qbytes = make([]int, nq)
	l.limits = make([]int, nq)
	l.quantum = make([]int, nq)
	l.deficit = make([]int, nq)
	l.drrCur, l.drrFresh = 0, true
	for i := range nq {
		if nq == 1 {
			l.limits[i] = p.queueLimit(classes, -1, l.mtu)
		} else {
			l.limits[i] = p.queueLimit(classes, i, l.mtu)
			l.quantum[i] = max(classes[i].Weight, 1) * l.mtu
		}
	}
	l.stats = make([]ClassStats, len(classes))
	for i, c := range classes {
		l.stats[i].Class = c.Name
		for _, o := range old {
			if o.Class == c.Name {
				l.stats[i] = o
				l.stats[i].QueueBytes = 0
			}
		}
	}
	l.qtotal = 0
	if p.Rate == 0 {
		// No bottleneck any more: what waited leaves now.
		now := l.clk.now()
		for _, pk := range waiting {
			pk.class = l.table[pk.dscp]
			l.schedule(pk, now)
		}
		waiting = nil
	}
	for _, pk := range waiting {
		pk.class = l.table[pk.dscp]
		q := l.qindex(pk.class)
		l.queues[q].push(pk)
		l.qbytes[q] += pk.n
		l.qtotal += pk.n
		l.stats[pk.class].QueueBytes += pk.n
	}
	now := l.clk.now()
	if l.bpn > 0 { // bring the bucket up to date under the old rate
		l.tokens = min(l.burst, l.tokens+float64(max(now-l.tLast, 0))*l.bpn)
		l.tLast = max(l.tLast, now)
	}
	l.bpn = float64(p.Rate) / 8 / 1e9
	l.burst = float64(max(p.Burst, l.mtu))
	l.tokens = min(l.tokens, l.burst)
	if l.tLast == 0 {
		l.tLast = now
	}
}

func (l *link) qindex(class uint8) int {
	if len(l.queues) == 1 {
		return 0
	}
	return int(class)
}

// enqueue takes a packet read from the source host. It is called by the
// source's reader goroutine.
func (l *link) enqueue(p *packet) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		l.free(p)
		return
	}
	now := l.clk.now()
	p.class = l.table[p.dscp]
	p.arrival = now
	l.seq++
	p.seq = l.seq
	st := &l.stats[p.class]
	st.InPackets++
	st.InBytes += uint64(p.n)
	if l.path.Loss > 0 && l.lose() {
		st.LossDrops++
		l.mu.Unlock()
		l.free(p)
		return
	}
	if l.bpn == 0 {
		l.schedule(p, now)
	} else {
		q := l.qindex(p.class)
		if l.qbytes[q]+p.n > l.limits[q] {
			st.QueueDrops++
			l.mu.Unlock()
			l.free(p)
			return
		}
		l.queues[q].push(p)
		l.qbytes[q] += p.n
		l.qtotal += p.n
		st.QueueBytes += p.n
		st.MaxQueueBytes = max(st.MaxQueueBytes, st.QueueBytes)
		l.maxTotal = max(l.maxTotal, l.qtotal)
	}
	var batch [8]*packet
	due, next := l.advance(now, batch[:0])
	if next > 0 && (l.armed == 0 || next < l.armed) {
		l.arm(next)
	}
	l.flush(due)
}

// lose decides whether the next packet is lost at random; mu is held.
func (l *link) lose() bool {
	p := l.path
	if p.LossBurst <= 1 {
		return l.rng.Float64() < p.Loss
	}
	// Two states: every packet is lost in the bad one. Leaving it has
	// probability 1/LossBurst, entering it is chosen so that the long-run
	// share of lost packets is Loss.
	r := 1 / p.LossBurst
	if l.lossBad {
		l.lossBad = l.rng.Float64() >= r
	} else {
		l.lossBad = l.rng.Float64() < p.Loss*r/(1-p.Loss)
	}
	return l.lossBad
}

// run serves the link when its timer fires, until the link is closed.
func (l *link) run() {
	batch := make([]*packet, 0, 64)
	for {
		err := l.timer.wait()
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return
		}
		if err != nil && !errors.Is(err, unix.EAGAIN) {
			l.mu.Unlock()
			l.log.Error("lab link timer failed", "err", err)
			return
		}
		l.armed = 0
		due, next := l.advance(l.clk.now(), batch[:0])
		l.arm(next)
		l.flush(due)
	}
}

// arm sets the timer; mu is held.
func (l *link) arm(t int64) {
	if t == l.armed {
		return
	}
	l.armed = t
	if err := l.timer.arm(t); err != nil {
		l.log.Error("lab link timer arm failed", "err", err)
	}
}

// flush writes due packets in order and releases mu (held on entry).
func (l *link) flush(due []*packet) {
	if len(due) == 0 {
		l.mu.Unlock()
		return
	}
	l.wmu.Lock()
	l.mu.Unlock()
	var errs uint64
	for _, p := range due {
		if err := l.out(p.buf[:p.n]); err != nil {
			errs++
			l.log.Debug("lab write failed", "err", err)
		}
		l.free(p)
	}
	l.wmu.Unlock()
	if errs > 0 {
		l.mu.Lock()
		l.writeErrs += errs
		l.mu.Unlock()
	}
}

// schedule puts p on the delay line, leaving the bottleneck at t.
func (l *link) schedule(p *packet, t int64) {
	d := int64(l.path.Delay)
	if j := int64(l.path.Jitter); j > 0 {
		d += l.rng.Int64N(2*j+1) - j
		d = max(d, 0)
	}
	dep := t + d
	if !l.path.Reorder && dep < l.lastDepart {
		dep = l.lastDepart
	}
	l.lastDepart = max(l.lastDepart, dep)
	p.depart = dep
	l.dl.push(p)
}

// pick returns the physical queue to serve next, or -1 when all are empty.
func (l *link) pick() int {
	switch {
	case l.qtotal == 0:
		return -1
	case len(l.queues) == 1:
		return 0
	case l.path.Sched.Mode == SchedStrict:
		for i := range l.queues {
			if l.queues[i].len() > 0 {
				return i
			}
		}
		return -1
	}
	// Deficit round robin: each visit to a backlogged class adds its
	// quantum; the class is served while its head packet fits.
	for range 2 * len(l.queues) {
		c := l.drrCur
		if l.queues[c].len() == 0 {
			l.deficit[c] = 0
			l.drrCur, l.drrFresh = (c+1)%len(l.queues), true
			continue
		}
		if l.drrFresh {
			l.deficit[c] += l.quantum[c]
			l.drrFresh = false
		}
		if l.queues[c].peek().n <= l.deficit[c] {
			return c
		}
		l.drrCur, l.drrFresh = (c+1)%len(l.queues), true
	}
	return -1
}

// advance serves the bottleneck and the delay line up to now, appending
// the packets due for delivery to due. It returns the time of the next
// event (0 if none). mu is held.
func (l *link) advance(now int64, due []*packet) ([]*packet, int64) {
	var next int64
	for l.bpn > 0 {
		q := l.pick()
		if q < 0 {
			break
		}
		p := l.queues[q].peek()
		size := float64(p.n)
		base := max(l.tLast, p.arrival)
		tok := min(max(l.burst, size), l.tokens+float64(base-l.tLast)*l.bpn)
		vt := base
		if tok < size {
			vt = base + int64(math.Ceil((size-tok)/l.bpn))
			tok = size
		}
		if vt > now {
			next = vt
			break
		}
		l.queues[q].pop()
		if len(l.deficit) > 1 {
			l.deficit[q] -= p.n
		}
		l.qbytes[q] -= p.n
		l.qtotal -= p.n
		l.stats[p.class].QueueBytes -= p.n
		l.tokens, l.tLast = tok-size, vt
		l.schedule(p, vt)
	}
	for len(l.dl) > 0 && l.dl[0].depart <= now {
		p := l.dl.pop()
		st := &l.stats[p.class]
		st.OutPackets++
		st.OutBytes += uint64(p.n)
		if lag := now - p.depart; lag > l.maxLag {
			l.maxLag = lag
		}
		if now-p.depart > int64(LateThreshold) {
			l.late++
		}
		due = append(due, p)
	}
	if len(l.dl) > 0 && (next == 0 || l.dl[0].depart < next) {
		next = l.dl[0].depart
	}
	return due, next
}

// setPath changes the path while traffic flows. Packets already in the
// delay line keep their departure times; queued packets are kept.
func (l *link) setPath(p Path) {
	l.mu.Lock()
	l.setPathLocked(p)
	var batch [8]*packet
	due, next := l.advance(l.clk.now(), batch[:0])
	l.arm(next)
	l.flush(due)
}

func (l *link) snapshot() PathStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := PathStats{From: l.from, To: l.to, Path: l.path.String(), WriteErrors: l.writeErrs,
		MaxLag: time.Duration(l.maxLag), LatePackets: l.late}
	s.Classes = slices.Clone(l.stats)
	s.Total.Class = "total"
	for _, c := range s.Classes {
		s.Total.InPackets += c.InPackets
		s.Total.InBytes += c.InBytes
		s.Total.OutPackets += c.OutPackets
		s.Total.OutBytes += c.OutBytes
		s.Total.LossDrops += c.LossDrops
		s.Total.QueueDrops += c.QueueDrops
		s.Total.QueueBytes += c.QueueBytes
	}
	s.Total.MaxQueueBytes = l.maxTotal
	return s
}

// close stops the link and frees what it holds. The run goroutine returns.
func (l *link) close() {
	l.mu.Lock()
	l.closed = true
	for i := range l.queues {
		for _, p := range l.queues[i].drain() {
			l.free(p)
		}
		l.queues[i] = fifo{}
	}
	for _, p := range l.dl {
		l.free(p)
	}
	l.dl = nil
	l.mu.Unlock()
	_ = l.timer.close()
}

func formatBytes(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fGiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fKiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}
