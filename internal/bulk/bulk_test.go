package bulk

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"golang.org/x/sys/unix"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/lab"
)

type tWriter struct{ t testing.TB }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type pair struct {
	client *Client
	svc    *Service
	addr   string
	root   string
	id     *cluster.Identity
	lab    *lab.Lab // nil on loopback
}

// newPair starts a Service on loopback under a fresh root and a Client of
// the same cluster.
func newPair(t *testing.T) *pair {
	t.Helper()
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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = Serve(ctx, ln, id, svc, log)
	}()
	cl, err := NewClient(ClientConfig{TLS: id.ClientTLS(log), Node: id.Name, Logger: log, CC: "cubic"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cl.Close()
		cancel()
		<-done
		svc.Close()
	})
	return &pair{client: cl, svc: svc, addr: ln.Addr().String(), root: root, id: id}
}

func writeRandom(t testing.TB, p string, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	if err := os.WriteFile(p, b, 0o640); err != nil {
		t.Fatal(err)
	}
	return b
}

func mustEqualFile(t *testing.T, p string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: %d bytes differ from the %d-byte source", p, len(got), len(want))
	}
}

func TestSendTree(t *testing.T) {
	p := newPair(t)
	src := filepath.Join(t.TempDir(), "tree")
	os.MkdirAll(filepath.Join(src, "sub", "deeper"), 0o755)
	files := map[string][]byte{
		"empty":            {},
		"small":            []byte("hello"),
		"sub/one-block":    nil,
		"sub/deeper/multi": nil,
	}
	files["sub/one-block"] = writeRandom(t, filepath.Join(src, "sub/one-block"), 64<<10)
	files["sub/deeper/multi"] = writeRandom(t, filepath.Join(src, "sub/deeper/multi"), 3<<20+12345)
	os.WriteFile(filepath.Join(src, "empty"), nil, 0o600)
	os.WriteFile(filepath.Join(src, "small"), files["small"], 0o755)
	os.Symlink("sub/one-block", filepath.Join(src, "link"))
	os.Symlink("/nonexistent/abs", filepath.Join(src, "sub", "dangling"))
	// A sparse file: 8 MiB with 64 KiB of data in the middle.
	sp, _ := os.Create(filepath.Join(src, "sparse"))
	sp.Truncate(8 << 20)
	mid := make([]byte, 64<<10)
	rand.Read(mid)
	sp.WriteAt(mid, 4<<20)
	sp.Close()
	old := time.Date(2020, 1, 2, 3, 4, 5, 600, time.UTC)
	os.Chtimes(filepath.Join(src, "small"), old, old)
	os.Chmod(filepath.Join(src, "sub"), 0o750)
	os.Chtimes(filepath.Join(src, "sub"), old, old)
	linkTime := time.Date(2021, 6, 7, 8, 9, 10, 0, time.UTC)
	ts := []unix.Timespec{unix.NsecToTimespec(linkTime.UnixNano()), unix.NsecToTimespec(linkTime.UnixNano())}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(src, "link"), ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatal(err)
	}
	root := os.Geteuid() == 0
	if root { // owners travel when the receiver runs as root
		os.Lchown(filepath.Join(src, "small"), 1234, 2345)
		os.Lchown(filepath.Join(src, "sub"), 1235, 2346)
		os.Lchown(filepath.Join(src, "link"), 1236, 2347)
	}

	rep, err := p.client.SendFiles(context.Background(), p.addr, []string{src}, "/copy", Options{Recursive: true, BlockSize: 256 << 10, Streams: 3})
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(p.root, "copy")
	for name, want := range files {
		mustEqualFile(t, filepath.Join(dst, name), want)
	}
	if fi, _ := os.Stat(filepath.Join(dst, "small")); fi.Mode().Perm() != 0o755 || !fi.ModTime().Equal(old) {
		t.Errorf("small: mode %v mtime %v, want 0755 %v", fi.Mode().Perm(), fi.ModTime(), old)
	}
	if fi, _ := os.Stat(filepath.Join(dst, "sub")); fi.Mode().Perm() != 0o750 || !fi.ModTime().Equal(old) {
		t.Errorf("sub: mode %v mtime %v, want 0750 %v", fi.Mode().Perm(), fi.ModTime(), old)
	}
	if l, err := os.Readlink(filepath.Join(dst, "link")); err != nil || l != "sub/one-block" {
		t.Errorf("link: %q %v", l, err)
	}
	if fi, err := os.Lstat(filepath.Join(dst, "link")); err != nil || !fi.ModTime().Equal(linkTime) {
		t.Errorf("link's own mtime: %v (%v), want %v", fi.ModTime(), err, linkTime)
	}
	if root {
		for name, want := range map[string][2]uint32{"small": {1234, 2345}, "sub": {1235, 2346}, "link": {1236, 2347}} {
			var st unix.Stat_t
			if err := unix.Lstat(filepath.Join(dst, name), &st); err != nil || st.Uid != want[0] || st.Gid != want[1] {
				t.Errorf("%s owned by %d:%d (%v), want %d:%d", name, st.Uid, st.Gid, err, want[0], want[1])
			}
		}
	}
	if l, err := os.Readlink(filepath.Join(dst, "sub", "dangling")); err != nil || l != "/nonexistent/abs" {
		t.Errorf("dangling link: %q %v", l, err)
	}
	got, _ := os.ReadFile(filepath.Join(dst, "sparse"))
	if len(got) != 8<<20 || !bytes.Equal(got[4<<20:4<<20+len(mid)], mid) {
		t.Fatalf("sparse file content differs")
	}
	var st syscall.Stat_t
	syscall.Stat(filepath.Join(dst, "sparse"), &st)
	if st.Blocks*512 > 1<<20 {
		t.Errorf("sparse copy allocates %d bytes, want the holes kept (< 1 MiB)", st.Blocks*512)
	}
	if rep.Holes < 7<<20 || rep.Sent > int64(3<<20+12345+64<<10+5+(1<<20)) {
		t.Errorf("sent %d bytes: holes were sent as data", rep.Sent)
	}
	leftovers, _ := filepath.Glob(filepath.Join(dst, "*", ".holdfast-*"))
	l2, _ := filepath.Glob(filepath.Join(dst, ".holdfast-*"))
	if len(leftovers)+len(l2) > 0 {
		t.Errorf("partial files left behind: %v %v", leftovers, l2)
	}
	if len(rep.Conns) != 3 || rep.Files != 5 {
		t.Errorf("report: %d conns, %d files; want 3, 5", len(rep.Conns), rep.Files)
	}
	for _, c := range rep.Conns {
		if c.Prime.RTT <= 0 || c.Prime.CwndAfter <= 0 || c.Prime.CC != "cubic" {
			t.Errorf("conn %d priming not recorded: %+v", c.ID, c.Prime)
		}
	}
}

