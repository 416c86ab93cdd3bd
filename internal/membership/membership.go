// Package membership runs hashicorp/memberlist's SWIM gossip between holdfast
// agents over the cluster's authenticated transport: memberlist's packets
// travel as one-way wire messages and its streams as ordered wire messages
// on the agents' mTLS sessions (internal/wire), so gossip needs no socket of
// its own and no process without a cluster certificate can take part.
//
// A member's address is its agent's wire advertise address and its name is
// the agent's node name. Each agent publishes a small metadata record (for
// the pool: failure domain, capacity, free space) that gossip spreads to all
// others, and learns who is alive, suspect or dead from memberlist's
// failure detector.
package membership

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/holdfast/holdfast/internal/agent"
	"github.com/holdfast/holdfast/internal/wire"
)

// Message types of the gossip transport (in the pool's 1200-1299 range).
const (
	MsgPacket wire.MsgType = 1210 // one-way: from-address + memberlist packet
	MsgStream wire.MsgType = 1211 // one-way: stream id, flags + data
)

// Limits.
const (
	// MaxMeta is the largest metadata record (memberlist's own limit).
	MaxMeta = memberlist.MetaMaxSize
	// maxAddr bounds the from-address carried by a packet.
	maxAddr = 255
	// streamBuffer bounds unread bytes of one stream; memberlist streams
	// carry push/pull state, small.
	streamBuffer = 32 << 20
)

// Member is one agent as gossip knows it.
type Member struct {
	Name  string `json:"name"`
	Addr  string `json:"addr"`
	Alive bool   `json:"alive"`
	State string `json:"state"`
	Meta  []byte `json:"meta,omitempty"`
}

// Config configures gossip.
type Config struct {
	// Local uses memberlist's local-network timings (probe every second);
	// otherwise its LAN timings.
	Local bool
	// Meta returns this agent's metadata record (at most MaxMeta bytes).
	Meta func() []byte
	// JoinInterval is how often the agent joins members it has sessions
	// with but gossip does not know yet.
	JoinInterval time.Duration
}

// DefaultConfig returns LAN timings and a 5 s join interval.
func DefaultConfig() Config { return Config{JoinInterval: 5 * time.Second} }

// Validate checks the configuration.
func (c Config) Validate() error {
	if c.JoinInterval < 100*time.Millisecond {
		return fmt.Errorf("join interval %v: must be at least 100ms", c.JoinInterval)
	}
	return nil
}

// Gossip is memberlist running over an agent's wire sessions.
type Gossip struct {
	a   *agent.Agent
	cfg Config
	log *slog.Logger
	tr  *transport
	ml  atomic.Pointer[memberlist.Memberlist]
	// seen holds every member name gossip has ever reported (Run's
	// goroutine only).
	seen map[string]bool
	ev   *events
}

// New prepares gossip for agent a and registers its wire handlers; Run
// starts it.
func New(a *agent.Agent, wm *wire.Mux, cfg Config) (*Gossip, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	g := &Gossip{a: a, cfg: cfg, log: a.Logger().With("service", "membership"), seen: map[string]bool{}, ev: &events{m: map[string]Member{}}}
	g.tr = newTransport(a, g.log)
	wm.Handle(MsgPacket, g.tr.handlePacket)
	wm.Handle(MsgStream, g.tr.handleStream)
	return g, nil
}

