package repo

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/holdfast/holdfast/internal/repo/backend"
	"github.com/zeebo/blake3"
)

// Index flushing: a backup writes an index file after this many packs or
// this much time, so that an interrupted backup leaves reusable data.
const (
	indexFlushPacks    = 16
	indexFlushInterval = 3 * time.Second
	uploadWorkers      = 2
)

// packBuf is a pack being assembled in a temporary file. Blobs reserve
// their place under the writer's lock and are written concurrently.
type packBuf struct {
	typ     BlobType
	f       *os.File
	size    int64 // bytes reserved so far
	blobs   []PackedBlob
	writers sync.WaitGroup // blobs being written
	mu      sync.Mutex
	err     error
}

func (p *packBuf) setErr(err error) {
	p.mu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.mu.Unlock()
}

func (p *packBuf) getErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// discard closes and removes the temporary file.
func (p *packBuf) discard() {
	p.f.Close()
	os.Remove(p.f.Name())
}

// packWriter collects encrypted blobs into packs, uploads finished packs in
// the background and writes index files for them.
type packWriter struct {
	r       *Repository
	ctx     context.Context
	mu      sync.Mutex
	cur     [2]*packBuf
	uploads chan *packBuf
	wg      sync.WaitGroup

	imu       sync.Mutex
	unindexed []IndexPack
	lastFlush time.Time

	errMu sync.Mutex
	err   error

	// noIndex collects the written packs in written instead of writing
	// index files (prune writes its own index).
	noIndex bool
	written []IndexPack

	statMu      sync.Mutex
	packsStored int
	bytesStored int64

	// groups holds, per blob type, the small blobs waiting to be
	// compressed together (format 2, see pack.go).
	gmu    sync.Mutex
	groups [2]*pendingGroup
}

// pendingGroup is a group being filled: its members (GroupOff and RawLen
// set) and their concatenated plaintexts.
type pendingGroup struct {
	blobs []PackedBlob
	buf   *[]byte
}

func (r *Repository) newPackWriter(ctx context.Context) *packWriter {
	w := &packWriter{r: r, ctx: ctx, uploads: make(chan *packBuf, uploadWorkers), lastFlush: time.Now()}
	for i := 0; i < uploadWorkers; i++ {
		w.wg.Add(1)
		go w.uploader()
	}
	return w
}

func (w *packWriter) setErr(err error) {
	w.errMu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.errMu.Unlock()
}

func (w *packWriter) getErr() error {
	w.errMu.Lock()
	defer w.errMu.Unlock()
	return w.err
}

// saveBlob stores plain as a blob of type t unless it is already stored or
// being stored. It reports whether this call stored it.
func (w *packWriter) saveBlob(t BlobType, id ID, plain []byte) (bool, error) {
	if err := w.getErr(); err != nil {
		return false, err
	}
	if len(plain) > MaxBlobSize {
		return false, fmt.Errorf("blob of %d bytes above limit", len(plain))
	}
	if !w.r.idx.reserve(id, w) {
		return false, nil
	}
	bp, enc := w.r.sealBlob(plain)
	err := w.addEncrypted(t, id, enc, len(plain))
	putBuf(bp)
	return true, err
}

// addToGroup adds a small blob (already reserved in the index) to the
// pending group of its type; the call that fills the group seals it and
// adds it to a pack.
func (w *packWriter) addToGroup(t BlobType, id ID, plain []byte) error {
	if err := w.getErr(); err != nil {
		return err
	}
	w.gmu.Lock()
	g := w.groups[t]
	if g == nil {
		g = &pendingGroup{buf: getBuf(groupTarget + groupBlobMax)}
		w.groups[t] = g
	}
	g.blobs = append(g.blobs, PackedBlob{Type: t, Grouped: true, ID: id, RawLen: uint32(len(plain)), GroupOff: uint32(len(*g.buf))})
	*g.buf = append(*g.buf, plain...)
	full := len(*g.buf) >= groupTarget
	if full {
		w.groups[t] = nil
	}
	w.gmu.Unlock()
	if full {
		return w.sealGroup(t, g)
	}
	return nil
}

// sealGroup compresses and encrypts a group and adds it to a pack.
func (w *packWriter) sealGroup(t BlobType, g *pendingGroup) error {
	bp, enc := w.r.sealObject(*g.buf, false)
	err := w.addObject(t, g.blobs, enc)
	putBuf(bp)
	putBuf(g.buf)
	return err
}

