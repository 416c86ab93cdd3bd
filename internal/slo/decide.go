package slo

import (
	"fmt"
	"math"
	"time"
)

// Observation is one look at a task's progress.
type Observation struct {
	// Now is when the progress was read.
	Now time.Time
	// Done is how many bytes the task has moved so far.
	Done int64
	// Total is the task's size in bytes; zero or less when unknown.
	Total int64
}

// Decision is what a Decider concluded from one observation.
type Decision struct {
	// From is the class index before the observation, To the class the
	// task should be in now; they differ when Changed.
	From, To int
	// Changed reports a class change.
	Changed bool
	// Reason says why, in words, for logs and reports. It is set on every
	// change and also explains why nothing changed.
	Reason string
	// Needed is the rate the objective needs now, in bits per second
	// (+Inf once the deadline has passed with bytes left).
	Needed float64
	// Measured is the task's rate over the measurement window in bits per
	// second, or -1 while not enough has been measured in this class.
	Measured float64
}

type sample struct {
	t    time.Time
	done int64
}

// estimate is the rate last measured in one class.
type estimate struct {
	rate float64 // bytes per second
	at   time.Time
}

// Decider chooses a task's class from observations of its progress. It is
// pure: it reads no clock and touches no socket, so a table of
// observations fully determines its decisions. The rules are in the
// package comment. A Decider is not safe for concurrent use.
type Decider struct {
	p          Policy
	obj        Objective
	class      int
	started    bool
	startedAt  time.Time
	startDone  int64 // Done at the first observation
	changedAt  time.Time
	aheadSince time.Time
	// measureFrom is when the rate of the current class starts to count:
	// half of Settle after a change, so that TCP's reaction to the new
	// mark (or slow start, at the beginning) is not taken for the class.
	measureFrom time.Time
	samples     []sample
	est         []estimate
}

// NewDecider returns a Decider for obj under p, starting in p.Start. p
// must be valid.
func NewDecider(obj Objective, p Policy) *Decider {
	return &Decider{p: p, obj: obj, class: max(p.ClassIndex(p.Start), 0), est: make([]estimate, len(p.Classes))}
}

// Class returns the index in the policy of the current class.
func (d *Decider) Class() int { return d.class }

// measured returns the rate in bytes per second over the samples kept, and
// whether the span is long enough (half a window) to trust it.
func (d *Decider) measured() (float64, bool) {
	if len(d.samples) < 2 {
		return 0, false
	}
	first, last := d.samples[0], d.samples[len(d.samples)-1]
	span := last.t.Sub(first.t)
	if span < d.p.Window/2 || span <= 0 {
		return 0, false
	}
	return float64(last.done-first.done) / span.Seconds(), true
}

// recent returns the rate in bytes per second over the last quarter of
// the window (at least two intervals), and whether there is such a span.
func (d *Decider) recent() (float64, bool) {
	n := len(d.samples)
	if n < 2 {
		return 0, false
	}
	last := d.samples[n-1]
	from := last.t.Add(-max(d.p.Window/4, 2*d.p.Interval))
	i := n - 2
	for i > 0 && !d.samples[i-1].t.Before(from) {
		i--
	}
	first := d.samples[i]
	span := last.t.Sub(first.t)
	if span <= 0 {
		return 0, false
	}
	return float64(last.done-first.done) / span.Seconds(), true
}

// fresh reports whether class i has a rate measured within Policy.Forget.
func (d *Decider) fresh(i int, now time.Time) bool {
	e := d.est[i]
	return !e.at.IsZero() && now.Sub(e.at) <= d.p.Forget
}

