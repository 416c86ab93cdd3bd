package pace

import (
	"context"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestPacerSpacesMessagesAcrossCallers(t *testing.T) {
	for _, tc := range []struct {
		rate float64
		msgs int
		size int
	}{
		{1e6, 10, 100_000}, // 1 s of traffic
		{50e6, 40, 1 << 20},
	} {
		p := NewPacer(tc.rate)
		base := time.Unix(1000, 0)
		p.now = func() time.Time { return base }
		var last time.Time
		for i := 0; i < tc.msgs; i++ {
			last = p.Reserve(tc.size)
		}
		// The last message may start after (msgs-1) messages' worth of time.
		want := time.Duration(float64(tc.msgs-1) * float64(tc.size) / tc.rate * float64(time.Second))
		if got := last.Sub(base); got < want-time.Microsecond || got > want+time.Microsecond {
			t.Errorf("rate %v: last of %d messages at +%v, want +%v", tc.rate, tc.msgs, got, want)
		}
	}
}

func TestPacerDoesNotBurstAfterIdle(t *testing.T) {
	p := NewPacer(1e6)
	now := time.Unix(1000, 0)
	p.now = func() time.Time { return now }
	p.Reserve(1000)
	now = now.Add(10 * time.Second) // idle: the bucket holds one message, not 10 s worth
	a := p.Reserve(100_000)
	b := p.Reserve(100_000)
	if !a.Equal(now) || b.Sub(a) != 100*time.Millisecond {
		t.Fatalf("after idle: first at %v, second %v later; want now and 100ms", a.Sub(now), b.Sub(a))
	}
}

func TestPacerWaitRealTime(t *testing.T) {
	p := NewPacer(10e6) // 10 MB/s
	start := time.Now()
	for i := 0; i < 11; i++ {
		if err := p.Wait(context.Background(), 100_000); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d < 95*time.Millisecond {
		t.Fatalf("11 messages of 100 kB at 10 MB/s took %v, want at least 100ms", d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p.SetRate(1)
	p.Reserve(1000)
	if err := p.Wait(ctx, 1000); err == nil {
		t.Fatal("Wait ignored a cancelled context")
	}
}

func TestEstimatorMaxFilterAndWindow(t *testing.T) {
	e, err := NewEstimator(Config{Window: time.Second, Interval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1000, 0)
	if r := e.Rate(now); r != 0 {
		t.Fatalf("rate before any sample %v, want 0 (unpaced)", r)
	}
	total := int64(0)
	step := func(rate float64, d time.Duration) {
		for i := 0; i < int(d/(10*time.Millisecond)); i++ {
			now = now.Add(10 * time.Millisecond)
			total += int64(rate / 100)
			e.Delivered(now, total)
		}
	}
	step(10e6, 500*time.Millisecond)
	if bw := e.Bandwidth(); bw < 9.5e6 || bw > 10.5e6 {
		t.Fatalf("bandwidth %v after 10 MB/s, want ~10e6", bw)
	}
	step(2e6, 500*time.Millisecond) // a dip within the window: max stays
	if bw := e.Bandwidth(); bw < 9.5e6 {
		t.Fatalf("bandwidth %v dropped within the window", bw)
	}
	step(2e6, 1500*time.Millisecond) // the old max ages out
	if bw := e.Bandwidth(); bw > 2.5e6 {
		t.Fatalf("bandwidth %v, want the 10 MB/s sample aged out (~2e6)", bw)
	}
}

func TestEstimatorGainAndLimit(t *testing.T) {
	e, _ := NewEstimator(Config{Window: 10 * time.Second, Interval: 100 * time.Millisecond, Limit: 5e6})
	now := time.Unix(1000, 0)
	var total int64
	e.Delivered(now, total)
	seen := map[float64]bool{}
	for i := 0; i < 100; i++ {
		now = now.Add(100 * time.Millisecond)
		total += 400e3 // 4 MB/s delivered
		e.Delivered(now, total)
		r := e.Rate(now)
		if r > 5e6 {
			t.Fatalf("rate %v above the 5e6 limit", r)
		}
		seen[r] = true
	}
	// Startup (2x) is capped by the limit; then probe 1.25x is capped too,
	// drain 0.75x and cruise 1x must appear.
	if !seen[3e6] || !seen[4e6] {
		t.Fatalf("gain cycle rates seen %v, want drain 3e6 and cruise 4e6", seen)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg Config
		ok  bool
	}{
		{DefaultConfig(), true},
		{Config{Window: time.Second, Interval: 2 * time.Second}, false},
		{Config{Limit: -1}, false},
		{Config{Window: -1}, false},
	} {
		if err := tc.cfg.Validate(); (err == nil) != tc.ok {
			t.Errorf("%+v: %v, want ok=%v", tc.cfg, err, tc.ok)
		}
	}
}

func TestSetSocketRate(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			time.Sleep(time.Second)
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := SetSocketRate(c, 12345678); err != nil {
		t.Fatal(err)
	}
	raw, _ := c.(*net.TCPConn).SyscallConn()
	var info *unix.TCPInfo
	raw.Control(func(fd uintptr) { info, _ = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) })
	if info.Max_pacing_rate != 12345678 {
		t.Fatalf("TCP_INFO max pacing rate %d, want 12345678", info.Max_pacing_rate)
	}
	if err := SetSocketRate(c, 0); err != nil {
		t.Fatal(err)
	}
	raw.Control(func(fd uintptr) { info, _ = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) })
	if info.Max_pacing_rate != ^uint64(0) {
		t.Fatalf("after removing the cap: %d, want unlimited", info.Max_pacing_rate)
	}
}

// TestEstimatorProbingAdapts: on a full path (delivery never rises) the
// probes shrink towards minProbe and come less often, so a shallow
// bottleneck queue sees little excess; once a probe finds more, probing
// is strong and frequent again.
func TestEstimatorProbingAdapts(t *testing.T) {
	e, _ := NewEstimator(Config{Window: 10 * time.Second, Interval: 100 * time.Millisecond})
	now := time.Unix(1000, 0)
	var total int64
	e.Delivered(now, total)
	var probes []float64
	for i := 0; i < 600; i++ {
		now = now.Add(100 * time.Millisecond)
		total += 1e6 // the path delivers 10 MB/s, no more
		e.Delivered(now, total)
		if r := e.Rate(now); r > 10e6*1.001 && !e.startup {
			probes = append(probes, r/10e6) // one interval per probe
		}
	}
	if len(probes) < 4 {
		t.Fatalf("%d probes in 60 s", len(probes))
	}
	if first, last := probes[0], probes[len(probes)-1]; first < 1.2 || last > 1.03 {
		t.Fatalf("probe gains %v: want the first near %v and the last down to %v", probes, maxProbe, minProbe)
	}
	if len(probes) > 20 {
		t.Errorf("%d probes in 60 s on a full path: want them spaced out", len(probes))
	}
	// The path frees up: the next probe that finds more restores full probing.
	rate := 10e6
	for i := 0; i < 2000 && e.probe < maxProbe; i++ {
		now = now.Add(100 * time.Millisecond)
		if e.phase == 0 {
			rate = e.gainLocked() * 10e6 // delivery follows the probe
		}
		total += int64(rate / 10)
		e.Delivered(now, total)
		e.Rate(now)
	}
	if e.probe != maxProbe || e.cruise != minCruise {
		t.Fatalf("after a successful probe: probe %v cruise %d, want %v and %d", e.probe, e.cruise, maxProbe, minCruise)
	}
}

// TestEstimatorRemembered starts from a bandwidth measured before: no
// startup gain, the remembered rate at once, and it ages out of the window
// when the path now delivers less.
func TestEstimatorRemembered(t *testing.T) {
	e, err := NewEstimator(Config{Window: time.Second, Interval: 100 * time.Millisecond, Remembered: 8e6})
	if err != nil {
		t.Fatal(err)
	}
	if bw := e.Bandwidth(); bw != 8e6 {
		t.Fatalf("bandwidth before any sample %v, want the remembered 8e6", bw)
	}
	now := time.Unix(1000, 0)
	if r := e.Rate(now); r != 8e6 {
		t.Fatalf("first rate %v, want 8e6 (no startup gain on a known path)", r)
	}
	var total int64
	for i := 0; i < 30; i++ { // 3 s at 3 MB/s
		now = now.Add(100 * time.Millisecond)
		total += 300e3
		e.Delivered(now, total)
	}
	if bw := e.Bandwidth(); bw > 3.5e6 {
		t.Fatalf("bandwidth %v after 3 s at 3 MB/s, want the remembered 8e6 aged out", bw)
	}
	if _, err := NewEstimator(Config{Remembered: -1}); err == nil {
		t.Error("a negative remembered rate was accepted")
	}
}

// TestEstimatorStartupCountsSamples: startup ends after three samples
// without growth, not three checks; samples that span longer than an
// interval (MinSampleBytes) must not end it early.
func TestEstimatorStartupCountsSamples(t *testing.T) {
	e, _ := NewEstimator(Config{Window: 10 * time.Second, Interval: 100 * time.Millisecond, MinSampleBytes: 1e6})
	now := time.Unix(1000, 0)
	var total int64
	e.Delivered(now, total)
	// 2.5 MB/s: a 1 MB sample every 400 ms, a check every 100 ms.
	for i := 0; i < 18; i++ { // 0.9 s: two samples
		now = now.Add(50 * time.Millisecond)
		total += 125e3
		e.Delivered(now, total)
		e.Rate(now)
	}
	if r, bw := e.Rate(now), e.Bandwidth(); r < 1.9*bw {
		t.Fatalf("after two samples the rate is %v for %v measured: startup (2x) ended on checks without samples", r, bw)
	}
	for i := 0; i < 40; i++ { // 2 s more: five samples without growth
		now = now.Add(50 * time.Millisecond)
		total += 125e3
		e.Delivered(now, total)
		e.Rate(now)
	}
	if r, bw := e.Rate(now), e.Bandwidth(); r > 1.3*bw {
		t.Fatalf("rate %v for %v measured after samples without growth: startup should have ended", r, bw)
	}
}
