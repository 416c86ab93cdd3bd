package repo

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/repo/backend"
	"golang.org/x/sys/unix"
)

func TestApplyPolicy(t *testing.T) {
	base := time.Date(2026, 3, 10, 12, 0, 0, 0, time.Local)
	// One snapshot every 6 hours for 40 days.
	var snaps []*Snapshot
	for i := 0; i < 160; i++ {
		snaps = append(snaps, &Snapshot{ID: ID{byte(i)}, Time: base.Add(-time.Duration(i) * 6 * time.Hour)})
	}
	snaps[100].Tags = []string{"keep"}
	for _, tc := range []struct {
		name string
		p    ForgetPolicy
		keep int
	}{
		{"last 5", ForgetPolicy{Last: 5}, 5},
		{"daily 7", ForgetPolicy{Daily: 7}, 7},
		{"hourly 3 (every snapshot is its own hour)", ForgetPolicy{Hourly: 3}, 3},
		{"weekly 4", ForgetPolicy{Weekly: 4}, 4},
		{"monthly 12 over 40 days (Jan, Feb, Mar)", ForgetPolicy{Monthly: 12}, 3},
		{"last 2 + daily 3 overlap", ForgetPolicy{Last: 2, Daily: 3}, 4},
		{"tag", ForgetPolicy{Tags: []string{"keep"}}, 1},
		{"yearly", ForgetPolicy{Yearly: 5}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			keep, remove := ApplyPolicy(snaps, tc.p)
			if len(keep) != tc.keep || len(keep)+len(remove) != len(snaps) {
				t.Fatalf("kept %d removed %d, want kept %d of %d", len(keep), len(remove), tc.keep, len(snaps))
			}
			if tc.p.Last > 0 && keep[0] != snaps[0] {
				t.Fatal("newest snapshot not kept")
			}
		})
	}
}

