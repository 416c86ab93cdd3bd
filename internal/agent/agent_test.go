package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// runAgent starts the agent in dir and returns a function that stops it and
// waits for it to finish.
func runAgent(t *testing.T, dir string) (*Agent, func()) {
	t.Helper()
	a, err := New(dir, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	waitFor(t, "agent API socket", func() bool {
		_, err := NewClient(dir).Status(context.Background())
		return err == nil
	})
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent %s: %v", dir, err)
		}
	}
	t.Cleanup(stop)
	return a, stop
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func fastConfig(t *testing.T, dir string) {
	t.Helper()
	c, err := LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	c.HeartbeatInterval = Duration{200 * time.Millisecond}
	c.PeerTimeout = Duration{2 * time.Second}
	if err := WriteConfig(dir, c); err != nil {
		t.Fatal(err)
	}
}

func connectedPeers(t *testing.T, dir string) map[string]PeerStatus {
	st, err := NewClient(dir).Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]PeerStatus{}
	for _, p := range st.Peers {
		if p.Connected {
			m[p.Name] = p
		}
	}
	return m
}

func TestThreeAgentsFormACluster(t *testing.T) {
	root := t.TempDir()
	dirs := []string{filepath.Join(root, "a"), filepath.Join(root, "b"), filepath.Join(root, "c")}
	addrA := freeAddr(t)
	if _, err := Init(dirs[0], InitOptions{Name: "a", Listen: addrA}); err != nil {
		t.Fatal(err)
	}
	fastConfig(t, dirs[0])
	runAgent(t, dirs[0])
	ca, _ := cluster.LoadCA(dirs[0])
	tok, _ := ca.IssueToken(time.Minute)
	for i, name := range []string{"b", "c"} {
		if _, err := Join(context.Background(), dirs[i+1], addrA, tok, InitOptions{Name: name, Listen: freeAddr(t)}, testLogger(t)); err != nil {
			t.Fatalf("join %s: %v", name, err)
		}
		fastConfig(t, dirs[i+1])
	}
	_, stopB := runAgent(t, dirs[1])
	runAgent(t, dirs[2])

	// b and c only know a; they must learn of each other through it.
	for i, d := range dirs {
		want := []string{"a", "b", "c"}
		want = append(want[:i:i], want[i+1:]...)
		waitFor(t, d+" connected to "+strings.Join(want, ","), func() bool {
			ps := connectedPeers(t, d)
			for _, w := range want {
				if _, ok := ps[w]; !ok {
					return false
				}
			}
			return true
		})
	}
	st, _ := NewClient(dirs[0]).Status(context.Background())
	for _, p := range st.Peers {
		if p.Versions["agent"] == "" || p.Versions["config"] == "" {
			t.Errorf("peer %s: version vector %v lacks agent or config", p.Name, p.Versions)
		}
	}
	if st.Cluster == "" || st.Name != "a" {
		t.Errorf("status = %+v", st)
	}

	// Stop b: a must show it disconnected; start it again: reconnected.
	stopB()
	waitFor(t, "a to see b gone", func() bool { _, ok := connectedPeers(t, dirs[0])["b"]; return !ok })
	runAgent(t, dirs[1])
	waitFor(t, "a to see b back", func() bool { _, ok := connectedPeers(t, dirs[0])["b"]; return ok })
}

func TestJoinRefusals(t *testing.T) {
	root := t.TempDir()
	addr := freeAddr(t)
	if _, err := Init(filepath.Join(root, "a"), InitOptions{Name: "a", Listen: addr}); err != nil {
		t.Fatal(err)
	}
	runAgent(t, filepath.Join(root, "a"))
	other, _ := cluster.NewCA("other")
	otherTok, _ := other.IssueToken(time.Minute)
	ctx := context.Background()
	// A token of another cluster: the joiner refuses the server (CA pin).
	if _, err := Join(ctx, filepath.Join(root, "x"), addr, otherTok, InitOptions{Name: "x"}, testLogger(t)); err == nil {
		t.Fatal("join with another cluster's token succeeded")
	}
	if _, err := os.Stat(filepath.Join(root, "x", cluster.NodeCertFile)); err == nil {
		t.Fatal("a refused join left a node certificate behind")
	}
	// A forged token that pins the right CA but is not signed by it.
	ca, _ := cluster.LoadCA(filepath.Join(root, "a"))
	good, _ := ca.IssueToken(time.Minute)
	parts := strings.Split(good, ".")
	forged := parts[0] + "." + parts[1] + "." + strings.Repeat("A", len(parts[2]))
	_, err := Join(ctx, filepath.Join(root, "y"), addr, forged, InitOptions{Name: "y"}, testLogger(t))
	if err == nil || !strings.Contains(err.Error(), "signature") {
		t.Fatalf("join with a forged token: got %v, want signature refusal", err)
	}
}

