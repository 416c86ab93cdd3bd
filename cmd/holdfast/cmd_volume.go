package main

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/holdfast/holdfast/internal/cdp"
	"github.com/spf13/cobra"
)

// volumeOptions are the flags shared by the volume commands.
type volumeOptions struct {
	state string
}

func newVolumeCommand() *cobra.Command {
	var o volumeOptions
	cmd := &cobra.Command{
		Use:   "volume",
		Short: "Block volumes with continuous data protection, exported over NBD",
		Long: `Block volumes exported over NBD whose every write goes to a local CDP log
(and, with --remote, to a remote CDP log on another agent), so that any point
in time can be restored as a new volume. See docs/cdp.md.`,
	}
	cmd.PersistentFlags().StringVar(&o.state, "state", "/var/lib/holdfast", "agent state directory (the API is <state>/agent.sock)")
	client := func() *cdp.Client { return cdp.NewUnixClient(filepath.Join(o.state, "agent.sock")) }
	cmd.AddCommand(
		newVolumeCreateCommand(client),
		newVolumeListCommand(client),
		newVolumeInfoCommand(client),
		newVolumeDeleteCommand(client),
		newVolumeMarkCommand(client),
		newVolumeTimelineCommand(client),
		newVolumeRestoreCommand(client),
		newVolumeFoldCommand(client),
		newVolumeServeCommand(&o),
	)
	return cmd
}

// parseSize parses 4096, 512K, 100M, 10G, 1T (binary units; an optional
// trailing "iB" or "B" is accepted).
func parseSize(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(s)), "B"), "I")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult > 1 {
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseInt(t, 10, 64)
	if err != nil || v <= 0 || v > (1<<62)/mult {
		return 0, fmt.Errorf("size %q: want a positive number with an optional K, M, G or T suffix", s)
	}
	return v * mult, nil
}

func modeFlag(sync, async bool) (cdp.Mode, error) {
	switch {
	case sync && async:
		return "", fmt.Errorf("--sync and --async exclude each other")
	case sync:
		return cdp.ModeSync, nil
	case async:
		return cdp.ModeAsync, nil
	}
	return "", nil
}

func printInfo(cmd *cobra.Command, in cdp.Info) error {
	if globals.json {
		return printJSON(cmd.OutOrStdout(), in)
	}
	w := cmd.OutOrStdout()
	fmt.Fprintf(w, "volume %s: %d bytes, mode %s", in.Name, in.Size, in.Mode)
	if in.Remote != "" {
		fmt.Fprintf(w, ", remote %s", in.Remote)
	}
	fmt.Fprintf(w, "\n  log: seq %d..%d, %d bytes (folded up to %d)\n", in.FirstSeq, in.LastSeq, in.LogBytes, in.FoldSeq)
	if in.RestoredFrom != "" {
		fmt.Fprintf(w, "  restored from %s, filled %.1f%%\n", in.RestoredFrom, in.FillPercent)
	}
	if r := in.Replication; r != nil {
		fmt.Fprintf(w, "  replication: %s, shipped %d, lag %d records / %.3fs (p99 %.3fs)", r.State, r.ShippedSeq, r.LagRecords, r.LagSeconds, r.P99Seconds)
		if r.BulkTransfers > 0 {
			fmt.Fprintf(w, ", %d backlog(s) of %d bytes in bulk", r.BulkTransfers, r.BulkBytes)
		}
		if r.LastError != "" {
			fmt.Fprintf(w, ", last error: %s", r.LastError)
		}
		fmt.Fprintln(w)
	}
	_, err := fmt.Fprintf(w, "  NBD export name: %s\n", in.Name)
	return err
}

