package repo

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/holdfast/holdfast/internal/repo/backend"
	"github.com/zeebo/blake3"
)

// TestRepositoryFilesAreOpaque checks the promise the peer pool relies on:
// no file outside keys/ holds plaintext (file names, contents, host names),
// every content-addressed file is named by the BLAKE3 hash of its bytes,
// and a repository copied file by file through the Backend interface opens
// and restores on its own.
func TestRepositoryFilesAreOpaque(t *testing.T) {
	ctx := context.Background()
	r, dir := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "plaintext-marker-dir")
	makeTree(t, src, 40)
	writeFile(t, filepath.Join(src, "marker.txt"), bytes.Repeat([]byte("PLAINTEXT-MARKER "), 1000), 0o644)
	host, _ := os.Hostname()
	sn, _, err := r.Backup(ctx, []string{src}, BackupOptions{Tags: []string{"TAG-MARKER"}})
	if err != nil {
		t.Fatal(err)
	}
	markers := [][]byte{[]byte("PLAINTEXT-MARKER"), []byte("plaintext-marker-dir"), []byte("TAG-MARKER"), []byte("quick brown fox"), []byte(`"nodes"`)}
	if len(host) > 4 {
		markers = append(markers, []byte(host))
	}
	n := 0
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		b, _ := os.ReadFile(p)
		n++
		if strings.HasPrefix(rel, "keys/") {
			return nil
		}
		for _, m := range markers {
			if bytes.Contains(b, m) {
				t.Errorf("%s contains plaintext %q", rel, m)
			}
		}
		if rel != "config" {
			if name := filepath.Base(p); name != ID(blake3.Sum256(b)).String() {
				t.Errorf("%s is not named by the hash of its content", rel)
			}
		}
		return nil
	})
	if n < 6 {
		t.Fatalf("only %d files in the repository", n)
	}

	// Rebuild the repository elsewhere from its files alone.
	from, _ := backend.NewLocal(dir)
	copyDir := filepath.Join(t.TempDir(), "copy")
	to, _ := backend.NewLocal(copyDir)
	if err := to.Create(ctx); err != nil {
		t.Fatal(err)
	}
	for _, ft := range backend.AllTypes {
		from.List(ctx, ft, func(fi backend.FileInfo) error {
			h := backend.Handle{Type: ft, Name: fi.Name}
			b, err := from.Load(ctx, h, 0, 0)
			if err != nil {
				t.Fatal(err)
			}
			return to.Save(ctx, h, b)
		})
	}
	r2, err := Open(ctx, to, testPass, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	target := t.TempDir()
	if _, err := r2.Restore(ctx, sn.ID, target, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, src, filepath.Join(target, filepath.Base(src)))
}
