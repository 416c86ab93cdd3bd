package bulk

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"sort"
	"time"

	"github.com/holdfast/holdfast/internal/pace"
)

// The scheduler.
//
// A transfer runs as a sequence of sub-transfers (rounds of a few RTTs).
// Each round the scheduler selects a subset of the connections and gives
// each one an amount it may send in that round, from its measured rate.
// Blocks are not handed out in advance: each connection's worker takes the
// next block from the transfer's shared queue only when it is selected, has
// amount left and has room in its window, so a connection that slows down
// never sits on data the others could be sending. Between rounds the
// scheduler measures each connection's acknowledged rate, leaves out one
// that stalls or falls far behind (its unacknowledged blocks are sent again
// on the others), adapts the number of connections to the aggregate goodput
// (--streams auto) and re-estimates the pacing rate. When the queue runs
// dry (the endgame), idle connections send a second copy of blocks that have
// waited longest for their acknowledgement, so the slowest connection does
// not set the finish time; the first acknowledgement wins.

// connState is the scheduler's view of one connection.
type connState struct {
	c        *conn
	pooled   bool
	infl     map[uint64]inflight // sent, not yet acknowledged, by message id
	unacked  int64               // bytes in infl
	lastAck  time.Time
	rep      ConnReport
	dead     bool
	selected bool          // in the current sub-transfer
	quota    int64         // bytes it may still send in this sub-transfer
	rate     float64       // acknowledged bytes per second (smoothed)
	bench    int           // sub-transfers left to sit out
	benched  int           // times it was left out
	ackMark  int64         // rep.Bytes when the rate was last measured
	accB     int64         // acknowledged bytes not yet in rate
	accT     time.Duration // time with work not yet in rate
	measured bool          // rate has been measured at least once
	// tcpAcked is the socket's tcpi_bytes_acked at the last pacing tick
	// (tcpSeen: it has been read once), for the transfer's delivery rate.
	tcpAcked uint64
	tcpSeen  bool
}

// Rate measurement.
const (
	// rateBlocks: a connection's rate is taken over this many blocks...
	rateBlocks = 4
	// rateSpan: ...or over this much time with work, whichever comes first.
	rateSpan = 2 * time.Second
)

// inflight is a block sent on a connection and not yet acknowledged there.
type inflight struct {
	ref   blockRef
	size  int
	at    time.Time
	again bool // a copy was queued or sent on another connection
}

// worker sends blocks on st, one at a time, each after the transfer's pacer
// grants it a slot.
func (t *transfer) worker(st *connState) {
	buf := make([]byte, blockHeaderSize+t.bs)
	for {
		t.mu.Lock()
		ref, ok := t.nextLocked(st)
		for !ok {
			if st.dead || t.finished || t.ctx.Err() != nil {
				t.mu.Unlock()
				return
			}
			t.cond.Wait()
			ref, ok = t.nextLocked(st)
		}
		st.quota -= int64(blockLen(ref.f.src.Size, t.bs, ref.idx))
		t.sending++
		t.mu.Unlock()
		err := t.sendBlock(st, ref, buf)
		t.mu.Lock()
		t.sending--
		t.cond.Broadcast()
		t.mu.Unlock()
		if errors.Is(err, errStopped) {
			return
		}
		if err != nil {
			t.connFailed(st, []blockRef{ref}, err)
			return
		}
	}
}

// errStopped: the transfer finished while a block waited for its pacing
// slot; nothing was written.
var errStopped = errors.New("bulk: transfer finished")

// stopSending stops workers from taking blocks, ends their pacing waits
// and waits for sends already under way, so that no frame is cut short on a
// connection that goes back to the pool.
func (t *transfer) stopSending() {
	t.mu.Lock()
	t.finished = true
	t.cond.Broadcast()
	t.mu.Unlock()
	t.stopSends()
	t.mu.Lock()
	for t.sending > 0 {
		t.cond.Wait()
	}
	t.mu.Unlock()
}

// nextLocked returns the next block st should send, if it may send one now.
func (t *transfer) nextLocked(st *connState) (blockRef, bool) {
	if st.dead || t.finished || t.ctx.Err() != nil || t.fatal != nil || !st.selected || st.quota <= 0 || st.unacked >= t.windowLocked(st) {
		return blockRef{}, false
	}
	for len(t.queue) > 0 {
		ref := t.queue[0]
		t.queue = t.queue[1:]
		if !ref.f.acked[ref.idx] && !ref.f.failed {
			return ref, true
		}
	}
	return t.endgameLocked(st)
}