// flushGroups seals the groups not yet full.
func (w *packWriter) flushGroups() error {
	w.gmu.Lock()
	gs := w.groups
	w.groups = [2]*pendingGroup{}
	w.gmu.Unlock()
	var errs []error
	for t, g := range gs {
		if g != nil {
			errs = append(errs, w.sealGroup(BlobType(t), g))
		}
	}
	return errors.Join(errs...)
}

// packLimit is the size at which a pack of type t is closed. Tree packs
// are kept smaller so that loading trees reads little.
func (w *packWriter) packLimit(t BlobType) int64 {
	if t == TreeBlob {
		return int64(min(w.r.cfg.PackSize, 4<<20))
	}
	return int64(w.r.cfg.PackSize)
}

// newPack starts a pack in a temporary file.
func (w *packWriter) newPack(t BlobType) (*packBuf, error) {
	var f *os.File
	var err error
	if fs, ok := w.r.be.(backend.FileSaver); ok {
		f, err = fs.TempFile()
	} else {
		f, err = os.CreateTemp("", "holdfast-pack-*")
	}
	if err != nil {
		return nil, fmt.Errorf("creating pack file: %w", err)
	}
	return &packBuf{typ: t, f: f}, nil
}

// reserve claims room for an object of need bytes in the current pack of
// type t, holding the blobs in entries (whose Offset and Length it sets),
// and returns the pack, the offset, and whether the pack is now full (the
// caller then sends it once its own write is done).
func (w *packWriter) reserve(t BlobType, entries []PackedBlob, need int) (p *packBuf, off int64, full bool, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	p = w.cur[t]
	if p == nil {
		if p, err = w.newPack(t); err != nil {
			return nil, 0, false, err
		}
		w.cur[t] = p
	}
	off = p.size
	p.size += int64(need)
	for _, e := range entries {
		e.Offset, e.Length = uint32(off), uint32(need)
		p.blobs = append(p.blobs, e)
	}
	p.writers.Add(1)
	if p.size >= w.packLimit(t) {
		full = true
		w.cur[t] = nil
	}
	return p, off, full, nil
}

// addEncrypted writes an encrypted blob into the current pack.
func (w *packWriter) addEncrypted(t BlobType, id ID, enc []byte, rawLen int) error {
	return w.addObject(t, []PackedBlob{{Type: t, ID: id, RawLen: uint32(rawLen)}}, enc)
}

// addObject writes an encrypted object, holding the blobs in entries
// (one blob, or a group's members), into the current pack of type t.
func (w *packWriter) addObject(t BlobType, entries []PackedBlob, enc []byte) error {
	p, off, full, err := w.reserve(t, entries, len(enc))
	if err != nil {
		return err
	}
	if _, err := p.f.WriteAt(enc, off); err != nil {
		p.setErr(fmt.Errorf("writing pack: %w", err))
	}
	p.writers.Done()
	if full {
		return w.send(p)
	}
	return nil
}

func (w *packWriter) send(p *packBuf) error {
	p.writers.Wait()
	select {
	case w.uploads <- p:
		return nil
	case <-w.ctx.Done():
		p.discard()
		return w.ctx.Err()
	}
}

// closePack appends the header and returns the pack's ID (the hash of
// the whole file) and size.
func (w *packWriter) closePack(p *packBuf) (ID, int64, error) {
	if err := p.getErr(); err != nil {
		return ID{}, 0, err
	}
	hdr := w.r.crypt.seal(nil, encodePackHeader(p.blobs))
	hdr = binary.LittleEndian.AppendUint32(hdr, uint32(len(hdr)))
	if _, err := p.f.WriteAt(hdr, p.size); err != nil {
		return ID{}, 0, fmt.Errorf("writing pack header: %w", err)
	}
	total := p.size + int64(len(hdr))
	h := blake3.New()
	buf := make([]byte, 256<<10)
	if _, err := io.CopyBuffer(h, io.NewSectionReader(p.f, 0, total), buf); err != nil {
		return ID{}, 0, fmt.Errorf("hashing pack: %w", err)
	}
	var id ID
	h.Sum(id[:0])
	return id, total, nil
}

