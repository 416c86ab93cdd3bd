package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// runVolumeCLI runs one holdfast command in-process and returns its output.
func runVolumeCLI(ctx context.Context, args ...string) (string, error) {
	root := newRootCommand()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

// TestVolumeCLI drives `holdfast volume serve` and the volume commands
// with qemu-io and qemu-img as the NBD clients.
func TestVolumeCLI(t *testing.T) {
	for _, tool := range []string{"qemu-io", "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (apt-get install qemu-utils)", tool)
		}
	}
	dir, err := os.MkdirTemp("", "hfvol")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		_, err := runVolumeCLI(ctx, "volume", "serve", "--state", dir, "--nbd-listen", "", "--log-level", "warn")
		served <- err
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("volume serve: %v", err)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := runVolumeCLI(ctx, "volume", "list", "--state", dir); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("volume serve did not come up")
		}
		time.Sleep(50 * time.Millisecond)
	}
	uri := func(v string) string { return "nbd+unix:///" + v + "?socket=" + filepath.Join(dir, "nbd.sock") }
	must := func(args ...string) string {
		t.Helper()
		out, err := runVolumeCLI(ctx, append(args, "--state", dir)...)
		if err != nil {
			t.Fatalf("holdfast %v: %v\n%s", args, err, out)
		}
		return out
	}
	qemuIO := func(u, c string) {
		t.Helper()
		if out, err := exec.Command("qemu-io", "-f", "raw", "-c", c, u).CombinedOutput(); err != nil || strings.Contains(string(out), "failed") {
			t.Fatalf("qemu-io %s: %v %s", c, err, out)
		}
	}

	if out := must("volume", "create", "db", "--size", "8M"); !strings.Contains(out, "volume db: 8388608 bytes, mode local") {
		t.Fatalf("create output: %s", out)
	}
	qemuIO(uri("db"), "write -P 0x61 0 1M")
	if out := must("volume", "mark", "db", "first"); !strings.Contains(out, `mark "first"`) {
		t.Fatalf("mark output: %s", out)
	}
	qemuIO(uri("db"), "write -P 0x62 0 1M")
	var tl struct {
		Points []struct {
			Seq   uint64 `json:"seq"`
			Kind  string `json:"kind"`
			Label string `json:"label"`
		} `json:"points"`
	}
	if err := json.Unmarshal([]byte(must("volume", "timeline", "db", "--kinds", "mark", "--json")), &tl); err != nil || len(tl.Points) != 1 || tl.Points[0].Label != "first" {
		t.Fatalf("timeline: %+v %v", tl, err)
	}
	must("volume", "restore", "db", "--at", "first", "--as", "db-first")
	expected := filepath.Join(dir, "exp.img")
	img := make([]byte, 8<<20)
	copy(img, bytes.Repeat([]byte{0x61}, 1<<20))
	os.WriteFile(expected, img, 0o600)
	if out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "raw", expected, uri("db-first")).CombinedOutput(); err != nil {
		t.Fatalf("restored volume differs: %v %s", err, out)
	}
	if out := must("volume", "list"); !strings.Contains(out, "db-first") || !strings.Contains(out, "db ") {
		t.Fatalf("list: %s", out)
	}
	if out := must("volume", "info", "db-first"); !strings.Contains(out, "restored from db@") {
		t.Fatalf("info: %s", out)
	}
	for _, bad := range [][]string{
		{"volume", "create", "x", "--size", "12345"},
		{"volume", "create", "db", "--size", "8M"},
		{"volume", "restore", "db", "--at", "no-such-mark", "--as", "y"},
		{"volume", "create", "z", "--size", "1M", "--sync"},
	} {
		if out, err := runVolumeCLI(ctx, append(bad, "--state", dir)...); err == nil {
			t.Errorf("holdfast %v succeeded: %s", bad, out)
		}
	}
	must("volume", "delete", "db-first")
	if _, err := runVolumeCLI(ctx, "volume", "info", "db-first", "--state", dir); err == nil {
		t.Fatal("deleted volume still described")
	}
}
