package cdp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

const testVolSize = 4 << 20

// patternOps write at several aligned and unaligned offsets, zero a range
// (WRITE_ZEROES) and overwrite earlier writes.
var patternOps = []op{
	{cmd: "write", off: 0, n: 64 << 10, pattern: 0x11},
	{cmd: "write", off: 1<<20 + 512, n: 4096, pattern: 0x22, markAfterOp: "after-two"},
	{cmd: "write", off: 3<<20 - 100, n: 300, pattern: 0x33},
	{cmd: "zero", off: 8 << 10, n: 16 << 10},
	{cmd: "write", off: 0, n: 4096, pattern: 0x44},
	{cmd: "write", off: testVolSize - 8192, n: 8192, pattern: 0x55},
}

// TestPointInTimeRestoreWithQemu writes patterns with qemu-io, records the
// sequence number and time after each, and restores every point (by
// sequence number, by time and by mark); each restored volume is compared
// with the expected image by qemu-img compare while it is still being
// filled in the background.
func TestPointInTimeRestoreWithQemu(t *testing.T) {
	needTools(t, "qemu-io", "qemu-img", "nbdinfo")
	dir := shortDir(t)
	s := startSite(t, testConfig(dir), nil)
	ctx := context.Background()
	if _, err := s.m.Create(ctx, CreateOptions{Name: "vol", Size: testVolSize}); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("nbdinfo", "--json", s.uri("vol")).CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte(`"export-size": 4194304`)) {
		t.Fatalf("nbdinfo: %v\n%s", err, out)
	}
	img := make([]byte, testVolSize)
	type point struct {
		seq      uint64
		at       time.Time
		expected string
		mark     string
	}
	points := []point{{seq: 0, expected: filepath.Join(dir, "exp-0.img")}}
	writeImage(t, points[0].expected, img)
	for i, o := range patternOps {
		qemuIO(t, s.uri("vol"), o.qemu())
		o.apply(img)
		p := point{expected: filepath.Join(dir, fmt.Sprintf("exp-%d.img", i+1))}
		writeImage(t, p.expected, img)
		if o.markAfterOp != "" {
			mp, err := s.m.Mark(ctx, "vol", o.markAfterOp)
			if err != nil {
				t.Fatal(err)
			}
			p.mark = o.markAfterOp
			p.seq = mp.Seq
		} else {
			in, _ := s.m.Get(ctx, "vol")
			p.seq = in.LastSeq
		}
		p.at = time.Now()
		points = append(points, p)
		time.Sleep(5 * time.Millisecond) // distinct timestamps
	}
	if err := qemuCompare(points[len(points)-1].expected, s.uri("vol")); err != nil {
		t.Fatalf("live volume differs from the expected image: %v", err)
	}
	tl, err := s.m.Timeline(ctx, "vol", TimelineQuery{Kinds: []string{"mark"}}, "")
	if err != nil || len(tl.Points) != 1 || tl.Points[0].Label != "after-two" {
		t.Fatalf("timeline of marks: %+v %v", tl, err)
	}
	for i, p := range points {
		ats := []string{strconv.FormatUint(p.seq, 10)}
		if !p.at.IsZero() {
			ats = append(ats, p.at.Format(time.RFC3339Nano))
		}
		if p.mark != "" {
			ats = append(ats, p.mark)
		}
		for j, at := range ats {
			name := fmt.Sprintf("r%d-%d", i, j)
			if _, err := s.m.Restore(ctx, RestoreOptions{Name: "vol", At: at, As: name}); err != nil {
				t.Fatalf("restore at %q: %v", at, err)
			}
			if err := qemuCompare(p.expected, s.uri(name)); err != nil {
				t.Errorf("restore at %q (point %d): %v", at, i, err)
			}
		}
	}
	// The comparison can fail: the first point differs from the last.
	if err := qemuCompare(points[len(points)-1].expected, s.uri("r0-0")); err == nil {
		t.Fatal("qemu-img compare found no difference between the empty and the last point")
	}
	// Writes to a restored volume do not change its source.
	qemuIO(t, s.uri("r1-0"), "write -P 0x99 0 4096")
	if err := qemuCompare(points[len(points)-1].expected, s.uri("vol")); err != nil {
		t.Fatalf("source changed by a write to its restore: %v", err)
	}
	// Restored volumes finish filling and then no longer need the source.
	waitFor(t, "fill of r3-0", 20*time.Second, func() bool { in, _ := s.m.Get(ctx, "r3-0"); return in.FillDone })
	if err := s.m.Delete(ctx, "r3-0"); err != nil {
		t.Fatal(err)
	}
	// Bad points are refused with a clear error.
	for _, at := range []string{"no-such-mark", "999999", "2001-01-01T00:00:00Z"} {
		if _, err := s.m.Restore(ctx, RestoreOptions{Name: "vol", At: at, As: "bad"}); err == nil {
			t.Errorf("restore at %q succeeded", at)
		}
	}
}

