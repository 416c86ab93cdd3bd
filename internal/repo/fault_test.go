package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/holdfast/holdfast/internal/repo/backend"
)

// listRepoFiles returns every file in a repository directory with its size
// and modification time, to prove an operation wrote nothing.
func listRepoFiles(t *testing.T, dir string) string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, _ := d.Info()
		out = append(out, p+" "+fi.ModTime().String()+" "+string(rune(fi.Size())))
		return nil
	})
	sort.Strings(out)
	return strings.Join(out, "\n")
}

func TestWrongPassword(t *testing.T) {
	ctx := context.Background()
	r, dir := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src, 3)
	if _, _, err := r.Backup(ctx, []string{src}, BackupOptions{}); err != nil {
		t.Fatal(err)
	}
	before := listRepoFiles(t, dir)
	be, _ := backend.NewLocal(dir)
	for _, pass := range []string{"", "wrong", testPass + " ", strings.ToUpper(testPass)} {
		_, err := Open(ctx, be, pass, OpenOptions{Logger: testLogger(t)})
		if !errors.Is(err, ErrWrongPassword) {
			t.Errorf("Open(%q) = %v, want ErrWrongPassword", pass, err)
		}
	}
	if after := listRepoFiles(t, dir); after != before {
		t.Fatalf("a failed open changed the repository:\n%s\n---\n%s", before, after)
	}
	// No repository at all is a different error.
	empty, _ := backend.NewLocal(t.TempDir())
	if _, err := Open(ctx, empty, testPass, OpenOptions{}); !errors.Is(err, ErrNoRepository) {
		t.Fatalf("Open(empty dir) = %v, want ErrNoRepository", err)
	}
}

// flipBitInBlob flips one bit in the middle of the stored blob id.
func flipBitInBlob(t *testing.T, r *Repository, dir string, id ID) ID {
	t.Helper()
	loc, ok := r.idx.lookup(id)
	if !ok {
		t.Fatalf("blob %s not indexed", id.Short())
	}
	p := filepath.Join(dir, "data", loc.Pack.String()[:2], loc.Pack.String())
	os.Chmod(p, 0o600)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[int(loc.Offset)+int(loc.Length)/2] ^= 0x10
	if err := os.WriteFile(p, b, 0o400); err != nil {
		t.Fatal(err)
	}
	return loc.Pack
}

// TestBitFlipCheckAndRestore damages one small file's blob. In a format 1
// repository only that blob is damaged; in format 2 the blob shares its
// stored object (a group) with other small blobs, and check must name
// exactly the group's members and their files, and restore every other
// file intact.
func TestBitFlipCheckAndRestore(t *testing.T) {
	for _, version := range []int{1, 2} {
		t.Run(fmt.Sprintf("format%d", version), func(t *testing.T) { testBitFlip(t, version) })
	}
}