// endgameLocked picks, when nothing is queued, a block that has waited
// longest for its acknowledgement on another connection, for st to send a
// second copy of. Only blocks older than a few RTTs qualify, and each block
// is copied at most once.
func (t *transfer) endgameLocked(st *connState) (blockRef, bool) {
	if !t.endgame || st.unacked > 0 {
		return blockRef{}, false
	}
	now := time.Now()
	var best *connState
	var bestID uint64
	var bestAt time.Time
	for _, o := range t.conns {
		if o == st {
			continue
		}
		due := t.dueLocked(o)
		for id, in := range o.infl {
			if in.again || in.ref.f.acked[in.ref.idx] || in.ref.f.failed || now.Sub(in.at) < due {
				continue
			}
			if best == nil || in.at.Before(bestAt) {
				best, bestID, bestAt = o, id, in.at
			}
		}
	}
	if best == nil {
		return blockRef{}, false
	}
	in := best.infl[bestID]
	in.again = true
	best.infl[bestID] = in
	t.resent++
	if best.bench == 0 {
		t.benchLocked(best, "its blocks are late in the endgame")
	}
	return in.ref, true
}

// dueLocked is how long a block may wait for its acknowledgement on st
// before it counts as late: twice the time st needs to deliver all it
// holds at its measured rate (the median connection's, before it has one),
// plus two RTTs. Healthy connections deliver well within it; a late block
// is copied to another connection.
func (t *transfer) dueLocked(st *connState) time.Duration {
	r := t.medRate
	if st.measured && st.rate > 0 {
		r = st.rate
	}
	return t.dueAt(st, r)
}

// dueAt is dueLocked at delivery rate r (bytes/s; 0: unknown, one second).
func (t *transfer) dueAt(st *connState, r float64) time.Duration {
	d := time.Second
	if r > 0 {
		d = time.Duration(2 * float64(max(st.unacked, int64(t.bs))) / r * float64(time.Second))
	}
	return d + 2*max(t.rtt, 10*time.Millisecond)
}

// sendBlock sends one block on st. A source problem fails the file, not
// the connection (nil is returned); an error means the connection failed.
func (t *transfer) sendBlock(st *connState, ref blockRef, buf []byte) error {
	f, i := ref.f, ref.idx
	n := blockLen(f.src.Size, t.bs, i)
	h := blockHeader{ID: t.id, File: uint32(f.entry), Index: uint32(i), Len: uint32(n)}
	payload := buf[:blockHeaderSize+n]
	if blockIsHole(f.regions, int64(i)*int64(t.bs), int64(n)) {
		h.Flags = flagHole
		h.Sum = t.opts.Checksum.zero(n)
		payload = buf[:blockHeaderSize]
	} else {
		if err := f.rd.readBlock(f, i, t.bs, buf[blockHeaderSize:blockHeaderSize+n]); err != nil {
			t.fileFailed(f, fmt.Errorf("reading %s: %w", f.src.local, err))
			return nil
		}
		h.Sum = t.opts.Checksum.sum(buf[blockHeaderSize : blockHeaderSize+n])
	}
	t.mu.Lock()
	if f.failed || f.acked[i] {
		t.mu.Unlock()
		return nil
	}
	if f.summed[i] && f.sums[i] != h.Sum {
		t.mu.Unlock()
		t.fileFailed(f, fmt.Errorf("%w: block %d of %s differs from when it was first read", ErrSourceChanged, i, f.src.local))
		return nil
	}
	f.sums[i], f.summed[i] = h.Sum, true
	t.nextMsg++
	h.Msg = t.nextMsg
	t.mu.Unlock()

	w0 := time.Now()
	err := t.pacer.Wait(t.sendCtx, len(payload))
	t.paceWait.Add(int64(time.Since(w0)))
	if err != nil {
		if t.ctx.Err() == nil {
			return errStopped
		}
		return err
	}
	now := time.Now()
	h.SentNano = now.UnixNano()
	h.put(buf)
	t.mu.Lock()
	st.infl[h.Msg] = inflight{ref: ref, size: n, at: now}
	st.unacked += int64(n)
	t.mu.Unlock()
	if t.opts.Tracer != nil {
		t.opts.Tracer.Sent(st.c.id, h.Msg, now, len(payload))
	}
	mon := st.c.mon
	if mon != nil {
		mon.Sent(h.Msg, mon.Offset(), len(payload), now)
	}
	err = st.c.sess.Send(t.ctx, MsgBlock, payload)
	if mon != nil && err == nil {
		mon.SentEnd(h.Msg) // TLS and framing add bytes: the message ends here
	}
	if err == nil {
		t.mu.Lock()
		if h.Flags&flagHole != 0 {
			t.holes += int64(n)
		} else {
			t.sent += int64(n)
		}
		t.mu.Unlock()
	}
	if err != nil {
		return fmt.Errorf("sending block: %w", err)
	}
	if t.opts.testHook != nil {
		t.opts.testHook("sent", st.c.id)
	}
	return nil
}

