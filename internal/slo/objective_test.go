package slo

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 24, 20, 0, 0, 0, time.UTC)

func TestParseObjective(t *testing.T) {
	tests := []struct {
		name, deadline, rate string
		want                 Objective
		err                  string // substring; empty means success
	}{
		{name: "empty", want: Objective{}},
		{name: "duration", deadline: "10m", want: Objective{Deadline: t0.Add(10 * time.Minute)}},
		{name: "duration spaces", deadline: " 1h30m ", want: Objective{Deadline: t0.Add(90 * time.Minute)}},
		{name: "time without seconds", deadline: "2026-11-25T02:00Z", want: Objective{Deadline: time.Date(2026, 11, 25, 2, 0, 0, 0, time.UTC)}},
		{name: "time with offset", deadline: "2026-11-25T02:00:30+01:00", want: Objective{Deadline: time.Date(2026, 11, 25, 1, 0, 30, 0, time.UTC)}},
		{name: "rate Mbit", rate: "50Mbit", want: Objective{MinRate: 50_000_000}},
		{name: "rate Mbit/s fraction", rate: "2.5Mbit/s", want: Objective{MinRate: 2_500_000}},
		{name: "rate MB/s", rate: "6MB/s", want: Objective{MinRate: 48_000_000}},
		{name: "rate MiB/s", rate: "1MiB/s", want: Objective{MinRate: 8 * 1024 * 1024}},
		{name: "rate kbit", rate: "100 kbit", want: Objective{MinRate: 100_000}},
		{name: "both", deadline: "20s", rate: "1Gbit", want: Objective{Deadline: t0.Add(20 * time.Second), MinRate: 1e9}},
		{name: "past time", deadline: "2026-11-24T19:00Z", err: "not in the future"},
		{name: "zero duration", deadline: "0s", err: "positive"},
		{name: "negative duration", deadline: "-5m", err: "positive"},
		{name: "too far", deadline: "9000h", err: "away"},
		{name: "no zone", deadline: "2026-11-25T02:00", err: "want a duration"},
		{name: "garbage deadline", deadline: "tomorrow", err: "want a duration"},
		{name: "bps ambiguous", rate: "50Mbps", err: "ambiguous"},
		{name: "no unit", rate: "50", err: "missing unit"},
		{name: "zero rate", rate: "0Mbit", err: "above zero"},
		{name: "not a number", rate: "fastMbit", err: "not a number"},
		{name: "huge rate", rate: "1e9Gbit", err: "out of range"},
		{name: "NaN rate", rate: "NaNMbit", err: "out of range"},
		{name: "negative rate", rate: "-3Mbit", err: "out of range"},
		{name: "long text", deadline: strings.Repeat("9", 200), err: "too long"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseObjective(tc.deadline, tc.rate, t0)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, ErrObjective) {
					t.Fatalf("ParseObjective(%q, %q) = %v, %v; want error with %q wrapping ErrObjective", tc.deadline, tc.rate, got, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseObjective(%q, %q): %v", tc.deadline, tc.rate, err)
			}
			if !got.Deadline.Equal(tc.want.Deadline) || got.MinRate != tc.want.MinRate {
				t.Fatalf("ParseObjective(%q, %q) = %+v, want %+v", tc.deadline, tc.rate, got, tc.want)
			}
			if got.IsZero() != (tc.deadline == "" && tc.rate == "") {
				t.Fatalf("IsZero() = %v", got.IsZero())
			}
		})
	}
}

func TestNeededRate(t *testing.T) {
	dl := Objective{Deadline: t0.Add(10 * time.Second)}
	tests := []struct {
		name        string
		obj         Objective
		now         time.Time
		done, total int64
		margin      float64
		want        float64 // bytes per second
	}{
		{"deadline no margin", dl, t0, 0, 10_000_000, 0, 1_000_000},
		{"deadline 10% margin", dl, t0, 1_000_000, 10_000_000, 0.1, 1_000_000},
		{"halfway", dl, t0.Add(5 * time.Second), 7_500_000, 10_000_000, 0, 500_000},
		{"done", dl, t0.Add(5 * time.Second), 10_000_000, 10_000_000, 0.1, 0},
		{"passed", dl, t0.Add(11 * time.Second), 0, 10, 0, math.Inf(1)},
		{"inside margin", dl, t0.Add(10 * time.Second).Add(-time.Nanosecond), 0, 10, 0.1, 1e10},
		{"unknown size uses min rate", Objective{Deadline: dl.Deadline, MinRate: 8000}, t0, 0, 0, 0, 1000},
		{"min rate dominates", Objective{Deadline: dl.Deadline, MinRate: 80_000_000}, t0, 0, 10_000_000, 0, 10_000_000},
		{"deadline dominates", Objective{Deadline: dl.Deadline, MinRate: 8}, t0, 0, 10_000_000, 0, 1_000_000},
		{"nothing", Objective{}, t0, 0, 100, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.obj.NeededRate(tc.now, tc.done, tc.total, tc.margin)
			if tc.name == "inside margin" {
				if got < tc.want {
					t.Fatalf("NeededRate = %v, want at least %v", got, tc.want)
				}
				return
			}
			if math.Abs(got-tc.want) > 1e-6*math.Max(1, tc.want) && got != tc.want {
				t.Fatalf("NeededRate = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestFormatRate(t *testing.T) {
	for _, tc := range []struct {
		in   float64
		want string
	}{{0, "0bit/s"}, {999, "999bit/s"}, {12_500_000, "12.5Mbit/s"}, {2e9, "2Gbit/s"}, {1234.5678, "1.235kbit/s"}, {math.Inf(1), "inf"}} {
		if got := FormatRate(tc.in); got != tc.want {
			t.Errorf("FormatRate(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func FuzzParseObjective(f *testing.F) {
	for _, s := range [][2]string{{"10m", ""}, {"2026-11-25T02:00Z", "50Mbit"}, {"", "6MiB/s"}, {"-1s", "1e400Mbit"}, {"2026-13-01T00:00Z", "bps"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, deadline, rate string) {
		o, err := ParseObjective(deadline, rate, t0)
		if err != nil {
			if !errors.Is(err, ErrObjective) {
				t.Fatalf("error %v does not wrap ErrObjective", err)
			}
			return
		}
		if !o.Deadline.IsZero() && (!o.Deadline.After(t0) || o.Deadline.Sub(t0) > MaxHorizon) {
			t.Fatalf("deadline %v outside (now, now+MaxHorizon]", o.Deadline)
		}
		if o.MinRate < 0 || o.MinRate > MaxRate || (rate != "" && strings.TrimSpace(rate) != "" && o.MinRate == 0) {
			t.Fatalf("min rate %d from %q", o.MinRate, rate)
		}
		_ = o.String()
	})
}
