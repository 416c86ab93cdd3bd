package main

import (
	"context"
	"fmt"
	"github.com/prometheus/client_golang/prometheus"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/holdfast/holdfast/internal/bulk"
	"github.com/holdfast/holdfast/internal/slo"
	"github.com/spf13/cobra"
)

// newSLOCommand is `holdfast slo`: service-level objectives and the DSCP
// policy.
func newSLOCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "slo",
		Short: "Service-level objectives: the DSCP policy and what an objective needs",
		Long: `A task (holdfast cp, for now) may carry an objective: --deadline 10m or
--deadline 2026-11-25T02:00Z, and/or --min-rate 50Mbit. While it runs, its
sockets are marked with the lowest DSCP class of the policy expected to meet
the objective, raised when it falls behind and lowered (down to scavenger)
when it is comfortably ahead. See docs/slo.md.`,
	}
	cmd.AddCommand(newSLOPolicyCommand(), newSLOPlanCommand())
	return cmd
}

func newSLOPolicyCommand() *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "policy [--policy FILE]",
		Short: "Print the effective policy (classes lowest first, DSCP, tuning)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := loadSLOPolicy(file)
			if err != nil {
				return err
			}
			if globals.json {
				return printJSON(cmd.OutOrStdout(), p)
			}
			_, err = io.WriteString(cmd.OutOrStdout(), p.Format())
			return err
		},
	}
	cmd.Flags().StringVar(&file, "policy", "", "policy file (TOML); default: the built-in policy")
	return cmd
}

// sloPlan is what `holdfast slo plan` reports.
type sloPlan struct {
	Objective  slo.Objective `json:"objective"`
	Size       int64         `json:"size"`
	NeededBps  float64       `json:"needed_bps"`
	MarginBps  float64       `json:"needed_with_margin_bps"`
	StartClass string        `json:"start_class"`
}

func newSLOPlanCommand() *cobra.Command {
	var f sloFlags
	var size string
	cmd := &cobra.Command{
		Use:   "plan --size SIZE (--deadline WHEN | --min-rate RATE)",
		Short: "Show the rate an objective needs for a task of a given size",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			n, err := humanize.ParseBytes(size)
			if err != nil {
				return fmt.Errorf("--size %q: %w", size, err)
			}
			obj, p, err := f.parse(time.Now())
			if err != nil {
				return err
			}
			if obj.IsZero() {
				return fmt.Errorf("give --deadline or --min-rate")
			}
			now := time.Now()
			pl := sloPlan{Objective: obj, Size: int64(n), StartClass: p.Start,
				NeededBps: obj.NeededRate(now, 0, int64(n), 0) * 8,
				MarginBps: obj.NeededRate(now, 0, int64(n), p.Margin) * 8,
			}
			if globals.json {
				return printJSON(cmd.OutOrStdout(), pl)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "objective %s for %s: needs %s (%s keeping %g%% of the time in reserve); starts in %s\n",
				obj, humanize.Bytes(n), slo.FormatRate(pl.NeededBps), slo.FormatRate(pl.MarginBps), p.Margin*100, p.Start)
			return nil
		},
	}
	cmd.Flags().StringVar(&size, "size", "", "task size, e.g. 10GB or 512MiB")
	f.add(cmd)
	return cmd
}

func loadSLOPolicy(file string) (slo.Policy, error) {
	if file == "" {
		return slo.DefaultPolicy(), nil
	}
	return slo.LoadPolicy(file)
}

// sloFlags are the objective flags of a task command (--deadline,
// --min-rate, --slo-policy).
type sloFlags struct {
	deadline, minRate, policy, metricsFile string
}

func (f *sloFlags) add(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.deadline, "deadline", "", "finish by then: a duration (10m) or a time with zone (2026-11-25T02:00Z); marks packets with DSCP classes to meet it")
	fl.StringVar(&f.minRate, "min-rate", "", "keep at least this rate, e.g. 50Mbit or 6MB/s; marks packets with DSCP classes to keep it")
	fl.StringVar(&f.policy, "slo-policy", "", "DSCP policy file for --deadline/--min-rate (see holdfast slo policy)")
	fl.StringVar(&f.metricsFile, "slo-metrics-file", "", "write the objective's Prometheus metrics (class, DSCP, changes, rates) to this file when the task ends, for node_exporter's textfile collector")
}

