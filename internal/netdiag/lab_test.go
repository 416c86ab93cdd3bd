package netdiag

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/lab"
)

// TestLabProofs runs real TCP transfers between two lab hosts over the
// userspace WAN emulator and checks the verdicts: delay and loss added on
// the path mid-transfer → network; a receiver that reads slowly →
// receiving application; a sender that pauses → sending application; a
// clean path → healthy. Needs root (skips otherwise); CI runs it.
func TestLabProofs(t *testing.T) {
	clean, err := lab.ParsePath("rate 50Mbit, rtt 10ms, queue 512KiB")
	if err != nil {
		t.Fatal(err)
	}
	bad, err := lab.ParsePath("rate 50Mbit, rtt 60ms, loss 1%")
	if err != nil {
		t.Fatal(err)
	}
	l := lab.New(t, lab.Config{Hosts: 2, Path: clean})
	tests := []struct {
		name string
		sc   scenario
		// degrade, if set, switches the path to bad this long into the
		// transfer; the report window starts there.
		degrade time.Duration
		want    Class
		signals []string
	}{
		// The clean transfer is paced under the path's rate, so no queue
		// builds and the deep queue only absorbs the bursts the emulator
		// releases when this shared machine deschedules it. An unpaced
		// cubic flow would overflow the queue now and then: real loss,
		// rightly "network".
		{"clean path", scenario{Duration: 2 * time.Second, MsgSize: 256 << 10, PacingRate: 4_000_000}, 0, ClassHealthy, nil},
		{"delay and loss", scenario{Duration: 3 * time.Second, MsgSize: 256 << 10}, time.Second, ClassNetwork, []string{"retransmits", "rtt_inflation"}},
		{"slow reader", scenario{Duration: 2 * time.Second, MsgSize: 256 << 10, ReadChunk: 64 << 10, ReadSleep: 20 * time.Millisecond, RecvBuf: 256 << 10}, 0, ClassReceivingApp, []string{"slow_consumer"}},
		{"pausing sender", scenario{Duration: 2 * time.Second, MsgSize: 256 << 10, SenderPause: 200 * time.Millisecond}, 0, ClassSendingApp, []string{"sender_idle"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, drops := runLabScenario(t, l, clean, bad, uint16(7000+10*i), tt.sc, tt.degrade)
			// A clean path must not lose packets. When the emulator, starved
			// of CPU, overflowed its queue anyway, the precondition failed:
			// run again (on another port) rather than judge the verdict.
			for attempt := 1; tt.want == ClassHealthy && drops > 0 && attempt < 3; attempt++ {
				t.Logf("emulator dropped %d packets on the clean path (machine overloaded); running again", drops)
				v, drops = runLabScenario(t, l, clean, bad, uint16(7000+10*i+attempt), tt.sc, tt.degrade)
			}
			if tt.want == ClassHealthy && drops > 0 {
				t.Fatalf("emulator dropped %d packets on the clean path in every attempt: the machine is too loaded for this test", drops)
			}
			if v.Class != tt.want {
				t.Fatalf("verdict %q, want %q", v.Class, tt.want)
			}
			for _, sig := range tt.signals {
				found := false
				for _, e := range v.Fired(tt.want) {
					found = found || e.Signal == sig
				}
				if !found {
					t.Errorf("signal %s did not fire", sig)
				}
			}
		})
	}
}

// runLabScenario runs one scenario from host 0 to host 1 on port and
// returns the verdict and the packets the emulator dropped on the way.
func runLabScenario(t *testing.T, l *lab.Lab, clean, bad lab.Path, port uint16, sc scenario, degrade time.Duration) (Verdict, uint64) {
	t.Helper()
	if err := l.SetPath(0, 1, clean); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv, cli := l.Host(1), l.Host(0)
	addr := srv.AddrPort(port).String()
	ln, err := srv.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	before := l.Stats(0, 1).Total.Drops()
	rerr := make(chan error, 1)
	go func() { rerr <- serveReceiver(ctx, ln, sc) }()
	c, err := cli.Dial(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var since atomic.Int64
	if degrade > 0 {
		timer := time.AfterFunc(degrade, func() {
			since.Store(time.Now().UnixNano())
			if err := l.SetPath(0, 1, bad); err != nil {
				t.Errorf("degrading path: %v", err)
			}
		})
		defer timer.Stop()
	}
	sink := &collect{}
	sent, err := runSender(ctx, t, c.(*net.TCPConn), sc, testConfig(), sink)
	if err != nil {
		t.Fatalf("sender: %v", err)
	}
	if err := <-rerr; err != nil {
		t.Fatalf("receiver: %v", err)
	}
	if degrade > 0 && since.Load() == 0 {
		t.Fatal("path was never degraded")
	}
	st := l.Stats(0, 1)
	sums := Summarize(sink.all(), since.Load(), "")
	if len(sums) != 1 {
		t.Fatalf("got %d peer summaries, want 1", len(sums))
	}
	v := Classify(sums[0], DefaultThresholds())
	var sb stringsBuilder
	_ = Report{Dir: "(memory)", Verdicts: []Verdict{v}}.WriteText(&sb)
	t.Logf("sent %d bytes; emulator 0→1 so far: %d packets in, %d random-loss drops, %d queue drops\n%s",
		sent, st.Total.InPackets, st.Total.LossDrops, st.Total.QueueDrops, sb.String())
	return v, st.Total.Drops() - before
}
