package netdiag

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// writeSyntheticLog records, for each peer, a transfer of 100 TCP_INFO
// samples 10 ms apart starting at start, acknowledging 64 KiB per sample,
// busy all the time, and with the given window-limited share.
func writeSyntheticLog(t *testing.T, dir string, start time.Time, peers map[string]float64) {
	t.Helper()
	rec, err := NewRecorder(DefaultRecorderConfig(dir), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	for peer, rwnd := range peers {
		for i := range 100 {
			ts := start.Add(time.Duration(i) * 10 * time.Millisecond)
			us := uint64(i) * 10000
			rec.Record(Record{Time: ts.UnixNano(), Kind: KindTCPInfo, Conn: "c-" + peer, Peer: peer, TCPInfo: &TCPInfoSample{
				RTTus: 10000, MinRTTus: 10000, SndWnd: 1 << 20, SndSsthresh: 100, DataSegsOut: uint32(i * 45),
				BytesAcked: uint64(i) * 64 << 10, BytesSent: uint64(i) * 64 << 10, DeliveryRate: 6 << 20,
				BusyUs: us, RwndLimitedUs: uint64(float64(us) * rwnd),
			}})
		}
	}
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestBuildReport(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	start := now.Add(-10 * time.Minute)
	writeSyntheticLog(t, dir, start, map[string]float64{"198.18.0.2:7000": 0, "198.18.0.3:7000": 0.8})
	tests := []struct {
		name    string
		opts    ReportOptions
		want    map[string]Class
		wantErr error
	}{
		{"all peers", ReportOptions{}, map[string]Class{"198.18.0.2:7000": ClassHealthy, "198.18.0.3:7000": ClassReceivingApp}, nil},
		{"one peer by host", ReportOptions{Peer: "198.18.0.3"}, map[string]Class{"198.18.0.3:7000": ClassReceivingApp}, nil},
		{"window holds the transfer", ReportOptions{Since: 11 * time.Minute}, map[string]Class{"198.18.0.2:7000": ClassHealthy, "198.18.0.3:7000": ClassReceivingApp}, nil},
		{"window after the transfer", ReportOptions{Since: 5 * time.Minute}, nil, ErrNoRecords},
		{"unknown peer", ReportOptions{Peer: "10.0.0.1"}, nil, ErrNoRecords},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.Dir, tt.opts.Now = dir, now
			rep, err := BuildReport(context.Background(), tt.opts)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]Class{}
			for _, v := range rep.Verdicts {
				got[v.Peer] = v.Class
			}
			if len(got) != len(tt.want) {
				t.Fatalf("verdicts %v, want %v", got, tt.want)
			}
			for p, c := range tt.want {
				if got[p] != c {
					t.Errorf("peer %s: %q, want %q", p, got[p], c)
				}
			}
			var b strings.Builder
			if err := rep.WriteText(&b); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(b.String(), "200 records") {
				t.Errorf("text report does not count the log's records:\n%s", b.String())
			}
		})
	}
	if _, err := BuildReport(context.Background(), ReportOptions{Dir: dir, Thresholds: &Thresholds{}}); err == nil {
		t.Fatal("zero thresholds accepted")
	}
}