func TestForgetPruneCheck(t *testing.T) {
	ctx := context.Background()
	r, dir := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src, 10)
	var ids []ID
	for i := 0; i < 3; i++ {
		// Each round replaces a big file with new random content.
		writeFile(t, filepath.Join(src, "round.bin"), randBytes(newRand(uint64(i)), 2<<20), 0o644)
		sn, _, err := r.Backup(ctx, []string{src}, BackupOptions{Time: time.Now().Add(time.Duration(i) * time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, sn.ID)
	}
	if _, err := r.Forget(ctx, ForgetPolicy{}, ForgetOptions{}); err == nil {
		t.Fatal("empty policy accepted")
	}
	var forgetProg []Progress
	groups, err := r.Forget(ctx, ForgetPolicy{Last: 1}, ForgetOptions{Progress: func(p Progress) { forgetProg = append(forgetProg, p) }})
	if err != nil {
		t.Fatal(err)
	}
	if len(groups) != 1 || len(groups[0].Remove) != 2 || groups[0].Keep[0].ID != ids[2] {
		t.Fatalf("forget groups %+v", groups)
	}
	if n := len(forgetProg); n != 2 || forgetProg[n-1].Files != 2 || forgetProg[n-1].TotalFiles != 2 {
		t.Fatalf("forget progress %+v, want 1/2 then 2/2", forgetProg)
	}
	before, _ := r.Stats(ctx)
	var pruneProg []Progress
	res, err := r.Prune(ctx, PruneOptions{Progress: func(p Progress) { pruneProg = append(pruneProg, p) }})
	if err != nil {
		t.Fatal(err)
	}
	// Progress goes through the phases in order and ends with every file
	// prune removed counted.
	phases := map[string]int{"marking": 0, "repacking": 1, "deleting": 2}
	last := -1
	for _, p := range pruneProg {
		ph, ok := phases[p.Phase]
		if !ok || ph < last || p.Files > p.TotalFiles {
			t.Fatalf("prune progress out of order or over its total: %+v", pruneProg)
		}
		last = ph
	}
	end := pruneProg[len(pruneProg)-1]
	removed := int64(res.IndexFilesRemoved + res.PacksRepacked + res.PacksDeleted + res.PacksUnreferenced)
	if pruneProg[0].Phase != "marking" || pruneProg[0].TotalFiles != 1 || end.Phase != "deleting" || end.Files != removed || end.TotalFiles != removed {
		t.Fatalf("prune progress %+v, want marking of 1 snapshot first and deleting %d files last", pruneProg, removed)
	}
	if res.BytesAfter >= res.BytesBefore-3<<20 {
		t.Fatalf("prune freed only %d bytes (%d -> %d), want the two old round.bin versions", res.BytesBefore-res.BytesAfter, res.BytesBefore, res.BytesAfter)
	}
	r2 := reopen(t, dir)
	if res, err := r2.Check(ctx, CheckOptions{ReadData: true}); err != nil || len(res.UnreferencedPacks) != 0 {
		t.Fatalf("check after prune: %v %+v", err, res)
	}
	after, _ := r2.Stats(ctx)
	if after.Snapshots != 1 || after.StoredBytes >= before.StoredBytes {
		t.Fatalf("stats after prune %+v, before %+v", after, before)
	}
	target := t.TempDir()
	if _, err := r2.Restore(ctx, ids[2], target, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, src, filepath.Join(target, "src"))
	// A second prune finds nothing to do.
	res, err = r2.Prune(ctx, PruneOptions{})
	if err != nil || res.PacksDeleted+res.PacksRepacked+res.PacksUnreferenced != 0 {
		t.Fatalf("second prune %+v %v, want no work", res, err)
	}
}

// TestPruneWaitsForConcurrentBackup holds a backup after it stored its data
// but before it wrote its snapshot (the moment a careless prune would
// delete the new, still unreferenced packs) and checks that prune is
// refused, and that both then complete correctly.
func TestPruneWaitsForConcurrentBackup(t *testing.T) {
	ctx := context.Background()
	r, dir := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src, 11)
	reached, release := make(chan struct{}), make(chan struct{})
	testHookBackupBeforeSnapshot = func() { close(reached); <-release }
	t.Cleanup(func() { testHookBackupBeforeSnapshot = nil })
	var sn *Snapshot
	var berr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		sn, _, berr = r.Backup(ctx, []string{src}, BackupOptions{})
	}()
	<-reached
	other := reopen(t, dir) // a second process, in effect
	if _, err := other.Prune(ctx, PruneOptions{}); !errors.Is(err, ErrLocked) {
		t.Fatalf("prune during a backup = %v, want ErrLocked", err)
	}
	if _, err := other.Forget(ctx, ForgetPolicy{Last: 1}, ForgetOptions{}); !errors.Is(err, ErrLocked) {
		t.Fatalf("forget during a backup = %v, want ErrLocked", err)
	}
	close(release)
	<-done
	testHookBackupBeforeSnapshot = nil
	if berr != nil {
		t.Fatal(berr)
	}
	if _, err := other.Prune(ctx, PruneOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Check(ctx, CheckOptions{ReadData: true}); err != nil {
		t.Fatal(err)
	}
	target := t.TempDir()
	if _, err := other.Restore(ctx, sn.ID, target, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, src, filepath.Join(target, "src"))
}

