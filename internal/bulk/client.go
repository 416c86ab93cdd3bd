package bulk

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/holdfast/holdfast/internal/netdiag"
	"github.com/holdfast/holdfast/internal/pace"
	"github.com/holdfast/holdfast/internal/wire"
)

// Client defaults and limits.
const (
	// DefaultAssumedBandwidth sizes the buffers of the first connection to a
	// peer, before any transfer has measured the path (bytes per second;
	// 1 Gbit/s).
	DefaultAssumedBandwidth = 125e6
	// DefaultIdleTimeout is how long an unused primed connection is kept.
	DefaultIdleTimeout = 5 * time.Minute
	// MaxStreams bounds the connections of one transfer.
	MaxStreams = 64
	// DefaultMaxStreams is the most connections --streams auto grows to.
	DefaultMaxStreams = 32
)

// ClientConfig configures a Client.
type ClientConfig struct {
	// TLS is the client's mTLS configuration (cluster.Identity.ClientTLS).
	TLS *tls.Config
	// Node is this node's name, stamped on frames.
	Node string
	// Versions, when set, supplies the version vector stamped on frames.
	Versions func() wire.VersionVector
	// Dial, when set, opens the TCP connection (lab tests dial inside a
	// namespace). It must return a *net.TCPConn. Socket options bulk needs
	// before connect are applied through Control, which Dial receives.
	Dial func(ctx context.Context, network, addr string, control func(network, address string, c syscall.RawConn) error) (net.Conn, error)
	// CC is the congestion control every connection uses ("cubic",
	// "bbr", "reno"; empty keeps the system default).
	CC string
	// AssumedBandwidth sizes buffers before the path is known (bytes/s).
	AssumedBandwidth float64
	// PathMemory, when set, is a file where the client keeps what each
	// transfer measured of its path (RTT, bandwidth) across processes: a
	// transfer to a peer measured within PathMemoryTTL sizes its buffers,
	// caps its sockets' pacing and starts its estimate from it, instead of
	// a slow start that overshoots the path.
	PathMemory string
	// IdleTimeout closes pooled connections unused for this long.
	IdleTimeout time.Duration
	// Service, when set, serves fetches: the peer sends files back over
	// this client's connections into the service's root.
	Service *Service
	// Diag, when set, receives network diagnostics of every connection
	// this client dials (internal/netdiag: per-message send and
	// acknowledgement times, kernel transmit timestamps, TCP_INFO samples),
	// for 'holdfast netdiag report'. A netdiag.Recorder writes the log.
	Diag netdiag.Sink
	// DiagConfig sets what Diag measures (zero: netdiag.DefaultConfig()).
	DiagConfig netdiag.Config
	// Logger receives events (default slog.Default()).
	Logger *slog.Logger
}

// Validate reports a bad configuration.
func (c ClientConfig) Validate() error {
	if c.TLS == nil {
		return errors.New("bulk: client has no TLS configuration")
	}
	if c.AssumedBandwidth < 0 || c.IdleTimeout < 0 {
		return errors.New("bulk: negative assumed bandwidth or idle timeout")
	}
	switch c.CC {
	case "", "auto", "cubic", "bbr", "reno":
	default:
		return fmt.Errorf("bulk: unknown congestion control %q (want auto, cubic, bbr or reno)", c.CC)
	}
	return nil
}

// Client sends transfers to peers over pools of primed connections. One
// Client keeps, per peer, the connections of finished transfers open and
// primed, so the next transfer to that peer starts at full speed.
type Client struct {
	cfg ClientConfig
	log *slog.Logger

	saveMu sync.Mutex // held while the path memory is written
	mu     sync.Mutex
	idle   map[string][]*conn
	paths  map[string]pathInfo
	nextID int
	closed bool
	stop   chan struct{}
}

