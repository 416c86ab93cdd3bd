package wire

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

// logBuffer collects log output so tests can assert on refusal lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

const (
	msgEcho MsgType = 300
	msgJoin MsgType = 301
	msgSeq  MsgType = 302
)

type server struct {
	id   *cluster.Identity
	addr string
	logs *logBuffer
	seq  chan []byte
	vers chan VersionVector
}

// startServer runs a wire listener on loopback for identity id.
func startServer(t *testing.T, id *cluster.Identity) *server {
	t.Helper()
	s := &server{id: id, logs: &logBuffer{}, seq: make(chan []byte, 1000), vers: make(chan VersionVector, 10)}
	log := slog.New(slog.NewTextHandler(s.logs, nil))
	mux := &Mux{}
	mux.Handle(msgEcho, func(ctx context.Context, r *Request) ([]byte, error) {
		if string(r.Payload) == "fail" {
			return nil, errors.New("asked to fail")
		}
		return append([]byte("echo:"), r.Payload...), nil
	})
	mux.Handle(msgJoin, func(ctx context.Context, r *Request) ([]byte, error) {
		return []byte("welcome"), nil
	})
	mux.Handle(msgSeq, func(ctx context.Context, r *Request) ([]byte, error) {
		s.seq <- r.Payload
		return nil, nil
	})
	cfg := &Config{
		Node: id.Name, Mux: mux, Logger: log,
		Versions:        func() VersionVector { return VersionVector{"agent": "srv-1"} },
		Unauthenticated: map[MsgType]bool{msgJoin: true},
		OnVersions:      func(_ *Session, vv VersionVector) { s.vers <- vv },
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		(&Listener{TLS: id.ServerTLS(log), Cfg: cfg}).Serve(ctx, ln)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

func newCluster(t *testing.T, names ...string) []*cluster.Identity {
	t.Helper()
	first, err := cluster.Init(t.TempDir(), names[0])
	if err != nil {
		t.Fatal(err)
	}
	ids := []*cluster.Identity{first}
	for _, n := range names[1:] {
		ids = append(ids, issue(t, first.CA, n, cluster.NodeCertOptions{}))
	}
	return ids
}

func issue(t *testing.T, ca *cluster.CA, name string, opts cluster.NodeCertOptions) *cluster.Identity {
	t.Helper()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	cert, err := ca.SignNode(name, pub, opts)
	if err != nil {
		t.Fatal(err)
	}
	return &cluster.Identity{Name: name, CA: &cluster.CA{Cert: ca.Cert}, Cert: cert, Key: priv}
}

func dial(t *testing.T, id *cluster.Identity, addr string, vv VersionVector) (*Session, error) {
	cfg := &Config{Node: id.Name, Logger: slog.New(slog.NewTextHandler(&logBuffer{}, nil)), Versions: func() VersionVector { return vv }}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := Dial(ctx, "tcp", addr, id.ClientTLS(cfg.Logger), cfg, nil)
	if err == nil {
		t.Cleanup(func() { s.Close() })
	}
	return s, err
}

func TestCallAndVersions(t *testing.T) {
	ids := newCluster(t, "srv", "cli")
	srv := startServer(t, ids[0])
	s, err := dial(t, ids[1], srv.addr, VersionVector{"agent": "v2", "config": "c1"})
	if err != nil {
		t.Fatal(err)
	}
	if s.Peer() != "srv" {
		t.Fatalf("peer = %q, want srv", s.Peer())
	}
	ctx := context.Background()
	got, err := s.Call(ctx, msgEcho, []byte("hi"))
	if err != nil || string(got) != "echo:hi" {
		t.Fatalf("Call = %q, %v; want echo:hi", got, err)
	}
	var re *RemoteError
	if _, err := s.Call(ctx, msgEcho, []byte("fail")); !errors.As(err, &re) || !strings.Contains(re.Msg, "asked to fail") {
		t.Fatalf("failing handler: got %v, want RemoteError 'asked to fail'", err)
	}
	if _, err := s.Call(ctx, 999, nil); !errors.As(err, &re) || !strings.Contains(re.Msg, "no handler") {
		t.Fatalf("unknown type: got %v, want 'no handler'", err)
	}
	select {
	case vv := <-srv.vers:
		if vv["agent"] != "v2" || vv["config"] != "c1" {
			t.Fatalf("server saw versions %v", vv)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("server never reported the client's version vector")
	}
	if pv := s.PeerVersions(); pv["agent"] != "srv-1" {
		t.Fatalf("client saw server versions %v, want agent=srv-1", pv)
	}
}

func TestConcurrentCallsAndOrderedOneway(t *testing.T) {
	ids := newCluster(t, "srv", "cli")
	srv := startServer(t, ids[0])
	s, err := dial(t, ids[1], srv.addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			want := fmt.Sprint(i)
			got, err := s.Call(ctx, msgEcho, []byte(want))
			if err != nil || string(got) != "echo:"+want {
				errs <- fmt.Errorf("call %d: %q, %v", i, got, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i := range 200 {
		if err := s.Send(ctx, msgSeq, []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 200 {
		select {
		case p := <-srv.seq:
			if string(p) != fmt.Sprint(i) {
				t.Fatalf("one-way message %d arrived as %q: order lost", i, p)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("one-way message %d never arrived", i)
		}
	}
}

func TestRefusals(t *testing.T) {
	ids := newCluster(t, "srv", "cli")
	srv := startServer(t, ids[0])
	other := newCluster(t, "stranger")[0]
	past := time.Now().Add(-48 * time.Hour)
	expired := issue(t, ids[0].CA, "old", cluster.NodeCertOptions{NotBefore: past, NotAfter: past.Add(time.Hour)})

	t.Run("other cluster", func(t *testing.T) {
		if _, err := dial(t, other, srv.addr, nil); err == nil {
			t.Fatal("a node of another cluster was let in")
		}
		waitLog(t, srv.logs, "refusing peer")
	})
	t.Run("expired certificate", func(t *testing.T) {
		s, err := dial(t, expired, srv.addr, nil)
		if err == nil {
			// TLS 1.3 client handshakes can complete before the server
			// rejects the client certificate; the first call must fail.
			_, err = s.Call(context.Background(), msgEcho, []byte("x"))
		}
		if err == nil {
			t.Fatal("a node with an expired certificate was served")
		}
		waitLog(t, srv.logs, "expired")
	})
	t.Run("no certificate", func(t *testing.T) {
		tok, _ := ids[0].CA.IssueToken(time.Minute)
		pt, _ := cluster.ParseToken(tok)
		cfg := &Config{Node: "newbie", Logger: slog.New(slog.NewTextHandler(&logBuffer{}, nil))}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, err := Dial(ctx, "tcp", srv.addr, cluster.JoinTLS(pt), cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if got, err := s.Call(ctx, msgJoin, nil); err != nil || string(got) != "welcome" {
			t.Fatalf("join without a certificate: %q, %v; want welcome", got, err)
		}
		if _, err := s.Call(ctx, msgEcho, []byte("x")); err == nil || !strings.Contains(err.Error(), "no client certificate") {
			t.Fatalf("echo without a certificate: got %v, want refusal", err)
		}
		waitLog(t, srv.logs, "no client certificate")
	})
	t.Run("join pinned to another CA", func(t *testing.T) {
		tok, _ := other.CA.IssueToken(time.Minute)
		pt, _ := cluster.ParseToken(tok)
		cfg := &Config{Node: "newbie"}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := Dial(ctx, "tcp", srv.addr, cluster.JoinTLS(pt), cfg, nil); err == nil {
			t.Fatal("joiner trusted a server whose CA does not match the token")
		}
	})
	t.Run("server of another cluster", func(t *testing.T) {
		osrv := startServer(t, other)
		if _, err := dial(t, ids[1], osrv.addr, nil); err == nil || !strings.Contains(err.Error(), "refused") {
			t.Fatalf("client accepted a server of another cluster: %v", err)
		}
	})
}

func TestSpoofedNodeIDClosesSession(t *testing.T) {
	ids := newCluster(t, "srv", "cli")
	srv := startServer(t, ids[0])
	cfg := &Config{Node: "someone-else", Logger: slog.New(slog.NewTextHandler(&logBuffer{}, nil))}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := Dial(ctx, "tcp", srv.addr, ids[1].ClientTLS(cfg.Logger), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Call(ctx, msgEcho, []byte("x")); err == nil {
		t.Fatal("a frame claiming another node id was served")
	}
	waitLog(t, srv.logs, "claims node")
}

func TestGarbageClosesSessionServerSurvives(t *testing.T) {
	ids := newCluster(t, "srv", "cli")
	srv := startServer(t, ids[0])
	conn, err := tls.Dial("tcp", srv.addr, ids[1].ClientTLS(slog.Default()))
	if err != nil {
		t.Fatal(err)
	}
	// A header that claims a 4 GiB payload.
	conn.Write([]byte("hf\x01\x01\x00\x05\x00\x00\x00\x00\x00\x01\x00\x02\xff\xff\xff\xff\x00\x00"))
	buf := make([]byte, 1)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(buf); err == nil {
		t.Fatal("server answered an oversized frame instead of closing")
	}
	conn.Close()
	waitLog(t, srv.logs, "bad frame")
	// The server still serves others.
	s, err := dial(t, ids[1], srv.addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s.Call(context.Background(), msgEcho, []byte("ok")); err != nil || string(got) != "echo:ok" {
		t.Fatalf("after garbage: %q, %v", got, err)
	}
}

func TestCallOnClosedSession(t *testing.T) {
	ids := newCluster(t, "srv", "cli")
	srv := startServer(t, ids[0])
	s, err := dial(t, ids[1], srv.addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := s.Call(context.Background(), msgEcho, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Call after Close: got %v, want ErrClosed", err)
	}
}

func waitLog(t *testing.T, l *logBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Contains(l.String(), want) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no log line containing %q; logs:\n%s", want, l.String())
}

func TestCancelledCallerDoesNotEndSession(t *testing.T) {
	ids := newCluster(t, "srv", "cli")
	srv := startServer(t, ids[0])
	s, err := dial(t, ids[1], srv.addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Call(ctx, msgEcho, []byte("late")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Call with a cancelled context: got %v, want context.Canceled", err)
	}
	if err := s.Send(ctx, msgSeq, []byte("late")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Send with a cancelled context: got %v, want context.Canceled", err)
	}
	if got, err := s.Call(context.Background(), msgEcho, []byte("still")); err != nil || string(got) != "echo:still" {
		t.Fatalf("session after a cancelled caller: %q, %v", got, err)
	}
}
