package cdplog

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultSegmentBytes is the size at which a new segment is started. Folding
// (retention) drops whole segments.
const DefaultSegmentBytes = 64 << 20

// ErrNotHeld reports a sequence number no longer (or not yet) in the log.
var ErrNotHeld = errors.New("sequence number not held in the log")

// Options tune a Log.
type Options struct {
	// SegmentBytes is the size at which the log rolls to a new segment.
	SegmentBytes int64
}

// Meta describes a record without its data.
type Meta struct {
	Seq    uint64
	Time   time.Time
	Kind   Kind
	Offset uint64
	Length uint64
	Label  string // marks only
}

// rec is what the log keeps in memory about each record; it holds no
// pointers, so the garbage collector does not scan the (large) slice.
type rec struct {
	Seq    uint64
	TimeNs int64
	Kind   Kind
	Offset uint64
	Length uint64
	seg    int   // index into Log.segs
	pos    int64 // offset of the record header in its segment
}

type segment struct {
	first uint64 // first sequence number the segment holds (its name)
	last  uint64 // last sequence number it holds; first-1 when empty
	f     *os.File
	size  int64
	// synced is closed once a full (rolled) segment has been fsynced in
	// the background; nil for the segment being written.
	synced  chan struct{}
	syncErr error
}

// Log is an open CDP log. It is safe for concurrent use.
type Log struct {
	dir    string
	opts   Options
	logger *slog.Logger

	mu       sync.RWMutex
	segs     []*segment
	metas    []rec             // metas[i].Seq == first + i
	labels   map[uint64]string // labels of marks by sequence number
	first    uint64            // first sequence number held
	next     uint64            // sequence number the next record gets
	index    map[uint64][]uint64
	bytes    int64 // total bytes in segments
	buf      []byte
	dataSize int64 // bytes of write data appended since open (stats)
}

func segName(first uint64) string { return fmt.Sprintf("seg-%016x.log", first) }

// Open opens (creating if needed) the log in dir, replays it to rebuild the
// index and truncates a torn tail. start is the sequence number the first
// record gets when the log is empty (1 for a new volume, foldSeq+1 after
// all segments were folded).
func Open(dir string, start uint64, opts Options, logger *slog.Logger) (*Log, error) {
	if opts.SegmentBytes <= 0 {
		opts.SegmentBytes = DefaultSegmentBytes
	}
	if start == 0 {
		start = 1
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating log directory %s: %w", dir, err)
	}
	l := &Log{dir: dir, opts: opts, logger: logger, index: make(map[uint64][]uint64), labels: make(map[uint64]string), first: start, next: start}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("listing log directory %s: %w", dir, err)
	}
	var names []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "seg-") && strings.HasSuffix(e.Name(), ".log") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	for i, name := range names {
		var first uint64
		if _, err := fmt.Sscanf(name, "seg-%016x.log", &first); err != nil {
			l.closeFiles()
			return nil, fmt.Errorf("log segment name %s: %w", name, err)
		}
		if i == 0 {
			l.first, l.next = first, first
		}
		if first != l.next {
			l.closeFiles()
			return nil, fmt.Errorf("log segment %s starts at %d, expected %d: %w", name, first, l.next, ErrCorrupt)
		}
		last := i == len(names)-1
		if err := l.loadSegment(filepath.Join(dir, name), first, last); err != nil {
			l.closeFiles()
			return nil, err
		}
	}
	if len(l.segs) == 0 {
		if err := l.newSegment(); err != nil {
			return nil, err
		}
	}
	return l, nil
}

func (l *Log) loadSegment(path string, first uint64, last bool) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("opening log segment: %w", err)
	}
	s := &segment{first: first, last: first - 1, f: f}
	l.segs = append(l.segs, s)
	segIdx := len(l.segs) - 1
	if !last {
		return l.indexFullSegment(s, segIdx, path)
	}
	br := bufio.NewReaderSize(f, 1<<20)
	var pos int64
	hbuf := make([]byte, HeaderSize)
	var data []byte
	for {
		rec, n, err := readRecord(br, hbuf, &data)
		if err == io.EOF {
			break
		}
		if err == nil && rec.Seq != l.next {
			err = fmt.Errorf("record seq %d, expected %d: %w", rec.Seq, l.next, ErrCorrupt)
		}
		if err != nil {
			if !last {
				return fmt.Errorf("log segment %s at offset %d: %w", path, pos, err)
			}
			l.logger.Warn("truncating torn tail of CDP log", "segment", path, "offset", pos, "err", err)
			if terr := f.Truncate(pos); terr != nil {
				return fmt.Errorf("truncating torn tail of %s: %w", path, terr)
			}
			break
		}
		l.addMeta(&rec, segIdx, pos)
		s.last = rec.Seq
		pos += int64(n)
	}
	s.size = pos
	l.bytes += pos
	if _, err := f.Seek(pos, io.SeekStart); err != nil {
		return fmt.Errorf("seeking log segment %s: %w", path, err)
	}
	return nil
}

