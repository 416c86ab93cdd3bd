package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/netdiag"
)

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// requireTool skips the test when an outside program is missing (CI has
// them installed, so the test runs there).
func requireTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s not installed: %v", name, err)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startProcess starts an outside program and kills it at cleanup.
func startProcess(t *testing.T, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdout = testWriter{t}
	cmd.Stderr = testWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd
}

func waitListening(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s not listening after 10s", addr)
}

// waitListeningProc waits until a socket listens on 127.0.0.1:port,
// without connecting to it.
func waitListeningProc(t *testing.T, port int) {
	t.Helper()
	want := fmt.Sprintf("0100007F:%04X 00000000:0000 0A", port)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile("/proc/net/tcp")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), want) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("nothing listening on 127.0.0.1:%d after 10s", port)
}

// runningProxy is a measuring proxy writing to a log dir.
type runningProxy struct {
	addr   string
	dir    string
	rec    *netdiag.Recorder
	cancel context.CancelFunc
	done   chan error
}

func startProxy(t *testing.T, to string, measure bool) *runningProxy {
	t.Helper()
	dir := t.TempDir()
	rec, err := netdiag.NewRecorder(netdiag.DefaultRecorderConfig(dir), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig("127.0.0.1:0", to)
	cfg.Measure = measure
	cfg.Monitor.TCPInfoInterval = 20 * time.Millisecond
	p, err := New(cfg, rec, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rp := &runningProxy{dir: dir, rec: rec, cancel: cancel, done: make(chan error, 1)}
	ready := make(chan net.Addr, 1)
	go func() { rp.done <- p.ListenAndServe(ctx, func(a net.Addr) { ready <- a }) }()
	select {
	case a := <-ready:
		rp.addr = a.String()
	case err := <-rp.done:
		t.Fatalf("proxy: %v", err)
	}
	t.Cleanup(func() { rp.stop(t) })
	return rp
}

// stop ends the proxy and flushes its log; safe to call twice.
func (rp *runningProxy) stop(t *testing.T) {
	rp.cancel()
	if rp.done != nil {
		if err := <-rp.done; err != nil {
			t.Errorf("proxy: %v", err)
		}
		rp.done = nil
	}
	if err := rp.rec.Close(); err != nil {
		t.Errorf("recorder: %v", err)
	}
}

// records returns every record of the proxy's log, by role.
func (rp *runningProxy) closes(t *testing.T) map[string][]netdiag.Record {
	t.Helper()
	roles := map[string]string{}
	out := map[string][]netdiag.Record{}
	if _, err := netdiag.ReadLog(rp.dir, func(r netdiag.Record) {
		if r.Open != nil {
			roles[r.Conn] = r.Open.Role
		}
		if r.Close != nil {
			out[roles[r.Conn]] = append(out[roles[r.Conn]], r)
		}
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func verdictFor(t *testing.T, rep netdiag.Report, peer string) netdiag.Verdict {
	t.Helper()
	for _, v := range rep.Verdicts {
		if v.Peer == peer {
			return v
		}
	}
	t.Fatalf("no verdict for peer %s in %d verdicts", peer, len(rep.Verdicts))
	return netdiag.Verdict{}
}

func logReport(t *testing.T, rep netdiag.Report) {
	var b bytes.Buffer
	_ = rep.WriteText(&b)
	t.Log("\n" + b.String())
}

// serveFile starts python3 -m http.server over a directory holding one
// random file of size bytes, returning its address and the file's digest.
func serveFile(t *testing.T, size int) (addr string, sum [32]byte) {
	t.Helper()
	requireTool(t, "python3")
	dir := t.TempDir()
	data := make([]byte, size)
	_, _ = rand.Read(data)
	if err := os.WriteFile(filepath.Join(dir, "blob"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	startProcess(t, "python3", "-m", "http.server", "--bind", "127.0.0.1", "--directory", dir, strconv.Itoa(port))
	addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	waitListening(t, addr)
	return addr, sha256.Sum256(data)
}

func curl(t *testing.T, url, out string, extra ...string) {
	t.Helper()
	args := append([]string{"-sS", "--fail", "-o", out}, extra...)
	args = append(args, url)
	cmd := exec.Command("curl", args...)
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("curl %v: %v\n%s", args, err, b)
	}
}

// TestProxyCurlHTTPServer proxies curl ↔ python3 http.server: the file
// arrives byte for byte, both legs are measured, and the client leg
// carried exactly the response.
func TestProxyCurlHTTPServer(t *testing.T) {
	requireTool(t, "curl")
	const size = 32 << 20
	srv, sum := serveFile(t, size)
	rp := startProxy(t, srv, true)
	out := filepath.Join(t.TempDir(), "blob")
	curl(t, "http://"+rp.addr+"/blob", out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sum {
		t.Fatalf("downloaded %d bytes with a different digest", len(got))
	}
	rp.stop(t)
	cl := rp.closes(t)
	if len(cl[RoleToClient]) != 1 || len(cl[RoleToServer]) != 1 {
		t.Fatalf("close records by role: %d client, %d server; want 1 each", len(cl[RoleToClient]), len(cl[RoleToServer]))
	}
	toClient, toServer := cl[RoleToClient][0].Close, cl[RoleToServer][0].Close
	// The client leg carries the response: the file plus HTTP headers.
	if toClient.BytesWritten < size || toClient.BytesWritten > size+4096 {
		t.Errorf("proxy wrote %d bytes to the client, want the %d-byte file plus headers", toClient.BytesWritten, size)
	}
	if toServer.BytesRead != toClient.BytesWritten || toClient.BytesRead != toServer.BytesWritten {
		t.Errorf("legs disagree: server leg read %d wrote %d, client leg read %d wrote %d",
			toServer.BytesRead, toServer.BytesWritten, toClient.BytesRead, toClient.BytesWritten)
	}
	rep, err := netdiag.BuildReport(context.Background(), netdiag.ReportOptions{Dir: rp.dir})
	if err != nil {
		t.Fatal(err)
	}
	logReport(t, rep)
	v := verdictFor(t, rep, cl[RoleToClient][0].Peer)
	if v.Summary.Writes == 0 || v.Summary.AckTimeP50 <= 0 {
		t.Errorf("client leg: %d writes, ack time p50 %v: want kernel-timestamped writes", v.Summary.Writes, v.Summary.AckTimeP50)
	}
	if v.Summary.BytesAcked < size/2 {
		t.Errorf("client leg: %d bytes acknowledged in the active window, want most of %d", v.Summary.BytesAcked, size)
	}
}

// TestProxyAria2SlowReader: aria2c downloads from python3 http.server
// through the proxy with a fixed 256 KiB receive buffer and a 4 MiB/s
// download limit, so it reads more slowly than the path delivers: the
// proxy's client leg is classified receiving application. (curl
// --limit-rate is not used: its socket buffer autotunes to megabytes and
// swallows a whole test-sized file before the limit bites.)
func TestProxyAria2SlowReader(t *testing.T) {
	requireTool(t, "aria2c")
	const size = 12 << 20
	srv, sum := serveFile(t, size)
	rp := startProxy(t, srv, true)
	dir := t.TempDir()
	cmd := exec.Command("aria2c", "--quiet=true", "--split=1", "--max-connection-per-server=1",
		"--max-download-limit=4M", "--socket-recv-buffer-size=256K", "--allow-overwrite=true",
		"--file-allocation=none", "--dir", dir, "--out", "blob", "http://"+rp.addr+"/blob")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("aria2c: %v\n%s", err, b)
	}
	got, err := os.ReadFile(filepath.Join(dir, "blob"))
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sum {
		t.Fatalf("downloaded %d bytes with a different digest", len(got))
	}
	rp.stop(t)
	cl := rp.closes(t)
	if len(cl[RoleToClient]) != 1 {
		t.Fatalf("%d client legs, want 1", len(cl[RoleToClient]))
	}
	rep, err := netdiag.BuildReport(context.Background(), netdiag.ReportOptions{Dir: rp.dir})
	if err != nil {
		t.Fatal(err)
	}
	logReport(t, rep)
	v := verdictFor(t, rep, cl[RoleToClient][0].Peer)
	if v.Class != netdiag.ClassReceivingApp {
		t.Fatalf("client leg verdict %q, want %q", v.Class, netdiag.ClassReceivingApp)
	}
}

// TestProxyIperf3PausingSender: an iperf3 client that sends in bursts every
// 100 ms (rate 40 Mbit/s, pacing timer 100 ms) through the proxy to an
// iperf3 server: the server leg is classified sending application, and the
// proxy forwarded every byte iperf3 counted.
func TestProxyIperf3PausingSender(t *testing.T) {
	requireTool(t, "iperf3")
	port := freePort(t)
	srv := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	startProcess(t, "iperf3", "-s", "-B", "127.0.0.1", "-p", strconv.Itoa(port))
	// A probe connection would make iperf3 -s fail the next test, so wait
	// for the listening socket in /proc/net/tcp instead.
	waitListeningProc(t, port)
	rp := startProxy(t, srv, true)
	_, pport, _ := net.SplitHostPort(rp.addr)
	cmd := exec.Command("iperf3", "-c", "127.0.0.1", "-p", pport, "-t", "2", "-b", "40M", "--pacing-timer", "100000", "-J")
	outb, err := cmd.Output()
	if err != nil {
		t.Fatalf("iperf3 client: %v\n%s", err, outb)
	}
	var res struct {
		End struct {
			SumSent struct {
				Bytes float64 `json:"bytes"`
			} `json:"sum_sent"`
		} `json:"end"`
	}
	if err := json.Unmarshal(outb, &res); err != nil {
		t.Fatalf("iperf3 JSON: %v", err)
	}
	rp.stop(t)
	cl := rp.closes(t)
	var toServer uint64
	var dataPeer string
	for _, r := range cl[RoleToServer] {
		toServer += r.Close.BytesWritten
		if r.Close.BytesWritten > 1<<20 {
			dataPeer = r.Peer
		}
	}
	sent := uint64(res.End.SumSent.Bytes)
	// Control connection traffic is a few hundred bytes.
	if toServer < sent || toServer > sent+64<<10 {
		t.Errorf("proxy forwarded %d bytes to iperf3 -s, iperf3 -c sent %d", toServer, sent)
	}
	rep, err := netdiag.BuildReport(context.Background(), netdiag.ReportOptions{Dir: rp.dir, Peer: srv})
	if err != nil {
		t.Fatal(err)
	}
	logReport(t, rep)
	if dataPeer == "" {
		t.Fatal("no data connection seen")
	}
	v := verdictFor(t, rep, dataPeer)
	if v.Class != netdiag.ClassSendingApp {
		t.Fatalf("server leg verdict %q, want %q", v.Class, netdiag.ClassSendingApp)
	}
}