func testBitFlip(t *testing.T, version int) {
	ctx := context.Background()
	opts := testInitOptions(t)
	opts.FormatVersion = version
	r, dir := newTestRepoOpts(t, opts)
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src, 4)
	sn, _, err := r.Backup(ctx, []string{src}, BackupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := r.Check(ctx, CheckOptions{ReadData: true}); err != nil {
		t.Fatalf("check of a fresh repository: %v %+v", err, res.Errors)
	}
	// Damage the one chunk of d/b/f1a (a small file, one blob).
	files := map[ID][]string{} // blob -> files holding it
	var victim *Node
	r.Walk(ctx, sn.ID, func(p string, n *Node) error {
		if p == "src/d/b/f1a" {
			victim = n
		}
		for _, id := range n.Content {
			files[id] = append(files[id], p)
		}
		return nil
	})
	if victim == nil || len(victim.Content) == 0 {
		t.Fatalf("victim file not found or empty: %+v", victim)
	}
	vloc, _ := r.idx.lookup(victim.Content[0])
	if vloc.Grouped != (version >= 2) {
		t.Fatalf("format %d: small blob grouped = %v", version, vloc.Grouped)
	}
	// The blobs stored in the damaged object, and the files they are in.
	wantBlobs := map[ID]bool{}
	wantFiles := map[string]bool{}
	for _, b := range r.idx.packs[vloc.Pack].Blobs {
		if b.ID == vloc.ID || b.sameObject(vloc.PackedBlob) {
			wantBlobs[b.ID] = true
			for _, f := range files[b.ID] {
				wantFiles[f] = true
			}
		}
	}
	if version >= 2 && len(wantBlobs) < 2 {
		t.Fatalf("the victim's group holds %d blobs, want several", len(wantBlobs))
	}
	pack := flipBitInBlob(t, r, dir, victim.Content[0])

	r2 := reopen(t, dir)
	res, err := r2.Check(ctx, CheckOptions{ReadData: false})
	if err != nil {
		t.Fatalf("structural check should not read data: %v", err)
	}
	res, err = r2.Check(ctx, CheckOptions{ReadData: true})
	if !errors.Is(err, ErrCheckFailed) {
		t.Fatalf("check --read-data = %v, want ErrCheckFailed", err)
	}
	if len(res.DamagedPacks) != 1 || res.DamagedPacks[0] != pack.String() {
		t.Errorf("damaged packs %v, want [%s]", res.DamagedPacks, pack)
	}
	if len(res.DamagedBlobs) != len(wantBlobs) {
		t.Fatalf("damaged blobs %+v, want the %d of the damaged object", res.DamagedBlobs, len(wantBlobs))
	}
	for _, d := range res.DamagedBlobs {
		if !wantBlobs[d.ID] {
			t.Errorf("blob %s reported damaged, not in the damaged object", d.ID.Short())
		}
		if len(d.Files) != len(files[d.ID]) {
			t.Errorf("damaged blob %s attributed to %v, want %v", d.ID.Short(), d.Files, files[d.ID])
		}
		for i, f := range d.Files {
			if want := sn.ID.Short() + ":/" + files[d.ID][i]; i < len(files[d.ID]) && f != want {
				t.Errorf("damaged blob %s attributed to %s, want %s", d.ID.Short(), f, want)
			}
		}
	}
	if !wantFiles["src/d/b/f1a"] {
		t.Fatalf("the victim is not among the damaged files %v", wantFiles)
	}

	target := t.TempDir()
	sum, err := r2.Restore(ctx, sn.ID, target, RestoreOptions{})
	if !errors.Is(err, ErrRestoreIncomplete) {
		t.Fatalf("restore = %v, want ErrRestoreIncomplete", err)
	}
	if len(sum.Damaged) != len(wantFiles) {
		t.Errorf("damaged files %v, want %v", sum.Damaged, wantFiles)
	}
	for _, d := range sum.Damaged {
		if !wantFiles[d] {
			t.Errorf("restore reports %s damaged, not one of %v", d, wantFiles)
		}
	}
	// Every other file is restored intact.
	for f := range wantFiles {
		rel := strings.TrimPrefix(f, "src/")
		os.Remove(filepath.Join(src, rel))
		os.Remove(filepath.Join(target, "src", rel))
	}
	compareTrees(t, src, filepath.Join(target, "src"))
}

func TestBitFlipInTreePack(t *testing.T) {
	ctx := context.Background()
	r, dir := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src, 5)
	sn, _, err := r.Backup(ctx, []string{src}, BackupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var sub ID
	r.Walk(ctx, sn.ID, func(p string, n *Node) error {
		if p == "src/d/c" {
			sub = *n.Subtree
		}
		return nil
	})
	flipBitInBlob(t, r, dir, sub)
	r2 := reopen(t, dir)
	res, err := r2.Check(ctx, CheckOptions{})
	if !errors.Is(err, ErrCheckFailed) || len(res.Errors) == 0 || !strings.Contains(strings.Join(res.Errors, "\n"), "/src/d/c/") {
		t.Fatalf("check = %v, errors %v: want the damaged directory src/d/c named", err, res.Errors)
	}
	target := t.TempDir()
	if _, err := r2.Restore(ctx, sn.ID, target, RestoreOptions{}); !errors.Is(err, ErrRestoreIncomplete) {
		t.Fatalf("restore = %v, want ErrRestoreIncomplete", err)
	}
	// Everything outside the damaged directory is restored.
	os.RemoveAll(filepath.Join(src, "d", "c"))
	os.RemoveAll(filepath.Join(target, "src", "d", "c"))
	compareTrees(t, src, filepath.Join(target, "src"))
}