// fileFailed gives up on one file; the others go on.
func (t *transfer) fileFailed(f *sendFile, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if f.failed {
		return
	}
	f.failed = true
	t.errs = append(t.errs, fmt.Sprintf("%s: %v (partial data kept on the receiver; rerun with --resume)", f.src.local, err))
	t.cl.log.Warn("file failed", "file", f.src.local, "err", err)
	t.cond.Broadcast()
	t.kick()
}

// kick wakes the scheduler before its next tick.
func (t *transfer) kick() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// connFailed takes a connection out of the transfer and puts everything it
// held (the block in hand and its unacknowledged blocks) back at the head
// of the queue for the others.
func (t *transfer) connFailed(st *connState, held []blockRef, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if st.dead {
		return
	}
	st.dead = true
	st.selected = false
	if t.ctx.Err() == nil {
		st.rep.Failed = err.Error()
		t.cl.log.Warn("connection lost; continuing on the others", "peer", t.peer, "conn", st.c.id, "err", err)
	}
	back := append([]blockRef(nil), held...)
	for _, in := range st.infl {
		back = append(back, in.ref)
	}
	st.infl = map[uint64]inflight{}
	st.unacked = 0
	t.requeueLocked(back)
	st.c.sess.Close()
	t.cond.Broadcast()
	t.kick()
}

// requeueLocked puts blocks not yet acknowledged back at the head of the
// queue, in file order.
func (t *transfer) requeueLocked(refs []blockRef) {
	var back []blockRef
	for _, r := range refs {
		if !r.f.acked[r.idx] && !r.f.failed {
			back = append(back, r)
			t.resent++
		}
	}
	sort.Slice(back, func(a, b int) bool {
		if back[a].f.entry != back[b].f.entry {
			return back[a].f.entry < back[b].f.entry
		}
		return back[a].idx < back[b].idx
	})
	t.queue = append(back, t.queue...)
}

// copyInflightLocked queues a second copy of every block st holds
// unacknowledged (it stalled or was left out); the blocks stay in its
// window, so a late acknowledgement still counts.
func (t *transfer) copyInflightLocked(st *connState) int {
	var back []blockRef
	for id, in := range st.infl {
		if in.again {
			continue
		}
		in.again = true
		st.infl[id] = in
		back = append(back, in.ref)
	}
	t.requeueLocked(back)
	return len(back)
}

func (t *transfer) fileByEntry(e uint32) *sendFile {
	// Files are few compared with blocks; a binary search over entry
	// indices (files are in entry order).
	i := sort.Search(len(t.files), func(i int) bool { return t.files[i].entry >= int(e) })
	if i < len(t.files) && t.files[i].entry == int(e) {
		return t.files[i]
	}
	return nil
}

// onAck handles the receiver's acknowledgement of one block.
func (t *transfer) onAck(st *connState, a ack) {
	if a.ID != t.id {
		return
	}
	now := time.Now()
	t.mu.Lock()
	if in, ok := st.infl[a.Msg]; ok {
		delete(st.infl, a.Msg)
		st.unacked -= int64(in.size)
	}
	st.lastAck = now
	t.lastAck = now
	f := t.fileByEntry(a.File)
	if f == nil || int(a.Index) >= f.n {
		t.mu.Unlock()
		return
	}
	switch a.Status {
	case ackOK:
		if !f.acked[a.Index] {
			n := int64(blockLen(f.src.Size, t.bs, int(a.Index)))
			f.acked[a.Index] = true
			f.nacked++
			t.acked += n
			st.rep.Bytes += n
			st.rep.Blocks++
			f.rd.release(f, int(a.Index))
			if f.nacked == f.n && !f.failed && !t.commitsClosed {
				t.commits <- f
			}
		}
	case ackBadSum:
		t.cl.log.Warn("receiver found a bad checksum; sending the block again", "file", f.src.local, "block", a.Index)
		t.requeueLocked([]blockRef{{f, int(a.Index)}})
	default:
		if t.fatal == nil {
			t.fatal = fmt.Errorf("bulk: receiver %s: %s", t.peer, a.Err)
			if a.Status == ackFull {
				t.fatal = fmt.Errorf("bulk: receiver %s: %w: %s", t.peer, ErrDestFull, a.Err)
			}
			t.cancel(t.fatal)
			t.kick()
		}
	}
	if t.recvLast.WriteNano != 0 && a.WriteNano-t.recvLast.WriteNano >= int64(50*time.Millisecond) {
		t.recvRate = float64(a.Total-t.recvLast.Total) / (float64(a.WriteNano-t.recvLast.WriteNano) / 1e9)
		t.est.ReceiverRate(now, t.recvRate)
		t.recvLast = a
	} else if t.recvLast.WriteNano == 0 {
		t.recvLast = a
	}
	t.cond.Broadcast()
	t.mu.Unlock()
	if t.opts.Tracer != nil {
		t.opts.Tracer.Acked(st.c.id, a.Msg, time.Unix(0, a.RecvNano), time.Unix(0, a.WriteNano), now)
	}
	if st.c.mon != nil {
		_ = st.c.mon.Acked(a.Msg, time.Unix(0, a.RecvNano), time.Unix(0, a.WriteNano))
	}
}