// Run starts memberlist, joins the peers the agent has sessions with, and
// keeps joining new ones until ctx ends; then it leaves.
func (g *Gossip) Run(ctx context.Context) error {
	// The advertise address is known once the agent listens; ask its API
	// (which answers only then) rather than reading the agent's state.
	var adv string
	for adv == "" {
		st, err := agent.NewClient(g.a.StateDir()).Status(ctx)
		if err == nil && !strings.HasSuffix(st.Advertise, ":0") {
			adv = st.Advertise
			break
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(50 * time.Millisecond):
		}
	}
	g.tr.setSelf(adv)
	mc := memberlist.DefaultLANConfig()
	if g.cfg.Local {
		mc = memberlist.DefaultLocalConfig()
	}
	mc.Name = g.a.Name()
	mc.Transport = g.tr
	mc.Delegate = &delegate{meta: g.cfg.Meta}
	mc.Events = g.ev
	mc.Logger = log.New(slogWriter{g.log}, "", 0)
	mc.EnableCompression = false
	ml, err := memberlist.Create(mc)
	if err != nil {
		return fmt.Errorf("starting gossip: %w", err)
	}
	g.ml.Store(ml)
	defer func() {
		_ = ml.Leave(time.Second)
		_ = ml.Shutdown()
	}()
	t := time.NewTicker(g.cfg.JoinInterval)
	defer t.Stop()
	for {
		g.joinConnected(ml)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// joinConnected joins peers with a live session that gossip has never
// known. A member that left or died is not joined again from here: when it
// comes back, it joins the cluster itself.
func (g *Gossip) joinConnected(ml *memberlist.Memberlist) {
	for _, m := range g.ev.members() {
		g.seen[m.Name] = true
	}
	var addrs []string
	for _, p := range g.a.Peers() {
		if p.Connected && p.Address != "" && !g.seen[p.Name] {
			addrs = append(addrs, p.Name+"/"+p.Address)
		}
	}
	if len(addrs) == 0 {
		return
	}
	if n, err := ml.Join(addrs); err != nil && n == 0 {
		g.log.Debug("gossip join incomplete", "tried", addrs, "err", err)
	}
}

// Members returns every member gossip knows, this agent included; members
// that left or died are listed with Alive false until they come back.
func (g *Gossip) Members() []Member {
	return g.ev.members()
}

// events keeps a copy of memberlist's view, fed by its event callbacks:
// the *Node values memberlist hands out keep changing under its own lock,
// so they are copied while memberlist calls us and never read later.
type events struct {
	mu sync.Mutex
	m  map[string]Member
}

func (e *events) set(n *memberlist.Node, alive bool) {
	m := Member{
		Name: n.Name, Addr: net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port))),
		Alive: alive, State: stateName(n.State), Meta: append([]byte(nil), n.Meta...),
	}
	if !alive && m.State == "alive" {
		m.State = "left"
	}
	e.mu.Lock()
	e.m[n.Name] = m
	e.mu.Unlock()
}

func (e *events) NotifyJoin(n *memberlist.Node)   { e.set(n, true) }
func (e *events) NotifyLeave(n *memberlist.Node)  { e.set(n, false) }
func (e *events) NotifyUpdate(n *memberlist.Node) { e.set(n, true) }

func (e *events) members() []Member {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]Member, 0, len(e.m))
	for _, m := range e.m {
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// UpdateMeta re-reads this agent's metadata and gossips it.
func (g *Gossip) UpdateMeta() error {
	ml := g.ml.Load()
	if ml == nil {
		return errors.New("gossip not running")
	}
	return ml.UpdateNode(2 * time.Second)
}

func stateName(s memberlist.NodeStateType) string {
	switch s {
	case memberlist.StateAlive:
		return "alive"
	case memberlist.StateSuspect:
		return "suspect"
	case memberlist.StateDead:
		return "dead"
	case memberlist.StateLeft:
		return "left"
	}
	return "unknown"
}

type delegate struct{ meta func() []byte }

func (d *delegate) NodeMeta(limit int) []byte {
	if d.meta == nil {
		return nil
	}
	b := d.meta()
	if len(b) > limit {
		return nil
	}
	return b
}
func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	switch {
	case strings.Contains(msg, "[ERR]") && !strings.Contains(msg, "connection refused") && !strings.Contains(msg, "session closed"):
		w.l.Warn("memberlist", "msg", msg)
	default:
		w.l.Debug("memberlist", "msg", msg)
	}
	return len(p), nil
}

// transport implements memberlist.NodeAwareTransport over wire sessions.
type transport struct {
	a       *agent.Agent
	log     *slog.Logger
	self    atomic.Value // string: our advertise address
	packets chan *memberlist.Packet
	streams chan net.Conn
	nextID  atomic.Uint64

	mu    sync.Mutex
	conns map[connKey]*streamConn
	done  chan struct{}
}

type connKey struct {
	peer   string
	id     uint64
	dialer bool // this agent dialled
}

func newTransport(a *agent.Agent, log *slog.Logger) *transport {
	return &transport{a: a, log: log, packets: make(chan *memberlist.Packet, 256), streams: make(chan net.Conn, 16),
		conns: map[connKey]*streamConn{}, done: make(chan struct{})}
}

func (t *transport) setSelf(addr string) { t.self.Store(addr) }

func (t *transport) selfAddr() string {
	s, _ := t.self.Load().(string)
	return s
}

// FinalAdvertiseAddr implements memberlist.Transport: the agent's wire
// advertise address.
func (t *transport) FinalAdvertiseAddr(string, int) (net.IP, int, error) {
	host, port, err := net.SplitHostPort(t.selfAddr())
	if err != nil {
		return nil, 0, fmt.Errorf("agent advertise address %q: %w", t.selfAddr(), err)
	}
	ip := net.ParseIP(host)
	if ip == nil {
		ips, err := net.LookupIP(host)
		if err != nil || len(ips) == 0 {
			return nil, 0, fmt.Errorf("resolving agent advertise host %q: %v", host, err)
		}
		ip = ips[0]
	}
	p, _ := strconv.Atoi(port)
	return ip, p, nil
}

