package slo

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// simulate drives a Decider with a network where class i gives the task
// rates[i] bytes per second (rates may change over time through rateAt),
// observing every policy interval for dur. It returns the decisions that
// changed the class and the bytes moved.
func simulate(p Policy, obj Objective, total int64, dur time.Duration, rateAt func(class int, t time.Duration) float64) ([]Decision, []time.Duration, int64) {
	d := NewDecider(obj, p)
	var changes []Decision
	var at []time.Duration
	var done float64
	for el := time.Duration(0); el <= dur; el += p.Interval {
		if el > 0 {
			done += rateAt(d.Class(), el) * p.Interval.Seconds()
			if total > 0 && done > float64(total) {
				done = float64(total)
			}
		}
		dec := d.Observe(Observation{Now: t0.Add(el), Done: int64(done), Total: total})
		if dec.Changed {
			changes = append(changes, dec)
			at = append(at, el)
		}
	}
	return changes, at, int64(done)
}

// fixed gives each class a constant rate in Mbit/s.
func fixed(mbit ...float64) func(int, time.Duration) float64 {
	return func(c int, _ time.Duration) float64 { return mbit[c] * 1e6 / 8 }
}

func TestDecider(t *testing.T) {
	p := DefaultPolicy() // scavenger, standard, high-throughput, low-latency, streaming, conferencing
	mb := int64(1_000_000)
	tests := []struct {
		name  string
		obj   Objective
		total int64
		dur   time.Duration
		rate  func(int, time.Duration) float64
		// want lists the classes entered, in order.
		want []string
		// pol, when set, replaces DefaultPolicy.
		pol func(p Policy) Policy
		// check, when set, looks further at the changes.
		check func(t *testing.T, ch []Decision, at []time.Duration, done int64)
	}{
		{
			name: "behind raises once and meets the deadline",
			obj:  Objective{Deadline: t0.Add(12 * time.Second)}, total: 15 * mb, dur: 12 * time.Second,
			rate: fixed(1, 7, 14, 18, 19, 20),
			// Near the end standard would be enough again, but the task
			// finishes within the hold time: no pointless lowering.
			want: []string{"high-throughput"},
			check: func(t *testing.T, ch []Decision, at []time.Duration, done int64) {
				if done < 15*mb {
					t.Errorf("deadline missed: %d of %d bytes", done, 15*mb)
				}
				if !strings.HasPrefix(ch[0].Reason, "behind: measured 7Mbit/s < needed") {
					t.Errorf("reason %q", ch[0].Reason)
				}
				if ch[0].Measured != 7e6 {
					t.Errorf("measured %v, want 7e6", ch[0].Measured)
				}
			},
		},
		{
			name: "deeply behind climbs step by step, each after settling",
			obj:  Objective{Deadline: t0.Add(10 * time.Second)}, total: 20 * mb, dur: 10 * time.Second,
			rate: fixed(1, 6, 9, 12, 24, 25),
			want: []string{"high-throughput", "low-latency", "streaming"},
			check: func(t *testing.T, ch []Decision, at []time.Duration, done int64) {
				for i := 1; i < len(at); i++ {
					if at[i]-at[i-1] < p.Settle {
						t.Errorf("change %d only %v after the previous one (settle %v)", i, at[i]-at[i-1], p.Settle)
					}
				}
			},
		},
		{
			name: "far ahead drops to scavenger and stays",
			obj:  Objective{Deadline: t0.Add(120 * time.Second)}, total: 40 * mb, dur: 30 * time.Second,
			rate: fixed(8, 10, 14, 18, 19, 20),
			want: []string{"scavenger"},
			check: func(t *testing.T, ch []Decision, at []time.Duration, done int64) {
				if at[0] < p.Hold {
					t.Errorf("lowered after %v, before the hold time %v", at[0], p.Hold)
				}
				if !strings.HasPrefix(ch[0].Reason, "ahead: measured 10Mbit/s >= 1.5 x needed") {
					t.Errorf("reason %q", ch[0].Reason)
				}
			},
		},
		{
			name: "ahead in a high class steps down one class per hold",
			obj:  Objective{Deadline: t0.Add(100 * time.Second)}, total: 100 * mb, dur: 30 * time.Second,
			rate: func(c int, el time.Duration) float64 {
				if el < 3*time.Second {
					return []float64{0.1, 1, 2, 3, 4, 5}[c] * 1e6 / 8 // congested at first
				}
				return 40e6 / 8 // then the path clears for every class
			},
			// A short memory: the slow measurements of the congested
			// classes are forgotten soon after the path clears.
			pol:  func(p Policy) Policy { p.Forget = 3 * time.Second; return p },
			want: []string{"high-throughput", "low-latency", "high-throughput", "standard", "scavenger"},
			check: func(t *testing.T, ch []Decision, at []time.Duration, done int64) {
				for i := 3; i < len(at); i++ {
					if at[i]-at[i-1] < p.Hold {
						t.Errorf("lowered %v after the previous change, hold is %v", at[i]-at[i-1], p.Hold)
					}
				}
			},
		},
		{
			name: "ahead, but the class below was measured too slow recently",
			obj:  Objective{Deadline: t0.Add(100 * time.Second)}, total: 100 * mb, dur: 15 * time.Second,
			rate: func(c int, el time.Duration) float64 {
				if el < 3*time.Second {
					return []float64{0.1, 1, 2, 3, 4, 5}[c] * 1e6 / 8
				}
				return 40e6 / 8
			},
			want: []string{"high-throughput", "low-latency"},
		},
		{
			name: "scavenger too slow: back up once, no flapping",
			obj:  Objective{Deadline: t0.Add(60 * time.Second)}, total: 60 * mb, dur: 25 * time.Second,
			rate: fixed(3, 20, 20, 20, 20, 20),
			// needed ≈ 8.9 Mbit/s: standard (20) is > 1.5x, scavenger (3) is too slow.
			want: []string{"scavenger", "standard"},
		},
		{
			name: "min rate raises to the class that keeps it",
			obj:  Objective{MinRate: 10_000_000}, total: 0, dur: 10 * time.Second,
			rate: fixed(1, 8, 12, 15, 16, 17),
			want: []string{"high-throughput"},
			check: func(t *testing.T, ch []Decision, _ []time.Duration, _ int64) {
				if !strings.Contains(ch[0].Reason, "< min rate 10Mbit/s") {
					t.Errorf("reason %q", ch[0].Reason)
				}
			},
		},
		{
			name: "congestion later: climbs until the min rate is kept",
			obj:  Objective{MinRate: 10_000_000}, total: 0, dur: 14 * time.Second,
			// First standard is fine, then it gets congested and the task
			// climbs to low-latency, high-throughput being too slow too.
			// With the path free again it stays: high-throughput is
			// remembered as too slow.
			rate: func(c int, el time.Duration) float64 {
				r := []float64{2, 16, 9, 16, 16, 16}[c]
				if el > 2*time.Second && el < 5*time.Second && c == 1 {
					r = 5
				}
				return r * 1e6 / 8
			},
			want: []string{"high-throughput", "low-latency"},
		},
		{
			name: "ahead but finishing within the hold time",
			obj:  Objective{Deadline: t0.Add(60 * time.Second)}, total: 10 * mb, dur: 10 * time.Second,
			rate: fixed(8, 10, 14, 18, 19, 20),
		},
		{name: "no objective", obj: Objective{}, total: 10 * mb, dur: 10 * time.Second, rate: fixed(1, 1, 1, 1, 1, 1)},
		{name: "deadline with unknown size", obj: Objective{Deadline: t0.Add(5 * time.Second)}, total: 0, dur: 10 * time.Second, rate: fixed(1, 1, 1, 1, 1, 1)},
		{
			name: "deadline passed: climbs to the top and stays",
			obj:  Objective{Deadline: t0.Add(2 * time.Second)}, total: 100 * mb, dur: 10 * time.Second,
			rate: fixed(1, 1, 1, 1, 1, 1),
			want: []string{"high-throughput", "low-latency", "streaming", "conferencing"},
			check: func(t *testing.T, ch []Decision, _ []time.Duration, _ int64) {
				if !strings.Contains(ch[len(ch)-1].Reason, "passed") {
					t.Errorf("reason %q", ch[len(ch)-1].Reason)
				}
			},
		},
		{
			name: "finished task is left alone",
			obj:  Objective{Deadline: t0.Add(100 * time.Second)}, total: 1 * mb, dur: 20 * time.Second,
			rate: fixed(20, 20, 20, 20, 20, 20),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := p
			if tc.pol != nil {
				p = tc.pol(p)
			}
			ch, at, done := simulate(p, tc.obj, tc.total, tc.dur, tc.rate)
			var got []string
			var log []string
			for i, c := range ch {
				got = append(got, p.Classes[c.To].Name)
				log = append(log, fmt.Sprintf("%v %s->%s: %s", at[i], p.Classes[c.From].Name, p.Classes[c.To].Name, c.Reason))
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("classes entered %v, want %v\n%s", got, tc.want, strings.Join(log, "\n"))
			}
			t.Log("\n" + strings.Join(log, "\n"))
			for _, c := range ch {
				if c.Reason == "" || c.From == c.To {
					t.Errorf("change without reason or class: %+v", c)
				}
			}
			if tc.check != nil {
				tc.check(t, ch, at, done)
			}
		})
	}
}

