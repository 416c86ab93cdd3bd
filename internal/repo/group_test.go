package repo

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/repo/backend"
)

func TestPackHeaderGroups(t *testing.T) {
	blobs := []PackedBlob{
		{Type: DataBlob, ID: ID{1}, Offset: 0, Length: 100, RawLen: 90},
		{Type: DataBlob, Grouped: true, ID: ID{2}, Offset: 100, Length: 60, RawLen: 40, GroupOff: 0},
		{Type: DataBlob, Grouped: true, ID: ID{3}, Offset: 100, Length: 60, RawLen: 7, GroupOff: 40},
		{Type: TreeBlob, ID: ID{4}, Offset: 160, Length: 30, RawLen: 5},
		{Type: DataBlob, Grouped: true, ID: ID{5}, Offset: 190, Length: 29, RawLen: 0, GroupOff: 0},
	}
	hdr := encodePackHeader(blobs)
	if len(hdr) != 7*packEntrySize {
		t.Fatalf("header of %d bytes, want 7 entries (3 blobs, 2 groups of 2 and 1 members)", len(hdr))
	}
	got, err := decodePackHeader(hdr, 219)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(blobs) {
		t.Fatalf("decoded\n%v\nwant\n%v", got, blobs)
	}
	if _, err := decodePackHeader(hdr, 220); err == nil {
		t.Fatal("header covering less than the blob area accepted")
	}

	entry := func(typ byte, id byte, length, rawLen uint32) []byte {
		return appendPackEntry(nil, typ, ID{id}, length, rawLen)
	}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	bad := []struct {
		name string
		hdr  []byte
		want string
	}{
		{"group without members", entry(entryGroup, 0, 40, 0), "group of 0 members"},
		{"more members than entries", cat(entry(entryGroup, 0, 40, 2), entry(memberFlag, 1, 0, 3)), "group of 2 members"},
		{"member without flag", cat(entry(entryGroup, 0, 40, 1), entry(0, 1, 0, 3)), "not a group member"},
		{"member with a stored length", cat(entry(entryGroup, 0, 40, 1), entry(memberFlag, 1, 40, 3)), "not a group member"},
		{"member of unknown type", cat(entry(entryGroup, 0, 40, 1), entry(memberFlag|5, 1, 0, 3)), "not a group member"},
		{"member outside a group", entry(memberFlag, 1, 40, 3), "unknown blob type"},
		{"group too large", cat(entry(entryGroup, 0, 40, 2), entry(memberFlag, 1, 0, MaxGroupSize), entry(memberFlag, 2, 0, 1)), "group plaintext above"},
		{"group shorter than its encryption", cat(entry(entryGroup, 0, 20, 1), entry(memberFlag, 1, 0, 3)), "too short"},
	}
	for _, c := range bad {
		_, err := decodePackHeader(c.hdr, 40)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %q", c.name, err, c.want)
		}
	}
}

func TestIndexVersions(t *testing.T) {
	plain := []IndexPack{{ID: ID{7}, Size: 500, Blobs: []PackedBlob{{Type: DataBlob, ID: ID{1}, Offset: 0, Length: 100, RawLen: 90}}}}
	b := encodeIndex(plain)
	if b[4] != indexVersion {
		t.Fatalf("index without groups written as version %d, want %d (readable by format 1 readers)", b[4], indexVersion)
	}
	grouped := []IndexPack{{ID: ID{7}, Size: 500, Blobs: []PackedBlob{
		{Type: DataBlob, ID: ID{1}, Offset: 0, Length: 100, RawLen: 90},
		{Type: DataBlob, Grouped: true, ID: ID{2}, Offset: 100, Length: 80, RawLen: 300, GroupOff: 0},
		{Type: DataBlob, Grouped: true, ID: ID{3}, Offset: 100, Length: 80, RawLen: 200, GroupOff: 300},
	}}}
	b = encodeIndex(grouped)
	if b[4] != indexVersionV2 {
		t.Fatalf("index with groups written as version %d, want %d", b[4], indexVersionV2)
	}
	got, err := decodeIndex(b)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(grouped) {
		t.Fatalf("decoded %v, want %v", got, grouped)
	}
	// A version 1 index cannot hold grouped blobs.
	b[4] = indexVersion
	if _, err := decodeIndex(b); err == nil || !strings.Contains(err.Error(), "unknown blob type") {
		t.Fatalf("grouped blob in a version 1 index: err = %v", err)
	}
	// A member reaching past the largest group is refused.
	grouped[0].Blobs[2].GroupOff = MaxGroupSize - 10
	if _, err := decodeIndex(encodeIndex(grouped)); err == nil || !strings.Contains(err.Error(), "outside its group") {
		t.Fatalf("member past MaxGroupSize: err = %v", err)
	}
}

