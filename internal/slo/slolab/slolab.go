// Package slolab runs service-level tagging scenarios on the lab
// (internal/lab): a task with a deadline shares the lab's DSCP-scheduling
// bottleneck with competing bulk flows, tagged by an slo.Tagger or left
// untagged, while tcpdump records the marks its packets carry on the wire.
// The tests of internal/slo and bench/slo use it; the task and the
// competitors are plain Go TCP senders inside lab hosts, not holdfast cp.
package slolab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/holdfast/holdfast/internal/lab"
	"github.com/holdfast/holdfast/internal/slo"
)

// Ports used on the receiving host.
const (
	taskPort       = 5001
	competitorPort = 5100
	// chunk is the size of each write of the senders.
	chunk = 32 << 10
	// sampleEvery is how often the timeline is sampled.
	sampleEvery = 100 * time.Millisecond
)

// Weights returns the weight the lab's weighted scheduler gives to class i
// of a policy with n classes: 1 for the lowest (scavenger: RFC 8622 asks
// that it yield to other traffic), 10 for the next (standard), then 20,
// 40, 60, 80, … So, against backlogged standard traffic, a backlogged task
// gets 1/11 of the link in scavenger, 2/3 in the class above standard,
// 4/5 in the next.
func Weights(n int) []int {
	w := make([]int, n)
	for i := range w {
		switch i {
		case 0:
			w[i] = 1
		case 1:
			w[i] = 10
		default:
			w[i] = min(20*(i-1), lab.MaxWeight)
		}
	}
	return w
}

// Classes returns the lab scheduler classes that mirror policy p, highest
// priority first as the lab wants them, weighted by Weights. The policy's
// start class is the lab's catch-all, so untagged traffic (CS0) and code
// points the policy does not name are served with it; the lowest class
// also takes LE (DSCP 1).
func Classes(p slo.Policy) []lab.Class {
	w := Weights(len(p.Classes))
	var out []lab.Class
	for i := len(p.Classes) - 1; i >= 0; i-- {
		c := p.Classes[i]
		lc := lab.Class{Name: c.Name, Weight: w[i]}
		switch {
		case c.Name == p.Start:
			// catch-all: no list
		case i == 0 && c.DSCP != slo.DSCPLE:
			lc.DSCP = []uint8{c.DSCP, slo.DSCPLE}
		default:
			lc.DSCP = []uint8{c.DSCP}
		}
		out = append(out, lc)
	}
	return out
}

// Scenario describes one run: host 0 sends a task of Size bytes and the
// competing flows to host 1 over the lab's bottleneck.
type Scenario struct {
	// Policy is the tagger's policy (the lab's classes should mirror it,
	// see Classes).
	Policy slo.Policy
	// Deadline is the task's deadline, counted from the task's start; zero
	// for none (then MinRate and RunFor must be set).
	Deadline time.Duration
	// MinRate is the task's minimum rate in bits per second; zero for none.
	MinRate int64
	// Size is the task's size in bytes.
	Size int64
	// TaskConns is the number of TCP connections of the task (at least 1).
	TaskConns int
	// Competitors is the number of competing bulk flows, each of
	// CompetitorConns connections (at least 1), never tagged.
	Competitors, CompetitorConns int
	// Warmup is how long the competitors run before the task starts.
	Warmup time.Duration
	// Tagged runs the task under an slo.Tagger; otherwise its sockets keep
	// the default mark (CS0), or Fixed's.
	Tagged bool
	// Fixed, when set and Tagged is not, names a policy class whose mark
	// the task keeps from start to end: static tagging, the baseline a
	// user without holdfast would pick.
	Fixed string
	// IPv6 runs the task over IPv6 (the competitors always use IPv4).
	IPv6 bool
	// Capture, when set, is a file where tcpdump records the headers of
	// the task's packets leaving host 0.
	Capture string
	// RunFor stops the run this long after the task started even if it
	// has not finished; zero means at the deadline plus one second.
	RunFor time.Duration
	// StopWhenDone ends the run as soon as the task has finished.
	StopWhenDone bool
}

// Sample is one point of a run's timeline.
type Sample struct {
	// At is the time since the task started.
	At time.Duration `json:"at"`
	// Task and Competitors are the bytes received so far from the task and
	// from all competitors since the task started.
	Task        int64 `json:"task"`
	Competitors int64 `json:"competitors"`
	// Class is the task's class at that time.
	Class string `json:"class"`
}