func TestConcurrentBackupsIntoOneRepository(t *testing.T) {
	ctx := context.Background()
	_, dir := newTestRepo(t)
	const clients = 3
	srcs := make([]string, clients)
	for i := range srcs {
		srcs[i] = filepath.Join(t.TempDir(), fmt.Sprintf("client%d", i))
		makeTree(t, srcs[i], uint64(20+i)) // distinct content, plus shared text.txt
	}
	var wg sync.WaitGroup
	snaps := make([]*Snapshot, clients)
	errs := make([]error, clients)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := reopen(t, dir) // each client opens the repository itself
			snaps[i], _, errs[i] = r.Backup(ctx, []string{srcs[i]}, BackupOptions{Hostname: fmt.Sprintf("host%d", i)})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
	}
	r := reopen(t, dir)
	if _, err := r.Check(ctx, CheckOptions{ReadData: true}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < clients; i++ {
		target := t.TempDir()
		if _, err := r.Restore(ctx, snaps[i].ID, target, RestoreOptions{}); err != nil {
			t.Fatal(err)
		}
		compareTrees(t, srcs[i], filepath.Join(target, filepath.Base(srcs[i])))
	}
	// Blobs stored twice by racing clients are folded by prune.
	if _, err := r.Prune(ctx, PruneOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Check(ctx, CheckOptions{ReadData: true}); err != nil {
		t.Fatal(err)
	}
}

func TestStaleLockIgnored(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t)
	l, err := r.Lock(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	// Rewrite it as held by a process that does not exist.
	l.info.PID = 1 << 30
	if err := l.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	l2, err := r.Lock(ctx, true)
	if err != nil {
		t.Fatalf("a dead process's lock blocked: %v", err)
	}
	live, stale, _ := r.locks(ctx, l2.id)
	if len(live) != 0 || len(stale) != 0 {
		t.Fatalf("after taking the lock: live %v stale %v; the stale lock should be gone", live, stale)
	}
}

func TestMetadataRoundTrip(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "meta")
	os.MkdirAll(src, 0o755)
	writeFile(t, filepath.Join(src, "a"), []byte("hard linked"), 0o604)
	if err := os.Link(filepath.Join(src, "a"), filepath.Join(src, "b")); err != nil {
		t.Fatal(err)
	}
	// A sparse file: 8 MiB hole, 4 KiB data, 8 MiB hole.
	sp := filepath.Join(src, "sparse")
	f, _ := os.Create(sp)
	f.WriteAt(randBytes(newRand(9), 4096), 8<<20)
	f.Truncate(16<<20 + 4096)
	f.Close()
	if err := unix.Mkfifo(filepath.Join(src, "fifo"), 0o620); err != nil {
		t.Fatal(err)
	}
	os.Symlink("/nonexistent/target", filepath.Join(src, "dangling"))
	os.Chmod(filepath.Join(src, "a"), 0o4755|0o604) // setuid survives if chmod comes after chown
	xattrOK := unix.Lsetxattr(filepath.Join(src, "a"), "user.holdfast", []byte("v1"), 0) == nil
	if os.Geteuid() == 0 {
		os.Lchown(filepath.Join(src, "sparse"), 1234, 5678)
		os.Lchown(filepath.Join(src, "dangling"), 4321, 8765)
	}
	old := time.Date(2001, 2, 3, 4, 5, 6, 7000, time.UTC)
	unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(src, "dangling"), []unix.Timespec{unix.NsecToTimespec(old.UnixNano()), unix.NsecToTimespec(old.UnixNano())}, unix.AT_SYMLINK_NOFOLLOW)
	os.Chtimes(src, old, old)

	sn, _, err := r.Backup(ctx, []string{src}, BackupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	target := t.TempDir()
	if _, err := r.Restore(ctx, sn.ID, target, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(target, "meta")
	compareTrees(t, src, dst)
	var sa, sb syscall.Stat_t
	syscall.Stat(filepath.Join(dst, "a"), &sa)
	syscall.Stat(filepath.Join(dst, "b"), &sb)
	if sa.Ino != sb.Ino || sa.Nlink != 2 {
		t.Errorf("hard link not restored: inodes %d/%d, links %d", sa.Ino, sb.Ino, sa.Nlink)
	}
	var ss syscall.Stat_t
	syscall.Stat(filepath.Join(dst, "sparse"), &ss)
	if ss.Blocks*512 > 1<<20 {
		t.Errorf("sparse file restored with %d bytes allocated, want holes", ss.Blocks*512)
	}
	if fi, err := os.Lstat(filepath.Join(dst, "fifo")); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Errorf("fifo not restored: %v %v", fi, err)
	}
	if fi, _ := os.Lstat(dst); !fi.ModTime().Equal(old) {
		t.Errorf("directory mtime %v, want %v", fi.ModTime(), old)
	}
	if xattrOK {
		buf := make([]byte, 16)
		n, err := unix.Lgetxattr(filepath.Join(dst, "a"), "user.holdfast", buf)
		if err != nil || string(buf[:n]) != "v1" {
			t.Errorf("xattr not restored: %q %v", buf[:n], err)
		}
	}
	if os.Geteuid() == 0 {
		var st syscall.Stat_t
		syscall.Lstat(filepath.Join(dst, "dangling"), &st)
		if st.Uid != 4321 || st.Gid != 8765 {
			t.Errorf("symlink owner %d:%d, want 4321:8765", st.Uid, st.Gid)
		}
	}
}

