package cdp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestMain lets the kill -9 test run this test binary as a standalone
// volume server (the code `holdfast volume serve` runs) in a subprocess.
func TestMain(m *testing.M) {
	if dir := os.Getenv("HOLDFAST_CDP_TEST_SERVE"); dir != "" {
		cfg := DefaultConfig(dir)
		cfg.CheckpointInterval = 100 * time.Millisecond
		err := RunStandalone(context.Background(), StandaloneConfig{
			Manager: cfg, NBDSocket: filepath.Join(dir, "nbd.sock"), APISocket: filepath.Join(dir, "agent.sock"),
		}, testLoggerStderr())
		fmt.Fprintln(os.Stderr, "server ended:", err)
		os.Exit(1)
	}
	code := m.Run()
	if holdfastBin != "" {
		os.Remove(holdfastBin)
	}
	os.Exit(code)
}

var (
	holdfastBinOnce sync.Once
	holdfastBin     string
)

// holdfastBinary returns the real holdfast binary, built once; "" if the
// command tree does not build right now (other packages mid-change), said
// so in the log.
func holdfastBinary(t *testing.T) string {
	holdfastBinOnce.Do(func() {
		bin := filepath.Join(os.TempDir(), fmt.Sprintf("holdfast-cdp-test-%d", os.Getpid()))
		out, err := exec.Command("go", "build", "-o", bin, "github.com/holdfast/holdfast/cmd/holdfast").CombinedOutput()
		if err != nil {
			t.Logf("building the holdfast binary failed: %v\n%s", err, out)
			return
		}
		holdfastBin = bin
	})
	return holdfastBin
}

// serverCommand returns the command that runs the volume server: the real
// holdfast binary (`holdfast volume serve`); if it does not build, this
// test binary running the same RunStandalone.
func serverCommand(t *testing.T, dir string) *exec.Cmd {
	if bin := holdfastBinary(t); bin != "" {
		return exec.Command(bin, "volume", "serve", "--state", dir, "--nbd-listen", "")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "HOLDFAST_CDP_TEST_SERVE="+dir)
	return cmd
}

// startServerProcess runs the standalone server as a child process and
// waits until its API answers.
func startServerProcess(t *testing.T, dir string) *exec.Cmd {
	t.Helper()
	cmd := serverCommand(t, dir)
	cmd.Stderr = tWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	c := NewUnixClient(filepath.Join(dir, "agent.sock"))
	waitFor(t, "server API", 10*time.Second, func() bool { _, err := c.List(context.Background()); return err == nil })
	return cmd
}

var wroteRE = regexp.MustCompile(`wrote 4096/4096 bytes at offset (\d+)`)

// TestKill9NoAcknowledgedWriteLost runs qemu-io write storms against a
// server process, SIGKILLs the server in the middle, restarts it and
// checks that every write qemu-io saw acknowledged is there.
func TestKill9NoAcknowledgedWriteLost(t *testing.T) {
	needTools(t, "qemu-io", "nbdcopy")
	dir := shortDir(t)
	ctx := context.Background()
	const blocks, writes = 64, 50000
	srv := startServerProcess(t, dir)
	c := NewUnixClient(filepath.Join(dir, "agent.sock"))
	if _, err := c.Create(ctx, CreateOptions{Name: "v", Size: blocks * 4096}); err != nil {
		t.Fatal(err)
	}
	// Command i writes pattern pat(i) to block i%blocks.
	pat := func(i int) byte { return byte(i%250 + 1) }
	// The commands go through stdin (too many for a command line).
	var cmds strings.Builder
	for i := 0; i < writes; i++ {
		fmt.Fprintf(&cmds, "write -P %d %d 4096\n", pat(i), (i%blocks)*4096)
	}
	uri := "nbd+unix:///v?socket=" + filepath.Join(dir, "nbd.sock")
	q := exec.Command("qemu-io", "-f", "raw", uri)
	q.Stdin = strings.NewReader(cmds.String())
	var out bytes.Buffer
	q.Stdout, q.Stderr = &out, &out
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "write storm under way", 30*time.Second, func() bool {
		in, err := c.Get(ctx, "v")
		return err == nil && in.LastSeq > 300
	})
	if err := srv.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	srv.Wait()
	q.Wait()
	acked := 0
	for _, m := range wroteRE.FindAllStringSubmatch(out.String(), -1) {
		off, _ := strconv.Atoi(m[1])
		if off != (acked%blocks)*4096 {
			t.Fatalf("acknowledgement %d at offset %d out of order", acked, off)
		}
		acked++
	}
	if acked == 0 || acked == writes {
		t.Fatalf("%d of %d writes acknowledged: the kill did not land mid-storm", acked, writes)
	}
	t.Logf("killed the server after %d acknowledged writes", acked)

	startServerProcess(t, dir)
	img := filepath.Join(dir, "after.img")
	if b, err := exec.Command("nbdcopy", uri, img).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy: %v\n%s", err, b)
	}
	data, _ := os.ReadFile(img)
	for b := 0; b < blocks; b++ {
		// The newest acknowledged write to this block, or the one write in
		// flight (sent, maybe applied, not acknowledged).
		want := map[byte]bool{}
		for i := acked - 1; i >= 0; i-- {
			if i%blocks == b {
				want[pat(i)] = true
				break
			}
		}
		if acked%blocks == b {
			want[pat(acked)] = true
		}
		got := data[b*4096]
		if !want[got] || !bytes.Equal(data[b*4096:(b+1)*4096], bytes.Repeat([]byte{got}, 4096)) {
			t.Fatalf("block %d holds %d, want one of %v: an acknowledged write was lost", b, got, want)
		}
	}
}

