package repo

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
)

// Index file format (plaintext, before compression and encryption):
//
//	"HFIX" version(1) uvarint(#packs)
//	per pack: id[32] uvarint(size) uvarint(#blobs)
//	  per blob: type(1) id[32] uvarint(offset) uvarint(length) uvarint(rawlen)
//	            [uvarint(group offset), version 2, if type has memberFlag]
//
// Version 2 adds blobs stored in groups (see pack.go): their type byte
// carries memberFlag, offset and length are the group's, and the blob's
// offset in the group's plaintext follows. An index without grouped blobs
// is written as version 1, which older readers understand.
const (
	indexMagic     = "HFIX"
	indexVersion   = 1
	indexVersionV2 = 2
	// MaxIndexSize bounds an index file's plaintext.
	MaxIndexSize = 512 << 20
)

// IndexPack lists the blobs of one pack.
type IndexPack struct {
	ID    ID           `json:"id"`
	Size  int64        `json:"size"`
	Blobs []PackedBlob `json:"blobs"`
}

func encodeIndex(packs []IndexPack) []byte {
	version := byte(indexVersion)
	for _, p := range packs {
		for _, pb := range p.Blobs {
			if pb.Grouped {
				version = indexVersionV2
			}
		}
	}
	b := []byte(indexMagic)
	b = append(b, version)
	b = binary.AppendUvarint(b, uint64(len(packs)))
	for _, p := range packs {
		b = append(b, p.ID[:]...)
		b = binary.AppendUvarint(b, uint64(p.Size))
		b = binary.AppendUvarint(b, uint64(len(p.Blobs)))
		for _, pb := range p.Blobs {
			typ := byte(pb.Type)
			if pb.Grouped {
				typ |= memberFlag
			}
			b = append(b, typ)
			b = append(b, pb.ID[:]...)
			b = binary.AppendUvarint(b, uint64(pb.Offset))
			b = binary.AppendUvarint(b, uint64(pb.Length))
			b = binary.AppendUvarint(b, uint64(pb.RawLen))
			if pb.Grouped {
				b = binary.AppendUvarint(b, uint64(pb.GroupOff))
			}
		}
	}
	return b
}

var errShortIndex = errors.New("index truncated")

type indexReader struct {
	b   []byte
	err error
}

func (r *indexReader) uvarint(max uint64) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errShortIndex
		return 0
	}
	if v > max {
		r.err = fmt.Errorf("index value %d above limit %d", v, max)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *indexReader) id() (id ID) {
	if r.err != nil {
		return
	}
	if len(r.b) < 32 {
		r.err = errShortIndex
		return
	}
	copy(id[:], r.b)
	r.b = r.b[32:]
	return
}