// Result is what a run measured.
type Result struct {
	// Start is when the task started (wall clock, as in the capture).
	Start time.Time `json:"start"`
	// Finished reports whether the task moved all its bytes; Elapsed is
	// how long that took (or how long the run lasted when it did not).
	Finished bool          `json:"finished"`
	Elapsed  time.Duration `json:"elapsed"`
	// MetDeadline reports whether it finished by the deadline.
	MetDeadline bool `json:"met_deadline"`
	// Done is the bytes of the task received.
	Done int64 `json:"done"`
	// Report is the tagger's report (empty when untagged).
	Report slo.Report `json:"report"`
	// Timeline samples progress every 100 ms.
	Timeline []Sample `json:"timeline"`
	// Classes is what the bottleneck from host 0 to host 1 counted per
	// class during the run.
	Classes []lab.ClassStats `json:"classes"`
}

// Rate returns the bytes per second from the competitors (competitors
// true) or the task between times a and b of the timeline.
func (r Result) Rate(competitors bool, a, b time.Duration) float64 {
	var sa, sb *Sample
	for i := range r.Timeline {
		s := &r.Timeline[i]
		if sa == nil && s.At >= a {
			sa = s
		}
		if s.At <= b {
			sb = s
		}
	}
	if sa == nil || sb == nil || sb.At <= sa.At {
		return 0
	}
	if competitors {
		return float64(sb.Competitors-sa.Competitors) / (sb.At - sa.At).Seconds()
	}
	return float64(sb.Task-sa.Task) / (sb.At - sa.At).Seconds()
}

