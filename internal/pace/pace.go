// Package pace owns send pacing: it estimates the bandwidth available end to
// end to a transfer and spaces the transfer's sends to it, so that the sum of
// all its connections never bursts above the estimate and shallow switch
// buffers on the path are not overrun (micro-congestion).
//
// Two mechanisms work together:
//
//   - Pacer, a userspace token bucket shared by all connections of a
//     transfer: before a message of n bytes goes out on any connection the
//     sender waits until the bucket holds n bytes. The bucket is one message
//     deep, so the aggregate never runs ahead of the rate by more than one
//     message.
//   - SetSocketRate, which sets SO_MAX_PACING_RATE on each socket so the
//     kernel spreads each message's segments over time instead of sending
//     them back to back at line rate (TCP internal pacing, honoured by the
//     kernel since Linux 4.13 whatever the qdisc).
//
// Estimator turns samples of delivered bytes (acknowledged by the receiver),
// the kernel's TCP_INFO delivery rate and the receiver's reported goodput
// into a bandwidth estimate. Like BBR's bottleneck-bandwidth filter it keeps
// the maximum of recent per-interval delivery rates (delivery can only be
// lower than the path allows, never higher) and paces at that estimate times
// a gain that cycles through a probe phase (1.25), a drain phase (0.75) and
// cruise (1.0), so the estimate can grow when the path frees up.
package pace

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Limits and defaults.
const (
	// MinRate is the lowest rate a Pacer or estimate goes down to, in bytes
	// per second (64 KiB/s): pacing slower than that only stalls a transfer.
	MinRate = 64 << 10
	// DefaultWindow is how long a delivery-rate sample is remembered by the
	// max filter unless Config says otherwise.
	DefaultWindow = 2 * time.Second
	// DefaultInterval is the shortest interval over which a delivery rate
	// is measured.
	DefaultInterval = 50 * time.Millisecond
)

// The gain cycle applied to the estimate, one phase per interval: a probe
// above the estimate, a drain as far below it, then cruise at the estimate.
// Probing costs drops at a shallow bottleneck queue (every byte sent above
// the bottleneck rate beyond what the queue holds is lost), so the cycle
// adapts: a probe that raised the delivery rate keeps probing strong and
// often; one that did not halves the next probe's excess (down to
// minProbe) and doubles the cruise before it (up to maxCruise).
const (
	maxProbe   = 1.25
	minProbe   = 1.02
	minCruise  = 6
	maxCruise  = 96
	probeFound = 0.5 // share of the probe's excess the delivery rate must gain
)

// Config configures an Estimator.
type Config struct {
	// Window is how long a delivery-rate sample stays in the max filter.
	Window time.Duration
	// Interval is the shortest measuring interval; it is raised to the
	// path's RTT when SetRTT says the RTT is longer.
	Interval time.Duration
	// Limit, when positive, caps the pacing rate (bytes per second), e.g.
	// from --rate-limit.
	Limit float64
	// Initial is the estimate before any sample (bytes per second); zero
	// means "unknown": Rate returns 0 (do not pace) until the first sample.
	Initial float64
	// MinSampleBytes, when positive, is the least a delivery-rate sample
	// spans (an interval is extended until that much was delivered, up to
	// four intervals): acknowledgements that come a large message at a
	// time make short samples jumpy, and the max filter would keep their
	// peaks, overestimating the path.
	MinSampleBytes int64
	// Remembered, when positive, is a bandwidth measured on the same path
	// by an earlier transfer (bytes per second). The estimate starts there,
	// as a sample that ages out of the window like any other, and the
	// startup phase is skipped: a transfer that knows its path neither
	// crawls up to it nor overshoots it (at a shallow bottleneck queue a
	// startup above the path's rate is hundreds of drops).
	Remembered float64
}

// DefaultConfig returns a configuration with the default window and interval
// and no limit.
func DefaultConfig() Config {
	return Config{Window: DefaultWindow, Interval: DefaultInterval}
}

// Validate reports a bad configuration.
func (c Config) Validate() error {
	if c.Window < 0 || c.Interval < 0 {
		return errors.New("pace: window and interval must not be negative")
	}
	if c.Window != 0 && c.Interval > c.Window {
		return fmt.Errorf("pace: interval %v longer than window %v", c.Interval, c.Window)
	}
	if c.Limit < 0 || c.Initial < 0 || c.Remembered < 0 {
		return errors.New("pace: limit and initial rate must not be negative")
	}
	return nil
}

type sample struct {
	at   time.Time
	rate float64
}

// Estimator estimates the end-to-end bandwidth available to one transfer.
// It is safe for concurrent use.
type Estimator struct {
	mu       sync.Mutex
	cfg      Config
	rtt      time.Duration
	start    time.Time // start of the current measuring interval
	startB   int64     // delivered bytes at start
	last     int64     // delivered bytes as last reported
	samples  []sample  // delivery-rate samples within the window
	kernel   float64   // latest sum of TCP_INFO delivery rates
	receiver float64   // latest goodput the receiver reported
	phase    int       // 0 probe, 1 drain, then cruise
	phaseAt  time.Time
	probe    float64 // gain of the next probe
	cruise   int     // cruise intervals after each drain
	probeBW  float64 // estimate when the probe began
	// startup: until the estimate stops growing (three intervals without
	// 25% growth) pace at startupGain so that a low first estimate does not
	// lock the transfer into a low rate.
	startup   bool
	plateau   int
	lastMax   float64
	lastCheck time.Time
	seed      float64 // Config.Remembered until it becomes a sample
	added     int     // samples taken so far
	checked   int     // added at the last startup check
}

