package cdp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/holdfast/holdfast/internal/cdp/cdplog"
	"github.com/holdfast/holdfast/internal/cdp/nbd"
	"golang.org/x/sys/unix"
)

const bs = cdplog.BlockSize

// Mode says how writes are replicated.
type Mode string

// Replication modes.
const (
	ModeLocal Mode = "local" // no remote log
	ModeSync  Mode = "sync"  // a write is acknowledged once the remote log has it
	ModeAsync Mode = "async" // writes are shipped in the background; the lag is measured
)

// parentRef names the content a restored volume started from: volume
// Volume as of sequence number Seq, held on this agent or on agent Remote.
type parentRef struct {
	Volume string `json:"volume"`
	Seq    uint64 `json:"seq"`
	Remote string `json:"remote,omitempty"`
}

// volumeMeta is the persistent description of a volume (meta.json).
type volumeMeta struct {
	Name    string    `json:"name"`
	Size    int64     `json:"size"`
	Created time.Time `json:"created"`
	Mode    Mode      `json:"mode"`
	Remote  string    `json:"remote,omitempty"`
	// Parent is set while a restored volume still reads through to its
	// source; RestoredFrom keeps the origin after the fill completes.
	Parent       *parentRef `json:"parent,omitempty"`
	RestoredFrom *parentRef `json:"restored_from,omitempty"`
	// FoldSeq is the last sequence number folded into base.img.
	FoldSeq uint64 `json:"fold_seq"`
	Replica bool   `json:"replica,omitempty"`
	// BaseShipped is set once a restored volume with a remote has shipped
	// the content it started from to the remote's base image.
	BaseShipped bool `json:"base_shipped,omitempty"`
	// NoCDP volumes keep no log (a baseline for benchmarks): no
	// point-in-time restore, no remote.
	NoCDP bool `json:"no_cdp,omitempty"`
}

