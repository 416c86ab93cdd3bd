package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// holdfastBin is the real binary, built once in TestMain.
var holdfastBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "holdfast-cli-test-")
	if err != nil {
		panic(err)
	}
	holdfastBin = filepath.Join(dir, "holdfast")
	if out, err := exec.Command("go", "build", "-o", holdfastBin, ".").CombinedOutput(); err != nil {
		os.Stderr.Write(out)
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	stdout, stderr string
	code           int
}

func run(t *testing.T, args ...string) result {
	t.Helper()
	cmd := exec.Command(holdfastBin, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{o.String(), e.String(), code}
}

func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func TestVersionJSON(t *testing.T) {
	r := run(t, "version", "--json")
	var m map[string]string
	if err := json.Unmarshal([]byte(r.stdout), &m); err != nil || r.code != 0 {
		t.Fatalf("version --json: %v (exit %d): %q", err, r.code, r.stdout)
	}
	if m["version"] == "" || !strings.HasPrefix(m["go_version"], "go1.") {
		t.Fatalf("version --json = %v", m)
	}
}

func TestClusterCommandsEndToEnd(t *testing.T) {
	root := t.TempDir()
	a, b := filepath.Join(root, "a"), filepath.Join(root, "b")
	addrA := freePort(t)
	if r := run(t, "cluster", "init", "--state", a, "--name", "a", "--listen", addrA, "--json"); r.code != 0 || !strings.Contains(r.stdout, `"cluster"`) {
		t.Fatalf("init: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := run(t, "cluster", "init", "--state", a, "--name", "a"); r.code != 1 || !strings.Contains(r.stderr, "already exists") {
		t.Fatalf("second init: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := run(t, "status", "--state", a); r.code != 1 || !strings.Contains(r.stderr, "no agent is running") {
		t.Fatalf("status without agent: exit %d, stderr %q", r.code, r.stderr)
	}
	agentA := exec.Command(holdfastBin, "agent", "--state", a, "--log-format", "json")
	var logA bytes.Buffer
	agentA.Stderr = &logA
	if err := agentA.Start(); err != nil {
		t.Fatal(err)
	}
	defer agentA.Process.Kill()
	waitStatus(t, a)

	tok := strings.TrimSpace(run(t, "cluster", "token", "--state", a, "--ttl", "5m").stdout)
	if r := run(t, "cluster", "join", addrA, "--token", "hf1.bogus", "--state", b, "--name", "b"); r.code != 1 || !strings.Contains(r.stderr, "malformed") {
		t.Fatalf("join with a bad token: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := run(t, "cluster", "join", addrA, "--token", tok, "--state", b, "--name", "b", "--listen", freePort(t)); r.code != 0 {
		t.Fatalf("join: exit %d: %s", r.code, r.stderr)
	}
	agentB := exec.Command(holdfastBin, "agent", "--state", b)
	if err := agentB.Start(); err != nil {
		t.Fatal(err)
	}
	defer agentB.Process.Kill()

	deadline := time.Now().Add(15 * time.Second)
	for {
		r := run(t, "status", "--state", a, "--json")
		var st struct {
			Peers []struct {
				Name      string
				Connected bool
				Versions  map[string]string
			}
		}
		json.Unmarshal([]byte(r.stdout), &st)
		if len(st.Peers) == 1 && st.Peers[0].Name == "b" && st.Peers[0].Connected && st.Peers[0].Versions["agent"] != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a never saw b connected: %s", r.stdout)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if r := run(t, "status", "--state", b); !strings.Contains(r.stdout, "connected (mTLS)") {
		t.Fatalf("status of b: %s", r.stdout)
	}

	// SIGTERM: graceful stop, exit status reports the signal was handled.
	agentA.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- agentA.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("agent did not stop on SIGTERM")
	}
	if !strings.Contains(logA.String(), `"msg":"agent stopped"`) {
		t.Fatalf("agent log lacks a JSON 'agent stopped' line:\n%s", logA.String())
	}
	if _, err := os.Stat(filepath.Join(a, "agent.sock")); !os.IsNotExist(err) {
		t.Fatal("agent left its socket behind after SIGTERM")
	}
}

func waitStatus(t *testing.T, state string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for run(t, "status", "--state", state).code != 0 {
		if time.Now().After(deadline) {
			t.Fatal("agent did not come up")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestUnknownLogFormatIsAnError(t *testing.T) {
	if r := run(t, "version", "--log-format", "xml"); r.code != 1 || !strings.Contains(r.stderr, "unknown --log-format") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}
