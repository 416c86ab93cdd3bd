package bulk

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync/atomic"
	"time"

	"github.com/holdfast/holdfast/internal/pace"
)

// worker sends the blocks assigned to one connection, one message at a
// time, each after the transfer's pacer grants it a slot.
func (t *transfer) worker(st *connState) {
	buf := make([]byte, blockHeaderSize+t.bs)
	for {
		select {
		case <-st.wake:
		case <-t.ctx.Done():
			return
		}
		for {
			t.mu.Lock()
			// The application window: at most a few RTTs' worth of this
			// connection's measured rate unacknowledged, so that data does
			// not pile up in a socket buffer where it can neither be paced
			// nor re-sent elsewhere.
			for !st.dead && t.ctx.Err() == nil && len(st.pending) > 0 && st.unacked() >= t.windowLocked(st) {
				t.cond.Wait()
			}
			if len(st.pending) == 0 && st.selected && st.bench == 0 && !st.dead && len(t.queue) > 0 {
				// Pull the next amount at once: the pipe stays full.
				n := min(max(st.chunk, 1), len(t.queue))
				st.pending = append(st.pending[:0], t.queue[:n]...)
				t.queue = t.queue[n:]
				t.mu.Unlock()
				continue
			}
			if st.dead || len(st.pending) == 0 || t.ctx.Err() != nil {
				st.busy = false
				st.finish = time.Now()
				t.cond.Broadcast()
				t.mu.Unlock()
				break
			}
			ref := st.pending[0]
			st.pending = st.pending[1:]
			t.mu.Unlock()
			if err := t.sendBlock(st, ref, buf); err != nil {
				t.connFailed(st, []blockRef{ref}, err)
				return
			}
		}
	}
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
		h.Sum = zeroSum(n)
		payload = buf[:blockHeaderSize]
	} else {
		if err := f.rd.readBlock(f, i, t.bs, buf[blockHeaderSize:blockHeaderSize+n]); err != nil {
			t.fileFailed(f, fmt.Errorf("reading %s: %w", f.src.local, err))
			return nil
		}
		h.Sum = blockSum(buf[blockHeaderSize : blockHeaderSize+n])
	}
	t.mu.Lock()
	if f.failed {
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

	if err := t.pacer.Wait(t.ctx, len(payload)); err != nil {
		return err
	}
	now := time.Now()
	h.SentNano = now.UnixNano()
	h.put(buf)
	t.mu.Lock()
	st.infl[h.Msg] = inflight{ref: ref, size: n, at: now}
	t.mu.Unlock()
	if t.opts.Tracer != nil {
		t.opts.Tracer.Sent(st.c.id, h.Msg, now, len(payload))
	}
	err := st.c.sess.Send(t.ctx, MsgBlock, payload)
	t.mu.Lock()
	st.sendDur += time.Since(now)
	if err == nil {
		st.sentR += int64(n)
		if h.Flags&flagHole != 0 {
			t.holes += int64(n)
		} else {
			t.sent += int64(n)
		}
	}
	t.mu.Unlock()
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
}

