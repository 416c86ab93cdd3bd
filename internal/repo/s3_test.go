package repo

import (
	"context"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"testing"

	"github.com/holdfast/holdfast/internal/repo/backend"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

// TestS3Repository runs a whole backup, check, prune and restore cycle on
// the S3 backend against gofakes3, an in-process stand-in for a real S3
// server.
func TestS3Repository(t *testing.T) {
	ctx := context.Background()
	srv := httptest.NewServer(gofakes3.New(s3mem.New()).Server())
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	t.Setenv("AWS_ACCESS_KEY_ID", "test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "testsecret")
	loc := "s3:http://" + u.Host + "/backups/host1"
	be, err := backend.Open(loc)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Init(ctx, be, testPass, testInitOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src, 30)
	if _, _, err := r.Backup(ctx, []string{src}, BackupOptions{}); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(src, "more"), randBytes(newRand(3), 1<<20), 0o644)
	sn, sum, err := r.Backup(ctx, []string{src}, BackupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sum.FilesNew != 1 || sum.FilesUnmodified != 44 {
		t.Fatalf("incremental on S3: new %d unmodified %d", sum.FilesNew, sum.FilesUnmodified)
	}
	be2, _ := backend.Open(loc)
	r2, err := Open(ctx, be2, testPass, OpenOptions{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r2.Forget(ctx, ForgetPolicy{Last: 1}, ForgetOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := r2.Prune(ctx, PruneOptions{}); err != nil {
		t.Fatal(err)
	}
	if res, err := r2.Check(ctx, CheckOptions{ReadData: true}); err != nil {
		t.Fatalf("check on S3: %v %v", err, res.Errors)
	}
	target := t.TempDir()
	if _, err := r2.Restore(ctx, sn.ID, target, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, src, filepath.Join(target, "src"))
}