// ErrDestFull reports that the receiver ran out of space.
var ErrDestFull = errors.New("destination disk full")

// committer asks the receiver to finish each file whose blocks are all
// acknowledged, after checking that the source did not change meanwhile.
func (t *transfer) committer() {
	for f := range t.commits {
		t.mu.Lock()
		failed := f.failed
		t.mu.Unlock()
		if failed {
			continue
		}
		if f.f != nil {
			if msg := f.src.changed(); msg != "" {
				t.fileFailed(f, fmt.Errorf("%w: %s", ErrSourceChanged, msg))
				continue
			}
		}
		t.mu.Lock()
		hash := fileHash(f.src.Size, t.bs, f.sums)
		t.mu.Unlock()
		if _, err := t.call(MsgCommit, mustJSON(commitReq{ID: t.id, File: f.entry, Hash: hash})); err != nil {
			t.fileFailed(f, err)
			continue
		}
		t.mu.Lock()
		f.done = true
		t.cond.Broadcast()
		t.mu.Unlock()
		t.kick()
	}
}

func (t *transfer) allDoneLocked() bool {
	for _, f := range t.files {
		if !f.done && !f.failed {
			return false
		}
	}
	return true
}

// streamCtl is --streams auto. On a long path with random loss, each TCP
// flow is held to a few Mbit/s by its own loss recovery while the path
// has room: more flows add their rates. When the bottleneck is full,
// another flow only takes a share from the others, and a queue builds,
// which the connections see as smoothed RTT above their minimum RTT. So,
// once per epoch (long enough to average a lossy path's noise), auto
// grows the number of connections while there is no standing queue and
// goodput did not fall, holds when a queue stands, and steps back when
// the last growth brought nothing. Where RTT says nothing (loopback, a
// shallow bottleneck queue), the goodput rule alone decides.
type streamCtl struct {
	k      int       // connections wanted
	prevK  int       // before the last growth step
	max    int       // most connections allowed
	epoch  time.Time // start of the current measuring epoch
	acked0 int64     // bytes acknowledged at its start
	last   float64   // the previous epoch's goodput (bytes/s)
	best   float64   // best epoch goodput
	hold   int       // epochs to wait before trying to grow again
	grew   bool      // the last step grew k
	qs     []float64 // queueing samples of this epoch, one per sub-transfer
	wait0  int64     // transfer.paceWait at the epoch's start
	// paced marks a congestion control that finds the path's rate per
	// flow (bbr): a few flows fill the path, so growth needs a baseline
	// epoch first and a clear gain (paceGain), not just goodput noise.
	paced  bool
	epochs int // epochs decided so far
}

// paceGain is the goodput gain that justifies more flows under bbr, and
// paceBaseline the epochs measured before any growth.
const (
	paceGain     = 0.15
	paceBaseline = 3
)

func (c *streamCtl) margin() float64 {
	if c.paced {
		return paceGain
	}
	return growMargin
}

// epochQueue returns the median queueing sample of the epoch and starts a
// new list: the median ignores the short-lived queue that new connections'
// slow start builds.
func (c *streamCtl) epochQueue() float64 {
	if len(c.qs) == 0 {
		return -1
	}
	sort.Float64s(c.qs)
	q := c.qs[len(c.qs)/2]
	c.qs = c.qs[:0]
	return q
}

// epochLen is how long goodput is measured before a decision (the first
// epoch is half as long: the first doubling is the one most likely to pay).
func epochLen(rtt time.Duration) time.Duration { return max(time.Second, 10*rtt) }

// Thresholds of streamCtl.
const (
	// holdEpochs: after a growth step that did not help, wait this many epochs.
	holdEpochs = 2
	// queueFree: below this queueing delay (a fraction of the minimum RTT)
	// the path has room.
	queueFree = 0.1
	// queueFull: above it a queue stands at the bottleneck.
	queueFull = 0.3
)

