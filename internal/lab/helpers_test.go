package lab

import (
	"context"
	"errors"
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