// Volume is one CDP-protected block volume (or, on the remote agent, the
// replica of one: a log and base without a live image). It implements
// nbd.Device.
type Volume struct {
	m      *Manager
	dir    string
	logger *slog.Logger

	metaMu sync.Mutex
	meta   volumeMeta

	size       int64
	blocks     uint64
	log        *cdplog.Log
	data       *os.File // the live image; nil for replicas
	base       *os.File // content as of meta.FoldSeq
	allPresent bool     // data.img holds every block (not a restored volume)
	present    *bitmap  // blocks data.img holds, for restored volumes
	baseBits   *bitmap  // blocks base.img holds
	wmu        sync.Mutex
	baseMu     sync.Mutex
	closed     atomic.Bool
	written    atomic.Int64  // bytes written by clients since open
	applied    atomic.Uint64 // last record logged and acknowledgeable (shipping stops there)
	// asyncApply volumes (fresh CDP volumes) acknowledge a write once it
	// is logged; the applier writes it to data.img in order, and reads of
	// blocks not applied yet are served from the log.
	asyncApply  bool
	dataApplied atomic.Uint64 // last record whose effect is in data.img
	// lazy (asyncApply volumes) holds the blocks whose newest content
	// data.img does not have: large writes stay in the log (base.img once
	// folded) instead of being written a second time.
	lazy      *bitmap
	applyKick chan struct{}
	applyMu   sync.Mutex // one applier at a time

	remote   Remote
	shipMu   sync.Mutex
	shipped  uint64
	shipCh   chan struct{} // closed and replaced when shipped advances
	shipErr  string
	degraded bool
	kick     chan struct{}
	lagHist  *lagRecorder
	// bulkActive is set while a backlog ships with the bulk transfer.
	bulkActive    atomic.Bool
	bulkTransfers atomic.Int64
	bulkBytes     atomic.Int64

	// Replicas: arrived is closed and replaced when records are appended;
	// syncedSeq is the last record fsynced (under syncMu).
	arrived   chan struct{}
	syncMu    sync.Mutex
	syncedSeq uint64

	filled atomic.Int64
	bctx   context.Context // ends when the volume closes
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

var (
	// ErrNotFound reports an unknown volume, mark or point.
	ErrNotFound = errors.New("not found")
	// ErrExists reports a volume name already in use.
	ErrExists = errors.New("already exists")
	// ErrInvalid reports a bad argument.
	ErrInvalid = errors.New("invalid argument")
	// ErrFolded reports a point in time older than the retention window.
	ErrFolded = errors.New("point in time folded into the base image (older than the retention window)")
)

func (v *Volume) path(name string) string { return filepath.Join(v.dir, name) }

func saveMeta(dir string, meta volumeMeta) error {
	b, err := json.MarshalIndent(meta, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding volume meta: %w", err)
	}
	return writeFileAtomic(filepath.Join(dir, "meta.json"), b)
}

func (v *Volume) saveMeta() error {
	v.metaMu.Lock()
	defer v.metaMu.Unlock()
	return saveMeta(v.dir, v.meta)
}

func (v *Volume) getMeta() volumeMeta {
	v.metaMu.Lock()
	defer v.metaMu.Unlock()
	return v.meta
}

// openVolume opens the volume in dir, replays its log into the image and
// starts its background work (shipping, filling, checkpoints, folding).
func openVolume(ctx context.Context, m *Manager, dir string) (*Volume, error) {
	b, err := os.ReadFile(filepath.Join(dir, "meta.json"))
	if err != nil {
		return nil, fmt.Errorf("reading volume meta: %w", err)
	}
	var meta volumeMeta
	if err := json.Unmarshal(b, &meta); err != nil {
		return nil, fmt.Errorf("decoding volume meta %s: %w", dir, err)
	}
	if meta.Size <= 0 || meta.Size%bs != 0 {
		return nil, fmt.Errorf("volume %s: bad size %d: %w", dir, meta.Size, ErrInvalid)
	}
	v := &Volume{
		m: m, dir: dir, logger: m.logger.With("volume", meta.Name), meta: meta,
		size: meta.Size, blocks: uint64(meta.Size / bs),
		allPresent: meta.Parent == nil && meta.RestoredFrom == nil,
		asyncApply: meta.Parent == nil && meta.RestoredFrom == nil && !meta.NoCDP && !meta.Replica,
		shipCh:     make(chan struct{}), kick: make(chan struct{}, 1), applyKick: make(chan struct{}, 1),
		arrived: make(chan struct{}),
		lagHist: newLagRecorder(),
	}
	v.present = newBitmap(v.blocks)
	v.baseBits = newBitmap(v.blocks)
	if err := v.open(); err != nil {
		v.closeFiles()
		return nil, err
	}
	bctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	v.cancel = cancel
	v.bctx = bctx
	v.start(bctx)
	return v, nil
}

func (v *Volume) open() error {
	var err error
	v.log, err = cdplog.Open(v.path("log"), v.meta.FoldSeq+1, cdplog.Options{SegmentBytes: v.m.cfg.SegmentBytes}, v.logger)
	if err != nil {
		return fmt.Errorf("opening CDP log of %s: %w", v.meta.Name, err)
	}
	if b, err := os.ReadFile(v.path("shipped")); err == nil {
		v.shipped, _ = strconv.ParseUint(string(b), 10, 64)
	}
	if v.base, err = os.OpenFile(v.path("base.img"), os.O_RDWR|os.O_CREATE, 0o600); err != nil {
		return fmt.Errorf("opening base image: %w", err)
	}
	if err := v.base.Truncate(v.size); err != nil {
		return fmt.Errorf("sizing base image: %w", err)
	}
	if err := v.baseBits.load(v.path("base.bits")); err != nil {
		return err
	}
	if v.meta.Replica {
		v.filled.Store(int64(v.blocks))
		return nil
	}
	if v.data, err = os.OpenFile(v.path("data.img"), os.O_RDWR|os.O_CREATE, 0o600); err != nil {
		return fmt.Errorf("opening volume image: %w", err)
	}
	if err := v.data.Truncate(v.size); err != nil {
		return fmt.Errorf("sizing volume image: %w", err)
	}
	if !v.allPresent {
		if err := v.present.load(v.path("present.bits")); err != nil {
			return err
		}
	}
	if v.asyncApply {
		v.lazy = newBitmap(v.blocks)
		if err := v.lazy.load(v.path("lazy.bits")); err != nil {
			return err
		}
	}
	return v.replay()
}

// replay applies the log records after the last checkpoint to data.img
// (they may not have reached it before a crash) and marks every block the
// log holds as present.
func (v *Volume) replay() error {
	applied := uint64(0)
	if b, err := os.ReadFile(v.path("applied")); err == nil {
		applied, _ = strconv.ParseUint(string(b), 10, 64)
	}
	from := v.log.FirstSeq()
	var blocks []uint64
	v.log.Metas(from, func(m cdplog.Meta) bool {
		if (m.Kind == cdplog.KindWrite || m.Kind == cdplog.KindZero) && !v.allPresent {
			for b := m.Offset / bs; b < (m.Offset+m.Length)/bs; b++ {
				blocks = append(blocks, b)
			}
		}
		return true
	})
	for _, b := range blocks {
		v.present.set(b)
	}
	start := max(from, applied+1)
	v.dataApplied.Store(start - 1)
	v.applied.Store(v.log.NextSeq() - 1)
	n, err := v.applyPending()
	if err != nil {
		if !v.asyncApply {
			return fmt.Errorf("replaying log: %w", err)
		}
		// Reads of what is not applied are served from the log; the
		// applier retries.
		v.logger.Warn("replaying the log into the image stopped; reading through the log", "applied", v.dataApplied.Load(), "err", err)
	}
	if n > 0 {
		v.logger.Info("replayed CDP log into the volume", "records", n, "from", start)
		if err := v.checkpoint(); err != nil {
			// Not fatal: the log still holds everything (e.g. a full disk).
			v.logger.Warn("checkpoint after replay failed", "err", err)
		}
	}
	return nil
}

// applyPending applies the logged records after dataApplied to data.img, in
// order, and returns how many it applied. Writes of at least LazyApplyBytes
// are not copied into data.img: their blocks are marked lazy (their newest
// content is in the log, or in base.img once folded), so their data is
// written once; runs of smaller writes are read back with one pread each.
func (v *Volume) applyPending() (int, error) {
	v.applyMu.Lock()
	defer v.applyMu.Unlock()
	return v.applyPendingLocked()
}

// applyPendingLocked is applyPending with applyMu held.
func (v *Volume) applyPendingLocked() (int, error) {
	n := 0
	var metas []cdplog.Meta
	for {
		from, to := v.dataApplied.Load()+1, v.applied.Load()
		if from > to {
			return n, nil
		}
		metas = metas[:0]
		v.log.Metas(from, func(m cdplog.Meta) bool {
			if m.Seq > to || len(metas) == 1024 {
				return false
			}
			metas = append(metas, m)
			return true
		})
		if len(metas) == 0 {
			return n, fmt.Errorf("records %d..%d are not in the log", from, to)
		}
		for i := 0; i < len(metas); {
			m := metas[i]
			if m.Kind != cdplog.KindWrite || v.isLazy(m.Length) {
				if err := v.applyMeta(m); err != nil {
					return n, fmt.Errorf("applying record %d: %w", m.Seq, err)
				}
				v.dataApplied.Store(m.Seq)
				i++
				n++
				continue
			}
			j, bytes := i, uint64(0)
			for j < len(metas) && metas[j].Kind == cdplog.KindWrite && !v.isLazy(metas[j].Length) && bytes < 8<<20 {
				bytes += metas[j].Length
				j++
			}
			recs, err := v.log.Records(m.Seq, metas[j-1].Seq, 8<<20+cdplog.HeaderSize*(j-i))
			if err != nil {
				return n, err
			}
			for _, r := range recs {
				if err := v.applyData(r); err != nil {
					return n, fmt.Errorf("applying record %d: %w", r.Seq, err)
				}
				v.dataApplied.Store(r.Seq)
				n++
			}
			i += len(recs)
		}
	}
}

// inlineApply says whether the records of this volume are applied as they
// are logged: when every write stays in the log, applying one only marks
// its blocks (or punches a hole), cheaper than waking the applier.
func (v *Volume) inlineApply() bool {
	return v.lazy != nil && v.m.cfg.LazyApplyBytes > 0 && v.m.cfg.LazyApplyBytes <= bs
}

// applyNow applies what was just logged at once (inlineApply), else
// wakes the applier when enough is pending. The caller holds v.wmu, so
// records are applied in order.
func (v *Volume) applyNow() {
	if !v.inlineApply() {
		v.kickApply()
		return
	}
	if v.applyMu.TryLock() {
		_, err := v.applyPendingLocked()
		v.applyMu.Unlock()
		if err == nil {
			return
		}
	}
	// The applier runs (replay, close) or failed: it takes over.
	select {
	case v.applyKick <- struct{}{}:
	default:
	}
}

// isLazy says whether a write of n bytes stays in the log only.
func (v *Volume) isLazy(n uint64) bool {
	return v.lazy != nil && v.m.cfg.LazyApplyBytes > 0 && n >= uint64(v.m.cfg.LazyApplyBytes)
}

// applyMeta applies a record that needs no data from the log: a lazy
// write (its blocks are marked), a zero (a hole is punched), or a point.
func (v *Volume) applyMeta(m cdplog.Meta) error {
	switch m.Kind {
	case cdplog.KindWrite:
		for b := m.Offset / bs; b < (m.Offset+m.Length)/bs; b++ {
			v.lazy.set(b)
		}
	case cdplog.KindZero:
		if err := zeroFile(v.data, int64(m.Offset), int64(m.Length)); err != nil {
			return err
		}
		v.clearLazy(m.Offset, m.Length)
	}
	return nil
}

// clearLazy records that data.img holds the newest content of a range.
func (v *Volume) clearLazy(off, n uint64) {
	if v.lazy == nil || v.lazy.count.Load() == 0 {
		return
	}
	for b := off / bs; b < (off+n)/bs; b++ {
		v.lazy.clear(b)
	}
}

// applyBatch is how many logged records wake the applier at once; fewer
// are applied on its next tick. Waking it per write costs a context switch
// on the write path.
const (
	applyBatch = 64
	applyTick  = 2 * time.Millisecond
)

func (v *Volume) applyLoop(ctx context.Context) {
	tick := time.NewTicker(applyTick)
	defer tick.Stop()
	if v.inlineApply() {
		tick.Stop() // writes apply themselves; the applier takes over on a kick
	}
	failing := false
	for {
		if !failing { // a failed apply is retried without waiting for a kick
			select {
			case <-ctx.Done():
				return
			case <-v.applyKick:
			case <-tick.C:
			}
		}
		if ctx.Err() != nil {
			return
		}
		if _, err := v.applyPending(); err != nil {
			if !failing {
				v.logger.Error("applying the log to the volume image failed; reads go through the log", "err", err)
			}
			failing = true
			sleepCtx(ctx, 200*time.Millisecond)
			continue
		}
		if failing {
			v.logger.Info("applying the log to the volume image works again")
			failing = false
		}
	}
}

// applyData writes a record's effect to data.img.
func (v *Volume) applyData(r cdplog.Record) error {
	switch r.Kind {
	case cdplog.KindWrite:
		if _, err := v.data.WriteAt(r.Data, int64(r.Offset)); err != nil {
			return fmt.Errorf("writing volume image: %w", err)
		}
		v.clearLazy(r.Offset, r.Length)
	case cdplog.KindZero:
		return zeroFile(v.data, int64(r.Offset), int64(r.Length))
	}
	return nil
}

// zeroFile punches a hole (falling back to writing zeros).
func zeroFile(f *os.File, off, n int64) error {
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n); err == nil {
		return nil
	}
	zeros := make([]byte, min(n, 1<<20))
	for n > 0 {
		c := min(n, int64(len(zeros)))
		if _, err := f.WriteAt(zeros[:c], off); err != nil {
			return fmt.Errorf("zeroing image: %w", err)
		}
		off += c
		n -= c
	}
	return nil
}

