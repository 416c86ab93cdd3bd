package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Limits of a lab.
const (
	// MaxHosts is the most hosts one lab can have.
	MaxHosts = 64
	// MinMTU and MaxMTU bound the MTU of the hosts' TUN devices.
	MinMTU = 1280
	MaxMTU = 65535
	// DefaultMTU is the MTU of a WAN path.
	DefaultMTU = 1500
	// NamePrefix starts the name of every network namespace a lab makes, so
	// that Cleanup finds the leftovers of a crashed run.
	NamePrefix = "hflab-"
	// tunName is the TUN device inside every host namespace.
	tunName = "hf0"
	// tunTxQueueLen is the TUN device's queue (packets) in front of the
	// emulator's reader; long enough that the reader's scheduling hiccups
	// do not drop packets before the emulated queue sees them.
	tunTxQueueLen = 2000
)

// Config describes a lab.
type Config struct {
	// Name names the lab; its hosts' namespaces are hflab-<Name>-h<i>. It
	// is 1 to 20 characters of [a-z0-9]. Empty picks a name unique to this
	// process ("<pid>n<seq>").
	Name string
	// Hosts is the number of hosts, 2 to MaxHosts.
	Hosts int
	// Path is applied in both directions between every pair of hosts; use
	// SetPath or SetLink to change a pair.
	Path Path
	// MTU of every host's TUN device; DefaultMTU when zero.
	MTU int
	// Seed seeds the random loss and jitter; zero picks a random seed.
	Seed uint64
}

// DefaultConfig returns two hosts joined by a perfect path at MTU 1500.
func DefaultConfig() Config {
	return Config{Hosts: 2, MTU: DefaultMTU}
}

var nameRE = regexp.MustCompile(`^[a-z0-9]{1,20}$`)

// Validate reports the first problem with c, or nil. Zero fields that have
// defaults are valid.
func (c Config) Validate() error {
	if c.Name != "" && !nameRE.MatchString(c.Name) {
		return fmt.Errorf("lab name %q: want 1 to 20 characters of a-z and 0-9", c.Name)
	}
	if c.Hosts != 0 && (c.Hosts < 2 || c.Hosts > MaxHosts) {
		return fmt.Errorf("%d hosts: want 2 to %d", c.Hosts, MaxHosts)
	}
	if c.MTU != 0 && (c.MTU < MinMTU || c.MTU > MaxMTU) {
		return fmt.Errorf("MTU %d: want %d to %d", c.MTU, MinMTU, MaxMTU)
	}
	if err := c.Path.Validate(); err != nil {
		return fmt.Errorf("path: %w", err)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Hosts == 0 {
		c.Hosts = 2
	}
	if c.MTU == 0 {
		c.MTU = DefaultMTU
	}
	if c.Name == "" {
		c.Name = fmt.Sprintf("%dn%d", os.Getpid(), labSeq.Add(1))
	}
	return c
}

var labSeq atomic.Uint64

// Lab is a set of hosts, each a network namespace with a TUN device, joined
// by a userspace WAN emulator running in this process. It is a star: every
// host's TUN device feeds the emulator, which forwards each packet by its
// destination address over the path between the two hosts.
type Lab struct {
	cfg   Config
	log   *slog.Logger
	clk   *clock
	hosts []*Host
	links [][]*link // links[from][to]
	pool  sync.Pool
	lock  *os.File
	wg    sync.WaitGroup

	unroutable atomic.Uint64
	closeOnce  sync.Once
	closeErr   error
	closing    atomic.Bool
}

// Available reports why labs cannot be made here, or nil when they can:
// a lab needs root (for namespaces) and /dev/net/tun.
func Available() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("lab needs root to create network namespaces (running as uid %d)", os.Geteuid())
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return fmt.Errorf("lab needs /dev/net/tun: %w", err)
	}
	return nil
}