// Run runs sc on lab l (at least two hosts; host 0 sends to host 1) and
// returns what it measured. logger receives the tagger's log.
func Run(ctx context.Context, l *lab.Lab, sc Scenario, logger *slog.Logger) (Result, error) {
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if sc.TaskConns < 1 || sc.Size <= 0 || (sc.Deadline <= 0 && (sc.MinRate <= 0 || sc.RunFor <= 0)) {
		return Result{}, errors.New("scenario needs a size, at least one task connection, and a deadline or a min rate with a run time")
	}
	sc.CompetitorConns = max(sc.CompetitorConns, 1)
	src, dst := l.Host(0), l.Host(1)
	ctx, cancel := context.WithCancel(ctx)
	var closers []io.Closer
	var wg sync.WaitGroup
	// On every return: stop the senders (closing their sockets unblocks
	// their writes), then wait for them.
	defer func() {
		cancel()
		for _, c := range closers {
			c.Close()
		}
		wg.Wait()
	}()

	// Receivers: one listener per flow, counting bytes.
	var taskBytes atomic.Int64
	compBytes := make([]atomic.Int64, sc.Competitors)
	listen := func(port int, count *atomic.Int64) error {
		ln, err := dst.Listen("tcp", ":"+strconv.Itoa(port))
		if err != nil {
			return fmt.Errorf("listening on %s port %d: %w", dst, port, err)
		}
		closers = append(closers, ln)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					buf := make([]byte, 64<<10)
					for {
						n, err := c.Read(buf)
						count.Add(int64(n))
						if err != nil {
							return
						}
					}
				}()
			}
		}()
		return nil
	}
	if err := listen(taskPort, &taskBytes); err != nil {
		return Result{}, err
	}
	for i := range sc.Competitors {
		if err := listen(competitorPort+i, &compBytes[i]); err != nil {
			return Result{}, err
		}
	}

	// Senders.
	send := func(c net.Conn, claim func() int) {
		defer wg.Done()
		buf := make([]byte, chunk)
		for ctx.Err() == nil {
			n := claim()
			if n <= 0 {
				return
			}
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
	}
	dial := func(addr netip.Addr, port int) (*net.TCPConn, error) {
		c, err := src.Dial(ctx, "tcp", netip.AddrPortFrom(addr, uint16(port)).String())
		if err != nil {
			return nil, fmt.Errorf("dialing %s port %d from %s: %w", addr, port, src, err)
		}
		tc := c.(*net.TCPConn)
		// Closing resets the connection and drops what is still buffered,
		// so nothing of this run drains into the next one.
		if err := tc.SetLinger(0); err != nil {
			return nil, err
		}
		closers = append(closers, tc)
		return tc, nil
	}
	for i := range sc.Competitors {
		for range sc.CompetitorConns {
			c, err := dial(dst.Addr(), competitorPort+i)
			if err != nil {
				return Result{}, err
			}
			wg.Add(1)
			go send(c, func() int { return chunk })
		}
	}
	stopCapture := func() error { return nil }
	if sc.Capture != "" {
		var err error
		stopCapture, err = capture(ctx, src, sc.Capture, taskPort)
		if err != nil {
			return Result{}, err
		}
	}
	select {
	case <-time.After(sc.Warmup):
	case <-ctx.Done():
		return Result{}, ctx.Err()
	}

	taskAddr := dst.Addr()
	if sc.IPv6 {
		taskAddr = dst.Addr6()
		if !taskAddr.IsValid() {
			return Result{}, errors.New("lab hosts have no IPv6 address")
		}
	}
	var conns []*net.TCPConn
	for range sc.TaskConns {
		c, err := dial(taskAddr, taskPort)
		if err != nil {
			return Result{}, err
		}
		conns = append(conns, c)
	}
	start := time.Now()
	obj := slo.Objective{MinRate: sc.MinRate}
	if sc.Deadline > 0 {
		obj.Deadline = start.Add(sc.Deadline)
	}
	var tagger *slo.Tagger
	taggerDone := make(chan struct{})
	tctx, tcancel := context.WithCancel(ctx)
	defer tcancel()
	if sc.Tagged {
		var err error
		tagger, err = slo.NewTagger(obj, sc.Policy, func() (int64, int64) { return taskBytes.Load(), sc.Size }, logger)
		if err != nil {
			return Result{}, err
		}
		for _, c := range conns {
			if err := tagger.AddConn(c); err != nil {
				return Result{}, err
			}
		}
		go func() { defer close(taggerDone); tagger.Run(tctx) }()
	} else {
		close(taggerDone)
		if sc.Fixed != "" {
			i := sc.Policy.ClassIndex(sc.Fixed)
			if i < 0 {
				return Result{}, fmt.Errorf("fixed class %q is not in the policy", sc.Fixed)
			}
			for _, c := range conns {
				if err := slo.SetDSCP(c, sc.Policy.Classes[i].DSCP); err != nil {
					return Result{}, err
				}
			}
		}
	}
	compBase := make([]int64, sc.Competitors)
	for i := range compBytes {
		compBase[i] = compBytes[i].Load()
	}
	before := l.Stats(0, 1)
	var claimed atomic.Int64
	for _, c := range conns {
		wg.Add(1)
		go send(c, func() int {
			n := claimed.Add(chunk)
			over := n - sc.Size
			return int(max(0, min(chunk, chunk-over)))
		})
	}

	runFor := sc.RunFor
	if runFor == 0 {
		runFor = sc.Deadline + time.Second
	}
	res := Result{Start: start}
	tick := time.NewTicker(sampleEvery)
	defer tick.Stop()
	sample := func(now time.Time) Sample {
		var comp int64
		for i := range compBytes {
			comp += compBytes[i].Load() - compBase[i]
		}
		s := Sample{At: now.Sub(start), Task: taskBytes.Load(), Competitors: comp, Class: sc.Policy.Start}
		if tagger != nil {
			s.Class = tagger.Class().Name
		} else if sc.Fixed != "" {
			s.Class = sc.Fixed
		}
		return s
	}
	res.Timeline = append(res.Timeline, sample(start))
loop:
	for {
		select {
		case <-ctx.Done():
			return Result{}, ctx.Err()
		case now := <-tick.C:
			s := sample(now)
			res.Timeline = append(res.Timeline, s)
			if !res.Finished && s.Task >= sc.Size {
				res.Finished = true
				res.Elapsed = s.At
				if sc.StopWhenDone {
					break loop
				}
			}
			if s.At >= runFor {
				break loop
			}
		}
	}
	if !res.Finished {
		res.Elapsed = res.Timeline[len(res.Timeline)-1].At
	}
	res.Done = min(taskBytes.Load(), sc.Size)
	res.MetDeadline = sc.Deadline > 0 && res.Finished && res.Elapsed <= sc.Deadline
	tcancel()
	<-taggerDone
	if tagger != nil {
		res.Report = tagger.Report()
	}
	res.Classes = diffStats(before, l.Stats(0, 1))
	cancel()
	for _, c := range closers {
		c.Close()
	}
	closers = nil
	if err := stopCapture(); err != nil {
		return res, err
	}
	return res, nil
}

// diffStats returns the per-class counts of b minus those of a.
func diffStats(a, b lab.PathStats) []lab.ClassStats {
	out := make([]lab.ClassStats, len(b.Classes))
	for i, c := range b.Classes {
		p := a.Class(c.Class)
		out[i] = lab.ClassStats{
			Class:      c.Class,
			InPackets:  c.InPackets - p.InPackets,
			InBytes:    c.InBytes - p.InBytes,
			OutPackets: c.OutPackets - p.OutPackets,
			OutBytes:   c.OutBytes - p.OutBytes,
			LossDrops:  c.LossDrops - p.LossDrops,
			QueueDrops: c.QueueDrops - p.QueueDrops,
			// Occupancy maxima cannot be split by time; keep the whole run's.
			MaxQueueBytes: c.MaxQueueBytes,
		}
	}
	return out
}
