package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tbWriter{t}, nil))
}

// tcpEcho serves TCP echo on ln until it is closed.
func tcpEcho(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
	}
}

func TestHostsReachEachOther(t *testing.T) {
	l := New(t, Config{Hosts: 3, Path: mustParsePath(t, "rtt 2ms")})
	if got := len(l.Hosts()); got != 3 {
		t.Fatalf("%d hosts, want 3", got)
	}
	for _, h := range l.Hosts() {
		for _, network := range []string{"tcp4", "tcp6"} {
			addr := h.Addr()
			if network == "tcp6" {
				if !h.Addr6().IsValid() {
					t.Logf("%s: no IPv6", h)
					continue
				}
				addr = h.Addr6()
			}
			ln, err := h.Listen(network, net.JoinHostPort(addr.String(), "7000"))
			if err != nil {
				t.Fatalf("listen on %s: %v", h, err)
			}
			t.Cleanup(func() { ln.Close() })
			go tcpEcho(ln)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, a := range l.Hosts() {
		for _, b := range l.Hosts() {
			if a == b {
				continue
			}
			for _, addr := range []string{b.Addr().String(), b.Addr6().String()} {
				if addr == "invalid IP" {
					continue
				}
				c, err := a.Dial(ctx, "tcp", net.JoinHostPort(addr, "7000"))
				if err != nil {
					t.Fatalf("%s dialing %s: %v", a, addr, err)
				}
				msg := fmt.Sprintf("from %s to %s", a.Name(), addr)
				if _, err := io.WriteString(c, msg); err != nil {
					t.Fatal(err)
				}
				got := make([]byte, len(msg))
				if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
					t.Fatalf("echo %q came back %q (%v)", msg, got, err)
				}
				if local := c.LocalAddr().(*net.TCPAddr).IP.String(); local != a.Addr().String() && local != a.Addr6().String() {
					t.Errorf("connection from %s has local address %s", a, local)
				}
				c.Close()
			}
			if st := l.Stats(a.Index(), b.Index()); st.Total.OutPackets == 0 {
				t.Errorf("path %d->%d counted no packets", a.Index(), b.Index())
			}
		}
	}
	// Programs run inside the namespace see only lo and hf0.
	out, err := l.Host(2).Run(ctx, "ip", "-o", "-4", "addr", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("ip addr in %s: %v\n%s", l.Host(2), err, out)
	}
	if !strings.Contains(string(out), "hf0") || !strings.Contains(string(out), "198.18.0.3/15") {
		t.Errorf("ip addr in host 2 shows:\n%s", out)
	}
	// Go code in Do runs inside the namespace too.
	var ifaces []string
	if err := l.Host(1).Do(func() error {
		is, err := net.Interfaces()
		for _, i := range is {
			ifaces = append(ifaces, i.Name)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if strings.Join(ifaces, ",") != "lo,hf0" {
		t.Errorf("interfaces inside host 1: %v, want lo,hf0", ifaces)
	}
	if err := l.Host(0).Do(func() error { return errors.New("boom") }); err == nil || err.Error() != "boom" {
		t.Errorf("Do lost fn's error: %v", err)
	}
	if err := l.Host(0).SetSysctl("net.ipv4.tcp_congestion_control", "bbr"); err != nil {
		t.Errorf("SetSysctl: %v", err)
	}
	if err := l.Host(0).SetSysctl("kernel.hostname", "x"); err == nil {
		t.Errorf("SetSysctl accepted a non-net key")
	}
}

func TestSetPathErrors(t *testing.T) {
	l := New(t, Config{Hosts: 2})
	for _, tc := range []struct {
		name string
		a, b int
		p    Path
	}{
		{"same host", 0, 0, Path{}},
		{"out of range", 0, 2, Path{}},
		{"negative", -1, 1, Path{}},
		{"bad loss", 0, 1, Path{Loss: 1}},
		{"bad delay", 0, 1, Path{Delay: -time.Second}},
	} {
		if err := l.SetPath(tc.a, tc.b, tc.p); err == nil {
			t.Errorf("%s: SetPath(%d, %d, %+v) accepted", tc.name, tc.a, tc.b, tc.p)
		}
	}
	if st := l.Stats(0, 5); st.Total.InPackets != 0 || st.Classes != nil {
		t.Errorf("Stats of a missing path: %+v", st)
	}
}

// TestSetPathWhileTrafficFlows changes the delay of a path while a TCP
// stream runs over it; the stream survives and probes see the new RTT.
func TestSetPathWhileTrafficFlows(t *testing.T) {
	l := New(t, Config{Hosts: 2, Path: mustParsePath(t, "rtt 10ms, rate 50Mbit")})
	udpEcho(t, l.Host(1), 7)
	ln, err := l.Host(1).Listen("tcp4", l.Host(1).AddrPort(7001).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	received := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			received <- -1
			return
		}
		n, _ := io.Copy(io.Discard, c)
		received <- n
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := l.Host(0).Dial(ctx, "tcp4", l.Host(1).AddrPort(7001).String())
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	sent := make(chan error, 1)
	go func() {
		buf := make([]byte, 64<<10)
		for {
			select {
			case <-stop:
				sent <- c.Close()
				return
			default:
			}
			if _, err := c.Write(buf); err != nil {
				sent <- err
				return
			}
		}
	}()
	time.Sleep(300 * time.Millisecond)
	before := l.Stats(0, 1).Total.OutBytes
	// Raise the RTT to 80 ms on the probe's path and add loss mid-run.
	if err := l.SetPath(0, 1, mustParsePath(t, "rtt 80ms, loss 0.5%")); err != nil {
		t.Fatal(err)
	}
	p, _ := l.Path(1, 0)
	if p.Delay != 40*time.Millisecond {
		t.Errorf("reverse direction delay %v after SetPath, want 40ms", p.Delay)
	}
	time.Sleep(300 * time.Millisecond)
	rtts := measureRTT(t, l.Host(0), l.Host(1), 7, 10)
	close(stop)
	if err := <-sent; err != nil {
		t.Fatalf("TCP stream broke after SetPath: %v", err)
	}
	n := <-received
	after := l.Stats(0, 1).Total
	t.Logf("stream moved %d bytes; RTTs after change %v", n, rtts)
	if after.OutBytes <= before {
		t.Errorf("no bytes forwarded after SetPath")
	}
	if after.LossDrops == 0 {
		t.Errorf("loss set mid-run dropped nothing")
	}
	if len(rtts) < 5 {
		t.Fatalf("only %d of 10 probes answered", len(rtts))
	}
	if med := rtts[len(rtts)/2]; med < 80*time.Millisecond || med > 88*time.Millisecond {
		if lag := l.MaxLag(); lag > starvedLag {
			t.Skipf("median RTT %v after SetPath to 80ms, but the emulator fell %v behind (machine overloaded)", med, lag)
		}
		t.Errorf("median RTT %v after SetPath to 80ms", med)
	}
}

func namespacesOf(t *testing.T, lab string) []string {
	t.Helper()
	all, err := labNamespaces()
	if err != nil {
		t.Fatal(err)
	}
	return all[lab]
}

func TestCloseRemovesEverything(t *testing.T) {
	if err := Available(); err != nil {
		t.Skip(err)
	}
	before := runtime.NumGoroutine()
	l, err := Start(context.Background(), Config{Hosts: 3, Path: Path{Delay: time.Millisecond}}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	name := l.Name()
	if got := len(namespacesOf(t, name)); got != 3 {
		t.Fatalf("%d namespaces for lab %s, want 3", got, name)
	}
	// A process left running inside a host.
	cmd := l.Host(1).Run(context.Background(), "sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	deadline := time.Now().Add(3 * time.Second)
	for { // until ip netns exec has switched to sleep
		pids, _ := namespacePIDs(l.Host(1).nsPath())
		if len(pids) > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A second lab of the same name is refused while this one lives.
	if _, err := Start(context.Background(), Config{Name: name}, testLogger(t)); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second lab named %s: %v, want in use", name, err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if ns := namespacesOf(t, name); len(ns) != 0 {
		t.Errorf("namespaces left after Close: %v", ns)
	}
	select {
	case err := <-waited:
		if err == nil {
			t.Errorf("sleep 60 exited cleanly; want it killed")
		}
	case <-time.After(3 * time.Second):
		t.Errorf("process in the lab still running after Close")
	}
	if _, err := os.Stat(lockPath(name)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("lock file after Close: %v", err)
	}
	deadline = time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if after := runtime.NumGoroutine(); after > before {
		t.Errorf("%d goroutines before the lab, %d after Close", before, after)
	}
}

const crashEnv = "HFLAB_TEST_CRASH_LAB"

// TestCrashedLabHelper is not a test: TestCleanupAfterCrash runs the test
// binary with it to get a process that dies with its lab up.
func TestCrashedLabHelper(t *testing.T) {
	name := os.Getenv(crashEnv)
	if name == "" {
		t.Skip("helper process for TestCleanupAfterCrash")
	}
	l, err := Start(context.Background(), Config{Name: name, Hosts: 2}, nil)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	// A process in the lab that outlives us (no parent-death signal).
	cmd := exec.Command("ip", "netns", "exec", l.Host(0).Name(), "sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	fmt.Println("ready", cmd.Process.Pid)
	os.Stdout.Sync()
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
}

func TestCleanupAfterCrash(t *testing.T) {
	if err := Available(); err != nil {
		t.Skip(err)
	}
	name := "crash" + strconv.Itoa(os.Getpid())
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashedLabHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashEnv+"="+name)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	var sleeper int
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "ready" {
			sleeper, _ = strconv.Atoi(f[1])
		}
	}
	_ = cmd.Wait()
	if sleeper == 0 {
		t.Fatalf("helper did not start its lab")
	}
	t.Cleanup(func() { _ = syscall.Kill(sleeper, syscall.SIGKILL) })
	if got := namespacesOf(t, name); len(got) != 2 {
		t.Fatalf("crashed lab left %v, want its 2 namespaces (the test needs leftovers)", got)
	}
	if err := syscall.Kill(sleeper, 0); err != nil {
		t.Fatalf("process in the crashed lab is not running: %v", err)
	}
	removed, err := Cleanup(testLogger(t))
	if err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	for _, want := range []string{NamePrefix + name + "-h0", NamePrefix + name + "-h1"} {
		found := false
		for _, r := range removed {
			found = found || r == want
		}
		if !found {
			t.Errorf("Cleanup removed %v, not %s", removed, want)
		}
	}
	if got := namespacesOf(t, name); len(got) != 0 {
		t.Errorf("namespaces left after Cleanup: %v", got)
	}
	deadline := time.Now().Add(2 * time.Second)
	for syscall.Kill(sleeper, 0) == nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // our grandchild: reaped by init
	}
	if syscall.Kill(sleeper, 0) == nil {
		// It may linger as a zombie of a reaper; it must not be in the namespace.
		if b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(sleeper), "stat")); err == nil && !strings.Contains(string(b), ") Z") {
			t.Errorf("process %d from the crashed lab survived Cleanup", sleeper)
		}
	}
	if _, err := os.Stat(lockPath(name)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("lock file of the crashed lab after Cleanup: %v", err)
	}
}

func TestLabOfNamespace(t *testing.T) {
	for _, tc := range []struct{ ns, lab string }{
		{"hflab-cli-h0", "cli"},
		{"hflab-1234n5-h12", "1234n5"},
		{"hflab-a-b-h1", "a-b"},
		{"hflab--h1", ""},
		{"hflab-cli-hx", ""},
		{"hflab-cli", ""},
		{"other-cli-h0", ""},
		{"", ""},
	} {
		if got := labOfNamespace(tc.ns); got != tc.lab {
			t.Errorf("labOfNamespace(%q) = %q, want %q", tc.ns, got, tc.lab)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"default", DefaultConfig(), true},
		{"zero", Config{}, true},
		{"eight hosts", Config{Hosts: 8, Name: "x1"}, true},
		{"one host", Config{Hosts: 1}, false},
		{"too many hosts", Config{Hosts: MaxHosts + 1}, false},
		{"bad name", Config{Name: "Bad-Name"}, false},
		{"long name", Config{Name: strings.Repeat("a", 21)}, false},
		{"small MTU", Config{MTU: 500}, false},
		{"bad path", Config{Path: Path{Loss: 2}}, false},
	} {
		err := tc.cfg.Validate()
		if (err == nil) != tc.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
	if _, err := Start(context.Background(), Config{Hosts: 1}, nil); err == nil {
		t.Errorf("Start accepted one host")
	}
}
