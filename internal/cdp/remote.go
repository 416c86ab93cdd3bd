package cdp

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"time"

	"github.com/holdfast/holdfast/internal/cdp/cdplog"
)

// Remote is the CDP log of a volume held on another agent. The Manager on
// that agent serves it (HandleRemote); this agent reaches it through a
// Caller (the agent-to-agent wire).
type Remote interface {
	// Append stores records (contiguous sequence numbers) in the remote
	// log of vol, creating it with size on first use, and returns the last
	// sequence number the remote log holds durably.
	Append(ctx context.Context, vol string, size int64, recs []cdplog.Record) (uint64, error)
	// Fetch reads n bytes at off of vol as of sequence number atSeq.
	Fetch(ctx context.Context, vol string, off int64, n int, atSeq uint64) ([]byte, error)
	// Timeline lists the restorable points the remote log holds.
	Timeline(ctx context.Context, vol string, q TimelineQuery) (Timeline, error)
	// Resolve turns a TIME, SEQ or MARK into a point of the remote log.
	Resolve(ctx context.Context, vol, at string) (Point, error)
	// WriteBase stores data at off in the base image of the remote log of
	// vol: the content a restored volume started from, which its own log
	// does not hold. Empty data makes what was stored durable.
	WriteBase(ctx context.Context, vol string, size, off int64, data []byte) error
}

// Caller makes request/response calls to another agent; the signature is
// that of (*wire.Session).Call.
type Caller interface {
	Call(ctx context.Context, msgType uint16, payload []byte) ([]byte, error)
}

// CallerFunc adapts a function to Caller.
type CallerFunc func(ctx context.Context, msgType uint16, payload []byte) ([]byte, error)

// Call calls f.
func (f CallerFunc) Call(ctx context.Context, msgType uint16, payload []byte) ([]byte, error) {
	return f(ctx, msgType, payload)
}

// Message types of the remote CDP log protocol (capability 8: 0x08xx).
const (
	MsgAppend   uint16 = 0x0801
	MsgFetch    uint16 = 0x0802
	MsgTimeline uint16 = 0x0803
	MsgResolve  uint16 = 0x0804
	// MsgIngest asks the remote to take into its log a backlog of records
	// that a bulk transfer put in its BacklogDir (see BacklogShipper).
	MsgIngest uint16 = 0x0805
	// MsgBase stores a range of the content a volume started from (a
	// restored volume's restore point) in the remote log's base image.
	MsgBase uint16 = 0x0806
)

// MsgTypes lists the message types HandleRemote serves.
var MsgTypes = []uint16{MsgAppend, MsgFetch, MsgTimeline, MsgResolve, MsgIngest, MsgBase}

// MaxBaseBytes bounds one MsgBase request's data.
const MaxBaseBytes = 4 << 20

func (r callerRemote) WriteBase(ctx context.Context, vol string, size, off int64, data []byte) error {
	b := appendName(nil, vol)
	b = binary.BigEndian.AppendUint64(b, uint64(size))
	b = binary.BigEndian.AppendUint64(b, uint64(off))
	b = append(b, data...)
	if _, err := r.c.Call(ctx, MsgBase, b); err != nil {
		return fmt.Errorf("remote base of %s at %d: %w", vol, off, err)
	}
	return nil
}

// BacklogShipper is implemented by a Remote that can move a large backlog
// (after the remote was unreachable, or a new remote for a volume with
// history) with the bulk transfer instead of request/response calls:
// ShipBacklog copies the span's encoded records to the remote agent's
// BacklogDir under BacklogFile(vol, first, last) and then has the remote
// ingest them (MsgIngest), returning the last sequence number the remote
// log holds durably. An error wrapping ErrUnreachable means the remote
// agent could not be reached at all.
type BacklogShipper interface {
	ShipBacklog(ctx context.Context, vol string, size int64, sp *cdplog.Span) (uint64, error)
}

// ErrUnreachable reports that the remote agent could not be reached.
var ErrUnreachable = errors.New("remote agent unreachable")

// BacklogFile is where, relative to the remote agent's BacklogDir, a bulk
// transfer puts the backlog of records first..last of vol.
func BacklogFile(vol string, first, last uint64) string {
	return path.Join("cdp-backlog", fmt.Sprintf("%s-%016x-%016x.log", vol, first, last))
}