// NewClient returns a client with cfg.
func NewClient(cfg ClientConfig) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.AssumedBandwidth == 0 {
		cfg.AssumedBandwidth = DefaultAssumedBandwidth
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if cfg.CC == "auto" {
		cfg.CC = AutoCC()
		log.Debug("congestion control chosen", "cc", cfg.CC)
	}
	paths := map[string]pathInfo{}
	if cfg.PathMemory != "" {
		var err error
		if paths, err = loadPaths(cfg.PathMemory); err != nil {
			log.Warn("ignoring the path memory", "err", err)
		}
	}
	c := &Client{cfg: cfg, log: log, idle: map[string][]*conn{}, paths: paths, stop: make(chan struct{})}
	go c.janitor()
	return c, nil
}

// AutoCC is what congestion control "auto" chooses: BBR when this kernel
// has it and lets this process use it, else the system default (""). On a
// long path with random loss a loss-based algorithm (cubic, reno) holds
// each flow to a few Mbit/s, so filling the path takes dozens of flows; BBR
// paces at its measured bottleneck rate and keeps the path full with a
// few (docs/BENCHMARKS.md, bulk scenario 1, measures both).
func AutoCC() string {
	avail, err := os.ReadFile("/proc/sys/net/ipv4/tcp_available_congestion_control")
	if err != nil || !slices.Contains(strings.Fields(string(avail)), "bbr") {
		return ""
	}
	// Choosing an algorithm that is not in the allowed list needs
	// CAP_NET_ADMIN; root has it.
	allowed, _ := os.ReadFile("/proc/sys/net/ipv4/tcp_allowed_congestion_control")
	if os.Geteuid() != 0 && !slices.Contains(strings.Fields(string(allowed)), "bbr") {
		return ""
	}
	return "bbr"
}

// Close closes every pooled connection.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.stop)
	idle := c.idle
	c.idle = map[string][]*conn{}
	c.mu.Unlock()
	for _, cs := range idle {
		for _, cn := range cs {
			cn.sess.Close()
		}
	}
	return nil
}

func (c *Client) janitor() {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		cut := time.Now().Add(-c.cfg.IdleTimeout).UnixNano()
		c.mu.Lock()
		for peer, cs := range c.idle {
			keep := cs[:0]
			for _, cn := range cs {
				if cn.lastUsed.Load() < cut || !cn.alive() {
					cn.sess.Close()
				} else {
					keep = append(keep, cn)
				}
			}
			c.idle[peer] = keep
		}
		c.mu.Unlock()
	}
}

// Pooled returns how many primed connections to peer are idle in the pool.
func (c *Client) Pooled(peer string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.idle[peer])
}

// acquire returns n connections to peer: pooled ones first (re-primed when
// their window collapsed while idle), then new ones, dialled and primed in
// parallel. It fails only when no connection at all can be had.
// acquireOpts shape how acquire prepares connections.
type acquireOpts struct {
	// onDial sees each new TCP connection as soon as it connects.
	onDial func(*net.TCPConn)
	// noPrimeTraffic skips priming traffic (RTT and buffers are still
	// measured and sized): for connections joining a paced transfer that
	// already keeps the path full, where traffic outside the pacer would
	// only overflow the bottleneck queue.
	noPrimeTraffic bool
}

func (c *Client) acquire(ctx context.Context, peer string, n int, ao acquireOpts) ([]*conn, error) {
	c.mu.Lock()
	pool := c.idle[peer]
	var got []*conn
	for len(pool) > 0 && len(got) < n {
		cn := pool[len(pool)-1]
		pool = pool[:len(pool)-1]
		if cn.alive() {
			got = append(got, cn)
		}
	}
	c.idle[peer] = pool
	c.mu.Unlock()
	for _, cn := range got {
		cn.prime.Reprimed = false
		if ao.noPrimeTraffic {
			continue
		}
		if err := cn.reprime(ctx); err != nil {
			c.log.Debug("dropping a pooled connection; a new one replaces it", "peer", peer, "conn", cn.id, "err", err)
			cn.sess.Close()
		}
	}
	live := got[:0]
	for _, cn := range got {
		if cn.alive() {
			live = append(live, cn)
		}
	}
	got = live
	need := n - len(got)
	if need <= 0 {
		return got, nil
	}
	type res struct {
		cn  *conn
		err error
	}
	ch := make(chan res, need)
	for i := 0; i < need; i++ {
		go func() {
			cn, err := c.dial(ctx, peer, n, ao)
			ch <- res{cn, err}
		}()
	}
	var firstErr error
	for i := 0; i < need; i++ {
		r := <-ch
		if r.err != nil {
			if firstErr == nil {
				firstErr = r.err
			}
			continue
		}
		got = append(got, r.cn)
	}
	if len(got) == 0 {
		return nil, firstErr
	}
	if firstErr != nil {
		c.log.Warn("some connections could not be opened", "peer", peer, "opened", len(got), "wanted", n, "err", firstErr)
	}
	return got, nil
}