// TestRestoreFromRemoteAfterLocalSiteLost ships a volume's log to a second
// Manager (over the stand-in transport), destroys the first site, and
// restores each point from the remote log alone on a new, empty site.
func TestRestoreFromRemoteAfterLocalSiteLost(t *testing.T) {
	needTools(t, "qemu-io", "qemu-img", "nbdcopy")
	ctx := context.Background()
	siteB := startSite(t, testConfig(shortDir(t)), nil)
	dial, _ := wirePeer(t, siteB.m, "site-b")
	dirA := shortDir(t)
	siteA := startSite(t, testConfig(dirA), dial)
	if _, err := siteA.m.Create(ctx, CreateOptions{Name: "db", Size: testVolSize, Remote: "site-b", Mode: ModeAsync}); err != nil {
		t.Fatal(err)
	}
	img := make([]byte, testVolSize)
	var seqs []uint64
	var exps []string
	for i, o := range patternOps {
		qemuIO(t, siteA.uri("db"), o.qemu())
		o.apply(img)
		in, _ := siteA.m.Get(ctx, "db")
		seqs = append(seqs, in.LastSeq)
		exps = append(exps, filepath.Join(shortDir(t), fmt.Sprintf("exp-%d.img", i)))
		writeImage(t, exps[i], img)
	}
	if _, err := siteA.m.Mark(ctx, "db", "golden"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "replication to site-b", 10*time.Second, func() bool {
		in, _ := siteA.m.Get(ctx, "db")
		return in.Replication != nil && in.Replication.State == "ok" && in.Replication.ShippedSeq == in.LastSeq
	})
	// The local site is lost.
	siteA.stop()
	if err := os.RemoveAll(dirA); err != nil {
		t.Fatal(err)
	}
	siteA2 := startSite(t, testConfig(shortDir(t)), dial)
	tl, err := siteA2.m.Timeline(ctx, "db", TimelineQuery{Kinds: []string{"mark"}}, "site-b")
	if err != nil || len(tl.Points) != 1 || tl.Points[0].Label != "golden" {
		t.Fatalf("remote timeline: %+v %v", tl, err)
	}
	for i, seq := range seqs {
		name := fmt.Sprintf("db-%d", i)
		if _, err := siteA2.m.Restore(ctx, RestoreOptions{Name: "db", At: strconv.FormatUint(seq, 10), As: name, FromRemote: "site-b"}); err != nil {
			t.Fatal(err)
		}
		if err := qemuCompare(exps[i], siteA2.uri(name)); err != nil {
			t.Errorf("restore from the remote log at %d: %v", seq, err)
		}
	}
	if _, err := siteA2.m.Restore(ctx, RestoreOptions{Name: "db", At: "golden", As: "db-golden", FromRemote: "site-b"}); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(shortDir(t), "copy.img")
	if b, err := exec.Command("nbdcopy", siteA2.uri("db-golden"), out).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy: %v\n%s", err, b)
	}
	got, _ := os.ReadFile(out)
	if !bytes.Equal(got, img) {
		t.Fatal("nbdcopy of the volume restored from the remote log differs from the expected image")
	}
	waitFor(t, "fill from the remote", 20*time.Second, func() bool { in, _ := siteA2.m.Get(ctx, "db-golden"); return in.FillDone })
	// Once filled, the restored volume reads without the remote.
	siteB.stop()
	if err := qemuCompare(exps[len(exps)-1], siteA2.uri("db-golden")); err != nil {
		t.Fatalf("filled volume with the remote gone: %v", err)
	}
}

