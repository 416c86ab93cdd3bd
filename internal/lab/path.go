package lab

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
)

// Limits on path parameters. They keep a typo ("queue 64GiB") from turning
// into an emulator that eats the machine's memory.
const (
	// MaxRate is the highest rate a path can be given, in bits per second.
	MaxRate = 1_000_000_000_000
	// MaxDelay is the longest one-way delay a path can be given.
	MaxDelay = 10 * time.Second
	// MaxQueueBytes is the largest bottleneck queue, per class, in bytes.
	MaxQueueBytes = 64 << 20
	// MinDefaultQueueBytes is the smallest queue a rate-limited path gets
	// when Path.QueueBytes is zero (the default is one bandwidth-delay product).
	MinDefaultQueueBytes = 64 << 10
	// MaxClasses is the most DSCP classes a scheduler can have.
	MaxClasses = 16
	// MaxWeight is the largest weight of a class under SchedWeighted.
	MaxWeight = 1000
	// MaxLossBurst is the longest mean loss burst, in packets.
	MaxLossBurst = 1000
)

// Path describes one direction of the emulated network between two hosts:
// what a packet meets on its way. The zero Path is a perfect wire: no rate
// limit, no delay, no loss.
//
// The order of the stages follows DESIGN.md: random loss first, then the
// bottleneck queue (tail drop at QueueBytes, per-DSCP classes served by
// Sched), then a token-bucket server at Rate, then a delay line of Delay ±
// Jitter, then the destination host.
type Path struct {
	// Rate is the bottleneck rate in bits per second, counting whole IP
	// packets. Zero means no limit (the emulator forwards as fast as it can,
	// and no queue builds).
	Rate int64
	// Delay is the one-way propagation delay. A symmetric path set with
	// SetPath has an RTT of twice this.
	Delay time.Duration
	// Jitter adds a uniformly distributed offset in [-Jitter, +Jitter] to
	// each packet's delay (never making it negative). Packets keep their
	// order unless Reorder is set.
	Jitter time.Duration
	// Reorder lets jitter reorder packets, as a real multi-path network may.
	Reorder bool
	// Loss is the probability, in [0, 1), that a packet is dropped at random
	// before it reaches the queue.
	Loss float64
	// LossBurst, when above 1, makes losses come in bursts of this mean
	// length in packets (a two-state Gilbert model whose long-run loss is
	// still Loss). Zero or 1 means independent losses.
	LossBurst float64
	// QueueBytes bounds the bottleneck queue in bytes (tail drop). Under
	// SchedFIFO it bounds the single queue; under SchedStrict and
	// SchedWeighted each class has its own queue of this size unless the
	// class sets its own. Zero means one bandwidth-delay product
	// (Rate × 2·Delay), at least MinDefaultQueueBytes. It has no effect
	// when Rate is zero.
	QueueBytes int
	// Burst is the depth of the token bucket in bytes. Zero means one MTU,
	// which makes the server a strict pacer at Rate.
	Burst int
	// Sched says how the bottleneck serves DSCP classes.
	Sched Sched
}

// SchedMode is the discipline of the bottleneck queue.
type SchedMode int

const (
	// SchedFIFO serves every packet from one queue in arrival order. Packets
	// are still counted per class.
	SchedFIFO SchedMode = iota
	// SchedStrict always serves the first non-empty class, in the order of
	// Sched.Classes (the first is the highest priority).
	SchedStrict
	// SchedWeighted shares the rate between backlogged classes in
	// proportion to their weights (deficit round robin).
	SchedWeighted
)

// String returns the name used by ParsePath: fifo, strict or weighted.
func (m SchedMode) String() string {
	switch m {
	case SchedFIFO:
		return "fifo"
	case SchedStrict:
		return "strict"
	case SchedWeighted:
		return "weighted"
	}
	return fmt.Sprintf("SchedMode(%d)", int(m))
}

// Sched configures the bottleneck scheduler.
type Sched struct {
	// Mode is the queue discipline.
	Mode SchedMode
	// Classes maps DSCP code points to classes, highest priority first.
	// Empty means DefaultClasses().
	Classes []Class
}