// release returns connections to the pool.
func (c *Client) release(peer string, cs []*conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cn := range cs {
		cn.setAckHandler(nil)
		if c.closed || !cn.alive() {
			cn.sess.Close()
			continue
		}
		// The next transfer paces from its own estimate: a pacing cap
		// left from this one would throttle it before it measures anything.
		_ = pace.SetSocketRate(cn.tcp, 0)
		cn.lastUsed.Store(time.Now().UnixNano())
		c.idle[peer] = append(c.idle[peer], cn)
	}
}

// learn records what a transfer measured of the path to peer: its RTT
// and, when bw > 0, its bandwidth (bytes per second) and the connections
// that carried it.
func (c *Client) learn(peer string, rtt time.Duration, bw float64, streams int) {
	if rtt <= 0 {
		return
	}
	now := time.Now()
	key := c.pathKey(peer)
	// saveMu orders the file writes; the client's lock is not held over
	// the disk.
	c.saveMu.Lock()
	defer c.saveMu.Unlock()
	c.mu.Lock()
	if old, ok := c.paths[key]; bw <= 0 && ok && old.bw > 0 {
		bw, streams, now = old.bw, old.streams, old.at // keep the last measurement and its age
	}
	c.paths[key] = pathInfo{rtt: rtt, bw: bw, streams: streams, at: now}
	if c.cfg.PathMemory == "" {
		c.mu.Unlock()
		return
	}
	snap := maps.Clone(c.paths)
	c.mu.Unlock()
	if err := savePaths(c.cfg.PathMemory, snap, time.Now()); err != nil {
		c.log.Warn("path memory not saved", "err", err)
	}
}

// pathKey names the path to peer in the path memory: the same path
// measured under another congestion control is another path (cubic on a
// lossy path needs many more connections than BBR).
func (c *Client) pathKey(peer string) string {
	cc := c.cfg.CC
	if cc == "" {
		cc = "default"
	}
	return peer + " " + cc
}

// path returns what is known of the path to peer.
func (c *Client) path(peer string) (pathInfo, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.paths[c.pathKey(peer)]
	return p, ok
}

