package repo

import (
	"bytes"
	"context"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/repo/backend"
	"github.com/holdfast/holdfast/internal/repo/chunker"
)

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// testInitOptions keeps argon2id cheap and chunks small so tests are fast.
func testInitOptions(t testing.TB) InitOptions {
	return InitOptions{
		Chunker:  chunker.Params{Min: 64 << 10, Avg: 128 << 10, Max: 512 << 10},
		PackSize: 1 << 20,
		KDF:      KDFParams{Time: 1, Memory: 64, Threads: 1},
		Logger:   testLogger(t),
	}
}

const testPass = "correct horse battery staple"

func newTestRepo(t testing.TB) (*Repository, string) {
	t.Helper()
	return newTestRepoOpts(t, testInitOptions(t))
}

// newTestRepoOpts creates a repository with opts in a temporary directory.
func newTestRepoOpts(t testing.TB, opts InitOptions) (*Repository, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "repo")
	be, err := backend.NewLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Init(context.Background(), be, testPass, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, dir
}

func reopen(t testing.TB, dir string) *Repository {
	t.Helper()
	be, _ := backend.NewLocal(dir)
	r, err := Open(context.Background(), be, testPass, OpenOptions{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

func writeFile(t testing.TB, p string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
}

// makeTree builds a varied source tree: random files of many sizes,
// compressible text, duplicates, an empty file, a symlink, nested dirs.
func makeTree(t testing.TB, root string, seed uint64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 42))
	big := randBytes(rng, 3<<20)
	writeFile(t, filepath.Join(root, "big.bin"), big, 0o644)
	writeFile(t, filepath.Join(root, "dup", "big-copy.bin"), big, 0o600)
	writeFile(t, filepath.Join(root, "empty"), nil, 0o644)
	text := bytes.Repeat([]byte("the quick brown fox jumps over the lazy dog\n"), 20000)
	writeFile(t, filepath.Join(root, "text.txt"), text, 0o640)
	for i := 0; i < 40; i++ {
		sub := filepath.Join(root, "d", string(rune('a'+i%5)), "f"+string(rune('0'+i%10))+string(rune('a'+i/10)))
		writeFile(t, sub, randBytes(rng, rng.IntN(200<<10)), 0o644)
	}
	if err := os.Symlink("text.txt", filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(root, "d"), 0o750); err != nil {
		t.Fatal(err)
	}
	old := time.Date(2020, 1, 2, 3, 4, 5, 600, time.UTC)
	os.Chtimes(filepath.Join(root, "text.txt"), old, old)
}

// compareTrees fails unless dst mirrors src in content and metadata.
func compareTrees(t testing.TB, src, dst string) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		q := filepath.Join(dst, rel)
		a, err := os.Lstat(p)
		if err != nil {
			return err
		}
		b, err := os.Lstat(q)
		if err != nil {
			t.Errorf("%s: missing in restore: %v", rel, err)
			return nil
		}
		n++
		if a.Mode() != b.Mode() {
			t.Errorf("%s: mode %v, want %v", rel, b.Mode(), a.Mode())
		}
		if !a.ModTime().Equal(b.ModTime()) && !a.IsDir() {
			t.Errorf("%s: mtime %v, want %v", rel, b.ModTime(), a.ModTime())
		}
		sa, sb := a.Sys().(*syscall.Stat_t), b.Sys().(*syscall.Stat_t)
		if os.Geteuid() == 0 && (sa.Uid != sb.Uid || sa.Gid != sb.Gid) {
			t.Errorf("%s: owner %d:%d, want %d:%d", rel, sb.Uid, sb.Gid, sa.Uid, sa.Gid)
		}
		switch {
		case a.Mode().IsRegular():
			x, _ := os.ReadFile(p)
			y, _ := os.ReadFile(q)
			if !bytes.Equal(x, y) {
				t.Errorf("%s: content differs (%d vs %d bytes)", rel, len(y), len(x))
			}
		case a.Mode()&os.ModeSymlink != 0:
			x, _ := os.Readlink(p)
			y, _ := os.Readlink(q)
			if x != y {
				t.Errorf("%s: link target %q, want %q", rel, y, x)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 2 {
		t.Fatalf("compared only %d entries", n)
	}
}

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 99)) }