// session finds the session to the member at addr (name optional).
func (t *transport) session(ctx context.Context, a memberlist.Address) (*wire.Session, error) {
	name, addr := a.Name, a.Addr
	if i := strings.IndexByte(addr, '/'); i >= 0 { // "name/addr" from joinConnected
		name, addr = addr[:i], addr[i+1:]
	}
	if name == "" {
		for _, p := range t.a.Peers() {
			if p.Address == addr {
				name = p.Name
				break
			}
		}
	}
	if name != "" {
		return t.a.Session(ctx, name)
	}
	return t.a.Connect(ctx, addr)
}

// WriteTo implements memberlist.Transport.
func (t *transport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

// WriteToAddress implements memberlist.NodeAwareTransport.
func (t *transport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := t.session(ctx, a)
	if err != nil {
		return time.Time{}, err
	}
	self := t.selfAddr()
	msg := make([]byte, 0, 1+len(self)+len(b))
	msg = append(msg, byte(len(self)))
	msg = append(msg, self...)
	msg = append(msg, b...)
	// No deadline on the send itself: a frame written with a deadline
	// that passes while it waits behind a large shard frame ends the whole
	// session (wire sets the deadline on the connection). A gossip packet
	// is small; it waits its turn, and a dead session unblocks it.
	return time.Now(), s.Send(context.Background(), MsgPacket, msg)
}

func (t *transport) handlePacket(ctx context.Context, r *wire.Request) ([]byte, error) {
	b := r.Payload
	if len(b) < 1 || int(b[0]) > len(b)-1 {
		return nil, errors.New("gossip packet: bad address length")
	}
	from := string(b[1 : 1+b[0]])
	addr, err := net.ResolveTCPAddr("tcp", from)
	if err != nil {
		return nil, fmt.Errorf("gossip packet from %q: %w", from, err)
	}
	select {
	case t.packets <- &memberlist.Packet{Buf: b[1+b[0]:], From: addr, Timestamp: time.Now()}:
	case <-t.done:
	default:
		// memberlist is not keeping up; a lost packet is a lost UDP
		// datagram to it.
	}
	return nil, nil
}

// PacketCh implements memberlist.Transport.
func (t *transport) PacketCh() <-chan *memberlist.Packet { return t.packets }

// StreamCh implements memberlist.Transport.
func (t *transport) StreamCh() <-chan net.Conn { return t.streams }

// DialTimeout implements memberlist.Transport.
func (t *transport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

// Stream frame flags.
const (
	flagFromDialer = 1 << 0
	kindOpen       = 1 << 1
	kindData       = 2 << 1
	kindClose      = 3 << 1
	kindMask       = 3 << 1
)

// DialAddressTimeout implements memberlist.NodeAwareTransport: a stream
// is a sequence of ordered one-way messages on one session.
func (t *transport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	s, err := t.session(ctx, a)
	if err != nil {
		return nil, err
	}
	c := t.newConn(s, t.nextID.Add(1), true, a.Addr)
	if err := c.send(context.Background(), kindOpen, nil); err != nil {
		t.drop(c)
		return nil, err
	}
	return c, nil
}

func (t *transport) handleStream(ctx context.Context, r *wire.Request) ([]byte, error) {
	b := r.Payload
	if len(b) < 9 {
		return nil, errors.New("gossip stream frame too short")
	}
	id, flags, data := binary.BigEndian.Uint64(b), b[8], b[9:]
	// The frame's sender dialled iff flagFromDialer; then we did not.
	key := connKey{peer: r.Session.Peer(), id: id, dialer: flags&flagFromDialer == 0}
	switch flags & kindMask {
	case kindOpen:
		if !key.dialer {
			c := t.newConn(r.Session, id, false, r.Session.RemoteAddr().String())
			select {
			case t.streams <- c:
			case <-t.done:
				t.drop(c)
			default:
				t.drop(c)
				return nil, errors.New("gossip: too many streams waiting")
			}
		}
	case kindData, kindClose:
		t.mu.Lock()
		c := t.conns[key]
		t.mu.Unlock()
		if c == nil {
			return nil, nil // closed here already
		}
		if flags&kindMask == kindData {
			c.push(data)
		} else {
			c.remoteClosed()
		}
	}
	return nil, nil
}

// Shutdown implements memberlist.Transport.
func (t *transport) Shutdown() error {
	t.mu.Lock()
	select {
	case <-t.done:
	default:
		close(t.done)
	}
	conns := make([]*streamConn, 0, len(t.conns))
	for _, c := range t.conns {
		conns = append(conns, c)
	}
	t.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	return nil
}

func (t *transport) newConn(s *wire.Session, id uint64, dialer bool, remote string) *streamConn {
	c := &streamConn{t: t, s: s, key: connKey{peer: s.Peer(), id: id, dialer: dialer}, remote: remote, stop: make(chan struct{})}
	c.cond = sync.NewCond(&c.mu)
	go func() { // a stream ends with its session
		select {
		case <-s.Done():
			c.remoteClosed()
		case <-c.stop:
		}
	}()
	t.mu.Lock()
	t.conns[c.key] = c
	t.mu.Unlock()
	return c
}

func (t *transport) drop(c *streamConn) {
	t.mu.Lock()
	delete(t.conns, c.key)
	t.mu.Unlock()
}

// streamConn is one memberlist stream as a net.Conn.
type streamConn struct {
	t      *transport
	s      *wire.Session
	key    connKey
	remote string

	mu       sync.Mutex
	cond     *sync.Cond
	buf      []byte
	eof      bool // the other end closed
	closed   bool // closed here
	rdl, wdl time.Time
	timer    *time.Timer
	stop     chan struct{}
}

func (c *streamConn) send(ctx context.Context, kind byte, data []byte) error {
	flags := kind
	if c.key.dialer {
		flags |= flagFromDialer
	}
	msg := make([]byte, 9, 9+len(data))
	binary.BigEndian.PutUint64(msg, c.key.id)
	msg[8] = flags
	return c.s.Send(ctx, MsgStream, append(msg, data...))
}

func (c *streamConn) push(b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.buf)+len(b) > streamBuffer {
		c.eof = true // overrun: end the stream rather than grow without bound
	} else {
		c.buf = append(c.buf, b...)
	}
	c.cond.Broadcast()
}

func (c *streamConn) remoteClosed() {
	c.mu.Lock()
	c.eof = true
	c.cond.Broadcast()
	c.mu.Unlock()
}

type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

// Read implements net.Conn.
func (c *streamConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.buf) == 0 {
		switch {
		case c.closed:
			return 0, net.ErrClosed
		case c.eof:
			return 0, io.EOF
		case !c.rdl.IsZero() && !time.Now().Before(c.rdl):
			return 0, timeoutError{}
		}
		c.cond.Wait()
	}
	n := copy(p, c.buf)
	c.buf = c.buf[n:]
	return n, nil
}