func TestKeys(t *testing.T) {
	ctx := context.Background()
	r, dir := newTestRepo(t)
	id, err := r.AddKey(ctx, "second", KDFParams{Time: 1, Memory: 64, Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	be, _ := backend.NewLocal(dir)
	r2, err := Open(ctx, be, "second", OpenOptions{})
	if err != nil {
		t.Fatalf("opening with the added key: %v", err)
	}
	defer r2.Close()
	keys, _ := r2.Keys(ctx)
	if len(keys) != 2 {
		t.Fatalf("%d keys, want 2", len(keys))
	}
	if _, err := r2.RemoveKey(ctx, id[:6]); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("removing the key in use: %v", err)
	}
	if _, err := r2.RemoveKey(ctx, r.keyName[:6]); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, be, testPass, OpenOptions{}); !errors.Is(err, ErrWrongPassword) {
		t.Fatalf("removed key still opens: %v", err)
	}
}

func TestDiffLsCatStats(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src, 12)
	a, _, _ := r.Backup(ctx, []string{src}, BackupOptions{})
	os.WriteFile(filepath.Join(src, "text.txt"), []byte("changed"), 0o640)
	os.RemoveAll(filepath.Join(src, "d", "e"))
	writeFile(t, filepath.Join(src, "new", "x"), []byte("x"), 0o644)
	os.Chmod(filepath.Join(src, "empty"), 0o600)
	b, _, err := r.Backup(ctx, []string{src}, BackupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d, err := r.Diff(ctx, a.ID, b.ID)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range d {
		got[e.Path] = e.Change
	}
	for p, c := range map[string]string{"/src/text.txt": "M", "/src/d/e/": "-", "/src/new/": "+", "/src/new/x": "+", "/src/empty": "U"} {
		if got[p] != c {
			t.Errorf("diff %s = %q, want %q (all: %v)", p, got[p], c, d)
		}
	}
	if _, ok := got["/src/big.bin"]; ok {
		t.Error("unchanged file in diff")
	}
	ls, err := r.Ls(ctx, b.ID, "/src/new")
	if err != nil || len(ls) != 2 || ls[1].Path != "/src/new/x" {
		t.Fatalf("ls = %+v, %v", ls, err)
	}
	if _, err := r.Ls(ctx, b.ID, "/nope"); err == nil {
		t.Fatal("ls of a missing path succeeded")
	}
	for _, kind := range []string{"config", "snapshot", "tree", "blob", "index", "pack", "key"} {
		id := ""
		switch kind {
		case "snapshot":
			id = "latest"
		case "tree":
			id = b.Tree.String()[:10]
		case "blob":
			id = ls[1].Path // replaced below
		}
		if kind == "blob" {
			var n *Node
			r.Walk(ctx, b.ID, func(p string, x *Node) error {
				if p == "src/new/x" {
					n = x
				}
				return nil
			})
			id = n.Content[0].String()
			out, err := r.Cat(ctx, kind, id)
			if err != nil || string(out) != "x" {
				t.Fatalf("cat blob = %q, %v", out, err)
			}
			continue
		}
		if kind == "index" || kind == "pack" || kind == "key" {
			id = "" // a unique prefix is needed; empty matches nothing
			if _, err := r.Cat(ctx, kind, id); err == nil {
				t.Fatalf("cat %s with an empty id succeeded", kind)
			}
			continue
		}
		out, err := r.Cat(ctx, kind, id)
		if err != nil || len(out) < 10 {
			t.Fatalf("cat %s = %q, %v", kind, out, err)
		}
	}
	st, err := r.Stats(ctx)
	if err != nil || st.Snapshots != 2 || st.RestoreSize <= st.RawBytes || st.Compression <= 1 {
		t.Fatalf("stats %+v %v: want 2 snapshots, dedup and compression", st, err)
	}
}

