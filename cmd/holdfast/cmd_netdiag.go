package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/holdfast/holdfast/internal/netdiag"
	"github.com/holdfast/holdfast/internal/netdiag/proxy"
	"github.com/spf13/cobra"
)

func newNetdiagCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "netdiag",
		Short: "Network problem detection: classify what limits transfers, measure any TCP application through a proxy",
	}
	cmd.AddCommand(newNetdiagReportCommand(), newNetdiagProxyCommand())
	return cmd
}

// netdiagReportOptions are the flags of `holdfast netdiag report`.
type netdiagReportOptions struct {
	dir   string
	peer  string
	since time.Duration
}

func newNetdiagReportCommand() *cobra.Command {
	var opts netdiagReportOptions
	cmd := &cobra.Command{
		Use:   "report",
		Short: "Classify recorded traffic per peer: network, receiving application, sending application or healthy",
		Long: `report reads the netdiag log (written by holdfast's own transfers and by
'holdfast netdiag proxy') and says, per peer, what limited the traffic, with
the evidence in figures. Signals that fired are marked with '!'.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			rep, err := netdiag.BuildReport(cmd.Context(), netdiag.ReportOptions{Dir: opts.dir, Peer: opts.peer, Since: opts.since})
			if err != nil {
				return err
			}
			if globals.json {
				return printJSON(cmd.OutOrStdout(), rep)
			}
			return rep.WriteText(cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.dir, "dir", netdiag.DirIn(defaultStateDir()), "netdiag log directory (default <state>/netdiag, state from HOLDFAST_STATE)")
	f.StringVar(&opts.peer, "peer", "", "only this peer (host or host:port)")
	f.DurationVar(&opts.since, "since", 0, "only the last duration, e.g. 10m (default: everything in the log)")
	return cmd
}

// netdiagProxyOptions are the flags of `holdfast netdiag proxy`.
type netdiagProxyOptions struct {
	listen       string
	to           string
	dir          string
	noMeasure    bool
	sampleEvery  int
	sampleIntvl  time.Duration
	tcpInfoEvery time.Duration
	maxLogBytes  int64
}

func newNetdiagProxyCommand() *cobra.Command {
	var opts netdiagProxyOptions
	cmd := &cobra.Command{
		Use:   "proxy --listen :PORT --to HOST:PORT",
		Short: "Run a measuring TCP proxy in front of any client or server",
		Long: `proxy accepts TCP connections on --listen, connects each to --to and copies
both ways, measuring both legs (per-write kernel timestamps by byte offset,
TCP_INFO) into the netdiag log. Run 'holdfast netdiag report' on the same
--dir to classify the traffic. Stops on SIGINT/SIGTERM.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runNetdiagProxy(cmd.Context(), opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.listen, "listen", "", "address to accept clients on, e.g. :8080 (required)")
	f.StringVar(&opts.to, "to", "", "server address, e.g. 10.0.0.5:80 (required)")
	f.StringVar(&opts.dir, "dir", netdiag.DirIn(defaultStateDir()), "netdiag log directory (default <state>/netdiag, state from HOLDFAST_STATE)")
	f.BoolVar(&opts.noMeasure, "no-measure", false, "forward only, record nothing (baseline)")
	f.IntVar(&opts.sampleEvery, "sample-every", 1, "kernel-timestamp one write in N")
	f.DurationVar(&opts.sampleIntvl, "sample-interval", netdiag.DefaultConfig().WriteSampleInterval, "least time between kernel-timestamped writes per connection (0: no limit)")
	f.DurationVar(&opts.tcpInfoEvery, "tcpinfo-interval", 100*time.Millisecond, "TCP_INFO sampling interval (0: off)")
	f.Int64Var(&opts.maxLogBytes, "max-log-bytes", netdiag.DefaultMaxTotalBytes, "bound on the log directory's size")
	_ = cmd.MarkFlagRequired("listen")
	_ = cmd.MarkFlagRequired("to")
	return cmd
}

func runNetdiagProxy(ctx context.Context, opts netdiagProxyOptions) error {
	log := logger()
	cfg := proxy.DefaultConfig(opts.listen, opts.to)
	cfg.Measure = !opts.noMeasure
	cfg.Monitor.WriteSampleEvery = opts.sampleEvery
	cfg.Monitor.WriteSampleInterval = opts.sampleIntvl
	cfg.Monitor.TCPInfoInterval = opts.tcpInfoEvery
	var sink netdiag.Sink
	var rec *netdiag.Recorder
	if cfg.Measure {
		if least := int64(4 * netdiag.MinMaxFileBytes); opts.maxLogBytes < least {
			return fmt.Errorf("--max-log-bytes %d: must be at least %d", opts.maxLogBytes, least)
		}
		rcfg := netdiag.DefaultRecorderConfig(opts.dir)
		rcfg.MaxTotalBytes = opts.maxLogBytes
		rcfg.MaxFileBytes = min(rcfg.MaxFileBytes, opts.maxLogBytes/4)
		var err error
		if rec, err = netdiag.NewRecorder(rcfg, log); err != nil {
			return err
		}
		sink = rec
	}
	p, err := proxy.New(cfg, sink, log)
	if err != nil {
		if rec != nil {
			_ = rec.Close()
		}
		return err
	}
	serr := p.ListenAndServe(ctx, func(a net.Addr) {
		log.Info("netdiag proxy ready", "listen", a.String(), "to", opts.to, "dir", opts.dir)
	})
	if rec != nil {
		serr = errors.Join(serr, rec.Close())
	}
	if serr != nil {
		return fmt.Errorf("netdiag proxy: %w", serr)
	}
	return nil
}
