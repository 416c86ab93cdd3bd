package repo

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/holdfast/holdfast/internal/repo/backend"
)

// Index flushing: a backup writes an index file after this many packs or
// this much time, so that an interrupted backup leaves reusable data.
const (
	indexFlushPacks    = 16
	indexFlushInterval = 3 * time.Second
	uploadWorkers      = 2
)

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
}

func (r *Repository) newPackWriter(ctx context.Context) *packWriter {
	w := &packWriter{r: r, ctx: ctx, uploads: make(chan *packBuf, 1), lastFlush: time.Now()}
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
	if !w.r.idx.reserve(id) {
		return false, nil
	}
	fb := w.r.getFrameBuf()
	framed := w.r.frameInto(*fb, plain)
	err := w.addFramed(t, id, framed, len(plain))
	*fb = framed
	w.r.putFrameBuf(fb)
	return true, err
}

// packCap is the capacity of a new pack buffer of type t: a blob that
// fits in the remaining capacity is encrypted in place, so buffers never
// grow while blobs are being written into them.
func (w *packWriter) packCap(t BlobType, need int) int {
	c := w.r.cfg.PackSize
	if t == TreeBlob {
		c = min(c, 4<<20)
	}
	return max(c+w.r.cfg.Chunker.Max+Overhead+64, need)
}

// reserve claims room for a blob of need bytes in the current pack of
// type t and returns the pack, the offset, and whether the pack is now
// full (the caller then sends it once its own write is done).
func (w *packWriter) reserve(t BlobType, id ID, need, rawLen int) (p *packBuf, off int, full bool, old *packBuf) {
	w.mu.Lock()
	defer w.mu.Unlock()
	p = w.cur[t]
	if p != nil && cap(p.data)-len(p.data) < need {
		old = p // does not fit: close the current pack
		w.cur[t] = nil
		p = nil
	}
	if p == nil {
		p = w.r.getPackBuf(t, w.packCap(t, need))
		w.cur[t] = p
	}
	off = len(p.data)
	p.data = p.data[:off+need]
	p.blobs = append(p.blobs, PackedBlob{Type: t, ID: id, Offset: uint32(off), Length: uint32(need), RawLen: uint32(rawLen)})
	p.writers.Add(1)
	limit := w.r.cfg.PackSize
	if t == TreeBlob {
		limit = min(limit, 4<<20)
	}
	if len(p.data) >= limit {
		full = true
		w.cur[t] = nil
	}
	return p, off, full, old
}

// addFramed encrypts a framed blob straight into the current pack.
func (w *packWriter) addFramed(t BlobType, id ID, framed []byte, rawLen int) error {
	need := len(framed) + Overhead
	p, off, full, old := w.reserve(t, id, need, rawLen)
	w.r.crypt.seal(p.data[off:off:off+need], framed)
	p.writers.Done()
	if old != nil {
		old.writers.Wait()
		if err := w.send(old); err != nil {
			return err
		}
	}
	if full {
		p.writers.Wait()
		return w.send(p)
	}
	return nil
}

// addEncrypted appends an already encrypted blob to the current pack.
func (w *packWriter) addEncrypted(t BlobType, id ID, enc []byte, rawLen int) error {
	p, off, full, old := w.reserve(t, id, len(enc), rawLen)
	copy(p.data[off:], enc)
	p.writers.Done()
	if old != nil {
		old.writers.Wait()
		if err := w.send(old); err != nil {
			return err
		}
	}
	if full {
		p.writers.Wait()
		return w.send(p)
	}
	return nil
}

func (w *packWriter) send(p *packBuf) error {
	p.finish(w.r.crypt)
	select {
	case w.uploads <- p:
		return nil
	case <-w.ctx.Done():
		return w.ctx.Err()
	}
}

func (w *packWriter) uploader() {
	defer w.wg.Done()
	for p := range w.uploads {
		if w.getErr() != nil {
			continue
		}
		id := fileID(p.data)
		if err := w.r.be.Save(w.ctx, backend.Handle{Type: backend.PackFile, Name: id.String()}, p.data); err != nil {
			w.setErr(fmt.Errorf("saving pack: %w", err))
			continue
		}
		ip := IndexPack{ID: id, Size: int64(len(p.data)), Blobs: p.blobs}
		w.r.putPackBuf(p)
		w.r.idx.addPacks([]IndexPack{ip})
		w.statMu.Lock()
		w.packsStored++
		w.bytesStored += int64(len(p.data))
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
func (w *packWriter) flushIndex() error {
	w.imu.Lock()
	packs := w.unindexed
	w.unindexed = nil
	w.lastFlush = time.Now()
	w.imu.Unlock()
	if len(packs) == 0 {
		return nil
	}
	id, err := w.r.saveFile(w.ctx, backend.IndexFile, encodeIndex(packs))
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
		p.writers.Wait()
		if err := w.send(p); err != nil {
			sendErr = err
			break
		}
	}
	close(w.uploads)
	w.wg.Wait()
	if err := errors.Join(w.getErr(), sendErr); err != nil {
		return err
	}
	if w.noIndex {
		return nil
	}
	return w.flushIndex()
}

// abort stops the writer after a failure, without writing more index.
func (w *packWriter) abort() {
	w.setErr(errors.New("aborted"))
	close(w.uploads)
	w.wg.Wait()
}
