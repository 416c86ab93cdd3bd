package cdp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// StandaloneConfig configures RunStandalone.
type StandaloneConfig struct {
	Manager Config
	// NBDAddr is the TCP address NBD clients attach to ("" for none).
	NBDAddr string
	// NBDSocket is the unix socket NBD clients attach to ("" for none).
	NBDSocket string
	// APISocket is the unix socket of the volume API.
	APISocket string
	// RemoteListen ("unix:/path" or "tcp:host:port") serves this agent's
	// remote CDP logs to peers over the stand-in transport ("" for none).
	RemoteListen string
	// Peers maps agent names to their RemoteListen address.
	Peers map[string]string
	// Ready, if set, is called once everything listens.
	Ready func()
}

// RunStandalone runs a Manager with its NBD server and API until ctx ends:
// `holdfast volume serve`, for use without the agent daemon.
func RunStandalone(ctx context.Context, sc StandaloneConfig, logger *slog.Logger) error {
	var mu sync.Mutex
	callers := map[string]*StandInCaller{}
	dial := func(agent string) (Remote, error) {
		addr, ok := sc.Peers[agent]
		if !ok {
			return nil, fmt.Errorf("unknown agent %q (known: %d peers): %w", agent, len(sc.Peers), ErrInvalid)
		}
		network, a, err := splitAddr(addr)
		if err != nil {
			return nil, err
		}
		mu.Lock()
		defer mu.Unlock()
		c, ok := callers[agent]
		if !ok {
			c = &StandInCaller{Network: network, Addr: a}
			callers[agent] = c
		}
		return NewRemote(c), nil
	}
	m, err := New(ctx, sc.Manager, dial, logger)
	if err != nil {
		return err
	}
	defer m.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 4)
	var wg sync.WaitGroup
	run := func(f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				errc <- err
				cancel()
			}
		}()
	}
	listen := func(network, addr string) (net.Listener, error) {
		if network == "unix" {
			os.Remove(addr)
			if err := os.MkdirAll(filepath.Dir(addr), 0o700); err != nil {
				return nil, fmt.Errorf("creating socket directory: %w", err)
			}
		}
		ln, err := net.Listen(network, addr)
		if err != nil {
			return nil, fmt.Errorf("listening on %s: %w", addr, err)
		}
		return ln, nil
	}
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for _, a := range [][2]string{{"tcp", sc.NBDAddr}, {"unix", sc.NBDSocket}} {
		if a[1] == "" {
			continue
		}
		ln, err := listen(a[0], a[1])
		if err != nil {
			return err
		}
		lns = append(lns, ln)
		run(func() error { return m.ServeNBD(ctx, ln) })
		logger.Info("serving NBD", "network", a[0], "addr", a[1])
	}
	if sc.RemoteListen != "" {
		network, addr, err := splitAddr(sc.RemoteListen)
		if err != nil {
			return err
		}
		ln, err := listen(network, addr)
		if err != nil {
			return err
		}
		lns = append(lns, ln)
		run(func() error { return ServeStandIn(ctx, ln, m.HandleRemote, logger) })
		logger.Info("serving remote CDP logs (stand-in transport)", "addr", sc.RemoteListen)
	}
	ln, err := listen("unix", sc.APISocket)
	if err != nil {
		return err
	}
	lns = append(lns, ln)
	hs := &http.Server{Handler: m.Handler()}
	run(func() error {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serving volume API: %w", err)
		}
		return nil
	})
	logger.Info("serving volume API", "socket", sc.APISocket)
	if sc.Ready != nil {
		sc.Ready()
	}
	<-ctx.Done()
	hs.Close()
	wg.Wait()
	for _, c := range callers {
		c.Close()
	}
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

func splitAddr(s string) (string, string, error) {
	network, addr, ok := strings.Cut(s, ":")
	if !ok || (network != "unix" && network != "tcp") || addr == "" {
		return "", "", fmt.Errorf("address %q: want unix:/path or tcp:host:port: %w", s, ErrInvalid)
	}
	return network, addr, nil
}
