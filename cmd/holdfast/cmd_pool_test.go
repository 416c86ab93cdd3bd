package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/agent"
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

// TestBackupServerPacksByBulk runs a real agent process with a TCP API and
// backs up to it with `backup --server HOST:PORT` from a client that only
// holds a cluster identity: the packs travel by bulk transfer and are
// adopted (the agent's metrics count every pack of at least the threshold,
// and nothing stays staged), and `check --read-data` and `restore` of the
// agent's copy verify the data.
func TestBackupServerPacksByBulk(t *testing.T) {
	t.Setenv("HOLDFAST_PASSWORD", "cli bulk test")
	root := t.TempDir()
	state, api, client, repoDir := startAPIAgent(t, root)
	// 40 MiB of incompressible files: two full 16 MiB packs and a rest.
	src := filepath.Join(root, "src")
	writeRandomTree(t, src, 10, 7)
	r := run(t, "backup", "--server", api, "--client-state", client, "--repo", "laptop", src)
	if r.code != 0 {
		t.Fatalf("backup --server: exit %d: %s", r.code, r.stderr)
	}
	var big, bigBytes int64
	filepath.WalkDir(filepath.Join(repoDir, "data"), func(p string, d fs.DirEntry, err error) error {
		if fi, e := d.Info(); err == nil && e == nil && fi.Mode().IsRegular() && fi.Size() >= pool.DefaultBulkThreshold {
			big, bigBytes = big+1, bigBytes+fi.Size()
		}
		return nil
	})
	packs, adopted := metric(t, state, "holdfast_pool_adopted_packs_total"), metric(t, state, "holdfast_pool_adopted_bytes_total")
	t.Logf("%d packs (%d bytes) adopted after bulk transfer", packs, adopted)
	if big < 2 || packs != big || adopted != bigBytes {
		t.Errorf("agent adopted %d packs (%d bytes); the repository holds %d packs ≥ %d bytes (%d bytes)", packs, adopted, big, pool.DefaultBulkThreshold, bigBytes)
	}
	if ents, _ := os.ReadDir(filepath.Join(state, "inbox", pool.AdoptDir, "laptop")); len(ents) != 0 {
		t.Errorf("%d files left staged", len(ents))
	}
	checkAndRestore(t, repoDir, src, 10)
}

// checkAndRestore runs `check --read-data` on the repository in repoDir,
// restores its latest snapshot and compares the n files of src.
func checkAndRestore(t *testing.T, repoDir, src string, n int) {
	t.Helper()
	if r := run(t, "check", "--repo", repoDir, "--read-data"); r.code != 0 {
		t.Fatalf("check --read-data of the agent's copy: exit %d: %s %s", r.code, r.stdout, r.stderr)
	}
	target := t.TempDir()
	if r := run(t, "restore", "latest", "--repo", repoDir, "--target", target); r.code != 0 {
		t.Fatalf("restore: exit %d: %s", r.code, r.stderr)
	}
	for i := 0; i < n; i++ {
		a, _ := os.ReadFile(filepath.Join(src, fmt.Sprintf("f%d", i)))
		b, err := os.ReadFile(filepath.Join(target, filepath.Base(src), fmt.Sprintf("f%d", i)))
		if err != nil || !bytes.Equal(a, b) {
			t.Fatalf("restored f%d differs: %v", i, err)
		}
	}
}

