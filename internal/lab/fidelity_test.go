package lab

import (
	"math"
	"testing"
	"time"
)

// These tests check the emulator against the figures it was set to and
// against theory. They need root and iperf3; they run in CI.

func mustParsePath(t *testing.T, s string) Path {
	t.Helper()
	p, err := ParsePath(s)
	if err != nil {
		t.Fatalf("ParsePath(%q): %v", s, err)
	}
	return p
}

func TestRTTMatchesSetting(t *testing.T) {
	for _, tc := range []struct {
		path  string
		rtt   time.Duration
		count int
	}{
		{"rtt 20ms", 20 * time.Millisecond, 30},
		{"rtt 100ms", 100 * time.Millisecond, 15},
		{"rtt 60ms, rate 50Mbit, queue 64KiB", 60 * time.Millisecond, 15},
	} {
		t.Run(tc.path, func(t *testing.T) {
			timing(t, func(a *attempt) {
				l := a.useLab(Config{Hosts: 2, Path: mustParsePath(t, tc.path)})
				udpEcho(t, l.Host(1), 7)
				rtts := measureRTT(t, l.Host(0), l.Host(1), 7, tc.count)
				if len(rtts) != tc.count {
					t.Fatalf("%d of %d probes answered on a lossless path", len(rtts), tc.count)
				}
				med := rtts[len(rtts)/2]
				a.Logf("RTT min %v median %v max %v (set %v)", rtts[0], med, rtts[len(rtts)-1], tc.rtt)
				if rtts[0] < tc.rtt {
					t.Errorf("fastest probe %v beat the set RTT %v", rtts[0], tc.rtt)
				}
				if d := math.Abs(float64(med-tc.rtt)) / float64(tc.rtt); d > 0.10 {
					a.Errorf("median RTT %v is %.1f%% off the set %v (want within 10%%)", med, d*100, tc.rtt)
				}
			})
		})
	}
}

func TestIperfRateMatchesSetting(t *testing.T) {
	const rate = 100e6
	timing(t, func(a *attempt) {
		l := a.useLab(Config{Hosts: 2, Path: mustParsePath(t, "rate 100Mbit, rtt 20ms")})
		r := runIperf(t, l.Host(0), l.Host(1), 5201, 4, 1)
		got := r.End.SumReceived.BitsPerSecond
		st := l.Stats(0, 1)
		a.Logf("iperf3 %.1f Mbit/s through a 100 Mbit/s path (%d retransmits); %s", got/1e6, r.End.SumSent.Retransmits, st)
		// iperf3 counts TCP payload; the path counts IP packets: 1448 of 1500.
		if d := math.Abs(got-rate) / rate; d > 0.10 {
			a.Errorf("iperf3 got %.1f Mbit/s, %.1f%% off the set 100 Mbit/s (want within 10%%)", got/1e6, d*100)
		}
		if st.Total.LossDrops != 0 {
			t.Errorf("lossless path dropped %d packets at random", st.Total.LossDrops)
		}
		if st.Total.MaxQueueBytes == 0 {
			a.Errorf("a saturating TCP stream never queued at the bottleneck")
		}
	})
}

// TestSingleStreamUnderLoss checks a single cubic stream against Mathis et
// al.: rate ≈ MSS/RTT · 1.22/√p.
func TestSingleStreamUnderLoss(t *testing.T) {
	const (
		linkRate = 100e6
		rtt      = 0.040
		loss     = 0.01
		mss      = 1448 // 1500 - IP - TCP - timestamps
	)
	timing(t, func(a *attempt) {
		l := a.useLab(Config{Hosts: 2, Path: mustParsePath(t, "rate 100Mbit, rtt 40ms")})
		// Loss on the data direction only, as in the model.
		if err := l.SetLink(0, 1, mustParsePath(t, "rate 100Mbit, delay 20ms, loss 1%")); err != nil {
			t.Fatal(err)
		}
		r := runIperf(t, l.Host(0), l.Host(1), 5202, 5, 1, "-C", "cubic")
		got := r.End.SumReceived.BitsPerSecond
		mathis := mss * 8 / rtt * 1.22 / math.Sqrt(loss)
		st := l.Stats(0, 1)
		measuredLoss := float64(st.Total.LossDrops) / float64(st.Total.InPackets)
		a.Logf("cubic under 1%% loss: %.2f Mbit/s; Mathis predicts %.2f Mbit/s (ratio %.2f); measured loss %.2f%%; %s",
			got/1e6, mathis/1e6, got/mathis, measuredLoss*100, st)
		if got > linkRate/2 {
			a.Errorf("%.1f Mbit/s is not well below the 100 Mbit/s rate under 1%% loss", got/1e6)
		}
		if got < mathis/3 || got > mathis*3 {
			a.Errorf("%.2f Mbit/s is more than a factor 3 from Mathis' %.2f Mbit/s", got/1e6, mathis/1e6)
		}
		if measuredLoss < 0.004 || measuredLoss > 0.018 {
			t.Errorf("emulated loss %.3f%%, set 1%%", measuredLoss*100)
		}
	})
}
