package cdplog

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimSpace(p)))
	return len(p), nil
}

func testLogger(t *testing.T) *slog.Logger { return slog.New(slog.NewTextHandler(tWriter{t}, nil)) }

func block(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n*BlockSize) }

func TestReadBlockAtSeq(t *testing.T) {
	l, err := Open(t.TempDir(), 1, Options{}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// seq1: blocks 0-3 = 1; seq2: block 2 = 2; seq3: mark; seq4: zero blocks 1-2.
	recs := []Record{
		{Kind: KindWrite, Offset: 0, Length: 4 * BlockSize, Data: block(1, 4)},
		{Kind: KindWrite, Offset: 2 * BlockSize, Length: BlockSize, Data: block(2, 1)},
		{Kind: KindMark, Data: []byte("m")},
		{Kind: KindZero, Offset: BlockSize, Length: 2 * BlockSize},
	}
	for i := range recs {
		seq, err := l.Append(&recs[i])
		if err != nil || seq != uint64(i+1) {
			t.Fatalf("append %d: seq %d err %v", i, seq, err)
		}
	}
	tests := []struct {
		blk, seq uint64
		found    bool
		want     byte
	}{
		{0, 0, false, 0}, {0, 1, true, 1}, {2, 1, true, 1}, {2, 2, true, 2}, {2, 3, true, 2},
		{2, 4, true, 0}, {1, 4, true, 0}, {3, 4, true, 1}, {4, 4, false, 0},
	}
	p := make([]byte, BlockSize)
	for _, tc := range tests {
		found, err := l.ReadBlock(tc.blk, tc.seq, p)
		if err != nil || found != tc.found {
			t.Fatalf("block %d at %d: found %v err %v, want found %v", tc.blk, tc.seq, found, err, tc.found)
		}
		if found && !bytes.Equal(p, block(tc.want, 1)) {
			t.Errorf("block %d at %d: got %d, want %d", tc.blk, tc.seq, p[0], tc.want)
		}
	}
}

// TestTornTail cuts or corrupts the last record in several ways and checks
// that reopening keeps every whole record before it and drops the rest.
func TestTornTail(t *testing.T) {
	tests := []struct {
		name   string
		damage func(t *testing.T, path string, lastStart, size int64)
	}{
		{"cut in header", func(t *testing.T, p string, s, _ int64) { os.Truncate(p, s+10) }},
		{"cut in data", func(t *testing.T, p string, s, _ int64) { os.Truncate(p, s+HeaderSize+100) }},
		{"flipped data byte", func(t *testing.T, p string, s, size int64) { flip(t, p, size-1) }},
		{"flipped seq", func(t *testing.T, p string, s, _ int64) { flip(t, p, s+8) }},
		{"garbage appended", func(t *testing.T, p string, s, size int64) {
			f, _ := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
			f.Write(bytes.Repeat([]byte{0xee}, 300))
			f.Close()
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			l, err := Open(dir, 1, Options{}, testLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			var lastStart int64
			for i := 0; i < 5; i++ {
				lastStart = l.Bytes()
				r := Record{Kind: KindWrite, Offset: uint64(i) * BlockSize, Length: BlockSize, Data: block(byte(i+1), 1)}
				if _, err := l.Append(&r); err != nil {
					t.Fatal(err)
				}
			}
			size := l.Bytes()
			l.Close()
			path := filepath.Join(dir, segName(1))
			tc.damage(t, path, lastStart, size)
			l, err = Open(dir, 1, Options{}, testLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			wantNext := uint64(5)
			if tc.name == "garbage appended" {
				wantNext = 6
			}
			if l.NextSeq() != wantNext {
				t.Fatalf("next seq %d after damage, want %d", l.NextSeq(), wantNext)
			}
			p := make([]byte, BlockSize)
			for i := uint64(0); i < wantNext-1; i++ {
				if ok, err := l.ReadBlock(i, 100, p); !ok || err != nil || p[0] != byte(i+1) {
					t.Fatalf("block %d lost: ok %v err %v val %d", i, ok, err, p[0])
				}
			}
			// The log goes on after the truncation.
			r := Record{Kind: KindWrite, Offset: 0, Length: BlockSize, Data: block(9, 1)}
			if seq, err := l.Append(&r); err != nil || seq != wantNext {
				t.Fatalf("append after repair: seq %d err %v", seq, err)
			}
		})
	}
}

func flip(t *testing.T, path string, off int64) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	f.ReadAt(b, off)
	b[0] ^= 0xff
	f.WriteAt(b, off)
}

func TestCorruptMiddleSegmentIsAnError(t *testing.T) {
	dir := t.TempDir()
	l, err := Open(dir, 1, Options{SegmentBytes: 3 * BlockSize}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 8; i++ {
		r := Record{Kind: KindWrite, Offset: 0, Length: BlockSize, Data: block(byte(i), 1)}
		if _, err := l.Append(&r); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(l.Segments()); n < 3 {
		t.Fatalf("%d segments, want >= 3", n)
	}
	l.Close()
	flip(t, filepath.Join(dir, segName(1)), HeaderSize+5)
	if _, err := Open(dir, 1, Options{SegmentBytes: 3 * BlockSize}, testLogger(t)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open with a corrupt non-last segment: %v, want ErrCorrupt", err)
	}
}

func TestFoldDropsOldSegmentsAndKeepsRecent(t *testing.T) {
	dir := t.TempDir()
	l, err := Open(dir, 1, Options{SegmentBytes: 2 * (BlockSize + HeaderSize)}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		r := Record{Kind: KindWrite, Offset: uint64(i%3) * BlockSize, Length: BlockSize, Data: block(byte(i+1), 1)}
		if _, err := l.Append(&r); err != nil {
			t.Fatal(err)
		}
	}
	before := l.Bytes()
	var applied []uint64
	upTo, err := l.Fold(time.Now().Add(time.Hour), 6, func(r Record) error {
		applied = append(applied, r.Seq)
		return nil
	}, func(uint64) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if upTo != 6 || len(applied) != 6 || l.FirstSeq() != 7 || l.Bytes() >= before {
		t.Fatalf("fold: upTo %d applied %v first %d bytes %d->%d", upTo, applied, l.FirstSeq(), before, l.Bytes())
	}
	p := make([]byte, BlockSize)
	// Block 0 was written at seqs 1,4,7,10: at seq 8 the newest held is 7.
	if ok, _ := l.ReadBlock(0, 8, p); !ok || p[0] != 7 {
		t.Fatalf("block 0 at 8: ok %v val %d", ok, p[0])
	}
	// Block 2 was written at 3,6,9: at seq 8 nothing is held any more.
	if ok, _ := l.ReadBlock(2, 8, p); ok {
		t.Fatal("block 2 at 8 should be folded")
	}
	l.Close()
	l, err = Open(dir, 1, Options{}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.FirstSeq() != 7 || l.NextSeq() != 11 {
		t.Fatalf("reopened: first %d next %d", l.FirstSeq(), l.NextSeq())
	}
	// A failed commit drops nothing.
	if _, err := l.Fold(time.Now().Add(time.Hour), 100, func(Record) error { return nil }, func(uint64) error { return errors.New("disk") }); err == nil || l.FirstSeq() != 7 {
		t.Fatalf("fold with failing commit: %v first %d", err, l.FirstSeq())
	}
}

func FuzzDecodeRecord(f *testing.F) {
	r := Record{Seq: 3, Time: time.Unix(5, 0), Kind: KindWrite, Offset: BlockSize, Length: BlockSize, Data: block(7, 1)}
	f.Add(r.AppendBinary(nil))
	m := Record{Seq: 4, Kind: KindMark, Data: []byte("label")}
	f.Add(m.AppendBinary(nil))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		rec, n, err := DecodeRecord(b)
		if err != nil {
			return
		}
		if n > len(b) || rec.Validate() != nil {
			t.Fatalf("decoded an invalid record: n %d len %d", n, len(b))
		}
		if again := rec.AppendBinary(nil); !bytes.Equal(again, b[:n]) {
			t.Fatal("re-encoding differs")
		}
	})
}

// TestRecordsAcrossSegmentsAndAppendBatch reads records spanning segments
// in batches and replays them into a second log (as a replica does).
func TestRecordsAcrossSegmentsAndAppendBatch(t *testing.T) {
	src, err := Open(t.TempDir(), 1, Options{SegmentBytes: 3 * BlockSize}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	for i := 0; i < 12; i++ {
		r := Record{Kind: KindWrite, Offset: uint64(i) * BlockSize, Length: BlockSize, Data: block(byte(i+1), 1)}
		if i%4 == 3 {
			r = Record{Kind: KindMark, Data: []byte("m")}
		}
		if _, err := src.Append(&r); err != nil {
			t.Fatal(err)
		}
	}
	dstDir := t.TempDir()
	dst, err := Open(dstDir, 1, Options{SegmentBytes: 5 * BlockSize}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	for from := uint64(1); from < src.NextSeq(); {
		recs, err := src.Records(from, ^uint64(0), 2*BlockSize)
		if err != nil || len(recs) == 0 || recs[0].Seq != from {
			t.Fatalf("records from %d: %d %v", from, len(recs), err)
		}
		if err := dst.AppendBatch(recs); err != nil {
			t.Fatal(err)
		}
		from = recs[len(recs)-1].Seq + 1
	}
	gap := []Record{{Seq: dst.NextSeq() + 1, Kind: KindFlush}}
	if err := dst.AppendBatch(gap); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("batch with a gap: %v", err)
	}
	dst.Close()
	dst, err = Open(dstDir, 1, Options{}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if dst.NextSeq() != 13 {
		t.Fatalf("replica ends at %d", dst.NextSeq())
	}
	p := make([]byte, BlockSize)
	for i := uint64(0); i < 12; i++ {
		ok, err := dst.ReadBlock(i, 12, p)
		if i%4 == 3 {
			if ok {
				t.Fatalf("block %d written by a mark?", i)
			}
			continue
		}
		if !ok || err != nil || p[0] != byte(i+1) {
			t.Fatalf("block %d: ok %v err %v val %d", i, ok, err, p[0])
		}
	}
}

// TestSpanReadsEncodedRecords reads a span over several segments back
// through a Reader: the same records, in order, with their data.
func TestSpanReadsEncodedRecords(t *testing.T) {
	l, err := Open(t.TempDir(), 1, Options{SegmentBytes: 64 << 10}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var want []Record
	for i := 0; i < 40; i++ {
		r := Record{Kind: KindWrite, Offset: uint64(i%7) * BlockSize, Length: 2 * BlockSize, Data: bytes.Repeat([]byte{byte(i)}, 2*BlockSize)}
		if i%9 == 4 {
			r = Record{Kind: KindMark, Data: []byte(fmt.Sprintf("mark-%d", i))}
		}
		if _, err := l.Append(&r); err != nil {
			t.Fatal(err)
		}
		want = append(want, r)
	}
	if len(l.Segments()) < 3 {
		t.Fatalf("want several segments, got %v", l.Segments())
	}
	if got, all := l.BytesFrom(1), l.Bytes(); got != all {
		t.Fatalf("BytesFrom(1) = %d, log holds %d", got, all)
	}
	sp, err := l.Span(3, ^uint64(0), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if sp.First != 3 || sp.Last != 40 || sp.Size != l.BytesFrom(3) {
		t.Fatalf("span %d..%d of %d bytes, want 3..40 of %d", sp.First, sp.Last, sp.Size, l.BytesFrom(3))
	}
	rd := NewReader(io.NewSectionReader(sp, 0, sp.Size))
	for i := 2; i < 40; i++ {
		r, err := rd.Next()
		if err != nil {
			t.Fatalf("record %d: %v", i+1, err)
		}
		if r.Seq != uint64(i+1) || r.Kind != want[i].Kind || !bytes.Equal(r.Data, want[i].Data) {
			t.Fatalf("record %d differs: seq %d kind %v", i+1, r.Seq, r.Kind)
		}
	}
	if _, err := rd.Next(); err != io.EOF {
		t.Fatalf("after the span: %v, want EOF", err)
	}
	small, err := l.Span(3, 100, 3*(HeaderSize+2*BlockSize))
	if err != nil || small.Last != 5 {
		t.Fatalf("span bounded to three records: %+v %v", small, err)
	}
	if upTo, err := l.Span(3, 10, 1<<20); err != nil || upTo.Last != 10 {
		t.Fatalf("span up to 10: %+v %v", upTo, err)
	}
	// A damaged byte is caught by the record's CRC.
	buf := make([]byte, small.Size)
	if _, err := small.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	buf[HeaderSize+100] ^= 1
	if _, err := NewReader(bytes.NewReader(buf)).Next(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("damaged record: %v, want ErrCorrupt", err)
	}
}

// TestReopenIndexesLargeRecordsFromHeaders reopens a log of records larger
// than the indexing window, marks and zeroes between them: the index is
// rebuilt from the headers alone and every block reads back.
func TestReopenIndexesLargeRecordsFromHeaders(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentBytes: 4 << 20}
	l, err := Open(dir, 1, opts, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	const blocks = 512 // 2 MiB records
	for i := 0; i < 9; i++ {
		var r Record
		switch i % 3 {
		case 0, 1:
			r = Record{Kind: KindWrite, Offset: uint64(i%2) * BlockSize, Length: blocks * BlockSize, Data: block(byte(i+1), blocks)}
		case 2:
			r = Record{Kind: KindMark, Data: []byte(fmt.Sprintf("m%d", i))}
		}
		if _, err := l.Append(&r); err != nil {
			t.Fatal(err)
		}
	}
	z := Record{Kind: KindZero, Offset: 10 * BlockSize, Length: 2 * BlockSize}
	if _, err := l.Append(&z); err != nil {
		t.Fatal(err)
	}
	if len(l.Segments()) < 3 {
		t.Fatalf("want several segments, got %v", l.Segments())
	}
	l.Close()
	l, err = Open(dir, 1, opts, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.NextSeq() != 11 {
		t.Fatalf("next seq %d after reopen, want 11", l.NextSeq())
	}
	p := make([]byte, BlockSize)
	for _, c := range []struct {
		blk, at uint64
		want    byte
	}{{0, 1, 1}, {1, 2, 2}, {0, 4, 1}, {0, 5, 5}, {5, 8, 8}, {0, 10, 7}, {10, 10, 0}, {11, 9, 8}} {
		if ok, err := l.ReadBlock(c.blk, c.at, p); !ok || err != nil || !bytes.Equal(p, block(c.want, 1)) {
			t.Fatalf("block %d at %d: ok %v err %v first byte %d, want %d", c.blk, c.at, ok, err, p[0], c.want)
		}
	}
	if m, ok := l.Meta(6); !ok || m.Kind != KindMark || m.Label != "m5" {
		t.Fatalf("mark 6 after reopen: %+v", m)
	}
}
