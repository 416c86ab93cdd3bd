package slo

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Limits on objectives.
const (
	// MaxHorizon is the furthest a deadline may lie in the future.
	MaxHorizon = 366 * 24 * time.Hour
	// MaxRate is the highest minimum rate an objective may ask for, in bits
	// per second.
	MaxRate = 10_000_000_000_000
	// maxObjectiveText bounds the text ParseObjective reads, per field.
	maxObjectiveText = 64
)

// ErrObjective is wrapped by every error ParseObjective returns.
var ErrObjective = errors.New("bad objective")

// Objective is what a task needs from the network. The zero Objective asks
// for nothing: a task with it is left in the policy's start class.
type Objective struct {
	// Deadline is when the task must be finished; zero means none.
	Deadline time.Time `json:"deadline,omitzero"`
	// MinRate is the rate the task must keep, in bits per second; zero
	// means none.
	MinRate int64 `json:"min_rate_bps,omitempty"`
}

// IsZero reports whether o asks for nothing.
func (o Objective) IsZero() bool { return o.Deadline.IsZero() && o.MinRate == 0 }

// String describes o for logs: "deadline 2026-11-25T02:00:00Z, min rate 50Mbit".
func (o Objective) String() string {
	var parts []string
	if !o.Deadline.IsZero() {
		parts = append(parts, "deadline "+o.Deadline.UTC().Format(time.RFC3339))
	}
	if o.MinRate > 0 {
		parts = append(parts, "min rate "+FormatRate(float64(o.MinRate)))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// NeededRate returns the rate in bytes per second that o needs from a task
// that has done bytes of total at now: the larger of the minimum rate and
// the remaining bytes over the time left before the deadline less a margin
// (a fraction in [0, 1) of the time left, so a task aims to finish early).
// It returns +Inf once the deadline (less the margin) has passed with bytes
// still to send, and 0 when o asks for nothing or nothing remains. A total
// of zero or less means the size is unknown; then only the minimum rate
// counts.
func (o Objective) NeededRate(now time.Time, done, total int64, margin float64) float64 {
	need := float64(o.MinRate) / 8
	if o.Deadline.IsZero() || total <= 0 {
		return need
	}
	remaining := total - done
	if remaining <= 0 {
		return 0
	}
	left := o.Deadline.Sub(now).Seconds() * (1 - margin)
	if left <= 0 {
		return math.Inf(1)
	}
	return max(need, float64(remaining)/left)
}

// ParseObjective reads an objective from the text of the --deadline and
// --min-rate flags; either may be empty. A deadline is a Go duration from
// now ("10m", "1h30m") or a date and time with a zone ("2026-11-25T02:00Z",
// "2026-11-25T02:00:00+01:00"); it must lie in the future, at most
// MaxHorizon away. A rate is a number with a unit: bit, kbit, Mbit, Gbit,
// Tbit (bits per second, powers of 1000, optionally followed by "/s"), or
// B/s, kB/s, MB/s, GB/s, KiB/s, MiB/s, GiB/s (bytes per second).
func ParseObjective(deadline, minRate string, now time.Time) (Objective, error) {
	var o Objective
	if d := strings.TrimSpace(deadline); d != "" {
		t, err := parseDeadline(d, now)
		if err != nil {
			return Objective{}, fmt.Errorf("%w: deadline %q: %w", ErrObjective, trunc(deadline), err)
		}
		o.Deadline = t
	}
	if r := strings.TrimSpace(minRate); r != "" {
		bps, err := ParseRate(r)
		if err != nil {
			return Objective{}, fmt.Errorf("%w: min rate %q: %w", ErrObjective, trunc(minRate), err)
		}
		if bps <= 0 {
			return Objective{}, fmt.Errorf("%w: min rate %q: must be above zero", ErrObjective, trunc(minRate))
		}
		o.MinRate = bps
	}
	return o, nil
}

func trunc(s string) string {
	if len(s) > maxObjectiveText {
		return s[:maxObjectiveText] + "…"
	}
	return s
}

var deadlineLayouts = []string{
	time.RFC3339Nano,
	"2006-01-02T15:04Z07:00",
	"2006-01-02 15:04:05Z07:00",
	"2006-01-02 15:04Z07:00",
}

func parseDeadline(s string, now time.Time) (time.Time, error) {
	if len(s) > maxObjectiveText {
		return time.Time{}, errors.New("too long")
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return time.Time{}, errors.New("duration must be positive")
		}
		if d > MaxHorizon {
			return time.Time{}, fmt.Errorf("more than %v away", MaxHorizon)
		}
		return now.Add(d), nil
	}
	for _, layout := range deadlineLayouts {
		t, err := time.Parse(layout, s)
		if err != nil {
			continue
		}
		if !t.After(now) {
			return time.Time{}, fmt.Errorf("%s is not in the future (now %s)", t.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
		}
		if t.Sub(now) > MaxHorizon {
			return time.Time{}, fmt.Errorf("more than %v away", MaxHorizon)
		}
		return t, nil
	}
	return time.Time{}, errors.New(`want a duration ("10m") or a time with a zone ("2026-11-25T02:00Z")`)
}

var rateUnits = []struct {
	suffix string
	mult   float64 // bits per second per unit
}{
	// Longest suffixes first so that "kib/s" is not read as "b/s".
	{"kib/s", 8 * 1024}, {"mib/s", 8 * 1024 * 1024}, {"gib/s", 8 * 1024 * 1024 * 1024},
	{"tbit/s", 1e12}, {"gbit/s", 1e9}, {"mbit/s", 1e6}, {"kbit/s", 1e3}, {"bit/s", 1},
	{"tbit", 1e12}, {"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}, {"bit", 1},
	{"kb/s", 8e3}, {"mb/s", 8e6}, {"gb/s", 8e9}, {"b/s", 8},
}

// ParseRate reads a rate and returns it in bits per second. See
// ParseObjective for the units; "bps" is refused as ambiguous.
func ParseRate(s string) (int64, error) {
	if len(s) > maxObjectiveText {
		return 0, errors.New("too long")
	}
	ls := strings.ToLower(strings.TrimSpace(s))
	if strings.HasSuffix(ls, "bps") {
		return 0, errors.New("ambiguous unit: write Mbit (bits) or MB/s (bytes)")
	}
	mult := 0.0
	for _, u := range rateUnits {
		if strings.HasSuffix(ls, u.suffix) {
			ls = strings.TrimSpace(strings.TrimSuffix(ls, u.suffix))
			mult = u.mult
			break
		}
	}
	if mult == 0 {
		return 0, errors.New("missing unit: want bit, kbit, Mbit, Gbit, or B/s, kB/s, MB/s, MiB/s")
	}
	v, err := strconv.ParseFloat(ls, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a number", ls)
	}
	v *= mult
	if math.IsNaN(v) || v < 0 || v > MaxRate {
		return 0, fmt.Errorf("out of range [0, %s]", FormatRate(MaxRate))
	}
	return int64(math.Round(v)), nil
}

// FormatRate writes a rate in bits per second for people: "12.5Mbit/s".
func FormatRate(bps float64) string {
	if math.IsInf(bps, 1) {
		return "inf"
	}
	units := []struct {
		div  float64
		name string
	}{{1e9, "Gbit/s"}, {1e6, "Mbit/s"}, {1e3, "kbit/s"}, {1, "bit/s"}}
	for _, u := range units {
		if bps >= u.div {
			return strconv.FormatFloat(round3(bps/u.div), 'f', -1, 64) + u.name
		}
	}
	return "0bit/s"
}

// round3 rounds v to three significant decimals after the point.
func round3(v float64) float64 { return math.Round(v*1000) / 1000 }
