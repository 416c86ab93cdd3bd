package cdp

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/wire"
)

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimSpace(p)))
	return len(p), nil
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// needTools skips the test when an outside client is missing (CI installs
// them: qemu-utils, libnbd-bin, fio).
func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (apt-get install qemu-utils libnbd-bin fio)", tool)
		}
	}
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

// shortDir returns a temporary directory with a short path (unix socket
// paths are limited to 108 bytes).
func shortDir(t *testing.T) string {
	d, err := os.MkdirTemp("", "cdp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func testConfig(dir string) Config {
	cfg := DefaultConfig(dir)
	cfg.SyncTimeout = 500 * time.Millisecond
	cfg.RemoteTimeout = 2 * time.Second
	cfg.CheckpointInterval = 200 * time.Millisecond
	cfg.FoldInterval = time.Hour
	return cfg
}

// testSite is a Manager with its NBD server on a unix socket.
type testSite struct {
	m    *Manager
	sock string
	stop func()
}

func startSite(t *testing.T, cfg Config, dial Dialer) *testSite {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	m, err := New(ctx, cfg, dial, testLogger(t))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	sock := filepath.Join(cfg.StateDir, "nbd.sock")
	os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { m.ServeNBD(ctx, ln); close(done) }()
	var stopped atomic.Bool
	s := &testSite{m: m, sock: sock}
	s.stop = func() {
		if stopped.Swap(true) {
			return
		}
		cancel()
		<-done
		if err := m.Close(); err != nil {
			t.Errorf("closing manager: %v", err)
		}
	}
	t.Cleanup(s.stop)
	return s
}

func (s *testSite) uri(vol string) string { return "nbd+unix:///" + vol + "?socket=" + s.sock }

// qemuIO runs qemu-io commands against an export and returns its output.
func qemuIO(t *testing.T, uri string, cmds ...string) string {
	t.Helper()
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out, err := exec.Command("qemu-io", append(args, uri)...).CombinedOutput()
	if err != nil || bytes.Contains(out, []byte("failed")) {
		t.Fatalf("qemu-io %v: %v\n%s", cmds, err, out)
	}
	return string(out)
}

// qemuCompare runs qemu-img compare of a raw file against an export: nil
// when identical.
func qemuCompare(expected, uri string) error {
	out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "raw", expected, uri).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu-img compare %s %s: %v: %s", expected, uri, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// op is one write pattern, applied both through qemu-io and to the
// expected image.
type op struct {
	cmd         string // "write" or "zero"
	off, n      int64
	pattern     byte
	markAfterOp string
}

func (o op) qemu() string {
	if o.cmd == "zero" {
		return fmt.Sprintf("write -z %d %d", o.off, o.n)
	}
	return fmt.Sprintf("write -P 0x%02x %d %d", o.pattern, o.off, o.n)
}

func (o op) apply(img []byte) {
	b := o.pattern
	if o.cmd == "zero" {
		b = 0
	}
	for i := o.off; i < o.off+o.n; i++ {
		img[i] = b
	}
}

func writeImage(t *testing.T, path string, img []byte) {
	t.Helper()
	if err := os.WriteFile(path, img, 0o600); err != nil {
		t.Fatal(err)
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// wirePeer serves m's remote logs to other agents over real mTLS wire
// sessions on loopback TCP (the agents' transport: a cluster CA, a node
// certificate for each side) and returns a Dialer that reaches it as agent
// name, through a fault injector.
func wirePeer(t *testing.T, m *Manager, name string) (Dialer, *flakyCaller) {
	t.Helper()
	log := testLogger(t)
	ca, err := cluster.Init(t.TempDir(), name)
	if err != nil {
		t.Fatal(err)
	}
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	cert, err := ca.CA.SignNode("site-a", pub, cluster.NodeCertOptions{})
	if err != nil {
		t.Fatal(err)
	}
	idA := &cluster.Identity{Name: "site-a", CA: &cluster.CA{Cert: ca.CA.Cert}, Cert: cert, Key: priv}
	mux := &wire.Mux{}
	m.RegisterWire(mux)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		(&wire.Listener{TLS: ca.ServerTLS(log), Cfg: &wire.Config{Node: name, Mux: mux, Logger: log}}).Serve(ctx, ln)
		close(done)
	}()
	var mu sync.Mutex
	var sess *wire.Session
	session := func(ctx context.Context) (*wire.Session, error) {
		mu.Lock()
		defer mu.Unlock()
		if sess != nil && sess.Err() == nil {
			return sess, nil
		}
		s, err := wire.Dial(ctx, "tcp", ln.Addr().String(), idA.ClientTLS(log), &wire.Config{Node: "site-a", Logger: log}, nil)
		if err != nil {
			return nil, err
		}
		sess = s
		return s, nil
	}
	t.Cleanup(func() {
		mu.Lock()
		if sess != nil {
			sess.Close()
		}
		mu.Unlock()
		cancel()
		<-done
	})
	fc := &flakyCaller{c: SessionCaller{Session: session}}
	return func(agent string) (Remote, error) {
		if agent != name {
			return nil, fmt.Errorf("unknown agent %q: %w", agent, ErrInvalid)
		}
		return NewRemote(fc), nil
	}, fc
}

// flakyCaller is a fault injector: while down, every call fails as if the
// remote agent were unreachable.
type flakyCaller struct {
	c    Caller
	down atomic.Bool
}

var errUnreachable = errors.New("injected fault: remote agent unreachable")

func (f *flakyCaller) Call(ctx context.Context, typ uint16, p []byte) ([]byte, error) {
	if f.down.Load() {
		return nil, errUnreachable
	}
	return f.c.Call(ctx, typ, p)
}

func testLoggerStderr() *slog.Logger { return slog.New(slog.NewTextHandler(os.Stderr, nil)) }
