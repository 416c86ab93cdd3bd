package bulk

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/holdfast/holdfast/internal/wire"
)

// MaxFetchSessions bounds the sessions of one fetch group.
const MaxFetchSessions = MaxStreams

// Fetch copies srcs (paths under the peer's served root) from peer to the
// local path dst, over the client's connections to peer: the peer runs the
// sending side (priming, sub-transfers, pacing) and this client receives,
// with the same checksums, journal, atomic rename and resume as SendFiles.
// The client must have been made with ClientConfig.Service, whose root
// contains dst.
func (c *Client) Fetch(ctx context.Context, peer string, srcs []string, dst string, opts Options) (*Report, error) {
	if c.cfg.Service == nil {
		return nil, errors.New("bulk: fetching needs a client made with ClientConfig.Service (where files are received)")
	}
	if err := opts.fill(); err != nil {
		return nil, err
	}
	if len(srcs) == 0 {
		return nil, errors.New("bulk: no sources")
	}
	rel, err := c.cfg.Service.localRel(dst)
	if err != nil {
		return nil, err
	}
	n := opts.Streams
	if n == 0 {
		n = min(4, opts.MaxStreams)
	}
	pooled := c.Pooled(peer)
	cs, err := c.acquire(ctx, peer, n, acquireOpts{onDial: opts.OnDial})
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", peer, err)
	}
	defer c.release(peer, cs)
	var group TransferID
	if _, err := rand.Read(group[:]); err != nil {
		return nil, err
	}
	for _, cn := range cs {
		if _, err := cn.sess.Call(ctx, MsgFetchJoin, group[:]); err != nil {
			return nil, fmt.Errorf("joining fetch on %s: %w", peer, err)
		}
	}
	// Streams auto cannot grow on the serving side (it cannot dial back):
	// the peer sends over the connections opened here.
	opts.Streams = len(cs)
	b, err := json.Marshal(fetchReq{Srcs: srcs, Opts: opts, Group: group, Dst: rel})
	if err != nil {
		return nil, err
	}
	resp, err := cs[0].sess.Call(ctx, MsgFetch, b)
	var rep Report
	if len(resp) > 0 {
		if jerr := json.Unmarshal(resp, &rep); jerr != nil {
			return nil, fmt.Errorf("bulk: decoding fetch report: %w", jerr)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("fetching from %s: %w", peer, err)
	}
	for i := range rep.Conns {
		rep.Conns[i].Pooled = i < pooled
	}
	if len(rep.Errors) > 0 {
		return &rep, fmt.Errorf("bulk: %d files failed: %s", len(rep.Errors), rep.Errors[0])
	}
	return &rep, nil
}

// localRel turns a local destination path into one relative to the
// service root.
func (s *Service) localRel(dst string) (string, error) {
	abs, err := filepath.Abs(dst)
	if err != nil {
		return "", err
	}
	root, err := filepath.Abs(s.cfg.Root)
	if err != nil {
		return "", err
	}
	rel, err := filepath.Rel(root, abs)
	if err != nil || !filepath.IsLocal(rel) && rel != "." {
		return "", fmt.Errorf("bulk: destination %s is outside the receiving root %s", dst, root)
	}
	return filepath.ToSlash(rel), nil
}

func (s *Service) handleFetchJoin(ctx context.Context, req *wire.Request) ([]byte, error) {
	if err := s.authorize(req); err != nil {
		return nil, err
	}
	if len(req.Payload) != len(TransferID{}) {
		return nil, errors.New("bulk: bad fetch group id")
	}
	var g TransferID
	copy(g[:], req.Payload)
	s.fmu.Lock()
	defer s.fmu.Unlock()
	if s.groups == nil {
		s.groups = map[TransferID][]*wire.Session{}
	}
	if len(s.groups[g]) >= MaxFetchSessions {
		return nil, fmt.Errorf("bulk: fetch group has %d sessions already", MaxFetchSessions)
	}
	s.groups[g] = append(s.groups[g], req.Session)
	return nil, nil
}

