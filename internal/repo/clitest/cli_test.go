package clitest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/repo"
	"github.com/holdfast/holdfast/internal/repo/backend"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// holdfastBinary builds cmd/holdfast once per test run.
func holdfastBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "holdfast-clitest-")
		if err != nil {
			buildErr = err
			return
		}
		os.Chmod(dir, 0o755) // the unreadable-file test runs it as nobody
		binPath = filepath.Join(dir, "holdfast")
		cmd := exec.Command("go", "build", "-o", binPath, "github.com/holdfast/holdfast/cmd/holdfast")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("building holdfast: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

type cli struct {
	t    *testing.T
	bin  string
	repo string
	env  []string
}

func newCLI(t *testing.T, repoDir string) *cli {
	pw := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(pw, []byte("secret-pass\n"), 0o600)
	return &cli{t: t, bin: holdfastBinary(t), repo: repoDir, env: []string{
		"HOLDFAST_REPOSITORY=" + repoDir, "HOLDFAST_PASSWORD_FILE=" + pw, "PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(),
	}}
}

// run runs holdfast and returns stdout, stderr and the exit code.
func (c *cli) run(args ...string) (string, string, int) {
	c.t.Helper()
	cmd := exec.Command(c.bin, args...)
	cmd.Env = c.env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		c.t.Fatalf("running holdfast %v: %v", args, err)
	}
	c.t.Logf("holdfast %s -> %d\n%s%s", strings.Join(args, " "), code, stdout.String(), stderr.String())
	return stdout.String(), stderr.String(), code
}

// ok runs holdfast and fails the test unless it exits 0.
func (c *cli) ok(args ...string) string {
	c.t.Helper()
	out, errOut, code := c.run(args...)
	if code != 0 {
		c.t.Fatalf("holdfast %v exited %d: %s", args, code, errOut)
	}
	return out
}

func (c *cli) init() {
	c.t.Helper()
	c.ok("init", "--kdf-memory", "64", "--pack-size", "1", "--chunk-size", "262144")
}

