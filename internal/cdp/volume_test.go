package cdp

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"
)

// TestReadsWhileApplyIsBehind holds the applier back: acknowledged writes
// (aligned, unaligned, zeroes) must read back from the log before they
// reach the image, and from the image after.
func TestReadsWhileApplyIsBehind(t *testing.T) {
	ctx := context.Background()
	s := startSite(t, testConfig(shortDir(t)), nil)
	v := mustCreate(t, s.m, "v", 1<<20)
	if !v.asyncApply {
		t.Fatal("a fresh CDP volume should apply asynchronously")
	}
	want := make([]byte, 1<<20)
	v.applyMu.Lock() // the applier cannot run
	steps := []struct {
		off  int64
		data []byte
		zero bool
	}{
		{0, bytes.Repeat([]byte{1}, 16384), false},
		{5000, bytes.Repeat([]byte{2}, 3000), false}, // inside blocks 1-1
		{4000, bytes.Repeat([]byte{3}, 200), false},  // across blocks 0-1
		{8192, make([]byte, 8192), true},             // zero blocks 2-3
		{100, make([]byte, 9000), true},              // unaligned zero
		{20000, bytes.Repeat([]byte{4}, 50000), false},
	}
	for _, st := range steps {
		var err error
		if st.zero {
			err = v.Zero(ctx, st.off, int64(len(st.data)), false)
		} else {
			err = v.WriteAt(ctx, st.data, st.off, false)
		}
		if err != nil {
			t.Fatal(err)
		}
		copy(want[st.off:], st.data)
	}
	got := make([]byte, len(want))
	if v.dataApplied.Load() >= v.applied.Load() {
		t.Fatal("the applier ran although it was held")
	}
	if err := v.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read through the log differs (err %v)", err)
	}
	v.applyMu.Unlock()
	v.kickApply()
	waitFor(t, "applier", 5*time.Second, func() bool { return v.dataApplied.Load() == v.applied.Load() })
	clear(got)
	if err := v.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read from the image differs (err %v)", err)
	}
}

// TestLazyLargeWritesWrittenOnce checks that writes of LazyApplyBytes and
// more stay in the log only (data.img does not get them), and read back
// right through smaller writes and zeroes over them, after a reopen of the
// volume, and after their log segments were folded into base.img; with
// the default, every write stays in the log only.
func TestLazyLargeWritesWrittenOnce(t *testing.T) {
	for _, lazy := range []int64{128 << 10, DefaultConfig("").LazyApplyBytes} {
		t.Run(fmt.Sprint(lazy), func(t *testing.T) { testLazyWrites(t, lazy) })
	}
}

func testLazyWrites(t *testing.T, lazyBytes int64) {
	ctx := context.Background()
	dir := shortDir(t)
	cfg := testConfig(dir)
	cfg.SegmentBytes = 1 << 20
	cfg.LazyApplyBytes = lazyBytes
	s := startSite(t, cfg, nil)
	const size = 8 << 20
	v := mustCreate(t, s.m, "v", size)
	want := make([]byte, size)
	write := func(v *Volume, off int64, n int, b byte) {
		t.Helper()
		p := bytes.Repeat([]byte{b}, n)
		if err := v.WriteAt(ctx, p, off, false); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], p)
	}
	write(v, 0, 1<<20, 0x11)   // lazy
	write(v, 8192, 4096, 0x22) // applied, over a lazy block
	if err := v.Zero(ctx, 512<<10, 64<<10, false); err != nil {
		t.Fatal(err)
	}
	clear(want[512<<10 : 576<<10])
	write(v, 2<<20, 256<<10, 0x33) // lazy
	for i := range 12 {            // fill a few segments
		write(v, 3<<20+int64(i%4)*(256<<10), 256<<10, byte(0x40+i))
	}
	write(v, 3<<20+4096, 4096, 0x55)
	check := func(v *Volume, what string) {
		t.Helper()
		v.kickApply()
		waitFor(t, "applier", 5*time.Second, func() bool { return v.dataApplied.Load() == v.applied.Load() })
		got := make([]byte, size)
		if err := v.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, want) {
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("%s: byte %d is %#x, want %#x (err %v)", what, i, got[i], want[i], err)
				}
			}
			t.Fatalf("%s: %v", what, err)
		}
	}
	check(v, "live")
	if v.lazy.count.Load() == 0 {
		t.Fatal("no block was left to the log")
	}
	img := make([]byte, 4096)
	if _, err := v.data.ReadAt(img, 0); err != nil || img[0] == 0x11 {
		t.Fatalf("data.img got the large write too (%#x, err %v)", img[0], err)
	}
	if _, err := v.data.ReadAt(img, 8192); err != nil || (img[0] == 0x22) != (lazyBytes > 4096) {
		t.Fatalf("data.img holds %#x where a 4 KiB write of 0x22 went (lazy from %d bytes; err %v)", img[0], lazyBytes, err)
	}
	s.stop()

	s = startSite(t, cfg, nil)
	v, err := s.m.Volume("v")
	if err != nil {
		t.Fatal(err)
	}
	check(v, "after reopen")
	upTo, err := v.Fold(time.Now().Add(time.Hour))
	if err != nil || upTo == 0 {
		t.Fatalf("fold: up to %d, %v", upTo, err)
	}
	if v.log.LatestSeq(0, ^uint64(0)) != 0 || !v.lazy.get(0) {
		t.Fatal("block 0 should now be lazy with its record folded")
	}
	check(v, "after the fold")
	s.stop()
	s = startSite(t, cfg, nil)
	v, _ = s.m.Volume("v")
	check(v, "after the fold and a reopen")
}
