package bulk

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/lab"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// TestMain removes the binary holdfastBinary built.
func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" && buildErr == nil {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// holdfastBinary builds cmd/holdfast once per test run.
func holdfastBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "bulk-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "holdfast")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/holdfast/holdfast/cmd/holdfast").CombinedOutput()
		if err != nil {
			buildErr = err
			binPath = string(out)
		}
	})
	if buildErr != nil {
		t.Fatalf("building holdfast: %v\n%s", buildErr, binPath)
	}
	return binPath
}

type proc struct {
	cmd  *exec.Cmd
	addr string
	done chan error
}

// startServe runs `holdfast serve` on a free loopback port and returns
// once it listens.
func startServe(t *testing.T, env *binEnv, bin, state, root string) *proc {
	t.Helper()
	cmd := env.command(1, bin, "serve", "--state", state, "--listen", env.listen, "--root", root)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, done: make(chan error, 1)}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
	})
	sc := bufio.NewScanner(stderr)
	found := make(chan string, 1)
	go func() {
		for sc.Scan() {
			line := sc.Text()
			if i := strings.LastIndex(line, " on "); i >= 0 && strings.HasPrefix(line, "holdfast serve:") {
				found <- line[i+4:]
			}
			t.Log("serve: " + line)
		}
		p.done <- cmd.Wait()
	}()
	select {
	case p.addr = <-found:
	case <-time.After(20 * time.Second):
		t.Fatal("holdfast serve did not start")
	}
	return p
}

// waitJournal waits until the receiver's journal for name records at least
// n blocks.
func waitJournal(t *testing.T, dir, name string, n int) {
	t.Helper()
	p := filepath.Join(dir, journalPrefix+name)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if fi, err := os.Stat(p); err == nil && fi.Size() >= int64(journalHdr+n*journalRec) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("journal %s never reached %d blocks", p, n)
}

func cpReport(t *testing.T, out []byte) Report {
	t.Helper()
	var r Report
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("decoding cp --json output %q: %v", out, err)
	}
	return r
}

// TestResumeAfterKill9 runs the real binary: kill -9 of the sender, then
// of the receiver, in the middle of a copy; each time the receiver holds
// no file under the final name, and --resume finishes the copy from the
// verified blocks without sending them again.
func TestResumeAfterKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the holdfast binary")
	}
	t.Run("loopback", func(t *testing.T) { resumeAfterKill9(t, &binEnv{listen: "127.0.0.1:0"}) })
	t.Run("lab", func(t *testing.T) {
		l := lab.New(t, lab.Config{Hosts: 2, Path: testPath})
		resumeAfterKill9(t, &binEnv{lab: l, listen: l.Host(1).AddrPort(DefaultPort).String()})
	})
}

// binEnv runs the binary on loopback or in lab hosts (the receiver in host
// 1, the sender in host 0).
type binEnv struct {
	lab    *lab.Lab
	listen string
}

func (e *binEnv) command(host int, bin string, args ...string) *exec.Cmd {
	if e.lab == nil {
		return exec.Command(bin, args...)
	}
	// ip netns exec execs the program: its pid is the program's, so a
	// SIGKILL reaches holdfast itself.
	return e.lab.Host(host).Run(context.Background(), bin, args...)
}

func resumeAfterKill9(t *testing.T, env *binEnv) {
	bin := holdfastBinary(t)
	state := t.TempDir()
	if _, err := cluster.Init(state, "alpha"); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	src := filepath.Join(t.TempDir(), "big.bin")
	const size = 16 << 20
	data := writeRandom(t, src, size)
	const bs = 64 << 10
	final := filepath.Join(root, "big.bin")

	cp := func(args ...string) *exec.Cmd {
		c := env.command(0, bin, append([]string{"cp", "--state", state, "--json", "--no-progress", "--block-size", "65536"}, args...)...)
		c.Stderr = tWriter{t}
		return c
	}

	for _, victim := range []string{"sender", "receiver"} {
		t.Run("kill "+victim, func(t *testing.T) {
			os.Remove(final)
			srv := startServe(t, env, bin, state, root)
			c := cp("--streams", "2", "--rate-limit", "24Mbit", src, srv.addr+":/big.bin")
			if err := c.Start(); err != nil {
				t.Fatal(err)
			}
			waitJournal(t, root, "big.bin", 40)
			if victim == "sender" {
				c.Process.Signal(syscall.SIGKILL)
				c.Wait()
			} else {
				srv.cmd.Process.Signal(syscall.SIGKILL)
				<-srv.done
				srv.done <- nil // for the cleanup
				if err := c.Wait(); err == nil {
					t.Fatal("cp succeeded although the receiver was killed")
				}
				srv = startServe(t, env, bin, state, root)
			}
			if _, err := os.Stat(final); !os.IsNotExist(err) {
				t.Fatalf("after kill -9 of the %s, %s exists (%v): a half-written file under the final name", victim, final, err)
			}
			if _, err := os.Stat(filepath.Join(root, partPrefix+"big.bin")); err != nil {
				t.Fatalf("partial data not kept: %v", err)
			}
			out, err := cp("--resume", "--streams", "2", src, srv.addr+":/big.bin").Output()
			if err != nil {
				t.Fatalf("resumed cp: %v", err)
			}
			rep := cpReport(t, out)
			mustEqualFile(t, final, data)
			t.Logf("resumed: %d bytes held by the receiver, %d sent", rep.Resumed, rep.Sent)
			// Blocks re-sent after a stall on this loaded machine are
			// allowed some slack; a copy that did not resume sends the
			// whole file again and reuses nothing.
			if rep.Resumed < 40*bs || rep.Sent > size-rep.Resumed+size/4 {
				t.Errorf("resume sent %d bytes and reused %d: it did not continue from the verified blocks", rep.Sent, rep.Resumed)
			}
			if rep.Resumed+rep.Sent < size {
				t.Errorf("resumed %d + sent %d < %d", rep.Resumed, rep.Sent, size)
			}
			left, _ := filepath.Glob(filepath.Join(root, ".holdfast-*"))
			if len(left) > 0 {
				t.Errorf("leftovers after the resumed copy: %v", left)
			}
		})
	}
}
