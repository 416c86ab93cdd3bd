package lab

import (
	"context"
	"encoding/binary"
	"math"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// udpCounter counts datagrams and bytes received on host h's port.
type udpCounter struct {
	packets, bytes atomic.Uint64
}

func countUDP(t *testing.T, h *Host, port int) *udpCounter {
	t.Helper()
	pc, err := h.ListenPacket("udp4", net.JoinHostPort(h.Addr().String(), strconv.Itoa(port)))
	if err != nil {
		t.Fatalf("listening on %s:%d: %v", h, port, err)
	}
	if err := pc.(*net.UDPConn).SetReadBuffer(4 << 20); err != nil {
		t.Fatalf("read buffer: %v", err)
	}
	c := &udpCounter{}
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 2048)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			c.packets.Add(1)
			c.bytes.Add(uint64(n))
		}
	})
	t.Cleanup(func() { pc.Close(); wg.Wait() })
	return c
}

// dialTOS opens a UDP socket on src to dst:port whose packets carry dscp.
func dialTOS(t *testing.T, src, dst *Host, port int, dscp uint8) net.Conn {
	t.Helper()
	d := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TOS, int(dscp)<<2)
		}); err != nil {
			return err
		}
		return serr
	}}
	c, err := src.DialWith(context.Background(), d, "udp4", net.JoinHostPort(dst.Addr().String(), strconv.Itoa(port)))
	if err != nil {
		t.Fatalf("dialing %s:%d with DSCP %d: %v", dst, port, dscp, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// blast sends datagrams of size bytes on c at rate bits/s for d, and
// returns how many it sent. After a stall (a loaded machine) it skips what
// it missed rather than send it as a burst: the tests want a smooth load.
func blast(c net.Conn, rate float64, size int, d time.Duration) uint64 {
	buf := make([]byte, size)
	maxBurst := uint64(rate/8*0.002/float64(size)) + 1 // 2 ms worth
	start := time.Now()
	var slot, sent uint64
	for {
		el := time.Since(start)
		if el >= d {
			return sent
		}
		due := uint64(rate / 8 * el.Seconds() / float64(size))
		if due > slot+maxBurst {
			slot = due - maxBurst
		}
		for ; slot < due; slot++ {
			binary.BigEndian.PutUint64(buf, sent)
			if _, err := c.Write(buf); err != nil {
				time.Sleep(time.Millisecond) // ENOBUFS: the local queue is full
				break
			}
			sent++
		}
		time.Sleep(500 * time.Microsecond)
	}
}

func TestTailDropAtQueueLimit(t *testing.T) {
	const (
		queue = 30000
		count = 100
		size  = 1000 // UDP payload; 1028 bytes on the wire
	)
	timing(t, func(a *attempt) {
		l := a.useLab(Config{Hosts: 2, Path: mustParsePath(t, "rate 10Mbit, delay 1ms, queue 30000B")})
		rx := countUDP(t, l.Host(1), 9000)
		c := dialTOS(t, l.Host(0), l.Host(1), 9000, 0)
		buf := make([]byte, size)
		for i := range count {
			if _, err := c.Write(buf); err != nil {
				t.Fatalf("datagram %d: %v", i, err)
			}
		}
		// Drain: the queue empties in 30000 B / 10 Mbit/s = 24 ms.
		deadline := time.Now().Add(5 * time.Second)
		var st PathStats
		for time.Now().Before(deadline) {
			st = l.Stats(0, 1)
			if st.Total.InPackets >= count && st.Total.QueueBytes == 0 && rx.packets.Load() == st.Total.OutPackets {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		tot := st.Total
		a.Logf("%s; received %d", st, rx.packets.Load())
		if tot.InPackets != count {
			t.Fatalf("path saw %d packets, sent %d", tot.InPackets, count)
		}
		if tot.QueueDrops == 0 {
			t.Fatalf("a burst of %d B into a %d B queue dropped nothing", count*(size+28), queue)
		}
		if tot.OutPackets+tot.QueueDrops != tot.InPackets {
			t.Errorf("out %d + tail drops %d != in %d", tot.OutPackets, tot.QueueDrops, tot.InPackets)
		}
		if got := rx.packets.Load(); got != tot.OutPackets {
			t.Errorf("receiver got %d datagrams, path delivered %d", got, tot.OutPackets)
		}
		if tot.MaxQueueBytes > queue || tot.MaxQueueBytes < queue-(size+28) {
			t.Errorf("max queue %d B, want within one packet below the %d B limit", tot.MaxQueueBytes, queue)
		}
		// About queue/packet packets fit, plus the few served while the burst
		// was being sent.
		if fit := queue / (size + 28); tot.OutPackets < uint64(fit) || tot.OutPackets > uint64(fit)+15 {
			a.Errorf("delivered %d packets, want about %d (what fits in the queue)", tot.OutPackets, fit)
		}
		if def := st.Class("default"); def.QueueDrops != tot.QueueDrops {
			t.Errorf("class default counts %d tail drops, total %d", def.QueueDrops, tot.QueueDrops)
		}
	})
}

// TestDSCPScheduling sends a marked (EF) and an unmarked UDP flow through
// one bottleneck under each scheduler.
func TestDSCPScheduling(t *testing.T) {
	const (
		linkRate = 20e6
		secs     = 2 * time.Second
		size     = 1200
	)
	for _, tc := range []struct {
		name           string
		path           string
		efRate, beRate float64
		check          func(t *attempt, efShare, beShare, efDelivered float64, st PathStats)
	}{
		{
			name: "fifo", path: "rate 20Mbit, delay 5ms, queue 40KB, sched fifo",
			efRate: 6e6, beRate: 30e6,
			check: func(t *attempt, efShare, beShare, efDelivered float64, st PathStats) {
				if efDelivered > 0.8 {
					t.Errorf("FIFO delivered %.0f%% of EF under 180%% load; want it to suffer like the rest", efDelivered*100)
				}
			},
		},
		{
			name: "strict", path: "rate 20Mbit, delay 5ms, queue 40KB, sched strict",
			efRate: 6e6, beRate: 30e6,
			check: func(t *attempt, efShare, beShare, efDelivered float64, st PathStats) {
				if efDelivered < 0.97 {
					t.Errorf("strict priority delivered only %.1f%% of EF", efDelivered*100)
				}
				if d := st.Class("realtime").QueueDrops; d > 0 {
					t.Errorf("strict priority tail-dropped %d EF packets", d)
				}
				if st.Class("default").QueueDrops == 0 {
					t.Errorf("best effort at 150%% of the rate saw no tail drop")
				}
				if beShare < 0.55 || beShare > 0.8 {
					t.Errorf("best effort got %.0f%% of the link, want the rest after EF (about 70%%)", beShare*100)
				}
			},
		},
		{
			// Default weights: realtime 8, default 2.
			name: "weighted", path: "rate 20Mbit, delay 5ms, queue 40KB, sched weighted",
			efRate: 30e6, beRate: 30e6,
			check: func(t *attempt, efShare, beShare, efDelivered float64, st PathStats) {
				if r := efShare / beShare; r < 3 || r > 5 {
					t.Errorf("EF:BE throughput %.2f, want about 8:2 = 4", r)
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			timing(t, func(a *attempt) {
				l := a.useLab(Config{Hosts: 2, Path: mustParsePath(t, tc.path)})
				efRx := countUDP(t, l.Host(1), 9001)
				beRx := countUDP(t, l.Host(1), 9002)
				ef := dialTOS(t, l.Host(0), l.Host(1), 9001, DSCPEF)
				be := dialTOS(t, l.Host(0), l.Host(1), 9002, DSCPDefault)
				var efSent, beSent uint64
				var wg sync.WaitGroup
				wg.Go(func() { efSent = blast(ef, tc.efRate, size, secs) })
				wg.Go(func() { beSent = blast(be, tc.beRate, size, secs) })
				wg.Wait()
				time.Sleep(100 * time.Millisecond) // drain queue and delay line
				st := l.Stats(0, 1)
				wire := float64(size + 28)
				efShare := float64(efRx.packets.Load()) * wire * 8 / secs.Seconds() / linkRate
				beShare := float64(beRx.packets.Load()) * wire * 8 / secs.Seconds() / linkRate
				efDelivered := float64(efRx.packets.Load()) / float64(efSent)
				a.Logf("EF sent %d got %d (%.0f%% of link, %.1f%% delivered); BE sent %d got %d (%.0f%% of link); emulator max lag %v",
					efSent, efRx.packets.Load(), efShare*100, efDelivered*100, beSent, beRx.packets.Load(), beShare*100, st.MaxLag)
				for _, c := range st.Classes {
					if c.InPackets > 0 {
						a.Logf("class %-9s in %d out %d tail drops %d max queue %d B", c.Class, c.InPackets, c.OutPackets, c.QueueDrops, c.MaxQueueBytes)
					}
				}
				if rt := st.Class("realtime"); rt.OutPackets != efRx.packets.Load() {
					t.Errorf("class realtime delivered %d, EF receiver got %d", rt.OutPackets, efRx.packets.Load())
				}
				if total := efShare + beShare; total < 0.9 || total > 1.06 {
					a.Errorf("overloaded link carried %.0f%% of its rate", total*100)
				}
				if math.IsNaN(efShare) {
					t.Fatal("no EF traffic measured")
				}
				tc.check(a, efShare, beShare, efDelivered, st)
			})
		})
	}
}

func TestIPv6TrafficClassIsClassified(t *testing.T) {
	l := New(t, Config{Hosts: 2, Path: mustParsePath(t, "rate 50Mbit, sched strict")})
	if !l.Host(1).Addr6().IsValid() {
		t.Skip("IPv6 is disabled in this kernel")
	}
	pc, err := l.Host(1).ListenPacket("udp6", net.JoinHostPort(l.Host(1).Addr6().String(), "9200"))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	for _, tc := range []struct {
		dscp  uint8
		class string
	}{{DSCPEF, "realtime"}, {DSCPCS1, "scavenger"}, {DSCPAF41, "high"}} {
		d := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_TCLASS, int(tc.dscp)<<2)
			}); err != nil {
				return err
			}
			return serr
		}}
		c, err := l.Host(0).DialWith(context.Background(), d, "udp6", net.JoinHostPort(l.Host(1).Addr6().String(), "9200"))
		if err != nil {
			t.Fatal(err)
		}
		for range 5 {
			if _, err := c.Write([]byte("tclass")); err != nil {
				t.Fatal(err)
			}
		}
		c.Close()
		waitFor(t, "5 packets in class "+tc.class, func() bool { return l.Stats(0, 1).Class(tc.class).OutPackets >= 5 })
		if got := l.Stats(0, 1).Class(tc.class).OutPackets; got != 5 {
			t.Errorf("IPv6 traffic class DSCP %d: class %s delivered %d, want 5", tc.dscp, tc.class, got)
		}
	}
}
