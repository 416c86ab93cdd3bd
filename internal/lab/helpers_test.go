package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"testing"
	"time"
)

// udpEcho serves UDP echo on host h port until the test ends.
func udpEcho(t *testing.T, h *Host, port int) {
	t.Helper()
	pc, err := h.ListenPacket("udp4", net.JoinHostPort(h.Addr().String(), itoa(port)))
	if err != nil {
		t.Fatalf("listening on %s: %v", h, err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if _, err := pc.WriteTo(buf[:n], from); err != nil {
				return
			}
		}
	}()
}

// measureRTT sends count UDP probes from a to b's echo port, one at a time,
// and returns the RTTs of those answered, sorted.
func measureRTT(t *testing.T, a, b *Host, port, count int) []time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := a.Dial(ctx, "udp4", net.JoinHostPort(b.Addr().String(), itoa(port)))
	if err != nil {
		t.Fatalf("dialing echo on %s: %v", b, err)
	}
	defer c.Close()
	var rtts []time.Duration
	buf := make([]byte, 64)
	for i := range count {
		msg := []byte{byte(i), 'p', 'r', 'o', 'b', 'e'}
		start := time.Now()
		if _, err := c.Write(msg); err != nil {
			t.Fatalf("probe %d: %v", i, err)
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		for {
			n, err := c.Read(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break // lost
				}
				t.Fatalf("probe %d: %v", i, err)
			}
			if n == len(msg) && buf[0] == byte(i) {
				rtts = append(rtts, time.Since(start))
				break
			}
		}
	}
	slices.Sort(rtts)
	return rtts
}

func itoa(i int) string { return strconv.Itoa(i) }

// starvedLag is how far behind schedule the emulator may fall before a
// timing measurement is thrown away as taken on a machine too loaded.
const starvedLag = 10 * time.Millisecond

// attempt collects the failures of one try of a timing measurement.
type attempt struct {
	t    *testing.T
	lab  *Lab
	errs []string
}

// Errorf records a failure of this attempt.
func (a *attempt) Errorf(format string, args ...any) {
	a.errs = append(a.errs, fmt.Sprintf(format, args...))
}

// Logf logs to the test.
func (a *attempt) Logf(format string, args ...any) { a.t.Helper(); a.t.Logf(format, args...) }

// useLab starts the attempt's lab.
func (a *attempt) useLab(cfg Config) *Lab {
	a.lab = New(a.t, cfg)
	return a.lab
}

// timing runs a measurement that depends on the emulator keeping its
// schedule. A failed attempt during which the emulator fell behind by more
// than starvedLag (other processes took the CPU) is retried, up to three
// times; if every attempt was starved, the test is skipped with the reason.
// A failure while the emulator kept up fails the test.
func timing(t *testing.T, run func(a *attempt)) {
	t.Helper()
	const attempts = 3
	for i := 1; i <= attempts; i++ {
		a := &attempt{t: t}
		run(a)
		var lag time.Duration
		if a.lab != nil {
			lag = a.lab.MaxLag()
			if err := a.lab.Close(); err != nil {
				t.Errorf("closing lab: %v", err)
			}
		}
		if len(a.errs) == 0 {
			return
		}
		if lag <= starvedLag {
			for _, e := range a.errs {
				t.Error(e)
			}
			return
		}
		t.Logf("attempt %d failed while the emulator fell %v behind schedule (machine overloaded): %v", i, lag, a.errs)
	}
	t.Skipf("emulator starved of CPU on all %d attempts; this machine is too loaded to measure timing", attempts)
}