func (r *indexReader) byte() byte {
	if r.err != nil {
		return 0
	}
	if len(r.b) < 1 {
		r.err = errShortIndex
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

// decodeIndex parses an index file's plaintext.
func decodeIndex(b []byte) ([]IndexPack, error) {
	if len(b) < 5 || string(b[:4]) != indexMagic {
		return nil, errors.New("not an index (bad magic)")
	}
	if b[4] != indexVersion && b[4] != indexVersionV2 {
		return nil, fmt.Errorf("unsupported index version %d", b[4])
	}
	v2 := b[4] == indexVersionV2
	r := &indexReader{b: b[5:]}
	// Each pack takes at least 34 bytes, each blob at least 36: bound the
	// counts by the input so a forged count cannot make us allocate much.
	np := r.uvarint(uint64(len(r.b) / 34))
	packs := make([]IndexPack, 0, np)
	for i := uint64(0); i < np && r.err == nil; i++ {
		p := IndexPack{ID: r.id()}
		p.Size = int64(r.uvarint(MaxPackSize))
		nb := r.uvarint(uint64(len(r.b) / 36))
		p.Blobs = make([]PackedBlob, 0, nb)
		for j := uint64(0); j < nb && r.err == nil; j++ {
			typ := r.byte()
			pb := PackedBlob{Type: BlobType(typ &^ memberFlag), Grouped: v2 && typ&memberFlag != 0, ID: r.id()}
			pb.Offset = uint32(r.uvarint(MaxPackSize))
			pb.Length = uint32(r.uvarint(MaxPackSize))
			pb.RawLen = uint32(r.uvarint(MaxBlobSize))
			if pb.Grouped {
				pb.GroupOff = uint32(r.uvarint(MaxGroupSize))
			}
			if r.err == nil {
				if (typ&memberFlag != 0 && !v2) || (pb.Type != DataBlob && pb.Type != TreeBlob) {
					r.err = fmt.Errorf("index: unknown blob type %d", typ)
				} else if pb.Grouped && int64(pb.GroupOff)+int64(pb.RawLen) > MaxGroupSize {
					r.err = fmt.Errorf("index: blob %s at %d+%d outside its group", pb.ID.Short(), pb.GroupOff, pb.RawLen)
				} else if int64(pb.Offset)+int64(pb.Length) > p.Size || pb.Length < Overhead {
					r.err = fmt.Errorf("index: blob %s at %d+%d outside pack of %d bytes", pb.ID.Short(), pb.Offset, pb.Length, p.Size)
				}
			}
			p.Blobs = append(p.Blobs, pb)
		}
		packs = append(packs, p)
	}
	if r.err != nil {
		return nil, fmt.Errorf("decoding index: %w", r.err)
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("decoding index: %d trailing bytes", len(r.b))
	}
	return packs, nil
}

// BlobLocation says where a blob is stored.
type BlobLocation struct {
	Pack ID
	PackedBlob
}

// memIndex is the in-memory index of every pack the repository knows.
type memIndex struct {
	mu      sync.RWMutex
	blobs   map[ID]BlobLocation
	packs   map[ID]*IndexPack
	pending map[ID]*packWriter // blobs being stored, by the writer storing them
	files   map[ID]struct{}    // index files loaded
}

func newMemIndex() *memIndex {
	return &memIndex{
		blobs:   make(map[ID]BlobLocation),
		packs:   make(map[ID]*IndexPack),
		pending: make(map[ID]*packWriter),
		files:   make(map[ID]struct{}),
	}
}

// addPacks records packs (from an index file or a finished upload).
func (m *memIndex) addPacks(packs []IndexPack) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range packs {
		p := packs[i]
		m.packs[p.ID] = &p
		for _, pb := range p.Blobs {
			if _, ok := m.blobs[pb.ID]; !ok {
				m.blobs[pb.ID] = BlobLocation{Pack: p.ID, PackedBlob: pb}
			}
			delete(m.pending, pb.ID)
		}
	}
}

// lookup returns a blob's location.
func (m *memIndex) lookup(id ID) (BlobLocation, bool) {
	m.mu.RLock()
	l, ok := m.blobs[id]
	m.mu.RUnlock()
	return l, ok
}

// has reports whether the blob is stored or being stored.
func (m *memIndex) has(id ID) bool {
	m.mu.RLock()
	_, ok := m.blobs[id]
	if !ok {
		_, ok = m.pending[id]
	}
	m.mu.RUnlock()
	return ok
}

// reserve marks id as being stored by w; false means someone already has
// it.
func (m *memIndex) reserve(id ID, w *packWriter) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.blobs[id]; ok {
		return false
	}
	if _, ok := m.pending[id]; ok {
		return false
	}
	m.pending[id] = w
	return true
}

// dropPending forgets the blobs w reserved and did not store (its backup
// failed or was cancelled), so that a later backup through the same
// Repository stores them instead of referring to blobs never written.
func (m *memIndex) dropPending(w *packWriter) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, o := range m.pending {
		if o == w {
			delete(m.pending, id)
		}
	}
}

// allPacks returns a copy of the pack list.
func (m *memIndex) allPacks() []*IndexPack {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]*IndexPack, 0, len(m.packs))
	for _, p := range m.packs {
		out = append(out, p)
	}
	return out
}
