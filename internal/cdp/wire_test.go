package cdp

import (
	"bytes"
	"context"
	"strconv"
	"testing"
	"time"
)

// TestRemoteOverWire replicates a volume to a second Manager over real
// mTLS wire sessions on loopback TCP and restores from the remote log
// alone.
func TestRemoteOverWire(t *testing.T) {
	ctx := context.Background()
	siteB := startSite(t, testConfig(shortDir(t)), nil)
	dial, _ := wirePeer(t, siteB.m, "site-b")

	siteA := startSite(t, testConfig(shortDir(t)), dial)
	if _, err := siteA.m.Create(ctx, CreateOptions{Name: "v", Size: 2 << 20, Remote: "site-b", Mode: ModeSync}); err != nil {
		t.Fatal(err)
	}
	v, _ := siteA.m.Volume("v")
	want := make([]byte, 2<<20)
	for i := 0; i < 40; i++ {
		p := bytes.Repeat([]byte{byte(i + 1)}, 8192)
		off := int64(i*37%250) * 8192
		if err := v.WriteAt(ctx, p, off, false); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], p)
	}
	last := v.log.NextSeq() - 1
	siteA.stop()
	siteA2 := startSite(t, testConfig(shortDir(t)), dial)
	if _, err := siteA2.m.Restore(ctx, RestoreOptions{Name: "v", At: strconv.FormatUint(last, 10), As: "back", FromRemote: "site-b"}); err != nil {
		t.Fatal(err)
	}
	rv, _ := siteA2.m.Volume("back")
	got := make([]byte, len(want))
	if err := rv.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("volume restored over the wire differs")
	}
	waitFor(t, "fill over the wire", 10*time.Second, func() bool { in, _ := siteA2.m.Get(ctx, "back"); return in.FillDone })
}

// TestLargeWriteShipsOverWire writes 32 MiB at once (the largest NBD
// request) to a volume with a remote over the wire, whose frames are
// bounded to 16 MiB: the write is logged as records that fit shipments,
// and the remote log ends up identical.
func TestLargeWriteShipsOverWire(t *testing.T) {
	ctx := context.Background()
	siteB := startSite(t, testConfig(shortDir(t)), nil)
	dial, _ := wirePeer(t, siteB.m, "site-b")
	siteA := startSite(t, testConfig(shortDir(t)), dial)
	const size = 64 << 20
	if _, err := siteA.m.Create(ctx, CreateOptions{Name: "v", Size: size, Remote: "site-b"}); err != nil {
		t.Fatal(err)
	}
	v, _ := siteA.m.Volume("v")
	p := make([]byte, 32<<20)
	for i := range p {
		p[i] = byte(i / 4096)
	}
	if err := v.WriteAt(ctx, p, 8<<20, false); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(ctx, p[:0], 0, false); err != nil {
		t.Fatalf("zero-length write: %v", err)
	}
	last := v.log.NextSeq() - 1
	if last != 8 {
		t.Fatalf("a 32 MiB write became %d records, want 8 of 4 MiB", last)
	}
	waitFor(t, "shipped", 20*time.Second, func() bool {
		in, _ := siteA.m.Get(ctx, "v")
		return in.Replication.ShippedSeq == last
	})
	rv, err := siteB.m.replica("v")
	if err != nil {
		t.Fatal(err)
	}
	want, got := make([]byte, size), make([]byte, size)
	if err := v.ReadAt(ctx, want, 0); err != nil {
		t.Fatal(err)
	}
	if err := rv.readAtSeq(ctx, got, 0, last); err != nil || !bytes.Equal(got, want) || !bytes.Equal(want[8<<20:40<<20], p) {
		t.Fatalf("remote log differs after a 32 MiB write (err %v)", err)
	}
}
