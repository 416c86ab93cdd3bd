package proxy

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/lab"
	"github.com/holdfast/holdfast/internal/netdiag"
)

// TestLabProxyIperf3Network puts the measuring proxy on the middle one of
// three lab hosts, between an iperf3 client (host 0) and an iperf3 server
// (host 2). One and a half seconds into the test the path from the proxy
// to the server goes from 10 ms RTT to 60 ms with 1% loss: the server leg
// is classified network. Needs root (skips otherwise); CI runs it.
func TestLabProxyIperf3Network(t *testing.T) {
	requireTool(t, "iperf3")
	clean, err := lab.ParsePath("rate 50Mbit, rtt 10ms")
	if err != nil {
		t.Fatal(err)
	}
	bad, err := lab.ParsePath("rate 50Mbit, rtt 60ms, loss 1%")
	if err != nil {
		t.Fatal(err)
	}
	l := lab.New(t, lab.Config{Hosts: 3, Path: clean})
	client, mid, server := l.Host(0), l.Host(1), l.Host(2)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	srv := server.Run(ctx, "iperf3", "-s", "-B", server.Addr().String(), "-p", "5201")
	srv.Stdout, srv.Stderr = testWriter{t}, testWriter{t}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
	waitListeningIn(ctx, t, server, 5201)

	dir := t.TempDir()
	rec, err := netdiag.NewRecorder(netdiag.DefaultRecorderConfig(dir), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := mid.Listen("tcp", mid.AddrPort(5300).String())
	if err != nil {
		t.Fatal(err)
	}
	upstream := server.AddrPort(5201).String()
	cfg := DefaultConfig(ln.Addr().String(), upstream)
	cfg.Dial = mid.Dial
	cfg.Monitor.TCPInfoInterval = 20 * time.Millisecond
	p, err := New(cfg, rec, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- p.Serve(pctx, ln) }()

	cli := client.Run(ctx, "iperf3", "-c", mid.Addr().String(), "-p", "5300", "-t", "4")
	cli.Stdout, cli.Stderr = testWriter{t}, testWriter{t}
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	degraded := time.Now()
	if err := l.SetPath(1, 2, bad); err != nil {
		t.Fatal(err)
	}
	if err := cli.Wait(); err != nil {
		t.Fatalf("iperf3 client: %v", err)
	}
	pcancel()
	if err := <-served; err != nil {
		t.Fatalf("proxy: %v", err)
	}
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	st := l.Stats(1, 2)
	t.Logf("emulator proxy→server: %d packets in, %d random-loss drops, %d queue drops", st.Total.InPackets, st.Total.LossDrops, st.Total.QueueDrops)
	now := time.Now()
	rep, err := netdiag.BuildReport(ctx, netdiag.ReportOptions{Dir: dir, Since: now.Sub(degraded), Now: now})
	if err != nil {
		t.Fatal(err)
	}
	logReport(t, rep)
	v := verdictFor(t, rep, upstream)
	if v.Class != netdiag.ClassNetwork {
		t.Fatalf("server leg verdict %q, want %q", v.Class, netdiag.ClassNetwork)
	}
}

// waitListeningIn waits until something listens on port inside host h,
// reading the namespace's /proc/net/tcp (a probe connection would upset
// iperf3 -s).
func waitListeningIn(ctx context.Context, t *testing.T, h *lab.Host, port int) {
	t.Helper()
	want := fmt.Sprintf(":%04X 00000000:0000 0A", port)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		out, err := h.Run(ctx, "cat", "/proc/net/tcp").Output()
		if err != nil {
			t.Fatalf("reading /proc/net/tcp in %s: %v", h, err)
		}
		if strings.Contains(string(out), want) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("nothing listening on port %d in %s after 10s", port, h)
}