// seedLocked turns the remembered bandwidth into a sample taken at now.
func (e *Estimator) seedLocked(now time.Time) {
	if e.seed > 0 {
		e.samples = append(e.samples, sample{now, e.seed})
		e.seed = 0
	}
}

// startupGain is the gain while the estimate is still growing fast.
const startupGain = 2.0

// NewEstimator returns an estimator with cfg (zero fields take defaults).
func NewEstimator(cfg Config) (*Estimator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Window == 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultInterval
	}
	e := &Estimator{cfg: cfg, startup: true, probe: maxProbe, cruise: minCruise, phase: 2}
	if cfg.Remembered > 0 {
		e.seed = cfg.Remembered // a sample from the first time seen
		e.startup = false
	}
	return e, nil
}

// SetRTT tells the estimator the path's round-trip time; measuring intervals
// are at least one RTT long.
func (e *Estimator) SetRTT(rtt time.Duration) {
	e.mu.Lock()
	e.rtt = rtt
	e.mu.Unlock()
}

// SetLimit changes the cap on the pacing rate (0 removes it).
func (e *Estimator) SetLimit(bytesPerSec float64) {
	e.mu.Lock()
	e.cfg.Limit = bytesPerSec
	e.mu.Unlock()
}

func (e *Estimator) interval() time.Duration {
	iv := e.cfg.Interval
	if e.rtt > iv {
		iv = e.rtt
	}
	return iv
}

// Delivered reports the total bytes the receiver has acknowledged so far
// (a monotonic counter) at time now. A delivery-rate sample is taken each
// time a measuring interval has passed.
func (e *Estimator) Delivered(now time.Time, total int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.seedLocked(now)
	if e.start.IsZero() {
		e.start, e.startB, e.last = now, total, total
		return
	}
	e.last = total
	if d := now.Sub(e.start); d >= e.interval() && (total-e.startB >= e.cfg.MinSampleBytes || d >= 4*e.interval()) {
		e.addLocked(now, float64(total-e.startB)/d.Seconds())
		e.start, e.startB = now, total
	}
}

// Restart begins a new measuring interval at now without taking a sample:
// call it after the sender was idle (application-limited), since an interval
// spent waiting measures the sender, not the path.
func (e *Estimator) Restart(now time.Time) {
	e.mu.Lock()
	e.start, e.startB = now, e.last
	e.mu.Unlock()
}

// KernelRate reports the sum over the transfer's sockets of TCP_INFO's
// delivery rate (bytes per second); it is used as a sample too, since the
// kernel measures it per ack.
func (e *Estimator) KernelRate(now time.Time, bytesPerSec float64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.kernel = bytesPerSec
}

// ReceiverRate reports the goodput the receiver measured (bytes per second
// written to storage). It is reported in Snapshot; it is not a sample of the
// max filter (measured over the receiver's short write intervals it is too
// jumpy: Delivered's samples carry the same information).
func (e *Estimator) ReceiverRate(now time.Time, bytesPerSec float64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.receiver = bytesPerSec
}

func (e *Estimator) addLocked(now time.Time, rate float64) {
	if rate <= 0 {
		return
	}
	e.samples = append(e.samples, sample{now, rate})
	e.added++
	cut := 0
	for cut < len(e.samples) && now.Sub(e.samples[cut].at) > e.cfg.Window {
		cut++
	}
	// Keep at least the newest sample.
	if cut == len(e.samples) {
		cut--
	}
	e.samples = e.samples[cut:]
}

// Bandwidth returns the current bandwidth estimate in bytes per second: the
// maximum delivery rate seen within the window (0 when nothing is known yet
// and no initial rate was configured).
func (e *Estimator) Bandwidth() float64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.bandwidthLocked()
}

func (e *Estimator) bandwidthLocked() float64 {
	bw := e.seed
	for _, s := range e.samples {
		bw = max(bw, s.rate)
	}
	if bw == 0 {
		bw = e.cfg.Initial
	}
	return bw
}