func TestIncompressible(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	random := randBytes(rng, 512<<10)
	text := bytes.Repeat([]byte("the quick brown fox jumps over the lazy dog 0123456789\n"), 10000)[:512<<10]
	mixed := append(append(append([]byte(nil), random[:200<<10]...), text[:100<<10]...), random[:212<<10]...)
	zeros := make([]byte, 512<<10)
	cases := []struct {
		name string
		data []byte
		want bool
	}{
		{"random", random, true},
		{"text", text, false},
		{"random with text in the middle", mixed, false},
		{"zeros", zeros, false},
		{"small random", random[:64<<10], false},
	}
	r, _ := newTestRepo(t)
	for _, c := range cases {
		if got := incompressible(c.data); got != c.want {
			t.Errorf("%s: incompressible = %v, want %v", c.name, got, c.want)
		}
		// What sealBlob stores follows the guess: raw for random data,
		// compressed otherwise, and it always decodes to the input.
		bp, enc := r.sealBlob(c.data)
		plain, err := r.crypt.open(nil, enc)
		if err != nil {
			t.Fatal(err)
		}
		if raw := plain[0] == frameRaw; raw != c.want && c.name != "small random" {
			t.Errorf("%s: stored raw = %v, want %v", c.name, raw, c.want)
		}
		obp, out, err := r.openBlob(enc, len(c.data))
		if err != nil || !bytes.Equal(out, c.data) {
			t.Errorf("%s: round trip failed: %v", c.name, err)
		}
		if err == nil {
			putBuf(obp)
		}
		putBuf(bp)
	}
	// Text with random bytes exactly where the samples fall looks random
	// to the guess: a lone chunk is then stored raw, but a group (whose
	// members are different files) is always compressed.
	tricky := append([]byte(nil), text...)
	for _, off := range []int{0, len(tricky)/2 - incompressibleSample/2, len(tricky) - incompressibleSample} {
		copy(tricky[off:off+incompressibleSample], random)
	}
	if !incompressible(tricky) {
		t.Fatal("samples of random bytes not taken for incompressible data")
	}
	for _, guess := range []bool{true, false} {
		bp, enc := r.sealObject(tricky, guess)
		plain, err := r.crypt.open(nil, enc)
		if err != nil {
			t.Fatal(err)
		}
		if raw := plain[0] == frameRaw; raw != guess {
			t.Errorf("sealObject(guess %v): stored raw = %v", guess, raw)
		}
		if !guess && len(enc) > len(tricky)/2 {
			t.Errorf("group of mostly text stored in %d bytes of %d", len(enc), len(tricky))
		}
		putBuf(bp)
	}
}

// writeTextFiles writes n small text files of a shared vocabulary (like
// source files) under dir and returns their paths.
func writeTextFiles(t *testing.T, dir string, n int, seed uint64) []string {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 9))
	words := make([]string, 500)
	for i := range words {
		w := make([]byte, 2+rng.IntN(8))
		for j := range w {
			w[j] = byte('a' + rng.IntN(26))
		}
		words[i] = string(w)
	}
	var paths []string
	for i := 0; i < n; i++ {
		var b bytes.Buffer
		for b.Len() < 2000+rng.IntN(20000) {
			b.WriteString(words[rng.IntN(len(words))])
			b.WriteByte(" \n"[rng.IntN(2)])
		}
		p := filepath.Join(dir, fmt.Sprintf("d%d", i%7), fmt.Sprintf("f%03d.txt", i))
		writeFile(t, p, b.Bytes(), 0o644)
		paths = append(paths, p)
	}
	return paths
}

