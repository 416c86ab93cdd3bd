package bulk

import (
	"context"
	"net"
	"syscall"
	"testing"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/lab"
)

// labPair is a pair whose receiver runs in lab host 1 and whose client
// dials from lab host 0, across the emulated path.
type labPair struct {
	*pair
	lab *lab.Lab
}

// newLabPair starts a two-host lab with path p (the test is skipped where
// labs cannot run: not root, no /dev/net/tun).
func newLabPair(t *testing.T, p lab.Path) *labPair {
	t.Helper()
	l := lab.New(t, lab.Config{Hosts: 2, Path: p})
	log := testLogger(t)
	id, err := cluster.Init(t.TempDir(), "alpha")
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	svc, err := NewService(ServiceConfig{Root: root, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	srv, cli := l.Host(1), l.Host(0)
	ln, err := srv.Listen("tcp", srv.AddrPort(DefaultPort).String())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = Serve(ctx, ln, id, svc, log)
	}()
	dial := func(ctx context.Context, network, addr string, control func(string, string, syscall.RawConn) error) (net.Conn, error) {
		return cli.DialWith(ctx, &net.Dialer{Control: control}, network, addr)
	}
	cl, err := NewClient(ClientConfig{TLS: id.ClientTLS(log), Node: id.Name, Logger: log, CC: "cubic", Dial: dial})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cl.Close()
		cancel()
		<-done
		svc.Close()
	})
	return &labPair{pair: &pair{client: cl, svc: svc, addr: ln.Addr().String(), root: root, id: id, lab: l}, lab: l}
}

// envs runs f against a loopback pair and a lab pair over path.
func envs(t *testing.T, path lab.Path, f func(t *testing.T, p *pair)) {
	t.Run("loopback", func(t *testing.T) { f(t, newPair(t)) })
	t.Run("lab", func(t *testing.T) { f(t, newLabPair(t, path).pair) })
}
