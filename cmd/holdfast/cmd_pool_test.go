package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/pool"
)

// TestPoolProcessesSurviveSIGKILLedPeer runs five real agent processes,
// backs up to one with `backup --server`, waits for peer protection, kills
// the busiest holder with SIGKILL, and checks that `pool status` shows
// protection restored on the others within a bound.
func TestPoolProcessesSurviveSIGKILLedPeer(t *testing.T) {
	t.Setenv("HOLDFAST_PASSWORD", "cli pool test")
	root := t.TempDir()
	names := []string{"e", "a", "b", "c", "d"}
	procs := map[string]*exec.Cmd{}
	state := func(n string) string { return filepath.Join(root, n) }
	start := func(n string) {
		c := pool.DefaultConfig()
		c.K, c.M, c.Capacity = 2, 1, 256<<20
		c.ScanInterval = pool.Duration{Duration: 300 * time.Millisecond}
		c.DeadAfter = pool.Duration{Duration: 2 * time.Second}
		c.Gossip = "local"
		if err := pool.WriteConfig(state(n), c); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(holdfastBin, "agent", "--state", state(n), "--log-level", "warn")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		procs[n] = cmd
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		waitStatus(t, state(n))
	}
	listenOf := func(n string) string {
		var st struct{ Listen string }
		json.Unmarshal([]byte(run(t, "status", "--state", state(n), "--json").stdout), &st)
		return st.Listen
	}
	if r := run(t, "cluster", "init", "--state", state("e"), "--name", "e", "--listen", "127.0.0.1:0"); r.code != 0 {
		t.Fatalf("init: %s", r.stderr)
	}
	start("e")
	caAddr := listenOf("e")
	for _, n := range names[1:] {
		tok := strings.TrimSpace(run(t, "cluster", "token", "--state", state("e")).stdout)
		if r := run(t, "cluster", "join", caAddr, "--token", tok, "--state", state(n), "--name", n, "--listen", "127.0.0.1:0", "--label", "zone=z-"+n); r.code != 0 {
			t.Fatalf("join %s: %s", n, r.stderr)
		}
		start(n)
	}
	src := filepath.Join(root, "src")
	os.MkdirAll(src, 0o755)
	for i := 0; i < 8; i++ {
		b := make([]byte, 300<<10)
		for j := range b {
			b[j] = byte(j*7 + i*13 + j>>9)
		}
		os.WriteFile(filepath.Join(src, "f"+string(rune('0'+i))), b, 0o644)
	}
	if r := run(t, "backup", "--server", state("a"), "--repo", "laptop", src); r.code != 0 {
		t.Fatalf("backup --server: exit %d: %s", r.code, r.stderr)
	}
	if r := run(t, "pool", "protect", "--state", state("a"), "--wait", "60s", "--level", "1"); r.code != 0 {
		t.Fatalf("pool protect --wait: exit %d: %s", r.code, r.stderr)
	}
	status := func() pool.Status {
		var st pool.Status
		r := run(t, "pool", "status", "--state", state("a"), "--json")
		if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
			t.Fatalf("pool status --json: %v: %s %s", err, r.stdout, r.stderr)
		}
		return st
	}
	st := status()
	if st.Protection != 1 || len(st.Backups) != 1 || st.Backups[0].Repo != "laptop" || st.LocalUsed == 0 {
		t.Fatalf("status after protection: %+v", st)
	}
	if r := run(t, "pool", "status", "--state", state("a")); !strings.Contains(r.stdout, "survives 1 more peer loss") {
		t.Errorf("pool status text lacks the protection level:\n%s", r.stdout)
	}
	victim, most := "", 0
	for _, p := range st.Peers {
		if p.Holds > most {
			victim, most = p.Name, p.Holds
		}
	}
	if err := procs[victim].Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	procs[victim].Wait()
	killed := time.Now()
	bound := 20 * time.Second
	for {
		st = status()
		gone := false
		for _, p := range st.Peers {
			if p.Name == victim && p.Holds > 0 {
				gone = true
			}
		}
		if !gone && st.Protection == 1 {
			break
		}
		if time.Since(killed) > bound {
			t.Fatalf("protection not restored %v after SIGKILL of %s: %+v", bound, victim, st)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("SIGKILL of %s (held %d shards): protection restored after %v", victim, most, time.Since(killed).Round(time.Millisecond))
}
