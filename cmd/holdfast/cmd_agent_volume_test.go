package main

import (
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startAgentProc runs `holdfast agent --state dir` until the test ends.
func startAgentProc(t *testing.T, dir string) {
	t.Helper()
	cmd := exec.Command(holdfastBin, "agent", "--state", dir)
	var log bytes.Buffer
	cmd.Stderr = &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("agent %s log:\n%s", dir, log.String())
		}
	})
	waitStatus(t, dir)
}

// TestAgentVolumesReplicateOverMTLS runs two real agents: a volume on a
// ships its CDP log to b over the cluster's mTLS wire, and a point restored
// from b's log alone reads back what was written, through a real NBD client.
func TestAgentVolumesReplicateOverMTLS(t *testing.T) {
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Skip("qemu-io not installed (Debian package qemu-utils)")
	}
	root := t.TempDir()
	a, b := filepath.Join(root, "a"), filepath.Join(root, "b")
	addrA := freePort(t)
	if r := run(t, "cluster", "init", "--state", a, "--name", "a", "--listen", addrA); r.code != 0 {
		t.Fatal(r.stderr)
	}
	startAgentProc(t, a)
	tok := strings.TrimSpace(run(t, "cluster", "token", "--state", a).stdout)
	if r := run(t, "cluster", "join", addrA, "--token", tok, "--state", b, "--name", "b", "--listen", freePort(t)); r.code != 0 {
		t.Fatal(r.stderr)
	}
	startAgentProc(t, b)

	if r := run(t, "volume", "create", "db", "--size", "64M", "--remote", "b", "--async", "--state", a); r.code != 0 {
		t.Fatalf("volume create: %s", r.stderr)
	}
	nbd := func(vol string) string {
		return fmt.Sprintf("nbd+unix:///%s?socket=%s", vol, filepath.Join(a, "nbd.sock"))
	}
	qemuIO := func(vol, op string) error {
		out, err := exec.Command("qemu-io", "-f", "raw", "-c", op, nbd(vol)).CombinedOutput()
		if err != nil || strings.Contains(string(out), "Pattern verification failed") {
			return fmt.Errorf("qemu-io %q on %s: %v\n%s", op, vol, err, out)
		}
		return nil
	}
	if err := qemuIO("db", "write -P 0x63 0 4M"); err != nil {
		t.Fatal(err)
	}
	if r := run(t, "volume", "mark", "db", "nightly", "--state", a); r.code != 0 {
		t.Fatal(r.stderr)
	}
	if err := qemuIO("db", "write -P 0x64 0 4M"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(run(t, "volume", "timeline", "db", "--remote", "b", "--kinds", "mark", "--state", a).stdout, "nightly") {
		if time.Now().After(deadline) {
			t.Fatal("the mark never reached b's remote log")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if r := run(t, "volume", "restore", "db", "--at", "nightly", "--as", "db-nightly", "--from-remote", "b", "--state", a); r.code != 0 {
		t.Fatalf("restore from remote: %s", r.stderr)
	}
	if err := qemuIO("db-nightly", "read -P 0x63 0 4M"); err != nil {
		t.Fatalf("restored point: %v", err)
	}
	if err := qemuIO("db", "read -P 0x64 0 4M"); err != nil {
		t.Fatalf("live volume: %v", err)
	}
}