// checkpoint makes data.img durable up to the log's last record and
// records that, so replay can start after it.
func (v *Volume) checkpoint() error {
	if v.data == nil {
		return nil
	}
	applied := v.dataApplied.Load()
	if err := v.data.Sync(); err != nil {
		return fmt.Errorf("syncing volume image: %w", err)
	}
	if !v.allPresent {
		if err := v.present.save(v.path("present.bits")); err != nil {
			return err
		}
	}
	if v.lazy != nil {
		// Bits of records after applied may be in it: replay applies
		// them again, in order, to the same result.
		if err := v.lazy.save(v.path("lazy.bits")); err != nil {
			return err
		}
	}
	if err := writeFileAtomic(v.path("applied"), []byte(strconv.FormatUint(applied, 10))); err != nil {
		return err
	}
	if v.meta.Remote != "" {
		v.shipMu.Lock()
		shipped := v.shipped
		v.shipMu.Unlock()
		return writeFileAtomic(v.path("shipped"), []byte(strconv.FormatUint(shipped, 10)))
	}
	return nil
}

// Size is the volume size in bytes.
func (v *Volume) Size() int64 { return v.size }

// Extents reports holes for NBD BLOCK_STATUS: the holes of the image
// (never written, or zeroed) when the image is complete and up to date with
// the log; otherwise nil (everything is reported as data).
func (v *Volume) Extents(ctx context.Context, off int64, length uint32) ([]nbd.Extent, error) {
	if err := v.check(off, int64(length)); err != nil {
		return nil, err
	}
	if v.data == nil || !v.allPresent || (v.asyncApply && v.dataApplied.Load() < v.applied.Load()) {
		return nil, nil
	}
	fd := int(v.data.Fd())
	end := off + int64(length)
	var out []nbd.Extent
	add := func(n int64, hole bool) { out = addExtent(out, n, hole) }
	for pos := off; pos < end; {
		d, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		if errors.Is(err, syscall.ENXIO) {
			add(end-pos, true)
			break
		}
		if err != nil {
			return nil, nil // no SEEK_DATA here: report data
		}
		if d > pos {
			n := min(d, end) - pos
			add(n, true)
			pos += n
			continue
		}
		h, err := unix.Seek(fd, pos, unix.SEEK_HOLE)
		if err != nil {
			return nil, nil
		}
		n := min(h, end) - pos
		if n <= 0 {
			n = end - pos
		}
		add(n, false)
		pos += n
	}
	if v.lazy != nil && v.lazy.count.Load() > 0 {
		out = v.lazyExtents(out, off)
	}
	return out, nil
}

