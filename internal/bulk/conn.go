package bulk

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/holdfast/holdfast/internal/netdiag"
	"github.com/holdfast/holdfast/internal/wire"
	"golang.org/x/sys/unix"
)

// Priming limits.
const (
	// pingCount is how many pings measure a connection's RTT.
	pingCount = 1
	// primeMsgSize is the size of one priming message.
	primeMsgSize = 64 << 10
	// MaxPrimeBytes bounds the priming traffic of one connection.
	MaxPrimeBytes = 16 << 20
	// maxPrimeRounds bounds the RTTs priming takes.
	maxPrimeRounds = 8
	// minPrimeTarget is the least window priming aims for.
	minPrimeTarget = 256 << 10
	// minBuffer is the smallest socket buffer bulk asks for.
	minBuffer = 256 << 10
)

// PrimeStats records what priming did to one connection.
type PrimeStats struct {
	RTT time.Duration `json:"rtt_ns"`
	// BDP is the bandwidth-delay product the buffers were sized for
	// (bandwidth assumed or learned from earlier transfers × RTT).
	BDP int64 `json:"bdp_bytes"`
	// SndBufWanted is the send buffer bulk asked for; SndBuf what the
	// kernel gave (getsockopt; the kernel doubles the request for its own
	// overhead). SndBufCapped says net.core.wmem_max capped the request.
	SndBufWanted int    `json:"sndbuf_wanted"`
	SndBuf       int    `json:"sndbuf"`
	SndBufCapped bool   `json:"sndbuf_capped"`
	WmemMax      int    `json:"wmem_max"`
	RcvBuf       int    `json:"rcvbuf"`
	CC           string `json:"congestion_control"`
	// CwndBefore and CwndAfter are TCP_INFO's congestion window in bytes
	// (segments × MSS) before and after the priming traffic.
	CwndBefore int64 `json:"cwnd_before_bytes"`
	CwndAfter  int64 `json:"cwnd_after_bytes"`
	PrimeBytes int64 `json:"prime_bytes"`
	// PrimeTarget is the window priming aimed for: this connection's share
	// of the BDP.
	PrimeTarget int64         `json:"prime_target_bytes"`
	PrimeTime   time.Duration `json:"prime_ns"`
	Reprimed    bool          `json:"reprimed,omitempty"`
}

// conn is one primed connection of a pool: a wire session over TCP.
type conn struct {
	id    int
	peer  string
	sess  *wire.Session
	tcp   *net.TCPConn
	mon   *netdiag.ConnMonitor // nil unless the client records diagnostics
	prime PrimeStats
	// lastUsed is when the conn last carried a transfer (unix nanos).
	lastUsed atomic.Int64
	// ackHandler receives acks arriving on this conn; set by the transfer
	// using it.
	mu    sync.Mutex
	onAck func(c *conn, a ack)
	dead  atomic.Bool
}

func (c *conn) alive() bool {
	if c.dead.Load() {
		return false
	}
	select {
	case <-c.sess.Done():
		c.dead.Store(true)
		return false
	default:
		return true
	}
}

func (c *conn) setAckHandler(f func(*conn, ack)) {
	c.mu.Lock()
	c.onAck = f
	c.mu.Unlock()
}

func (c *conn) handleAck(a ack) {
	c.mu.Lock()
	f := c.onAck
	c.mu.Unlock()
	if f != nil {
		f(c, a)
	}
}

// tcpInfo reads TCP_INFO of c.
func tcpInfo(c *net.TCPConn) (*unix.TCPInfo, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var info *unix.TCPInfo
	var serr error
	if err := raw.Control(func(fd uintptr) {
		info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, fmt.Errorf("reading TCP_INFO: %w", serr)
	}
	return info, nil
}

func cwndBytes(i *unix.TCPInfo) int64 { return int64(i.Snd_cwnd) * int64(i.Snd_mss) }

// sysctlInt reads an integer sysctl (0 when it cannot).
func sysctlInt(name string) int {
	b, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(name, ".", "/"))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	n, _ := strconv.Atoi(f[len(f)-1])
	return n
}