// step takes one epoch's goodput g (bytes/s) and queueing delay q (median
// smoothed RTT over minimum RTT, minus one; negative when unknown) and
// returns the number of connections wanted.
func (c *streamCtl) step(g, q float64) int {
	prevG := c.last
	c.last = g
	grew := c.grew
	c.grew = false
	c.epochs++
	if c.paced && c.epochs <= paceBaseline {
		c.best = g // baselines first: bbr's startup inflates the next epochs' gain
		return c.k
	}
	if grew && g < prevG*(1+c.margin()) && (q < 0 || q >= queueFree) {
		// The last batch added nothing and a queue (or nothing) says why:
		// go back to what we had, and wait before trying again.
		c.k = max(c.prevK, 1)
		c.hold = holdEpochs
		return c.k
	}
	c.best = max(c.best, g)
	if c.hold > 0 {
		c.hold--
		return c.k
	}
	room := q >= 0 && q < queueFree
	better := g > prevG*(1+c.margin())
	if c.k < c.max && (room && g >= 0.8*c.best || (q < 0 || q < queueFull) && better) {
		c.prevK = c.k
		if room || prevG == 0 || g >= 1.3*prevG {
			c.k = min(2*c.k, c.max) // far from full: every flow adds its own rate
		} else {
			c.k = min(c.k+max(1, c.k/2), c.max)
		}
		c.grew = true
	}
	return c.k
}

// queueing returns the median over conns of smoothed RTT over minimum RTT,
// minus one: the bottleneck queue's delay as a fraction of the path's RTT
// (-1 when the path is too short for RTT to tell, under a millisecond).
func queueing(conns []*connState) float64 {
	var qs []float64
	for _, st := range conns {
		info, err := tcpInfo(st.c.tcp)
		if err != nil || info.Min_rtt == 0 {
			continue
		}
		if info.Min_rtt < 1000 {
			return -1
		}
		qs = append(qs, float64(info.Rtt)/float64(info.Min_rtt)-1)
	}
	if len(qs) == 0 {
		return -1
	}
	sort.Float64s(qs)
	return qs[len(qs)/2]
}

// schedule runs the transfer as a sequence of sub-transfers until every
// file is committed or failed.
func (t *transfer) schedule(rep *Report) {
	auto := t.opts.Streams == 0 && !t.opts.Fair
	t.mu.Lock()
	rtt := t.rtt
	ctl := streamCtl{k: len(t.conns), max: t.opts.MaxStreams, paced: t.cl.cfg.CC == "bbr"}
	if !auto {
		ctl.k = max(t.opts.Streams, 1)
	}
	t.mu.Unlock()
	roundTime := t.opts.RoundTime
	if roundTime == 0 {
		roundTime = max(MinRoundTime, 4*rtt)
	}
	stall := max(minStall, 8*rtt)
	tick := time.NewTicker(min(50*time.Millisecond, roundTime/2))
	defer tick.Stop()
	adding := false
	added := make(chan []*conn, 1)
	defer func() {
		t.mu.Lock()
		t.commitsClosed = true
		t.mu.Unlock()
	}()
	var roundStart time.Time
	for {
		select {
		case cs := <-added:
			adding = false
			for _, cn := range cs {
				t.addConn(cn, false)
			}
			t.mu.Lock()
			ctl.epoch, ctl.acked0, ctl.qs = time.Now(), t.acked, ctl.qs[:0]
			ctl.wait0 = t.paceWait.Load()
			t.mu.Unlock()
		case <-tick.C:
		case <-t.wake:
		}
		t.mu.Lock()
		if t.fatal != nil || t.ctx.Err() != nil || t.allDoneLocked() {
			if t.fatal == nil && t.ctx.Err() != nil && !t.allDoneLocked() {
				t.fatal = fmt.Errorf("bulk: transfer to %s: %w", t.peer, context.Cause(t.ctx))
			}
			t.cond.Broadcast()
			t.mu.Unlock()
			return
		}
		now := time.Now()
		live := t.liveLocked(now, stall)
		if len(live) == 0 {
			t.mu.Unlock()
			t.dialing.Store(1)
			cs, err := t.cl.acquire(t.ctx, t.peer, 1, acquireOpts{onDial: t.onDial})
			if err != nil {
				t.mu.Lock()
				t.fatal = fmt.Errorf("bulk: every connection to %s was lost and none could be reopened (rerun with --resume): %w", t.peer, err)
				t.mu.Unlock()
				return
			}
			t.addConn(cs[0], false)
			roundStart = time.Time{}
			continue
		}
		t.endgame = len(t.queue) == 0
		if !roundStart.IsZero() && now.Sub(roundStart) < roundTime {
			t.cond.Broadcast() // wake workers waiting on time (endgame ages)
			t.mu.Unlock()
			if !t.opts.NoPace {
				// The pacing gain changes every RTT or so (probe, drain,
				// cruise): follow it between sub-transfers too.
				t.pacer.SetRate(t.est.Rate(now))
			}
			continue
		}
		// A new sub-transfer.
		if !roundStart.IsZero() {
			t.measureLocked(live, now.Sub(roundStart))
		}
		roundStart = now
		rep.Rounds++
		sub := t.selectLocked(live, ctl.k, roundTime)
		rep.MaxStreams = max(rep.MaxStreams, len(sub))
		grow := 0
		if auto && !adding && !t.endgame {
			ctl.qs = append(ctl.qs, queueing(sub))
			if ctl.epoch.IsZero() {
				ctl.epoch, ctl.acked0 = now, t.acked
			} else if d := now.Sub(ctl.epoch); d >= epochLen(rtt) || ctl.last == 0 && d >= max(500*time.Millisecond, 5*rtt) {
				g := float64(t.acked-ctl.acked0) / d.Seconds()
				q := ctl.epochQueue()
				if t.cl.cfg.CC == "bbr" {
					// BBR finds the bottleneck rate per flow and keeps
					// little queue even when the path is full, so a low
					// queueing delay does not mean room: only a goodput
					// gain justifies more flows (each one more probing
					// above the path's rate adds drops).
					q = -1
				}
				// The share of the connections' time spent waiting for a
				// pacing slot: when pacing holds them back, the aggregate is
				// at the estimated path rate and more connections cannot
				// help (they would only add slow-start bursts).
				waited := time.Duration(t.paceWait.Load() - ctl.wait0)
				paced := waited.Seconds()/(d.Seconds()*float64(len(live))) > 0.25
				k := ctl.k
				if lim := t.opts.RateLimit; (lim <= 0 || g < 0.8*lim) && !paced {
					k = ctl.step(g, q) // near --rate-limit more connections cannot help
				}
				t.cl.log.Debug("streams auto", "goodput_mbit", g*8/1e6, "queueing", q, "pacing_bound", paced, "streams", k, "conns", len(live))
				ctl.epoch, ctl.acked0, ctl.wait0 = now, t.acked, t.paceWait.Load()
				grow = k - len(live)
			}
		}
		t.cond.Broadcast()
		t.mu.Unlock()

		t.updatePacing(sub)
		if grow > 0 {
			adding = true
			t.dialing.Store(int32(len(sub) + grow))
			go func(n int) {
				// Connections joining a paced transfer are not primed: the
				// others keep the path full, and priming traffic goes
				// outside the pacer (measured: bursts of hundreds of drops
				// at a shallow bottleneck queue). Their first blocks are
				// paced like the rest.
				cs, err := t.cl.acquire(t.ctx, t.peer, n, acquireOpts{onDial: t.onDial, noPrimeTraffic: !t.opts.NoPace})
				if err != nil {
					t.cl.log.Debug("adding connections", "err", err)
				}
				added <- cs
			}(grow)
		}
	}
}