// addExtent appends n bytes of hole or data to out, merging with the last
// extent when it is of the same kind.
func addExtent(out []nbd.Extent, n int64, hole bool) []nbd.Extent {
	if k := len(out); k > 0 && out[k-1].Hole == hole {
		out[k-1].Length += uint32(n)
		return out
	}
	return append(out, nbd.Extent{Length: uint32(n), Hole: hole})
}

// lazyExtents turns the parts of data.img's holes that hold lazy blocks
// (written, their data in the log) into data.
func (v *Volume) lazyExtents(in []nbd.Extent, off int64) []nbd.Extent {
	var out []nbd.Extent
	add := func(n int64, hole bool) { out = addExtent(out, n, hole) }
	pos := off
	for _, e := range in {
		end := pos + int64(e.Length)
		if !e.Hole {
			add(int64(e.Length), false)
			pos = end
			continue
		}
		for pos < end {
			// The extent edges of a hole are block-aligned except at the
			// ends of the request.
			blkEnd := min((pos/bs+1)*bs, end)
			add(blkEnd-pos, !v.lazy.get(uint64(pos/bs)))
			pos = blkEnd
		}
	}
	return out
}

// InlineWrites tells the NBD server that writes without FUA can run in
// the connection's reader: they only append to the log and the image (not
// in sync mode, where a write waits for the remote).
func (v *Volume) InlineWrites() bool { return v.meta.Mode != ModeSync }

// Name is the volume name.
func (v *Volume) Name() string { return v.meta.Name }

func (v *Volume) check(off, n int64) error {
	if v.closed.Load() {
		return fmt.Errorf("volume %s is closed: %w", v.meta.Name, syscall.ESHUTDOWN)
	}
	if off < 0 || n < 0 || off+n > v.size || off+n < off {
		return fmt.Errorf("range %d+%d outside volume of %d bytes: %w", off, n, v.size, syscall.EINVAL)
	}
	return nil
}

// ReadAt reads the current content: the volume image, and for blocks a
// restored volume does not hold yet, its base, then its source (the source
// volume's local CDP log, or the remote CDP log), caching what it fetched.
func (v *Volume) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := v.check(off, int64(len(p))); err != nil {
		return err
	}
	if v.data == nil {
		return v.readAtSeq(ctx, p, off, v.log.NextSeq()-1)
	}
	if v.allPresent {
		if !v.asyncApply || (v.dataApplied.Load() >= v.applied.Load() && v.lazy.count.Load() == 0) {
			if _, err := v.data.ReadAt(p, off); err != nil {
				return fmt.Errorf("reading volume image: %w", err)
			}
			return nil
		}
		return v.readLive(p, off)
	}
	return v.eachBlock(p, off, func(blk uint64, bp []byte) error {
		if v.present.get(blk) {
			_, err := v.data.ReadAt(bp, int64(blk*bs))
			return err
		}
		return v.readBase(ctx, blk, 1, bp)
	})
}

