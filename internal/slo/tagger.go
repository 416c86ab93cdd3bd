package slo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// MaxChanges bounds the changes a Tagger keeps for its report; older ones
// are dropped (and counted in Report.DroppedChanges).
const MaxChanges = 10000

// Change records one class change of a task.
type Change struct {
	// Time is when the change was decided and the marks were set.
	Time time.Time `json:"time"`
	// From and To name the classes, FromDSCP and ToDSCP give their marks.
	From     string `json:"from"`
	To       string `json:"to"`
	FromDSCP uint8  `json:"from_dscp"`
	ToDSCP   uint8  `json:"to_dscp"`
	// Reason says why, in words.
	Reason string `json:"reason"`
	// NeededBps is the rate the objective needed, in bits per second; -1
	// when the deadline had passed with bytes left.
	NeededBps float64 `json:"needed_bps"`
	// MeasuredBps is the rate the task measured in the class it left.
	MeasuredBps float64 `json:"measured_bps"`
	// Done and Total are the task's progress at the change, in bytes.
	Done  int64 `json:"done"`
	Total int64 `json:"total"`
}

// Report is what a Tagger did, for a task's --json report.
type Report struct {
	// Objective is the task's objective.
	Objective Objective `json:"objective"`
	// Start and Final name the first and the current class.
	Start string `json:"start_class"`
	Final string `json:"final_class"`
	// Changes lists every class change in order.
	Changes []Change `json:"changes"`
	// DroppedChanges counts changes beyond MaxChanges not kept.
	DroppedChanges int `json:"dropped_changes,omitempty"`
	// BytesByClass is how many bytes the task moved in each class.
	BytesByClass map[string]int64 `json:"bytes_by_class"`
	// TimeByClass is how long the task spent in each class, in seconds.
	TimeByClass map[string]float64 `json:"seconds_by_class"`
	// MarkErrors counts sockets that could not be re-marked.
	MarkErrors int `json:"mark_errors,omitempty"`
}

// Tagger keeps the sockets of one task marked with the class its
// objective needs, re-deciding every Policy.Interval. Its methods are safe
// for concurrent use. It is a prometheus.Collector; wrap the registerer
// with prometheus.WrapRegistererWith to tell several taggers apart.
type Tagger struct {
	obj      Objective
	p        Policy
	progress func() (done, total int64)
	log      *slog.Logger

	mu         sync.Mutex
	dec        *Decider
	conns      map[syscall.Conn]struct{}
	changes    []Change
	dropped    int
	last       Decision
	lastAt     time.Time
	lastDone   int64
	started    time.Time
	bytesBy    []int64
	timeBy     []time.Duration
	raises     int
	lowers     int
	markErrors int

	descClass, descDSCP, descChanges, descNeeded, descMeasured, descBytes, descConns *prometheus.Desc
}

// NewTagger returns a tagger for a task with objective obj under policy p.
// progress reports the bytes the task has moved and its size (zero or less
// when unknown); it is called from the tagger's goroutine and must be safe
// for that. logger receives one line per class change.
func NewTagger(obj Objective, p Policy, progress func() (done, total int64), logger *slog.Logger) (*Tagger, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if progress == nil {
		return nil, errors.New("tagger needs a progress function")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	n := len(p.Classes)
	return &Tagger{
		obj: obj, p: p, progress: progress, log: logger,
		dec:     NewDecider(obj, p),
		conns:   make(map[syscall.Conn]struct{}),
		bytesBy: make([]int64, n),
		timeBy:  make([]time.Duration, n),
		last:    Decision{Measured: -1},

		descClass:    prometheus.NewDesc("holdfast_slo_class_index", "Index of the task's current service class in the policy (0 is scavenger).", nil, nil),
		descDSCP:     prometheus.NewDesc("holdfast_slo_dscp", "DSCP code point the task's sockets are marked with.", nil, nil),
		descChanges:  prometheus.NewDesc("holdfast_slo_class_changes_total", "Class changes of the task, by direction.", []string{"direction"}, nil),
		descNeeded:   prometheus.NewDesc("holdfast_slo_needed_rate_bits_per_second", "Rate the objective needs now (+Inf past the deadline).", nil, nil),
		descMeasured: prometheus.NewDesc("holdfast_slo_measured_rate_bits_per_second", "Rate the task measured over the window (-1 while measuring).", nil, nil),
		descBytes:    prometheus.NewDesc("holdfast_slo_bytes_total", "Bytes the task moved, by class.", []string{"class"}, nil),
		descConns:    prometheus.NewDesc("holdfast_slo_sockets", "Live sockets of the task being marked.", nil, nil),
	}, nil
}

// Class returns the task's current class.
func (t *Tagger) Class() Class {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.p.Classes[t.dec.Class()]
}

// AddConn marks c with the current class and re-marks it at every change
// until RemoveConn. It fails, leaving c out, when c cannot be marked.
func (t *Tagger) AddConn(c syscall.Conn) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	cl := t.p.Classes[t.dec.Class()]
	if err := SetDSCP(c, cl.DSCP); err != nil {
		return fmt.Errorf("marking socket with %s (%s): %w", cl.Name, DSCPName(cl.DSCP), err)
	}
	t.conns[c] = struct{}{}
	return nil
}