func (f *sloFlags) parse(now time.Time) (slo.Objective, slo.Policy, error) {
	obj, err := slo.ParseObjective(f.deadline, f.minRate, now)
	if err != nil {
		return slo.Objective{}, slo.Policy{}, err
	}
	p, err := loadSLOPolicy(f.policy)
	if err != nil {
		return slo.Objective{}, slo.Policy{}, err
	}
	return obj, p, nil
}

// sloRun is a tagger attached to a bulk transfer.
type sloRun struct {
	tagger      *slo.Tagger
	cancel      context.CancelFunc
	done        chan struct{}
	metricsFile string
	log         *slog.Logger
}

// attachBulk parses the objective flags and, when an objective is given,
// hooks a tagger into opts: every connection the transfer uses is marked,
// progress feeds the tagger. It returns nil when there is no objective.
// Call finish when the transfer is over.
func (f *sloFlags) attachBulk(ctx context.Context, opts *bulk.Options, log *slog.Logger) (*sloRun, error) {
	obj, p, err := f.parse(time.Now())
	if err != nil || obj.IsZero() {
		return nil, err
	}
	var done, total atomic.Int64
	tg, err := slo.NewTagger(obj, p, func() (int64, int64) { return done.Load(), total.Load() }, log)
	if err != nil {
		return nil, err
	}
	prev, prevConn, prevDial := opts.Progress, opts.OnConn, opts.OnDial
	opts.Progress = func(pr bulk.Progress) {
		done.Store(pr.Bytes)
		total.Store(pr.Total)
		if prev != nil {
			prev(pr)
		}
	}
	opts.OnConn = func(id int, c *net.TCPConn) {
		if err := tg.AddConn(c); err != nil {
			log.Warn("slo: cannot mark connection", "conn", id, "err", err)
		}
		if prevConn != nil {
			prevConn(id, c)
		}
	}
	// Connections are marked as soon as they connect, so the priming
	// traffic carries the task's class too; OnConn covers pooled ones.
	opts.OnDial = func(c *net.TCPConn) {
		if err := tg.AddConn(c); err != nil {
			log.Warn("slo: cannot mark connection", "err", err)
		}
		if prevDial != nil {
			prevDial(c)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	r := &sloRun{tagger: tg, cancel: cancel, done: make(chan struct{}), metricsFile: f.metricsFile, log: log}
	go func() { defer close(r.done); tg.Run(ctx) }()
	log.Info("slo: objective", "objective", obj.String(), "start", p.Start)
	return r, nil
}

// finish stops the tagger and returns its report (nil for no objective).
func (r *sloRun) finish() *slo.Report {
	if r == nil {
		return nil
	}
	r.cancel()
	<-r.done
	rep := r.tagger.Report()
	if r.metricsFile != "" {
		reg := prometheus.NewRegistry()
		err := reg.Register(r.tagger)
		if err == nil {
			err = prometheus.WriteToTextfile(r.metricsFile, reg)
		}
		if err != nil {
			r.log.Warn("slo: writing metrics file", "file", r.metricsFile, "err", err)
		}
	}
	return &rep
}

// withSLO returns what holdfast cp --json prints: the transfer report,
// with an "slo" field holding the tagger's report when there is an
// objective.
func withSLO(rep *bulk.Report, s *slo.Report) any {
	if s == nil {
		return rep
	}
	return struct {
		*bulk.Report
		SLO *slo.Report `json:"slo"`
	}{rep, s}
}

// printSLO writes the class changes of a task for people.
func printSLO(w io.Writer, s *slo.Report) {
	if s == nil {
		return
	}
	fmt.Fprintf(w, "objective %s: started in %s, ended in %s, %d class changes\n", s.Objective, s.Start, s.Final, len(s.Changes))
	for _, c := range s.Changes {
		fmt.Fprintf(w, "  %s %s -> %s (%s): %s\n", c.Time.Format("15:04:05.000"), c.From, c.To, slo.DSCPName(c.ToDSCP), c.Reason)
	}
}
