package bulk

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFetch copies a tree from the serving peer back to the client.
func TestFetch(t *testing.T) {
	p := newPair(t)
	log := testLogger(t)
	os.MkdirAll(filepath.Join(p.root, "tree", "sub"), 0o755)
	a := writeRandom(t, filepath.Join(p.root, "tree", "a"), 3<<20+5)
	b := writeRandom(t, filepath.Join(p.root, "tree", "sub", "b"), 1000)
	os.Symlink("a", filepath.Join(p.root, "tree", "link"))
	local := t.TempDir()
	svc, err := NewService(ServiceConfig{Root: local, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	cl, err := NewClient(ClientConfig{TLS: p.id.ClientTLS(log), Node: p.id.Name, Logger: log, Service: svc})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	rep, err := cl.Fetch(context.Background(), p.addr, []string{"/tree"}, filepath.Join(local, "got"), Options{Recursive: true, Streams: 3, BlockSize: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	mustEqualFile(t, filepath.Join(local, "got", "a"), a)
	mustEqualFile(t, filepath.Join(local, "got", "sub", "b"), b)
	if l, err := os.Readlink(filepath.Join(local, "got", "link")); err != nil || l != "a" {
		t.Errorf("link: %q %v", l, err)
	}
	if rep.Files != 2 || len(rep.Conns) != 3 {
		t.Errorf("report: %d files over %d conns, want 2 over 3", rep.Files, len(rep.Conns))
	}
	// Sources outside the served root are refused.
	if _, err := cl.Fetch(context.Background(), p.addr, []string{"../etc"}, filepath.Join(local, "x"), Options{Recursive: true}); err == nil || !strings.Contains(err.Error(), "leaves") {
		t.Errorf("fetching outside the root: %v", err)
	}
	// A destination outside the local root is refused before anything is sent.
	if _, err := cl.Fetch(context.Background(), p.addr, []string{"/tree"}, "/elsewhere", Options{Recursive: true}); err == nil || !strings.Contains(err.Error(), "outside") {
		t.Errorf("fetching to outside the local root: %v", err)
	}
}
