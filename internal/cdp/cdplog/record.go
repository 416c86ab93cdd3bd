// Package cdplog is the continuous-data-protection log of a block volume: an
// append-only, segmented file of records (sequence number, timestamp, offset,
// length, data, CRC32C) with an in-memory index from block to the records
// that wrote it, so that any block can be read as it was at any sequence
// number still held in the log.
//
// Crash safety: a record is written with one write(2) before the caller
// acknowledges it, so it survives kill -9 of the process (it is in the page
// cache); Sync makes it survive a power loss. On Open a torn or corrupt tail
// of the last segment is detected by its CRC and truncated.
package cdplog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"time"
)

// BlockSize is the unit of the index: write and zero records cover whole,
// aligned blocks.
const BlockSize = 4096

// HeaderSize is the size of a record header on disk.
const HeaderSize = 48

// MaxRecordData bounds the data carried by one record.
const MaxRecordData = 64 << 20

// MaxLabel bounds the label of a mark.
const MaxLabel = 256

const recordMagic = 0x44434648 // "HFCD" little endian

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Kind is the type of a log record.
type Kind uint8

// Record kinds.
const (
	KindWrite Kind = 1 // data written at Offset
	KindZero  Kind = 2 // Length bytes at Offset became zero (WRITE_ZEROES, TRIM)
	KindMark  Kind = 3 // a named point in time; Data is the label
	KindFlush Kind = 4 // a FLUSH: everything before is durable
)

// String names the kind as the timeline shows it.
func (k Kind) String() string {
	switch k {
	case KindWrite:
		return "write"
	case KindZero:
		return "zero"
	case KindMark:
		return "mark"
	case KindFlush:
		return "flush"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Record is one entry of the log.
type Record struct {
	Seq    uint64
	Time   time.Time
	Kind   Kind
	Offset uint64
	Length uint64 // bytes covered; equals len(Data) for writes
	Data   []byte // write data, or the label of a mark
}

// ErrCorrupt reports a record that fails its checks.
var ErrCorrupt = errors.New("corrupt log record")

// Validate checks the invariants of a record independent of any volume.
func (r *Record) Validate() error {
	if r.Kind == KindWrite && uint64(len(r.Data)) != r.Length {
		return fmt.Errorf("write record length %d but %d data bytes: %w", r.Length, len(r.Data), ErrCorrupt)
	}
	return r.validateMeta()
}

// validateMeta checks what Validate does except that a write's data is
// as long as the record says (indexing reads headers without the data).
func (r *Record) validateMeta() error {
	switch r.Kind {
	case KindWrite, KindZero:
		if r.Offset%BlockSize != 0 || r.Length%BlockSize != 0 || r.Length == 0 {
			return fmt.Errorf("record range %d+%d not block aligned: %w", r.Offset, r.Length, ErrCorrupt)
		}
		if r.Offset+r.Length < r.Offset {
			return fmt.Errorf("record range %d+%d overflows: %w", r.Offset, r.Length, ErrCorrupt)
		}
	case KindMark:
		if len(r.Data) > MaxLabel {
			return fmt.Errorf("mark label of %d bytes exceeds %d: %w", len(r.Data), MaxLabel, ErrCorrupt)
		}
	case KindFlush:
		if len(r.Data) != 0 {
			return fmt.Errorf("flush record with data: %w", ErrCorrupt)
		}
	default:
		return fmt.Errorf("unknown record kind %d: %w", r.Kind, ErrCorrupt)
	}
	if len(r.Data) > MaxRecordData {
		return fmt.Errorf("record data %d bytes exceeds %d: %w", len(r.Data), MaxRecordData, ErrCorrupt)
	}
	return nil
}

// AppendBinary appends the on-disk encoding of r to b.
func (r *Record) AppendBinary(b []byte) []byte {
	return append(r.AppendHeader(b), r.Data...)
}

// AppendHeader appends the on-disk header of r to b: the encoding is the
// header followed by r.Data, so the two can be written without copying the
// data first (pwritev).
func (r *Record) AppendHeader(b []byte) []byte {
	var h [HeaderSize]byte
	binary.LittleEndian.PutUint32(h[0:], recordMagic)
	binary.LittleEndian.PutUint64(h[8:], r.Seq)
	binary.LittleEndian.PutUint64(h[16:], uint64(r.Time.UnixNano()))
	h[24] = byte(r.Kind)
	binary.LittleEndian.PutUint32(h[28:], uint32(len(r.Data)))
	binary.LittleEndian.PutUint64(h[32:], r.Offset)
	binary.LittleEndian.PutUint64(h[40:], r.Length)
	crc := crc32.Update(crc32.Update(0, castagnoli, h[8:]), castagnoli, r.Data)
	binary.LittleEndian.PutUint32(h[4:], crc)
	return append(b, h[:]...)
}

// header is a decoded record header.
type header struct {
	crc     uint32
	seq     uint64
	time    int64
	kind    Kind
	dataLen uint32
	offset  uint64
	length  uint64
}

func parseHeader(h []byte) (header, error) {
	if len(h) < HeaderSize {
		return header{}, fmt.Errorf("short header (%d bytes): %w", len(h), ErrCorrupt)
	}
	if binary.LittleEndian.Uint32(h[0:]) != recordMagic {
		return header{}, fmt.Errorf("bad record magic: %w", ErrCorrupt)
	}
	hd := header{
		crc:     binary.LittleEndian.Uint32(h[4:]),
		seq:     binary.LittleEndian.Uint64(h[8:]),
		time:    int64(binary.LittleEndian.Uint64(h[16:])),
		kind:    Kind(h[24]),
		dataLen: binary.LittleEndian.Uint32(h[28:]),
		offset:  binary.LittleEndian.Uint64(h[32:]),
		length:  binary.LittleEndian.Uint64(h[40:]),
	}
	if h[25]|h[26]|h[27] != 0 {
		return header{}, fmt.Errorf("non-zero padding in record header: %w", ErrCorrupt)
	}
	if hd.dataLen > MaxRecordData {
		return header{}, fmt.Errorf("record data length %d exceeds %d: %w", hd.dataLen, MaxRecordData, ErrCorrupt)
	}
	return hd, nil
}

// DecodeRecord decodes one record from the start of b and returns it and
// the number of bytes it used. Data aliases b.
func DecodeRecord(b []byte) (Record, int, error) {
	hd, err := parseHeader(b)
	if err != nil {
		return Record{}, 0, err
	}
	n := HeaderSize + int(hd.dataLen)
	if len(b) < n {
		return Record{}, 0, fmt.Errorf("record %d truncated (%d of %d bytes): %w", hd.seq, len(b), n, ErrCorrupt)
	}
	if crc32.Update(0, castagnoli, b[8:n]) != hd.crc {
		return Record{}, 0, fmt.Errorf("record %d checksum mismatch: %w", hd.seq, ErrCorrupt)
	}
	r := Record{
		Seq:    hd.seq,
		Time:   time.Unix(0, hd.time).UTC(),
		Kind:   hd.kind,
		Offset: hd.offset,
		Length: hd.length,
		Data:   b[HeaderSize:n],
	}
	if err := r.Validate(); err != nil {
		return Record{}, 0, fmt.Errorf("record %d: %w", hd.seq, err)
	}
	return r, n, nil
}
