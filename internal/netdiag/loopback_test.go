package netdiag

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"
)

// collect is a Sink that keeps records in memory.
type collect struct {
	mu   sync.Mutex
	recs []Record
}

func (c *collect) Record(r Record) {
	c.mu.Lock()
	c.recs = append(c.recs, r)
	c.mu.Unlock()
}

func (c *collect) all() []Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Record(nil), c.recs...)
}

func testConfig() Config {
	cfg := DefaultConfig()
	cfg.Role = "sender"
	cfg.TCPInfoInterval = 20 * time.Millisecond
	return cfg
}

// runLoopback runs sc over real loopback TCP and returns the records and
// the receiver's error.
func runLoopback(t *testing.T, sc scenario, cfg Config, sink Sink) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	rerr := make(chan error, 1)
	go func() { rerr <- serveReceiver(ctx, ln, sc) }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sent, err := runSender(ctx, t, c.(*net.TCPConn), sc, cfg, sink)
	if err != nil {
		t.Fatalf("sender: %v", err)
	}
	if err := <-rerr; err != nil {
		t.Fatalf("receiver: %v", err)
	}
	return sent
}

// TestLoopbackScenarios proves the classifier end to end on real loopback
// TCP: a clean transfer is healthy, a receiver that reads slowly is the
// receiving application, a sender that pauses is the sending application.
func TestLoopbackScenarios(t *testing.T) {
	tests := []struct {
		name string
		sc   scenario
		want Class
		// signal that must have fired (empty for healthy)
		signal string
	}{
		{"clean", scenario{Duration: 1500 * time.Millisecond, MsgSize: 1 << 20, PacingRate: 200e6}, ClassHealthy, ""},
		{"slow reader", scenario{Duration: 1500 * time.Millisecond, MsgSize: 1 << 20, ReadChunk: 64 << 10, ReadSleep: 5 * time.Millisecond}, ClassReceivingApp, "rwnd_limited"},
		{"slow hand-off", scenario{Duration: 1500 * time.Millisecond, MsgSize: 256 << 10, HandoffDelay: 20 * time.Millisecond}, ClassReceivingApp, ""},
		{"pausing sender", scenario{Duration: 1500 * time.Millisecond, MsgSize: 1 << 20, SenderPause: 60 * time.Millisecond}, ClassSendingApp, "sender_idle"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sink := &collect{}
			sent := runLoopback(t, tt.sc, testConfig(), sink)
			recs := sink.all()
			sums := Summarize(recs, 0, "")
			if len(sums) != 1 {
				t.Fatalf("got %d peer summaries, want 1", len(sums))
			}
			v := Classify(sums[0], DefaultThresholds())
			rep := Report{Dir: "(memory)", Verdicts: []Verdict{v}}
			var sb stringsBuilder
			_ = rep.WriteText(&sb)
			t.Logf("sent %d bytes\n%s", sent, sb.String())
			if v.Class != tt.want {
				t.Fatalf("verdict %q, want %q", v.Class, tt.want)
			}
			if tt.signal != "" {
				found := false
				for _, e := range v.Fired(tt.want) {
					found = found || e.Signal == tt.signal
				}
				if !found {
					t.Errorf("signal %s did not fire", tt.signal)
				}
			}
			s := sums[0]
			if s.Writes == 0 || s.Msgs == 0 {
				t.Errorf("writes %d msgs %d: want both recorded", s.Writes, s.Msgs)
			}
			if s.AckTimeP50 <= 0 {
				t.Errorf("no kernel ack timestamps (ack time p50 %v)", s.AckTimeP50)
			}
		})
	}
}

type stringsBuilder struct{ b []byte }

func (s *stringsBuilder) Write(p []byte) (int, error) { s.b = append(s.b, p...); return len(p), nil }
func (s *stringsBuilder) String() string              { return string(s.b) }