// TestGroupsStoreSmallFilesTogether backs up many small text files into a
// format 1 and a format 2 repository: format 2 puts them in groups, stores
// them in less space, and restores and checks them.
func TestGroupsStoreSmallFilesTogether(t *testing.T) {
	ctx := context.Background()
	src := filepath.Join(t.TempDir(), "src")
	writeTextFiles(t, src, 300, 1)
	stored := map[int]int64{}
	for _, version := range []int{1, 2} {
		opts := testInitOptions(t)
		opts.FormatVersion = version
		r, dir := newTestRepoOpts(t, opts)
		sn, sum, err := r.Backup(ctx, []string{src}, BackupOptions{})
		if err != nil {
			t.Fatal(err)
		}
		stored[version] = sum.BytesStored
		grouped, objects := 0, map[BlobLocation]bool{}
		for _, p := range r.idx.allPacks() {
			for _, b := range p.Blobs {
				if b.Grouped {
					grouped++
					objects[BlobLocation{Pack: p.ID, PackedBlob: PackedBlob{Offset: b.Offset}}] = true
				}
			}
		}
		if version == 1 && grouped != 0 {
			t.Fatalf("format 1: %d grouped blobs", grouped)
		}
		if version == 2 && (grouped < 300 || len(objects) >= grouped/10) {
			t.Fatalf("format 2: %d grouped blobs in %d groups, want the 300 files in groups of more than 10", grouped, len(objects))
		}
		if res, err := reopen(t, dir).Check(ctx, CheckOptions{ReadData: true}); err != nil {
			t.Fatalf("format %d: check: %v %v", version, err, res.Errors)
		}
		target := t.TempDir()
		if _, err := reopen(t, dir).Restore(ctx, sn.ID, target, RestoreOptions{}); err != nil {
			t.Fatal(err)
		}
		compareTrees(t, src, filepath.Join(target, "src"))
	}
	// Text files compressed together, even at level 1, take less room
	// than each compressed on its own at level 3.
	if stored[2] >= stored[1]*9/10 {
		t.Fatalf("format 2 stored %d bytes, format 1 %d: want at least 10%% less", stored[2], stored[1])
	}
}

