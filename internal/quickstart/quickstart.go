// Package quickstart runs holdfast's main job on one machine with nothing
// set up: it creates a fresh cluster, starts several real agent processes
// on loopback, lets them find each other over mTLS, shows their status, and
// stops them again. It is what `holdfast quickstart` runs.
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
)

// Options shape a quick start run.
type Options struct {
	// Dir holds the agents' state directories. Empty: a new temporary
	// directory, removed at the end unless Keep is set.
	Dir string
	// Keep leaves the state directories (and, with KeepRunning, the agents)
	// in place.
	Keep bool
	// Agents is how many agents to start (at least 2; default 3).
	Agents int
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
		opts.Agents = 3
	}
	if opts.Agents < 2 || opts.Agents > 16 {
		return nil, fmt.Errorf("quickstart: %d agents: want 2 to 16", opts.Agents)
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
	id, err := agent.Init(nodes[0].dir, agent.InitOptions{Name: nodes[0].name, Listen: nodes[0].addr})
	if err != nil {
		return nil, fmt.Errorf("quickstart: %w", err)
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
	for _, n := range nodes[1:] {
		if _, err := agent.Join(ctx, n.dir, nodes[0].addr, tok, agent.InitOptions{Name: n.name, Listen: n.addr}, opts.Logger); err != nil {
			return nil, fmt.Errorf("quickstart: joining %s: %w", n.name, err)
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
	res.Elapsed = time.Since(start).Round(time.Millisecond).String()
	fmt.Fprintf(out, "\nquickstart: %d agents formed cluster %s in %s\n", len(nodes), res.Cluster, res.Elapsed)
	if opts.Keep {
		fmt.Fprintf(out, "state kept in %s (agents stopped; restart one with: holdfast agent --state %s)\n", dir, nodes[0].dir)
	}
	return res, nil
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