// Class is a set of DSCP code points served as one queue.
type Class struct {
	// Name labels the class in statistics.
	Name string
	// DSCP lists the code points (0-63) of the class. A class with an empty
	// list is the catch-all for code points no other class names; when no
	// class has an empty list, the last class is the catch-all.
	DSCP []uint8
	// Weight is the share of the class under SchedWeighted (1 to MaxWeight;
	// zero counts as 1).
	Weight int
	// QueueBytes overrides Path.QueueBytes for this class under SchedStrict
	// and SchedWeighted.
	QueueBytes int
}

// Well-known DSCP code points (RFC 2474, 2597, 3246, 8622).
const (
	DSCPDefault = 0  // best effort (CS0)
	DSCPLE      = 1  // lower effort / scavenger (RFC 8622)
	DSCPCS1     = 8  // class selector 1, the old scavenger
	DSCPAF11    = 10 // assured forwarding 1.1
	DSCPAF21    = 18 // assured forwarding 2.1
	DSCPAF31    = 26 // assured forwarding 3.1
	DSCPAF41    = 34 // assured forwarding 4.1
	DSCPEF      = 46 // expedited forwarding
)

// DefaultClasses returns the classes used when Sched.Classes is empty,
// highest priority first, with weights 8:4:2:1:
//
//	realtime   EF(46), VOICE-ADMIT(44), CS5(40), CS6(48), CS7(56)
//	high       AF4x(34,36,38), CS4(32), AF3x(26,28,30), CS3(24)
//	default    everything else
//	scavenger  LE(1), CS1(8)
func DefaultClasses() []Class {
	return []Class{
		{Name: "realtime", DSCP: []uint8{46, 44, 40, 48, 56}, Weight: 8},
		{Name: "high", DSCP: []uint8{34, 36, 38, 32, 26, 28, 30, 24}, Weight: 4},
		{Name: "default", Weight: 2},
		{Name: "scavenger", DSCP: []uint8{1, 8}, Weight: 1},
	}
}

// classes returns the effective class list.
func (s Sched) classes() []Class {
	if len(s.Classes) == 0 {
		return DefaultClasses()
	}
	return s.Classes
}

// classTable maps each of the 64 code points to an index into classes.
func classTable(classes []Class) [64]uint8 {
	var t [64]uint8
	catchAll := len(classes) - 1
	for i, c := range classes {
		if len(c.DSCP) == 0 {
			catchAll = i
			break
		}
	}
	for d := range t {
		t[d] = uint8(catchAll)
	}
	for i, c := range classes {
		for _, d := range c.DSCP {
			t[d&63] = uint8(i)
		}
	}
	return t
}

// Validate reports the first problem with p, or nil.
func (p Path) Validate() error {
	switch {
	case p.Rate < 0 || p.Rate > MaxRate:
		return fmt.Errorf("rate %d bit/s out of range [0, %d]", p.Rate, int64(MaxRate))
	case p.Delay < 0 || p.Delay > MaxDelay:
		return fmt.Errorf("delay %v out of range [0, %v]", p.Delay, MaxDelay)
	case p.Jitter < 0 || p.Jitter > MaxDelay:
		return fmt.Errorf("jitter %v out of range [0, %v]", p.Jitter, MaxDelay)
	case math.IsNaN(p.Loss) || p.Loss < 0 || p.Loss >= 1:
		return fmt.Errorf("loss %v out of range [0, 1)", p.Loss)
	case math.IsNaN(p.LossBurst) || p.LossBurst < 0 || p.LossBurst > MaxLossBurst:
		return fmt.Errorf("loss burst %v out of range [0, %d] packets", p.LossBurst, MaxLossBurst)
	case p.QueueBytes < 0 || p.QueueBytes > MaxQueueBytes:
		return fmt.Errorf("queue %d bytes out of range [0, %d]", p.QueueBytes, MaxQueueBytes)
	case p.Burst < 0 || p.Burst > MaxQueueBytes:
		return fmt.Errorf("burst %d bytes out of range [0, %d]", p.Burst, MaxQueueBytes)
	}
	return p.Sched.Validate()
}

