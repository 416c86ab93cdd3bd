package lab

import (
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// sink collects what a link delivers, standing in for the destination TUN
// device so the scheduler can be tested without root.
type sink struct {
	mu      sync.Mutex
	dscps   []uint8
	at      []time.Time
	ids     []int   // bytes 20-22 of each packet: a number some tests give them
	planned []int64 // departure times, from the emulator's clock
	arrived []int64
}

// freed records when the emulator planned a delivered packet to leave.
func (s *sink) freed(p *packet) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.planned = append(s.planned, p.depart)
	s.arrived = append(s.arrived, p.arrival)
}

func (s *sink) out(b []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dscps = append(s.dscps, b[1]>>2)
	s.at = append(s.at, time.Now())
	s.ids = append(s.ids, int(b[20])<<16|int(b[21])<<8|int(b[22]))
	return nil
}

func (s *sink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.dscps)
}

func (s *sink) snapshot() ([]uint8, []time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]uint8(nil), s.dscps...), append([]time.Time(nil), s.at...)
}

// testLink starts a link whose output is a sink.
func testLink(t *testing.T, p Path) (*link, *sink) {
	t.Helper()
	clk, err := newClock()
	if err != nil {
		t.Fatal(err)
	}
	s := &sink{}
	lk, err := newLink(0, 1, clk, DefaultMTU, p, 1, s.out, s.freed, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(lk.run)
	t.Cleanup(func() { lk.close(); wg.Wait() })
	return lk, s
}

func testPacket(size int, dscp uint8) *packet {
	p := &packet{buf: make([]byte, DefaultMTU), n: size, dscp: dscp}
	copy(p.buf, ipv4Packet(dscp<<2, HostAddr(0), HostAddr(1), 17))
	return p
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestLinkTailDropExact(t *testing.T) {
	// 80 kbit/s = 10 kB/s: during the instant burst only the first packet
	// (covered by the one-MTU bucket) leaves; 5 fit the 5000 B queue.
	lk, s := testLink(t, Path{Rate: 80000, QueueBytes: 5000})
	for range 20 {
		lk.enqueue(testPacket(1000, 0))
	}
	st := lk.snapshot()
	if st.Total.InPackets != 20 || st.Total.QueueDrops != 14 || st.Total.QueueBytes != 5000 || st.Total.MaxQueueBytes != 5000 {
		t.Fatalf("after a 20-packet burst: %+v; want 14 tail drops and 5000 B queued", st.Total)
	}
	if s.count() != 1 {
		t.Errorf("%d packets left at once, want 1", s.count())
	}
}

func TestLinkStrictPriorityOrder(t *testing.T) {
	lk, s := testLink(t, Path{Rate: 8e6, QueueBytes: 100000, Sched: Sched{Mode: SchedStrict}})
	for range 10 {
		lk.enqueue(testPacket(1000, DSCPDefault))
	}
	for range 5 {
		lk.enqueue(testPacket(1000, DSCPEF))
	}
	for range 3 {
		lk.enqueue(testPacket(1000, DSCPLE))
	}
	waitFor(t, "18 packets", func() bool { return s.count() == 18 })
	got, _ := s.snapshot()
	// The first default packet left before the others arrived; then all EF,
	// the remaining default, and scavenger last.
	want := []uint8{0, 46, 46, 46, 46, 46, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("delivery order %v, want %v", got, want)
		}
	}
}

func TestLinkWeightedShare(t *testing.T) {
	classes := []Class{{Name: "gold", DSCP: []uint8{DSCPAF41}, Weight: 3}, {Name: "rest", Weight: 1}}
	lk, s := testLink(t, Path{Rate: 80e6, QueueBytes: 1 << 20, Sched: Sched{Mode: SchedWeighted, Classes: classes}})
	for range 200 {
		lk.enqueue(testPacket(1000, DSCPAF41))
		lk.enqueue(testPacket(1000, DSCPDefault))
	}
	waitFor(t, "400 packets", func() bool { return s.count() == 400 })
	got, _ := s.snapshot()
	gold := 0
	for _, d := range got[:200] { // while both classes are backlogged
		if d == DSCPAF41 {
			gold++
		}
	}
	if gold < 140 || gold > 160 {
		t.Errorf("gold got %d of the first 200 slots, want about 150 (3:1)", gold)
	}
	st := lk.snapshot()
	if c := st.Class("gold"); c.OutPackets != 200 || c.InPackets != 200 {
		t.Errorf("gold counters %+v", c)
	}
}

func TestLinkRateAndDelay(t *testing.T) {
	// 100 packets of 1250 B at 10 Mbit/s leave 1 ms apart, each 30 ms after
	// it leaves the bottleneck.
	lk, s := testLink(t, Path{Rate: 10e6, Delay: 30 * time.Millisecond, QueueBytes: 1 << 20})
	start := time.Now()
	for range 100 {
		lk.enqueue(testPacket(1250, 0))
	}
	waitFor(t, "100 packets", func() bool { return s.count() == 100 })
	_, at := s.snapshot()
	s.mu.Lock()
	planned := append([]int64(nil), s.planned...)
	arrived := s.arrived[0]
	s.mu.Unlock()
	// The emulator's own schedule is exact, whatever the machine's load:
	// the first packet leaves the bottleneck at once (the bucket holds one
	// MTU) and 30 ms later the delay line; from the third on, one packet
	// per 1 ms (1250 B at 10 Mbit/s).
	if d := time.Duration(planned[0] - arrived); d != 30*time.Millisecond {
		t.Errorf("first packet planned %v after arrival, want 30ms", d)
	}
	for i := 2; i < len(planned); i++ {
		if gap := time.Duration(planned[i] - planned[i-1]); gap < time.Millisecond-time.Microsecond || gap > time.Millisecond+time.Microsecond {
			t.Fatalf("packets %d and %d planned %v apart, want 1ms", i-1, i, gap)
		}
	}
	// Delivery follows it (loosely: the machine may be busy).
	first, last := at[0].Sub(start), at[99].Sub(start)
	t.Logf("first delivered after %v, last after %v", first, last)
	if first < 30*time.Millisecond || last < 128*time.Millisecond {
		t.Errorf("delivered early: first %v (want >= 30ms), last %v (want >= 128.8ms)", first, last)
	}
}

func TestLinkJitterKeepsOrder(t *testing.T) {
	lk, s := testLink(t, Path{Delay: 5 * time.Millisecond, Jitter: 4 * time.Millisecond})
	for i := range 50 {
		p := testPacket(100, uint8(i)) // the DSCP numbers the packets
		lk.enqueue(p)
		time.Sleep(100 * time.Microsecond)
	}
	waitFor(t, "50 packets", func() bool { return s.count() == 50 })
	got, _ := s.snapshot()
	for i := range got {
		if got[i] != uint8(i) {
			t.Fatalf("jitter without reorder reordered packets: %v", got)
		}
	}
}

func TestLinkRemovingRateReleasesQueue(t *testing.T) {
	lk, s := testLink(t, Path{Rate: 8000, QueueBytes: 20000})
	for range 10 {
		lk.enqueue(testPacket(1000, 0))
	}
	if st := lk.snapshot(); st.Total.QueueBytes != 9000 {
		t.Fatalf("queued %d B, want 9000", st.Total.QueueBytes)
	}
	lk.setPath(Path{Delay: time.Millisecond})
	waitFor(t, "the queue to drain", func() bool { return s.count() == 10 })
	if st := lk.snapshot(); st.Total.QueueBytes != 0 || st.Total.OutPackets != 10 {
		t.Errorf("after removing the rate: %+v", st.Total)
	}
}

func TestLinkSetPathKeepsCountersAndQueue(t *testing.T) {
	lk, s := testLink(t, Path{Rate: 8000, QueueBytes: 20000})
	for range 5 {
		lk.enqueue(testPacket(1000, DSCPEF))
	}
	// Switch to strict priority at a high rate: the 4 queued packets move
	// to the realtime class queue and leave; counters carry over.
	lk.setPath(Path{Rate: 100e6, Sched: Sched{Mode: SchedStrict}})
	waitFor(t, "5 packets", func() bool { return s.count() == 5 })
	st := lk.snapshot()
	if c := st.Class("realtime"); c.InPackets != 5 || c.OutPackets != 5 || c.QueueBytes != 0 {
		t.Errorf("realtime after SetPath: %+v", c)
	}
}

func TestLinkJitterSpread(t *testing.T) {
	// With reordering allowed, each delay is 5 ms ± uniform 4 ms.
	lk, s := testLink(t, Path{Delay: 5 * time.Millisecond, Jitter: 4 * time.Millisecond, Reorder: true})
	for range 400 {
		lk.enqueue(testPacket(100, 0))
	}
	waitFor(t, "400 packets", func() bool { return s.count() == 400 })
	s.mu.Lock()
	defer s.mu.Unlock()
	lo, hi, sum := time.Hour, time.Duration(0), time.Duration(0)
	for i, d := range s.planned {
		delay := time.Duration(d - s.arrived[i])
		lo, hi, sum = min(lo, delay), max(hi, delay), sum+delay
	}
	mean := sum / time.Duration(len(s.planned))
	t.Logf("delays from %v to %v, mean %v", lo, hi, mean)
	if lo < time.Millisecond || hi > 9*time.Millisecond {
		t.Errorf("delays %v..%v outside 5ms ± 4ms", lo, hi)
	}
	if lo > 1500*time.Microsecond || hi < 8500*time.Microsecond {
		t.Errorf("delays %v..%v do not spread over 5ms ± 4ms", lo, hi)
	}
	if mean < 4700*time.Microsecond || mean > 5300*time.Microsecond {
		t.Errorf("mean delay %v, want 5ms", mean)
	}
}

func TestLinkBurstyLoss(t *testing.T) {
	const packets = 20000
	for _, tc := range []struct {
		burst          float64
		minRun, maxRun float64
	}{
		{burst: 0, minRun: 1, maxRun: 1.2},
		{burst: 5, minRun: 4, maxRun: 6},
	} {
		lk, s := testLink(t, Path{Loss: 0.05, LossBurst: tc.burst})
		for i := range packets {
			p := testPacket(100, 0)
			p.buf[20], p.buf[21], p.buf[22] = byte(i>>16), byte(i>>8), byte(i) // number the packets
			lk.enqueue(p)
		}
		st := lk.snapshot()
		lost := float64(st.Total.LossDrops) / packets
		// Delivered numbers, in order: the gaps are the loss bursts.
		s.mu.Lock()
		var bursts, inBursts int
		next := 0
		for _, id := range s.ids {
			if id > next {
				bursts++
				inBursts += id - next
			}
			next = id + 1
		}
		s.mu.Unlock()
		mean := float64(inBursts) / float64(max(bursts, 1))
		t.Logf("lossburst %v: lost %.2f%%, %d bursts of %.2f packets on average", tc.burst, lost*100, bursts, mean)
		if lost < 0.04 || lost > 0.06 {
			t.Errorf("lossburst %v: lost %.2f%%, set 5%%", tc.burst, lost*100)
		}
		if mean < tc.minRun || mean > tc.maxRun {
			t.Errorf("lossburst %v: mean burst %.2f packets, want %v to %v", tc.burst, mean, tc.minRun, tc.maxRun)
		}
	}
}