// indexFullSegment rebuilds the index entries of a full (rolled, synced)
// segment from its record headers, read through a 1 MiB window that skips
// the data of records larger than what is left of it: opening a log costs
// about one read per 1 MiB of small records and per large record rather
// than a read of everything. The records read with the window are checked
// (CRC); the data of the large records skipped is not (the last segment,
// whose tail a crash can tear, is read whole and checked).
func (l *Log) indexFullSegment(s *segment, segIdx int, path string) error {
	fi, err := s.f.Stat()
	if err != nil {
		return fmt.Errorf("log segment %s: %w", path, err)
	}
	size := fi.Size()
	buf := make([]byte, 1<<20)
	var wstart, wend int64 // the file range buf holds
	var pos int64
	for pos < size {
		if pos+HeaderSize > wend {
			n, err := s.f.ReadAt(buf, pos)
			if n < HeaderSize && err != nil {
				return fmt.Errorf("log segment %s at offset %d: %w", path, pos, errors.Join(err, ErrCorrupt))
			}
			wstart, wend = pos, pos+int64(n)
		}
		hd, err := parseHeader(buf[pos-wstart:])
		if err != nil {
			return fmt.Errorf("log segment %s at offset %d: %w", path, pos, err)
		}
		end := pos + HeaderSize + int64(hd.dataLen)
		if end > size {
			return fmt.Errorf("log segment %s: record %d at offset %d ends past the segment: %w", path, hd.seq, pos, ErrCorrupt)
		}
		if hd.seq != l.next {
			return fmt.Errorf("log segment %s: record seq %d, expected %d: %w", path, hd.seq, l.next, ErrCorrupt)
		}
		if end <= wend {
			// Read with the window anyway: check it.
			if _, _, err := DecodeRecord(buf[pos-wstart : end-wstart]); err != nil {
				return fmt.Errorf("log segment %s at offset %d: %w", path, pos, err)
			}
		}
		r := Record{Seq: hd.seq, Time: time.Unix(0, hd.time).UTC(), Kind: hd.kind, Offset: hd.offset, Length: hd.length}
		if hd.kind == KindMark {
			r.Data = make([]byte, hd.dataLen)
			if _, err := s.f.ReadAt(r.Data, pos+HeaderSize); err != nil {
				return fmt.Errorf("log segment %s: label of mark %d: %w", path, hd.seq, err)
			}
		} else if (hd.kind == KindWrite && uint64(hd.dataLen) != hd.length) || (hd.kind != KindWrite && hd.dataLen != 0) {
			return fmt.Errorf("log segment %s: %v record %d of length %d carries %d bytes: %w", path, hd.kind, hd.seq, hd.length, hd.dataLen, ErrCorrupt)
		}
		if err := r.validateMeta(); err != nil {
			return fmt.Errorf("log segment %s: record %d: %w", path, hd.seq, err)
		}
		l.addMeta(&r, segIdx, pos)
		s.last = r.Seq
		pos = end // past the window: the next read starts here, skipping the data
	}
	s.size = pos
	l.bytes += pos
	return nil
}

// readRecord reads one record; io.EOF at a clean end, another error for a
// torn or corrupt record.
func readRecord(r io.Reader, hbuf []byte, data *[]byte) (Record, int, error) {
	n, err := io.ReadFull(r, hbuf)
	if err == io.EOF {
		return Record{}, 0, io.EOF
	}
	if err != nil {
		return Record{}, 0, fmt.Errorf("short header (%d bytes): %w", n, ErrCorrupt)
	}
	hd, err := parseHeader(hbuf)
	if err != nil {
		return Record{}, 0, err
	}
	need := HeaderSize + int(hd.dataLen)
	if cap(*data) < need {
		*data = make([]byte, need)
	}
	b := (*data)[:need]
	copy(b, hbuf)
	if _, err := io.ReadFull(r, b[HeaderSize:]); err != nil {
		return Record{}, 0, fmt.Errorf("record %d data truncated: %w", hd.seq, ErrCorrupt)
	}
	return DecodeRecord(b)
}