// TestPruneRepacksGroups forgets a snapshot whose files share groups with
// files that stay: prune must keep exactly the live members (copying
// whole groups that are all live, storing the live members of mixed
// groups again) and leave a repository that checks and restores.
func TestPruneRepacksGroups(t *testing.T) {
	ctx := context.Background()
	r, dir := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	paths := writeTextFiles(t, src, 200, 2)
	if _, _, err := r.Backup(ctx, []string{src}, BackupOptions{Time: time.Now().Add(-time.Hour)}); err != nil {
		t.Fatal(err)
	}
	// Remove every third file; the rest stay in the second snapshot.
	for i, p := range paths {
		if i%3 == 0 {
			os.Remove(p)
		}
	}
	sn2, _, err := r.Backup(ctx, []string{src}, BackupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Forget(ctx, ForgetPolicy{Last: 1}, ForgetOptions{}); err != nil {
		t.Fatal(err)
	}
	r = reopen(t, dir)
	live := map[ID]bool{}
	r.Walk(ctx, sn2.ID, func(p string, n *Node) error {
		for _, id := range n.Content {
			live[id] = true
		}
		if n.Subtree != nil {
			live[*n.Subtree] = true
		}
		return nil
	})
	live[mustSnapshot(t, r, sn2.ID).Tree] = true
	// Before: groups hold live and dead members.
	mixed := 0
	for _, p := range r.idx.allPacks() {
		byObject := map[uint32][2]int{}
		for _, b := range p.Blobs {
			if b.Grouped {
				c := byObject[b.Offset]
				if live[b.ID] {
					c[0]++
				} else {
					c[1]++
				}
				byObject[b.Offset] = c
			}
		}
		for _, c := range byObject {
			if c[0] > 0 && c[1] > 0 {
				mixed++
			}
		}
	}
	if mixed == 0 {
		t.Fatal("no group holds both live and dead blobs: the test proves nothing")
	}
	res, err := r.Prune(ctx, PruneOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.PacksRepacked == 0 || res.PacksWritten == 0 {
		t.Fatalf("prune repacked %d packs, wrote %d: want both > 0", res.PacksRepacked, res.PacksWritten)
	}
	r = reopen(t, dir)
	indexed := map[ID]bool{}
	for _, p := range r.idx.allPacks() {
		for _, b := range p.Blobs {
			if !live[b.ID] {
				t.Errorf("dead blob %s (grouped %v) kept by prune", b.ID.Short(), b.Grouped)
			}
			indexed[b.ID] = true
		}
	}
	for id := range live {
		if !indexed[id] {
			t.Errorf("live blob %s lost by prune", id.Short())
		}
	}
	if res, err := r.Check(ctx, CheckOptions{ReadData: true}); err != nil {
		t.Fatalf("check after prune: %v %v", err, res.Errors)
	}
	target := t.TempDir()
	if _, err := r.Restore(ctx, sn2.ID, target, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, src, filepath.Join(target, "src"))
}

func mustSnapshot(t *testing.T, r *Repository, id ID) *Snapshot {
	t.Helper()
	sn, err := r.LoadSnapshot(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return sn
}

// copyDir copies the regular files of src into dst.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		writeFile(t, filepath.Join(dst, rel), b, 0o600)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestReadFormat1Repository opens a repository written by holdfast before
// format 2 (testdata/format1, made by commit d08cc55's binary with
// `init --kdf-memory 64 --pack-size 1` and `backup src --tag fixture`),
// restores it, and backs up into it again: the new data must stay in the
// format 1 layout (no groups, version 1 index files).
func TestReadFormat1Repository(t *testing.T) {
	ctx := context.Background()
	const pass = "format one fixture"
	dir := filepath.Join(t.TempDir(), "repo")
	// git keeps no empty directories: make the layout first (Create
	// refuses a directory holding a config), then copy the files in.
	be, err := backend.NewLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := be.Create(ctx); err != nil {
		t.Fatal(err)
	}
	copyDir(t, filepath.Join("testdata", "format1", "repo"), dir)
	r, err := Open(ctx, be, pass, OpenOptions{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if v := r.Config().Version; v != 1 {
		t.Fatalf("fixture config version %d, want 1", v)
	}
	snaps, err := r.Snapshots(ctx)
	if err != nil || len(snaps) != 1 || len(snaps[0].Tags) != 1 || snaps[0].Tags[0] != "fixture" {
		t.Fatalf("snapshots %+v, %v: want the one tagged fixture", snaps, err)
	}
	if res, err := r.Check(ctx, CheckOptions{ReadData: true}); err != nil {
		t.Fatalf("check: %v %+v", err, res)
	}
	target := t.TempDir()
	if _, err := r.Restore(ctx, snaps[0].ID, target, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	restored := filepath.Join(target, "src")
	n := 0
	filepath.WalkDir(filepath.Join("testdata", "format1", "src"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(filepath.Join("testdata", "format1", "src"), p)
		want, _ := os.ReadFile(p)
		got, err := os.ReadFile(filepath.Join(restored, rel))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: restored %d bytes (%v), want %d identical bytes", rel, len(got), err, len(want))
		}
		n++
		return nil
	})
	if n != 9 {
		t.Fatalf("compared %d files, want the fixture's 9", n)
	}
	if fi, err := os.Stat(filepath.Join(restored, "docs", "note2.txt")); err != nil || !fi.ModTime().Equal(time.Date(2021, 3, 4, 5, 6, 7, 0, time.UTC)) {
		t.Errorf("note2.txt mtime not restored: %v %v", fi, err)
	}
	if target, err := os.Readlink(filepath.Join(restored, "link")); err != nil || target != "docs/note0.txt" {
		t.Errorf("symlink restored as %q, %v", target, err)
	}

	// A new backup into the old repository keeps the old layout.
	src := filepath.Join(t.TempDir(), "more")
	writeTextFiles(t, src, 30, 3)
	if _, _, err := r.Backup(ctx, []string{src}, BackupOptions{}); err != nil {
		t.Fatal(err)
	}
	r2, err := Open(ctx, be, pass, OpenOptions{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	ids, _ := r2.listIDs(ctx, backend.IndexFile)
	if len(ids) < 2 {
		t.Fatalf("%d index files after a second backup", len(ids))
	}
	for _, id := range ids {
		plain, err := r2.loadFile(ctx, backend.IndexFile, id)
		if err != nil {
			t.Fatal(err)
		}
		if plain[4] != indexVersion {
			t.Errorf("index %s is version %d in a format 1 repository", id.Short(), plain[4])
		}
	}
	for _, p := range r2.idx.allPacks() {
		for _, b := range p.Blobs {
			if b.Grouped {
				t.Fatalf("grouped blob %s in a format 1 repository", b.ID.Short())
			}
		}
	}
	if res, err := r2.Check(ctx, CheckOptions{ReadData: true}); err != nil {
		t.Fatalf("check after a new backup: %v %+v", err, res)
	}
}