// connFailed takes a connection out of the transfer and puts everything it
// held (the block in hand, its unsent assignment, its unacknowledged
// blocks) back at the head of the queue for the others.
func (t *transfer) connFailed(st *connState, held []blockRef, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if st.dead {
		return
	}
	st.dead = true
	st.busy = false
	st.finish = time.Now()
	if t.ctx.Err() == nil {
		st.rep.Failed = err.Error()
		t.cl.log.Warn("connection lost; continuing on the others", "peer", t.peer, "conn", st.c.id, "err", err)
	}
	back := append([]blockRef(nil), held...)
	back = append(back, st.pending...)
	st.pending = nil
	for _, in := range st.infl {
		back = append(back, in.ref)
	}
	st.infl = map[uint64]inflight{}
	t.requeueLocked(back)
	st.c.sess.Close()
	t.cond.Broadcast()
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
	delete(st.infl, a.Msg)
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
		}
	}
	if t.recvLast.WriteNano != 0 && a.WriteNano-t.recvLast.WriteNano >= int64(50*time.Millisecond) {
		t.recvRate = float64(a.Total-t.recvLast.Total) / (float64(a.WriteNano-t.recvLast.WriteNano) / 1e9)
		t.est.ReceiverRate(now, t.recvRate)
		t.recvLast = a
	} else if t.recvLast.WriteNano == 0 {
		t.recvLast = a
	}
	t.est.Delivered(now, t.acked)
	t.cond.Broadcast()
	t.mu.Unlock()
	if t.opts.Tracer != nil {
		t.opts.Tracer.Acked(st.c.id, a.Msg, time.Unix(0, a.RecvNano), time.Unix(0, a.WriteNano), now)
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

// schedule runs the transfer as a sequence of sub-transfers until every
// file is committed or failed.
func (t *transfer) schedule(rep *Report) {
	stopTick := make(chan struct{})
	defer close(stopTick)
	go func() {
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stopTick:
				return
			case <-tk.C:
				t.mu.Lock()
				t.cond.Broadcast()
				t.mu.Unlock()
			}
		}
	}()
	auto := t.opts.Streams == 0
	t.mu.Lock()
	k := len(t.conns)
	rtt := t.rtt
	t.mu.Unlock()
	roundTime := t.opts.RoundTime
	if roundTime == 0 {
		roundTime = max(MinRoundTime, 4*rtt)
	}
	stall := max(minStall, 8*rtt)
	var bestG float64
	var lastMeasure time.Time
	hold := 0
	grew := false
	var adding atomic.Bool
	defer func() {
		t.mu.Lock()
		t.commitsClosed = true
		t.mu.Unlock()
	}()
	for {
		t.mu.Lock()
		if t.fatal != nil || t.ctx.Err() != nil || t.allDoneLocked() {
			if t.fatal == nil && t.ctx.Err() != nil && !t.allDoneLocked() {
				t.fatal = fmt.Errorf("bulk: transfer to %s: %w", t.peer, context.Cause(t.ctx))
			}
			t.mu.Unlock()
			return
		}
		now := time.Now()
		var live []*connState
		for _, st := range t.conns {
			if st.dead || !st.c.alive() {
				if !st.dead {
					t.mu.Unlock()
					t.connFailed(st, nil, errors.New("session closed"))
					t.mu.Lock()
				}
				continue
			}
			live = append(live, st)
			// A connection that carries unacknowledged blocks but has
			// heard nothing for a long time is stalled: its blocks go to
			// the others and it sits out.
			limit := stall
			if st.rate > 0 {
				// Time to drain what it holds at its own measured rate.
				limit = max(limit, time.Duration(4*float64(st.unacked())/st.rate*float64(time.Second)))
			}
			if len(st.infl) > 0 && now.Sub(st.lastAck) > limit && now.Sub(t.lastAck) < stall/2 {
				var back []blockRef
				for _, in := range st.infl {
					back = append(back, in.ref)
				}
				st.infl = map[uint64]inflight{}
				t.requeueLocked(back)
				st.bench = benchRounds
				st.benched++
				t.cl.log.Warn("connection stalled; re-sending its blocks elsewhere", "conn", st.c.id, "blocks", len(back))
			}
		}
		if len(live) == 0 {
			t.mu.Unlock()
			cs, err := t.cl.acquire(t.ctx, t.peer, 1)
			if err != nil {
				t.mu.Lock()
				t.fatal = fmt.Errorf("bulk: every connection to %s was lost and none could be reopened (rerun with --resume): %w", t.peer, err)
				t.mu.Unlock()
				return
			}
			t.addConn(cs[0], false)
			continue
		}
		if len(t.queue) == 0 {
			// Endgame: keep measuring, so that a slow connection holding
			// the last blocks is found and its blocks sent elsewhere.
			if now.Sub(lastMeasure) >= roundTime/2 {
				t.measureLocked(nil, now, max(2*rtt, 20*time.Millisecond))
				lastMeasure = now
			}
		}
		if len(t.queue) == 0 && !t.resendBenchedLocked() {
			t.cond.Wait()
			t.mu.Unlock()
			continue
		}
		// Choose the subset. Connections already in it keep working (each
		// pulls its next amount from the queue as soon as it has sent the
		// last, so no connection idles at a sub-transfer boundary); one
		// that sits out is taken out, and idle ones join, fastest first,
		// up to k.
		var active, cand, benched []*connState
		for _, st := range live {
			if st.bench > 0 {
				st.bench--
				st.rep.LeftOut++
				if st.selected {
					st.selected = false
					t.requeueLocked(st.pending)
					st.pending = nil
				}
				if !st.busy {
					benched = append(benched, st)
				}
				continue
			}
			if st.selected {
				active = append(active, st)
			} else if !st.busy {
				cand = append(cand, st)
			}
		}
		if len(active) == 0 && len(cand) == 0 {
			if len(benched) == 0 {
				t.cond.Wait() // everyone is busy finishing a send
				t.mu.Unlock()
				continue
			}
			cand = benched // nobody else: probe those sitting out
		}
		sort.SliceStable(cand, func(a, b int) bool { return cand[a].rate > cand[b].rate })
		if need := k - len(active); len(cand) > need {
			cand = cand[:max(need, 0)]
		}
		if len(active) > k {
			// Shrinking: the slowest active ones stop after their amount.
			sort.SliceStable(active, func(a, b int) bool { return active[a].rate > active[b].rate })
			for _, st := range active[k:] {
				st.selected = false
			}
			active = active[:k]
		}
		sub := append(active, cand...)
		bw := t.est.Bandwidth()
		for _, st := range sub {
			amount := st.rate * roundTime.Seconds()
			if amount == 0 {
				amount = bw * roundTime.Seconds() / float64(len(sub))
			}
			if st.rate == 0 && bw == 0 {
				// Nothing measured yet: a few blocks, so a slow
				// connection cannot take a large share before it is
				// seen to be slow.
				amount = float64(4 * t.bs)
			}
			st.chunk = min(max(2, int(amount)/t.bs), 256)
			st.rep.Rounds++
			st.selected = true
			if st.lastLook.IsZero() {
				st.lastLook = time.Now() // its rate is measured from here
			}
			if st.busy || len(t.queue) == 0 {
				continue // it pulls its next amount itself
			}
			blocks := min(st.chunk, len(t.queue))
			st.pending = append(st.pending[:0], t.queue[:blocks]...)
			t.queue = t.queue[blocks:]
			st.busy = true
			st.sentR, st.sendDur = 0, 0
			select {
			case st.wake <- struct{}{}:
			default:
			}
		}
		start := time.Now()
		ackedStart := t.acked
		// The sub-transfer lasts roundTime, or until the queue is empty
		// and every connection has sent what it took.
		for t.fatal == nil && t.ctx.Err() == nil && time.Since(start) < roundTime {
			idle := true
			for _, st := range sub {
				if st.busy {
					idle = false
				}
			}
			if idle && len(t.queue) == 0 {
				break
			}
			t.cond.Wait()
		}
		end := time.Now()
		t.measureLocked(sub, end, max(2*rtt, 20*time.Millisecond))
		lastMeasure = end
		elapsed := end.Sub(start)
		g := float64(t.acked-ackedStart) / elapsed.Seconds()
		rep.Rounds++
		rep.MaxStreams = max(rep.MaxStreams, len(sub))
		nconns := len(live)
		t.mu.Unlock()

		t.updatePacing(sub)
		if auto && !t.opts.Fair {
			switch {
			case hold > 0:
				hold--
			case g > bestG*(1+growMargin):
				bestG = g
				if k < t.opts.MaxStreams {
					// Grow by half again while goodput grows: on a lossy
					// long path one cubic flow carries a few Mbit/s and
					// tens may be needed.
					k = min(k+max(1, k/2), t.opts.MaxStreams)
					grew = true
					if add := k - nconns; add > 0 && adding.CompareAndSwap(false, true) {
						go func() {
							cs, err := t.cl.acquire(t.ctx, t.peer, add)
							if err == nil {
								for _, cn := range cs {
									t.addConn(cn, false)
								}
							}
							adding.Store(false)
						}()
					}
				}
			default:
				if grew && k > 1 {
					k--
				}
				grew = false
				bestG = g
				hold = holdRounds
			}
		}
	}
}