func TestSingleFileNamesAndDirs(t *testing.T) {
	p := newPair(t)
	dir := t.TempDir()
	a := writeRandom(t, filepath.Join(dir, "a.bin"), 100000)
	b := writeRandom(t, filepath.Join(dir, "b.bin"), 5000)
	os.Mkdir(filepath.Join(p.root, "existing"), 0o755)
	for _, tc := range []struct {
		srcs []string
		dst  string
		want map[string][]byte
	}{
		{[]string{filepath.Join(dir, "a.bin")}, "renamed.bin", map[string][]byte{"renamed.bin": a}},
		{[]string{filepath.Join(dir, "a.bin")}, "/existing", map[string][]byte{"existing/a.bin": a}},
		{[]string{filepath.Join(dir, "a.bin"), filepath.Join(dir, "b.bin")}, "multi", map[string][]byte{"multi/a.bin": a, "multi/b.bin": b}},
	} {
		if _, err := p.client.SendFiles(context.Background(), p.addr, tc.srcs, tc.dst, Options{Streams: 2, BlockSize: 16 << 10}); err != nil {
			t.Fatalf("%v → %s: %v", tc.srcs, tc.dst, err)
		}
		for name, want := range tc.want {
			mustEqualFile(t, filepath.Join(p.root, name), want)
		}
	}
}

func TestRefusals(t *testing.T) {
	p := newPair(t)
	dir := t.TempDir()
	writeRandom(t, filepath.Join(dir, "f"), 1000)
	// A destination outside the root.
	if _, err := p.client.SendFiles(context.Background(), p.addr, []string{filepath.Join(dir, "f")}, "../escape", Options{Streams: 1}); err == nil || !strings.Contains(err.Error(), "leaves the destination") {
		t.Errorf("escaping destination: got %v", err)
	}
	// A directory without -r.
	if _, err := p.client.SendFiles(context.Background(), p.addr, []string{dir}, "x", Options{Streams: 1}); err == nil || !strings.Contains(err.Error(), "use -r") {
		t.Errorf("directory without -r: got %v", err)
	}
	// A client of another cluster.
	other, err := cluster.Init(t.TempDir(), "mallory")
	if err != nil {
		t.Fatal(err)
	}
	log := testLogger(t)
	cl, _ := NewClient(ClientConfig{TLS: other.ClientTLS(log), Node: other.Name, Logger: log})
	defer cl.Close()
	_, err = cl.SendFiles(context.Background(), p.addr, []string{filepath.Join(dir, "f")}, "x", Options{Streams: 1})
	if err == nil {
		t.Fatal("a peer from another cluster was let in")
	}
	if _, serr := os.Stat(filepath.Join(p.root, "x")); !errors.Is(serr, os.ErrNotExist) {
		t.Errorf("refused peer left a file: %v", serr)
	}
	t.Logf("refused: %v", err)
}

