package cdp

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/wire"
)

// TestRemoteOverWire replicates a volume to a second Manager over real
// mTLS wire sessions on loopback TCP and restores from the remote log
// alone.
func TestRemoteOverWire(t *testing.T) {
	ctx := context.Background()
	ca, err := cluster.Init(t.TempDir(), "site-b")
	if err != nil {
		t.Fatal(err)
	}
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	cert, err := ca.CA.SignNode("site-a", pub, cluster.NodeCertOptions{})
	if err != nil {
		t.Fatal(err)
	}
	idA := &cluster.Identity{Name: "site-a", CA: &cluster.CA{Cert: ca.CA.Cert}, Cert: cert, Key: priv}
	log := testLogger(t)

	siteB := startSite(t, testConfig(shortDir(t)), nil)
	mux := &wire.Mux{}
	siteB.m.RegisterWire(mux)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		(&wire.Listener{TLS: ca.ServerTLS(log), Cfg: &wire.Config{Node: "site-b", Mux: mux, Logger: log}}).Serve(lctx, ln)
		close(done)
	}()
	t.Cleanup(func() { cancel(); <-done })

	var mu sync.Mutex
	var sess *wire.Session
	getSession := func(ctx context.Context) (*wire.Session, error) {
		mu.Lock()
		defer mu.Unlock()
		if sess != nil && sess.Err() == nil {
			return sess, nil
		}
		cfg := &wire.Config{Node: "site-a", Logger: log}
		s, err := wire.Dial(ctx, "tcp", ln.Addr().String(), idA.ClientTLS(log), cfg, nil)
		if err != nil {
			return nil, err
		}
		sess = s
		return s, nil
	}
	t.Cleanup(func() {
		if sess != nil {
			sess.Close()
		}
	})
	dial := func(agent string) (Remote, error) { return NewRemote(SessionCaller{Session: getSession}), nil }

	siteA := startSite(t, testConfig(shortDir(t)), dial)
	if _, err := siteA.m.Create(ctx, CreateOptions{Name: "v", Size: 2 << 20, Remote: "site-b", Mode: ModeSync}); err != nil {
		t.Fatal(err)
	}
	v, _ := siteA.m.Volume("v")
	want := make([]byte, 2<<20)
	for i := 0; i < 40; i++ {
		p := bytes.Repeat([]byte{byte(i + 1)}, 8192)
		off := int64(i*37%250) * 8192
		if err := v.WriteAt(ctx, p, off, false); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], p)
	}
	last := v.log.NextSeq() - 1
	siteA.stop()
	siteA2 := startSite(t, testConfig(shortDir(t)), dial)
	if _, err := siteA2.m.Restore(ctx, RestoreOptions{Name: "v", At: strconv.FormatUint(last, 10), As: "back", FromRemote: "site-b"}); err != nil {
		t.Fatal(err)
	}
	rv, _ := siteA2.m.Volume("back")
	got := make([]byte, len(want))
	if err := rv.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("volume restored over the wire differs")
	}
	waitFor(t, "fill over the wire", 10*time.Second, func() bool { in, _ := siteA2.m.Get(ctx, "back"); return in.FillDone })
}
