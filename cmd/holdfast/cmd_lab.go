package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/holdfast/holdfast/internal/lab"
	"github.com/spf13/cobra"
)

// labUpOptions are the flags of `holdfast lab up`.
type labUpOptions struct {
	name     string
	hosts    int
	path     string
	rate     string
	rtt      string
	delay    string
	jitter   string
	loss     string
	queue    string
	sched    string
	mtu      int
	seed     uint64
	pairs    []string
	interval time.Duration
	quiet    bool
}

func newLabCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Run a WAN on this machine: hosts in network namespaces behind a link emulator",
		Long: `lab builds test hosts as network namespaces (hflab-<name>-h<i>, addresses
198.18.0.<i+1>) joined by a userspace WAN emulator with delay, jitter, loss,
a rate-limited bottleneck queue and DSCP scheduling. Needs root.`,
	}
	cmd.AddCommand(newLabUpCommand(), newLabDownCommand())
	return cmd
}

func newLabUpCommand() *cobra.Command {
	var o labUpOptions
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Start a lab and run its emulator in the foreground until Ctrl-C",
		Example: `  holdfast lab up --rtt 100ms --rate 200Mbit --loss 0.1% --queue 64KiB
  holdfast lab up --hosts 3 --path "rate 50Mbit, rtt 40ms, sched strict"
  holdfast lab up --hosts 3 --rtt 20ms --pair "0-2: rtt 300ms, loss 2%" --pair "1>0: rate 10Mbit"
  # in another terminal:
  ip netns exec hflab-cli-h1 iperf3 -s
  ip netns exec hflab-cli-h0 iperf3 -c 198.18.0.2`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runLabUp(cmd, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.name, "name", "cli", "lab name; hosts are namespaces hflab-<name>-h<i>")
	f.IntVar(&o.hosts, "hosts", 2, "number of hosts")
	f.StringVar(&o.path, "path", "", `whole path description, e.g. "rate 200Mbit, rtt 100ms, loss 0.1%, queue 64KiB" (--rate, --rtt, --loss… add to it)`)
	f.StringVar(&o.rate, "rate", "", "bottleneck rate, e.g. 200Mbit (default: unlimited)")
	f.StringVar(&o.rtt, "rtt", "", "round-trip time, e.g. 100ms")
	f.StringVar(&o.delay, "delay", "", "one-way delay, e.g. 50ms (instead of --rtt)")
	f.StringVar(&o.jitter, "jitter", "", "± uniform jitter on the delay, e.g. 2ms")
	f.StringVar(&o.loss, "loss", "", "random loss, e.g. 0.1%")
	f.StringVar(&o.queue, "queue", "", "bottleneck queue, e.g. 64KiB (default: one bandwidth-delay product)")
	f.StringVar(&o.sched, "sched", "", "DSCP scheduling at the bottleneck: fifo, strict or weighted")
	f.StringArrayVar(&o.pairs, "pair", nil, `path of one pair, "A-B: path" (both ways) or "A>B: path" (one way); repeatable`)
	f.IntVar(&o.mtu, "mtu", lab.DefaultMTU, "MTU of the hosts' devices")
	f.Uint64Var(&o.seed, "seed", 0, "seed of the random loss and jitter (0: random)")
	f.DurationVar(&o.interval, "interval", time.Second, "how often to print statistics")
	f.BoolVar(&o.quiet, "quiet", false, "print only lines of directions that carried traffic")
	return cmd
}

// labPathSpec joins --path and the single-figure flags into one ParsePath
// description.
func labPathSpec(o labUpOptions) string {
	parts := []string{}
	if o.path != "" {
		parts = append(parts, o.path)
	}
	for _, kv := range [][2]string{
		{"rate", o.rate}, {"rtt", o.rtt}, {"delay", o.delay}, {"jitter", o.jitter},
		{"loss", o.loss}, {"queue", o.queue}, {"sched", o.sched},
	} {
		if kv[1] != "" {
			parts = append(parts, kv[0]+" "+kv[1])
		}
	}
	return strings.Join(parts, ", ")
}