// liveLocked returns the connections still usable, failing those whose
// session closed, and leaves out (re-sending their blocks elsewhere) those
// that hold unacknowledged blocks but have heard nothing for a long time
// while the others are being acknowledged.
func (t *transfer) liveLocked(now time.Time, stall time.Duration) []*connState {
	var live []*connState
	n := 0
	for _, st := range t.conns {
		if !st.dead {
			n++
		}
	}
	fair := 0.0
	if n > 0 {
		fair = t.est.Bandwidth() / float64(n)
	}
	for _, st := range t.conns {
		if st.dead {
			continue
		}
		if !st.c.alive() {
			t.mu.Unlock()
			t.connFailed(st, nil, errors.New("session closed"))
			t.mu.Lock()
			continue
		}
		live = append(live, st)
		limit := stall
		if st.rate > 0 {
			// Time to drain what it holds at its own measured rate.
			limit = max(limit, time.Duration(4*float64(st.unacked)/st.rate*float64(time.Second)))
		}
		if fair > 0 {
			// Time to deliver two blocks at a quarter of a fair share: on
			// a long lossy path with many connections, one block can take
			// seconds.
			limit = max(limit, time.Duration(8*float64(t.bs)/fair*float64(time.Second)))
		}
		if st.unacked > 0 && st.bench == 0 && now.Sub(st.lastAck) > limit && now.Sub(t.lastAck) < stall/2 {
			n := t.copyInflightLocked(st)
			t.benchLocked(st, "stalled")
			t.cl.log.Warn("connection stalled; re-sending its blocks elsewhere", "conn", st.c.id, "blocks", n)
		}
	}
	return live
}

