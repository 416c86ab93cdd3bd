package cdp

import (
	"context"
	"os/exec"
	"strings"
	"testing"
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
	for _, rw := range []string{"randwrite", "write"} {
		out, err := exec.Command("fio", "--name=verify", "--ioengine=nbd", "--uri="+s.uri("v"),
			"--rw="+rw, "--bs=4k", "--bssplit=4k/50:64k/30:1m/20", "--iodepth=16", "--size=16M",
			"--verify=crc32c", "--do_verify=1", "--verify_fatal=1").CombinedOutput()
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