func TestStreamNonSeekable(t *testing.T) {
	p := newPair(t)
	data := make([]byte, 2<<20+77)
	rand.Read(data)
	r := io.MultiReader(bytes.NewReader(data)) // hides ReaderAt
	if _, err := p.client.SendStream(context.Background(), p.addr, "stream.out", r, int64(len(data)), Options{Streams: 2, BlockSize: 64 << 10}); err != nil {
		t.Fatal(err)
	}
	mustEqualFile(t, filepath.Join(p.root, "stream.out"), data)
}

// BenchmarkLoopback copies a 256 MiB file over loopback (for profiling the
// data path: go test -bench Loopback -cpuprofile cpu.out).
var benchOpts = Options{Streams: 4}

func BenchmarkLoopback(b *testing.B) {
	t := &testing.T{}
	_ = t
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	id, err := cluster.Init(b.TempDir(), "alpha")
	if err != nil {
		b.Fatal(err)
	}
	root := b.TempDir()
	svc, _ := NewService(ServiceConfig{Root: root, Logger: log})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Serve(ctx, ln, id, svc, log)
	cl, _ := NewClient(ClientConfig{TLS: id.ClientTLS(log), Node: id.Name, Logger: log})
	defer cl.Close()
	src := "/tmp/bulk-bench-256m"
	if fi, err := os.Stat(src); err != nil || fi.Size() != 256<<20 {
		writeRandom(b, src, 256<<20)
	}
	b.SetBytes(256 << 20)
	b.ResetTimer()
	var r0, r1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &r0)
	for i := 0; i < b.N; i++ {
		if _, err := cl.SendFiles(ctx, ln.Addr().String(), []string{src}, "out", benchOpts); err != nil {
			b.Fatal(err)
		}
	}
	syscall.Getrusage(syscall.RUSAGE_SELF, &r1)
	cpu := time.Duration(r1.Utime.Nano() + r1.Stime.Nano() - r0.Utime.Nano() - r0.Stime.Nano())
	b.ReportMetric(cpu.Seconds()/(float64(b.N)*256*(1<<20)/1e9), "cpu-s/GB")
}

func BenchmarkLoopbackNoPace(b *testing.B) {
	benchOpts = Options{Streams: 4, NoPace: true}
	defer func() { benchOpts = Options{Streams: 4} }()
	BenchmarkLoopback(b)
}

// TestPoolKeepsPrimedConnections checks that a second transfer to the same
// peer reuses the first one's primed connections, and that no pacing cap
// left by the first (rate-limited) transfer throttles the second.
func TestPoolKeepsPrimedConnections(t *testing.T) {
	p := newPair(t)
	src := filepath.Join(t.TempDir(), "f")
	writeRandom(t, src, 4<<20)
	if _, err := p.client.SendFiles(context.Background(), p.addr, []string{src}, "a", Options{Streams: 3, RateLimit: 8e6, BlockSize: 256 << 10}); err != nil {
		t.Fatal(err)
	}
	if n := p.client.Pooled(p.addr); n != 3 {
		t.Fatalf("%d connections pooled after the first transfer, want 3", n)
	}
	var caps []uint64
	opts := Options{Streams: 3, BlockSize: 256 << 10}
	opts.OnConn = func(id int, c *net.TCPConn) {
		if info, err := tcpInfo(c); err == nil {
			caps = append(caps, info.Max_pacing_rate)
		}
	}
	rep, err := p.client.SendFiles(context.Background(), p.addr, []string{src}, "b", opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range rep.Conns {
		if !c.Pooled {
			t.Errorf("conn %d of the second transfer was not from the pool", c.ID)
		}
	}
	for _, c := range caps {
		if c != ^uint64(0) {
			t.Errorf("a pooled connection started the second transfer with a pacing cap of %d B/s", c)
		}
	}
}
