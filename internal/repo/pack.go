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

// Pack format: the encrypted objects one after another, then the
// encrypted header, then the header's encrypted length as a 4-byte
// little-endian integer. The header is a list of 41-byte entries: type(1)
// ID(32) stored length(4) plaintext length(4), little endian; offsets are
// implied by the order.
//
// An object is either one blob (entry type 0 data, 1 tree) or, from
// repository format 2, a group: several small blobs whose plaintexts were
// concatenated and compressed as one frame. A group is one entry of type
// entryGroup (ID all zero, stored length of the group, plaintext length =
// the number of members), followed by that many member entries (type
// memberFlag|blob type, the blob's ID, stored length 0, the blob's
// plaintext length); members lie in the group's plaintext one after
// another in that order.
const (
	packEntrySize = 1 + 32 + 4 + 4
	// MaxPackSize bounds pack files we create or parse.
	MaxPackSize = 1 << 30
	// MaxBlobSize bounds a single blob's plaintext.
	MaxBlobSize  = 128 << 20
	maxPackBlobs = MaxPackSize / (Overhead + 1)
	// MaxGroupSize bounds a group's plaintext (groups we write stay
	// below groupTarget+groupBlobMax).
	MaxGroupSize = 16 << 20
	entryGroup   = 2
	memberFlag   = 0x80
)

// PackedBlob is one blob's place in a pack. For a blob stored in a group,
// Offset and Length are the group's, and GroupOff is where the blob starts
// in the group's plaintext.
type PackedBlob struct {
	Type     BlobType `json:"type"`
	Grouped  bool     `json:"grouped,omitempty"`
	ID       ID       `json:"id"`
	Offset   uint32   `json:"offset"`
	Length   uint32   `json:"length"`
	RawLen   uint32   `json:"raw_length"`
	GroupOff uint32   `json:"group_offset,omitempty"`
}

// sameObject reports whether a and b are stored in the same object (the
// same group).
func (a PackedBlob) sameObject(b PackedBlob) bool {
	return a.Grouped && b.Grouped && a.Offset == b.Offset
}

func appendPackEntry(b []byte, typ byte, id ID, length, rawLen uint32) []byte {
	b = append(b, typ)
	b = append(b, id[:]...)
	b = binary.LittleEndian.AppendUint32(b, length)
	return binary.LittleEndian.AppendUint32(b, rawLen)
}

// encodePackHeader serialises the blob list (before encryption). The
// members of a group must be consecutive and in plaintext order.
func encodePackHeader(blobs []PackedBlob) []byte {
	b := make([]byte, 0, len(blobs)*packEntrySize)
	for i := 0; i < len(blobs); {
		pb := blobs[i]
		if !pb.Grouped {
			b = appendPackEntry(b, byte(pb.Type), pb.ID, pb.Length, pb.RawLen)
			i++
			continue
		}
		j := i + 1
		for j < len(blobs) && blobs[j].sameObject(pb) {
			j++
		}
		b = appendPackEntry(b, entryGroup, ID{}, pb.Length, uint32(j-i))
		for _, m := range blobs[i:j] {
			b = appendPackEntry(b, memberFlag|byte(m.Type), m.ID, 0, m.RawLen)
		}
		i = j
	}
	return b
}

// decodePackHeader parses a decrypted header; dataLen is the length of the
// object area, which the entries must exactly cover.
func decodePackHeader(b []byte, dataLen int64) ([]PackedBlob, error) {
	if len(b)%packEntrySize != 0 {
		return nil, fmt.Errorf("pack header length %d not a multiple of %d", len(b), packEntrySize)
	}
	n := len(b) / packEntrySize
	if n > maxPackBlobs {
		return nil, fmt.Errorf("pack header lists %d blobs", n)
	}
	entry := func(i int) (typ byte, id ID, length, rawLen uint32) {
		e := b[i*packEntrySize:]
		copy(id[:], e[1:33])
		return e[0], id, binary.LittleEndian.Uint32(e[33:]), binary.LittleEndian.Uint32(e[37:])
	}
	out := make([]PackedBlob, 0, n)
	var off int64
	for i := 0; i < n; {
		typ, id, length, rawLen := entry(i)
		if length < Overhead {
			return nil, fmt.Errorf("pack header entry %d: stored length %d too short", i, length)
		}
		if off+int64(length) > dataLen {
			return nil, fmt.Errorf("pack header entry %d runs past the blob area (%d > %d)", i, off+int64(length), dataLen)
		}
		switch BlobType(typ) {
		case DataBlob, TreeBlob:
			if rawLen > MaxBlobSize {
				return nil, fmt.Errorf("pack header entry %d: bad lengths %d/%d", i, length, rawLen)
			}
			out = append(out, PackedBlob{Type: BlobType(typ), ID: id, Offset: uint32(off), Length: length, RawLen: rawLen})
			i++
		case entryGroup:
			if !id.IsNull() {
				return nil, fmt.Errorf("pack header entry %d: group entry with an ID", i)
			}
			if rawLen < 1 || int64(rawLen) > int64(n-i-1) {
				return nil, fmt.Errorf("pack header entry %d: group of %d members, %d entries follow", i, rawLen, n-i-1)
			}
			var goff uint32
			for k := i + 1; k <= i+int(rawLen); k++ {
				mt, mid, ml, mraw := entry(k)
				bt := BlobType(mt &^ memberFlag)
				if mt&memberFlag == 0 || (bt != DataBlob && bt != TreeBlob) || ml != 0 {
					return nil, fmt.Errorf("pack header entry %d: not a group member (type %d, length %d)", k, mt, ml)
				}
				if int64(goff)+int64(mraw) > MaxGroupSize {
					return nil, fmt.Errorf("pack header entry %d: group plaintext above %d bytes", k, MaxGroupSize)
				}
				out = append(out, PackedBlob{Type: bt, Grouped: true, ID: mid, Offset: uint32(off), Length: length, RawLen: mraw, GroupOff: goff})
				goff += mraw
			}
			i += 1 + int(rawLen)
		default:
			return nil, fmt.Errorf("pack header entry %d: unknown blob type %d", i, typ)
		}
		off += int64(length)
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
