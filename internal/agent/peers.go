package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/wire"
)

// hello is exchanged when a session starts and answered to every ping: it
// tells the peer who we are and which other agents we know.
type hello struct {
	Name      string            `json:"name"`
	Advertise string            `json:"advertise"`
	Labels    map[string]string `json:"labels,omitempty"`
	Known     []string          `json:"known,omitempty"` // advertise addresses of connected peers
	Time      time.Time         `json:"time"`
}

// peerState is what the agent knows about one peer.
type peerState struct {
	name      string
	advertise string
	labels    map[string]string
	sessions  []*wire.Session
	versions  wire.VersionVector
	rtt       time.Duration
	lastSeen  time.Time
	since     time.Time
}

// PeerStatus is one peer as shown by `holdfast status`.
type PeerStatus struct {
	Name      string             `json:"name"`
	Address   string             `json:"address"`
	Connected bool               `json:"connected"`
	Sessions  int                `json:"sessions"`
	RTT       string             `json:"rtt,omitempty"`
	LastSeen  time.Time          `json:"last_seen"`
	Since     time.Time          `json:"connected_since,omitzero"`
	Versions  wire.VersionVector `json:"versions"`
	Labels    map[string]string  `json:"labels,omitempty"`
}

func (a *Agent) registerCore() {
	a.mux.Handle(MsgJoin, a.handleJoin)
	a.mux.Handle(MsgHello, a.handleHello)
	a.mux.Handle(MsgPing, a.handleHello)
	a.registerAPI()
}

func (a *Agent) myHello() hello {
	a.mu.Lock()
	defer a.mu.Unlock()
	h := hello{Name: a.cfg.Name, Advertise: a.advertiseLocked(), Labels: a.cfg.Labels, Time: time.Now()}
	for _, p := range a.peers {
		if p.advertise != "" && len(p.sessions) > 0 {
			h.Known = append(h.Known, p.advertise)
		}
	}
	slices.Sort(h.Known)
	return h
}

func (a *Agent) advertiseLocked() string {
	if a.cfg.Advertise == "" && a.listenOn != "" {
		c := a.cfg
		c.Listen = a.listenOn
		return c.AdvertiseAddr()
	}
	return a.cfg.AdvertiseAddr()
}

func (a *Agent) handleJoin(ctx context.Context, r *wire.Request) ([]byte, error) {
	if a.id.CA.Key == nil {
		return nil, fmt.Errorf("node %s does not hold the cluster CA key; join through the node that ran `holdfast cluster init`", a.cfg.Name)
	}
	var req cluster.JoinRequest
	if err := json.Unmarshal(r.Payload, &req); err != nil {
		return nil, fmt.Errorf("decoding join request: %w", err)
	}
	resp, err := a.id.CA.Admit(&req, time.Now())
	if err != nil {
		a.log.Warn("refusing join", "remote", r.Session.RemoteAddr().String(), "err", err)
		return nil, err
	}
	a.log.Info("admitted node to the cluster", "joined", req.Name, "remote", r.Session.RemoteAddr().String())
	return json.Marshal(resp)
}

func (a *Agent) handleHello(ctx context.Context, r *wire.Request) ([]byte, error) {
	var h hello
	if err := json.Unmarshal(r.Payload, &h); err != nil {
		return nil, fmt.Errorf("decoding hello: %w", err)
	}
	if h.Name != r.Session.Peer() {
		return nil, fmt.Errorf("hello names %q but the session is with %q", h.Name, r.Session.Peer())
	}
	a.notePeer(r.Session, h, 0)
	return json.Marshal(a.myHello())
}

func (a *Agent) onVersions(s *wire.Session, vv wire.VersionVector) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if p := a.peers[s.Peer()]; p != nil {
		p.versions = vv
	}
}

func (a *Agent) onInbound(s *wire.Session) {
	if !s.Authenticated() {
		return // only a join request can follow; nothing to track
	}
	a.addSession(s)
}