func (l *Log) addMeta(r *Record, seg int, pos int64) {
	m := rec{Seq: r.Seq, TimeNs: r.Time.UnixNano(), Kind: r.Kind, Offset: r.Offset, Length: r.Length, seg: seg, pos: pos}
	if r.Kind == KindMark {
		l.labels[r.Seq] = string(r.Data)
	}
	l.metas = append(l.metas, m)
	if r.Kind == KindWrite || r.Kind == KindZero {
		for b := r.Offset / BlockSize; b < (r.Offset+r.Length)/BlockSize; b++ {
			l.index[b] = append(l.index[b], r.Seq)
		}
	}
	l.next = r.Seq + 1
}

func (l *Log) newSegment() error {
	path := filepath.Join(l.dir, segName(l.next))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("creating log segment: %w", err)
	}
	l.segs = append(l.segs, &segment{first: l.next, last: l.next - 1, f: f})
	if err := syncDir(l.dir); err != nil {
		return err
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("opening directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	return nil
}

// Append writes r to the log. A zero r.Seq gets the next sequence number; a
// non-zero one (a replica receiving records) must equal NextSeq. A zero
// r.Time gets the current time. On error nothing is left in the log.
func (l *Log) Append(r *Record) (uint64, error) {
	if err := r.Validate(); err != nil {
		return 0, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if r.Seq == 0 {
		r.Seq = l.next
	} else if r.Seq != l.next {
		return 0, fmt.Errorf("appending record %d, log expects %d: %w", r.Seq, l.next, ErrNotHeld)
	}
	if r.Time.IsZero() {
		r.Time = time.Now().UTC()
	}
	s := l.segs[len(l.segs)-1]
	if s.size >= l.opts.SegmentBytes {
		// The full segment is synced in the background; Sync waits for it.
		l.syncInBackground(s)
		if err := l.newSegment(); err != nil {
			return 0, err
		}
		s = l.segs[len(l.segs)-1]
	}
	l.buf = r.AppendHeader(l.buf[:0])
	n, err := writeAt(s.f, [][]byte{l.buf, r.Data}, s.size)
	if err != nil {
		if terr := s.f.Truncate(s.size); terr != nil {
			l.logger.Error("truncating failed log append", "err", terr)
		}
		return 0, fmt.Errorf("appending log record %d: %w", r.Seq, err)
	}
	l.addMeta(r, len(l.segs)-1, s.size)
	s.size += int64(n)
	s.last = r.Seq
	l.bytes += int64(n)
	if r.Kind == KindWrite {
		l.dataSize += int64(len(r.Data))
	}
	return r.Seq, nil
}

// maxIOV is the most buffers one pwritev takes (Linux IOV_MAX).
const maxIOV = 1024

// writeAt writes the buffers one after the other at off with pwritev,
// without copying them into one buffer first. It returns the bytes written.
func writeAt(f *os.File, iovs [][]byte, off int64) (int, error) {
	fd := int(f.Fd())
	done := 0
	for len(iovs) > 0 && len(iovs[len(iovs)-1]) == 0 {
		iovs = iovs[:len(iovs)-1]
	}
	for len(iovs) > 0 {
		chunk := iovs[:min(len(iovs), maxIOV)]
		n, err := unix.Pwritev(fd, chunk, off+int64(done))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, &os.PathError{Op: "pwritev", Path: f.Name(), Err: err}
		}
		if n == 0 {
			return done, io.ErrShortWrite
		}
		done += n
		for len(iovs) > 0 && (n > 0 || len(iovs[0]) == 0) {
			if n >= len(iovs[0]) {
				n -= len(iovs[0])
				iovs = iovs[1:]
			} else {
				iovs[0] = iovs[0][n:]
				n = 0
			}
		}
	}
	return done, nil
}

// Unappend removes record seq, which must be the last one, as if it had
// never been appended (the caller failed to apply it and did not
// acknowledge it).
func (l *Log) Unappend(seq uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if seq+1 != l.next || seq < l.first {
		return fmt.Errorf("unappending record %d, last is %d: %w", seq, l.next-1, ErrNotHeld)
	}
	m := l.metas[len(l.metas)-1]
	s := l.segs[m.seg]
	if err := s.f.Truncate(m.pos); err != nil {
		return fmt.Errorf("truncating record %d: %w", seq, err)
	}
	if m.Kind == KindWrite || m.Kind == KindZero {
		for b := m.Offset / BlockSize; b < (m.Offset+m.Length)/BlockSize; b++ {
			seqs := l.index[b]
			if n := len(seqs); n > 0 && seqs[n-1] == seq {
				if n == 1 {
					delete(l.index, b)
				} else {
					l.index[b] = seqs[:n-1]
				}
			}
		}
	}
	l.bytes -= s.size - m.pos
	s.size = m.pos
	s.last = seq - 1
	l.metas = l.metas[:len(l.metas)-1]
	delete(l.labels, seq)
	l.next = seq
	return nil
}

// syncInBackground starts the fsync of a full segment; Sync, Fold and
// Close wait for it.
func (l *Log) syncInBackground(full *segment) {
	done := make(chan struct{})
	full.synced = done
	go func() {
		full.syncErr = full.f.Sync()
		if full.syncErr == nil {
			// A full segment is rarely read again (restores, reads of large
			// writes): leave its pages to others rather than let an
			// append-only log grow the page cache.
			_ = unix.Fadvise(int(full.f.Fd()), 0, 0, unix.FADV_DONTNEED)
		}
		close(done)
	}()
}

// Sync makes everything appended so far durable.
func (l *Log) Sync() error {
	l.mu.RLock()
	s := l.segs[len(l.segs)-1]
	var rolled []*segment
	for _, o := range l.segs[:len(l.segs)-1] {
		if o.synced != nil {
			rolled = append(rolled, o)
		}
	}
	l.mu.RUnlock()
	for _, o := range rolled {
		<-o.synced
		if o.syncErr != nil {
			return fmt.Errorf("syncing CDP log segment: %w", o.syncErr)
		}
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("syncing CDP log: %w", err)
	}
	return nil
}

// FirstSeq is the oldest sequence number held; NextSeq the one the next
// record gets. The log holds [FirstSeq, NextSeq).
func (l *Log) FirstSeq() uint64 { l.mu.RLock(); defer l.mu.RUnlock(); return l.first }

// NextSeq returns the sequence number the next appended record gets.
func (l *Log) NextSeq() uint64 { l.mu.RLock(); defer l.mu.RUnlock(); return l.next }

// Bytes is the size of the log on disk.
func (l *Log) Bytes() int64 { l.mu.RLock(); defer l.mu.RUnlock(); return l.bytes }

// LatestSeq returns the newest record of block blk with sequence number
// <= atSeq, or 0 if the log holds none.
func (l *Log) LatestSeq(blk, atSeq uint64) uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.latestLocked(blk, atSeq)
}

