package lab

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// Report is what happened on every path of a lab during one interval.
type Report struct {
	// Time is when the interval ended.
	Time time.Time `json:"time"`
	// Interval is its length.
	Interval time.Duration `json:"interval_ns"`
	// Paths has one entry per direction, ordered by source then destination.
	Paths []PathReport `json:"paths"`
}

// PathReport is one direction's counters plus its rates over the interval.
type PathReport struct {
	PathStats
	// OutBitsPerSecond is the rate delivered to the destination during the
	// interval, counting whole IP packets.
	OutBitsPerSecond float64 `json:"out_bits_per_second"`
	// IntervalDrops counts the packets lost (random loss and tail drop)
	// during the interval.
	IntervalDrops uint64 `json:"interval_drops"`
}

// String formats r as one line for people.
func (r PathReport) String() string {
	t := r.Total
	return fmt.Sprintf("h%d->h%d %9sbit/s  out %d pkt  loss %d  tail %d  queue %s (max %s)",
		r.From, r.To, siRate(r.OutBitsPerSecond), t.OutPackets, t.LossDrops, t.QueueDrops,
		formatBytes(uint64(t.QueueBytes)), formatBytes(uint64(t.MaxQueueBytes)))
}

// Active reports whether the direction carried or dropped anything in the
// interval.
func (r PathReport) Active() bool { return r.OutBitsPerSecond > 0 || r.IntervalDrops > 0 }

func siRate(v float64) string {
	switch {
	case v >= 1e9:
		return fmt.Sprintf("%.2fG", v/1e9)
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}

// Watch calls fn with a Report every interval until ctx is done, then
// returns ctx's error. It is what `holdfast lab up` prints.
func (l *Lab) Watch(ctx context.Context, interval time.Duration, fn func(Report)) error {
	if interval <= 0 {
		return fmt.Errorf("watch interval %v: must be positive", interval)
	}
	prev := l.AllStats()
	last := time.Now()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case now := <-tick.C:
			cur := l.AllStats()
			el := now.Sub(last).Seconds()
			r := Report{Time: now, Interval: now.Sub(last)}
			for i, s := range cur {
				pr := PathReport{PathStats: s}
				if i < len(prev) && el > 0 {
					pr.OutBitsPerSecond = float64(s.Total.OutBytes-prev[i].Total.OutBytes) * 8 / el
					pr.IntervalDrops = s.Total.Drops() - prev[i].Total.Drops()
				}
				r.Paths = append(r.Paths, pr)
			}
			prev, last = cur, now
			fn(r)
		}
	}
}

// Describe returns a few lines telling people how to use the lab's hosts.
func (l *Lab) Describe() string {
	var b strings.Builder
	fmt.Fprintf(&b, "lab %s: %d hosts, path between every pair: %s (MTU %d)\n", l.Name(), len(l.hosts), l.cfg.Path, l.cfg.MTU)
	for _, h := range l.hosts {
		a6 := "-"
		if h.Addr6().IsValid() {
			a6 = h.Addr6().String()
		}
		fmt.Fprintf(&b, "  h%-2d %-22s %-13s %s\n", h.index, h.Name(), h.Addr(), a6)
	}
	if len(l.hosts) >= 2 {
		fmt.Fprintf(&b, "run programs inside a host, e.g.:\n  ip netns exec %s iperf3 -s\n  ip netns exec %s iperf3 -c %s\n",
			l.hosts[1].Name(), l.hosts[0].Name(), l.hosts[1].Addr())
	}
	return b.String()
}
