package cdp

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// attachBlock exposes an export as a block device: nbdfuse makes it a file
// over FUSE, losetup a loop device. Everything is undone at cleanup.
func attachBlock(t *testing.T, uri string, readOnly bool) string {
	t.Helper()
	mnt := shortDir(t)
	args := []string{filepath.Join(mnt, "disk"), uri}
	if readOnly {
		args = append([]string{"-r"}, args...)
	}
	fuse := exec.Command("nbdfuse", args...)
	fuse.Stderr = tWriter{t}
	if err := fuse.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		exec.Command("fusermount3", "-u", mnt).Run()
		done := make(chan struct{})
		go func() { fuse.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			fuse.Process.Kill()
		}
	})
	waitFor(t, "nbdfuse file", 10*time.Second, func() bool {
		st, err := os.Stat(filepath.Join(mnt, "disk"))
		return err == nil && st.Size() > 0
	})
	largs := []string{"-f", "--show"}
	if readOnly {
		largs = append(largs, "-r")
	}
	out, err := exec.Command("losetup", append(largs, filepath.Join(mnt, "disk"))...).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

func mountFS(t *testing.T, dev string, opts string) string {
	t.Helper()
	dir := shortDir(t)
	args := []string{dev, dir}
	if opts != "" {
		args = append([]string{"-o", opts}, args...)
	}
	run(t, "mount", args...)
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	return dir
}

// TestExt4OnVolumeRestoreMarks puts an ext4 file system on a volume
// (nbdfuse + losetup), writes files, syncs and marks, and restores an
// earlier and a later mark: each restored volume, mounted read-only, has
// exactly the files it should.
func TestExt4OnVolumeRestoreMarks(t *testing.T) {
	needRoot(t)
	needTools(t, "nbdfuse", "fusermount3", "losetup", "mkfs.ext4")
	for _, dev := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(dev); err != nil {
			t.Skipf("no %s on this machine", dev)
		}
	}
	ctx := context.Background()
	s := startSite(t, testConfig(shortDir(t)), nil)
	if _, err := s.m.Create(ctx, CreateOptions{Name: "fs", Size: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	dev := attachBlock(t, s.uri("fs"), false)
	run(t, "mkfs.ext4", "-q", dev)
	dir := mountFS(t, dev, "")
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mark := func(label string) {
		run(t, "sync", "-f", dir)
		if _, err := s.m.Mark(ctx, "fs", label); err != nil {
			t.Fatal(err)
		}
	}
	write("a.txt", "one")
	mark("m1")
	write("a.txt", "one-changed")
	write("b.txt", "two")
	mark("m2")
	write("c.txt", "three")
	run(t, "sync", "-f", dir)
	run(t, "umount", dir)

	tests := []struct {
		mark    string
		files   map[string]string
		missing []string
	}{
		{"m1", map[string]string{"a.txt": "one"}, []string{"b.txt", "c.txt"}},
		{"m2", map[string]string{"a.txt": "one-changed", "b.txt": "two"}, []string{"c.txt"}},
	}
	for _, tc := range tests {
		t.Run(tc.mark, func(t *testing.T) {
			name := "fs-" + tc.mark
			if _, err := s.m.Restore(ctx, RestoreOptions{Name: "fs", At: tc.mark, As: name}); err != nil {
				t.Fatal(err)
			}
			rdev := attachBlock(t, s.uri(name), true)
			rdir := mountFS(t, rdev, "ro,noload")
			for f, want := range tc.files {
				got, err := os.ReadFile(filepath.Join(rdir, f))
				if err != nil || string(got) != want {
					t.Errorf("%s in restore at %s: %q %v, want %q", f, tc.mark, got, err, want)
				}
			}
			for _, f := range tc.missing {
				if _, err := os.Stat(filepath.Join(rdir, f)); !os.IsNotExist(err) {
					t.Errorf("%s should not exist in the restore at %s (err %v)", f, tc.mark, err)
				}
			}
		})
	}
}
