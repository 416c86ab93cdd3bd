package slo

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// testWriter sends log lines to t.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, nil))
}

func TestTaggerRemarksSockets(t *testing.T) {
	p := DefaultPolicy()
	var done atomic.Int64
	const total = 200_000_000
	obj := Objective{Deadline: t0.Add(80 * time.Second)}
	tg, err := NewTagger(obj, p, func() (int64, int64) { return done.Load(), total }, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	a4, _ := tcpPair(t, "tcp4", "127.0.0.1:0")
	a6, _ := tcpPair(t, "tcp6", "[::1]:0")
	closed, _ := tcpPair(t, "tcp4", "127.0.0.1:0")
	for _, c := range []*testConn{{a4}, {a6}, {closed}} {
		if err := tg.AddConn(c.TCPConn); err != nil {
			t.Fatalf("AddConn: %v", err)
		}
		if d, _ := DSCPOf(c.TCPConn); d != DSCPCS0 {
			t.Fatalf("new socket marked %d, want the start class CS0", d)
		}
	}
	closed.Close() // a finished connection: dropped quietly at the next change

	// The network gives the task 2 MB/s in standard and 8 MB/s from
	// high-throughput up; 200 MB in 80 s needs about 2.8 MB/s. The tagger
	// must raise it once, then lower it back when standard is comfortably
	// enough for what is left (at about 17 s).
	for el := time.Duration(0); el <= 20*time.Second; el += p.Interval {
		if el > 0 {
			r := 2_000_000.0
			if tg.Class().DSCP != DSCPCS0 {
				r = 8_000_000
			}
			done.Store(min(total, done.Load()+int64(r*p.Interval.Seconds())))
		}
		tg.Step(t0.Add(el))
	}
	ch := tg.Changes()
	if len(ch) != 2 {
		t.Fatalf("changes %+v, want a raise then a lowering", ch)
	}
	if ch[0].From != "standard" || ch[0].To != "high-throughput" || ch[0].ToDSCP != DSCPAF11 || !strings.HasPrefix(ch[0].Reason, "behind") {
		t.Errorf("first change %+v, want standard -> high-throughput (AF11), behind", ch[0])
	}
	last := ch[len(ch)-1]
	if last.To != "standard" || !strings.HasPrefix(last.Reason, "ahead") {
		t.Errorf("last change %+v, want a lowering to standard", last)
	}
	for _, c := range []*testConn{{a4}, {a6}} {
		if d, err := DSCPOf(c.TCPConn); err != nil || d != last.ToDSCP {
			t.Errorf("socket marked %d (%v), want %d as last logged", d, err, last.ToDSCP)
		}
	}
	if cl := tg.Class(); cl.Name != last.To {
		t.Errorf("Class() = %s, last change to %s", cl.Name, last.To)
	}

	rep := tg.Report()
	if rep.MarkErrors != 0 {
		t.Errorf("mark errors %d: a closed socket must not count", rep.MarkErrors)
	}
	var sum int64
	for _, b := range rep.BytesByClass {
		sum += b
	}
	if sum != done.Load() || rep.BytesByClass["high-throughput"] <= 0 {
		t.Errorf("bytes by class %v sum to %d, want %d with some in high-throughput", rep.BytesByClass, sum, done.Load())
	}
	js, err := json.Marshal(rep)
	if err != nil || !strings.Contains(string(js), `"to":"high-throughput"`) {
		t.Errorf("report JSON %s, %v", js, err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(tg)
	got := gather(t, reg)
	for name, want := range map[string]float64{
		`holdfast_slo_class_changes_total{direction="lower"}`: 1,
		`holdfast_slo_class_changes_total{direction="raise"}`: 1,
		`holdfast_slo_dscp`:                                 0,
		`holdfast_slo_class_index`:                          1,
		`holdfast_slo_sockets`:                              2,
		`holdfast_slo_bytes_total{class="high-throughput"}`: float64(rep.BytesByClass["high-throughput"]),
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("metric %s = %v (present %v), want %v", name, v, ok, want)
		}
	}
}

// gather returns every sample of reg as "name{label="value"}" -> value.
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gathering metrics: %v", err)
	}
	out := make(map[string]float64)
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			if lp := m.GetLabel(); len(lp) > 0 {
				var parts []string
				for _, l := range lp {
					parts = append(parts, l.GetName()+"="+strconv.Quote(l.GetValue()))
				}
				name += "{" + strings.Join(parts, ",") + "}"
			}
			switch {
			case m.GetGauge() != nil:
				out[name] = m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				out[name] = m.GetCounter().GetValue()
			}
		}
	}
	return out
}

// testConn names the socket in the loop above.
type testConn struct{ *net.TCPConn }

func TestTaggerRunStops(t *testing.T) {
	p := DefaultPolicy()
	p.Interval = 20 * time.Millisecond
	var calls atomic.Int64
	tg, err := NewTagger(Objective{MinRate: 1e6}, p, func() (int64, int64) { calls.Add(1); return 0, 0 }, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := tg.Run(ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("Run returned %v after its context ended", el)
	}
	if n := calls.Load(); n < 5 {
		t.Fatalf("progress read %d times in 200ms at a 20ms interval", n)
	}
}

func TestNewTaggerRejects(t *testing.T) {
	bad := DefaultPolicy()
	bad.Start = "nope"
	if _, err := NewTagger(Objective{}, bad, func() (int64, int64) { return 0, 0 }, nil); err == nil {
		t.Error("invalid policy accepted")
	}
	if _, err := NewTagger(Objective{}, DefaultPolicy(), nil, nil); err == nil {
		t.Error("nil progress accepted")
	}
}
