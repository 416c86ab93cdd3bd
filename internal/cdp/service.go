package cdp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"

	"github.com/holdfast/holdfast/internal/agent"
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
}

// NewService returns the volume service for agent.Options.Services.
func NewService(opts ServiceOptions) *Service { return &Service{opts: opts} }

// Name implements agent.Service.
func (s *Service) Name() string { return "volumes" }

// Register opens the Manager (replaying every volume's log) and registers
// its API, wire handlers and metrics.
func (s *Service) Register(a *agent.Agent, wm *wire.Mux, api *http.ServeMux) error {
	cfg := DefaultConfig(a.StateDir())
	if s.opts.Config != nil {
		s.opts.Config(&cfg)
	}
	dial := func(peer string) (Remote, error) {
		return NewRemote(SessionCaller{Session: func(ctx context.Context) (*wire.Session, error) {
			return a.Session(ctx, peer)
		}}), nil
	}
	m, err := New(context.Background(), cfg, dial, a.Logger().With("service", "volumes"))
	if err != nil {
		return fmt.Errorf("opening volumes: %w", err)
	}
	s.a, s.m = a, m
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

// Run serves NBD until ctx ends, then closes the volumes.
func (s *Service) Run(ctx context.Context) error {
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
