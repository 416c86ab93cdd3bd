package cdp

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// agentProc is a real `holdfast agent` process with the volume service.
type agentProc struct {
	t     *testing.T
	bin   string
	state string
	cmd   *exec.Cmd
	log   *bytes.Buffer
}

// startAgent starts (or restarts) the agent of state directory dir and
// waits until its volume API answers.
func startAgent(t *testing.T, bin, dir string) *agentProc {
	t.Helper()
	p := &agentProc{t: t, bin: bin, state: dir, log: &bytes.Buffer{}}
	p.cmd = exec.Command(bin, "agent", "--state", dir)
	p.cmd.Stderr = p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("agent %s log:\n%s", filepath.Base(dir), p.log.String())
		}
	})
	c := NewUnixClient(filepath.Join(dir, "agent.sock"))
	waitFor(t, "agent "+filepath.Base(dir), 15*time.Second, func() bool {
		_, err := c.List(context.Background())
		return err == nil
	})
	return p
}

// kill ends the agent with SIGKILL: nothing is closed or synced.
func (p *agentProc) kill() {
	if p.cmd.ProcessState == nil {
		p.cmd.Process.Signal(syscall.SIGKILL)
		p.cmd.Wait()
	}
}

func (p *agentProc) client() *Client { return NewUnixClient(filepath.Join(p.state, "agent.sock")) }

func (p *agentProc) uri(vol string) string {
	return "nbd+unix:///" + vol + "?socket=" + filepath.Join(p.state, NBDSocketFile)
}