type ingestReq struct {
	Volume string `json:"volume"`
	Size   int64  `json:"size"`
	First  uint64 `json:"first"`
	Last   uint64 `json:"last"`
}

// Ingest asks the remote behind c to take the backlog file of records
// first..last of vol (already in its BacklogDir) into its log, and returns
// the last sequence number its log holds durably.
func Ingest(ctx context.Context, c Caller, vol string, size int64, first, last uint64) (uint64, error) {
	b, _ := json.Marshal(ingestReq{Volume: vol, Size: size, First: first, Last: last})
	resp, err := c.Call(ctx, MsgIngest, b)
	if err != nil {
		return 0, fmt.Errorf("remote ingest of %s %d..%d: %w", vol, first, last, err)
	}
	if len(resp) != 8 {
		return 0, fmt.Errorf("remote ingest of %s: reply of %d bytes: %w", vol, len(resp), ErrInvalid)
	}
	return binary.BigEndian.Uint64(resp), nil
}

// Limits of the remote protocol.
const (
	// MaxAppendBytes bounds one Append request.
	MaxAppendBytes = 64 << 20
	// MaxFetchBytes bounds one Fetch.
	MaxFetchBytes = 16 << 20
	maxVolName    = 64
)

// NewRemote returns a Remote reached through c.
func NewRemote(c Caller) Remote { return callerRemote{c} }

type callerRemote struct{ c Caller }

func appendName(b []byte, name string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(name)))
	return append(b, name...)
}

func readName(b []byte) (string, []byte, error) {
	if len(b) < 2 {
		return "", nil, fmt.Errorf("short message: %w", ErrInvalid)
	}
	n := int(binary.BigEndian.Uint16(b))
	if n > maxVolName || len(b) < 2+n {
		return "", nil, fmt.Errorf("bad volume name length %d: %w", n, ErrInvalid)
	}
	name := string(b[2 : 2+n])
	if err := validName(name); err != nil {
		return "", nil, err
	}
	return name, b[2+n:], nil
}

func (r callerRemote) Append(ctx context.Context, vol string, size int64, recs []cdplog.Record) (uint64, error) {
	b := appendName(nil, vol)
	b = binary.BigEndian.AppendUint64(b, uint64(size))
	b = binary.BigEndian.AppendUint32(b, uint32(len(recs)))
	for i := range recs {
		b = recs[i].AppendBinary(b)
	}
	resp, err := r.c.Call(ctx, MsgAppend, b)
	if err != nil {
		return 0, fmt.Errorf("remote append to %s: %w", vol, err)
	}
	if len(resp) != 8 {
		return 0, fmt.Errorf("remote append to %s: reply of %d bytes: %w", vol, len(resp), ErrInvalid)
	}
	return binary.BigEndian.Uint64(resp), nil
}

func (r callerRemote) Fetch(ctx context.Context, vol string, off int64, n int, atSeq uint64) ([]byte, error) {
	b := appendName(nil, vol)
	b = binary.BigEndian.AppendUint64(b, uint64(off))
	b = binary.BigEndian.AppendUint32(b, uint32(n))
	b = binary.BigEndian.AppendUint64(b, atSeq)
	resp, err := r.c.Call(ctx, MsgFetch, b)
	if err != nil {
		return nil, fmt.Errorf("remote fetch of %s %d+%d@%d: %w", vol, off, n, atSeq, err)
	}
	if len(resp) != n {
		return nil, fmt.Errorf("remote fetch of %s: %d bytes instead of %d: %w", vol, len(resp), n, ErrInvalid)
	}
	return resp, nil
}

type timelineReq struct {
	Volume string        `json:"volume"`
	Query  TimelineQuery `json:"query"`
}

type resolveReq struct {
	Volume string `json:"volume"`
	At     string `json:"at"`
}

