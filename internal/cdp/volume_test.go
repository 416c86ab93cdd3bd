package cdp

import (
	"bytes"
	"context"
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