// Observe takes one observation (observations must come in time order) and
// returns the decision.
func (d *Decider) Observe(o Observation) Decision {
	dec := Decision{From: d.class, To: d.class, Measured: -1}
	if !d.started {
		d.started = true
		d.startedAt, d.startDone = o.Now, o.Done
		d.changedAt = o.Now
		d.measureFrom = o.Now.Add(d.p.Settle / 2)
		d.samples = append(d.samples[:0], sample{o.Now, o.Done})
		dec.Reason = "start in " + d.p.Classes[d.class].Name
		return dec
	}
	if n := len(d.samples); n > 0 && !o.Now.After(d.samples[n-1].t) {
		dec.Reason = "observation out of order: ignored"
		return dec
	}
	if o.Now.Before(d.measureFrom) {
		d.samples = d.samples[:0]
	}
	d.samples = append(d.samples, sample{o.Now, o.Done})
	// Keep the samples of the current window: the oldest kept is the
	// newest one at or before the window's start.
	cut := o.Now.Add(-d.p.Window)
	i := 0
	for i+1 < len(d.samples) && !d.samples[i+1].t.After(cut) {
		i++
	}
	d.samples = d.samples[i:]

	rate, ok := d.measured()
	if ok {
		dec.Measured = rate * 8
		d.est[d.class] = estimate{rate: rate, at: o.Now}
	}
	if d.obj.IsZero() {
		dec.Reason = "no objective"
		return dec
	}
	if d.obj.MinRate == 0 && o.Total <= 0 {
		dec.Reason = "deadline without a known size: cannot judge"
		return dec
	}
	if o.Total > 0 && o.Done >= o.Total {
		dec.Reason = "done"
		return dec
	}
	needed := d.obj.NeededRate(o.Now, o.Done, o.Total, d.p.Margin)
	dec.Needed = needed * 8
	if !ok {
		d.aheadSince = time.Time{}
		dec.Reason = "measuring"
		return dec
	}
	inClass := o.Now.Sub(d.changedAt)
	top := len(d.p.Classes) - 1

	if rate < needed {
		d.aheadSince = time.Time{}
		if inClass < d.p.Settle {
			dec.Reason = "behind, settling in the new class"
			return dec
		}
		// A task that has not had its first data acknowledged yet (a
		// paced copy's first blocks take a while over many connections)
		// is not judged on a rate of zero until a whole window has passed.
		if o.Done == d.startDone && o.Now.Sub(d.startedAt) < d.p.Settle+d.p.Window {
			dec.Reason = "nothing acknowledged yet: waiting a window before judging"
			return dec
		}
		// TCP may just have recovered from what it suffered before the
		// last change: if the class delivers enough now, wait and see.
		if r, ok := d.recent(); ok && r >= needed {
			dec.Reason = fmt.Sprintf("behind over the window, but the last %v moved %s", max(d.p.Window/4, 2*d.p.Interval), FormatRate(r*8))
			return dec
		}
		if d.class == top {
			dec.Reason = "behind in the highest class"
			return dec
		}
		// The lowest higher class not measured (recently) to be too slow.
		to := top
		for k := d.class + 1; k <= top; k++ {
			if !d.fresh(k, o.Now) || d.est[k].rate >= needed {
				to = k
				break
			}
		}
		dec.Reason = d.behindReason(o, rate, needed)
		d.change(&dec, to, o)
		return dec
	}

	if rate < d.p.Ahead*needed || d.class == 0 {
		d.aheadSince = time.Time{}
		dec.Reason = "on track"
		if d.class == 0 {
			dec.Reason = "on track in the lowest class"
		}
		return dec
	}
	if d.aheadSince.IsZero() {
		d.aheadSince = o.Now
	}
	ahead := o.Now.Sub(d.aheadSince)
	if ahead < d.p.Hold || inClass < d.p.Hold {
		dec.Reason = "ahead, holding"
		return dec
	}
	// Lowering now would only put the end of the task at risk.
	if o.Total > 0 && float64(o.Total-o.Done)/rate < d.p.Hold.Seconds() {
		dec.Reason = "ahead, but finishing within the hold time"
		return dec
	}
	to := d.class - 1
	if d.fresh(to, o.Now) && d.est[to].rate < d.p.Ahead*needed {
		dec.Reason = fmt.Sprintf("ahead, but %s measured %s < %g x needed %s %v ago",
			d.p.Classes[to].Name, FormatRate(d.est[to].rate*8), d.p.Ahead, FormatRate(needed*8), o.Now.Sub(d.est[to].at).Round(time.Millisecond))
		return dec
	}
	dec.Reason = fmt.Sprintf("ahead: measured %s >= %g x needed %s for %v",
		FormatRate(rate*8), d.p.Ahead, FormatRate(needed*8), ahead.Round(time.Millisecond))
	d.change(&dec, to, o)
	return dec
}

func (d *Decider) behindReason(o Observation, rate, needed float64) string {
	if d.obj.MinRate > 0 && needed == float64(d.obj.MinRate)/8 {
		return fmt.Sprintf("behind: measured %s < min rate %s", FormatRate(rate*8), FormatRate(needed*8))
	}
	if math.IsInf(needed, 1) {
		return fmt.Sprintf("behind: deadline (less %g%% margin) passed with %d bytes left", d.p.Margin*100, o.Total-o.Done)
	}
	finish := time.Duration(math.MaxInt64)
	if rate > 0 {
		finish = time.Duration(min(float64(o.Total-o.Done)/rate*float64(time.Second), float64(math.MaxInt64/2)))
	}
	return fmt.Sprintf("behind: measured %s < needed %s (projected finish in %v, deadline in %v less %g%% margin)",
		FormatRate(rate*8), FormatRate(needed*8), finish.Round(100*time.Millisecond),
		d.obj.Deadline.Sub(o.Now).Round(100*time.Millisecond), d.p.Margin*100)
}

func (d *Decider) change(dec *Decision, to int, o Observation) {
	dec.To = to
	dec.Changed = to != d.class
	d.class = to
	d.changedAt = o.Now
	d.measureFrom = o.Now.Add(d.p.Settle / 2)
	d.aheadSince = time.Time{}
	d.samples = append(d.samples[:0], sample{o.Now, o.Done})
}
