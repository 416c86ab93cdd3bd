// Package proxy is netdiag's measuring TCP proxy: put it in front of any
// client or server that is not holdfast and it measures the traffic passing
// through it the way holdfast measures its own connections. Each proxied
// connection has two legs, client↔proxy and proxy↔server; the proxy writes
// on both, so both get a netdiag.ConnMonitor with per-write kernel
// timestamps (keyed by byte offset) and TCP_INFO samples, and the records
// land in the same log that `holdfast netdiag report` reads.
//
// The server leg is labelled with the server's address, the client leg
// with the client's host (so that one client's connections are summarised
// together). What the report says about a leg is about the flow the proxy
// writes on it: on the server leg "receiving application" means the server read
// slowly and "sending application" that the client paused; on the client
// leg the roles swap.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/holdfast/holdfast/internal/netdiag"
)

// Limits.
const (
	// DefaultBufferSize is the copy buffer per direction.
	DefaultBufferSize = 256 << 10
	// MinBufferSize and MaxBufferSize bound BufferSize.
	MinBufferSize = 4 << 10
	MaxBufferSize = 16 << 20
	// DefaultDialTimeout bounds connecting to the server.
	DefaultDialTimeout = 10 * time.Second
)

// Roles recorded for the two legs.
const (
	RoleToServer = "proxy-to-server"
	RoleToClient = "proxy-to-client"
)

// Config sets up a proxy.
type Config struct {
	// Listen is the address to accept clients on (e.g. ":8080").
	Listen string
	// To is the server address every client is connected to.
	To string
	// Monitor is the measurement applied to both legs.
	Monitor netdiag.Config
	// Measure turns measurement off when false (a plain proxy, used as the
	// baseline for the overhead benchmark).
	Measure bool
	// BufferSize is the copy buffer per direction.
	BufferSize int
	// DialTimeout bounds connecting to To.
	DialTimeout time.Duration
	// Dial, if set, connects to To instead of a net.Dialer (tests use it to
	// dial from inside a lab host's network namespace). It must return a
	// *net.TCPConn.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// DefaultConfig returns a measuring proxy configuration from listen to to.
func DefaultConfig(listen, to string) Config {
	return Config{
		Listen:      listen,
		To:          to,
		Monitor:     netdiag.DefaultConfig(),
		Measure:     true,
		BufferSize:  DefaultBufferSize,
		DialTimeout: DefaultDialTimeout,
	}
}

// Validate reports invalid settings.
func (c Config) Validate() error {
	if c.To == "" {
		return errors.New("proxy: no server address (--to)")
	}
	if _, _, err := net.SplitHostPort(c.To); err != nil {
		return fmt.Errorf("proxy: server address %q: %w", c.To, err)
	}
	if c.BufferSize < MinBufferSize || c.BufferSize > MaxBufferSize {
		return fmt.Errorf("proxy: buffer size %d: must be between %d and %d", c.BufferSize, MinBufferSize, MaxBufferSize)
	}
	if c.DialTimeout <= 0 {
		return fmt.Errorf("proxy: dial timeout %v: must be positive", c.DialTimeout)
	}
	if c.Measure {
		if err := c.Monitor.Validate(); err != nil {
			return fmt.Errorf("proxy: %w", err)
		}
	}
	return nil
}

// Proxy forwards TCP connections and measures both legs.
type Proxy struct {
	cfg  Config
	sink netdiag.Sink
	log  *slog.Logger
	wg   sync.WaitGroup
}

// New returns a proxy writing records to sink.
func New(cfg Config, sink netdiag.Sink, log *slog.Logger) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Proxy{cfg: cfg, sink: sink, log: log}, nil
}

// Serve accepts clients on ln until ctx is cancelled, then closes ln and
// waits for the connections in flight to end (they are closed too).
func (p *Proxy) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { <-ctx.Done(); ln.Close() }()
	defer p.wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("proxy: accepting on %s: %w", ln.Addr(), err)
		}
		p.wg.Go(func() {
			if err := p.handle(ctx, c.(*net.TCPConn)); err != nil {
				p.log.Warn("proxy: connection ended with error", "client", c.RemoteAddr().String(), "err", err)
			}
		})
	}
}

