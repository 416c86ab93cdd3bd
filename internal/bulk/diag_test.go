package bulk

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/netdiag"
)

// memSink keeps netdiag records in memory.
type memSink struct {
	mu   sync.Mutex
	recs []netdiag.Record
}

func (m *memSink) Record(r netdiag.Record) {
	m.mu.Lock()
	m.recs = append(m.recs, r)
	m.mu.Unlock()
}

// TestDiagnosticsRecordEveryBlock: a client with Diag set records, on every
// connection it dials, an open record, each data block as a message with
// its transit split into network and receiving-application time, kernel
// transmit timestamps of sampled writes, and TCP_INFO samples.
func TestDiagnosticsRecordEveryBlock(t *testing.T) {
	p := newPair(t)
	sink := &memSink{}
	dcfg := netdiag.DefaultConfig()
	dcfg.TCPInfoInterval = 5 * time.Millisecond
	dcfg.WriteSampleInterval = 0
	cl, err := NewClient(ClientConfig{TLS: p.id.ClientTLS(testLogger(t)), Node: p.id.Name, Logger: testLogger(t), Diag: sink, DiagConfig: dcfg})
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "f")
	data := writeRandom(t, src, 8<<20)
	rep, err := cl.SendFiles(context.Background(), p.addr, []string{src}, "out", Options{Streams: 2, BlockSize: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	mustEqualFile(t, filepath.Join(p.root, "out"), data)
	cl.Close()

	sink.mu.Lock()
	defer sink.mu.Unlock()
	opens, tcp, kernel, ended := 0, 0, 0, 0
	msgs := map[string]map[uint64]bool{}
	for _, r := range sink.recs {
		switch {
		case r.Open != nil:
			opens++
			if r.Open.Role != "bulk-sender" || r.Peer != p.addr {
				t.Errorf("open record role %q peer %q, want bulk-sender and %s", r.Open.Role, r.Peer, p.addr)
			}
		case r.TCPInfo != nil:
			tcp++
		case r.Write != nil && r.Write.Acked != 0:
			kernel++
		case r.Msg != nil:
			m := r.Msg
			if msgs[r.Conn] == nil {
				msgs[r.Conn] = map[uint64]bool{}
			}
			if msgs[r.Conn][m.ID] {
				t.Errorf("message %d recorded twice on %s", m.ID, r.Conn)
			}
			msgs[r.Conn][m.ID] = true
			if m.Transit <= 0 || m.Network < 0 || m.ReceiverApp < 0 || m.Network+m.ReceiverApp != m.Transit {
				t.Errorf("message %d: transit %d = network %d + receiver %d does not hold", m.ID, m.Transit, m.Network, m.ReceiverApp)
			}
			if m.End < m.Offset+uint64(m.Size) {
				t.Errorf("message %d ends at %d, before offset %d + size %d", m.ID, m.End, m.Offset, m.Size)
			}
			if m.End > m.Offset+uint64(m.Size) {
				ended++ // SentEnd placed it past the TLS overhead (unless its ack came first)
			}
		}
	}
	if opens != len(rep.Conns) {
		t.Errorf("%d open records for %d connections", opens, len(rep.Conns))
	}
	n := 0
	for _, ids := range msgs {
		n += len(ids)
	}
	if want := len(data) / (256 << 10); n < want {
		t.Errorf("%d block messages recorded, want at least %d (one per block)", n, want)
	}
	if ended == 0 {
		t.Error("no message's end was moved past TLS and framing overhead (ConnMonitor.SentEnd)")
	}
	if tcp == 0 {
		t.Error("no TCP_INFO samples recorded")
	}
	if kernel == 0 {
		t.Error("no write carries a kernel acknowledgement timestamp")
	}
	t.Logf("%d records: %d opens, %d messages, %d TCP_INFO samples, %d kernel-acked writes", len(sink.recs), opens, n, tcp, kernel)
}
