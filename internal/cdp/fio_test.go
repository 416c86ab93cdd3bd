package cdp

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestFioVerifyAndBlockStatus has fio write random 4 KiB blocks at queue
// depth 16 with checksums and verify them through the server, then maps the
// export with nbdinfo --map (BLOCK_STATUS over structured replies).
func TestFioVerifyAndBlockStatus(t *testing.T) {
	needTools(t, "fio", "nbdinfo")
	s := startSite(t, testConfig(shortDir(t)), nil)
	if _, err := s.m.Create(context.Background(), CreateOptions{Name: "v", Size: 32 << 20}); err != nil {
		t.Fatal(err)
	}
	// fio leaves a verify state file (local-verify-0-verify.state) in its
	// working directory: keep it out of the source tree.
	work := t.TempDir()
	for _, rw := range []string{"randwrite", "write"} {
		cmd := exec.Command("fio", "--name=verify", "--ioengine=nbd", "--uri="+s.uri("v"),
			"--rw="+rw, "--bs=4k", "--bssplit=4k/50:64k/30:1m/20", "--iodepth=16", "--size=16M",
			"--verify=crc32c", "--do_verify=1", "--verify_fatal=1")
		cmd.Dir = work
		out, err := cmd.CombinedOutput()
		if err != nil || strings.Contains(string(out), "verify:") && strings.Contains(string(out), "bad") {
			t.Fatalf("fio %s verify: %v\n%s", rw, err, out)
		}
		if !strings.Contains(string(out), "err= 0") {
			t.Fatalf("fio %s reported an error:\n%s", rw, out)
		}
	}
	out, err := exec.Command("nbdinfo", "--map", s.uri("v")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "data") {
		t.Fatalf("nbdinfo --map: %v\n%s", err, out)
	}
}

// TestBlockStatusHoles checks the base:allocation map nbdinfo reads:
// written ranges are data, never-written and zeroed ranges holes.
func TestBlockStatusHoles(t *testing.T) {
	needTools(t, "qemu-io", "nbdinfo")
	s := startSite(t, testConfig(shortDir(t)), nil)
	if _, err := s.m.Create(context.Background(), CreateOptions{Name: "v", Size: 16 << 20}); err != nil {
		t.Fatal(err)
	}
	qemuIO(t, s.uri("v"), "write -P 1 1M 1M", "write -P 2 8M 64k", "write -z 1M 512k")
	v, _ := s.m.Volume("v")
	v.kickApply()
	waitFor(t, "applier", 5*time.Second, func() bool { return v.dataApplied.Load() == v.applied.Load() })
	out, err := exec.Command("nbdinfo", "--map", s.uri("v")).CombinedOutput()
	if err != nil {
		t.Fatalf("nbdinfo --map: %v\n%s", err, out)
	}
	want := [][3]string{
		{"0", "1572864", "hole,zero"},
		{"1572864", "524288", "data"},
		{"2097152", "6291456", "hole,zero"},
		{"8388608", "65536", "data"},
		{"8454144", "8323072", "hole,zero"},
	}
	var got [][3]string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) == 4 {
			got = append(got, [3]string{f[0], f[1], f[3]})
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("map:\n%s\nwant %v", out, want)
	}
}