func TestUnreadableEntriesMakePartialBackup(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads files regardless of permissions; the CLI test TestCLIUnreadableFile covers this as an unprivileged user")
	}
	ctx := context.Background()
	r, _ := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src, 6)
	bad := filepath.Join(src, "secret")
	writeFile(t, bad, []byte("x"), 0o000)
	badDir := filepath.Join(src, "closed")
	os.Mkdir(badDir, 0o000)
	t.Cleanup(func() { os.Chmod(badDir, 0o755) })
	sn, sum, err := r.Backup(ctx, []string{src}, BackupOptions{})
	if !errors.Is(err, ErrPartial) || sn == nil {
		t.Fatalf("backup = %v, %v; want a snapshot and ErrPartial", sn, err)
	}
	if len(sum.Warnings) != 2 {
		t.Fatalf("warnings %v, want 2", sum.Warnings)
	}
	os.Remove(bad)
	target := t.TempDir()
	if _, err := r.Restore(ctx, sn.ID, target, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	os.Remove(badDir)
	compareTrees(t, src, filepath.Join(target, "src"))
}

func TestCorruptIndexAndSnapshotNamed(t *testing.T) {
	ctx := context.Background()
	r, dir := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src, 7)
	sn, _, err := r.Backup(ctx, []string{src}, BackupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "snapshots", sn.ID.String())
	os.Chmod(p, 0o600)
	b, _ := os.ReadFile(p)
	b[len(b)/2] ^= 1
	os.WriteFile(p, b, 0o400)
	_, err = r.Check(ctx, CheckOptions{})
	if !errors.Is(err, ErrCheckFailed) {
		t.Fatalf("check = %v, want ErrCheckFailed", err)
	}
	if _, err := r.LoadSnapshot(ctx, sn.ID); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("LoadSnapshot of a damaged file = %v, want a 'damaged' error", err)
	}
}

func TestRestoreIncludes(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src, 8)
	sn, _, err := r.Backup(ctx, []string{src}, BackupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		inc  []string
		want []string
	}{
		{[]string{"src/d/a"}, []string{"src", "src/d", "src/d/a", "src/d/a/f0a", "src/d/a/f5a", "src/d/a/f0b", "src/d/a/f5b", "src/d/a/f0c", "src/d/a/f5c", "src/d/a/f0d", "src/d/a/f5d"}},
		{[]string{"src/*.txt"}, []string{"src", "src/text.txt"}},
		{[]string{"src/link", "src/empty"}, []string{"src", "src/empty", "src/link"}},
	} {
		target := t.TempDir()
		if _, err := r.Restore(ctx, sn.ID, target, RestoreOptions{Includes: tc.inc}); err != nil {
			t.Fatal(err)
		}
		var got []string
		filepath.WalkDir(target, func(p string, d fs.DirEntry, err error) error {
			if p != target {
				rel, _ := filepath.Rel(target, p)
				got = append(got, rel)
			}
			return nil
		})
		sort.Strings(got)
		sort.Strings(tc.want)
		if strings.Join(got, ",") != strings.Join(tc.want, ",") {
			t.Errorf("include %v restored %v, want %v", tc.inc, got, tc.want)
		}
	}
	_ = bytes.Equal
}

// TestRestoreDoesNotFollowSymlinks restores over a target where a symlink
// to another directory sits in place of a snapshot directory and of a file:
// nothing may be written through them.
func TestRestoreDoesNotFollowSymlinks(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src, 60)
	sn, _, err := r.Backup(ctx, []string{src}, BackupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	target := t.TempDir()
	outside := t.TempDir()
	os.MkdirAll(filepath.Join(target, "src"), 0o755)
	if err := os.Symlink(outside, filepath.Join(target, "src", "d")); err != nil {
		t.Fatal(err)
	}
	victim := filepath.Join(outside, "victim")
	os.WriteFile(victim, []byte("keep me"), 0o644)
	if err := os.Symlink(victim, filepath.Join(target, "src", "text.txt")); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Restore(ctx, sn.ID, target, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 1 {
		t.Fatalf("restore wrote through a symlinked directory: %d entries outside", len(ents))
	}
	if b, _ := os.ReadFile(victim); string(b) != "keep me" {
		t.Fatalf("restore wrote through a symlinked file: %q", b)
	}
	compareTrees(t, src, filepath.Join(target, "src"))
}