// store moves a closed pack into the backend.
func (w *packWriter) store(p *packBuf, id ID, size int64) error {
	hd := backend.Handle{Type: backend.PackFile, Name: id.String()}
	if fs, ok := w.r.be.(backend.FileSaver); ok {
		return fs.SaveFile(w.ctx, hd, p.f)
	}
	defer p.discard()
	data := make([]byte, size)
	if _, err := p.f.ReadAt(data, 0); err != nil {
		return fmt.Errorf("reading pack back: %w", err)
	}
	return w.r.be.Save(w.ctx, hd, data)
}

func (w *packWriter) uploader() {
	defer w.wg.Done()
	for p := range w.uploads {
		if w.getErr() != nil {
			p.discard()
			continue
		}
		id, size, err := w.closePack(p)
		if err == nil {
			err = w.store(p, id, size)
		} else {
			p.discard()
		}
		if err != nil {
			w.setErr(fmt.Errorf("saving pack: %w", err))
			continue
		}
		ip := IndexPack{ID: id, Size: size, Blobs: p.blobs}
		w.r.idx.addPacks([]IndexPack{ip})
		w.statMu.Lock()
		w.packsStored++
		w.bytesStored += size
		w.statMu.Unlock()
		w.imu.Lock()
		if w.noIndex {
			w.written = append(w.written, ip)
			w.imu.Unlock()
			continue
		}
		w.unindexed = append(w.unindexed, ip)
		flush := len(w.unindexed) >= indexFlushPacks || time.Since(w.lastFlush) > indexFlushInterval
		w.imu.Unlock()
		if flush {
			if err := w.flushIndex(); err != nil {
				w.setErr(err)
			}
		}
	}
}

// flushIndex writes an index file for the packs uploaded so far.
func (w *packWriter) flushIndex() error { return w.flushIndexCtx(w.ctx) }

func (w *packWriter) flushIndexCtx(ctx context.Context) error {
	w.imu.Lock()
	packs := w.unindexed
	w.unindexed = nil
	w.lastFlush = time.Now()
	w.imu.Unlock()
	if len(packs) == 0 {
		return nil
	}
	id, err := w.r.saveFile(ctx, backend.IndexFile, encodeIndex(packs))
	if err != nil {
		return fmt.Errorf("saving index: %w", err)
	}
	w.r.idx.mu.Lock()
	w.r.idx.files[id] = struct{}{}
	w.r.idx.mu.Unlock()
	return nil
}

// finish closes the partial packs, waits for the uploads and writes the
// last index file. The writer cannot be used afterwards.
func (w *packWriter) finish() error {
	if err := w.flushGroups(); err != nil {
		w.setErr(err)
	}
	w.mu.Lock()
	var rest []*packBuf
	for t, p := range w.cur {
		if p != nil {
			rest = append(rest, p)
			w.cur[t] = nil
		}
	}
	w.mu.Unlock()
	var sendErr error
	for _, p := range rest {
		if sendErr != nil {
			p.writers.Wait()
			p.discard()
			continue
		}
		if err := w.send(p); err != nil {
			sendErr = err
		}
	}
	close(w.uploads)
	w.wg.Wait()
	if err := errors.Join(w.getErr(), sendErr); err != nil {
		w.r.idx.dropPending(w)
		return err
	}
	if w.noIndex {
		return nil
	}
	return w.flushIndex()
}

// abort stops the writer after a failure: packs not yet stored are
// discarded, the ones stored are indexed.
func (w *packWriter) abort() {
	w.setErr(errors.New("aborted"))
	w.gmu.Lock()
	for t, g := range w.groups {
		if g != nil {
			putBuf(g.buf)
			w.groups[t] = nil
		}
	}
	w.gmu.Unlock()
	w.mu.Lock()
	for t, p := range w.cur {
		if p != nil {
			p.writers.Wait()
			p.discard()
			w.cur[t] = nil
		}
	}
	w.mu.Unlock()
	close(w.uploads)
	w.wg.Wait()
	w.r.idx.dropPending(w)
	// Index what was stored, so that the next backup reuses it.
	if !w.noIndex {
		if err := w.flushIndexCtx(context.WithoutCancel(w.ctx)); err != nil {
			w.r.log.Warn("indexing the packs of an aborted backup", "err", err)
		}
	}
}