// Validate reports the first problem with s, or nil.
func (s Sched) Validate() error {
	if s.Mode < SchedFIFO || s.Mode > SchedWeighted {
		return fmt.Errorf("unknown scheduler mode %d", int(s.Mode))
	}
	if len(s.Classes) > MaxClasses {
		return fmt.Errorf("%d classes, at most %d allowed", len(s.Classes), MaxClasses)
	}
	names := make(map[string]bool)
	seen := make(map[uint8]string)
	catchAll := ""
	for i, c := range s.Classes {
		if c.Name == "" {
			return fmt.Errorf("class %d has no name", i)
		}
		if names[c.Name] {
			return fmt.Errorf("class name %q used twice", c.Name)
		}
		names[c.Name] = true
		if c.Weight < 0 || c.Weight > MaxWeight {
			return fmt.Errorf("class %q: weight %d out of range [0, %d]", c.Name, c.Weight, MaxWeight)
		}
		if c.QueueBytes < 0 || c.QueueBytes > MaxQueueBytes {
			return fmt.Errorf("class %q: queue %d bytes out of range [0, %d]", c.Name, c.QueueBytes, MaxQueueBytes)
		}
		if len(c.DSCP) == 0 {
			if catchAll != "" {
				return fmt.Errorf("classes %q and %q both have no DSCP list; at most one catch-all class", catchAll, c.Name)
			}
			catchAll = c.Name
		}
		for _, d := range c.DSCP {
			if d > 63 {
				return fmt.Errorf("class %q: DSCP %d out of range [0, 63]", c.Name, d)
			}
			if other, ok := seen[d]; ok {
				return fmt.Errorf("DSCP %d is in both class %q and class %q", d, other, c.Name)
			}
			seen[d] = c.Name
		}
	}
	return nil
}

// queueLimit returns the effective queue limit of class i in bytes, for a
// path whose MTU is mtu.
func (p Path) queueLimit(classes []Class, i, mtu int) int {
	q := p.QueueBytes
	if p.Sched.Mode != SchedFIFO && i >= 0 && i < len(classes) && classes[i].QueueBytes > 0 {
		q = classes[i].QueueBytes
	}
	if q == 0 {
		bdp := int(float64(p.Rate) / 8 * (2 * p.Delay).Seconds())
		q = max(bdp, MinDefaultQueueBytes)
		q = min(q, MaxQueueBytes)
	}
	return max(q, mtu) // a queue must hold at least one packet
}

// String formats p in the syntax ParsePath reads; ParsePath(p.String())
// gives p back (up to float rounding of the loss).
func (p Path) String() string {
	var parts []string
	if p.Rate > 0 {
		parts = append(parts, "rate "+FormatRate(p.Rate))
	}
	if p.Delay > 0 {
		parts = append(parts, "delay "+p.Delay.String())
	}
	if p.Jitter > 0 {
		parts = append(parts, "jitter "+p.Jitter.String())
	}
	if p.Reorder {
		parts = append(parts, "reorder")
	}
	if p.Loss > 0 {
		parts = append(parts, "loss "+strconv.FormatFloat(p.Loss*100, 'g', -1, 64)+"%")
	}
	if p.LossBurst > 0 {
		parts = append(parts, "lossburst "+strconv.FormatFloat(p.LossBurst, 'g', -1, 64))
	}
	if p.QueueBytes > 0 {
		parts = append(parts, "queue "+strconv.Itoa(p.QueueBytes)+"B")
	}
	if p.Burst > 0 {
		parts = append(parts, "burst "+strconv.Itoa(p.Burst)+"B")
	}
	if p.Sched.Mode != SchedFIFO {
		parts = append(parts, "sched "+p.Sched.Mode.String())
		if p.Sched.Mode == SchedWeighted && len(p.Sched.Classes) == 0 {
			// Default classes: nothing more to say.
		} else if len(p.Sched.Classes) > 0 && p.Sched.Mode == SchedWeighted && sameDSCPAsDefault(p.Sched.Classes) {
			ws := make([]string, len(p.Sched.Classes))
			for i, c := range p.Sched.Classes {
				ws[i] = strconv.Itoa(max(c.Weight, 1))
			}
			parts = append(parts, "weights "+strings.Join(ws, ":"))
		}
	}
	if len(parts) == 0 {
		return "perfect"
	}
	return strings.Join(parts, ", ")
}

