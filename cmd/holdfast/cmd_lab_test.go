package main

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/holdfast/holdfast/internal/lab"
)

func TestLabUpRejectsBadPath(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"lab", "up", "--rate", "10Mbps"}, "ambiguous unit"},
		{[]string{"lab", "up", "--loss", "150%"}, "below 100%"},
		{[]string{"lab", "up", "--path", "rate 1Mbit", "--rate", "2Mbit"}, "given twice"},
		{[]string{"lab", "up", "--interval", "0s"}, "must be positive"},
		{[]string{"lab", "up", "--pair", "0-1 rtt 5ms"}, "--pair"},
		{[]string{"lab", "up", "--pair", "0-2: rtt 5ms"}, "hosts 0 to 1"},
	} {
		r := run(t, tc.args...)
		if r.code != exitFatal || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("holdfast %v: exit %d, stderr %q; want exit %d mentioning %q", tc.args, r.code, r.stderr, exitFatal, tc.want)
		}
	}
}

// labUp starts `holdfast lab up --json` and returns the process and its
// first line (the hosts), with a scanner over the following lines.
func labUp(t *testing.T, name string, extra ...string) (*exec.Cmd, map[string]any, *bufio.Scanner) {
	t.Helper()
	args := append([]string{"lab", "up", "--json", "--name", name, "--interval", "200ms"}, extra...)
	cmd := exec.Command(holdfastBin, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = lab.Cleanup(nil) })
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	if !sc.Scan() {
		t.Fatalf("lab up printed nothing: %v", sc.Err())
	}
	var hello map[string]any
	if err := json.Unmarshal(sc.Bytes(), &hello); err != nil {
		t.Fatalf("first line of lab up --json: %v: %q", err, sc.Text())
	}
	return cmd, hello, sc
}

func labNetns(t *testing.T, name string) []string {
	t.Helper()
	entries, _ := os.ReadDir("/run/netns")
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "hflab-"+name+"-") {
			out = append(out, e.Name())
		}
	}
	return out
}

func TestLabUpAndDown(t *testing.T) {
	if err := lab.Available(); err != nil {
		t.Skip(err)
	}
	name := "clitest" + strconv.Itoa(os.Getpid())
	cmd, hello, sc := labUp(t, name, "--hosts", "3", "--rtt", "10ms", "--rate", "20Mbit", "--pair", "0>2: rtt 300ms")
	hosts, _ := hello["hosts"].([]any)
	if len(hosts) != 3 || hello["path"] != "rate 20Mbit, delay 5ms" {
		t.Fatalf("lab up --json said %v", hello)
	}
	h0 := hosts[0].(map[string]any)
	if h0["netns"] != "hflab-"+name+"-h0" || h0["addr"] != "198.18.0.1" {
		t.Errorf("host 0 = %v", h0)
	}
	// People use the hosts through ip netns exec.
	out, err := exec.Command("ip", "netns", "exec", "hflab-"+name+"-h0", "ip", "-o", "-4", "addr", "show", "hf0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "198.18.0.1/15") {
		t.Errorf("ip netns exec in host 0: %v: %s", err, out)
	}
	// Stats lines follow, one JSON report per interval.
	if !sc.Scan() {
		t.Fatalf("no stats line: %v", sc.Err())
	}
	var rep lab.Report
	if err := json.Unmarshal(sc.Bytes(), &rep); err != nil || len(rep.Paths) != 6 {
		t.Fatalf("stats line %q: %v (%d paths, want 6)", sc.Text(), err, len(rep.Paths))
	}
	for _, pr := range rep.Paths {
		want := "rate 20Mbit, delay 5ms"
		if pr.From == 0 && pr.To == 2 {
			want = "delay 150ms"
		}
		if pr.Path != want {
			t.Errorf("path h%d->h%d is %q, want %q", pr.From, pr.To, pr.Path, want)
		}
	}
	// Ctrl-C ends it cleanly and removes the hosts.
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	for sc.Scan() {
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("lab up after Ctrl-C: %v, want exit 0", err)
	}
	if ns := labNetns(t, name); len(ns) != 0 {
		t.Errorf("namespaces left after Ctrl-C: %v", ns)
	}

	// A lab whose process is killed leaves its hosts; lab down removes them.
	cmd, _, _ = labUp(t, name)
	if ns := labNetns(t, name); len(ns) != 2 {
		t.Fatalf("lab up made %v", ns)
	}
	r := run(t, "lab", "down", "--json")
	var down struct{ Removed []string }
	if err := json.Unmarshal([]byte(r.stdout), &down); err != nil || r.code != 0 {
		t.Fatalf("lab down --json: exit %d, %v: %q", r.code, err, r.stdout)
	}
	if slices.Contains(down.Removed, "hflab-"+name+"-h0") {
		t.Errorf("lab down removed the namespaces of a running lab: %v", down.Removed)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if ns := labNetns(t, name); len(ns) != 2 {
		t.Fatalf("killed lab left %v, want its 2 namespaces", ns)
	}
	r = run(t, "lab", "down")
	if r.code != 0 || !strings.Contains(r.stdout, "removed hflab-"+name+"-h0") {
		t.Errorf("lab down: exit %d: %q %q", r.code, r.stdout, r.stderr)
	}
	if ns := labNetns(t, name); len(ns) != 0 {
		t.Errorf("namespaces left after lab down: %v", ns)
	}
	if _, err := os.Stat(filepath.Join("/run/hflab", name+".lock")); err == nil {
		t.Errorf("lock file left after lab down")
	}
}