func TestCompressionSettings(t *testing.T) {
	ctx := context.Background()
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src, 50)
	for _, tc := range []struct {
		name     string
		min, max float64 // expected compression ratio bounds
	}{
		{"off", 0.9, 1.01},
		{"fastest", 1.08, 1000}, // makeTree is mostly random bytes
		{"default", 1.08, 1000},
		{"better", 1.08, 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be, _ := backend.NewLocal(filepath.Join(t.TempDir(), "repo"))
			opts := testInitOptions(t)
			opts.Compression = tc.name
			r, err := Init(ctx, be, testPass, opts)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			sn, _, err := r.Backup(ctx, []string{src}, BackupOptions{})
			if err != nil {
				t.Fatal(err)
			}
			st, _ := r.Stats(ctx)
			if st.Compression < tc.min || st.Compression > tc.max {
				t.Fatalf("compression ratio %.2f outside [%v, %v]", st.Compression, tc.min, tc.max)
			}
			target := t.TempDir()
			if _, err := r.Restore(ctx, sn.ID, target, RestoreOptions{}); err != nil {
				t.Fatal(err)
			}
			compareTrees(t, src, filepath.Join(target, "src"))
		})
	}
	be, _ := backend.NewLocal(filepath.Join(t.TempDir(), "repo"))
	opts := testInitOptions(t)
	opts.Compression = "lz4"
	if _, err := Init(ctx, be, testPass, opts); err == nil {
		t.Fatal("unknown compression accepted")
	}
}

// TestCheckTakesSharedLock holds a check in the middle of reading packs and
// checks that prune is refused meanwhile while a backup proceeds (shared
// locks), and that check itself is refused while an exclusive lock is held.
func TestCheckTakesSharedLock(t *testing.T) {
	ctx := context.Background()
	r, dir := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src, 12)
	if _, _, err := r.Backup(ctx, []string{src}, BackupOptions{}); err != nil {
		t.Fatal(err)
	}
	reached, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	done := make(chan error)
	go func() {
		_, err := r.Check(ctx, CheckOptions{ReadData: true, Progress: func(Progress) {
			once.Do(func() { close(reached); <-release })
		}})
		done <- err
	}()
	<-reached
	other := reopen(t, dir)
	if _, err := other.Prune(ctx, PruneOptions{}); !errors.Is(err, ErrLocked) {
		t.Fatalf("prune during a check = %v, want ErrLocked", err)
	}
	writeFile(t, filepath.Join(src, "during-check.txt"), []byte("written while check runs\n"), 0o644)
	if _, _, err := other.Backup(ctx, []string{src}, BackupOptions{}); err != nil {
		t.Fatalf("backup during a check (both shared) = %v", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	locks, err := other.listIDs(ctx, backend.LockFile)
	if err != nil || len(locks) != 0 {
		t.Fatalf("locks left after check and backup: %v %v", locks, err)
	}

	excl, err := other.Lock(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if res, err := r.Check(ctx, CheckOptions{}); !errors.Is(err, ErrLocked) || res != nil {
		t.Fatalf("check under an exclusive lock = %+v, %v; want ErrLocked", res, err)
	}
	excl.Unlock(ctx)
	if res, err := r.Check(ctx, CheckOptions{ReadData: true}); err != nil || res.Snapshots != 2 {
		t.Fatalf("check after unlock = %+v, %v; want 2 snapshots, no errors", res, err)
	}
}