func TestDeciderWaitsWhenRecovering(t *testing.T) {
	// In its first second in high-throughput the task moves little (TCP
	// recovering from timeouts), then 12 Mbit/s: needed is 8 Mbit/s. The
	// window rate is still below, the recent rate above: no raise.
	p := DefaultPolicy()
	obj := Objective{Deadline: t0.Add(30 * time.Second)}
	ch, at, _ := simulate(p, obj, 27_000_000, 6*time.Second, func(c int, el time.Duration) float64 {
		switch {
		case c == 1:
			return 4e6 / 8
		case el <= 2*time.Second:
			return 1e6 / 8
		}
		return 12e6 / 8
	})
	if len(ch) != 1 || p.Classes[ch[0].To].Name != "high-throughput" {
		for i, c := range ch {
			t.Logf("%v %s -> %s: %s", at[i], p.Classes[c.From].Name, p.Classes[c.To].Name, c.Reason)
		}
		t.Fatalf("%d changes, want one raise to high-throughput and a wait while it recovers", len(ch))
	}
}

func TestDeciderIgnoresOutOfOrder(t *testing.T) {
	d := NewDecider(Objective{MinRate: 1e6}, DefaultPolicy())
	d.Observe(Observation{Now: t0, Done: 0})
	d.Observe(Observation{Now: t0.Add(time.Second), Done: 100})
	dec := d.Observe(Observation{Now: t0.Add(500 * time.Millisecond), Done: 50})
	if dec.Changed || !strings.Contains(dec.Reason, "out of order") {
		t.Fatalf("out-of-order observation: %+v", dec)
	}
}