func (r callerRemote) Timeline(ctx context.Context, vol string, q TimelineQuery) (Timeline, error) {
	var tl Timeline
	b, _ := json.Marshal(timelineReq{Volume: vol, Query: q})
	resp, err := r.c.Call(ctx, MsgTimeline, b)
	if err != nil {
		return tl, fmt.Errorf("remote timeline of %s: %w", vol, err)
	}
	if err := json.Unmarshal(resp, &tl); err != nil {
		return tl, fmt.Errorf("decoding remote timeline of %s: %w", vol, err)
	}
	return tl, nil
}

func (r callerRemote) Resolve(ctx context.Context, vol, at string) (Point, error) {
	var p Point
	b, _ := json.Marshal(resolveReq{Volume: vol, At: at})
	resp, err := r.c.Call(ctx, MsgResolve, b)
	if err != nil {
		return p, fmt.Errorf("resolving %q on the remote log of %s: %w", at, vol, err)
	}
	if err := json.Unmarshal(resp, &p); err != nil {
		return p, fmt.Errorf("decoding remote point of %s: %w", vol, err)
	}
	return p, nil
}

// HandleRemote serves one request of the remote CDP log protocol from
// another agent: it is the transport-neutral handler to register on the
// wire for each of MsgTypes. Malformed requests get an error, never a
// panic, and change nothing.
func (m *Manager) HandleRemote(ctx context.Context, msgType uint16, payload []byte) ([]byte, error) {
	switch msgType {
	case MsgAppend:
		return m.handleAppend(ctx, payload)
	case MsgFetch:
		vol, rest, err := readName(payload)
		if err != nil {
			return nil, err
		}
		if len(rest) != 20 {
			return nil, fmt.Errorf("fetch request of %d bytes: %w", len(rest), ErrInvalid)
		}
		off := int64(binary.BigEndian.Uint64(rest))
		n := binary.BigEndian.Uint32(rest[8:])
		seq := binary.BigEndian.Uint64(rest[12:])
		if n > MaxFetchBytes {
			return nil, fmt.Errorf("fetch of %d bytes exceeds %d: %w", n, MaxFetchBytes, ErrInvalid)
		}
		rv, err := m.replica(vol)
		if err != nil {
			return nil, err
		}
		buf := make([]byte, n)
		if err := rv.readAtSeq(ctx, buf, off, seq); err != nil {
			return nil, err
		}
		return buf, nil
	case MsgTimeline:
		var req timelineReq
		if err := json.Unmarshal(payload, &req); err != nil {
			return nil, fmt.Errorf("decoding timeline request: %w: %w", err, ErrInvalid)
		}
		rv, err := m.replica(req.Volume)
		if err != nil {
			return nil, err
		}
		tl, err := rv.timeline(req.Query)
		if err != nil {
			return nil, err
		}
		return json.Marshal(tl)
	case MsgIngest:
		var req ingestReq
		if err := json.Unmarshal(payload, &req); err != nil {
			return nil, fmt.Errorf("decoding ingest request: %w: %w", err, ErrInvalid)
		}
		acked, err := m.ingest(ctx, req)
		if err != nil {
			return nil, err
		}
		return binary.BigEndian.AppendUint64(nil, acked), nil
	case MsgBase:
		vol, rest, err := readName(payload)
		if err != nil {
			return nil, err
		}
		if len(rest) < 16 || len(rest)-16 > MaxBaseBytes || (len(rest)-16)%bs != 0 {
			return nil, fmt.Errorf("base request of %d bytes: %w", len(rest), ErrInvalid)
		}
		size := int64(binary.BigEndian.Uint64(rest))
		off := int64(binary.BigEndian.Uint64(rest[8:]))
		data := rest[16:]
		if off < 0 || off%bs != 0 || off+int64(len(data)) > size || off+int64(len(data)) < off {
			return nil, fmt.Errorf("base range %d+%d of a %d-byte volume: %w", off, len(data), size, ErrInvalid)
		}
		rv, err := m.replicaFor(vol, size)
		if err != nil {
			return nil, err
		}
		if len(data) == 0 {
			return nil, rv.commitBase()
		}
		return nil, rv.writeBase(off, data)
	case MsgResolve:
		var req resolveReq
		if err := json.Unmarshal(payload, &req); err != nil {
			return nil, fmt.Errorf("decoding resolve request: %w: %w", err, ErrInvalid)
		}
		rv, err := m.replica(req.Volume)
		if err != nil {
			return nil, err
		}
		if req.At == sizeQuery {
			return json.Marshal(Point{Kind: "size", Length: uint64(rv.size)})
		}
		p, err := rv.resolve(req.At)
		if err != nil {
			return nil, err
		}
		return json.Marshal(p)
	}
	return nil, fmt.Errorf("unknown CDP message type %#x: %w", msgType, ErrInvalid)
}