// RemoveConn stops re-marking c (its mark stays as it is).
func (t *Tagger) RemoveConn(c syscall.Conn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.conns, c)
}

// Run re-decides every Policy.Interval until ctx ends, then returns nil.
func (t *Tagger) Run(ctx context.Context) error {
	t.Step(time.Now())
	tick := time.NewTicker(t.p.Interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			t.Step(time.Now())
			return nil
		case now := <-tick.C:
			t.Step(now)
		}
	}
}

// Step reads the progress, decides once at now and, on a change, re-marks
// every socket. Run calls it; it is exported for callers that drive their
// own clock.
func (t *Tagger) Step(now time.Time) Decision {
	done, total := t.progress()
	t.mu.Lock()
	defer t.mu.Unlock()
	cur := t.dec.Class()
	if t.started.IsZero() {
		t.started, t.lastAt, t.lastDone = now, now, done
	}
	if now.After(t.lastAt) {
		t.timeBy[cur] += now.Sub(t.lastAt)
		t.bytesBy[cur] += max(done-t.lastDone, 0) // progress never counts backwards
		t.lastAt, t.lastDone = now, done
	}
	d := t.dec.Observe(Observation{Now: now, Done: done, Total: total})
	t.last = d
	if !d.Changed {
		return d
	}
	from, to := t.p.Classes[d.From], t.p.Classes[d.To]
	if d.To > d.From {
		t.raises++
	} else {
		t.lowers++
	}
	for c := range t.conns {
		if err := SetDSCP(c, to.DSCP); err != nil {
			// A closed socket is a finished connection, not a failure.
			if !errors.Is(err, net.ErrClosed) && !errors.Is(err, syscall.EBADF) {
				t.markErrors++
				t.log.Warn("slo: cannot re-mark socket", "class", to.Name, "err", err)
			}
			delete(t.conns, c)
		}
	}
	needed := d.Needed
	if math.IsInf(needed, 1) {
		needed = -1
	}
	ch := Change{
		Time: now, From: from.Name, To: to.Name, FromDSCP: from.DSCP, ToDSCP: to.DSCP,
		Reason: d.Reason, NeededBps: needed, MeasuredBps: d.Measured, Done: done, Total: total,
	}
	if len(t.changes) >= MaxChanges {
		t.changes = t.changes[1:]
		t.dropped++
	}
	t.changes = append(t.changes, ch)
	t.log.Info("slo: class changed", "from", from.Name, "to", to.Name,
		"dscp", DSCPName(to.DSCP), "tos", fmt.Sprintf("0x%02x", to.DSCP<<2),
		"reason", d.Reason, "sockets", len(t.conns), "done", done, "total", total)
	return d
}

// Changes returns the class changes so far, oldest first.
func (t *Tagger) Changes() []Change {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]Change(nil), t.changes...)
}

// Report returns what the tagger did so far.
func (t *Tagger) Report() Report {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := Report{
		Objective:      t.obj,
		Start:          t.p.Start,
		Final:          t.p.Classes[t.dec.Class()].Name,
		Changes:        append([]Change{}, t.changes...),
		DroppedChanges: t.dropped,
		BytesByClass:   make(map[string]int64),
		TimeByClass:    make(map[string]float64),
		MarkErrors:     t.markErrors,
	}
	for i, c := range t.p.Classes {
		if t.timeBy[i] > 0 || t.bytesBy[i] > 0 {
			r.BytesByClass[c.Name] = t.bytesBy[i]
			r.TimeByClass[c.Name] = t.timeBy[i].Seconds()
		}
	}
	return r
}

// Describe implements prometheus.Collector.
func (t *Tagger) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{t.descClass, t.descDSCP, t.descChanges, t.descNeeded, t.descMeasured, t.descBytes, t.descConns} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (t *Tagger) Collect(ch chan<- prometheus.Metric) {
	t.mu.Lock()
	defer t.mu.Unlock()
	cur := t.dec.Class()
	ch <- prometheus.MustNewConstMetric(t.descClass, prometheus.GaugeValue, float64(cur))
	ch <- prometheus.MustNewConstMetric(t.descDSCP, prometheus.GaugeValue, float64(t.p.Classes[cur].DSCP))
	ch <- prometheus.MustNewConstMetric(t.descChanges, prometheus.CounterValue, float64(t.raises), "raise")
	ch <- prometheus.MustNewConstMetric(t.descChanges, prometheus.CounterValue, float64(t.lowers), "lower")
	ch <- prometheus.MustNewConstMetric(t.descNeeded, prometheus.GaugeValue, t.last.Needed)
	ch <- prometheus.MustNewConstMetric(t.descMeasured, prometheus.GaugeValue, t.last.Measured)
	ch <- prometheus.MustNewConstMetric(t.descConns, prometheus.GaugeValue, float64(len(t.conns)))
	for i, c := range t.p.Classes {
		ch <- prometheus.MustNewConstMetric(t.descBytes, prometheus.CounterValue, float64(t.bytesBy[i]), c.Name)
	}
}