func newVolumeCreateCommand(client func() *cdp.Client) *cobra.Command {
	var size, remote string
	var sync, async, noCDP bool
	cmd := &cobra.Command{
		Use:   "create NAME --size SIZE [--remote AGENT] [--sync|--async]",
		Short: "Create a volume and export it over NBD",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := parseSize(size)
			if err != nil {
				return err
			}
			mode, err := modeFlag(sync, async)
			if err != nil {
				return err
			}
			in, err := client().Create(cmd.Context(), cdp.CreateOptions{Name: args[0], Size: n, Remote: remote, Mode: mode, NoCDP: noCDP})
			if err != nil {
				return err
			}
			return printInfo(cmd, in)
		},
	}
	cmd.Flags().StringVar(&size, "size", "", "volume size (e.g. 10G), a multiple of 4 KiB")
	cmd.Flags().StringVar(&remote, "remote", "", "agent that holds the remote CDP log")
	cmd.Flags().BoolVar(&sync, "sync", false, "acknowledge a write only once the remote log has it")
	cmd.Flags().BoolVar(&async, "async", false, "ship writes in the background and measure the lag (default with --remote)")
	cmd.Flags().BoolVar(&noCDP, "no-cdp", false, "no CDP log (a plain volume, the benchmark baseline)")
	cmd.MarkFlagRequired("size")
	return cmd
}

func newVolumeListCommand(client func() *cdp.Client) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List volumes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			list, err := client().List(cmd.Context())
			if err != nil {
				return err
			}
			if globals.json {
				return printJSON(cmd.OutOrStdout(), list)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSIZE\tMODE\tREMOTE\tLAST SEQ\tLOG BYTES\tLAG")
			for _, in := range list {
				lag := "-"
				if r := in.Replication; r != nil {
					lag = fmt.Sprintf("%s %.3fs", r.State, r.LagSeconds)
				}
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%d\t%s\n", in.Name, in.Size, in.Mode, in.Remote, in.LastSeq, in.LogBytes, lag)
			}
			return tw.Flush()
		},
	}
}

func newVolumeInfoCommand(client func() *cdp.Client) *cobra.Command {
	return &cobra.Command{
		Use:   "info NAME",
		Short: "Describe a volume, its log and its replication lag",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			in, err := client().Get(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return printInfo(cmd, in)
		},
	}
}

func newVolumeDeleteCommand(client func() *cdp.Client) *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a volume and its local CDP log",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := client().Delete(cmd.Context(), args[0]); err != nil {
				return err
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "deleted volume %s\n", args[0])
			return err
		},
	}
}

func newVolumeMarkCommand(client func() *cdp.Client) *cobra.Command {
	return &cobra.Command{
		Use:   "mark NAME LABEL",
		Short: "Record a named point in time",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := client().Mark(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			if globals.json {
				return printJSON(cmd.OutOrStdout(), p)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "mark %q at seq %d, %s\n", p.Label, p.Seq, p.Time.Format(time.RFC3339Nano))
			return err
		},
	}
}

func newVolumeTimelineCommand(client func() *cdp.Client) *cobra.Command {
	var q cdp.TimelineQuery
	var kinds, remote string
	cmd := &cobra.Command{
		Use:   "timeline NAME",
		Short: "List the restorable points (writes, flushes, marks)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if kinds != "" {
				q.Kinds = strings.Split(kinds, ",")
			}
			tl, err := client().Timeline(cmd.Context(), args[0], q, remote)
			if err != nil {
				return err
			}
			if globals.json {
				return printJSON(cmd.OutOrStdout(), tl)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "volume %s: seq %d..%d (folded up to %d)\n", tl.Volume, tl.FirstSeq, tl.LastSeq, tl.FoldSeq)
			fmt.Fprintln(tw, "SEQ\tTIME\tKIND\tOFFSET\tLENGTH\tLABEL")
			for _, p := range tl.Points {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%d\t%s\n", p.Seq, p.Time.Format(time.RFC3339Nano), p.Kind, p.Offset, p.Length, p.Label)
			}
			if tl.Truncated {
				fmt.Fprintln(tw, "... (more: use --since and --limit)")
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&kinds, "kinds", "", "comma-separated kinds to list: write, zero, mark, flush (default all)")
	cmd.Flags().Uint64Var(&q.Since, "since", 0, "first sequence number to list")
	cmd.Flags().IntVar(&q.Limit, "limit", 1000, "most points to list")
	cmd.Flags().StringVar(&remote, "remote", "", "list the remote log of the volume held by this agent")
	return cmd
}

