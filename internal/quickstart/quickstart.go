// Package quickstart runs holdfast's main job on one machine with nothing
// set up: it creates a fresh cluster, starts several real agent processes
// on loopback that find each other over mTLS, backs up a directory to one
// of them, waits until the backup's erasure-coded shards are spread over the
// others, then destroys the origin and m peers and restores the backup from
// the surviving peers' shards, verifying it byte for byte. It is what
// `holdfast quickstart` runs.
package quickstart

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/holdfast/holdfast/internal/agent"
	"github.com/holdfast/holdfast/internal/peer"
	"github.com/holdfast/holdfast/internal/pool"
)

// Options shape a quick start run.
type Options struct {
	// Dir holds the agents' state directories. Empty: a new temporary
	// directory, removed at the end unless Keep is set.
	Dir string
	// Keep leaves the state directories (and, with KeepRunning, the agents)
	// in place.
	Keep bool
	// Agents is how many agents to start (at least 3; default 5).
	Agents int
	// Data is the directory to back up. Empty: a generated tree of about
	// DataSize bytes with a known plaintext marker in it.
	Data string
	// DataSize is the size of the generated tree (default 16 MiB).
	DataSize int64
	// Exe is the holdfast binary to run agents with (default: this
	// process's own executable).
	Exe string
	// Timeout bounds the whole run (default 60s).
	Timeout time.Duration
	Logger  *slog.Logger
}

// Result is what a run found.
type Result struct {
	Dir     string          `json:"dir"`
	Cluster string          `json:"cluster"`
	Agents  []*agent.Status `json:"agents"`
	Backup  *BackupResult   `json:"backup"`
	Elapsed string          `json:"elapsed"`
}

// node is one agent process of the run.
type node struct {
	name, dir, addr string
	cmd             *exec.Cmd
	log             bytes.Buffer
	exited          chan error
}

// Run performs the quick start and writes a human-readable account to out.
func Run(ctx context.Context, opts Options, out io.Writer) (*Result, error) {
	start := time.Now()
	if opts.Agents == 0 {
		opts.Agents = 5
	}
	if opts.Agents < 3 || opts.Agents > 16 {
		return nil, fmt.Errorf("quickstart: %d agents: want 3 to 16", opts.Agents)
	}
	if opts.DataSize == 0 {
		opts.DataSize = 16 << 20
	}
	if opts.Timeout == 0 {
		opts.Timeout = 60 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.Exe == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("quickstart: finding the holdfast binary: %w", err)
		}
		opts.Exe = exe
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()

	dir := opts.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "holdfast-quickstart-")
		if err != nil {
			return nil, fmt.Errorf("quickstart: %w", err)
		}
		dir = d
		if !opts.Keep {
			defer os.RemoveAll(dir)
		}
	}
	res := &Result{Dir: dir}
	nodes := make([]*node, opts.Agents)
	for i := range nodes {
		addr, err := freeLoopbackAddr()
		if err != nil {
			return nil, err
		}
		name := fmt.Sprintf("agent%d", i+1)
		nodes[i] = &node{name: name, dir: filepath.Join(dir, name), addr: addr}
	}
	defer stopAll(nodes)

	fmt.Fprintf(out, "==> creating a cluster in %s\n", dir)
	id, err := agent.Init(nodes[0].dir, agent.InitOptions{Name: nodes[0].name, Listen: nodes[0].addr, Labels: zone(0)})
	if err != nil {
		return nil, fmt.Errorf("quickstart: %w", err)
	}
	scheme := pool.SchemeFor(len(nodes) - 1)
	if err := writePoolConfig(nodes[0].dir, scheme); err != nil {
		return nil, err
	}
	res.Cluster = id.ClusterID()
	fmt.Fprintf(out, "    cluster %s: CA (ed25519) and node certificate for %s\n", id.ClusterID(), nodes[0].name)
	if err := startNode(ctx, opts.Exe, nodes[0]); err != nil {
		return nil, err
	}
	fmt.Fprintf(out, "==> started %s on %s (pid %d)\n", nodes[0].name, nodes[0].addr, nodes[0].cmd.Process.Pid)

	tok, err := id.CA.IssueToken(10 * time.Minute)
	if err != nil {
		return nil, err
	}
	for i, n := range nodes[1:] {
		if _, err := agent.Join(ctx, n.dir, nodes[0].addr, tok, agent.InitOptions{Name: n.name, Listen: n.addr, Labels: zone(i + 1)}, opts.Logger); err != nil {
			return nil, fmt.Errorf("quickstart: joining %s: %w", n.name, err)
		}
		if err := writePoolConfig(n.dir, scheme); err != nil {
			return nil, err
		}
		if err := startNode(ctx, opts.Exe, n); err != nil {
			return nil, err
		}
		fmt.Fprintf(out, "==> %s joined with a one-time token and started on %s (pid %d)\n", n.name, n.addr, n.cmd.Process.Pid)
	}

	fmt.Fprintf(out, "==> waiting for every agent to see the other %d over mTLS\n", len(nodes)-1)
	sts, err := waitConnected(ctx, nodes)
	if err != nil {
		return nil, err
	}
	res.Agents = sts
	for _, st := range sts {
		fmt.Fprintf(out, "\n$ holdfast status --state %s\n", filepath.Join(dir, st.Name))
		st.WriteText(out)
	}

	res.Backup, err = backupProtectRestore(ctx, opts, dir, nodes, scheme, out)
	if err != nil {
		return nil, err
	}
	res.Elapsed = time.Since(start).Round(time.Millisecond).String()
	fmt.Fprintf(out, "\nquickstart: %d agents formed cluster %s; backup protected at level %d and restored byte for byte from %d surviving peers, in %s\n",
		len(nodes), res.Cluster, res.Backup.Protection, res.Backup.RestoredFrom, res.Elapsed)
	if opts.Keep {
		fmt.Fprintf(out, "state kept in %s (agents stopped; restart one with: holdfast agent --state %s)\n", dir, nodes[0].dir)
	}
	return res, nil
}