// socketControl returns a net.Dialer Control function that sets the send
// and receive buffers (when > 0) and the congestion control before connect,
// so that the window scale negotiated in the SYN fits the buffers.
func socketControl(sndbuf, rcvbuf int, cc string) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if sndbuf > 0 {
				if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, sndbuf); e != nil {
					serr = fmt.Errorf("setting SO_SNDBUF: %w", e)
					return
				}
			}
			if rcvbuf > 0 {
				if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf); e != nil {
					serr = fmt.Errorf("setting SO_RCVBUF: %w", e)
					return
				}
			}
			if cc != "" {
				if e := unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION, cc); e != nil {
					serr = fmt.Errorf("setting congestion control %q: %w", cc, e)
				}
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
}

func getsockInt(c *net.TCPConn, level, opt int) int {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	v := 0
	_ = raw.Control(func(fd uintptr) { v, _ = unix.GetsockoptInt(int(fd), level, opt) })
	return v
}

func getCC(c *net.TCPConn) string {
	raw, err := c.SyscallConn()
	if err != nil {
		return ""
	}
	var s string
	_ = raw.Control(func(fd uintptr) { s, _ = unix.GetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION) })
	return strings.TrimRight(s, "\x00")
}

// measureRTT returns the smallest of pingCount ping round trips.
func measureRTT(ctx context.Context, s *wire.Session) (time.Duration, error) {
	best := time.Duration(0)
	for i := 0; i < pingCount; i++ {
		t0 := time.Now()
		if _, err := s.Call(ctx, MsgPing, nil); err != nil {
			return 0, fmt.Errorf("measuring RTT: %w", err)
		}
		if d := time.Since(t0); best == 0 || d < best {
			best = d
		}
	}
	return best, nil
}

// primeTraffic opens the congestion window of c towards target bytes. In
// rounds of one RTT it sends one window (all that slow start lets through,
// and what it needs to double the window) and waits until the peer has read
// it (a ping behind it). It stops when the window reaches the target, when
// slow start ended (a loss set ssthresh), when the delivery rate stopped
// growing (the path is full, as BBR's startup judges it), or after
// maxPrimeRounds. It returns the bytes sent.
func (c *conn) primeTraffic(ctx context.Context, target int64) (int64, error) {
	buf := make([]byte, primeMsgSize)
	var sent int64
	var lastRate uint64
	flat := 0
	for round := 0; round < maxPrimeRounds && sent < MaxPrimeBytes; round++ {
		info, err := tcpInfo(c.tcp)
		if err != nil {
			return sent, err
		}
		cw := cwndBytes(info)
		if cw >= target {
			break
		}
		if round > 0 {
			if info.Snd_ssthresh < 1<<20 {
				break // out of slow start: more priming grows the window linearly
			}
			// The pipe is full when the window holds well over what the
			// path delivers in an RTT: more would only queue.
			if bdp := float64(info.Delivery_rate) * float64(info.Min_rtt) / 1e6; bdp > 0 && float64(cw) > 1.5*bdp {
				break
			}
			if info.Delivery_rate < lastRate+lastRate/4 {
				if flat++; flat >= 2 {
					break
				}
			} else {
				flat = 0
			}
			lastRate = max(lastRate, info.Delivery_rate)
		}
		n := min(max(cw, primeMsgSize), MaxPrimeBytes-sent)
		for b := int64(0); b < n; b += primeMsgSize {
			if err := c.sess.Send(ctx, MsgPrime, buf); err != nil {
				return sent, fmt.Errorf("priming: %w", err)
			}
			sent += primeMsgSize
		}
		if _, err := c.sess.Call(ctx, MsgPing, nil); err != nil {
			return sent, fmt.Errorf("priming: %w", err)
		}
	}
	return sent, nil
}

