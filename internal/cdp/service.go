package cdp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"

	"github.com/holdfast/holdfast/internal/agent"
	"github.com/holdfast/holdfast/internal/bulk"
	"github.com/holdfast/holdfast/internal/cdp/cdplog"
	"github.com/holdfast/holdfast/internal/wire"
)

// NBDSocketFile is the unix socket, inside the agent's state directory, on
// which an agent serves its volumes over NBD.
const NBDSocketFile = "nbd.sock"

// ServiceOptions configure the volume service of an agent.
type ServiceOptions struct {
	// NBDListen is an optional TCP address for NBD clients; the unix
	// socket <state>/nbd.sock is always served.
	NBDListen string
	// TransferRoot is the root of the agent's bulk transfer service
	// (bulk.AgentService; default <state>/inbox): other agents' backlogs
	// shipped with the bulk transfer land there.
	TransferRoot string
	// Config adjusts the Manager's configuration (nil: DefaultConfig).
	Config func(*Config)
}

// Service runs an agent's CDP volumes: the volume API under /v1/volumes,
// remote CDP logs for peers over the wire, NBD exports, and metrics.
// Remote logs are reached through the agent's mTLS sessions.
type Service struct {
	opts ServiceOptions
	a    *agent.Agent
	m    *Manager

	bulkOnce sync.Once
	bulk     *bulk.Client
	bulkErr  error
}

// NewService returns the volume service for agent.Options.Services.
func NewService(opts ServiceOptions) *Service { return &Service{opts: opts} }

// Name implements agent.Service.
func (s *Service) Name() string { return "volumes" }

// Register opens the Manager (replaying every volume's log) and registers
// its API, wire handlers and metrics.
func (s *Service) Register(a *agent.Agent, wm *wire.Mux, api *http.ServeMux) error {
	cfg := DefaultConfig(a.StateDir())
	cfg.BacklogDir = s.opts.TransferRoot
	if cfg.BacklogDir == "" {
		cfg.BacklogDir = filepath.Join(a.StateDir(), bulk.InboxDir)
	}
	if s.opts.Config != nil {
		s.opts.Config(&cfg)
	}
	s.a = a
	dial := func(peer string) (Remote, error) {
		c := SessionCaller{Session: func(ctx context.Context) (*wire.Session, error) {
			return a.Session(ctx, peer)
		}}
		return agentRemote{Remote: NewRemote(c), c: c, s: s, peer: peer}, nil
	}
	m, err := New(context.Background(), cfg, dial, a.Logger().With("service", "volumes"))
	if err != nil {
		return fmt.Errorf("opening volumes: %w", err)
	}
	s.m = m
	h := m.Handler()
	api.Handle("/v1/volumes", h)
	api.Handle("/v1/volumes/", h)
	m.RegisterWire(wm)
	if err := a.Registry().Register(m.Collector()); err != nil {
		m.Close()
		return fmt.Errorf("registering volume metrics: %w", err)
	}
	return nil
}

// agentRemote is the remote CDP log on another agent: calls over the
// agents' mTLS wire session, and large backlogs with the bulk transfer.
type agentRemote struct {
	Remote
	c    SessionCaller
	s    *Service
	peer string
}

// ShipBacklog implements BacklogShipper: the span goes to the peer's bulk
// transfer service over primed connections, then the peer ingests it.
func (r agentRemote) ShipBacklog(ctx context.Context, vol string, size int64, sp *cdplog.Span) (uint64, error) {
	sctx, cancel := context.WithTimeout(ctx, r.s.m.cfg.RemoteTimeout)
	sess, err := r.s.a.Session(sctx, r.peer)
	cancel()
	if err != nil {
		return 0, fmt.Errorf("%w: %s: %w", ErrUnreachable, r.peer, err)
	}
	addr := ""
	for _, p := range r.s.a.Peers() {
		if p.Name == r.peer {
			addr = p.Address
		}
	}
	if addr == "" {
		return 0, fmt.Errorf("no address known for agent %s", r.peer)
	}
	cl, err := r.s.bulkClient()
	if err != nil {
		return 0, err
	}
	rep, err := cl.SendStream(ctx, addr, BacklogFile(vol, sp.First, sp.Last), io.NewSectionReader(sp, 0, sp.Size), sp.Size, bulk.Options{})
	if err != nil {
		return 0, fmt.Errorf("bulk transfer of the backlog of %s to %s: %w", vol, r.peer, err)
	}
	r.s.m.logger.Info("backlog transferred", "volume", vol, "remote", r.peer, "bytes", rep.Bytes,
		"seconds", rep.Seconds, "goodput_bits_per_sec", rep.Goodput, "streams", rep.MaxStreams)
	return Ingest(ctx, SessionCaller{Session: func(context.Context) (*wire.Session, error) { return sess, nil }}, vol, size, sp.First, sp.Last)
}

// bulkClient returns the agent's bulk transfer client, made on first use.
func (s *Service) bulkClient() (*bulk.Client, error) {
	s.bulkOnce.Do(func() {
		log := s.a.Logger().With("service", "volumes")
		s.bulk, s.bulkErr = bulk.NewClient(bulk.ClientConfig{
			TLS: s.a.Identity().ClientTLS(log), Node: s.a.Name(), Versions: s.a.Versions, Logger: log,
			CC: "auto", Diag: s.a.Netdiag(), // backlog transfers show in 'holdfast netdiag report'
		})
	})
	return s.bulk, s.bulkErr
}

// Run serves NBD until ctx ends, then closes the volumes.
func (s *Service) Run(ctx context.Context) error {
	defer func() {
		if s.bulk != nil {
			s.bulk.Close()
		}
	}()
	defer s.m.Close()
	sock := filepath.Join(s.a.StateDir(), NBDSocketFile)
	_ = os.Remove(sock) // stale from a killed agent; the agent's db lock proves none runs
	lns := []net.Listener{}
	uln, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("listening for NBD on %s: %w", sock, err)
	}
	lns = append(lns, uln)
	if s.opts.NBDListen != "" {
		tln, err := net.Listen("tcp", s.opts.NBDListen)
		if err != nil {
			uln.Close()
			return fmt.Errorf("listening for NBD on %s: %w", s.opts.NBDListen, err)
		}
		lns = append(lns, tln)
	}
	var wg sync.WaitGroup
	errc := make(chan error, len(lns))
	for _, ln := range lns {
		s.a.Logger().Info("serving NBD", "addr", ln.Addr().String())
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.m.ServeNBD(ctx, ln); err != nil && ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				errc <- err
			}
		}()
	}
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	for _, ln := range lns {
		ln.Close()
	}
	wg.Wait()
	_ = os.Remove(sock)
	return runErr
}