// selectLocked chooses the next sub-transfer's subset: up to k connections
// not left out, fastest first, each with an amount to send. A connection
// whose time out is over is probed with a small amount.
func (t *transfer) selectLocked(live []*connState, k int, roundTime time.Duration) []*connState {
	var cand []*connState
	for _, st := range live {
		st.selected = false
		if st.bench > 0 {
			st.bench--
			st.rep.LeftOut++
			continue
		}
		cand = append(cand, st)
	}
	if len(cand) == 0 {
		cand = live // nobody else: use those sitting out
	}
	sort.SliceStable(cand, func(a, b int) bool { return cand[a].rate > cand[b].rate })
	if len(cand) > k {
		cand = cand[:k]
	}
	bw := t.est.Bandwidth()
	for _, st := range cand {
		st.selected = true
		st.rep.Rounds++
		// The amount: what it could send this round at four times its
		// measured rate or twice its share of the estimated bandwidth,
		// and at least its window. It bounds a connection that is slowing
		// down without holding back one that is speeding up; before
		// anything is measured there is no bound. A connection coming
		// back from being left out is probed with two blocks.
		amount := int64(math.MaxInt64)
		if st.rate > 0 || bw > 0 {
			amount = max(int64(4*st.rate*roundTime.Seconds()), int64(2*bw/float64(len(cand))*roundTime.Seconds()), t.windowLocked(st))
		}
		if st.benched > 0 && st.rate < slowFactor*bw/float64(len(cand)) {
			amount = int64(2 * t.bs)
		}
		st.quota = amount
	}
	return cand
}

// windowLocked is the most st may have unacknowledged: three RTTs at its
// measured rate (or twice its primed congestion window, before it has
// one), and at least two blocks and minWindow, so that the next block is
// always queued behind the one in flight; a connection too slow to
// deliver a block in four RTTs holds one block.
func (t *transfer) windowLocked(st *connState) int64 {
	// The RTT floor covers scheduling delays on a busy host, which a
	// loopback ping does not see.
	rtt := max(t.rtt, 10*time.Millisecond)
	if !st.measured {
		// Before it is measured: twice the window priming opened.
		return max(2*st.c.prime.CwndAfter, 2*int64(t.bs), minWindow)
	}
	w := int64(3 * st.rate * rtt.Seconds())
	if int64(4*st.rate*rtt.Seconds()) < int64(t.bs) {
		// A slow connection (on a lossy path, with many connections)
		// takes seconds per block: it holds one block at a time rather
		// than a second one queued behind it.
		return max(w, int64(t.bs))
	}
	return max(w, 2*int64(t.bs), minWindow)
}

// measureLocked updates each connection's acknowledged rate after a
// sub-transfer of length d and leaves out those far slower than the
// median. A rate is taken over at least rateBlocks blocks (or rateSpan),
// since acknowledgements arrive a block at a time.
func (t *transfer) measureLocked(live []*connState, d time.Duration) {
	var rates []float64
	for _, st := range live {
		got := st.rep.Bytes - st.ackMark
		st.ackMark = st.rep.Bytes
		if st.selected || st.unacked > 0 || got > 0 {
			st.accB += got
			st.accT += d // it had work: the time counts
		}
		if st.accB >= int64(rateBlocks*t.bs) || st.accT >= rateSpan {
			r := float64(st.accB) / st.accT.Seconds()
			if st.rate == 0 {
				st.rate = r
			} else {
				st.rate = 0.5*st.rate + 0.5*r
			}
			st.accB, st.accT = 0, 0
			st.measured = true
		}
		if st.measured && st.bench == 0 {
			rates = append(rates, st.rate)
		}
	}
	if len(rates) < 2 || t.endgame {
		return
	}
	sort.Float64s(rates)
	med := rates[len(rates)/2]
	t.medRate = med
	now := time.Now()
	for _, st := range live {
		if st.bench > 0 || !st.selected {
			continue
		}
		if st.measured && st.rate < slowFactor*med {
			t.benchLocked(st, "slower than the others")
			continue
		}
		// A block waiting far longer than the median connection would
		// take to deliver all st holds marks st as falling behind, even
		// before its own rate is measured.
		late := t.dueAt(st, med)
		if old := st.oldestLocked(); !old.IsZero() && now.Sub(old) > late {
			n := t.copyInflightLocked(st)
			t.benchLocked(st, "its blocks wait far longer than the others'")
			t.cl.log.Debug("re-sending a lagging connection's blocks elsewhere", "conn", st.c.id, "blocks", n)
		}
	}
}

// oldestLocked returns when st's oldest unacknowledged block was sent.
func (st *connState) oldestLocked() time.Time {
	var old time.Time
	for _, in := range st.infl {
		if old.IsZero() || in.at.Before(old) {
			old = in.at
		}
	}
	return old
}

// benchLocked leaves st out of the next sub-transfers. Its blocks in
// flight stay with it (on a lossy path every flow is slow now and then, and
// sending them twice would waste the path); in the endgame idle
// connections copy whatever waits longest.
func (t *transfer) benchLocked(st *connState, why string) {
	st.bench = benchRounds
	st.benched++
	st.selected = false
	t.cl.log.Debug("connection left out of the next sub-transfers",
		"conn", st.c.id, "why", why, "rate", st.rate, "unacked", st.unacked)
}

