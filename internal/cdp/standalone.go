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
	// Ready, if set, is called once everything listens.
	Ready func()
}

// RunStandalone runs a Manager with its NBD server and API until ctx ends:
// `holdfast volume serve`, for use without the agent daemon. Its volumes
// are local only: remote CDP logs need agents (`holdfast agent`), which
// reach each other over their mTLS wire sessions.
func RunStandalone(ctx context.Context, sc StandaloneConfig, logger *slog.Logger) error {
	m, err := New(ctx, sc.Manager, nil, logger)
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
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}