func TestDeciderMeasuresOverWindow(t *testing.T) {
	p := DefaultPolicy()
	d := NewDecider(Objective{MinRate: 1}, p)
	d.Observe(Observation{Now: t0})
	// 1 MB/s for 5 s, then 2 MB/s: after 1 more window the measurement
	// must see only the new rate.
	var done int64
	var dec Decision
	for el := p.Interval; el <= 5*time.Second+p.Window; el += p.Interval {
		r := int64(1_000_000)
		if el > 5*time.Second {
			r = 2_000_000
		}
		done += r * int64(p.Interval) / int64(time.Second)
		dec = d.Observe(Observation{Now: t0.Add(el), Done: done})
	}
	if dec.Measured != 16e6 {
		t.Fatalf("measured %v bit/s, want 16e6", dec.Measured)
	}
}

// TestDeciderWaitsForFirstProgress: a task whose first data takes a while
// to be acknowledged is not raised on a rate of zero before a whole window
// has passed, but one that stays at zero is raised after it.
func TestDeciderWaitsForFirstProgress(t *testing.T) {
	p := DefaultPolicy()
	obj := Objective{Deadline: t0.Add(10 * p.Window)}
	const total = 1 << 30
	for _, tc := range []struct {
		name  string
		first time.Duration // when the first bytes are acknowledged (0: never)
		raise bool
	}{
		{"first acknowledgement after half a window", p.Settle + p.Window/2, false},
		{"nothing acknowledged at all", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := NewDecider(obj, p)
			var done int64
			raisedAt := time.Duration(-1)
			for el := time.Duration(0); el <= p.Settle+p.Window+2*p.Interval; el += p.Interval {
				if tc.first > 0 && el >= tc.first {
					done += total / 20 // far ahead once it moves
				}
				if dec := d.Observe(Observation{Now: t0.Add(el), Done: done, Total: total}); dec.Changed && dec.To > dec.From && raisedAt < 0 {
					raisedAt = el
				}
			}
			switch {
			case tc.raise && raisedAt < p.Settle+p.Window:
				t.Errorf("raised at %v, want not before settle+window %v", raisedAt, p.Settle+p.Window)
			case !tc.raise && raisedAt >= 0:
				t.Errorf("raised at %v although the task moved at %v", raisedAt, tc.first)
			}
		})
	}
}