func (s *Service) handleAck(ctx context.Context, req *wire.Request) ([]byte, error) {
	a, err := parseAck(req.Payload)
	if err != nil {
		return nil, err
	}
	s.fmu.Lock()
	cn := s.fetchConns[req.Session]
	s.fmu.Unlock()
	if cn != nil {
		cn.handleAck(a)
	}
	return nil, nil
}

// handleFetch sends the requested files back over the fetching client's
// sessions, reading them from under the service root.
func (s *Service) handleFetch(ctx context.Context, req *wire.Request) ([]byte, error) {
	if err := s.authorize(req); err != nil {
		return nil, err
	}
	var fr fetchReq
	if err := json.Unmarshal(req.Payload, &fr); err != nil {
		return nil, fmt.Errorf("bulk: decoding fetch: %w", err)
	}
	s.fmu.Lock()
	sessions := s.groups[fr.Group]
	delete(s.groups, fr.Group)
	s.fmu.Unlock()
	if len(sessions) == 0 {
		return nil, errors.New("bulk: fetch names no joined connections")
	}
	var srcs []string
	for _, p := range fr.Srcs {
		rel, err := rootRel(p)
		if err != nil {
			return nil, fmt.Errorf("bulk: fetch source: %w", err)
		}
		// Refuse sources reached through symlinks that leave the root.
		if _, err := s.root.Lstat(rel); err != nil {
			return nil, fmt.Errorf("bulk: fetch source %s: %w", p, err)
		}
		full := filepath.Join(s.root.Name(), filepath.FromSlash(rel))
		real, err := filepath.EvalSymlinks(full)
		if err != nil {
			return nil, fmt.Errorf("bulk: fetch source %s: %w", p, err)
		}
		rootReal, _ := filepath.EvalSymlinks(s.root.Name())
		if r, err := filepath.Rel(rootReal, real); err != nil || (!filepath.IsLocal(r) && r != ".") {
			return nil, fmt.Errorf("bulk: fetch source %s leaves the served root", p)
		}
		srcs = append(srcs, full)
	}
	// A sending client over the joined sessions: its pool holds them, and
	// it cannot dial (the peer dials us, never the other way).
	sender := &Client{
		cfg:   ClientConfig{AssumedBandwidth: DefaultAssumedBandwidth, IdleTimeout: time.Minute},
		log:   s.log,
		idle:  map[string][]*conn{},
		paths: map[string]pathInfo{},
		stop:  make(chan struct{}),
	}
	peer := req.Session.Peer() + "@" + req.Session.RemoteAddr().String()
	var conns []*conn
	for _, sess := range sessions {
		tcp, ok := sess.NetConn().(*net.TCPConn)
		if !ok {
			continue
		}
		s.fmu.Lock()
		s.nextConn++
		cn := &conn{id: s.nextConn, peer: peer, sess: sess, tcp: tcp}
		if s.fetchConns == nil {
			s.fetchConns = map[*wire.Session]*conn{}
		}
		s.fetchConns[sess] = cn
		s.fmu.Unlock()
		if err := cn.primeConn(ctx, DefaultAssumedBandwidth, len(sessions), "", true); err != nil {
			s.log.Warn("priming a fetch connection failed", "err", err)
			continue
		}
		conns = append(conns, cn)
	}
	defer func() {
		s.fmu.Lock()
		for _, sess := range sessions {
			delete(s.fetchConns, sess)
		}
		s.fmu.Unlock()
	}()
	if len(conns) == 0 {
		return nil, errors.New("bulk: no usable connection to send the fetch over")
	}
	sender.idle[peer] = conns
	opts := fr.Opts
	opts.Streams = len(conns)
	s.log.Info("fetch begins", "peer", peer, "srcs", fr.Srcs, "conns", len(conns))
	rep, err := sender.SendFiles(ctx, peer, srcs, fr.Dst, opts)
	if rep == nil {
		return nil, err
	}
	if err != nil && len(rep.Errors) == 0 {
		rep.Errors = append(rep.Errors, err.Error())
	}
	return json.Marshal(rep)
}

var _ = os.Stat
