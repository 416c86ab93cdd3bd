package lab

import (
	"context"
	"sync"
	"testing"
	"time"
)

func TestWatchReportsRatesOfAPair(t *testing.T) {
	timing(t, func(a *attempt) {
		l := a.useLab(Config{Hosts: 3})
		pp, err := ParsePairPath("0>2: rate 5Mbit, queue 20KB")
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Apply(pp); err != nil {
			t.Fatal(err)
		}
		if p, _ := l.Path(2, 0); p.Rate != 0 {
			t.Errorf("one-way pair also set the way back: %v", p)
		}
		rx := countUDP(t, l.Host(2), 9100)
		c := dialTOS(t, l.Host(0), l.Host(2), 9100, 0)
		ctx, cancel := context.WithTimeout(context.Background(), 1300*time.Millisecond)
		defer cancel()
		var reports []Report
		var wg sync.WaitGroup
		wg.Go(func() { _ = l.Watch(ctx, 250*time.Millisecond, func(r Report) { reports = append(reports, r) }) })
		blast(c, 10e6, 1000, 1200*time.Millisecond)
		wg.Wait()
		if len(reports) < 4 {
			t.Fatalf("%d reports in 1.3 s at 250 ms", len(reports))
		}
		for _, r := range reports[1:4] { // whole intervals of steady traffic
			if len(r.Paths) != 6 {
				t.Fatalf("report with %d paths, want 6 in a 3-host lab", len(r.Paths))
			}
			for _, pr := range r.Paths {
				switch {
				case pr.From == 0 && pr.To == 2:
					if pr.OutBitsPerSecond < 4.5e6 || pr.OutBitsPerSecond > 5.5e6 {
						a.Errorf("h0->h2 at %.2f Mbit/s in an interval, set 5", pr.OutBitsPerSecond/1e6)
					}
					if pr.IntervalDrops == 0 || !pr.Active() {
						a.Errorf("h0->h2 overloaded twice over dropped nothing in an interval: %+v", pr)
					}
				case pr.Active():
					t.Errorf("idle direction h%d->h%d reported active: %s", pr.From, pr.To, pr)
				}
			}
		}
		if rx.packets.Load() == 0 {
			t.Errorf("receiver got nothing")
		}
		if err := l.Watch(context.Background(), 0, func(Report) {}); err == nil {
			t.Errorf("Watch accepted a zero interval")
		}
	})
}