func TestAgentRefusesSecondInstance(t *testing.T) {
	dir := t.TempDir()
	if _, err := Init(dir, InitOptions{Name: "solo", Listen: freeAddr(t)}); err != nil {
		t.Fatal(err)
	}
	runAgent(t, dir)
	_, err := New(dir, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err == nil || !strings.Contains(err.Error(), "another agent") {
		t.Fatalf("second agent on one state dir: got %v", err)
	}
}

func TestConfigValidateAndRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"default", func(*Config) {}, ""},
		{"bad name", func(c *Config) { c.Name = "a b" }, "name"},
		{"bad listen", func(c *Config) { c.Listen = "nope" }, "listen"},
		{"bad peer", func(c *Config) { c.Peers = []string{"x"} }, "peers"},
		{"fast heartbeat", func(c *Config) { c.HeartbeatInterval = Duration{time.Millisecond} }, "heartbeat_interval"},
		{"short timeout", func(c *Config) { c.PeerTimeout = Duration{time.Second} }, "peer_timeout"},
		{"tiny frame", func(c *Config) { c.MaxFrame = 10 }, "max_frame"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.Name = "n1"
			tc.mod(&c)
			err := c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want error about %s", err, tc.want)
			}
		})
	}
	dir := t.TempDir()
	c := DefaultConfig()
	c.Name, c.Peers, c.Labels = "n1", []string{"10.0.0.1:7440"}, map[string]string{"zone": "z1", "odd key": "v"}
	if err := WriteConfig(dir, c); err != nil {
		t.Fatal(err)
	}
	got, err := LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "n1" || len(got.Peers) != 1 || got.Labels["zone"] != "z1" || got.Labels["odd key"] != "v" || got.HeartbeatInterval != c.HeartbeatInterval {
		t.Fatalf("round trip: got %+v", got)
	}
	os.WriteFile(filepath.Join(dir, ConfigFile), []byte("name = \"n1\"\nbogus = 1\n"), 0o644)
	if _, err := LoadConfig(dir); err == nil || !strings.Contains(err.Error(), "unknown keys") {
		t.Fatalf("unknown key: got %v", err)
	}
}

func TestTCPAPIRequiresClusterCertificate(t *testing.T) {
	dir := t.TempDir()
	if _, err := Init(dir, InitOptions{Name: "api", Listen: freeAddr(t)}); err != nil {
		t.Fatal(err)
	}
	c, _ := LoadConfig(dir)
	c.APIListen = freeAddr(t)
	if err := WriteConfig(dir, c); err != nil {
		t.Fatal(err)
	}
	a, _ := runAgent(t, dir)
	id := a.Identity()
	url := "https://" + c.APIListen + "/v1/status"

	// A cluster member's certificate is served.
	member := &http.Client{Transport: &http.Transport{TLSClientConfig: id.ClientTLS(testLogger(t))}}
	resp, err := member.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	var st Status
	json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if resp.StatusCode != 200 || st.Name != "api" {
		t.Fatalf("member: %s, status name %q", resp.Status, st.Name)
	}
	// No client certificate: refused during the handshake.
	pool := x509.NewCertPool()
	pool.AddCert(id.CA.Cert)
	anon := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "api"}}}
	if resp, err := anon.Get(url); err == nil {
		resp.Body.Close()
		t.Fatalf("a client without a certificate got %s", resp.Status)
	}
	// Another cluster's certificate: refused too.
	other, _ := cluster.Init(t.TempDir(), "intruder")
	stranger := &http.Client{Transport: &http.Transport{TLSClientConfig: other.ClientTLS(testLogger(t))}}
	if resp, err := stranger.Get(url); err == nil {
		resp.Body.Close()
		t.Fatalf("a client of another cluster got %s", resp.Status)
	}
}

func TestHealthzAndMetrics(t *testing.T) {
	dir := t.TempDir()
	if _, err := Init(dir, InitOptions{Name: "m", Listen: freeAddr(t)}); err != nil {
		t.Fatal(err)
	}
	runAgent(t, dir)
	c := NewClient(dir)
	hc := c.hc
	for path, want := range map[string]string{"/healthz": "ok", "/metrics": "holdfast_peers_connected 0"} {
		resp, err := hc.Get("http://agent" + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(b), want) {
			t.Errorf("%s: body lacks %q:\n%.500s", path, want, b)
		}
	}
}