func (m *Manager) handleAppend(ctx context.Context, payload []byte) ([]byte, error) {
	if len(payload) > MaxAppendBytes {
		return nil, fmt.Errorf("append of %d bytes exceeds %d: %w", len(payload), MaxAppendBytes, ErrInvalid)
	}
	vol, rest, err := readName(payload)
	if err != nil {
		return nil, err
	}
	if len(rest) < 12 {
		return nil, fmt.Errorf("short append request: %w", ErrInvalid)
	}
	size := int64(binary.BigEndian.Uint64(rest))
	count := binary.BigEndian.Uint32(rest[8:])
	rest = rest[12:]
	recs := make([]cdplog.Record, 0, min(count, 4096))
	for i := uint32(0); i < count; i++ {
		r, n, err := cdplog.DecodeRecord(rest)
		if err != nil {
			return nil, fmt.Errorf("append record %d of %d: %w", i, count, errors.Join(err, ErrInvalid))
		}
		if err := checkShipped(r, size); err != nil {
			return nil, err
		}
		recs = append(recs, r)
		rest = rest[n:]
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%d trailing bytes after append records: %w", len(rest), ErrInvalid)
	}
	rv, err := m.replicaFor(vol, size)
	if err != nil {
		return nil, err
	}
	acked, err := rv.appendReplica(ctx, recs)
	if err != nil {
		return nil, err
	}
	return binary.BigEndian.AppendUint64(nil, acked), nil
}

// writeBase stores base content of a replica; commitBase makes what was
// stored durable (the sender's last, empty, range).
func (v *Volume) writeBase(off int64, data []byte) error {
	v.baseMu.Lock()
	defer v.baseMu.Unlock()
	if _, err := v.base.WriteAt(data, off); err != nil {
		return fmt.Errorf("writing replica base: %w", err)
	}
	for b := uint64(off) / bs; b < uint64(off+int64(len(data)))/bs; b++ {
		v.baseBits.set(b)
	}
	return nil
}

func (v *Volume) commitBase() error {
	v.baseMu.Lock()
	defer v.baseMu.Unlock()
	if err := v.base.Sync(); err != nil {
		return fmt.Errorf("syncing replica base: %w", err)
	}
	return v.baseBits.save(v.path("base.bits"))
}

func checkShipped(r cdplog.Record, size int64) error {
	if (r.Kind == cdplog.KindWrite || r.Kind == cdplog.KindZero) && (r.Offset+r.Length > uint64(size) || r.Offset+r.Length < r.Offset) {
		return fmt.Errorf("shipped record %d beyond the volume size %d: %w", r.Seq, size, ErrInvalid)
	}
	return nil
}

// ingestBatchBytes bounds the records appended to a replica at once while
// ingesting a backlog.
const ingestBatchBytes = 8 << 20