// dial opens and primes one connection to peer (see acquireOpts).
func (c *Client) dial(ctx context.Context, peer string, share int, ao acquireOpts) (*conn, error) {
	if c.cfg.TLS == nil {
		return nil, errors.New("bulk: this side cannot open connections (serving a fetch)")
	}
	c.mu.Lock()
	c.nextID++
	id := c.nextID
	pi, known := c.paths[c.pathKey(peer)]
	c.mu.Unlock()
	bw := c.cfg.AssumedBandwidth
	if known && pi.bw > 0 {
		bw = pi.bw
	}
	// Before connect the RTT is unknown: size buffers for the RTT seen
	// before, or for 100 ms, capped by the kernel. The receive buffer is
	// left to the kernel's autotuning (tcp_rmem), which may go higher than
	// an explicit SO_RCVBUF (capped by rmem_max).
	rtt := 100 * time.Millisecond
	if known {
		rtt = pi.rtt
	}
	snd := max(int(2*bw*rtt.Seconds()), minBuffer)
	control := socketControl(snd, 0, c.cfg.CC)
	cn := &conn{id: id, peer: peer}
	mux := &wire.Mux{}
	mux.Handle(MsgAck, func(ctx context.Context, req *wire.Request) ([]byte, error) {
		a, err := parseAck(req.Payload)
		if err != nil {
			return nil, err
		}
		cn.handleAck(a)
		return nil, nil
	})
	mux.Handle(MsgPing, func(ctx context.Context, req *wire.Request) ([]byte, error) { return nil, nil })
	mux.Handle(MsgPrime, func(ctx context.Context, req *wire.Request) ([]byte, error) { return nil, nil })
	if c.cfg.Service != nil {
		mux.Handle(MsgBegin, c.cfg.Service.handleBegin)
		mux.HandleBorrowed(MsgBlock, c.cfg.Service.handleBlock)
		mux.Handle(MsgCommit, c.cfg.Service.handleCommit)
		mux.Handle(MsgEnd, c.cfg.Service.handleEnd)
	}
	wcfg := &wire.Config{Node: c.cfg.Node, Versions: c.cfg.Versions, Mux: mux, Logger: c.log, MaxPayload: MaxBlockSize + 4096}
	dialer := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var nc net.Conn
		var err error
		if c.cfg.Dial != nil {
			nc, err = c.cfg.Dial(ctx, network, addr, control)
		} else {
			d := net.Dialer{Control: control}
			nc, err = d.DialContext(ctx, network, addr)
		}
		if err != nil {
			return nil, err
		}
		tcp, ok := nc.(*net.TCPConn)
		if !ok {
			nc.Close()
			return nil, errNoTCP
		}
		if ao.onDial != nil {
			ao.onDial(tcp)
		}
		return c.monitor(tcp, peer), nil
	}
	s, err := wire.Dial(ctx, "tcp", peer, c.cfg.TLS, wcfg, dialer)
	if err != nil {
		return nil, err
	}
	switch nc := s.NetConn().(type) {
	case *net.TCPConn:
		cn.tcp = nc
	case *netdiag.ConnMonitor:
		cn.tcp, cn.mon = nc.TCPConn(), nc
	default:
		s.Close()
		return nil, errNoTCP
	}
	cn.sess = s
	if err := cn.primeConn(ctx, bw, share, c.cfg.CC, !ao.noPrimeTraffic); err != nil {
		s.Close()
		return nil, fmt.Errorf("priming connection to %s: %w", peer, err)
	}
	c.log.Debug("connection primed", "peer", peer, "conn", id, "rtt", cn.prime.RTT, "sndbuf", cn.prime.SndBuf,
		"capped", cn.prime.SndBufCapped, "cwnd_before", cn.prime.CwndBefore, "cwnd_after", cn.prime.CwndAfter)
	return cn, nil
}

// monitor wraps tcp in a netdiag.ConnMonitor when the client records
// diagnostics. It must run before the first byte is written (the TLS
// handshake), since the monitor counts byte offsets.
func (c *Client) monitor(tcp *net.TCPConn, peer string) net.Conn {
	if c.cfg.Diag == nil {
		return tcp
	}
	cfg := c.cfg.DiagConfig
	if cfg == (netdiag.Config{}) {
		cfg = netdiag.DefaultConfig()
	}
	cfg.Role, cfg.Peer = "bulk-sender", peer
	m, err := netdiag.NewConnMonitor(tcp, cfg, c.cfg.Diag, c.log)
	if err != nil {
		c.log.Warn("network diagnostics off for this connection", "peer", peer, "err", err)
		return tcp
	}
	return m
}

// newEstimator returns the pacing estimator of a transfer.
func newEstimator(opts Options, remembered float64) *pace.Estimator {
	cfg := pace.DefaultConfig()
	cfg.Limit = opts.RateLimit
	cfg.Remembered = remembered
	// Samples come from the bytes TCP acknowledged, a segment at a time:
	// one RTT is enough (four blocks were needed while they came from the
	// receiver's block acknowledgements, and at a few hundred Mbit/s that
	// stretched each sample over several RTTs, so the startup phase saw
	// too little growth per sample and ended early).
	cfg.MinSampleBytes = 64 << 10
	e, _ := pace.NewEstimator(cfg)
	return e
}