// unacked returns the bytes st has sent that are not acknowledged.
func (st *connState) unacked() int64 {
	var n int64
	for _, in := range st.infl {
		n += int64(in.size)
	}
	return n
}

// windowLocked is the most st may have unacknowledged: three RTTs at its
// measured rate (or the BDP priming assumed, before it has one), and at
// least four blocks and minWindow.
func (t *transfer) windowLocked(st *connState) int64 {
	// The RTT floor covers scheduling delays on a busy host, which a
	// loopback ping does not see.
	rtt := max(t.rtt, 10*time.Millisecond)
	w := int64(3 * st.rate * rtt.Seconds())
	if st.rate == 0 {
		w = min(2*st.c.prime.BDP, 8*int64(t.bs))
	}
	return max(w, 4*int64(t.bs), minWindow)
}

// measureLocked updates each connection's acknowledged rate and leaves out
// those far slower than the median.
func (t *transfer) measureLocked(sub []*connState, end time.Time, window time.Duration) {
	// Each connection's rate is what the receiver acknowledged on it,
	// measured over at least a window of a few RTTs.
	var rates []float64
	for _, st := range t.conns {
		if st.dead {
			continue
		}
		st.accB += st.rep.Bytes - st.ackMark
		st.ackMark = st.rep.Bytes
		// Wall time since the last look counts while the connection
		// had work (sent or queued): a rate over time spent idle
		// would measure the scheduler, not the path.
		if !st.lastLook.IsZero() && (slices.Contains(sub, st) || len(st.infl) > 0) {
			st.accT += end.Sub(st.lastLook)
		}
		st.lastLook = end
		if st.accT >= window {
			r := float64(st.accB) / st.accT.Seconds()
			if r == 0 && len(st.infl) > 0 {
				r = 1 // it holds data and delivered none: the slowest of all
			}
			if st.rate == 0 {
				st.rate = r
			} else {
				st.rate = 0.5*st.rate + 0.5*r
			}
			st.accB, st.accT = 0, 0
		}
		if st.rate > 0 && st.bench == 0 {
			rates = append(rates, st.rate)
		}
	}
	if len(rates) >= 2 {
		sort.Float64s(rates)
		med := rates[len(rates)/2]
		for _, st := range t.conns {
			if !st.dead && st.bench == 0 && st.rate > 0 && st.rate < slowFactor*med {
				t.benchLocked(st, "slower than the others")
			}
		}
	}
}