// primeConn measures c's RTT, sizes its send buffer to the bandwidth-delay
// product for bandwidth bw (bytes per second) and, when traffic is set,
// sends priming traffic to open its window to its share (1/share) of that
// product, recording the congestion window before and after.
func (c *conn) primeConn(ctx context.Context, bw float64, share int, wantCC string, traffic bool) error {
	t0 := time.Now()
	rtt, err := measureRTT(ctx, c.sess)
	if err != nil {
		return err
	}
	// The kernel's minimum RTT, sampled during the TLS handshake, leaves
	// out the scheduling delays an application-level ping includes.
	if info, err := tcpInfo(c.tcp); err == nil && info.Min_rtt > 0 {
		rtt = min(rtt, time.Duration(info.Min_rtt)*time.Microsecond)
	}
	p := &c.prime
	p.RTT = rtt
	p.BDP = int64(bw * rtt.Seconds())
	// Twice the BDP: the kernel counts its own overhead in the buffer, and
	// a full window must fit while the next one is being queued.
	want := max(int(2*p.BDP), minBuffer)
	p.WmemMax = sysctlInt("net.core.wmem_max")
	p.SndBufWanted = want
	if p.WmemMax > 0 && want > p.WmemMax {
		p.SndBufCapped = true
	}
	raw, err := c.tcp.SyscallConn()
	if err == nil {
		_ = raw.Control(func(fd uintptr) {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, want)
		})
	}
	p.SndBuf = getsockInt(c.tcp, unix.SOL_SOCKET, unix.SO_SNDBUF)
	p.RcvBuf = getsockInt(c.tcp, unix.SOL_SOCKET, unix.SO_RCVBUF)
	p.CC = getCC(c.tcp)
	if wantCC != "" && p.CC != wantCC {
		return fmt.Errorf("congestion control is %q, want %q", p.CC, wantCC)
	}
	before, err := tcpInfo(c.tcp)
	if err != nil {
		return err
	}
	p.CwndBefore = cwndBytes(before)
	// Open the window to this connection's share of the BDP.
	target := min(max(p.BDP/int64(max(share, 1)), minPrimeTarget), MaxPrimeBytes/2)
	var n int64
	if traffic {
		if n, err = c.primeTraffic(ctx, target); err != nil {
			return err
		}
	}
	after, err := tcpInfo(c.tcp)
	if err != nil {
		return err
	}
	p.CwndAfter = cwndBytes(after)
	p.PrimeBytes += n
	p.PrimeTarget = target
	p.PrimeTime = time.Since(t0)
	return nil
}

// reprime sends priming traffic again on a pooled connection whose window
// has collapsed while idle (net.ipv4.tcp_slow_start_after_idle).
func (c *conn) reprime(ctx context.Context) error {
	info, err := tcpInfo(c.tcp)
	if err != nil {
		return err
	}
	cw := cwndBytes(info)
	if c.prime.CwndAfter == 0 || cw*2 >= c.prime.CwndAfter {
		return nil
	}
	// The window collapsed while idle. If losses also left a low slow-start
	// threshold, the window would regrow linearly, one segment per RTT:
	// slower than a new connection's slow start. Such a connection is not
	// worth keeping (measured on a 100 ms path: a pooled transfer took twice
	// as long as a fresh one).
	if ss := int64(info.Snd_ssthresh) * int64(info.Snd_mss); ss < c.prime.PrimeTarget/2 {
		return errLowSsthresh
	}
	c.prime.CwndBefore = cw
	c.prime.Reprimed = true
	n, err := c.primeTraffic(ctx, c.prime.CwndAfter)
	if err != nil {
		return err
	}
	if info, err = tcpInfo(c.tcp); err == nil {
		c.prime.CwndAfter = cwndBytes(info)
	}
	c.prime.PrimeBytes += n
	return nil
}

var errNoTCP = errors.New("bulk: session is not over TCP")

// errLowSsthresh: a pooled connection is dropped rather than re-primed.
var errLowSsthresh = errors.New("bulk: pooled connection's slow-start threshold is too low after its window collapsed")
