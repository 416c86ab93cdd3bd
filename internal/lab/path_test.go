package lab

import (
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParsePath(t *testing.T) {
	weighted := DefaultClasses()
	for i, w := range []int{4, 3, 2, 1} {
		weighted[i].Weight = w
	}
	for _, tc := range []struct {
		in   string
		want Path
	}{
		{"rate 200Mbit, rtt 100ms, loss 0.1%, queue 64KiB",
			Path{Rate: 200e6, Delay: 50 * time.Millisecond, Loss: 0.001, QueueBytes: 65536}},
		{"perfect", Path{}},
		{"", Path{}},
		{"delay 5ms jitter 1ms reorder", Path{Delay: 5 * time.Millisecond, Jitter: time.Millisecond, Reorder: true}},
		{"RATE 1.5Gbit; loss 0.02", Path{Rate: 1.5e9, Loss: 0.02}},
		{"rate 64kbit, queue 100KB, burst 3000B", Path{Rate: 64000, QueueBytes: 100000, Burst: 3000}},
		{"rate 1000", Path{Rate: 1000}},
		{"loss 2%, lossburst 4.5", Path{Loss: 0.02, LossBurst: 4.5}},
		{"sched strict", Path{Sched: Sched{Mode: SchedStrict}}},
		{"sched weighted", Path{Sched: Sched{Mode: SchedWeighted}}},
		{"weights 4:3:2:1", Path{Sched: Sched{Mode: SchedWeighted, Classes: weighted}}},
	} {
		got, err := ParsePath(tc.in)
		if err != nil {
			t.Errorf("ParsePath(%q): %v", tc.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParsePath(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
		back, err := ParsePath(got.String())
		if err != nil || !reflect.DeepEqual(back, got) {
			t.Errorf("ParsePath(%q.String() = %q) = %+v, %v; want %+v", tc.in, got.String(), back, err, got)
		}
	}
}

func TestParsePathErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"rate", "needs a value"},
		{"rate fast", "not a number"},
		{"rate 10Mbps", "ambiguous unit"},
		{"rate -5Mbit", "out of range"},
		{"rate 2Tbit", "out of range"},
		{"delay -1ms", "negative"},
		{"delay 20s", "out of range"},
		{"rtt 10ms delay 5ms", "given twice"},
		{"loss 100%", "below 100%"},
		{"loss abc", "not a number"},
		{"loss NaN", "below 100%"},
		{"queue 1TiB", "more than"},
		{"lossburst -1", "mean burst length"},
		{"lossburst many", "invalid syntax"},
		{"queue lots", "queue lots"},
		{"sched random", "unknown scheduler"},
		{"weights 1:2", "want 4 weights"},
		{"weights 1:2:3:0", "not an integer"},
		{"sched strict, weights 1:2:3:4", "need sched weighted"},
		{"colour blue", "unknown keyword"},
		{"rate 1Mbit rate 2Mbit", "given twice"},
	} {
		_, err := ParsePath(tc.in)
		if err == nil {
			t.Errorf("ParsePath(%q) accepted", tc.in)
			continue
		}
		if !errors.Is(err, ErrPathSyntax) {
			t.Errorf("ParsePath(%q) error %v does not wrap ErrPathSyntax", tc.in, err)
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParsePath(%q) = %v, want it to mention %q", tc.in, err, tc.want)
		}
	}
}

func TestFormatRate(t *testing.T) {
	for _, tc := range []struct {
		bps  int64
		want string
	}{
		{200e6, "200Mbit"}, {1e9, "1Gbit"}, {1.5e9, "1500Mbit"}, {64000, "64kbit"}, {1234, "1234bit"}, {1e12, "1Tbit"},
	} {
		if got := FormatRate(tc.bps); got != tc.want {
			t.Errorf("FormatRate(%d) = %q, want %q", tc.bps, got, tc.want)
		}
		if back, err := ParseRate(FormatRate(tc.bps)); err != nil || back != tc.bps {
			t.Errorf("ParseRate(FormatRate(%d)) = %d, %v", tc.bps, back, err)
		}
	}
}

func TestSchedValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		s    Sched
		ok   bool
	}{
		{"default", Sched{}, true},
		{"two classes", Sched{Mode: SchedStrict, Classes: []Class{{Name: "hi", DSCP: []uint8{46}}, {Name: "rest"}}}, true},
		{"no name", Sched{Classes: []Class{{DSCP: []uint8{1}}}}, false},
		{"dup name", Sched{Classes: []Class{{Name: "a", DSCP: []uint8{1}}, {Name: "a"}}}, false},
		{"dup dscp", Sched{Classes: []Class{{Name: "a", DSCP: []uint8{1}}, {Name: "b", DSCP: []uint8{1}}}}, false},
		{"dscp 64", Sched{Classes: []Class{{Name: "a", DSCP: []uint8{64}}}}, false},
		{"two catch-alls", Sched{Classes: []Class{{Name: "a"}, {Name: "b"}}}, false},
		{"weight", Sched{Classes: []Class{{Name: "a", Weight: MaxWeight + 1}}}, false},
		{"mode", Sched{Mode: 7}, false},
	} {
		if err := tc.s.Validate(); (err == nil) != tc.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestClassTable(t *testing.T) {
	tbl := classTable(DefaultClasses())
	for _, tc := range []struct {
		dscp  uint8
		class string
	}{
		{DSCPEF, "realtime"}, {DSCPAF41, "high"}, {DSCPAF31, "high"}, {DSCPDefault, "default"},
		{DSCPAF11, "default"}, {DSCPLE, "scavenger"}, {DSCPCS1, "scavenger"}, {63, "default"},
	} {
		if got := DefaultClasses()[tbl[tc.dscp]].Name; got != tc.class {
			t.Errorf("DSCP %d in class %s, want %s", tc.dscp, got, tc.class)
		}
	}
	// Without a catch-all, the last class takes the rest.
	tbl = classTable([]Class{{Name: "ef", DSCP: []uint8{46}}, {Name: "low", DSCP: []uint8{8}}})
	if tbl[0] != 1 || tbl[46] != 0 {
		t.Errorf("table without catch-all: dscp0->%d dscp46->%d", tbl[0], tbl[46])
	}
}

func TestQueueLimitDefault(t *testing.T) {
	for _, tc := range []struct {
		p    Path
		want int
	}{
		{Path{Rate: 100e6, Delay: 20 * time.Millisecond}, 500000},        // BDP at 40 ms RTT
		{Path{Rate: 1e6, Delay: time.Millisecond}, MinDefaultQueueBytes}, // floor
		{Path{Rate: 100e6, QueueBytes: 1000}, 1500},                      // at least one MTU
		{Path{Rate: 1e12, Delay: 5 * time.Second}, MaxQueueBytes},        // ceiling
	} {
		if got := tc.p.queueLimit(nil, -1, 1500); got != tc.want {
			t.Errorf("queueLimit(%v) = %d, want %d", tc.p, got, tc.want)
		}
	}
}

// FuzzParsePath checks that ParsePath never panics, that what it accepts
// is valid, and that String gives back an equal path.
func FuzzParsePath(f *testing.F) {
	for _, s := range []string{
		"rate 200Mbit, rtt 100ms, loss 0.1%, queue 64KiB",
		"perfect", "delay 5ms jitter 1ms reorder", "weights 8:4:2:1", "sched strict",
		"rate 1.5Gbit; loss 0.02", "burst 3000B queue 1MiB", "loss 1e-3", "loss 1% lossburst 3",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePath(s)
		if err != nil {
			return
		}
		if verr := p.Validate(); verr != nil {
			t.Fatalf("ParsePath(%q) accepted an invalid path: %v", s, verr)
		}
		back, err := ParsePath(p.String())
		if err != nil {
			t.Fatalf("ParsePath(%q).String() = %q does not parse: %v", s, p.String(), err)
		}
		if math.Abs(back.Loss-p.Loss) > 1e-12 {
			t.Fatalf("loss %v came back %v", p.Loss, back.Loss)
		}
		back.Loss = p.Loss
		if !reflect.DeepEqual(back, p) {
			t.Fatalf("ParsePath(%q) = %+v; String %q gives %+v", s, p, p.String(), back)
		}
	})
}

func TestParsePairPath(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want PairPath
		err  string
	}{
		{in: "0-2: rtt 300ms, loss 2%", want: PairPath{A: 0, B: 2, Path: Path{Delay: 150 * time.Millisecond, Loss: 0.02}}},
		{in: "h1>h0: rate 10Mbit", want: PairPath{A: 1, B: 0, OneWay: true, Path: Path{Rate: 10e6}}},
		{in: " 3 - 4 :perfect", want: PairPath{A: 3, B: 4}},
		{in: "0-1 rtt 5ms", err: "want \"A-B: path\""},
		{in: "0: rtt 5ms", err: "two host indexes"},
		{in: "0-x: rtt 5ms", err: "want an index"},
		{in: "0-64: rtt 5ms", err: "want an index"},
		{in: "2-2: rtt 5ms", err: "to itself"},
		{in: "0-1: rtt fast", err: "rtt fast"},
	} {
		got, err := ParsePairPath(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, ErrPathSyntax) {
				t.Errorf("ParsePairPath(%q) = %v, want an ErrPathSyntax mentioning %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParsePairPath(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}
