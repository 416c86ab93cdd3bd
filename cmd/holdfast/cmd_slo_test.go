package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/bulk"
	"github.com/holdfast/holdfast/internal/netdiag"
	"github.com/holdfast/holdfast/internal/slo"
	"github.com/holdfast/holdfast/internal/slo/slolab"
)

func TestSLOPolicyAndPlan(t *testing.T) {
	r := run(t, "slo", "policy", "--json")
	var p slo.Policy
	if err := json.Unmarshal([]byte(r.stdout), &p); err != nil || r.code != 0 {
		t.Fatalf("slo policy --json: exit %d, %v: %s%s", r.code, err, r.stdout, r.stderr)
	}
	if len(p.Classes) != 6 || p.Classes[0].DSCP != slo.DSCPCS1 || p.Start != "standard" {
		t.Fatalf("default policy %+v", p)
	}
	bad := filepath.Join(t.TempDir(), "bad.toml")
	os.WriteFile(bad, []byte("[[class]]\nname = \"standard\"\ndscp = \"EF\"\n"), 0o644)
	if r := run(t, "slo", "policy", "--policy", bad); r.code != 1 || !strings.Contains(r.stderr, "EF is reserved") {
		t.Fatalf("policy with EF: exit %d, stderr %q", r.code, r.stderr)
	}
	r = run(t, "slo", "plan", "--size", "10GB", "--deadline", "2h")
	if r.code != 0 || !strings.Contains(r.stdout, "needs 11.111Mbit/s") {
		t.Fatalf("slo plan: exit %d: %s%s", r.code, r.stdout, r.stderr)
	}
	if r := run(t, "slo", "plan", "--size", "1GB", "--deadline", "yesterday"); r.code != 1 || !strings.Contains(r.stderr, "bad objective") {
		t.Fatalf("slo plan with a bad deadline: exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestCpDeadlineRemarksConnections runs the real holdfast cp with a far
// deadline against holdfast serve on loopback, rate-limited so the copy
// lasts a few seconds: the tagger must lower it to scavenger, report the
// change in --json, and tcpdump must see the data packets' marks change
// from CS0 to CS1 when the change was logged.
func TestCpDeadlineRemarksConnections(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("capturing on lo needs root")
	}
	if _, err := exec.LookPath("tcpdump"); err != nil {
		t.Skip("tcpdump is not installed")
	}
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	if r := run(t, "cluster", "init", "--state", state, "--name", "a", "--listen", freePort(t)); r.code != 0 {
		t.Fatalf("cluster init: %s", r.stderr)
	}
	src := filepath.Join(dir, "src.bin")
	data := make([]byte, 32<<20)
	rand.Read(data)
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	pol := filepath.Join(dir, "policy.toml")
	if err := os.WriteFile(pol, []byte("hold = \"1500ms\"\nsettle = \"500ms\"\nwindow = \"1s\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	recv := filepath.Join(dir, "recv")
	os.Mkdir(recv, 0o755)
	addr := freePort(t)
	port := addr[strings.LastIndex(addr, ":")+1:]
	serve := exec.Command(holdfastBin, "serve", "--state", state, "--listen", addr, "--root", recv)
	var serveLog bytes.Buffer
	serve.Stderr = &serveLog
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { serve.Process.Kill(); serve.Wait() })

	pcap := filepath.Join(dir, "cp.pcap")
	dump := exec.Command("tcpdump", "-i", "lo", "-n", "-U", "-s", "128", "-Z", "root", "-w", pcap, "tcp and dst port "+port)
	stderr, _ := dump.StderrPipe()
	if err := dump.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dump.Process.Kill(); dump.Wait() })
	listening := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "listening on") {
				listening <- true
			}
		}
	}()
	select {
	case <-listening:
	case <-time.After(10 * time.Second):
		t.Fatal("tcpdump did not start")
	}

	// --streams auto: connections added mid-transfer are marked as soon
	// as they connect (Options.OnDial), so their priming traffic carries
	// the class in force too.
	metrics := filepath.Join(dir, "slo.prom")
	r := run(t, "cp", "--state", state, "--json", "--rate-limit", "40Mbit", "--deadline", "60s", "--slo-policy", pol,
		"--slo-metrics-file", metrics, src, addr+":dst.bin")
	if r.code != 0 {
		t.Fatalf("cp: exit %d\n%s\nserve: %s", r.code, r.stderr, serveLog.String())
	}
	var rep struct {
		Bytes int64      `json:"bytes"`
		SLO   slo.Report `json:"slo"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("cp --json: %v\n%s", err, r.stdout)
	}
	if rep.Bytes != int64(len(data)) {
		t.Fatalf("copied %d bytes, want %d", rep.Bytes, len(data))
	}
	got, err := os.ReadFile(filepath.Join(recv, "dst.bin"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("received file differs (%v)", err)
	}
	ch := rep.SLO.Changes
	if len(ch) != 1 || ch[0].From != "standard" || ch[0].To != "scavenger" || !strings.HasPrefix(ch[0].Reason, "ahead") || rep.SLO.Final != "scavenger" {
		t.Fatalf("slo report %+v: want one lowering standard -> scavenger", rep.SLO)
	}
	if !strings.Contains(r.stderr, "slo: class changed") {
		t.Errorf("the change is not logged:\n%s", r.stderr)
	}
	// The metrics file holds the final class's code point (CS1 = 8) and
	// the change, for node_exporter's textfile collector.
	prom, err := os.ReadFile(metrics)
	if err != nil {
		t.Fatalf("--slo-metrics-file: %v", err)
	}
	for _, want := range []string{"holdfast_slo_dscp 8", `holdfast_slo_class_changes_total{direction="lower"} 1`} {
		if !strings.Contains(string(prom), want) {
			t.Errorf("metrics file lacks %q:\n%s", want, prom)
		}
	}
	// The copy recorded network diagnostics: one message per block.
	var msgs int
	if _, err := netdiag.ReadLog(netdiag.DirIn(state), func(rec netdiag.Record) {
		if rec.Msg != nil {
			msgs++
		}
	}); err != nil {
		t.Fatalf("reading the netdiag log: %v", err)
	}
	if msgs < len(data)/bulk.DefaultBlockSize {
		t.Errorf("netdiag log holds %d message records, want at least %d (one per block)", msgs, len(data)/bulk.DefaultBlockSize)
	}

	dump.Process.Signal(syscall.SIGINT)
	dump.Wait()
	marks, err := slolab.ReadMarks(context.Background(), pcap)
	if err != nil {
		t.Fatal(err)
	}
	var dataMarks []slolab.Mark
	for _, m := range marks {
		if m.Length > 200 {
			dataMarks = append(dataMarks, m)
		}
	}
	runs := slolab.MarkRuns(dataMarks)
	var desc []string
	for _, r := range runs {
		desc = append(desc, fmt.Sprintf("%s x%d from %s", slo.DSCPName(r.DSCP), r.Packets, r.First.Format("15:04:05.000")))
	}
	t.Logf("marks on the wire: %s; change logged at %s", strings.Join(desc, ", "), ch[0].Time.Format("15:04:05.000"))
	if len(runs) != 2 || runs[0].DSCP != slo.DSCPCS0 || runs[1].DSCP != slo.DSCPCS1 {
		t.Fatalf("marks on the wire %s: want CS0 then CS1", strings.Join(desc, ", "))
	}
	if d := runs[1].First.Sub(ch[0].Time); d < -time.Millisecond || d > time.Second {
		t.Errorf("CS1 first seen %v after the change was logged", d)
	}
}