// sameDSCPAsDefault reports whether classes are DefaultClasses() up to
// weights (the only class change the text syntax can express).
func sameDSCPAsDefault(classes []Class) bool {
	def := DefaultClasses()
	if len(classes) != len(def) {
		return false
	}
	for i := range def {
		if classes[i].Name != def[i].Name || classes[i].QueueBytes != 0 || len(classes[i].DSCP) != len(def[i].DSCP) {
			return false
		}
		for j := range def[i].DSCP {
			if classes[i].DSCP[j] != def[i].DSCP[j] {
				return false
			}
		}
	}
	return true
}

// ErrPathSyntax is wrapped by every error ParsePath returns.
var ErrPathSyntax = errors.New("path syntax")

// ParsePath reads a path description: items separated by commas or spaces,
// each a keyword and (for most) a value, in any order:
//
//	rate 200Mbit     bottleneck rate: bit, kbit, Mbit, Gbit, Tbit (powers of 1000)
//	delay 50ms       one-way delay (Go duration)
//	rtt 100ms        round-trip time: sets delay to half of it
//	jitter 2ms       ± uniform jitter on the delay
//	reorder          let jitter reorder packets
//	loss 0.1%        random loss, as a percentage or a fraction (0.001)
//	lossburst 4      losses come in bursts of 4 packets on average
//	queue 64KiB      bottleneck queue (B, KB, KiB, MB, MiB, …)
//	burst 3000B      token-bucket depth
//	sched strict     fifo, strict or weighted
//	weights 8:4:2:1  weights of the default classes (implies sched weighted)
//
// The word "perfect" alone means the zero Path. Example:
//
//	ParsePath("rate 200Mbit, rtt 100ms, loss 0.1%, queue 64KiB")
func ParsePath(s string) (Path, error) {
	var p Path
	fields := strings.FieldsFunc(s, func(r rune) bool {
		return r == ',' || r == ' ' || r == '\t' || r == '\n' || r == ';'
	})
	if len(fields) == 1 && strings.EqualFold(fields[0], "perfect") {
		return p, nil
	}
	seen := make(map[string]bool)
	for i := 0; i < len(fields); i++ {
		key := strings.ToLower(fields[i])
		if seen[key] || (key == "rtt" && seen["delay"]) || (key == "delay" && seen["rtt"]) {
			return Path{}, fmt.Errorf("%w: %q given twice", ErrPathSyntax, key)
		}
		seen[key] = true
		if key == "reorder" {
			p.Reorder = true
			continue
		}
		if i+1 >= len(fields) {
			return Path{}, fmt.Errorf("%w: %q needs a value", ErrPathSyntax, key)
		}
		i++
		val := fields[i]
		var err error
		switch key {
		case "rate":
			p.Rate, err = ParseRate(val)
		case "delay":
			p.Delay, err = parseDuration(val)
		case "rtt":
			var rtt time.Duration
			rtt, err = parseDuration(val)
			p.Delay = rtt / 2
		case "jitter":
			p.Jitter, err = parseDuration(val)
		case "loss":
			p.Loss, err = parseLoss(val)
		case "lossburst":
			p.LossBurst, err = strconv.ParseFloat(val, 64)
			if err == nil && (math.IsNaN(p.LossBurst) || p.LossBurst < 0 || p.LossBurst > MaxLossBurst) {
				err = fmt.Errorf("want a mean burst length of 0 to %d packets", MaxLossBurst)
			}
		case "queue":
			p.QueueBytes, err = parseBytes(val)
		case "burst":
			p.Burst, err = parseBytes(val)
		case "sched":
			switch strings.ToLower(val) {
			case "fifo":
				p.Sched.Mode = SchedFIFO
			case "strict", "prio", "priority":
				p.Sched.Mode = SchedStrict
			case "weighted", "wrr", "drr":
				p.Sched.Mode = SchedWeighted
			default:
				err = fmt.Errorf("unknown scheduler %q (want fifo, strict or weighted)", val)
			}
		case "weights":
			p.Sched.Classes, err = parseWeights(val)
			if err == nil && !seen["sched"] {
				p.Sched.Mode = SchedWeighted
			}
		default:
			return Path{}, fmt.Errorf("%w: unknown keyword %q (want rate, delay, rtt, jitter, reorder, loss, lossburst, queue, burst, sched, weights)", ErrPathSyntax, key)
		}
		if err != nil {
			return Path{}, fmt.Errorf("%w: %s %s: %w", ErrPathSyntax, key, val, err)
		}
	}
	if seen["weights"] && p.Sched.Mode != SchedWeighted {
		return Path{}, fmt.Errorf("%w: weights need sched weighted", ErrPathSyntax)
	}
	if err := p.Validate(); err != nil {
		return Path{}, fmt.Errorf("%w: %w", ErrPathSyntax, err)
	}
	return p, nil
}

