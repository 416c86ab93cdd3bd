package cdp

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
)

// bitsPerPage is the number of blocks one lazily allocated bitmap page
// covers (65536 blocks of 4 KiB = 256 MiB of volume).
const bitsPerPage = 1 << 16

type bitPage [bitsPerPage / 64]atomic.Uint64

// bitmap is a lazily allocated, concurrency-safe set of block numbers.
type bitmap struct {
	mu    sync.Mutex // serializes page allocation
	pages []atomic.Pointer[bitPage]
	count atomic.Int64
}

func newBitmap(blocks uint64) *bitmap {
	return &bitmap{pages: make([]atomic.Pointer[bitPage], (blocks+bitsPerPage-1)/bitsPerPage)}
}

func (b *bitmap) get(i uint64) bool {
	p := b.pages[i/bitsPerPage].Load()
	if p == nil {
		return false
	}
	j := i % bitsPerPage
	return p[j/64].Load()&(1<<(j%64)) != 0
}

func (b *bitmap) set(i uint64) {
	pi := i / bitsPerPage
	p := b.pages[pi].Load()
	if p == nil {
		b.mu.Lock()
		if p = b.pages[pi].Load(); p == nil {
			p = new(bitPage)
			b.pages[pi].Store(p)
		}
		b.mu.Unlock()
	}
	j := i % bitsPerPage
	if old := p[j/64].Or(1 << (j % 64)); old&(1<<(j%64)) == 0 {
		b.count.Add(1)
	}
}

func (b *bitmap) clear(i uint64) {
	p := b.pages[i/bitsPerPage].Load()
	if p == nil {
		return
	}
	j := i % bitsPerPage
	if old := p[j/64].And(^uint64(1 << (j % 64))); old&(1<<(j%64)) != 0 {
		b.count.Add(-1)
	}
}

// save writes the bitmap to path atomically (sparse: page index + words).
func (b *bitmap) save(path string) error {
	var out []byte
	for pi := range b.pages {
		p := b.pages[pi].Load()
		if p == nil {
			continue
		}
		out = binary.LittleEndian.AppendUint32(out, uint32(pi))
		for w := range p {
			out = binary.LittleEndian.AppendUint64(out, p[w].Load())
		}
	}
	return writeFileAtomic(path, out)
}

// load reads a bitmap written by save; a missing file is an empty bitmap.
func (b *bitmap) load(path string) error {
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading bitmap %s: %w", path, err)
	}
	const rec = 4 + bitsPerPage/8
	if len(data)%rec != 0 {
		return fmt.Errorf("bitmap %s has %d bytes, not a multiple of %d", path, len(data), rec)
	}
	for ; len(data) > 0; data = data[rec:] {
		pi := uint64(binary.LittleEndian.Uint32(data))
		if pi >= uint64(len(b.pages)) {
			return fmt.Errorf("bitmap %s: page %d beyond the volume", path, pi)
		}
		for w := uint64(0); w < bitsPerPage/64; w++ {
			word := binary.LittleEndian.Uint64(data[4+8*w:])
			for bit := uint64(0); bit < 64; bit++ {
				if word&(1<<bit) != 0 {
					b.set(pi*bitsPerPage + w*64 + bit)
				}
			}
		}
	}
	return nil
}

// writeFileAtomic writes data to path through a synced temporary file and
// a rename.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("syncing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("renaming %s: %w", path, err)
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("syncing directory of %s: %w", path, err)
	}
	defer d.Close()
	return d.Sync()
}
