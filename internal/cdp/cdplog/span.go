package cdplog

import (
	"bufio"
	"fmt"
	"io"
	"os"
)

// BytesFrom returns the size on disk of the records from seq on (0 when seq
// is past the end, the whole log when it is before the start).
func (l *Log) BytesFrom(seq uint64) int64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if seq >= l.next {
		return 0
	}
	if seq < l.first {
		return l.bytes
	}
	m := l.metas[seq-l.first]
	n := l.segs[m.seg].size - m.pos
	for _, s := range l.segs[m.seg+1:] {
		n += s.size
	}
	return n
}

// Span is a run of consecutive records as they are encoded in the log's
// segments, readable without copying them first (the source of a bulk
// transfer of a replication backlog). Records are never rewritten, so a
// Span stays valid until the segments holding it are folded or the log is
// closed; reads then fail.
type Span struct {
	// First and Last are the sequence numbers of the first and last
	// record in the span; Size its length in bytes.
	First, Last uint64
	Size        int64
	parts       []spanPart
}

type spanPart struct {
	f        *os.File
	off, n   int64 // in the segment file
	spanFrom int64 // offset of the part in the span
}

// Span returns the records from seq from up to seq to (inclusive), whole
// records up to maxBytes in all (at least one record).
func (l *Log) Span(from, to uint64, maxBytes int64) (*Span, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if from < l.first || from >= l.next {
		return nil, fmt.Errorf("span from %d, log holds %d..%d: %w", from, l.first, l.next-1, ErrNotHeld)
	}
	sp := &Span{First: from, Last: from}
	var size int64
	for seq := from; seq < l.next && seq <= to; seq++ {
		m := l.metas[seq-l.first]
		n := int64(HeaderSize + l.recordDataLen(m))
		if seq > from && size+n > maxBytes {
			break
		}
		if k := len(sp.parts); k > 0 && sp.parts[k-1].f == l.segs[m.seg].f && sp.parts[k-1].off+sp.parts[k-1].n == m.pos {
			sp.parts[k-1].n += n
		} else {
			sp.parts = append(sp.parts, spanPart{f: l.segs[m.seg].f, off: m.pos, n: n, spanFrom: size})
		}
		size += n
		sp.Last = seq
	}
	sp.Size = size
	return sp, nil
}

// ReadAt reads the encoded records at offset off of the span.
func (s *Span) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("span read at %d: negative offset", off)
	}
	done := 0
	for _, pt := range s.parts {
		if done == len(p) {
			break
		}
		pos := off + int64(done)
		if pos >= pt.spanFrom+pt.n || pos < pt.spanFrom {
			continue
		}
		in := pos - pt.spanFrom
		want := min(int64(len(p)-done), pt.n-in)
		n, err := pt.f.ReadAt(p[done:done+int(want)], pt.off+in)
		done += n
		if err != nil {
			return done, fmt.Errorf("reading log span: %w", err)
		}
	}
	if done < len(p) {
		return done, io.EOF
	}
	return done, nil
}

// Reader decodes a stream of encoded records (a Span received elsewhere),
// checking each one's CRC.
type Reader struct {
	br   *bufio.Reader
	hbuf []byte
}

// NewReader returns a Reader of the records encoded in r.
func NewReader(r io.Reader) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, 1<<20), hbuf: make([]byte, HeaderSize)}
}

// Next returns the next record (its Data is its own); io.EOF at a clean
// end, ErrCorrupt for a torn or damaged record.
func (r *Reader) Next() (Record, error) {
	var data []byte
	rec, _, err := readRecord(r.br, r.hbuf, &data)
	return rec, err
}