func newVolumeRestoreCommand(client func() *cdp.Client) *cobra.Command {
	var o cdp.RestoreOptions
	var sync, async bool
	cmd := &cobra.Command{
		Use:   "restore NAME --at TIME|SEQ|MARK --as NEWNAME [--from-remote AGENT]",
		Short: "Create a new volume as NAME was at a point in time (usable at once)",
		Long: `Create volume NEWNAME with the content of NAME at a point: a sequence number,
a time (RFC 3339, or a negative duration such as -5m), a mark label, or "now".
The new volume is exported at once; its blocks are copied in the background
and read through the source's CDP log until they are. With --from-remote the
remote CDP log held by that agent is the source (the local site is lost).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Name = args[0]
			mode, err := modeFlag(sync, async)
			if err != nil {
				return err
			}
			o.Mode = mode
			in, err := client().Restore(cmd.Context(), o)
			if err != nil {
				return err
			}
			return printInfo(cmd, in)
		},
	}
	cmd.Flags().StringVar(&o.At, "at", "", "point: TIME (RFC 3339 or -DURATION), SEQ, MARK or now")
	cmd.Flags().StringVar(&o.As, "as", "", "name of the new volume")
	cmd.Flags().StringVar(&o.FromRemote, "from-remote", "", "restore from the remote log held by this agent")
	cmd.Flags().StringVar(&o.Remote, "remote", "", "protect the new volume with a remote log on this agent")
	cmd.Flags().BoolVar(&sync, "sync", false, "new volume: synchronous replication")
	cmd.Flags().BoolVar(&async, "async", false, "new volume: asynchronous replication")
	cmd.MarkFlagRequired("at")
	cmd.MarkFlagRequired("as")
	return cmd
}

func newVolumeFoldCommand(client func() *cdp.Client) *cobra.Command {
	var olderThan string
	cmd := &cobra.Command{
		Use:   "fold NAME [--older-than DURATION]",
		Short: "Fold log records older than the retention window into the base image now",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			upTo, err := client().Fold(cmd.Context(), args[0], olderThan)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "folded %s up to seq %d\n", args[0], upTo)
			return err
		},
	}
	cmd.Flags().StringVar(&olderThan, "older-than", "", "fold records older than this (default: the retention window)")
	return cmd
}

func newVolumeServeCommand(o *volumeOptions) *cobra.Command {
	var sc cdp.StandaloneConfig
	var retention time.Duration
	var segment string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the volume service without the agent daemon (NBD server and volume API; local volumes only)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			sc.Manager = cdp.DefaultConfig(o.state)
			sc.Manager.Retention = retention
			if segment != "" {
				n, err := parseSize(segment)
				if err != nil {
					return err
				}
				sc.Manager.SegmentBytes = n
			}
			if sc.NBDSocket == "" {
				sc.NBDSocket = filepath.Join(o.state, "nbd.sock")
			}
			sc.APISocket = filepath.Join(o.state, "agent.sock")
			return cdp.RunStandalone(cmd.Context(), sc, logger())
		},
	}
	cmd.Flags().StringVar(&sc.NBDAddr, "nbd-listen", "127.0.0.1:10809", "TCP address for NBD clients (empty: none)")
	cmd.Flags().StringVar(&sc.NBDSocket, "nbd-socket", "", "unix socket for NBD clients (default <state>/nbd.sock)")
	cmd.Flags().DurationVar(&retention, "retention", 24*time.Hour, "how long every write stays restorable")
	cmd.Flags().StringVar(&segment, "segment-size", "", "CDP log segment size (default 64M)")
	return cmd
}