// New starts a lab for a test or benchmark and closes it when the test
// ends, whether it passed or not. It skips the test, with the reason, when
// labs cannot be made here (not root, no /dev/net/tun), and fails it when
// the lab cannot start. The lab logs to t.
func New(t testing.TB, cfg Config) *Lab {
	t.Helper()
	if err := Available(); err != nil {
		t.Skip(err.Error())
	}
	logger := slog.New(slog.NewTextHandler(tbWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := Start(ctx, cfg, logger)
	if err != nil {
		t.Fatalf("starting lab: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("closing lab %s: %v", l.Name(), err)
		}
	})
	return l
}

// tbWriter sends log lines to a test's log.
type tbWriter struct{ t testing.TB }

func (w tbWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// Start makes the hosts' namespaces and TUN devices and starts the
// emulator. ctx bounds the setup only; the lab runs until Close. Leftovers
// of crashed labs (whose process is gone) are removed first. On error,
// everything made so far is removed.
func Start(ctx context.Context, cfg Config, logger *slog.Logger) (*Lab, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("lab config: %w", err)
	}
	if err := Available(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	cfg = cfg.withDefaults()
	if cfg.Seed == 0 {
		cfg.Seed = uint64(time.Now().UnixNano())
	}
	if _, err := Cleanup(logger); err != nil {
		logger.Warn("removing leftovers of earlier labs", "err", err)
	}
	clk, err := newClock()
	if err != nil {
		return nil, err
	}
	l := &Lab{cfg: cfg, log: logger.With("lab", cfg.Name), clk: clk}
	mtu := cfg.MTU
	l.pool.New = func() any { return &packet{buf: make([]byte, mtu)} }

	l.lock, err = acquireLabLock(cfg.Name)
	if err != nil {
		return nil, err
	}
	// We own the name now: anything left under it is a crashed run's.
	if _, err := removeLabNamespaces(cfg.Name, l.log); err != nil {
		l.releaseLock()
		return nil, err
	}
	fail := func(err error) (*Lab, error) {
		if cerr := l.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleaning up after failed start: %w", cerr))
		}
		return nil, err
	}
	for i := range cfg.Hosts {
		if err := ctx.Err(); err != nil {
			return fail(fmt.Errorf("starting lab %s: %w", cfg.Name, err))
		}
		h, err := newHost(l, i)
		if h != nil {
			l.hosts = append(l.hosts, h)
		}
		if err != nil {
			return fail(fmt.Errorf("starting lab %s: %w", cfg.Name, err))
		}
	}
	l.links = make([][]*link, cfg.Hosts)
	for a := range cfg.Hosts {
		l.links[a] = make([]*link, cfg.Hosts)
		for b := range cfg.Hosts {
			if a == b {
				continue
			}
			dst := l.hosts[b].tun
			out := func(p []byte) error { _, err := dst.Write(p); return err }
			lk, err := newLink(a, b, clk, mtu, cfg.Path, cfg.Seed, out, l.freePacket, l.log)
			if err != nil {
				return fail(fmt.Errorf("starting lab %s: %w", cfg.Name, err))
			}
			l.links[a][b] = lk
			l.wg.Go(lk.run)
		}
	}
	for _, h := range l.hosts {
		l.wg.Go(func() { l.read(h) })
	}
	l.log.Info("lab up", "hosts", cfg.Hosts, "path", cfg.Path.String(), "mtu", mtu, "seed", cfg.Seed)
	return l, nil
}

func (l *Lab) freePacket(p *packet) {
	p.n = 0
	l.pool.Put(p)
}

// read forwards every packet host h sends into the path to its destination.
func (l *Lab) read(h *Host) {
	n := len(l.hosts)
	for {
		p := l.pool.Get().(*packet)
		k, err := h.tun.Read(p.buf)
		if err != nil {
			l.freePacket(p)
			if !l.closing.Load() {
				l.log.Error("reading from host TUN device", "host", h.ns, "err", err)
			}
			return
		}
		p.n = k
		dscp, dst := dscpOf(p.buf[:k], n)
		if dst < 0 || dst == h.index {
			// IPv6 router solicitations, MLD reports and the like.
			l.unroutable.Add(1)
			l.freePacket(p)
			continue
		}
		p.dscp = dscp
		l.links[h.index][dst].enqueue(p)
	}
}

// Name returns the lab's name; its namespaces are hflab-<name>-h<i>.
func (l *Lab) Name() string { return l.cfg.Name }

// Config returns the configuration the lab started with, defaults filled.
func (l *Lab) Config() Config { return l.cfg }

// Host returns host i (0-based). It panics if i is out of range, like an
// index expression.
func (l *Lab) Host(i int) *Host { return l.hosts[i] }

// Hosts returns every host, in order.
func (l *Lab) Hosts() []*Host { return append([]*Host(nil), l.hosts...) }

func (l *Lab) link(from, to int) (*link, error) {
	n := len(l.hosts)
	if from < 0 || from >= n || to < 0 || to >= n || from == to {
		return nil, fmt.Errorf("no path from host %d to host %d in a lab of %d hosts", from, to, n)
	}
	return l.links[from][to], nil
}

// SetPath sets the path between hosts a and b in both directions (so the
// RTT is twice p.Delay). It may be called while traffic flows: packets
// already past the bottleneck keep their timing, queued packets stay
// queued, and counters of classes that keep their names are kept.
func (l *Lab) SetPath(a, b int, p Path) error {
	if err := l.SetLink(a, b, p); err != nil {
		return err
	}
	return l.SetLink(b, a, p)
}

// SetLink sets the path of one direction, from host from to host to.
func (l *Lab) SetLink(from, to int, p Path) error {
	if err := p.Validate(); err != nil {
		return fmt.Errorf("path h%d->h%d: %w", from, to, err)
	}
	lk, err := l.link(from, to)
	if err != nil {
		return err
	}
	lk.setPath(p)
	l.log.Debug("path set", "from", from, "to", to, "path", p.String())
	return nil
}

// SetAllPaths sets every direction between every pair of hosts to p.
func (l *Lab) SetAllPaths(p Path) error {
	if err := p.Validate(); err != nil {
		return fmt.Errorf("path: %w", err)
	}
	for a := range l.hosts {
		for b := range l.hosts {
			if a != b {
				l.links[a][b].setPath(p)
			}
		}
	}
	return nil
}

// Path returns the path in force from host from to host to.
func (l *Lab) Path(from, to int) (Path, error) {
	lk, err := l.link(from, to)
	if err != nil {
		return Path{}, err
	}
	lk.mu.Lock()
	defer lk.mu.Unlock()
	return lk.path, nil
}

// Stats returns the counters of the direction from host a to host b. It
// returns a zero PathStats when there is no such direction.
func (l *Lab) Stats(a, b int) PathStats {
	lk, err := l.link(a, b)
	if err != nil {
		return PathStats{From: a, To: b}
	}
	return lk.snapshot()
}

// AllStats returns the counters of every direction, ordered by source then
// destination.
func (l *Lab) AllStats() []PathStats {
	var out []PathStats
	for a := range l.hosts {
		for b := range l.hosts {
			if a != b {
				out = append(out, l.links[a][b].snapshot())
			}
		}
	}
	return out
}

// MaxLag returns the largest PathStats.MaxLag of all directions: how far
// behind its schedule the emulator fell. Tests of timing use it to tell a
// wrong result from a machine too loaded to measure.
func (l *Lab) MaxLag() time.Duration {
	var m time.Duration
	for _, s := range l.AllStats() {
		m = max(m, s.MaxLag)
	}
	return m
}

// Unroutable returns how many packets hosts sent to addresses outside the
// lab (or to themselves through the TUN device); the emulator drops them.
func (l *Lab) Unroutable() uint64 { return l.unroutable.Load() }

// Close stops the emulator and removes everything the lab made: processes
// still running in its namespaces, the TUN devices, the namespaces and the
// lock file. It is safe to call more than once.
func (l *Lab) Close() error {
	l.closeOnce.Do(func() {
		l.closing.Store(true)
		var errs []error
		for _, h := range l.hosts {
			if err := killNamespaceProcs(h.nsPath()); err != nil {
				errs = append(errs, err)
			}
		}
		for _, row := range l.links {
			for _, lk := range row {
				if lk != nil {
					lk.close()
				}
			}
		}
		for _, h := range l.hosts {
			if err := h.close(); err != nil {
				errs = append(errs, err)
			}
		}
		l.wg.Wait()
		for _, h := range l.hosts {
			if err := deleteNamespace(h.ns); err != nil {
				errs = append(errs, err)
			}
		}
		l.releaseLock()
		l.closeErr = errors.Join(errs...)
		l.log.Info("lab down", "unroutable", l.unroutable.Load())
	})
	return l.closeErr
}
