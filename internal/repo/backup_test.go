package repo

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/holdfast/holdfast/internal/repo/backend"
)

func TestBackupRestoreRoundTrip(t *testing.T) {
	ctx := context.Background()
	r, dir := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src, 1)
	sn, sum, err := r.Backup(ctx, []string{src}, BackupOptions{Tags: []string{"t1"}})
	if err != nil {
		t.Fatal(err)
	}
	if sum.FilesNew != 44 || sum.FilesUnmodified != 0 {
		t.Fatalf("summary new=%d unmodified=%d, want 44/0", sum.FilesNew, sum.FilesUnmodified)
	}
	// big.bin and its copy share all chunks: stored data must be well below the total.
	if sum.DataAdded >= sum.TotalBytes-3<<20+1 {
		t.Fatalf("dedup failed: added %d of %d bytes", sum.DataAdded, sum.TotalBytes)
	}
	r2 := reopen(t, dir)
	target := t.TempDir()
	rsum, err := r2.Restore(ctx, sn.ID, target, RestoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rsum.Files != 45 {
		t.Errorf("restored %d files, want 45", rsum.Files)
	}
	compareTrees(t, src, filepath.Join(target, "src"))

	// Second backup with no change reads nothing.
	_, sum2, err := r2.Backup(ctx, []string{src}, BackupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sum2.BytesRead != 0 || sum2.FilesUnmodified != 44 || sum2.DataBlobs != 0 || sum2.TreeBlobs != 0 {
		t.Fatalf("unchanged re-backup: read %d bytes, unmodified %d, blobs %d/%d", sum2.BytesRead, sum2.FilesUnmodified, sum2.DataBlobs, sum2.TreeBlobs)
	}
	// Change one file: only it is read.
	writeFile(t, filepath.Join(src, "d", "a", "new"), []byte("hello"), 0o644)
	os.WriteFile(filepath.Join(src, "text.txt"), []byte("changed"), 0o640)
	sn3, sum3, err := r2.Backup(ctx, []string{src}, BackupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sum3.FilesNew != 1 || sum3.FilesChanged != 1 || sum3.BytesRead != 12 {
		t.Fatalf("incremental: new %d changed %d read %d, want 1/1/12", sum3.FilesNew, sum3.FilesChanged, sum3.BytesRead)
	}
	target3 := t.TempDir()
	if _, err := r2.Restore(ctx, sn3.ID, target3, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, src, filepath.Join(target3, "src"))
}

// TestBackupRefusesOwnRepository backs up a directory that holds the
// repository: refused (also through a symlink, and for the repository
// itself) with nothing written, accepted once an exclude leaves it out.
func TestBackupRefusesOwnRepository(t *testing.T) {
	ctx := context.Background()
	home := t.TempDir()
	writeFile(t, filepath.Join(home, "docs", "a.txt"), []byte("a document\n"), 0o644)
	be, err := backend.NewLocal(filepath.Join(home, "backups", "repo"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := Init(ctx, be, testPass, testInitOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "home-link")
	if err := os.Symlink(home, link); err != nil {
		t.Fatal(err)
	}
	for _, paths := range [][]string{{home}, {filepath.Join(home, "docs"), link}, {filepath.Join(home, "backups", "repo")}} {
		sn, _, err := r.Backup(ctx, paths, BackupOptions{})
		if !errors.Is(err, ErrBackupContainsRepository) || sn != nil {
			t.Fatalf("backup of %v = %v, %v; want ErrBackupContainsRepository", paths, sn, err)
		}
	}
	for _, typ := range []backend.FileType{backend.SnapshotFile, backend.PackFile, backend.IndexFile, backend.LockFile} {
		if ids, err := r.listIDs(ctx, typ); err != nil || len(ids) != 0 {
			t.Fatalf("refused backups left %v files: %v %v", typ, ids, err)
		}
	}
	for _, ex := range []string{"backups", filepath.Join(home, "backups", "repo")} {
		sn, sum, err := r.Backup(ctx, []string{home}, BackupOptions{Excludes: []string{ex}})
		if err != nil {
			t.Fatalf("backup excluding %q: %v", ex, err)
		}
		if sum.TotalFiles != 1 {
			t.Fatalf("backup excluding %q saved %d files, want only docs/a.txt", ex, sum.TotalFiles)
		}
		target := t.TempDir()
		if _, err := r.Restore(ctx, sn.ID, target, RestoreOptions{}); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(target, filepath.Base(home), "docs", "a.txt"))
		if err != nil || string(b) != "a document\n" {
			t.Fatalf("restored a.txt = %q, %v", b, err)
		}
	}
}

// TestBlobFraming checks how blobs are framed inside the encryption: zstd
// frames without their magic number (4 bytes less than a whole frame),
// incompressible data raw, and blobs written with whole frames (before the
// magic number was dropped) still decoded by both decoders.
func TestBlobFraming(t *testing.T) {
	r, _ := newTestRepo(t)
	text := bytes.Repeat([]byte("the same line of text, again and again\n"), 500)
	random := randBytes(newRand(7), 20000)
	for _, tc := range []struct {
		name  string
		plain []byte
		frame byte
	}{{"compressible", text, frameZstdBare}, {"incompressible", random, frameRaw}} {
		bp, enc := r.sealBlob(tc.plain)
		framed, err := r.crypt.open(nil, enc)
		if err != nil {
			t.Fatal(err)
		}
		if framed[0] != tc.frame {
			t.Fatalf("%s: frame %d, want %d", tc.name, framed[0], tc.frame)
		}
		whole := r.enc.EncodeAll(tc.plain, nil)
		if tc.frame == frameZstdBare && (len(framed) != 1+len(whole)-4 || bytes.HasPrefix(framed[1:], zstdMagic[:])) {
			t.Fatalf("%s: %d framed bytes, want a %d-byte frame less its magic number", tc.name, len(framed), len(whole))
		}
		for _, c := range [][]byte{enc, r.crypt.seal(nil, append([]byte{frameZstd}, whole...))} {
			got, err := r.decodeObject(c, len(tc.plain))
			if err != nil || !bytes.Equal(got, tc.plain) {
				t.Fatalf("%s: decodeObject: %v", tc.name, err)
			}
			obp, got, err := r.openBlob(append([]byte(nil), c...), len(tc.plain))
			if err != nil || !bytes.Equal(got, tc.plain) {
				t.Fatalf("%s: openBlob: %v", tc.name, err)
			}
			putBuf(obp)
		}
		putBuf(bp)
	}
}