func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, err
	}
	if d < 0 {
		return 0, errors.New("negative duration")
	}
	return d, nil
}

func parseLoss(s string) (float64, error) {
	pct := strings.HasSuffix(s, "%")
	v, err := strconv.ParseFloat(strings.TrimSuffix(s, "%"), 64)
	if err != nil {
		return 0, fmt.Errorf("not a number: %w", err)
	}
	if pct {
		v /= 100
	}
	if math.IsNaN(v) || v < 0 || v >= 1 {
		return 0, errors.New("loss must be at least 0 and below 100%")
	}
	return v, nil
}

func parseBytes(s string) (int, error) {
	v, err := humanize.ParseBytes(s)
	if err != nil {
		return 0, err
	}
	if v > MaxQueueBytes {
		return 0, fmt.Errorf("more than %d bytes", MaxQueueBytes)
	}
	return int(v), nil
}

func parseWeights(s string) ([]Class, error) {
	parts := strings.Split(s, ":")
	classes := DefaultClasses()
	if len(parts) != len(classes) {
		return nil, fmt.Errorf("want %d weights separated by ':' (for classes realtime:high:default:scavenger)", len(classes))
	}
	for i, w := range parts {
		n, err := strconv.Atoi(w)
		if err != nil || n < 1 || n > MaxWeight {
			return nil, fmt.Errorf("weight %q is not an integer in [1, %d]", w, MaxWeight)
		}
		classes[i].Weight = n
	}
	return classes, nil
}

var rateUnits = []struct {
	suffix string
	mult   float64
}{
	{"tbit", 1e12}, {"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}, {"bit", 1},
}

// ParseRate reads a rate in bits per second: a number with an optional
// unit bit, kbit, Mbit, Gbit or Tbit (case-insensitive, powers of 1000).
// "bps" units are refused, since tc reads them as bytes and others as bits.
func ParseRate(s string) (int64, error) {
	ls := strings.ToLower(strings.TrimSpace(s))
	if strings.HasSuffix(ls, "bps") {
		return 0, fmt.Errorf("ambiguous unit in %q: write bit, kbit, Mbit or Gbit", s)
	}
	mult := 1.0
	for _, u := range rateUnits {
		if strings.HasSuffix(ls, u.suffix) {
			ls = strings.TrimSuffix(ls, u.suffix)
			mult = u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(ls, 64)
	if err != nil {
		return 0, fmt.Errorf("rate %q: not a number with a unit bit, kbit, Mbit or Gbit", s)
	}
	v *= mult
	if math.IsNaN(v) || v < 0 || v > MaxRate {
		return 0, fmt.Errorf("rate %q out of range [0, 1Tbit]", s)
	}
	return int64(math.Round(v)), nil
}

// FormatRate writes bits per second with the largest unit that keeps the
// number whole where possible ("200Mbit", "1.5Gbit", "1234bit").
func FormatRate(bps int64) string {
	for _, u := range rateUnits[:4] {
		m := int64(u.mult)
		if bps >= m && bps%m == 0 {
			return strconv.FormatInt(bps/m, 10) + unitName(u.suffix)
		}
	}
	return strconv.FormatInt(bps, 10) + "bit"
}

func unitName(lower string) string {
	switch lower {
	case "tbit":
		return "Tbit"
	case "gbit":
		return "Gbit"
	case "mbit":
		return "Mbit"
	case "kbit":
		return "kbit"
	}
	return lower
}