// benchLocked leaves st out of the next sub-transfers. Its blocks in
// flight stay with it (on a lossy path every flow is slow now and then, and
// sending them twice would waste the path) until the endgame: when nothing
// is left to assign, the blocks a left-out connection still holds are sent
// again on the others (resendBenchedLocked).
func (t *transfer) benchLocked(st *connState, why string) {
	st.bench = benchRounds
	st.benched++
	t.cl.log.Debug("connection left out of the next sub-transfers",
		"conn", st.c.id, "why", why, "rate", st.rate, "unacked", st.unacked())
}

// resendBenchedLocked re-queues the unacknowledged blocks of connections
// that are left out; it reports whether it queued any.
func (t *transfer) resendBenchedLocked() bool {
	any := false
	for _, st := range t.conns {
		if st.dead || st.bench == 0 || len(st.infl) == 0 {
			continue
		}
		var back []blockRef
		for _, in := range st.infl {
			back = append(back, in.ref)
		}
		st.infl = map[uint64]inflight{}
		t.requeueLocked(back)
		any = true
		t.cl.log.Debug("endgame: re-sending a left-out connection's blocks on the others", "conn", st.c.id, "blocks", len(back))
	}
	return any
}

// updatePacing re-estimates the bandwidth and sets the userspace pacer and
// each socket's SO_MAX_PACING_RATE to it.
func (t *transfer) updatePacing(sub []*connState) {
	now := time.Now()
	var kernel float64
	for _, st := range sub {
		if info, err := tcpInfo(st.c.tcp); err == nil {
			kernel += float64(info.Delivery_rate)
		}
	}
	t.est.KernelRate(now, kernel)
	if t.opts.NoPace {
		return
	}
	r := t.est.Rate(now)
	t.pacer.SetRate(r)
	if r <= 0 || len(sub) == 0 {
		return
	}
	// Each socket is paced by the kernel at its share of the estimate
	// plus a probing margin: this spreads a message's segments evenly, so
	// a shallow bottleneck queue never sees a window-sized burst. The
	// userspace pacer, which follows the gain cycle, bounds the sum.
	bw := t.est.Bandwidth()
	if lim := t.opts.RateLimit; lim > 0 && (bw == 0 || bw > lim) {
		bw = lim
	}
	if bw <= 0 {
		bw = r
	}
	per := bw * 1.25 / float64(len(sub))
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
			if st.busy || len(st.infl) > 0 {
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