// ListenAndServe listens on cfg.Listen and serves until ctx is cancelled.
// ready, if not nil, receives the bound address once listening.
func (p *Proxy) ListenAndServe(ctx context.Context, ready func(net.Addr)) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", p.cfg.Listen)
	if err != nil {
		return fmt.Errorf("proxy: listening on %s: %w", p.cfg.Listen, err)
	}
	p.log.Info("proxy: listening", "listen", ln.Addr().String(), "to", p.cfg.To, "measure", p.cfg.Measure)
	if ready != nil {
		ready(ln.Addr())
	}
	return p.Serve(ctx, ln)
}

// leg is one side of a proxied connection.
type leg interface {
	net.Conn
	CloseWrite() error
}

func (p *Proxy) handle(ctx context.Context, client *net.TCPConn) error {
	dctx, cancel := context.WithTimeout(ctx, p.cfg.DialTimeout)
	defer cancel()
	dial := p.cfg.Dial
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	sc, err := dial(dctx, "tcp", p.cfg.To)
	if err != nil {
		client.Close()
		return fmt.Errorf("connecting to %s: %w", p.cfg.To, err)
	}
	server, ok := sc.(*net.TCPConn)
	if !ok {
		client.Close()
		sc.Close()
		return fmt.Errorf("connecting to %s: got a %T, not a TCP connection", p.cfg.To, sc)
	}
	var cl, sl leg = client, server
	if p.cfg.Measure {
		ccfg := p.cfg.Monitor
		ccfg.Role = RoleToClient
		// Clients are summarised per host: one client's connections come
		// from ever new ports.
		if ccfg.Peer == "" {
			if host, _, err := net.SplitHostPort(client.RemoteAddr().String()); err == nil {
				ccfg.Peer = host
			}
		}
		cm, err := netdiag.NewConnMonitor(client, ccfg, p.sink, p.log)
		if err != nil {
			client.Close()
			server.Close()
			return fmt.Errorf("monitoring client leg: %w", err)
		}
		scfg := p.cfg.Monitor
		scfg.Role = RoleToServer
		sm, err := netdiag.NewConnMonitor(server, scfg, p.sink, p.log)
		if err != nil {
			cm.Close()
			server.Close()
			return fmt.Errorf("monitoring server leg: %w", err)
		}
		cl, sl = cm, sm
	}
	p.log.Debug("proxy: connected", "client", client.RemoteAddr().String(), "server", server.RemoteAddr().String())
	stop := context.AfterFunc(ctx, func() { cl.Close(); sl.Close() })
	defer stop()
	errc := make(chan error, 2)
	go func() { errc <- p.pipe(sl, cl, "client→server") }()
	go func() { errc <- p.pipe(cl, sl, "server→client") }()
	err = errors.Join(<-errc, <-errc)
	err = errors.Join(err, closeQuiet(cl), closeQuiet(sl))
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// pipe copies src to dst with one write per read (so each write record is
// one arrival from src), then half-closes dst.
func (p *Proxy) pipe(dst, src leg, dir string) error {
	buf := make([]byte, p.cfg.BufferSize)
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				src.Close()
				if errors.Is(werr, net.ErrClosed) || peerGone(werr) {
					return nil
				}
				return fmt.Errorf("%s: writing: %w", dir, werr)
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				if err := dst.CloseWrite(); err != nil && !errors.Is(err, net.ErrClosed) && !peerGone(err) {
					return fmt.Errorf("%s: half-close: %w", dir, err)
				}
				return nil
			}
			if errors.Is(rerr, net.ErrClosed) {
				return nil
			}
			dst.Close()
			if peerGone(rerr) {
				return nil
			}
			return fmt.Errorf("%s: reading: %w", dir, rerr)
		}
	}
}

// peerGone reports errors that mean an end of the connection went away
// (reset, broken pipe, not connected): how many programs end connections,
// not a proxy failure.
func peerGone(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ENOTCONN)
}

func closeQuiet(c net.Conn) error {
	if err := c.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}