// zone gives agent i a failure domain of its own, so placement spreads
// shards over all of them.
func zone(i int) map[string]string { return map[string]string{"zone": fmt.Sprintf("zone%d", i+1)} }

func writePoolConfig(stateDir string, scheme peer.Scheme) error {
	c := pool.DefaultConfig()
	c.Capacity = 1 << 30
	c.K, c.M = scheme.K, scheme.M
	if err := pool.WriteConfig(stateDir, c); err != nil {
		return fmt.Errorf("quickstart: writing pool config: %w", err)
	}
	return nil
}

func freeLoopbackAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("quickstart: finding a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func startNode(ctx context.Context, exe string, n *node) error {
	n.cmd = exec.Command(exe, "agent", "--state", n.dir)
	n.cmd.Stdout = &n.log
	n.cmd.Stderr = &n.log
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := n.cmd.Start(); err != nil {
		return fmt.Errorf("quickstart: starting %s: %w", n.name, err)
	}
	n.exited = make(chan error, 1)
	go func() { n.exited <- n.cmd.Wait() }()
	c := agent.NewClient(n.dir)
	for {
		if _, err := c.Status(ctx); err == nil {
			return nil
		}
		select {
		case err := <-n.exited:
			n.exited <- err
			return fmt.Errorf("quickstart: agent %s exited: %v\n%s", n.name, err, n.log.String())
		case <-ctx.Done():
			return fmt.Errorf("quickstart: agent %s did not start: %w\n%s", n.name, ctx.Err(), n.log.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func waitConnected(ctx context.Context, nodes []*node) ([]*agent.Status, error) {
	for {
		var sts []*agent.Status
		all := true
		for _, n := range nodes {
			st, err := agent.NewClient(n.dir).Status(ctx)
			if err != nil {
				return nil, fmt.Errorf("quickstart: status of %s: %w", n.name, err)
			}
			sts = append(sts, st)
			connected := 0
			for _, p := range st.Peers {
				if p.Connected && len(p.Versions) > 0 && p.RTT != "" {
					connected++
				}
			}
			if connected < len(nodes)-1 {
				all = false
			}
		}
		if all {
			return sts, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("quickstart: agents did not all connect: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func stopAll(nodes []*node) {
	for _, n := range nodes {
		if n != nil && n.cmd != nil && n.cmd.Process != nil {
			_ = n.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	for _, n := range nodes {
		if n == nil || n.exited == nil {
			continue
		}
		select {
		case <-n.exited:
		case <-time.After(10 * time.Second):
			_ = n.cmd.Process.Kill()
			<-n.exited
		}
	}
}