func (l *Log) latestLocked(blk, atSeq uint64) uint64 {
	seqs := l.index[blk]
	i := sort.Search(len(seqs), func(i int) bool { return seqs[i] > atSeq })
	if i == 0 {
		return 0
	}
	return seqs[i-1]
}

// ReadBlock fills p (BlockSize bytes) with block blk as of sequence number
// atSeq, from the newest record of it at or before atSeq. It returns false
// when the log holds no such record (the caller reads a lower layer).
func (l *Log) ReadBlock(blk, atSeq uint64, p []byte) (bool, error) {
	l.mu.RLock()
	seq := l.latestLocked(blk, atSeq)
	if seq == 0 {
		l.mu.RUnlock()
		return false, nil
	}
	m := l.metas[seq-l.first]
	f := l.segs[m.seg].f
	l.mu.RUnlock()
	if m.Kind == KindZero {
		clear(p[:BlockSize])
		return true, nil
	}
	off := m.pos + HeaderSize + int64(blk*BlockSize-m.Offset)
	if _, err := f.ReadAt(p[:BlockSize], off); err != nil {
		return false, fmt.Errorf("reading block %d of record %d: %w", blk, seq, err)
	}
	return true, nil
}

// Locate finds block blk as of sequence number atSeq without reading it:
// the newest record of it at or before atSeq (seq, 0 if none), and either
// zero (a zero record) or the segment file and offset of the block's data.
// The file may be closed by a Fold before the caller reads it; the caller
// then reads the block again (ReadBlock).
func (l *Log) Locate(blk, atSeq uint64) (seq uint64, f *os.File, pos int64, zero bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	seq = l.latestLocked(blk, atSeq)
	if seq == 0 {
		return 0, nil, 0, false
	}
	m := l.metas[seq-l.first]
	if m.Kind == KindZero {
		return seq, nil, 0, true
	}
	return seq, l.segs[m.seg].f, m.pos + HeaderSize + int64(blk*BlockSize-m.Offset), false
}