func (p *agentProc) run(args ...string) string {
	p.t.Helper()
	out, err := exec.Command(p.bin, args...).CombinedOutput()
	if err != nil {
		p.t.Fatalf("holdfast %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func loopbackAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// twoAgents makes a cluster of two agents on loopback, a and b (b holds
// the CA), and starts both.
func twoAgents(t *testing.T) (bin string, a, b *agentProc) {
	t.Helper()
	needTools(t, "qemu-io", "qemu-img")
	bin = holdfastBinary(t)
	if bin == "" {
		t.Skip("the holdfast binary does not build right now")
	}
	root := shortDir(t)
	da, db := filepath.Join(root, "a"), filepath.Join(root, "b")
	addrB := loopbackAddr(t)
	if out, err := exec.Command(bin, "cluster", "init", "--state", db, "--name", "b", "--listen", addrB).CombinedOutput(); err != nil {
		t.Fatalf("cluster init: %v\n%s", err, out)
	}
	b = startAgent(t, bin, db)
	tok := strings.TrimSpace(b.run("cluster", "token", "--state", db))
	b.run("cluster", "join", addrB, "--token", tok, "--state", da, "--name", "a", "--listen", loopbackAddr(t))
	a = startAgent(t, bin, da)
	return bin, a, b
}

// TestAgentRemoteUnreachableBacklogShippedInBulk runs two real agents: the
// remote agent is killed, writes go on locally and the lag is reported; when
// it returns, the backlog (larger than BulkBacklogBytes) goes with the bulk
// transfer, and the remote log then restores exactly what the volume holds.
func TestAgentRemoteUnreachableBacklogShippedInBulk(t *testing.T) {
	bin, a, b := twoAgents(t)
	ctx := context.Background()
	ca := a.client()
	if _, err := ca.Create(ctx, CreateOptions{Name: "db", Size: 256 << 20, Remote: "b", Mode: ModeAsync}); err != nil {
		t.Fatal(err)
	}
	qemuIO(t, a.uri("db"), "write -P 0x11 0 8M")
	waitFor(t, "first writes shipped", 15*time.Second, func() bool {
		in, err := ca.Get(ctx, "db")
		return err == nil && in.Replication.State == "ok" && in.Replication.ShippedSeq == in.LastSeq
	})

	b.kill()
	// 96 MiB while b is down: above the 64 MiB from which the backlog goes
	// with the bulk transfer.
	qemuIO(t, a.uri("db"), "write -P 0x22 4M 64M", "write -P 0x33 100M 32M", "write -z 1M 2M")
	if _, err := ca.Mark(ctx, "db", "while-down"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "unreachable state", 20*time.Second, func() bool {
		in, err := ca.Get(ctx, "db")
		return err == nil && in.Replication.State == "unreachable"
	})
	in, _ := ca.Get(ctx, "db")
	if r := in.Replication; r.LagRecords == 0 || r.LagSeconds <= 0 || r.LastError == "" {
		t.Fatalf("replication while the remote is down: %+v", r)
	}
	t.Logf("while down: %+v", *in.Replication)

	b = startAgent(t, bin, b.state)
	waitFor(t, "backlog shipped", 60*time.Second, func() bool {
		in, err := ca.Get(ctx, "db")
		return err == nil && in.Replication.State == "ok" && in.Replication.ShippedSeq == in.LastSeq
	})
	in, _ = ca.Get(ctx, "db")
	r := in.Replication
	if r.BulkTransfers < 1 || r.BulkBytes < 64<<20 {
		t.Fatalf("the backlog did not go with the bulk transfer: %+v", *r)
	}
	t.Logf("after: %+v", *r)
	if left, _ := filepath.Glob(filepath.Join(b.state, "inbox", "cdp-backlog", "*")); len(left) > 0 {
		t.Fatalf("backlog files left on the remote after ingest: %v", left)
	}

	// The remote log alone gives back the volume as of the mark.
	if _, err := ca.Restore(ctx, RestoreOptions{Name: "db", At: "while-down", As: "db-remote", FromRemote: "b"}); err != nil {
		t.Fatal(err)
	}
	if err := qemuCompare(a.uri("db"), a.uri("db-remote")); err != nil {
		t.Fatalf("remote restore differs from the volume: %v", err)
	}
}

// readChecks turns the first len(img) bytes of an expected image into
// qemu-io reads of each run of equal bytes (read -P verifies the pattern).
func readChecks(img []byte) []string {
	var cmds []string
	for i := 0; i < len(img); {
		j := i
		for j < len(img) && img[j] == img[i] && j-i < 8<<20 {
			j++
		}
		cmds = append(cmds, fmt.Sprintf("read -P 0x%02x %d %d", img[i], i, j-i))
		i = j
	}
	return cmds
}

// TestAgentKill9RebuildsTheIndex SIGKILLs a real agent right after writes
// of every size (no checkpoint has run): on restart the block index is
// rebuilt from the log (every write is in the log only), and the volume,
// and a restored volume still reading through that log, read back exactly.
func TestAgentKill9RebuildsTheIndex(t *testing.T) {
	needTools(t, "qemu-io")
	bin := holdfastBinary(t)
	if bin == "" {
		t.Skip("the holdfast binary does not build right now")
	}
	dir := filepath.Join(shortDir(t), "a")
	if out, err := exec.Command(bin, "cluster", "init", "--state", dir, "--name", "a", "--listen", loopbackAddr(t)).CombinedOutput(); err != nil {
		t.Fatalf("cluster init: %v\n%s", err, out)
	}
	a := startAgent(t, bin, dir)
	ctx := context.Background()
	c := a.client()
	const size, span = 2 << 30, 8 << 20 // writes go to the first span bytes
	if _, err := c.Create(ctx, CreateOptions{Name: "v", Size: size}); err != nil {
		t.Fatal(err)
	}
	img := make([]byte, span)
	ops := []op{
		{cmd: "write", off: 0, n: 1 << 20, pattern: 0x11},
		{cmd: "write", off: 4096, n: 4096, pattern: 0x22},
		{cmd: "write", off: 2 << 20, n: 64 << 10, pattern: 0x33},
		{cmd: "zero", off: 512 << 10, n: 128 << 10},
		{cmd: "write", off: 3<<20 + 100, n: 5000, pattern: 0x44},
		{cmd: "write", off: 4 << 20, n: 3 << 20, pattern: 0x55, markAfterOp: "m"},
		{cmd: "write", off: 1 << 20, n: 4 << 20, pattern: 0x66},
		{cmd: "write", off: 8192, n: 4096, pattern: 0x77},
	}
	var atMark []byte
	for _, o := range ops {
		qemuIO(t, a.uri("v"), o.qemu())
		o.apply(img)
		if o.markAfterOp != "" {
			if _, err := c.Mark(ctx, "v", o.markAfterOp); err != nil {
				t.Fatal(err)
			}
			atMark = append([]byte(nil), img...)
		}
	}
	// A restored volume of the same size reads through v's log while its
	// background fill runs; it takes writes of its own meanwhile.
	if _, err := c.Restore(ctx, RestoreOptions{Name: "v", At: "m", As: "r"}); err != nil {
		t.Fatal(err)
	}
	own := op{cmd: "write", off: 6 << 20, n: 8192, pattern: 0x88}
	qemuIO(t, a.uri("r"), own.qemu())
	own.apply(atMark)
	in, err := c.Get(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	if in.FillDone {
		t.Fatal("the restored volume finished filling before the kill; the test needs a larger volume")
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "volumes", "v", "lazy.bits")); len(left) != 0 {
		t.Log("a checkpoint ran before the kill")
	}
	a.kill()

	a = startAgent(t, bin, dir)
	check := func(vol string, want []byte) {
		t.Helper()
		cmds := append(readChecks(want), "read -P 0 1G 1M", fmt.Sprintf("read -P 0 %d 4096", size-4096))
		qemuIO(t, a.uri(vol), cmds...)
	}
	check("v", img)
	check("r", atMark)
	// The fill of the restored volume resumes and completes; it then no
	// longer needs v's log.
	waitFor(t, "fill after the restart", 60*time.Second, func() bool {
		in, err := a.client().Get(ctx, "r")
		return err == nil && in.FillDone
	})
	check("r", atMark)
}