func randomFiles(t *testing.T, root string, n, size int, seed uint64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 7))
	for i := 0; i < n; i++ {
		p := filepath.Join(root, fmt.Sprintf("dir%02d", i%10), fmt.Sprintf("file%04d", i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		b := make([]byte, rng.IntN(size)+1)
		for j := 0; j < len(b); j += 8 {
			v := rng.Uint64()
			for k := 0; k < 8 && j+k < len(b); k++ {
				b[j+k] = byte(v >> (8 * k))
			}
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// sameTree fails unless every regular file under a has equal content under b.
func sameTree(t *testing.T, a, b string) int {
	t.Helper()
	n := 0
	filepath.Walk(a, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(a, p)
		q := filepath.Join(b, rel)
		if fi.Mode().IsRegular() {
			x, _ := os.ReadFile(p)
			y, err := os.ReadFile(q)
			if err != nil || !bytes.Equal(x, y) {
				t.Errorf("%s differs after restore (%v)", rel, err)
			}
			n++
		}
		return nil
	})
	return n
}

type backupJSON struct {
	Snapshot string       `json:"snapshot"`
	Summary  repo.Summary `json:"summary"`
}

func TestCLIWorkflow(t *testing.T) {
	c := newCLI(t, filepath.Join(t.TempDir(), "repo"))
	src := filepath.Join(t.TempDir(), "data")
	randomFiles(t, src, 60, 100<<10, 1)

	// Before init: no repository.
	if _, _, code := c.run("snapshots"); code != 10 {
		t.Fatalf("snapshots without a repository exited %d, want 10", code)
	}
	c.init()
	var b1 backupJSON
	if err := json.Unmarshal([]byte(c.ok("--json", "backup", src, "--tag", "first")), &b1); err != nil {
		t.Fatal(err)
	}
	if b1.Summary.FilesNew != 60 {
		t.Fatalf("first backup saw %d new files, want 60", b1.Summary.FilesNew)
	}
	os.WriteFile(filepath.Join(src, "dir00", "added"), []byte("new file"), 0o644)
	var b2 backupJSON
	json.Unmarshal([]byte(c.ok("--json", "backup", src, "--exclude", "dir09")), &b2)
	if b2.Summary.FilesNew != 1 || b2.Summary.FilesUnmodified != 54 {
		t.Fatalf("second backup new=%d unmodified=%d, want 1 and 54 (dir09 excluded)", b2.Summary.FilesNew, b2.Summary.FilesUnmodified)
	}
	var snaps []repo.Snapshot
	json.Unmarshal([]byte(c.ok("--json", "snapshots")), &snaps)
	if len(snaps) != 2 || !snaps[0].HasTag("first") || snaps[1].Parent == nil || *snaps[1].Parent != snaps[0].ID {
		t.Fatalf("snapshots %+v: want 2, the first tagged, the second with the first as parent", snaps)
	}
	ls := c.ok("ls", b2.Snapshot[:8], "/data/dir00")
	if !strings.Contains(ls, "/data/dir00/added") || strings.Contains(ls, "dir01") {
		t.Fatalf("ls output wrong:\n%s", ls)
	}
	diff := c.ok("diff", b1.Snapshot, b2.Snapshot)
	if !strings.Contains(diff, "+  /data/dir00/added") || !strings.Contains(diff, "-  /data/dir09/") {
		t.Fatalf("diff output wrong:\n%s", diff)
	}
	if cfg := c.ok("cat", "config"); !strings.Contains(cfg, `"pack_size": 1048576`) {
		t.Fatalf("cat config:\n%s", cfg)
	}
	var st repo.Stats
	json.Unmarshal([]byte(c.ok("--json", "stats")), &st)
	if st.Snapshots != 2 || st.Files != 60+55 {
		t.Fatalf("stats %+v: want 2 snapshots, 115 files", st)
	}
	if out := c.ok("check", "--read-data"); !strings.Contains(out, "no errors found") {
		t.Fatalf("check:\n%s", out)
	}
	target := t.TempDir()
	c.ok("restore", b1.Snapshot[:10], "--target", target)
	os.Remove(filepath.Join(src, "dir00", "added"))
	if n := sameTree(t, src, filepath.Join(target, "data")); n != 60 {
		t.Fatalf("compared %d files, want 60", n)
	}

	// Keys: add a second password, open with it, remove the first.
	newPW := filepath.Join(t.TempDir(), "pw2")
	os.WriteFile(newPW, []byte("second-pass"), 0o600)
	c.ok("key", "add", "--new-password-file", newPW, "--kdf-memory", "64")
	var keys []repo.KeyInfo
	json.Unmarshal([]byte(c.ok("--json", "key", "list")), &keys)
	if len(keys) != 2 {
		t.Fatalf("key list: %+v, want 2 keys", keys)
	}
	var first string
	for _, k := range keys {
		if k.Current {
			first = k.ID
		}
	}
	c2 := *c
	c2.env = append(append([]string(nil), c.env...), "HOLDFAST_PASSWORD_FILE="+newPW)
	c2.ok("key", "remove", first[:8])
	if _, _, code := c.run("snapshots"); code != 12 {
		t.Fatalf("the removed password still works (exit %d, want 12)", code)
	}
	c2.ok("snapshots")

	// Forget with retention and prune.
	c = &c2
	c.ok("forget", "--keep-last", "1", "--prune")
	json.Unmarshal([]byte(c.ok("--json", "snapshots")), &snaps)
	if len(snaps) != 1 || snaps[0].ID.String() != b2.Snapshot {
		t.Fatalf("after forget: %+v, want only %s", snaps, b2.Snapshot)
	}
	c.ok("check", "--read-data")
	target2 := t.TempDir()
	c.ok("restore", "latest", "--target", target2, "--include", "data/dir00")
	if _, err := os.Stat(filepath.Join(target2, "data", "dir00", "added")); err != nil {
		t.Fatalf("--include data/dir00 did not restore data/dir00/added: %v", err)
	}
	if _, err := os.Stat(filepath.Join(target2, "data", "dir01")); err == nil {
		t.Fatal("--include data/dir00 also restored data/dir01")
	}
}

func TestCLIWrongPassword(t *testing.T) {
	c := newCLI(t, filepath.Join(t.TempDir(), "repo"))
	c.init()
	src := t.TempDir()
	randomFiles(t, src, 3, 1000, 2)
	c.ok("backup", src)
	before := dirListing(t, c.repo)
	bad := *c
	bad.env = append(append([]string(nil), c.env...), "HOLDFAST_PASSWORD_FILE=/dev/null", "HOLDFAST_PASSWORD=nope")
	for _, args := range [][]string{{"backup", src}, {"snapshots"}, {"restore", "latest", "--target", t.TempDir()}, {"prune"}, {"check"}} {
		_, errOut, code := bad.run(args...)
		if code != 12 || !strings.Contains(errOut, "wrong password") {
			t.Errorf("%v with a wrong password: exit %d, stderr %q; want 12 and 'wrong password'", args, code, errOut)
		}
	}
	if after := dirListing(t, c.repo); after != before {
		t.Fatalf("wrong-password commands changed the repository")
	}
}

func dirListing(t *testing.T, dir string) string {
	var b strings.Builder
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil {
			fmt.Fprintf(&b, "%s %d %v\n", p, fi.Size(), fi.ModTime().UnixNano())
		}
		return nil
	})
	return b.String()
}

func TestCLIKillDuringBackup(t *testing.T) {
	c := newCLI(t, filepath.Join(t.TempDir(), "repo"))
	c.init()
	src := filepath.Join(t.TempDir(), "data")
	randomFiles(t, src, 200, 600<<10, 3) // ~60 MB of incompressible data
	cmd := exec.Command(c.bin, "backup", src)
	cmd.Env = c.env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// Kill it once it has stored some packs and written an index file,
	// but well before it is done.
	deadline := time.Now().Add(60 * time.Second)
	for {
		ents, _ := os.ReadDir(filepath.Join(c.repo, "index"))
		done := false
		for _, e := range ents {
			done = done || !strings.HasPrefix(e.Name(), ".tmp-") // not one still being written
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("backup wrote no index file within 60s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("backup was not killed (finished first?): %v\n%s", err, out.String())
	}
	if snaps, _ := os.ReadDir(filepath.Join(c.repo, "snapshots")); len(snaps) != 0 {
		t.Fatalf("a killed backup left %d snapshots", len(snaps))
	}
	// The repository is valid; the stale lock of the dead process is ignored.
	if out := c.ok("check", "--read-data"); !strings.Contains(out, "no errors found") {
		t.Fatalf("check after kill -9:\n%s", out)
	}
	var b backupJSON
	json.Unmarshal([]byte(c.ok("--json", "backup", src)), &b)
	if b.Summary.DataAdded >= b.Summary.TotalBytes || b.Summary.DataAdded == 0 {
		t.Fatalf("backup after kill added %d of %d bytes: want reuse of what the killed run stored", b.Summary.DataAdded, b.Summary.TotalBytes)
	}
	t.Logf("after kill -9 the next backup added %d of %d bytes", b.Summary.DataAdded, b.Summary.TotalBytes)
	c.ok("check", "--read-data")
	target := t.TempDir()
	c.ok("restore", "latest", "--target", target)
	if n := sameTree(t, src, filepath.Join(target, "data")); n != 200 {
		t.Fatalf("compared %d files, want 200", n)
	}
	c.ok("prune")
	c.ok("check", "--read-data")
}

func TestCLILockConflict(t *testing.T) {
	c := newCLI(t, filepath.Join(t.TempDir(), "repo"))
	c.init()
	src := t.TempDir()
	randomFiles(t, src, 3, 1000, 4)
	be, _ := backend.NewLocal(c.repo)
	r, err := repo.Open(context.Background(), be, "secret-pass", repo.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// A live shared lock (a backup in progress) blocks prune but not backup.
	l, err := r.Lock(context.Background(), false)
	if err != nil {
		t.Fatal(err)
	}
	c.ok("backup", src)
	if _, errOut, code := c.run("prune"); code != 11 || !strings.Contains(errOut, "locked") {
		t.Fatalf("prune under a shared lock: exit %d (%s), want 11", code, errOut)
	}
	l.Unlock(context.Background())
	// A live exclusive lock blocks backups.
	l, err = r.Lock(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, code := c.run("backup", src); code != 11 {
		t.Fatalf("backup under an exclusive lock: exit %d, want 11", code)
	}
	// ... and check, which takes a shared lock.
	if out, errOut, code := c.run("check"); code != 11 || !strings.Contains(errOut, "exclusive lock") || strings.Contains(out, "no errors found") {
		t.Fatalf("check under an exclusive lock: exit %d (%s%s), want 11", code, out, errOut)
	}
	l.Unlock(context.Background())
	c.ok("prune")
	c.ok("check")
}

// TestCLIBackupOfOwnRepository backs up a directory holding the repository:
// refused with a clear error, accepted with the repository excluded.
func TestCLIBackupOfOwnRepository(t *testing.T) {
	home := t.TempDir()
	c := newCLI(t, filepath.Join(home, "repo"))
	c.init()
	randomFiles(t, filepath.Join(home, "docs"), 3, 1000, 5)
	out, errOut, code := c.run("backup", home)
	if code != 1 || !strings.Contains(errOut, "holds the repository") || !strings.Contains(errOut, "--exclude") {
		t.Fatalf("backup of the repository's parent: exit %d, %q %q; want exit 1 naming the repository", code, out, errOut)
	}
	if snaps := c.ok("--json", "snapshots"); strings.TrimSpace(snaps) != "[]" {
		t.Fatalf("refused backup left snapshots: %s", snaps)
	}
	c.ok("backup", home, "--exclude", filepath.Join(home, "repo"))
	target := t.TempDir()
	c.ok("restore", "latest", "--target", target)
	if n := sameTree(t, filepath.Join(home, "docs"), filepath.Join(target, filepath.Base(home), "docs")); n != 3 {
		t.Fatalf("restored %d files, want 3", n)
	}
	if _, err := os.Stat(filepath.Join(target, filepath.Base(home), "repo")); !os.IsNotExist(err) {
		t.Fatalf("the excluded repository was restored: %v", err)
	}
}

func TestCLIUnreadableFile(t *testing.T) {
	c := newCLI(t, filepath.Join(t.TempDir(), "repo"))
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		// Root reads everything: run the backup as nobody instead.
		cred = &syscall.Credential{Uid: 65534, Gid: 65534}
	}
	base, err := os.MkdirTemp("", "holdfast-unreadable-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("chmod", "-R", "u+rwx", base).Run(); os.RemoveAll(base) })
	os.Chmod(base, 0o777)
	c.repo = filepath.Join(base, "repo")
	c.env[0] = "HOLDFAST_REPOSITORY=" + c.repo
	pw := filepath.Join(base, "pw")
	os.WriteFile(pw, []byte("secret-pass"), 0o644)
	c.env[1] = "HOLDFAST_PASSWORD_FILE=" + pw
	src := filepath.Join(base, "src")
	randomFiles(t, src, 5, 1000, 5)
	os.WriteFile(filepath.Join(src, "secret"), []byte("no"), 0o000)
	if cred != nil {
		exec.Command("chown", "-R", "65534:65534", src).Run()
		os.Chown(base, 65534, 65534)
		os.Chown(pw, 65534, 65534)
	}
	runAs := func(args ...string) (string, int) {
		cmd := exec.Command(c.bin, args...)
		cmd.Env = c.env
		if cred != nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		}
		out, err := cmd.CombinedOutput()
		t.Logf("holdfast %v:\n%s", args, out)
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return string(out), ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}
	if _, code := runAs("init", "--kdf-memory", "64"); code != 0 {
		t.Fatal("init failed")
	}
	out, code := runAs("backup", src)
	if code != 3 || !strings.Contains(out, "secret") || !strings.Contains(out, "permission denied") {
		t.Fatalf("backup with an unreadable file: exit %d, want 3 and a warning naming it", code)
	}
	out, code = runAs("ls", "latest")
	if code != 0 || !strings.Contains(out, "/src/dir00/file0000") || strings.Contains(out, "/src/secret") {
		t.Fatalf("the partial snapshot should hold the readable files only:\n%s", out)
	}
}

func TestCLIDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })
	c := newCLI(t, filepath.Join(mnt, "repo"))
	c.init()
	small := filepath.Join(t.TempDir(), "small")
	randomFiles(t, small, 5, 100<<10, 6)
	c.ok("backup", small)
	big := filepath.Join(t.TempDir(), "big")
	randomFiles(t, big, 40, 1<<20, 7) // ~20 MB, more than fits
	_, errOut, code := c.run("backup", big)
	if code != 1 || !strings.Contains(errOut, "no space left on device") {
		t.Fatalf("backup onto a full disk: exit %d, stderr %q; want 1 and ENOSPC", code, errOut)
	}
	// Free the space the failed backup used (unreferenced packs), then the
	// repository checks clean and the first snapshot restores.
	c.ok("prune")
	c.ok("check", "--read-data")
	target := t.TempDir()
	c.ok("restore", "latest", "--target", target)
	if n := sameTree(t, small, filepath.Join(target, "small")); n != 5 {
		t.Fatalf("compared %d files, want 5", n)
	}
}

// TestCLIS3 runs the binary against an S3 endpoint served by gofakes3, an
// in-process stand-in for a real S3 server (none is reachable here).
func TestCLIS3(t *testing.T) {
	srv := httptest.NewServer(gofakes3.New(s3mem.New()).Server())
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	c := newCLI(t, "s3:http://"+u.Host+"/holdfast/repo1")
	c.env = append(c.env, "AWS_ACCESS_KEY_ID=test", "AWS_SECRET_ACCESS_KEY=testsecret")
	c.init()
	src := filepath.Join(t.TempDir(), "data")
	randomFiles(t, src, 30, 200<<10, 9)
	c.ok("backup", src)
	if out := c.ok("check", "--read-data"); !strings.Contains(out, "no errors found") {
		t.Fatalf("check on S3:\n%s", out)
	}
	target := t.TempDir()
	c.ok("restore", "latest", "--target", target)
	if n := sameTree(t, src, filepath.Join(target, "data")); n != 30 {
		t.Fatalf("compared %d files, want 30", n)
	}
}