// Meta returns what the log knows of record seq.
func (l *Log) Meta(seq uint64) (Meta, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if seq < l.first || seq >= l.next {
		return Meta{}, false
	}
	return l.metaOf(l.metas[seq-l.first]), true
}

// Metas calls fn for each record from seq from on, in order, until fn
// returns false.
func (l *Log) Metas(from uint64, fn func(Meta) bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if from < l.first {
		from = l.first
	}
	for s := from; s < l.next; s++ {
		if !fn(l.metaOf(l.metas[s-l.first])) {
			return
		}
	}
}

// SeqAt returns the newest sequence number whose time is <= t (0 if none).
func (l *Log) SeqAt(t time.Time) uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	tn := t.UnixNano()
	i := sort.Search(len(l.metas), func(i int) bool { return l.metas[i].TimeNs > tn })
	if i == 0 {
		return 0
	}
	return l.metas[i-1].Seq
}

// Records reads whole records from seq from up to seq to (inclusive), at
// most maxBytes of data (at least one record if any).
func (l *Log) Records(from, to uint64, maxBytes int) ([]Record, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if from < l.first {
		return nil, fmt.Errorf("reading records from %d, log starts at %d: %w", from, l.first, ErrNotHeld)
	}
	// Choose the records, then read each segment's contiguous run of them
	// with one pread.
	var out []Record
	total := 0
	end := from // one past the last record read
	for ; end < l.next && end <= to; end++ {
		m := l.metas[end-l.first]
		n := HeaderSize + l.recordDataLen(m)
		if end > from && total+n > maxBytes {
			break
		}
		total += n
	}
	to = end
	for s := from; s < to; {
		m := l.metas[s-l.first]
		e := s
		for e < to && l.metas[e-l.first].seg == m.seg {
			e++
		}
		last := l.metas[e-1-l.first]
		end := last.pos + HeaderSize + int64(l.recordDataLen(last))
		buf := make([]byte, end-m.pos)
		if _, err := l.segs[m.seg].f.ReadAt(buf, m.pos); err != nil {
			return nil, fmt.Errorf("reading records %d..%d: %w", s, e-1, err)
		}
		for len(buf) > 0 {
			r, n, err := DecodeRecord(buf)
			if err != nil {
				return nil, fmt.Errorf("reading records %d..%d: %w", s, e-1, err)
			}
			out = append(out, r)
			buf = buf[n:]
		}
		s = e
	}
	return out, nil
}

func (l *Log) recordDataLen(m rec) int {
	switch m.Kind {
	case KindWrite:
		return int(m.Length)
	case KindMark:
		return len(l.labels[m.Seq])
	}
	return 0
}

// metaOf turns the in-memory record into its public description.
func (l *Log) metaOf(m rec) Meta {
	return Meta{Seq: m.Seq, Time: time.Unix(0, m.TimeNs).UTC(), Kind: m.Kind, Offset: m.Offset, Length: m.Length, Label: l.labels[m.Seq]}
}