// ingest takes a backlog that a bulk transfer put in BacklogDir into the
// replica log (duplicates skipped, as for Append) and removes the file.
func (m *Manager) ingest(ctx context.Context, req ingestReq) (uint64, error) {
	if m.cfg.BacklogDir == "" {
		return 0, fmt.Errorf("this agent takes no bulk backlogs (no BacklogDir): %w", ErrInvalid)
	}
	if err := validName(req.Volume); err != nil {
		return 0, err
	}
	if req.First == 0 || req.Last < req.First {
		return 0, fmt.Errorf("ingest of records %d..%d: %w", req.First, req.Last, ErrInvalid)
	}
	file := filepath.Join(m.cfg.BacklogDir, filepath.FromSlash(BacklogFile(req.Volume, req.First, req.Last)))
	f, err := os.Open(file)
	if err != nil {
		return 0, fmt.Errorf("opening backlog of %s: %w", req.Volume, err)
	}
	defer func() {
		f.Close()
		os.Remove(file)
	}()
	rv, err := m.replicaFor(req.Volume, req.Size)
	if err != nil {
		return 0, err
	}
	rd := cdplog.NewReader(f)
	var batch []cdplog.Record
	var acked uint64
	n := 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		a, err := rv.appendReplica(ctx, batch)
		if err != nil {
			return err
		}
		acked = a
		if acked < batch[len(batch)-1].Seq {
			return fmt.Errorf("backlog of %s: the remote log ends at %d, before record %d: %w", req.Volume, acked, batch[0].Seq, ErrInvalid)
		}
		batch, n = batch[:0], 0
		return nil
	}
	next := req.First
	for {
		r, err := rd.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("backlog of %s at record %d: %w", req.Volume, next, errors.Join(err, ErrInvalid))
		}
		if r.Seq != next || r.Seq > req.Last {
			return 0, fmt.Errorf("backlog of %s: record %d where %d was expected: %w", req.Volume, r.Seq, next, ErrInvalid)
		}
		if err := checkShipped(r, req.Size); err != nil {
			return 0, err
		}
		next++
		batch = append(batch, r)
		if n += len(r.Data); n >= ingestBatchBytes {
			if err := flush(); err != nil {
				return 0, err
			}
		}
	}
	if err := flush(); err != nil {
		return 0, err
	}
	if next != req.Last+1 {
		return 0, fmt.Errorf("backlog of %s ends at record %d, not %d: %w", req.Volume, next-1, req.Last, ErrInvalid)
	}
	m.logger.Info("took a bulk backlog into the remote log", "volume", req.Volume, "first", req.First, "last", req.Last, "acked", acked)
	return acked, nil
}

// replicaGapWait is how long an append that starts after the end of a
// replica log waits for the shipment before it: the wire serves requests
// concurrently, so shipments sent in order may arrive out of order.
const replicaGapWait = 2 * time.Second

// appendReplica stores records in a replica log: duplicates are skipped; a
// shipment that starts beyond the end of the log waits (up to
// replicaGapWait) for the ones before it, and a gap that remains stops the
// append. The records are durable when it returns (appends that arrive
// together share one fsync); the reply tells the sender where to resume.
func (v *Volume) appendReplica(ctx context.Context, recs []cdplog.Record) (uint64, error) {
	if len(recs) == 0 {
		return v.log.NextSeq() - 1, nil
	}
	var timeout <-chan time.Time
	for {
		v.wmu.Lock()
		next := v.log.NextSeq()
		if recs[0].Seq <= next {
			break // v.wmu held
		}
		arrived := v.arrived
		v.wmu.Unlock()
		if timeout == nil {
			t := time.NewTimer(replicaGapWait)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-arrived:
		case <-timeout:
			return next - 1, nil
		case <-ctx.Done():
			return next - 1, nil
		}
	}
	next := v.log.NextSeq()
	i := 0
	for i < len(recs) && recs[i].Seq < next {
		i++ // already held
	}
	j := i
	for j < len(recs) && recs[j].Seq == next+uint64(j-i) {
		j++ // contiguous; a gap ends the batch
	}
	if j > i {
		if err := v.log.AppendBatch(recs[i:j]); err != nil {
			v.wmu.Unlock()
			return 0, fmt.Errorf("storing replica records %d..%d: %w", recs[i].Seq, recs[j-1].Seq, err)
		}
		close(v.arrived)
		v.arrived = make(chan struct{})
	}
	last := v.log.NextSeq() - 1
	v.wmu.Unlock()
	if err := v.syncReplica(last); err != nil {
		return 0, err
	}
	return last, nil
}

// syncReplica makes the replica log durable up to seq at least. Appends
// waiting here at once share one fsync: the first syncs everything written
// so far, the others find their records already durable.
func (v *Volume) syncReplica(seq uint64) error {
	v.syncMu.Lock()
	defer v.syncMu.Unlock()
	if v.syncedSeq >= seq {
		return nil
	}
	upTo := v.log.NextSeq() - 1
	if err := v.log.Sync(); err != nil {
		return err
	}
	v.syncedSeq = upTo
	return nil
}
