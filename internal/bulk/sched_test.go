package bulk

import "testing"

// TestStreamCtlGrowsWhileThePathHasRoom: no standing queue and goodput
// holding up: auto doubles the connections each epoch up to its maximum.
func TestStreamCtlGrowsWhileThePathHasRoom(t *testing.T) {
	c := streamCtl{k: 4, max: 32}
	var got []int
	for _, g := range []float64{5e6, 9e6, 15e6, 24e6, 24e6} {
		got = append(got, c.step(g, 0.01))
	}
	want := []int{8, 16, 32, 32, 32}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("connections per epoch = %v, want %v", got, want)
		}
	}
}

// TestStreamCtlStepsBackWhenAQueueStands: the last growth added nothing and
// a queue stands at the bottleneck: go back, hold, then probe again.
func TestStreamCtlStepsBackWhenAQueueStands(t *testing.T) {
	c := streamCtl{k: 4, max: 32}
	if k := c.step(20e6, 0.02); k != 8 {
		t.Fatalf("first epoch with room: %d connections, want 8", k)
	}
	if k := c.step(20.5e6, 0.6); k != 4 {
		t.Fatalf("growth that added nothing under a standing queue: %d connections, want back to 4", k)
	}
	for i := 0; i < holdEpochs; i++ {
		if k := c.step(20e6, 0.02); k != 4 {
			t.Fatalf("hold epoch %d: %d connections, want 4", i, k)
		}
	}
	if k := c.step(20e6, 0.02); k != 8 {
		t.Fatalf("after the hold, with room again: %d connections, want 8", k)
	}
}

// TestStreamCtlHoldsUnderAStandingQueue: a full path (queue standing,
// goodput flat) is never grown.
func TestStreamCtlHoldsUnderAStandingQueue(t *testing.T) {
	c := streamCtl{k: 8, max: 32, last: 20e6, best: 20e6}
	for i := 0; i < 10; i++ {
		if k := c.step(20e6, 0.5); k != 8 {
			t.Fatalf("epoch %d under a standing queue: %d connections, want 8", i, k)
		}
	}
}

// TestStreamCtlGoodputRuleWithoutRTT: where RTT tells nothing (loopback),
// growth follows goodput alone.
func TestStreamCtlGoodputRuleWithoutRTT(t *testing.T) {
	c := streamCtl{k: 4, max: 32}
	if k := c.step(1e9, -1); k != 8 {
		t.Fatalf("first epoch: %d, want 8", k)
	}
	if k := c.step(1.5e9, -1); k != 16 {
		t.Fatalf("goodput up 50%%: %d, want 16", k)
	}
	if k := c.step(1.45e9, -1); k != 8 {
		t.Fatalf("goodput flat after growth: %d, want back to 8", k)
	}
}

// TestStreamCtlBBRNeedsAClearGain: with bbr a few flows fill the path, so
// auto takes baseline epochs (bbr's startup makes the first ones grow on
// their own) and grows only on a gain of paceGain, not on
// goodput noise (measured: growing to 16 bbr flows re-sent blocks and lost
// 4% of the goodput that 4 flows reach).
func TestStreamCtlBBRNeedsAClearGain(t *testing.T) {
	c := streamCtl{k: 4, max: 32, paced: true}
	for i, g := range []float64{10e6, 15e6, 20e6, 21e6, 20.5e6, 22e6, 21.5e6} {
		if k := c.step(g, -1); k != 4 {
			t.Fatalf("epoch %d, goodput %v: %d connections, want 4 (noise is not a gain)", i, g, k)
		}
	}
	if k := c.step(30e6, -1); k != 8 {
		t.Fatalf("a 40%% gain: %d connections, want 8", k)
	}
}