// TestRemoteUnreachableBacklogShipped cuts the remote off: writes go on
// locally, the lag is reported, and the backlog is shipped when the remote
// returns.
func TestRemoteUnreachableBacklogShipped(t *testing.T) {
	ctx := context.Background()
	siteB := startSite(t, testConfig(shortDir(t)), nil)
	dial, fc := wirePeer(t, siteB.m, "b")
	siteA := startSite(t, testConfig(shortDir(t)), dial)
	if _, err := siteA.m.Create(ctx, CreateOptions{Name: "v", Size: 1 << 20, Remote: "b"}); err != nil {
		t.Fatal(err)
	}
	v, _ := siteA.m.Volume("v")
	fc.down.Store(true)
	for i := 0; i < 50; i++ {
		if err := v.WriteAt(ctx, bytes.Repeat([]byte{byte(i)}, 4096), int64(i%16)*4096, false); err != nil {
			t.Fatalf("write %d with the remote down: %v", i, err)
		}
	}
	waitFor(t, "unreachable state", 5*time.Second, func() bool {
		in, _ := siteA.m.Get(ctx, "v")
		return in.Replication.State == "unreachable"
	})
	time.Sleep(50 * time.Millisecond)
	in, _ := siteA.m.Get(ctx, "v")
	if r := in.Replication; r.LagRecords != 50 || r.LagSeconds <= 0 || r.LastError == "" {
		t.Fatalf("replication while down: %+v", r)
	}
	// The lag is exported to Prometheus too.
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(siteA.m.Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	gauges := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if m.GetGauge() != nil {
				gauges[mf.GetName()] = m.GetGauge().GetValue()
			}
		}
	}
	if gauges["holdfast_cdp_replication_up"] != 0 || gauges["holdfast_cdp_replication_lag_records"] != 50 || gauges["holdfast_cdp_replication_lag_seconds"] <= 0 {
		t.Fatalf("metrics while the remote is down: %v", gauges)
	}
	fc.down.Store(false)
	waitFor(t, "backlog shipped", 10*time.Second, func() bool {
		in, _ := siteA.m.Get(ctx, "v")
		return in.Replication.State == "ok" && in.Replication.ShippedSeq == 50
	})
	rv, err := siteB.m.replica("v")
	if err != nil {
		t.Fatal(err)
	}
	want, got := make([]byte, 1<<20), make([]byte, 1<<20)
	v.ReadAt(ctx, want, 0)
	if err := rv.readAtSeq(ctx, got, 0, 50); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("remote log content differs after the backlog was shipped (err %v)", err)
	}
}