// kernelPacingOn is the SO_MAX_PACING_RATE set on a connection as soon as
// it connects: high enough never to bind, it turns on the kernel's own TCP
// pacing (which the kernel enables for any finite cap), so that even the
// priming traffic and the first window leave spread at TCP's own rate
// (about twice cwnd/RTT in slow start) rather than in line-rate bursts.
const kernelPacingOn = 1 << 40

// onDial prepares a connection dialled for this transfer before TLS and
// priming: kernel pacing unless pacing is off, then the caller's OnDial.
func (t *transfer) onDial(c *net.TCPConn) {
	if !t.opts.NoPace {
		v := float64(kernelPacingOn)
		// On a path whose rate is known (remembered, or measured by this
		// transfer) a new connection starts capped at its share of it, so
		// neither its priming nor its slow start can push the aggregate
		// over the path's rate.
		if bw := t.est.Bandwidth(); bw > 0 {
			v = math.Max(shareGain*bw/float64(max(int(t.dialing.Load()), 1)), pace.MinRate)
		}
		_ = pace.SetSocketRate(c, v)
	}
	if t.opts.OnDial != nil {
		t.opts.OnDial(c)
	}
}

// updatePacing re-estimates the bandwidth and sets the userspace pacer and
// each socket's SO_MAX_PACING_RATE to it.
func (t *transfer) updatePacing(sub []*connState) {
	now := time.Now()
	type live struct {
		st       *connState
		selected bool
	}
	t.mu.Lock()
	all := make([]live, 0, len(t.conns))
	for _, st := range t.conns {
		if !st.dead {
			all = append(all, live{st, st.selected})
		}
	}
	t.mu.Unlock()
	// The delivery rate comes from the bytes TCP saw acknowledged on every
	// connection (tcpi_bytes_acked, counted from each one's first tick):
	// acknowledged a segment at a time, it is smooth where the receiver's
	// block acknowledgements come a megabyte at a time and in bunches,
	// which made short samples overshoot the path.
	var kernel float64
	for _, l := range all {
		st := l.st
		info, err := tcpInfo(st.c.tcp)
		if err != nil {
			continue
		}
		if st.tcpSeen && info.Bytes_acked >= st.tcpAcked {
			t.tcpDelivered += int64(info.Bytes_acked - st.tcpAcked)
		}
		st.tcpAcked, st.tcpSeen = info.Bytes_acked, true
		if l.selected {
			kernel += float64(info.Delivery_rate)
		}
	}
	t.est.Delivered(now, t.tcpDelivered)
	t.est.KernelRate(now, kernel)
	if t.opts.NoPace {
		return
	}
	r := t.est.Rate(now)
	t.pacer.SetRate(r)
	if r <= 0 || len(sub) == 0 {
		return
	}
	// Each socket gets SO_MAX_PACING_RATE, which also turns on the
	// kernel's own TCP pacing (at about twice cwnd/RTT in slow start,
	// 1.2x after), so a message's segments are spread rather than sent
	// as one window-sized burst into a shallow queue. The cap is the
	// socket's share of the pacing rate (which follows the estimator's
	// gain cycle) with shareGain of room: the sum of the caps is what
	// bounds the aggregate at the bottleneck from one moment to the next,
	// since the userspace pacer only spaces whole blocks. Caps of twice the
	// share, or of the whole estimate per socket, let connections in slow
	// start or with a fresh window burst above the path together (measured:
	// more drops at a 32 KiB queue with pacing than without).
	per := math.Max(shareGain*r/float64(len(sub)), pace.MinRate)
	for _, st := range sub {
		_ = pace.SetSocketRate(st.c.tcp, per)
	}
}

// progressLoop reports progress until the transfer ends.
func (t *transfer) progressLoop(start time.Time, total int64) {
	tk := time.NewTicker(200 * time.Millisecond)
	defer tk.Stop()
	var last int64
	lastT := start
	rate := 0.0
	emit := func() {
		t.mu.Lock()
		b := t.acked
		n := 0
		for _, st := range t.conns {
			if st.selected || st.unacked > 0 {
				n++
			}
		}
		t.mu.Unlock()
		now := time.Now()
		if d := now.Sub(lastT).Seconds(); d > 0 {
			r := float64(b-last) / d
			if rate == 0 {
				rate = r
			} else {
				rate = 0.7*rate + 0.3*r
			}
		}
		last, lastT = b, now
		t.opts.Progress(Progress{Bytes: b, Total: total, Rate: rate, Streams: n, Elapsed: now.Sub(start)})
	}
	for {
		select {
		case <-t.ctx.Done():
			emit()
			return
		case <-tk.C:
			emit()
		}
	}
}

// shareGain is the room each socket's pacing cap leaves above its share of
// the pacing rate, for connections that lag to catch up.
const shareGain = 1.25