// addSession tracks s under its peer and forgets it when it ends.
func (a *Agent) addSession(s *wire.Session) {
	a.mu.Lock()
	if a.stopping {
		// The agent is shutting down: a session that completed its
		// handshake just now must not outlive it.
		a.mu.Unlock()
		s.Close()
		return
	}
	p := a.peers[s.Peer()]
	if p == nil {
		p = &peerState{name: s.Peer()}
		a.peers[s.Peer()] = p
	}
	if len(p.sessions) == 0 {
		p.since = time.Now()
	}
	p.sessions = append(p.sessions, s)
	p.versions = s.PeerVersions()
	a.mu.Unlock()
	a.metrics.sessions.Inc()
	go func() {
		<-s.Done()
		a.metrics.sessions.Dec()
		a.mu.Lock()
		defer a.mu.Unlock()
		p.sessions = slices.DeleteFunc(p.sessions, func(x *wire.Session) bool { return x == s })
		if len(p.sessions) == 0 {
			a.log.Info("peer disconnected", "peer", p.name, "err", s.Err())
		}
	}()
}

func (a *Agent) notePeer(s *wire.Session, h hello, rtt time.Duration) {
	a.mu.Lock()
	p := a.peers[s.Peer()]
	if p == nil {
		p = &peerState{name: s.Peer(), since: time.Now()}
		a.peers[s.Peer()] = p
	}
	newPeer := p.advertise == ""
	p.advertise = h.Advertise
	p.labels = h.Labels
	p.lastSeen = time.Now()
	if rtt > 0 {
		p.rtt = rtt
	}
	if vv := s.PeerVersions(); len(vv) > 0 {
		p.versions = vv
	}
	a.mu.Unlock()
	if newPeer {
		a.log.Info("peer connected", "peer", p.name, "address", h.Advertise, "versions", s.PeerVersions())
		_ = a.savePeer(p.name, h.Advertise)
	}
	for _, addr := range h.Known {
		a.maybeDial(addr)
	}
}

// connectedTo reports whether a live session exists to the peer that
// advertises addr, or addr is our own.
func (a *Agent) connectedTo(addr string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if addr == a.advertiseLocked() || addr == a.listenOn {
		return true
	}
	if a.dialing[addr] {
		return true
	}
	for _, p := range a.peers {
		if p.advertise == addr && len(p.sessions) > 0 {
			return true
		}
	}
	return false
}

// maybeDial connects to addr in the background unless already connected.
func (a *Agent) maybeDial(addr string) {
	if addr == "" || a.connectedTo(addr) {
		return
	}
	a.mu.Lock()
	a.dialing[addr] = true
	ctx := a.runCtx
	a.mu.Unlock()
	go func() {
		defer func() {
			a.mu.Lock()
			delete(a.dialing, addr)
			a.mu.Unlock()
		}()
		if ctx == nil {
			return
		}
		if _, err := a.Connect(ctx, addr); err != nil {
			a.log.Debug("cannot reach peer", "address", addr, "err", err)
		}
	}()
}