// TestSyncModeAcknowledgesAfterRemote checks that a sync write is in the
// remote log when it returns, and that with the remote gone the volume
// degrades to async after SyncTimeout instead of blocking writes.
func TestSyncModeAcknowledgesAfterRemote(t *testing.T) {
	ctx := context.Background()
	siteB := startSite(t, testConfig(shortDir(t)), nil)
	dial, fc := wirePeer(t, siteB.m, "b")
	cfg := testConfig(shortDir(t))
	cfg.SyncTimeout = time.Second
	siteA := startSite(t, cfg, dial)
	if _, err := siteA.m.Create(ctx, CreateOptions{Name: "v", Size: 1 << 20, Remote: "b", Mode: ModeSync}); err != nil {
		t.Fatal(err)
	}
	v, _ := siteA.m.Volume("v")
	for i := 0; i < 20; i++ {
		if err := v.WriteAt(ctx, bytes.Repeat([]byte{byte(i)}, 4096), 0, false); err != nil {
			t.Fatal(err)
		}
		rv, err := siteB.m.replica("v")
		if err != nil {
			t.Fatal(err)
		}
		if got := rv.log.NextSeq() - 1; got < uint64(i+1) {
			t.Fatalf("sync write %d acknowledged but the remote log ends at %d", i+1, got)
		}
	}
	fc.down.Store(true)
	start := time.Now()
	if err := v.WriteAt(ctx, make([]byte, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Fatalf("sync write with the remote down returned after %v, before SyncTimeout", d)
	}
	if in, _ := siteA.m.Get(ctx, "v"); in.Replication.State != "unreachable" && in.Replication.State != "degraded" {
		t.Fatalf("state %q with the remote down", in.Replication.State)
	}
	start = time.Now()
	v.WriteAt(ctx, make([]byte, 4096), 4096, false)
	if d := time.Since(start); d > 600*time.Millisecond {
		t.Fatalf("degraded write took %v: it waited for the remote", d)
	}
	fc.down.Store(false)
	waitFor(t, "back to sync", 10*time.Second, func() bool {
		in, _ := siteA.m.Get(ctx, "v")
		return in.Replication.State == "ok"
	})
}

// TestDiskFullENOSPC fills the file system under the state directory: the
// client gets ENOSPC, nothing acknowledged is lost (also across a
// restart), and writes work again once space is freed.
func TestDiskFullENOSPC(t *testing.T) {
	needRoot(t)
	needTools(t, "qemu-io")
	dir := shortDir(t)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	ctx := context.Background()
	s := startSite(t, testConfig(dir), nil)
	if _, err := s.m.Create(ctx, CreateOptions{Name: "v", Size: 8 << 20}); err != nil {
		t.Fatal(err)
	}
	// Ballast leaves about 2 MiB free.
	ballast := filepath.Join(dir, "ballast")
	if err := os.WriteFile(ballast, make([]byte, 9<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	acked := 0
	var failure string
	for i := 0; i < 32; i++ {
		out, _ := exec.Command("qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P %d %d 262144", i+1, i*262144), s.uri("v")).CombinedOutput()
		if strings.Contains(string(out), "wrote 262144/262144") {
			acked++
			continue
		}
		failure = string(out)
		break
	}
	if !strings.Contains(failure, "No space left on device") {
		t.Fatalf("after %d writes: want ENOSPC from qemu-io, got %q", acked, failure)
	}
	t.Logf("%d writes acknowledged before ENOSPC", acked)
	check := func(s *testSite) {
		v, _ := s.m.Volume("v")
		buf := make([]byte, 262144)
		for i := 0; i < acked; i++ {
			if err := v.ReadAt(ctx, buf, int64(i)*262144); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf, bytes.Repeat([]byte{byte(i + 1)}, 262144)) {
				t.Fatalf("acknowledged write %d lost", i)
			}
		}
	}
	check(s)
	s.stop()
	s = startSite(t, testConfig(dir), nil)
	check(s)
	os.Remove(ballast)
	v, _ := s.m.Volume("v")
	if err := v.WriteAt(ctx, make([]byte, 262144), int64(acked)*262144, false); err != nil {
		t.Fatalf("write after freeing space: %v", err)
	}
	if err := v.WriteAt(ctx, make([]byte, 4096), 0, false); errors.Is(err, syscall.ENOSPC) {
		t.Fatal("still ENOSPC")
	}
}

// TestShipmentsOvertakingEachOther ships over a transport that delays
// every other call, so later shipments reach the remote first: they wait
// there for the ones before them (or are refused after replicaGapWait and
// resent), until the remote log is complete and identical.
func TestShipmentsOvertakingEachOther(t *testing.T) {
	ctx := context.Background()
	siteB := startSite(t, testConfig(shortDir(t)), nil)
	var calls atomic.Int64
	reorder := CallerFunc(func(ctx context.Context, typ uint16, p []byte) ([]byte, error) {
		if calls.Add(1)%2 == 1 {
			time.Sleep(30 * time.Millisecond)
		}
		return siteB.m.HandleRemote(ctx, typ, p)
	})
	cfg := testConfig(shortDir(t))
	cfg.ShipBatchBytes = 64 << 10
	siteA := startSite(t, cfg, func(string) (Remote, error) { return NewRemote(reorder), nil })
	if _, err := siteA.m.Create(ctx, CreateOptions{Name: "v", Size: 1 << 20, Remote: "b"}); err != nil {
		t.Fatal(err)
	}
	v, _ := siteA.m.Volume("v")
	for i := 0; i < 300; i++ {
		if err := v.WriteAt(ctx, bytes.Repeat([]byte{byte(i)}, 4096), int64(i%256)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "all shipped", 20*time.Second, func() bool {
		in, _ := siteA.m.Get(ctx, "v")
		return in.Replication.ShippedSeq == 300
	})
	if calls.Load() < 10 {
		t.Fatalf("only %d calls: the shipments were not split", calls.Load())
	}
	rv, _ := siteB.m.replica("v")
	want, got := make([]byte, 1<<20), make([]byte, 1<<20)
	v.ReadAt(ctx, want, 0)
	if err := rv.readAtSeq(ctx, got, 0, 300); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("remote log differs after reordered shipments (err %v)", err)
	}
}
