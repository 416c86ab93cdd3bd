package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/holdfast/holdfast/internal/buildinfo"
	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/netdiag"
	"github.com/holdfast/holdfast/internal/wire"
	bolt "go.etcd.io/bbolt"
)

// Message types of the agent's own protocol (below 256, reserved).
const (
	MsgJoin  wire.MsgType = 10 // JoinRequest -> JoinResponse; allowed without a certificate
	MsgHello wire.MsgType = 11 // hello -> hello, exchanged when a session starts
	MsgPing  wire.MsgType = 12 // ping -> pong with the responder's view
)

// Service is a feature that plugs into the agent: it may register wire
// handlers and API routes before the agent starts serving, and run until
// the agent stops.
type Service interface {
	// Name identifies the service in logs and status.
	Name() string
	// Register adds the service's wire handlers and HTTP routes. Routes
	// should live under /v1/<name>/.
	Register(a *Agent, wm *wire.Mux, api *http.ServeMux) error
	// Run runs until ctx is cancelled.
	Run(ctx context.Context) error
}

// Agent is a running holdfast daemon.
type Agent struct {
	cfg      Config
	stateDir string
	id       *cluster.Identity
	log      *slog.Logger
	db       *bolt.DB
	wcfg     *wire.Config
	mux      *wire.Mux
	api      *http.ServeMux
	metrics  *metrics
	services []Service

	mu       sync.Mutex
	peers    map[string]*peerState // by node name
	dialing  map[string]bool       // by address
	listenOn string                // actual wire listen address
	runCtx   context.Context       // set by Run; background dials use it
	started  time.Time             // when Run started
	stopping bool                  // set when Run shuts down: new sessions are closed
	diag     *netdiag.Recorder     // opened by Netdiag on first use
}

// Options are what New needs besides the state directory.
type Options struct {
	Logger   *slog.Logger
	Services []Service
	// Listen overrides the configuration's listen address (the CLI's
	// --listen flag).
	Listen string
}

// Netdiag returns the agent's network diagnostics log, <state>/netdiag
// (the directory 'holdfast netdiag report' reads by default), opened on
// first use, for services whose transfers record diagnostics (for example
// as bulk.ClientConfig.Diag). It is closed when Run returns. It returns nil
// when the log cannot be opened; the error is logged.
func (a *Agent) Netdiag() netdiag.Sink {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.diag == nil {
		rec, err := netdiag.NewRecorder(netdiag.DefaultRecorderConfig(netdiag.DirIn(a.stateDir)), a.log)
		if err != nil {
			a.log.Warn("network diagnostics log unavailable", "err", err)
			return nil
		}
		a.diag = rec
	}
	return a.diag
}

func (a *Agent) closeNetdiag() {
	a.mu.Lock()
	rec := a.diag
	a.diag = nil
	a.mu.Unlock()
	if rec != nil {
		if err := rec.Close(); err != nil {
			a.log.Warn("closing the network diagnostics log", "err", err)
		}
	}
}

// New loads the agent in stateDir: configuration, cluster identity and
// metadata database. Nothing is served until Run.
func New(stateDir string, opts Options) (*Agent, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	cfg, err := LoadConfig(stateDir)
	if err != nil {
		return nil, err
	}
	if opts.Listen != "" {
		cfg.Listen = opts.Listen
		if err := cfg.Validate(); err != nil {
			return nil, err
		}
	}
	id, err := cluster.Load(stateDir)
	if err != nil {
		return nil, fmt.Errorf("loading cluster identity from %s: %w", stateDir, err)
	}
	if id.Name != cfg.Name {
		return nil, fmt.Errorf("config name %q does not match the node certificate's %q", cfg.Name, id.Name)
	}
	db, err := bolt.Open(filepath.Join(stateDir, DBFile), 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("opening %s: another agent is running on this state directory", filepath.Join(stateDir, DBFile))
		}
		return nil, fmt.Errorf("opening metadata database: %w", err)
	}
	if err := initDB(db); err != nil {
		db.Close()
		return nil, err
	}
	a := &Agent{
		cfg:      cfg,
		stateDir: stateDir,
		id:       id,
		log:      log.With("node", cfg.Name),
		db:       db,
		mux:      &wire.Mux{},
		api:      http.NewServeMux(),
		peers:    make(map[string]*peerState),
		dialing:  make(map[string]bool),
		services: opts.Services,
	}
	a.metrics = newMetrics(a)
	a.wcfg = &wire.Config{
		Node:            cfg.Name,
		Versions:        a.Versions,
		Mux:             a.mux,
		MaxPayload:      cfg.MaxFrame,
		Unauthenticated: map[wire.MsgType]bool{MsgJoin: true},
		OnVersions:      a.onVersions,
		Logger:          a.log,
	}
	a.registerCore()
	for _, s := range a.services {
		if err := s.Register(a, a.mux, a.api); err != nil {
			db.Close()
			return nil, fmt.Errorf("registering service %s: %w", s.Name(), err)
		}
	}
	return a, nil
}