// Rate returns the rate to pace at now (bytes per second): the bandwidth
// estimate times the current gain, capped by the limit. 0 means "do not
// pace yet" (no estimate and no limit).
func (e *Estimator) Rate(now time.Time) float64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.seedLocked(now)
	bw := e.bandwidthLocked()
	if bw > 0 {
		if e.phaseAt.IsZero() {
			e.phaseAt = now
		}
		if e.startup {
			// A check counts only when a sample came since the last one:
			// samples span at least an interval and come on the caller's
			// ticks, so checks without one would end startup early.
			if now.Sub(e.lastCheck) >= e.interval() && e.added > e.checked {
				e.lastCheck, e.checked = now, e.added
				if bw >= 1.25*e.lastMax {
					e.lastMax, e.plateau = bw, 0
				} else if e.plateau++; e.plateau >= 3 {
					e.startup = false
				}
			}
			if e.startup {
				bw = max(bw*startupGain, MinRate)
				if e.cfg.Limit > 0 && bw > e.cfg.Limit {
					bw = e.cfg.Limit
				}
				return bw
			}
		}
		if now.Sub(e.phaseAt) >= e.interval() {
			e.advanceLocked(bw)
			e.phaseAt = now
		}
		bw = max(bw*e.gainLocked(), MinRate)
	}
	if e.cfg.Limit > 0 && (bw == 0 || bw > e.cfg.Limit) {
		bw = e.cfg.Limit
	}
	return bw
}

// gainLocked is the gain of the current phase.
func (e *Estimator) gainLocked() float64 {
	switch e.phase {
	case 0:
		return e.probe
	case 1:
		return 2 - e.probe
	}
	return 1
}

// advanceLocked moves to the next phase; leaving the drain it judges the
// probe: did the delivery rate rise by a good part of the probe's excess?
func (e *Estimator) advanceLocked(bw float64) {
	switch {
	case e.phase == 0:
		e.phase = 1
	case e.phase == 1:
		if e.probeBW > 0 && bw >= e.probeBW*(1+probeFound*(e.probe-1)) {
			e.probe, e.cruise = maxProbe, minCruise // the path had room
		} else {
			e.probe = max(minProbe, 1+(e.probe-1)/2)
			e.cruise = min(2*e.cruise, maxCruise)
		}
		e.phase = 2
	case e.phase >= 1+e.cruise:
		e.phase, e.probeBW = 0, bw
	default:
		e.phase++
	}
}

// Snapshot is what the estimator knows, for reports.
type Snapshot struct {
	Bandwidth    float64 `json:"bandwidth_bytes_per_sec"`
	KernelRate   float64 `json:"kernel_delivery_rate_bytes_per_sec"`
	ReceiverRate float64 `json:"receiver_goodput_bytes_per_sec"`
	Limit        float64 `json:"limit_bytes_per_sec,omitempty"`
	Startup      bool    `json:"startup"`
}

// Snapshot returns the estimator's current view.
func (e *Estimator) Snapshot() Snapshot {
	e.mu.Lock()
	defer e.mu.Unlock()
	return Snapshot{Bandwidth: e.bandwidthLocked(), KernelRate: e.kernel, ReceiverRate: e.receiver, Limit: e.cfg.Limit, Startup: e.startup}
}

// Pacer spaces messages across all connections of a transfer so that their
// sum never exceeds the rate: a token bucket one message deep. The zero
// value is unlimited. It is safe for concurrent use.
type Pacer struct {
	mu   sync.Mutex
	rate float64   // bytes per second; 0 = unlimited
	next time.Time // earliest time the next message may start
	now  func() time.Time
}

// NewPacer returns a pacer at rate bytes per second (0 = unlimited).
func NewPacer(rate float64) *Pacer {
	return &Pacer{rate: rate, now: time.Now}
}

// SetRate changes the rate (0 = unlimited). Messages already scheduled keep
// their slot.
func (p *Pacer) SetRate(rate float64) {
	p.mu.Lock()
	p.rate = rate
	p.mu.Unlock()
}

// RateNow returns the current rate.
func (p *Pacer) RateNow() float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.rate
}

// Reserve books a slot for a message of n bytes and returns when it may be
// sent. Successive reservations, from any goroutine, are spaced by n/rate.
func (p *Pacer) Reserve(n int) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	if p.rate <= 0 {
		p.next = now
		return now
	}
	at := p.next
	if at.Before(now) {
		// The bucket refills while idle but holds at most one message:
		// after a pause the next message goes now, not a burst of them.
		at = now
	}
	p.next = at.Add(time.Duration(float64(n) / p.rate * float64(time.Second)))
	return at
}

// Wait blocks until a message of n bytes may be sent.
func (p *Pacer) Wait(ctx context.Context, n int) error {
	at := p.Reserve(n)
	d := time.Until(at)
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// SetSocketRate sets SO_MAX_PACING_RATE on c to bytesPerSec (0 removes the
// cap). It reports whether the kernel accepted it.
func SetSocketRate(c net.Conn, bytesPerSec float64) error {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return fmt.Errorf("pacing %T: not a TCP connection", c)
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return fmt.Errorf("pacing: %w", err)
	}
	v := uint64(bytesPerSec)
	if bytesPerSec <= 0 {
		v = ^uint64(0)
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		// The option takes an unsigned long; a 32-bit value caps at 4 GB/s,
		// so use the 64-bit form the kernel accepts since 5.x.
		serr = unix.SetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_MAX_PACING_RATE, v)
		if serr != nil && v > 0xffffffff {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MAX_PACING_RATE, -1)
		} else if serr != nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MAX_PACING_RATE, int(v))
		}
	})
	if err != nil {
		return fmt.Errorf("pacing: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("setting SO_MAX_PACING_RATE: %w", serr)
	}
	return nil
}