// eachBlock calls fn for every block overlapping [off, off+len(p)) with a
// block buffer and copies the wanted part into p.
func (v *Volume) eachBlock(p []byte, off int64, fn func(blk uint64, bp []byte) error) error {
	var tmp [bs]byte
	for done := 0; done < len(p); {
		pos := off + int64(done)
		blk := uint64(pos / bs)
		in := int(pos % bs)
		n := min(bs-in, len(p)-done)
		dst := p[done : done+n]
		if in == 0 && n == bs {
			if err := fn(blk, dst); err != nil {
				return fmt.Errorf("reading block %d: %w", blk, err)
			}
		} else {
			if err := fn(blk, tmp[:]); err != nil {
				return fmt.Errorf("reading block %d: %w", blk, err)
			}
			copy(dst, tmp[in:in+n])
		}
		done += n
	}
	return nil
}

// readBase reads n blocks from blk as of the base: base.img where it holds
// them, else the parent (cached into base.img), else zeros.
func (v *Volume) readBase(ctx context.Context, blk uint64, n int, p []byte) error {
	allBase := true
	for i := range n {
		if !v.baseBits.get(blk + uint64(i)) {
			allBase = false
			break
		}
	}
	if allBase {
		_, err := v.base.ReadAt(p[:n*bs], int64(blk*bs))
		return err
	}
	parent := v.getMeta().Parent
	if parent == nil {
		// Blocks never written and not restored read as zeros, except those
		// already in base.img.
		for i := range n {
			bp := p[i*bs : (i+1)*bs]
			if v.baseBits.get(blk + uint64(i)) {
				if _, err := v.base.ReadAt(bp, int64((blk+uint64(i))*bs)); err != nil {
					return err
				}
			} else {
				clear(bp)
			}
		}
		return nil
	}
	if err := v.m.readParent(ctx, parent, p[:n*bs], int64(blk*bs)); err != nil {
		return fmt.Errorf("reading source %s@%d: %w", parent.Volume, parent.Seq, err)
	}
	v.baseMu.Lock()
	defer v.baseMu.Unlock()
	for i := range n {
		b := blk + uint64(i)
		bp := p[i*bs : (i+1)*bs]
		if v.baseBits.get(b) {
			// Filled or folded meanwhile: base.img is authoritative.
			if _, err := v.base.ReadAt(bp, int64(b*bs)); err != nil {
				return err
			}
			continue
		}
		if _, err := v.base.WriteAt(bp, int64(b*bs)); err != nil {
			return fmt.Errorf("caching fetched block: %w", err)
		}
		v.baseBits.set(b)
	}
	return nil
}

// readAtSeq reads the content as of sequence number seq: the newest log
// record of each block at or before seq, else the base.
func (v *Volume) readAtSeq(ctx context.Context, p []byte, off int64, seq uint64) error {
	if err := v.check(off, int64(len(p))); err != nil {
		return err
	}
	if fold := v.getMeta().FoldSeq; seq < fold {
		return fmt.Errorf("volume %s at %d (folded up to %d): %w", v.meta.Name, seq, fold, ErrFolded)
	}
	if seq >= v.log.NextSeq() {
		return fmt.Errorf("volume %s has no sequence number %d yet: %w", v.meta.Name, seq, ErrNotFound)
	}
	return v.eachBlock(p, off, func(blk uint64, bp []byte) error {
		ok, err := v.log.ReadBlock(blk, seq, bp)
		if err != nil || ok {
			return err
		}
		return v.readBase(ctx, blk, 1, bp)
	})
}

// WriteAt appends the write to the CDP log, applies it to the volume and,
// in sync mode, waits until the remote log has it.
func (v *Volume) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := v.writable(off, int64(len(p))); err != nil {
		return err
	}
	v.wmu.Lock()
	seq, err := v.writeLocked(ctx, p, off)
	v.wmu.Unlock()
	if err != nil {
		return err
	}
	v.written.Add(int64(len(p)))
	return v.afterWrite(ctx, seq, fua)
}

func (v *Volume) writable(off, n int64) error {
	if v.data == nil {
		return fmt.Errorf("volume %s is a replica: %w", v.meta.Name, syscall.EROFS)
	}
	return v.check(off, n)
}

// writeLocked logs and applies one write; v.wmu is held.
func (v *Volume) writeLocked(ctx context.Context, p []byte, off int64) (uint64, error) {
	a := off &^ (bs - 1)
	e := (off + int64(len(p)) + bs - 1) &^ (bs - 1)
	buf := p
	if v.meta.NoCDP {
		if _, err := v.data.WriteAt(p, off); err != nil {
			return 0, fmt.Errorf("writing at %d: %w", off, err)
		}
		return 0, nil
	}
	if a != off || e != off+int64(len(p)) {
		// Read-modify-write of the partial edge blocks: the log holds
		// whole blocks.
		buf = make([]byte, e-a)
		if err := v.readCurrentBlock(ctx, buf[:bs], a); err != nil {
			return 0, err
		}
		if e-bs != a {
			if err := v.readCurrentBlock(ctx, buf[len(buf)-bs:], e-bs); err != nil {
				return 0, err
			}
		}
		copy(buf[off-a:], p)
	}
	if len(buf) == 0 {
		return 0, nil // a zero-length write changes nothing
	}
	recs := appendWriteRecords(nil, a, buf)
	if err := v.log.AppendBatch(recs); err != nil {
		return 0, fmt.Errorf("logging write at %d: %w", off, err)
	}
	seq := recs[len(recs)-1].Seq
	if v.asyncApply {
		v.applied.Store(seq)
		v.applyNow()
		return seq, nil
	}
	if _, err := v.data.WriteAt(buf, a); err != nil {
		for i := len(recs) - 1; i >= 0; i-- {
			if uerr := v.log.Unappend(recs[i].Seq); uerr != nil {
				v.logger.Error("removing unapplied write from the log", "seq", recs[i].Seq, "err", uerr)
			}
		}
		return 0, fmt.Errorf("applying write at %d: %w", off, err)
	}
	v.markPresent(uint64(a), uint64(e-a))
	v.applied.Store(seq)
	v.dataApplied.Store(seq)
	return seq, nil
}