// Name returns the node name.
func (a *Agent) Name() string { return a.cfg.Name }

// Identity returns the node's cluster identity.
func (a *Agent) Identity() *cluster.Identity { return a.id }

// StateDir returns the agent's state directory.
func (a *Agent) StateDir() string { return a.stateDir }

// DB returns the agent's metadata database.
func (a *Agent) DB() *bolt.DB { return a.db }

// Logger returns the agent's logger.
func (a *Agent) Logger() *slog.Logger { return a.log }

// Config returns the agent's configuration.
func (a *Agent) Config() Config { return a.cfg }

// Versions returns the agent's version vector: the versioned objects it
// holds. It is stamped on every frame the agent sends.
func (a *Agent) Versions() wire.VersionVector {
	bi := buildinfo.Get()
	v := bi.Version
	if bi.Commit != "unknown" && len(bi.Commit) >= 12 {
		v += "+" + bi.Commit[:12]
	}
	return wire.VersionVector{"agent": v, "config": configHash(a.cfg)}
}

// Run serves until ctx is cancelled, then shuts down gracefully: it stops
// accepting, closes sessions, stops services and closes the database.
func (a *Agent) Run(ctx context.Context) error {
	defer a.db.Close()
	defer a.closeNetdiag() // after the services, which may record into it
	a.mu.Lock()
	a.started = time.Now()
	a.mu.Unlock()
	// Shutdown is ordered: feature services stop first (svcCtx), while
	// listeners and peer sessions still run (netCtx), so that a service can
	// say goodbye to its peers (gossip leave, a last shipment); then the
	// network side stops.
	svcCtx, svcCancel := context.WithCancel(ctx)
	defer svcCancel()
	netCtx, netCancel := context.WithCancel(context.WithoutCancel(ctx))
	defer netCancel()

	wln, err := net.Listen("tcp", a.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listening for peers on %s: %w", a.cfg.Listen, err)
	}
	a.mu.Lock()
	a.listenOn = wln.Addr().String()
	a.mu.Unlock()

	sock := filepath.Join(a.stateDir, SocketFile)
	_ = os.Remove(sock) // a stale socket from a killed agent; the db lock proves none runs
	uln, err := net.Listen("unix", sock)
	if err != nil {
		wln.Close()
		return fmt.Errorf("listening on API socket %s: %w", sock, err)
	}
	_ = os.Chmod(sock, 0o600)

	var netWG, svcWG sync.WaitGroup
	errc := make(chan error, 4+len(a.services))
	run := func(wg *sync.WaitGroup, ctx context.Context, name string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	l := &wire.Listener{TLS: a.id.ServerTLS(a.log), Cfg: a.wcfg, OnSession: a.onInbound}
	run(&netWG, netCtx, "wire listener", func() error { return l.Serve(netCtx, wln) })
	httpSrv := &http.Server{Handler: a.api, ReadHeaderTimeout: 10 * time.Second}
	run(&netWG, netCtx, "API", func() error { return serveHTTP(netCtx, httpSrv, uln) })
	if a.cfg.APIListen != "" {
		tln, err := net.Listen("tcp", a.cfg.APIListen)
		if err != nil {
			netCancel()
			netWG.Wait()
			return fmt.Errorf("listening for the API on %s: %w", a.cfg.APIListen, err)
		}
		tsrv := &http.Server{Handler: a.api, ReadHeaderTimeout: 10 * time.Second, TLSConfig: a.id.StrictServerTLS(a.log)}
		run(&netWG, netCtx, "API (TCP)", func() error { return serveHTTP(netCtx, tsrv, newTLSListener(tln, tsrv.TLSConfig)) })
	}
	run(&netWG, netCtx, "peers", func() error { a.peerLoop(netCtx); return nil })
	for _, s := range a.services {
		run(&svcWG, svcCtx, s.Name(), func() error { return s.Run(svcCtx) })
	}
	a.log.Info("agent running", "listen", wln.Addr().String(), "api", sock, "cluster", a.id.ClusterID(), "version", a.Versions()["agent"])

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		a.log.Error("agent stopping", "err", runErr)
	}
	svcCancel()
	if !waitTimeout(&svcWG, serviceStopTimeout) {
		a.log.Warn("services did not stop in time; closing sessions under them", "timeout", serviceStopTimeout)
	}
	netCancel()
	a.closeSessions()
	netWG.Wait()
	svcWG.Wait()
	_ = os.Remove(sock)
	a.log.Info("agent stopped")
	return runErr
}

// serviceStopTimeout bounds how long shutdown waits for feature services
// before it closes the peer sessions under them.
const serviceStopTimeout = 10 * time.Second

// waitTimeout waits for wg up to d and reports whether it finished.
func waitTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

func serveHTTP(ctx context.Context, srv *http.Server, ln net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		return nil
	}
}