// Write implements net.Conn.
func (c *streamConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	closed, dl := c.closed, c.wdl
	c.mu.Unlock()
	if closed {
		return 0, net.ErrClosed
	}
	// Like packets, stream frames are written without a deadline (see
	// WriteToAddress); the write deadline is checked before each frame.
	ctx := context.Background()
	const chunk = 1 << 20
	for off := 0; off < len(p); off += chunk {
		end := min(off+chunk, len(p))
		if !dl.IsZero() && !time.Now().Before(dl) {
			return off, timeoutError{}
		}
		if err := c.send(ctx, kindData, p[off:end]); err != nil {
			return off, err
		}
	}
	return len(p), nil
}

// Close implements net.Conn.
func (c *streamConn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.stop)
	if c.timer != nil {
		c.timer.Stop()
	}
	c.cond.Broadcast()
	c.mu.Unlock()
	c.t.drop(c)
	go func() { _ = c.send(context.Background(), kindClose, nil) }()
	return nil
}

type addr string

func (a addr) Network() string { return "holdfast-wire" }
func (a addr) String() string  { return string(a) }

// LocalAddr implements net.Conn.
func (c *streamConn) LocalAddr() net.Addr { return addr(c.t.selfAddr()) }

// RemoteAddr implements net.Conn.
func (c *streamConn) RemoteAddr() net.Addr { return addr(c.remote) }

// SetDeadline implements net.Conn.
func (c *streamConn) SetDeadline(t time.Time) error {
	_ = c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

// SetReadDeadline implements net.Conn.
func (c *streamConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rdl = t
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
	if !t.IsZero() {
		c.timer = time.AfterFunc(time.Until(t), func() {
			c.mu.Lock()
			c.cond.Broadcast()
			c.mu.Unlock()
		})
	}
	c.cond.Broadcast()
	return nil
}

// SetWriteDeadline implements net.Conn.
func (c *streamConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	c.wdl = t
	c.mu.Unlock()
	return nil
}