// TestRetentionFoldKeepsWindowRestorable folds old segments into the base
// image and checks that storage shrinks, points inside the window still
// restore exactly (also after a restart) and older ones are refused.
func TestRetentionFoldKeepsWindowRestorable(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(shortDir(t))
	cfg.SegmentBytes = 1 << 20
	s := startSite(t, cfg, nil)
	v := mustCreate(t, s.m, "vol", 2<<20)
	img := make([]byte, 2<<20)
	var seqs []uint64
	var snaps [][]byte
	for i := 0; i < 48; i++ {
		p := bytes.Repeat([]byte{byte(i + 1)}, 64<<10)
		off := int64(i%20) * 64 << 10
		off += int64(i%3) * 1000 // some unaligned
		if err := v.WriteAt(ctx, p, off, false); err != nil {
			t.Fatal(err)
		}
		copy(img[off:], p)
		seqs = append(seqs, v.log.NextSeq()-1)
		snaps = append(snaps, append([]byte(nil), img...))
	}
	before := v.log.Bytes()
	upTo, err := v.Fold(time.Now())
	if err != nil || upTo == 0 {
		t.Fatalf("fold: %d %v", upTo, err)
	}
	if v.log.Bytes() >= before {
		t.Fatalf("log did not shrink: %d -> %d", before, v.log.Bytes())
	}
	t.Logf("folded up to %d of %d; log %d -> %d bytes", upTo, seqs[len(seqs)-1], before, v.log.Bytes())
	check := func(m *Manager, tag string) {
		for i, seq := range seqs {
			name := fmt.Sprintf("%s-%d", tag, i)
			_, err := m.Restore(ctx, RestoreOptions{Name: "vol", At: strconv.FormatUint(seq, 10), As: name})
			if seq < upTo {
				if !errors.Is(err, ErrFolded) {
					t.Fatalf("restore at folded seq %d: %v, want ErrFolded", seq, err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("restore at %d: %v", seq, err)
			}
			rv, _ := m.Volume(name)
			got := make([]byte, len(img))
			if err := rv.ReadAt(ctx, got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, snaps[i]) {
				t.Fatalf("%s: restore at %d differs", tag, seq)
			}
		}
	}
	check(s.m, "a")
	s.stop()
	s2 := startSite(t, cfg, nil)
	if in, _ := s2.m.Get(ctx, "vol"); in.FoldSeq != upTo {
		t.Fatalf("fold seq after restart %d, want %d", in.FoldSeq, upTo)
	}
	check(s2.m, "b")
}

func mustCreate(t *testing.T, m *Manager, name string, size int64) *Volume {
	t.Helper()
	if _, err := m.Create(context.Background(), CreateOptions{Name: name, Size: size}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Volume(name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestRetentionFoldsInTheBackground sets a short window: the log is folded
// without being asked, and the volume still reads back its content.
func TestRetentionFoldsInTheBackground(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(shortDir(t))
	cfg.SegmentBytes = 1 << 20
	cfg.Retention = 100 * time.Millisecond
	cfg.FoldInterval = 50 * time.Millisecond
	s := startSite(t, cfg, nil)
	v := mustCreate(t, s.m, "vol", 4<<20)
	want := make([]byte, 4<<20)
	for i := 0; i < 64; i++ {
		p := bytes.Repeat([]byte{byte(i + 1)}, 64<<10)
		if err := v.WriteAt(ctx, p, int64(i%64)*64<<10, false); err != nil {
			t.Fatal(err)
		}
		copy(want[int64(i%64)*64<<10:], p)
	}
	// 4 MiB were logged in 1 MiB segments: all but the segment being
	// written are folded once older than the window.
	waitFor(t, "background fold", 10*time.Second, func() bool {
		in, _ := s.m.Get(ctx, "vol")
		return in.FoldSeq > 0 && in.LogBytes <= 2<<20
	})
	if _, err := s.m.Restore(ctx, RestoreOptions{Name: "vol", At: "now", As: "now"}); err != nil {
		t.Fatal(err)
	}
	rv, _ := s.m.Volume("now")
	got := make([]byte, len(want))
	if err := rv.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("restore of now after folding differs (err %v)", err)
	}
}

// TestRestoredVolumeProtectedRemotelyRestoresFromTheRemoteAlone restores a
// point as a new volume protected by a remote log, writes to it, loses the
// local site, and restores the new volume from the remote alone: the remote
// must hold what it started from (its base) as well as its own writes.
func TestRestoredVolumeProtectedRemotelyRestoresFromTheRemoteAlone(t *testing.T) {
	needTools(t, "qemu-io", "qemu-img")
	ctx := context.Background()
	siteB := startSite(t, testConfig(shortDir(t)), nil)
	dial, _ := wirePeer(t, siteB.m, "site-b")
	dirA := shortDir(t)
	siteA := startSite(t, testConfig(dirA), dial)
	const size = 4 * MaxBaseBytes // several base ranges, one of them all zeros
	if _, err := siteA.m.Create(ctx, CreateOptions{Name: "db", Size: size}); err != nil {
		t.Fatal(err)
	}
	img := make([]byte, size)
	for _, o := range append(patternOps, op{cmd: "write", off: size - MaxBaseBytes/2, n: 8192, pattern: 0x66}) {
		qemuIO(t, siteA.uri("db"), o.qemu())
		o.apply(img)
	}
	if _, err := siteA.m.Mark(ctx, "db", "point"); err != nil {
		t.Fatal(err)
	}
	qemuIO(t, siteA.uri("db"), "write -P 0x99 0 1M") // after the point: not in the restore
	if _, err := siteA.m.Restore(ctx, RestoreOptions{Name: "db", At: "point", As: "db2", Remote: "site-b", Mode: ModeAsync}); err != nil {
		t.Fatal(err)
	}
	own := op{cmd: "write", off: 2 << 20, n: 64 << 10, pattern: 0x77}
	qemuIO(t, siteA.uri("db2"), own.qemu())
	own.apply(img)
	if _, err := siteA.m.Mark(ctx, "db2", "own"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "db2 shipped with its base", 10*time.Second, func() bool {
		in, _ := siteA.m.Get(ctx, "db2")
		return in.Replication != nil && in.Replication.State == "ok" && in.Replication.ShippedSeq == in.LastSeq && in.LastSeq > 0
	})
	exp := filepath.Join(shortDir(t), "exp.img")
	writeImage(t, exp, img)
	siteA.stop()
	if err := os.RemoveAll(dirA); err != nil {
		t.Fatal(err)
	}
	siteA2 := startSite(t, testConfig(shortDir(t)), dial)
	if _, err := siteA2.m.Restore(ctx, RestoreOptions{Name: "db2", At: "own", As: "back", FromRemote: "site-b"}); err != nil {
		t.Fatal(err)
	}
	if err := qemuCompare(exp, siteA2.uri("back")); err != nil {
		t.Fatalf("restored volume recovered from the remote alone: %v", err)
	}
}
