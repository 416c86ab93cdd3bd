package cdp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/holdfast/holdfast/internal/cdp/cdplog"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// shipLoop ships the local log to the remote log continuously: whatever is
// not yet acknowledged by the remote, in batches, retrying with backoff
// while the remote is unreachable (writes go on locally meanwhile).
func (v *Volume) shipLoop(ctx context.Context) {
	backoff := 100 * time.Millisecond
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	type result struct {
		acked uint64
		err   error
	}
	type shipment struct {
		first, last uint64
		bytes       int
		done        chan result
	}
	// Records are sent as soon as they are logged, in shipments of what
	// has accumulated, while fewer than ShipInFlight shipments and
	// ShipWindowBytes are on the way: a long round trip neither idles the
	// path nor holds records back behind the shipments already sent (with
	// one shipment at a time, the throughput would be one batch per round
	// trip and every record would wait for the previous answer). They are
	// settled in order.
	var queue []*shipment
	inflight := 0 // bytes of the shipments in queue
	send := func(recs []cdplog.Record, n int) {
		sh := &shipment{first: recs[0].Seq, last: recs[len(recs)-1].Seq, bytes: n, done: make(chan result, 1)}
		queue = append(queue, sh)
		inflight += n
		go func() {
			cctx, cancel := context.WithTimeout(ctx, v.m.cfg.RemoteTimeout)
			defer cancel()
			acked, err := v.remote.Append(cctx, v.meta.Name, v.size, recs)
			sh.done <- result{acked, err}
		}()
	}
	// drain waits for every shipment on the way and returns the highest
	// sequence number the remote acknowledged.
	drain := func() uint64 {
		var hi uint64
		for _, sh := range queue {
			if r := <-sh.done; r.err == nil && r.acked > hi {
				hi = r.acked
			}
		}
		queue = nil
		inflight = 0
		return hi
	}
	defer drain()
	v.shipMu.Lock()
	next := v.shipped + 1
	v.shipMu.Unlock()
	bulk, _ := v.remote.(BacklogShipper)
	var bulkRetry time.Time // bulk failed with the remote up: calls until then
	// The bulk transfer is for catching up: with the backlog left by an
	// outage of the remote, or found when the volume opens. A backlog that
	// builds up while shipments flow (a write rate near the path's
	// capacity) keeps streaming: a bulk transfer would stop the stream for
	// its setup and the remote's ingest, and fall further behind.
	catchingUp := true
	// A restored volume started from content its remote does not have:
	// ship that first (its log alone would restore only the blocks it
	// wrote itself).
	for meta := v.getMeta(); meta.RestoredFrom != nil && !meta.BaseShipped; meta = v.getMeta() {
		err := v.shipBase(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		v.setShipErr(err)
		sleepCtx(ctx, backoff)
		backoff = min(2*backoff, 5*time.Second)
	}
	for ctx.Err() == nil {
		if next < v.log.FirstSeq() {
			next = v.log.FirstSeq()
		}
		if bulk != nil && catchingUp && len(queue) == 0 && time.Now().After(bulkRetry) && next <= v.applied.Load() &&
			v.log.BytesFrom(next) >= v.m.cfg.BulkBacklogBytes {
			acked, err := v.shipBulk(ctx, bulk, next)
			switch {
			case err == nil:
				backoff = 100 * time.Millisecond
				v.settle(acked, next)
				next = acked + 1
			case ctx.Err() != nil:
				return
			case errors.Is(err, ErrUnreachable):
				v.setShipErr(err)
				catchingUp = true
				sleepCtx(ctx, backoff)
				backoff = min(2*backoff, 5*time.Second)
			default:
				v.logger.Warn("bulk transfer of the backlog failed; shipping it with calls", "remote", v.meta.Remote, "err", err)
				bulkRetry = time.Now().Add(bulkRetryAfter)
			}
			continue
		}
		for len(queue) < v.m.cfg.ShipInFlight && inflight < v.m.cfg.ShipWindowBytes && next <= v.applied.Load() {
			recs, err := v.log.Records(next, v.applied.Load(), min(v.m.cfg.ShipBatchBytes, v.m.cfg.ShipWindowBytes-inflight))
			if err != nil {
				v.setShipErr(err)
				break
			}
			if len(recs) == 0 {
				break
			}
			n := 0
			for i := range recs {
				n += cdplog.HeaderSize + len(recs[i].Data)
			}
			send(recs, n)
			next = recs[len(recs)-1].Seq + 1
		}
		// Wait for new records (sent at once while fewer than ShipInFlight
		// shipments are on the way) or for the oldest shipment's answer.
		var headDone chan result
		if len(queue) > 0 {
			headDone = queue[0].done
		}
		var r result
		select {
		case <-ctx.Done():
			return
		case <-v.kick:
			continue
		case <-tick.C:
			continue
		case r = <-headDone:
		}
		head := queue[0]
		queue = queue[1:]
		inflight -= head.bytes
		if r.err != nil {
			if ctx.Err() != nil {
				return
			}
			hi := drain()
			v.shipMu.Lock()
			shipped := v.shipped
			v.shipMu.Unlock()
			if hi > shipped {
				v.settle(hi, 0)
				shipped = hi
			}
			v.setShipErr(r.err)
			catchingUp = true
			next = shipped + 1
			sleepCtx(ctx, backoff)
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		acked := r.acked
		if acked < head.last {
			// The remote did not take all of it (it lacks earlier records,
			// or a later shipment overtook this one): settle the rest and
			// resume from where the remote is.
			if hi := drain(); hi > acked {
				acked = hi
			}
			next = acked + 1
		}
		v.settle(acked, head.first)
		if catchingUp && v.log.BytesFrom(acked+1) < v.m.cfg.BulkBacklogBytes {
			catchingUp = false
		}
	}
}

// shipBase sends the content a restored volume started from (its base: the
// restore point, read through to the source until filled) to the remote's
// base image, skipping zero ranges, and records that in meta.json.
func (v *Volume) shipBase(ctx context.Context) error {
	v.bulkActive.Store(true)
	defer v.bulkActive.Store(false)
	const chunk = MaxBaseBytes / bs
	// Up to baseInFlight ranges are on the way at once (a long round trip
	// does not idle the path); an empty range at the end makes the remote
	// commit (sync) its base.
	const baseInFlight = 8
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sem := make(chan []byte, baseInFlight)
	for range baseInFlight {
		sem <- make([]byte, MaxBaseBytes)
	}
	var wg sync.WaitGroup
	var sent atomic.Int64
	send := func(off int64, p []byte) error {
		cctx, ccancel := context.WithTimeout(ctx, v.m.cfg.RemoteTimeout)
		defer ccancel()
		return v.remote.WriteBase(cctx, v.meta.Name, v.size, off, p)
	}
	for blk := uint64(0); blk < v.blocks && ctx.Err() == nil; blk += chunk {
		var buf []byte
		select {
		case buf = <-sem:
		case <-ctx.Done():
		}
		if buf == nil {
			break
		}
		n := int(min(chunk, v.blocks-blk))
		p := buf[:n*bs]
		if err := v.readBase(ctx, blk, n, p); err != nil {
			cancel(fmt.Errorf("reading the base of %s at block %d: %w", v.meta.Name, blk, err))
			sem <- buf
			break
		}
		if allZero(p) {
			sem <- buf
			continue
		}
		wg.Add(1)
		go func(off int64) {
			defer wg.Done()
			if err := send(off, p); err != nil {
				cancel(err)
			}
			sent.Add(int64(len(p)))
			sem <- buf
		}(int64(blk * bs))
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return err
	}
	if err := send(0, nil); err != nil {
		return err
	}
	v.metaMu.Lock()
	v.meta.BaseShipped = true
	v.metaMu.Unlock()
	if err := v.saveMeta(); err != nil {
		return err
	}
	v.logger.Info("shipped the restored content to the remote's base image", "remote", v.meta.Remote, "bytes", sent.Load())
	return nil
}

func allZero(p []byte) bool {
	for len(p) >= 8 {
		if binary.LittleEndian.Uint64(p) != 0 {
			return false
		}
		p = p[8:]
	}
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}

// bulkRetryAfter is how long a volume ships with calls after a bulk
// transfer failed while the remote was reachable.
const bulkRetryAfter = time.Minute

// shipBulk ships the backlog from seq next on (up to BulkMaxBytes) with the
// bulk transfer and returns the last sequence number the remote holds.
func (v *Volume) shipBulk(ctx context.Context, bulk BacklogShipper, next uint64) (uint64, error) {
	sp, err := v.log.Span(next, v.applied.Load(), v.m.cfg.BulkMaxBytes)
	if err != nil {
		return 0, fmt.Errorf("reading the backlog: %w", err)
	}
	v.bulkActive.Store(true)
	defer v.bulkActive.Store(false)
	t0 := time.Now()
	v.logger.Info("shipping the backlog with the bulk transfer", "remote", v.meta.Remote, "first", sp.First, "last", sp.Last, "bytes", sp.Size)
	acked, err := bulk.ShipBacklog(ctx, v.meta.Name, v.size, sp)
	if err != nil {
		return 0, err
	}
	if acked < sp.First {
		return 0, fmt.Errorf("the remote took none of the backlog %d..%d (it holds up to %d)", sp.First, sp.Last, acked)
	}
	v.bulkTransfers.Add(1)
	v.bulkBytes.Add(sp.Size)
	v.logger.Info("backlog shipped", "remote", v.meta.Remote, "acked", acked, "bytes", sp.Size, "seconds", time.Since(t0).Seconds())
	return acked, nil
}

// settle records that the remote holds everything up to acked; first is
// the oldest record of the shipment, whose age is the lag sampled.
func (v *Volume) settle(acked, first uint64) {
	now := time.Now()
	v.shipMu.Lock()
	if v.shipErr != "" {
		v.logger.Info("remote CDP log reachable again", "remote", v.meta.Remote, "acked", acked)
	}
	v.shipErr = ""
	v.shipped = acked
	if v.degraded && acked+1 >= v.log.NextSeq() {
		v.degraded = false
		v.logger.Info("sync volume caught up with the remote, back to sync", "seq", acked)
	}
	close(v.shipCh)
	v.shipCh = make(chan struct{})
	v.shipMu.Unlock()
	// The lag of a shipment is that of its oldest record: how long the
	// write waited before the remote log held it.
	if m, ok := v.log.Meta(first); ok && acked >= first {
		v.lagHist.add(now.Sub(m.Time))
	}
}

func (v *Volume) setShipErr(err error) {
	v.shipMu.Lock()
	defer v.shipMu.Unlock()
	if v.shipErr == "" {
		v.logger.Warn("shipping CDP log to the remote failed; writes go on locally", "remote", v.meta.Remote, "err", err)
	}
	v.shipErr = err.Error()
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// ReplicationInfo is the state of a volume's shipping to its remote log.
type ReplicationInfo struct {
	Remote     string  `json:"remote"`
	Mode       Mode    `json:"mode"`
	State      string  `json:"state"` // ok, behind, unreachable, degraded, catching-up (a bulk transfer of the backlog)
	ShippedSeq uint64  `json:"shipped_seq"`
	LagRecords uint64  `json:"lag_records"`
	LagSeconds float64 `json:"lag_seconds"` // age of the oldest record the remote lacks (the RPO now)
	P50Seconds float64 `json:"lag_p50_seconds"`
	P99Seconds float64 `json:"lag_p99_seconds"` // write-to-remote-ack delay over the last samples
	LastError  string  `json:"last_error,omitempty"`
	// BulkTransfers and BulkBytes count the backlogs shipped with the
	// bulk transfer since the volume was opened.
	BulkTransfers int64 `json:"bulk_transfers"`
	BulkBytes     int64 `json:"bulk_bytes"`
}

func (v *Volume) replicationInfo() *ReplicationInfo {
	if v.meta.Remote == "" || v.meta.Replica {
		return nil
	}
	v.shipMu.Lock()
	ri := &ReplicationInfo{Remote: v.meta.Remote, Mode: v.meta.Mode, ShippedSeq: v.shipped, LastError: v.shipErr}
	degraded := v.degraded
	v.shipMu.Unlock()
	last := v.log.NextSeq() - 1
	if last > ri.ShippedSeq {
		ri.LagRecords = last - ri.ShippedSeq
		if m, ok := v.log.Meta(ri.ShippedSeq + 1); ok {
			ri.LagSeconds = time.Since(m.Time).Seconds()
		}
	}
	ri.BulkTransfers, ri.BulkBytes = v.bulkTransfers.Load(), v.bulkBytes.Load()
	switch {
	case v.bulkActive.Load():
		ri.State = "catching-up"
	case ri.LastError != "":
		ri.State = "unreachable"
	case degraded:
		ri.State = "degraded"
	case ri.LagRecords > 0:
		ri.State = "behind"
	default:
		ri.State = "ok"
	}
	ri.P50Seconds, ri.P99Seconds = v.lagHist.quantiles()
	return ri
}

// lagSamples is how many recent lag samples are kept.
const lagSamples = 8192

// lagRecorder keeps the recent write-to-remote-ack delays.
type lagRecorder struct {
	mu   sync.Mutex
	buf  []time.Duration
	next int
}

func newLagRecorder() *lagRecorder { return &lagRecorder{} }

func (l *lagRecorder) add(d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buf) < lagSamples {
		l.buf = append(l.buf, d)
		return
	}
	l.buf[l.next] = d
	l.next = (l.next + 1) % lagSamples
}

func (l *lagRecorder) quantiles() (p50, p99 float64) {
	l.mu.Lock()
	s := append([]time.Duration(nil), l.buf...)
	l.mu.Unlock()
	if len(s) == 0 {
		return 0, 0
	}
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2].Seconds(), s[(len(s)*99)/100].Seconds()
}