// Connect dials the agent at addr, exchanges hellos and tracks the session.
// Feature services use Session to reach a peer by name instead.
func (a *Agent) Connect(ctx context.Context, addr string) (*wire.Session, error) {
	dctx, cancel := context.WithTimeout(ctx, a.cfg.PeerTimeout.Duration)
	defer cancel()
	s, err := wire.Dial(dctx, "tcp", addr, a.id.ClientTLS(a.log), a.wcfg, nil)
	if err != nil {
		return nil, err
	}
	if s.Peer() == a.cfg.Name {
		s.Close()
		return nil, fmt.Errorf("%s is this agent", addr)
	}
	a.addSession(s)
	if err := a.ping(dctx, s); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (a *Agent) ping(ctx context.Context, s *wire.Session) error {
	b, _ := json.Marshal(a.myHello())
	t0 := time.Now()
	resp, err := s.Call(ctx, MsgPing, b)
	if err != nil {
		return fmt.Errorf("ping %s: %w", s.Peer(), err)
	}
	rtt := time.Since(t0)
	var h hello
	if err := json.Unmarshal(resp, &h); err != nil {
		return fmt.Errorf("decoding hello from %s: %w", s.Peer(), err)
	}
	a.notePeer(s, h, rtt)
	return nil
}

// Session returns a live session to the named peer, dialling its last known
// address when there is none.
func (a *Agent) Session(ctx context.Context, peer string) (*wire.Session, error) {
	a.mu.Lock()
	p := a.peers[peer]
	var addr string
	if p != nil {
		for _, s := range p.sessions {
			select {
			case <-s.Done():
			default:
				a.mu.Unlock()
				return s, nil
			}
		}
		addr = p.advertise
	}
	a.mu.Unlock()
	if addr == "" {
		var err error
		if addr, err = a.loadPeerAddr(peer); err != nil {
			return nil, fmt.Errorf("no known address for peer %q", peer)
		}
	}
	s, err := a.Connect(ctx, addr)
	if err != nil {
		return nil, err
	}
	if s.Peer() != peer {
		return nil, fmt.Errorf("address %s of peer %q now answers as %q", addr, peer, s.Peer())
	}
	return s, nil
}

// peerLoop dials configured and remembered peers and pings every connected
// peer each heartbeat.
func (a *Agent) peerLoop(ctx context.Context) {
	a.mu.Lock()
	a.runCtx = ctx
	a.mu.Unlock()
	for _, addr := range a.cfg.Peers {
		a.maybeDial(addr)
	}
	for _, addr := range a.rememberedPeers() {
		a.maybeDial(addr)
	}
	t := time.NewTicker(a.cfg.HeartbeatInterval.Duration)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, s := range a.liveSessions() {
			go func() {
				pctx, cancel := context.WithTimeout(ctx, a.cfg.PeerTimeout.Duration)
				defer cancel()
				if err := a.ping(pctx, s); err != nil && ctx.Err() == nil {
					a.log.Warn("peer not answering, closing session", "peer", s.Peer(), "err", err)
					s.Close()
				}
			}()
		}
		for _, addr := range a.cfg.Peers {
			a.maybeDial(addr)
		}
		for _, addr := range a.disconnectedAddrs() {
			a.maybeDial(addr)
		}
	}
}

// liveSessions returns one session per connected peer.
func (a *Agent) liveSessions() []*wire.Session {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []*wire.Session
	for _, p := range a.peers {
		// Only agents say hello; a CLI client (holdfast cp, backup
		// --server) has sessions but is not pinged.
		if len(p.sessions) > 0 && p.advertise != "" {
			out = append(out, p.sessions[0])
		}
	}
	return out
}

func (a *Agent) disconnectedAddrs() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, p := range a.peers {
		if len(p.sessions) == 0 && p.advertise != "" {
			out = append(out, p.advertise)
		}
	}
	return out
}

func (a *Agent) closeSessions() {
	a.mu.Lock()
	a.stopping = true
	var all []*wire.Session
	for _, p := range a.peers {
		all = append(all, p.sessions...)
	}
	a.mu.Unlock()
	for _, s := range all {
		s.Close()
	}
}

// Peers returns the status of every peer the agent knows, sorted by name.
func (a *Agent) Peers() []PeerStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]PeerStatus, 0, len(a.peers))
	for _, p := range a.peers {
		if p.advertise == "" {
			continue // a client, not an agent: it never said hello
		}
		ps := PeerStatus{
			Name: p.name, Address: p.advertise, Connected: len(p.sessions) > 0,
			Sessions: len(p.sessions), LastSeen: p.lastSeen, Versions: maps.Clone(p.versions),
			Labels: p.labels,
		}
		if ps.Connected {
			ps.Since = p.since
		}
		if p.rtt > 0 {
			ps.RTT = p.rtt.Round(10 * time.Microsecond).String()
		}
		out = append(out, ps)
	}
	slices.SortFunc(out, func(x, y PeerStatus) int {
		if x.Name < y.Name {
			return -1
		}
		if x.Name > y.Name {
			return 1
		}
		return 0
	})
	return out
}
