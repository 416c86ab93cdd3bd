package cdp

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cdp/cdplog"
)

func appendPayload(vol string, size int64, recs ...cdplog.Record) []byte {
	b := appendName(nil, vol)
	b = binary.BigEndian.AppendUint64(b, uint64(size))
	b = binary.BigEndian.AppendUint32(b, uint32(len(recs)))
	for i := range recs {
		b = recs[i].AppendBinary(b)
	}
	return b
}

func TestHandleRemoteRejectsBadRequests(t *testing.T) {
	s := startSite(t, testConfig(shortDir(t)), nil)
	ctx := context.Background()
	good := cdplog.Record{Seq: 1, Time: time.Now(), Kind: cdplog.KindWrite, Offset: 0, Length: 4096, Data: bytes.Repeat([]byte{7}, 4096)}
	if _, err := s.m.HandleRemote(ctx, MsgAppend, appendPayload("v", 1<<20, good)); err != nil {
		t.Fatal(err)
	}
	corrupt := appendPayload("v", 1<<20, cdplog.Record{Seq: 2, Time: time.Now(), Kind: cdplog.KindWrite, Length: 4096, Data: make([]byte, 4096)})
	corrupt[len(corrupt)-1] ^= 1
	beyond := cdplog.Record{Seq: 2, Time: time.Now(), Kind: cdplog.KindWrite, Offset: 1 << 20, Length: 4096, Data: make([]byte, 4096)}
	tests := []struct {
		name    string
		typ     uint16
		payload []byte
	}{
		{"unknown type", 0x0899, nil},
		{"empty append", MsgAppend, nil},
		{"bad volume name", MsgAppend, appendPayload("../x", 1<<20, good)},
		{"corrupt record", MsgAppend, corrupt},
		{"record beyond size", MsgAppend, appendPayload("v", 1<<20, beyond)},
		{"size changed", MsgAppend, appendPayload("v", 2<<20)},
		{"trailing bytes", MsgAppend, append(appendPayload("v", 1<<20), 1)},
		{"short fetch", MsgFetch, appendName(nil, "v")},
		{"fetch unknown volume", MsgFetch, binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(appendName(nil, "nope"), 0), 4096), 1)},
		{"fetch out of range", MsgFetch, binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(appendName(nil, "v"), 1<<20), 4096), 1)},
		{"fetch future seq", MsgFetch, binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(appendName(nil, "v"), 0), 4096), 9)},
		{"timeline not json", MsgTimeline, []byte("{")},
		{"resolve unknown mark", MsgResolve, []byte(`{"volume":"v","at":"nope"}`)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := s.m.HandleRemote(ctx, tc.typ, tc.payload); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	rv, _ := s.m.replica("v")
	if rv.log.NextSeq() != 2 {
		t.Fatalf("bad requests changed the remote log: next %d", rv.log.NextSeq())
	}
	// Duplicates are skipped and a gap stops the append.
	gap := cdplog.Record{Seq: 5, Time: time.Now(), Kind: cdplog.KindFlush}
	resp, err := s.m.HandleRemote(ctx, MsgAppend, appendPayload("v", 1<<20, good, gap))
	if err != nil || binary.BigEndian.Uint64(resp) != 1 {
		t.Fatalf("append of a duplicate and a gap: %x %v, want acked 1", resp, err)
	}
	out, err := s.m.HandleRemote(ctx, MsgTimeline, []byte(`{"volume":"v"}`))
	var tl Timeline
	if err != nil || json.Unmarshal(out, &tl) != nil || tl.LastSeq != 1 {
		t.Fatalf("timeline: %s %v", out, err)
	}
}

func FuzzHandleRemote(f *testing.F) {
	rec := cdplog.Record{Seq: 1, Time: time.Unix(1, 0), Kind: cdplog.KindWrite, Length: 4096, Data: make([]byte, 4096)}
	f.Add(MsgAppend, appendPayload("v", 1<<20, rec))
	f.Add(MsgFetch, binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(appendName(nil, "v"), 0), 4096), 1))
	f.Add(MsgTimeline, []byte(`{"volume":"v","query":{"limit":3}}`))
	f.Add(MsgResolve, []byte(`{"volume":"v","at":"now"}`))
	f.Add(MsgIngest, []byte(`{"volume":"v","size":1048576,"first":1,"last":1}`))
	f.Add(MsgBase, append(binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(appendName(nil, "v"), 1<<20), 4096), make([]byte, 4096)...))
	cfg := DefaultConfig(f.TempDir())
	cfg.BacklogDir = f.TempDir()
	m, err := New(context.Background(), cfg, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { m.Close() })
	f.Fuzz(func(t *testing.T, typ uint16, payload []byte) {
		resp, err := m.HandleRemote(context.Background(), typ, payload)
		if err != nil {
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrFolded) && !errors.Is(err, cdplog.ErrCorrupt) {
				t.Logf("error not classified: %v", err)
			}
			return
		}
		if typ == MsgAppend {
			vol, _, _ := readName(payload)
			rv, err := m.replica(vol)
			if err != nil {
				t.Fatalf("append succeeded but no replica: %v", err)
			}
			if got := binary.BigEndian.Uint64(resp); got != rv.log.NextSeq()-1 {
				t.Fatalf("acked %d, log ends at %d", got, rv.log.NextSeq()-1)
			}
		}
	})
}

// TestIngestChecksTheBacklog hands the remote a backlog file (as a bulk
// transfer leaves it) with a damaged record: the ingest is refused and the
// remote log keeps nothing of it; the intact file is taken whole and
// removed.
func TestIngestChecksTheBacklog(t *testing.T) {
	cfg := testConfig(shortDir(t))
	cfg.BacklogDir = shortDir(t)
	s := startSite(t, cfg, nil)
	var enc []byte
	for i := uint64(1); i <= 3; i++ {
		r := cdplog.Record{Seq: i, Time: time.Unix(int64(i), 0), Kind: cdplog.KindWrite, Offset: (i - 1) * 4096, Length: 4096, Data: bytes.Repeat([]byte{byte(i)}, 4096)}
		enc = r.AppendBinary(enc)
	}
	file := filepath.Join(cfg.BacklogDir, BacklogFile("v", 1, 3))
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		t.Fatal(err)
	}
	caller := CallerFunc(s.m.HandleRemote)
	bad := append([]byte(nil), enc...)
	bad[len(bad)/2] ^= 1
	if err := os.WriteFile(file, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Ingest(context.Background(), caller, "v", 1<<20, 1, 3); !errors.Is(err, ErrInvalid) {
		t.Fatalf("damaged backlog: %v, want ErrInvalid", err)
	}
	if rv, err := s.m.replica("v"); err == nil && rv.log.NextSeq() != 1 {
		t.Fatalf("the remote log took %d records of a damaged backlog", rv.log.NextSeq()-1)
	}
	if err := os.WriteFile(file, enc, 0o600); err != nil {
		t.Fatal(err)
	}
	acked, err := Ingest(context.Background(), caller, "v", 1<<20, 1, 3)
	if err != nil || acked != 3 {
		t.Fatalf("intact backlog: acked %d, %v", acked, err)
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Fatalf("backlog file left after ingest: %v", err)
	}
	rv, _ := s.m.replica("v")
	got := make([]byte, 3*4096)
	if err := rv.readAtSeq(context.Background(), got, 0, 3); err != nil || got[0] != 1 || got[4096] != 2 || got[8192] != 3 {
		t.Fatalf("remote log after ingest: %v", err)
	}
}