// labHostJSON describes one host in `lab up --json`.
type labHostJSON struct {
	Index int    `json:"index"`
	Netns string `json:"netns"`
	Addr  string `json:"addr"`
	Addr6 string `json:"addr6,omitempty"`
}

func runLabUp(cmd *cobra.Command, o labUpOptions) error {
	p, err := lab.ParsePath(labPathSpec(o))
	if err != nil {
		return err
	}
	if o.interval <= 0 {
		return fmt.Errorf("--interval %v: must be positive", o.interval)
	}
	var pairs []lab.PairPath
	for _, s := range o.pairs {
		pp, err := lab.ParsePairPath(s)
		if err != nil {
			return fmt.Errorf("--pair: %w", err)
		}
		if pp.A >= o.hosts || pp.B >= o.hosts {
			return fmt.Errorf("--pair %q: the lab has hosts 0 to %d", s, o.hosts-1)
		}
		pairs = append(pairs, pp)
	}
	cfg := lab.Config{Name: o.name, Hosts: o.hosts, Path: p, MTU: o.mtu, Seed: o.seed}
	ctx := cmd.Context()
	l, err := lab.Start(ctx, cfg, logger())
	if err != nil {
		return err
	}
	defer l.Close()
	for _, pp := range pairs {
		if err := l.Apply(pp); err != nil {
			return err
		}
	}
	w := cmd.OutOrStdout()
	if globals.json {
		var hosts []labHostJSON
		for _, h := range l.Hosts() {
			hj := labHostJSON{Index: h.Index(), Netns: h.Name(), Addr: h.Addr().String()}
			if h.Addr6().IsValid() {
				hj.Addr6 = h.Addr6().String()
			}
			hosts = append(hosts, hj)
		}
		if err := printJSONLine(w, map[string]any{"lab": l.Name(), "path": p.String(), "pairs": o.pairs, "mtu": l.Config().MTU, "hosts": hosts}); err != nil {
			return err
		}
	} else {
		fmt.Fprint(w, l.Describe())
		for _, s := range o.pairs {
			fmt.Fprintf(w, "pair %s\n", strings.TrimSpace(s))
		}
		fmt.Fprintln(w, "Ctrl-C stops the emulator and removes the hosts.")
	}
	err = l.Watch(ctx, o.interval, func(r lab.Report) {
		if globals.json {
			_ = printJSONLine(w, r)
			return
		}
		for _, pr := range r.Paths {
			if !o.quiet || pr.Active() {
				fmt.Fprintf(w, "%s %s\n", r.Time.Format("15:04:05"), pr)
			}
		}
	})
	if cerr := l.Close(); cerr != nil {
		return fmt.Errorf("closing lab %s: %w", l.Name(), cerr)
	}
	if errors.Is(err, ctx.Err()) {
		return nil // Ctrl-C is how a lab ends
	}
	return err
}

func newLabDownCommand() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Remove what crashed labs left behind (namespaces, processes in them, lock files)",
		Long: `down removes the hflab-* namespaces of labs whose process is gone, and kills
what still runs inside them. Labs of running processes are left alone
unless --force is given (stop those with Ctrl-C instead).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			clean := lab.Cleanup
			if force {
				clean = lab.CleanupAll
			}
			removed, err := clean(logger())
			if globals.json {
				if removed == nil {
					removed = []string{}
				}
				if jerr := printJSON(cmd.OutOrStdout(), map[string]any{"removed": removed}); jerr != nil {
					return jerr
				}
			} else if len(removed) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "no lab leftovers")
			} else {
				for _, ns := range removed {
					fmt.Fprintln(cmd.OutOrStdout(), "removed", ns)
				}
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "also remove labs whose process is still running")
	return cmd
}

// printJSONLine writes v as one line of JSON (for streams of reports).
func printJSONLine(w io.Writer, v any) error {
	return json.NewEncoder(w).Encode(v)
}
