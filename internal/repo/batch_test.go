package repo

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// makeBatchTree builds directories whose file counts fall on and around
// the batch limits, files at and above batchBytes between small ones, and
// subdirectories whose names sort between files. It returns the number of
// regular files.
func makeBatchTree(t *testing.T, root string) int {
	t.Helper()
	rng := newRand(7)
	files := 0
	for _, n := range []int{0, 1, batchFiles - 1, batchFiles, batchFiles + 1, 3*batchFiles + 5} {
		dir := filepath.Join(root, fmt.Sprintf("n%03d", n))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < n; i++ {
			size := rng.IntN(4 << 10)
			if i%17 == 5 {
				size = batchBytes + rng.IntN(64<<10) // a batch of its own
			}
			writeFile(t, filepath.Join(dir, fmt.Sprintf("f%03d", i)), randBytes(rng, size), 0o644)
			files++
			if i%10 == 3 { // a subdirectory sorted between files
				writeFile(t, filepath.Join(dir, fmt.Sprintf("f%03d.d", i), "inner"), []byte(dir), 0o644)
				files++
			}
		}
	}
	return files
}

// checkTreeOrder walks a snapshot's trees and fails unless every tree lists
// exactly the entries of the source directory, in name order.
func checkTreeOrder(t *testing.T, r *Repository, id ID, src string, skip map[string]bool) {
	t.Helper()
	tr, err := r.LoadTree(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	var want, got []string
	for _, e := range ents {
		if !skip[filepath.Join(src, e.Name())] {
			want = append(want, e.Name())
		}
	}
	for _, n := range tr.Nodes {
		got = append(got, n.Name)
	}
	if !sort.StringsAreSorted(got) || strings.Join(got, "/") != strings.Join(want, "/") {
		t.Fatalf("%s: tree lists %v, want %v", src, got, want)
	}
	for _, n := range tr.Nodes {
		if n.Type == NodeDir {
			if n.Subtree == nil {
				t.Fatalf("%s/%s: directory without subtree", src, n.Name)
			}
			checkTreeOrder(t, r, *n.Subtree, filepath.Join(src, n.Name), skip)
		}
	}
}

func TestBackupBatchesKeepTreeOrder(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	files := makeBatchTree(t, src)
	sn, sum, err := r.Backup(ctx, []string{src}, BackupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sum.FilesNew != int64(files) || sum.TotalFiles != int64(files) {
		t.Fatalf("new %d total %d, want %d", sum.FilesNew, sum.TotalFiles, files)
	}
	root, err := r.LoadTree(ctx, sn.Tree)
	if err != nil {
		t.Fatal(err)
	}
	if len(root.Nodes) != 1 || root.Nodes[0].Subtree == nil {
		t.Fatalf("root tree %+v", root.Nodes)
	}
	checkTreeOrder(t, r, *root.Nodes[0].Subtree, src, nil)
	target := t.TempDir()
	if _, err := r.Restore(ctx, sn.ID, target, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, src, filepath.Join(target, "src"))

	// The same tree saved again gives the same root tree: entries in the
	// same order whatever the workers' timing.
	sn2, _, err := r.Backup(ctx, []string{src}, BackupOptions{NoParent: true})
	if err != nil {
		t.Fatal(err)
	}
	if sn2.Tree != sn.Tree {
		t.Fatalf("second backup's root tree %s differs from the first's %s", sn2.Tree.Short(), sn.Tree.Short())
	}
}

// TestBackupFilesVanishingInBatches removes files just before a worker
// opens them (which, unlike permissions, also fails as root): every one is
// reported, the backup is partial, the rest of each batch is saved.
func TestBackupFilesVanishingInBatches(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	files := makeBatchTree(t, src)
	gone := map[string]bool{}
	filepath.WalkDir(filepath.Join(src, "n101"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, "7") {
			gone[p] = true // some files of several batches
		}
		return nil
	})
	for i := 0; i < batchFiles; i++ { // one directory's every file
		gone[filepath.Join(src, fmt.Sprintf("n%03d", batchFiles), fmt.Sprintf("f%03d", i))] = true
	}
	gone[filepath.Join(src, "n001", "f000")] = true
	var mu sync.Mutex
	testHookBeforeRead = func(p string) {
		mu.Lock()
		defer mu.Unlock()
		if gone[p] {
			os.Remove(p)
		}
	}
	t.Cleanup(func() { testHookBeforeRead = nil })
	sn, sum, err := r.Backup(ctx, []string{src}, BackupOptions{})
	if !errors.Is(err, ErrPartial) || sn == nil {
		t.Fatalf("backup = %v, %v; want a snapshot and ErrPartial", sn, err)
	}
	if len(sum.Warnings) != len(gone) {
		t.Fatalf("%d warnings, want %d: %v", len(sum.Warnings), len(gone), sum.Warnings)
	}
	for _, w := range sum.Warnings {
		p, _, _ := strings.Cut(w, ": ")
		if !gone[p] {
			t.Errorf("warning for a file not removed: %s", w)
		}
	}
	if sum.FilesNew != int64(files-len(gone)) {
		t.Fatalf("saved %d files, want %d", sum.FilesNew, files-len(gone))
	}
	testHookBeforeRead = nil
	root, err := r.LoadTree(ctx, sn.Tree)
	if err != nil {
		t.Fatal(err)
	}
	checkTreeOrder(t, r, *root.Nodes[0].Subtree, src, nil) // the files are gone from src too
	target := t.TempDir()
	if _, err := r.Restore(ctx, sn.ID, target, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, src, filepath.Join(target, "src"))
}

// TestBackupCancelMidway cancels a backup while batches are queued and
// being read: Backup returns the cancellation promptly, saves no snapshot,
// leaves no goroutine behind, and the repository stays valid for the next
// backup.
func TestBackupCancelMidway(t *testing.T) {
	r, _ := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	rng := newRand(3)
	for d := 0; d < 20; d++ {
		for f := 0; f < 60; f++ {
			writeFile(t, filepath.Join(src, fmt.Sprintf("d%02d", d), fmt.Sprintf("f%02d", f)), randBytes(rng, 2000+rng.IntN(2000)), 0o644)
		}
	}
	before := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var reads atomic.Int64
	testHookBeforeRead = func(string) {
		if reads.Add(1) == 300 {
			cancel()
		}
	}
	t.Cleanup(func() { testHookBeforeRead = nil })
	done := make(chan struct{})
	var err error
	var sn *Snapshot
	go func() {
		sn, _, err = r.Backup(ctx, []string{src}, BackupOptions{})
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("backup did not return after cancellation")
	}
	if !errors.Is(err, context.Canceled) || sn != nil {
		t.Fatalf("backup = %v, %v; want context.Canceled and no snapshot", sn, err)
	}
	if n := reads.Load(); n >= 1200 {
		t.Fatalf("read all %d files despite the cancellation", n)
	}
	testHookBeforeRead = nil
	for i := 0; runtime.NumGoroutine() > before && i < 100; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Fatalf("%d goroutines after the backup, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
	snaps, err := r.Snapshots(context.Background())
	if err != nil || len(snaps) != 0 {
		t.Fatalf("snapshots after a cancelled backup: %d, %v", len(snaps), err)
	}
	sn, sum, err := r.Backup(context.Background(), []string{src}, BackupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sum.FilesNew != 1200 {
		t.Fatalf("next backup saved %d files, want 1200", sum.FilesNew)
	}
	res, err := r.Check(context.Background(), CheckOptions{ReadData: true})
	if err != nil || len(res.Errors) != 0 {
		t.Fatalf("check after a cancelled backup: %v, %v", res, err)
	}
	target := t.TempDir()
	if _, err := r.Restore(context.Background(), sn.ID, target, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, src, filepath.Join(target, "src"))
}