// AppendBatch appends records with one write. Records with a zero Seq get
// the next sequence numbers (and the current time if Time is zero); records
// that carry theirs (a replica receiving a shipment) must continue the log
// without a gap. On error nothing is left in the log.
func (l *Log) AppendBatch(recs []Record) error {
	if len(recs) == 0 {
		return nil
	}
	for i := range recs {
		if err := recs[i].Validate(); err != nil {
			return err
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now().UTC()
	for i := range recs {
		if recs[i].Seq == 0 {
			recs[i].Seq = l.next + uint64(i)
		}
		if recs[i].Time.IsZero() {
			recs[i].Time = now
		}
		if recs[i].Seq != l.next+uint64(i) {
			return fmt.Errorf("batch record %d, log expects %d: %w", recs[i].Seq, l.next+uint64(i), ErrNotHeld)
		}
	}
	s := l.segs[len(l.segs)-1]
	if s.size >= l.opts.SegmentBytes {
		l.syncInBackground(s)
		if err := l.newSegment(); err != nil {
			return err
		}
		s = l.segs[len(l.segs)-1]
	}
	// The headers go into one buffer; the data is written from where it
	// is, with the headers, by pwritev.
	l.buf = l.buf[:0]
	iovs := make([][]byte, 0, 2*len(recs))
	pos := make([]int64, len(recs))
	at := s.size
	for i := range recs {
		pos[i] = at
		l.buf = recs[i].AppendHeader(l.buf)
		at += HeaderSize + int64(len(recs[i].Data))
	}
	for i := range recs {
		iovs = append(iovs, l.buf[i*HeaderSize:(i+1)*HeaderSize])
		if len(recs[i].Data) > 0 {
			iovs = append(iovs, recs[i].Data)
		}
	}
	n, err := writeAt(s.f, iovs, s.size)
	if err != nil {
		if terr := s.f.Truncate(s.size); terr != nil {
			l.logger.Error("truncating failed log append", "err", terr)
		}
		return fmt.Errorf("appending %d log records from %d: %w", len(recs), recs[0].Seq, err)
	}
	for i := range recs {
		l.addMeta(&recs[i], len(l.segs)-1, pos[i])
	}
	s.size += int64(n)
	s.last = recs[len(recs)-1].Seq
	l.bytes += int64(n)
	return nil
}

// Segments returns the [first, last] sequence ranges of the segments.
func (l *Log) Segments() [][2]uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	out := make([][2]uint64, len(l.segs))
	for i, s := range l.segs {
		out[i] = [2]uint64{s.first, s.last}
	}
	return out
}

// Fold drops the oldest segments whose records are all older than before
// (by time) and have sequence numbers <= maxSeq, never the segment being
// written. apply is called for every dropped write and zero record, oldest
// first, before anything is removed, so the caller can fold them into a base
// image; then commit is called with the last sequence number to be dropped
// (the caller makes its base durable there); if apply or commit fails
// nothing is dropped. It returns the last sequence number dropped (0 if
// none).
func (l *Log) Fold(before time.Time, maxSeq uint64, apply func(Record) error, commit func(upTo uint64) error) (uint64, error) {
	l.mu.RLock()
	n := 0
	for n < len(l.segs)-1 {
		s := l.segs[n]
		if s.last >= s.first && (s.last > maxSeq || l.metas[s.last-l.first].TimeNs >= before.UnixNano()) {
			break
		}
		n++
	}
	var upTo uint64
	if n > 0 {
		upTo = l.segs[n-1].last
	}
	first := l.first
	l.mu.RUnlock()
	if n == 0 || upTo < first {
		return 0, nil
	}
	for seq := first; seq <= upTo; seq++ {
		recs, err := l.Records(seq, seq, 1)
		if err != nil {
			return 0, err
		}
		r := recs[0]
		if r.Kind == KindWrite || r.Kind == KindZero {
			if err := apply(r); err != nil {
				return 0, fmt.Errorf("folding record %d: %w", seq, err)
			}
		}
	}
	if err := commit(upTo); err != nil {
		return 0, fmt.Errorf("committing fold up to %d: %w", upTo, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range l.metas[:upTo-l.first+1] {
		if m.Kind == KindMark {
			delete(l.labels, m.Seq)
		}
		if m.Kind != KindWrite && m.Kind != KindZero {
			continue
		}
		for b := m.Offset / BlockSize; b < (m.Offset+m.Length)/BlockSize; b++ {
			seqs := l.index[b]
			i := sort.Search(len(seqs), func(i int) bool { return seqs[i] > upTo })
			if i == len(seqs) {
				delete(l.index, b)
			} else if i > 0 {
				l.index[b] = append([]uint64(nil), seqs[i:]...)
			}
		}
	}
	for _, s := range l.segs[:n] {
		if s.synced != nil {
			<-s.synced
		}
		s.f.Close()
		if err := os.Remove(filepath.Join(l.dir, segName(s.first))); err != nil {
			return 0, fmt.Errorf("removing folded segment: %w", err)
		}
		l.bytes -= s.size
	}
	l.metas = append([]rec(nil), l.metas[upTo-l.first+1:]...)
	l.segs = append([]*segment(nil), l.segs[n:]...)
	for i := range l.metas {
		l.metas[i].seg -= n
	}
	l.first = upTo + 1
	return upTo, nil
}

func (l *Log) closeFiles() {
	for _, s := range l.segs {
		if s.synced != nil {
			<-s.synced
		}
		s.f.Close()
	}
}

// Close syncs and closes the log.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var err error
	if len(l.segs) > 0 {
		err = l.segs[len(l.segs)-1].f.Sync()
	}
	l.closeFiles()
	l.segs = nil
	return err
}