// maxWriteRecord bounds the data of one write record: a larger client
// write (NBD allows 32 MiB) is logged as several records, appended at once,
// so that every record fits one shipment to the remote (wire frames are
// bounded, 16 MiB by default).
const maxWriteRecord = 4 << 20

// appendWriteRecords appends the records logging data written at off (one
// per maxWriteRecord bytes) to recs.
func appendWriteRecords(recs []cdplog.Record, off int64, data []byte) []cdplog.Record {
	for len(data) > 0 {
		n := min(len(data), maxWriteRecord)
		recs = append(recs, cdplog.Record{Kind: cdplog.KindWrite, Offset: uint64(off), Length: uint64(n), Data: data[:n]})
		off += int64(n)
		data = data[n:]
	}
	return recs
}

// WriteBatch logs several pipelined writes with one append (NBD batches
// the writes it has already received). Unaligned writes, restored volumes
// and volumes without CDP take the one-by-one path.
func (v *Volume) WriteBatch(ctx context.Context, reqs []nbd.WriteRequest) []error {
	errs := make([]error, len(reqs))
	aligned := v.asyncApply
	var total int64
	for _, r := range reqs {
		if r.Off%bs != 0 || len(r.Data)%bs != 0 || len(r.Data) == 0 {
			aligned = false
		}
		total += int64(len(r.Data))
	}
	if !aligned || len(reqs) == 1 {
		for i, r := range reqs {
			errs[i] = v.WriteAt(ctx, r.Data, r.Off, false)
		}
		return errs
	}
	for _, r := range reqs {
		if err := v.writable(r.Off, int64(len(r.Data))); err != nil {
			for i := range errs {
				errs[i] = err
			}
			return errs
		}
	}
	recs := make([]cdplog.Record, 0, len(reqs))
	for _, r := range reqs {
		recs = appendWriteRecords(recs, r.Off, r.Data)
	}
	v.wmu.Lock()
	err := v.log.AppendBatch(recs)
	if err == nil {
		v.applied.Store(recs[len(recs)-1].Seq)
		v.applyNow()
	}
	v.wmu.Unlock()
	if err != nil {
		err = fmt.Errorf("logging %d writes: %w", len(reqs), err)
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	v.written.Add(total)
	if err := v.afterWrite(ctx, recs[len(recs)-1].Seq, false); err != nil {
		for i := range errs {
			errs[i] = err
		}
	}
	return errs
}

// liveSource is where a block of an asyncApply volume is read: a file
// (the log, data.img or base.img) at pos, or zeros.
type liveSource struct {
	f    *os.File
	pos  int64
	zero bool
}

func (v *Volume) locateLive(blk uint64) liveSource {
	d := v.dataApplied.Load()
	lazy := v.lazy.get(blk)
	if seq, f, pos, zero := v.log.Locate(blk, ^uint64(0)); seq > d || (lazy && seq > 0) {
		return liveSource{f: f, pos: pos, zero: zero}
	}
	if lazy && v.lazy.get(blk) {
		return liveSource{f: v.base, pos: int64(blk * bs)} // folded
	}
	return liveSource{f: v.data, pos: int64(blk * bs)}
}

// readLive reads an asyncApply volume: each block from where its newest
// content is (locateLive), with one pread per run of blocks that lie one
// after the other in the same file.
func (v *Volume) readLive(p []byte, off int64) error {
	if off%bs != 0 || len(p)%bs != 0 {
		return v.eachBlock(p, off, func(blk uint64, bp []byte) error { return v.readLiveBlock(blk, bp) })
	}
	first := uint64(off / bs)
	var run liveSource
	start, n := 0, 0
	flush := func() error {
		if n == 0 {
			return nil
		}
		dst := p[start : start+n]
		if run.zero {
			clear(dst)
			return nil
		}
		if _, err := run.f.ReadAt(dst, run.pos); err != nil {
			// A log segment folded meanwhile: read these blocks again.
			for i := 0; i < n; i += bs {
				if err := v.readLiveBlock(first+uint64((start+i)/bs), dst[i:i+bs]); err != nil {
					return fmt.Errorf("reading block %d: %w", first+uint64((start+i)/bs), err)
				}
			}
		}
		return nil
	}
	for i := 0; i < len(p); i += bs {
		src := v.locateLive(first + uint64(i/bs))
		if n > 0 && src.f == run.f && src.zero == run.zero && (src.zero || src.pos == run.pos+int64(n)) {
			n += bs
			continue
		}
		if err := flush(); err != nil {
			return err
		}
		run, start, n = src, i, bs
	}
	return flush()
}

// readLiveBlock reads a block of an asyncApply volume: from the log if its
// newest record is not applied to data.img yet or is a lazy write; from
// base.img for a lazy block whose record was folded; else from data.img.
func (v *Volume) readLiveBlock(blk uint64, p []byte) error {
	d := v.dataApplied.Load()
	lazy := v.lazy.get(blk)
	if seq := v.log.LatestSeq(blk, ^uint64(0)); seq > d || (lazy && seq > 0) {
		if ok, err := v.log.ReadBlock(blk, seq, p); ok || err != nil {
			return err
		}
	}
	f := v.data
	if lazy && v.lazy.get(blk) {
		f = v.base // the lazy write was folded into base.img
	}
	_, err := f.ReadAt(p, int64(blk*bs))
	return err
}

func (v *Volume) readCurrentBlock(ctx context.Context, p []byte, off int64) error {
	if v.asyncApply {
		return v.readLiveBlock(uint64(off/bs), p)
	}
	if v.allPresent || v.present.get(uint64(off/bs)) {
		_, err := v.data.ReadAt(p, off)
		return err
	}
	return v.readBase(ctx, uint64(off/bs), 1, p)
}

func (v *Volume) kickApply() {
	if v.applied.Load()-v.dataApplied.Load() < applyBatch {
		return
	}
	select {
	case v.applyKick <- struct{}{}:
	default:
	}
}

func (v *Volume) markPresent(off, n uint64) {
	if v.allPresent {
		return
	}
	for b := off / bs; b < (off+n)/bs; b++ {
		v.present.set(b)
	}
}

// Zero makes [off, off+n) read as zeros (NBD WRITE_ZEROES).
func (v *Volume) Zero(ctx context.Context, off, n int64, fua bool) error {
	if err := v.writable(off, n); err != nil {
		return err
	}
	a := (off + bs - 1) &^ (bs - 1)
	e := (off + n) &^ (bs - 1)
	v.wmu.Lock()
	var seq uint64
	var err error
	if v.meta.NoCDP {
		err = zeroFile(v.data, off, n)
	} else if a >= e {
		seq, err = v.writeLocked(ctx, make([]byte, n), off)
	} else {
		if off < a {
			_, err = v.writeLocked(ctx, make([]byte, a-off), off)
		}
		if err == nil {
			rec := cdplog.Record{Kind: cdplog.KindZero, Offset: uint64(a), Length: uint64(e - a)}
			seq, err = v.log.Append(&rec)
			if err == nil && v.asyncApply {
				v.applied.Store(seq)
				v.applyNow()
			} else if err == nil {
				if err = zeroFile(v.data, a, e-a); err != nil {
					v.log.Unappend(seq)
				} else {
					v.markPresent(uint64(a), uint64(e-a))
					v.applied.Store(seq)
					v.dataApplied.Store(seq)
				}
			}
		}
		if err == nil && e < off+n {
			seq, err = v.writeLocked(ctx, make([]byte, off+n-e), e)
		}
	}
	v.wmu.Unlock()
	if err != nil {
		return fmt.Errorf("zeroing %d+%d: %w", off, n, err)
	}
	v.written.Add(n)
	return v.afterWrite(ctx, seq, fua)
}

// Trim discards [off, off+n); holdfast zeroes it so that restores are exact.
func (v *Volume) Trim(ctx context.Context, off, n int64) error {
	return v.Zero(ctx, off, n, false)
}

// Flush records a FLUSH point and makes the log durable.
func (v *Volume) Flush(ctx context.Context) error {
	if v.data == nil {
		return nil
	}
	if v.meta.NoCDP {
		return v.data.Sync()
	}
	seq, err := v.appendPoint(cdplog.KindFlush, nil)
	if err != nil {
		return err
	}
	return v.afterWrite(ctx, seq, true)
}

func (v *Volume) appendPoint(kind cdplog.Kind, data []byte) (uint64, error) {
	if v.closed.Load() {
		return 0, fmt.Errorf("volume %s is closed: %w", v.meta.Name, syscall.ESHUTDOWN)
	}
	v.wmu.Lock()
	defer v.wmu.Unlock()
	rec := cdplog.Record{Kind: kind, Data: data}
	seq, err := v.log.Append(&rec)
	if err != nil {
		return 0, fmt.Errorf("logging %s: %w", kind, err)
	}
	v.applied.Store(seq)
	if v.asyncApply {
		v.applyNow()
	} else {
		v.dataApplied.Store(seq)
	}
	return seq, nil
}

func (v *Volume) afterWrite(ctx context.Context, seq uint64, durable bool) error {
	if v.meta.NoCDP {
		if durable {
			return v.data.Sync()
		}
		return nil
	}
	if durable {
		if err := v.log.Sync(); err != nil {
			return err
		}
	}
	if v.remote == nil {
		return nil
	}
	select {
	case v.kick <- struct{}{}:
	default:
	}
	if v.meta.Mode == ModeSync {
		return v.waitShipped(ctx, seq)
	}
	return nil
}

// waitShipped waits until the remote log holds seq. If that takes longer
// than SyncTimeout the volume degrades to async (the write stays in the
// local log and is shipped later) until the remote catches up.
func (v *Volume) waitShipped(ctx context.Context, seq uint64) error {
	timer := time.NewTimer(v.m.cfg.SyncTimeout)
	defer timer.Stop()
	for {
		v.shipMu.Lock()
		if v.shipped >= seq || v.degraded {
			v.shipMu.Unlock()
			return nil
		}
		ch := v.shipCh
		v.shipMu.Unlock()
		select {
		case <-ch:
		case <-timer.C:
			v.shipMu.Lock()
			if !v.degraded {
				v.degraded = true
				v.logger.Warn("remote CDP log not answering, sync volume degraded to async", "remote", v.meta.Remote, "seq", seq)
			}
			v.shipMu.Unlock()
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// start launches the background goroutines.
func (v *Volume) start(ctx context.Context) {
	if v.data != nil {
		v.wg.Add(1)
		go func() { defer v.wg.Done(); v.checkpointLoop(ctx) }()
	}
	if v.asyncApply {
		v.wg.Add(1)
		go func() { defer v.wg.Done(); v.applyLoop(ctx) }()
	}
	v.wg.Add(1)
	go func() { defer v.wg.Done(); v.foldLoop(ctx) }()
	if v.getMeta().Parent != nil {
		v.wg.Add(1)
		go func() { defer v.wg.Done(); v.fillLoop(ctx) }()
	} else {
		v.filled.Store(int64(v.blocks))
	}
}

func (v *Volume) checkpointLoop(ctx context.Context) {
	t := time.NewTicker(v.m.cfg.CheckpointInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := v.checkpoint(); err != nil {
				v.logger.Error("checkpoint failed", "err", err)
			}
		}
	}
}

func (v *Volume) foldLoop(ctx context.Context) {
	t := time.NewTicker(v.m.cfg.FoldInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := v.Fold(time.Now().Add(-v.m.cfg.Retention)); err != nil {
				v.logger.Error("folding the CDP log failed", "err", err)
			}
		}
	}
}

// Fold folds the log records older than before (whole segments, never
// records not yet shipped to the remote) into base.img. It returns the
// last sequence number folded.
func (v *Volume) Fold(before time.Time) (uint64, error) {
	maxSeq := ^uint64(0)
	if v.remote != nil || (v.meta.Remote != "" && !v.meta.Replica) {
		v.shipMu.Lock()
		maxSeq = v.shipped
		v.shipMu.Unlock()
	}
	if v.getMeta().Parent != nil {
		return 0, nil // base.img is still being filled from the source
	}
	if v.asyncApply {
		maxSeq = min(maxSeq, v.dataApplied.Load())
	}
	apply := func(r cdplog.Record) error {
		v.baseMu.Lock()
		defer v.baseMu.Unlock()
		var err error
		if r.Kind == cdplog.KindWrite {
			_, err = v.base.WriteAt(r.Data, int64(r.Offset))
		} else {
			err = zeroFile(v.base, int64(r.Offset), int64(r.Length))
		}
		if err != nil {
			return fmt.Errorf("writing base image: %w", err)
		}
		for b := r.Offset / bs; b < (r.Offset+r.Length)/bs; b++ {
			v.baseBits.set(b)
		}
		return nil
	}
	commit := func(upTo uint64) error {
		if err := v.checkpoint(); err != nil {
			return err
		}
		if err := v.base.Sync(); err != nil {
			return fmt.Errorf("syncing base image: %w", err)
		}
		if err := v.baseBits.save(v.path("base.bits")); err != nil {
			return err
		}
		v.metaMu.Lock()
		v.meta.FoldSeq = upTo
		v.metaMu.Unlock()
		return v.saveMeta()
	}
	upTo, err := v.log.Fold(before, maxSeq, apply, commit)
	if err != nil {
		return 0, fmt.Errorf("folding log of %s: %w", v.meta.Name, err)
	}
	if upTo > 0 {
		v.logger.Info("folded CDP log into the base image", "up_to", upTo, "log_bytes", v.log.Bytes())
	}
	return upTo, nil
}

// fillChunkBlocks is how many blocks the background fill copies at once.
const fillChunkBlocks = 256

// fillLoop copies the source content of a restored volume into base.img
// so that it stops depending on the source.
func (v *Volume) fillLoop(ctx context.Context) {
	buf := make([]byte, fillChunkBlocks*bs)
	backoff := 100 * time.Millisecond
	for blk := uint64(0); blk < v.blocks; {
		if ctx.Err() != nil {
			return
		}
		n := int(min(uint64(fillChunkBlocks), v.blocks-blk))
		if err := v.readBase(ctx, blk, n, buf); err != nil {
			v.logger.Warn("filling restored volume", "block", blk, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		blk += uint64(n)
		v.filled.Store(int64(blk))
	}
	if err := v.base.Sync(); err != nil {
		v.logger.Error("syncing filled base", "err", err)
		return
	}
	if err := v.baseBits.save(v.path("base.bits")); err != nil {
		v.logger.Error("saving base bitmap", "err", err)
		return
	}
	v.metaMu.Lock()
	v.meta.Parent = nil
	v.metaMu.Unlock()
	if err := v.saveMeta(); err != nil {
		v.logger.Error("saving meta after fill", "err", err)
		return
	}
	v.logger.Info("restored volume filled; it no longer reads through to its source")
}

// Close stops background work, checkpoints and closes the files.
func (v *Volume) Close() error {
	if v.closed.Swap(true) {
		return nil
	}
	if v.cancel != nil {
		v.cancel()
	}
	v.wg.Wait()
	var errs []error
	if v.asyncApply {
		if _, err := v.applyPending(); err != nil {
			v.logger.Warn("applying the log at close; it is replayed at the next open", "err", err)
		}
	}
	if v.data != nil {
		if err := v.checkpoint(); err != nil {
			// Not fatal: the log holds everything; replay starts earlier.
			v.logger.Warn("checkpoint at close failed", "err", err)
		}
	}
	if v.base != nil {
		v.baseMu.Lock()
		errs = append(errs, v.base.Sync(), v.baseBits.save(v.path("base.bits")))
		v.baseMu.Unlock()
	}
	errs = append(errs, v.closeFiles())
	return errors.Join(errs...)
}

func (v *Volume) closeFiles() error {
	var errs []error
	if v.log != nil {
		errs = append(errs, v.log.Close())
	}
	if v.data != nil {
		errs = append(errs, v.data.Close())
	}
	if v.base != nil {
		errs = append(errs, v.base.Close())
	}
	return errors.Join(errs...)
}
