package main

import (
	"bufio"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestNetdiagRejectsBadInput(t *testing.T) {
	empty := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"netdiag", "report", "--dir", empty}, "no netdiag records"},
		{[]string{"netdiag", "report", "--dir", filepath.Join(empty, "missing")}, "netdiag log dir"},
		{[]string{"netdiag", "report", "--dir", empty, "--since", "ten minutes"}, "invalid argument"},
		{[]string{"netdiag", "proxy", "--listen", "127.0.0.1:0"}, `"to" not set`},
		{[]string{"netdiag", "proxy", "--listen", "127.0.0.1:0", "--to", "nohostport"}, "server address"},
		{[]string{"netdiag", "proxy", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:9", "--max-log-bytes", "10", "--dir", empty}, "--max-log-bytes"},
		{[]string{"netdiag", "proxy", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:9", "--sample-every", "0", "--dir", empty}, "WriteSampleEvery"},
	} {
		r := run(t, tc.args...)
		if r.code != exitFatal || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("holdfast %v: exit %d, stderr %q; want exit %d mentioning %q", tc.args, r.code, r.stderr, exitFatal, tc.want)
		}
	}
}

// TestNetdiagProxyReport is the README example: aria2c reads slowly
// through `holdfast netdiag proxy` from python3 http.server, and
// `holdfast netdiag report` calls the client leg receiving application.
func TestNetdiagProxyReport(t *testing.T) {
	for _, tool := range []string{"python3", "aria2c"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed: %v", tool, err)
		}
	}
	data := t.TempDir()
	blob := make([]byte, 12<<20)
	for i := range blob {
		blob[i] = byte(i * 7919 >> 3)
	}
	if err := os.WriteFile(filepath.Join(data, "blob"), blob, 0o644); err != nil {
		t.Fatal(err)
	}
	srvAddr := freePort(t)
	_, srvPort, _ := net.SplitHostPort(srvAddr)
	srv := exec.Command("python3", "-m", "http.server", "--bind", "127.0.0.1", "--directory", data, srvPort)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })

	logDir := filepath.Join(t.TempDir(), "netdiag")
	proxyAddr := freePort(t)
	proxy := exec.Command(holdfastBin, "netdiag", "proxy", "--listen", proxyAddr, "--to", srvAddr, "--dir", logDir)
	stderr, err := proxy.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := proxy.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Process.Kill(); _ = proxy.Wait() })
	waitTCP(t, srvAddr)
	// Wait for the proxy's "ready" log line: a probe connection would be
	// proxied and measured too.
	ready, scanned := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			t.Log("proxy: " + sc.Text())
			if strings.Contains(sc.Text(), "netdiag proxy ready") {
				close(ready)
			}
		}
	}()
	select {
	case <-ready:
	case <-scanned:
		t.Fatal("proxy exited before it was ready")
	case <-time.After(10 * time.Second):
		t.Fatal("proxy not ready after 10s")
	}

	out := t.TempDir()
	dl := exec.Command("aria2c", "-q", "--max-download-limit=4M", "--socket-recv-buffer-size=256K",
		"--allow-overwrite=true", "--file-allocation=none", "-d", out, "-o", "blob", "http://"+proxyAddr+"/blob")
	if b, err := dl.CombinedOutput(); err != nil {
		t.Fatalf("aria2c: %v\n%s", err, b)
	}
	got, err := os.ReadFile(filepath.Join(out, "blob"))
	if err != nil || len(got) != len(blob) || string(got) != string(blob) {
		t.Fatalf("downloaded %d bytes (err %v), want the %d-byte file intact", len(got), err, len(blob))
	}
	// SIGTERM: the proxy flushes its log and exits 0.
	if err := proxy.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-scanned // read all of stderr before Wait closes it
	if err := proxy.Wait(); err != nil {
		t.Fatalf("proxy exit: %v", err)
	}

	r := run(t, "netdiag", "report", "--dir", logDir, "--since", "10m", "--json")
	if r.code != 0 {
		t.Fatalf("report: exit %d: %s", r.code, r.stderr)
	}
	var rep struct {
		Verdicts []struct {
			Peer  string `json:"peer"`
			Class string `json:"class"`
		} `json:"verdicts"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("report --json: %v\n%s", err, r.stdout)
	}
	classes := map[string]string{}
	for _, v := range rep.Verdicts {
		classes[v.Peer] = v.Class
	}
	if classes[srvAddr] != "insufficient data" || len(classes) != 2 {
		t.Fatalf("verdicts %v: want the server leg (request only) insufficient and one client leg", classes)
	}
	for peer, c := range classes {
		if peer != srvAddr && c != "receiving application" {
			t.Fatalf("client leg %s: %q, want receiving application", peer, c)
		}
	}
	// The text report, limited to the server's host and port.
	r = run(t, "netdiag", "report", "--dir", logDir, "--peer", srvAddr)
	if r.code != 0 || !strings.Contains(r.stdout, "peer "+srvAddr+": INSUFFICIENT DATA") || strings.Contains(r.stdout, "RECEIVING") {
		t.Fatalf("report --peer %s: exit %d\n%s%s", srvAddr, r.code, r.stdout, r.stderr)
	}
}

func waitTCP(t *testing.T, addr string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
	}
	t.Fatalf("%s not listening after 10s", addr)
}
