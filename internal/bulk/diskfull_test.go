package bulk

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestDiskFullThenResume receives into a small tmpfs: the copy fails with a
// clear disk-full error, nothing is left under the final name, and after
// the file system grows --resume finishes the copy from the kept blocks.
func TestDiskFullThenResume(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	p := newPair(t)
	mnt := filepath.Join(p.root, "small")
	os.Mkdir(mnt, 0o755)
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=6m"); err != nil {
		t.Skipf("cannot mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	src := filepath.Join(t.TempDir(), "f")
	data := writeRandom(t, src, 10<<20)
	opts := Options{Streams: 2, BlockSize: 256 << 10}
	rep, err := p.client.SendFiles(context.Background(), p.addr, []string{src}, "small/f", opts)
	if !errors.Is(err, ErrDestFull) {
		t.Fatalf("got %v, want ErrDestFull", err)
	}
	t.Logf("reported: %v", err)
	if _, err := os.Stat(filepath.Join(mnt, "f")); !os.IsNotExist(err) {
		t.Fatalf("final file exists after disk full: %v", err)
	}
	if out, err := exec.Command("mount", "-o", "remount,size=32m", mnt).CombinedOutput(); err != nil {
		t.Fatalf("growing tmpfs: %v %s", err, out)
	}
	opts.Resume = true
	rep, err = p.client.SendFiles(context.Background(), p.addr, []string{src}, "small/f", opts)
	if err != nil {
		t.Fatal(err)
	}
	mustEqualFile(t, filepath.Join(mnt, "f"), data)
	if rep.Resumed < 4<<20 {
		t.Errorf("resumed only %d bytes: the blocks stored before the disk filled were not kept", rep.Resumed)
	}
}
