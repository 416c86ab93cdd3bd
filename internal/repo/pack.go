package repo

import (
	"encoding/binary"
	"fmt"
)

// BlobType says what a blob holds.
type BlobType uint8

// Blob types.
const (
	DataBlob BlobType = 0
	TreeBlob BlobType = 1
)

// String returns "data" or "tree".
func (t BlobType) String() string {
	switch t {
	case DataBlob:
		return "data"
	case TreeBlob:
		return "tree"
	}
	return fmt.Sprintf("blobtype(%d)", uint8(t))
}

// Pack format: the encrypted blobs one after another, then the encrypted
// header, then the header's encrypted length as a 4-byte little-endian
// integer. The header lists, in order, each blob's type, ID, stored
// (encrypted) length and plaintext length; offsets are implied.
const (
	packEntrySize = 1 + 32 + 4 + 4
	// MaxPackSize bounds pack files we create or parse.
	MaxPackSize = 1 << 30
	// MaxBlobSize bounds a single blob's plaintext.
	MaxBlobSize  = 128 << 20
	maxPackBlobs = MaxPackSize / (Overhead + 1)
)

// PackedBlob is one blob's place in a pack.
type PackedBlob struct {
	Type   BlobType `json:"type"`
	ID     ID       `json:"id"`
	Offset uint32   `json:"offset"`
	Length uint32   `json:"length"`
	RawLen uint32   `json:"raw_length"`
}

// encodePackHeader serialises the blob list (before encryption).
func encodePackHeader(blobs []PackedBlob) []byte {
	b := make([]byte, 0, len(blobs)*packEntrySize)
	for _, pb := range blobs {
		b = append(b, byte(pb.Type))
		b = append(b, pb.ID[:]...)
		b = binary.LittleEndian.AppendUint32(b, pb.Length)
		b = binary.LittleEndian.AppendUint32(b, pb.RawLen)
	}
	return b
}

// decodePackHeader parses a decrypted header; dataLen is the length of the
// blob area, which the entries must exactly cover.
func decodePackHeader(b []byte, dataLen int64) ([]PackedBlob, error) {
	if len(b)%packEntrySize != 0 {
		return nil, fmt.Errorf("pack header length %d not a multiple of %d", len(b), packEntrySize)
	}
	n := len(b) / packEntrySize
	if n > maxPackBlobs {
		return nil, fmt.Errorf("pack header lists %d blobs", n)
	}
	out := make([]PackedBlob, 0, n)
	var off int64
	for i := 0; i < n; i++ {
		e := b[i*packEntrySize:]
		pb := PackedBlob{Type: BlobType(e[0])}
		if pb.Type != DataBlob && pb.Type != TreeBlob {
			return nil, fmt.Errorf("pack header entry %d: unknown blob type %d", i, e[0])
		}
		copy(pb.ID[:], e[1:33])
		pb.Length = binary.LittleEndian.Uint32(e[33:])
		pb.RawLen = binary.LittleEndian.Uint32(e[37:])
		if pb.Length < Overhead || pb.RawLen > MaxBlobSize {
			return nil, fmt.Errorf("pack header entry %d: bad lengths %d/%d", i, pb.Length, pb.RawLen)
		}
		pb.Offset = uint32(off)
		off += int64(pb.Length)
		if off > dataLen {
			return nil, fmt.Errorf("pack header entry %d runs past the blob area (%d > %d)", i, off, dataLen)
		}
		out = append(out, pb)
	}
	if off != dataLen {
		return nil, fmt.Errorf("pack header covers %d bytes, blob area is %d", off, dataLen)
	}
	return out, nil
}

// packTrailer splits a whole pack into blob area and encrypted header.
func packTrailer(pack []byte) (data, header []byte, err error) {
	if len(pack) < 4+Overhead {
		return nil, nil, fmt.Errorf("pack too short (%d bytes)", len(pack))
	}
	hl := int64(binary.LittleEndian.Uint32(pack[len(pack)-4:]))
	if hl < Overhead || hl > int64(len(pack)-4) {
		return nil, nil, fmt.Errorf("pack header length %d invalid for pack of %d bytes", hl, len(pack))
	}
	end := int64(len(pack)) - 4
	return pack[:end-hl], pack[end-hl : end], nil
}

// parsePack decrypts and parses the header of a whole pack.
func (r *Repository) parsePack(pack []byte) ([]PackedBlob, error) {
	data, hdr, err := packTrailer(pack)
	if err != nil {
		return nil, err
	}
	plain, err := r.crypt.open(nil, hdr)
	if err != nil {
		return nil, fmt.Errorf("pack header: %w", err)
	}
	return decodePackHeader(plain, int64(len(data)))
}