// startAPIAgent starts a real agent process in root/e with a TCP API on
// loopback and the default services, and joins a client identity in
// root/laptop that runs no agent. It returns the agent's state directory,
// its API address, the client's state directory and the directory of the
// pool repository "laptop".
func startAPIAgent(t *testing.T, root string) (state, api, client, repoDir string) {
	t.Helper()
	state, client = filepath.Join(root, "e"), filepath.Join(root, "laptop")
	if r := run(t, "cluster", "init", "--state", state, "--name", "e", "--listen", "127.0.0.1:0"); r.code != 0 {
		t.Fatalf("init: %s", r.stderr)
	}
	ac, err := agent.LoadConfig(state)
	if err != nil {
		t.Fatal(err)
	}
	ac.APIListen = freePort(t)
	if err := agent.WriteConfig(state, ac); err != nil {
		t.Fatal(err)
	}
	pc := pool.DefaultConfig()
	pc.K, pc.M, pc.Capacity, pc.Gossip = 1, 1, 1<<30, "off"
	if err := pool.WriteConfig(state, pc); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(holdfastBin, "agent", "--state", state, "--log-level", "warn")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitStatus(t, state)
	var st struct{ Listen string }
	json.Unmarshal([]byte(run(t, "status", "--state", state, "--json").stdout), &st)
	tok := strings.TrimSpace(run(t, "cluster", "token", "--state", state).stdout)
	if r := run(t, "cluster", "join", st.Listen, "--token", tok, "--state", client, "--name", "laptop", "--listen", "127.0.0.1:0"); r.code != 0 {
		t.Fatalf("join: %s", r.stderr)
	}
	return state, ac.APIListen, client, filepath.Join(state, pc.Dir, pool.LocalDir, "laptop")
}

// writeRandomTree writes n files of 4 MiB of incompressible bytes.
func writeRandomTree(t *testing.T, dir string, n int, seed uint64) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, seed+1))
	for i := 0; i < n; i++ {
		b := make([]byte, 4<<20)
		for j := 0; j < len(b); j += 8 {
			binary.LittleEndian.PutUint64(b[j:], rng.Uint64())
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%d", i)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestBackupServerKilledDuringBulk SIGKILLs `backup --server` once the
// agent has adopted its first pack, while more are on the way by bulk
// transfer: the repository on the agent stays sound (check --read-data),
// the next backup completes and restores, and what the killed client left
// lies only in the staging directory.
func TestBackupServerKilledDuringBulk(t *testing.T) {
	t.Setenv("HOLDFAST_PASSWORD", "cli bulk kill test")
	root := t.TempDir()
	state, api, client, repoDir := startAPIAgent(t, root)
	src := filepath.Join(root, "src")
	writeRandomTree(t, src, 48, 9)
	cmd := exec.Command(holdfastBin, "backup", "--server", api, "--client-state", client, "--repo", "laptop", src)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for metricOr(state, "holdfast_pool_adopted_packs_total", 0) < 1 {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatal("no pack adopted within 30s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	werr := cmd.Wait()
	killedAt := metric(t, state, "holdfast_pool_adopted_packs_total")
	t.Logf("backup SIGKILLed (%v) after %d packs adopted", werr, killedAt)
	if r := run(t, "check", "--repo", repoDir, "--read-data"); r.code != 0 {
		t.Fatalf("check --read-data after the kill: exit %d: %s %s", r.code, r.stdout, r.stderr)
	}
	if r := run(t, "backup", "--server", api, "--client-state", client, "--repo", "laptop", src); r.code != 0 {
		t.Fatalf("backup after the kill: exit %d: %s", r.code, r.stderr)
	}
	checkAndRestore(t, repoDir, src, 48)
	// Nothing but packs in the repository's data directory.
	filepath.WalkDir(filepath.Join(repoDir, "data"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasPrefix(d.Name(), ".") {
			t.Errorf("temporary file in the repository: %s", p)
		}
		return nil
	})
}

// metricOr is metric, or def when the agent does not answer.
func metricOr(state, name string, def int64) int64 {
	hc := unixClient(state)
	resp, err := hc.Get("http://agent/metrics")
	if err != nil {
		return def
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
				return int64(f)
			}
		}
	}
	return def
}

func unixClient(state string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", filepath.Join(state, agent.SocketFile))
	}}}
}

// metric reads one counter from an agent's /metrics on its unix socket.
func metric(t *testing.T, state, name string) int64 {
	t.Helper()
	v := metricOr(state, name, -1)
	if v < 0 {
		t.Fatalf("no metric %s from the agent in %s", name, state)
	}
	return v
}
