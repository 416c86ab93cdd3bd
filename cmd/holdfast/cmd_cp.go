package main

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/holdfast/holdfast/internal/bulk"
	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/netdiag"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
)

// cpOptions are the flags of holdfast cp.
type cpOptions struct {
	state      string
	recursive  bool
	streams    string
	maxStreams int
	rateLimit  string
	resume     bool
	blockSize  int
	checksum   string
	cc         string
	noPace     bool
	fair       bool
	noProgress bool
	noDiag     bool
	diagDir    string
	slo        sloFlags // --deadline, --min-rate: cmd_slo.go
}

func newCpCommand() *cobra.Command {
	var o cpOptions
	cmd := &cobra.Command{
		Use:   "cp [-r] SRC... HOST[:PORT]:DST | HOST[:PORT]:SRC... DST",
		Short: "Copy files to a peer over primed, paced parallel connections",
		Long: `Copy files and directory trees to a peer running 'holdfast serve' or a
holdfast agent, over several TCP connections authenticated with the cluster's
mTLS. Connections are primed (RTT measured, buffers sized to the path,
congestion window opened) before data flows; sends are paced to the
estimated end-to-end bandwidth. Every block is checksummed and every file
hashed end to end; a file appears under its final name only when complete.
An interrupted copy continues from its last verified block with --resume.

DST is relative to the receiver's --root. With several sources, or when DST
is an existing directory there, sources land inside it. The reverse form,
HOST:SRC... DST, fetches from the peer (SRC relative to its --root): the
peer sends over the connections this side opens.`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runCp(cmd, o, args)
		},
	}
	addStateFlag(cmd, &o.state)
	f := cmd.Flags()
	f.BoolVarP(&o.recursive, "recursive", "r", false, "copy directories recursively")
	f.StringVar(&o.streams, "streams", "auto", "number of connections, or auto (grow while goodput grows)")
	f.IntVar(&o.maxStreams, "max-streams", bulk.DefaultMaxStreams, "most connections --streams auto uses")
	f.StringVar(&o.rateLimit, "rate-limit", "", "cap the rate, e.g. 100Mbit or 20MB (per second)")
	f.BoolVar(&o.resume, "resume", false, "continue an interrupted copy from its verified blocks")
	f.IntVar(&o.blockSize, "block-size", bulk.DefaultBlockSize, "block size in bytes (unit of checksums and resume)")
	f.StringVar(&o.checksum, "checksum", string(bulk.ChecksumCRC32C), "per-block checksum: crc32c (TLS already authenticates the data in flight) or blake3 (a cryptographic digest of every block)")
	f.StringVar(&o.cc, "cc", "auto", "TCP congestion control: auto (bbr when the kernel has it, else the system default), cubic, bbr or reno")
	f.BoolVar(&o.noPace, "no-pace", false, "do not pace sends")
	f.BoolVar(&o.fair, "fair", false, "take only one flow's fair share of a shared bottleneck (one connection)")
	f.BoolVar(&o.noProgress, "no-progress", false, "do not show a progress bar")
	f.BoolVar(&o.noDiag, "no-netdiag", false, "do not record network diagnostics (see holdfast netdiag report)")
	f.StringVar(&o.diagDir, "netdiag-dir", "", "network diagnostics log directory (default <state>/netdiag)")
	o.slo.add(cmd)
	return cmd
}

func runCp(cmd *cobra.Command, o cpOptions, args []string) error {
	dstSpec := args[len(args)-1]
	srcs := args[:len(args)-1]
	addr, dst, remote, err := bulk.ParseRemote(dstSpec)
	if err != nil {
		return err
	}
	// HOST:SRC... LOCAL fetches from the peer.
	var fetchFrom string
	var fetchSrcs []string
	if !remote {
		for _, s := range srcs {
			a, p, r, err := bulk.ParseRemote(s)
			if err != nil {
				return err
			}
			if !r {
				return fmt.Errorf("neither %q nor %q is remote: want HOST[:PORT]:PATH on one side", s, dstSpec)
			}
			if fetchFrom != "" && a != fetchFrom {
				return errors.New("all remote sources must be on the same peer")
			}
			fetchFrom = a
			fetchSrcs = append(fetchSrcs, p)
		}
	} else {
		for _, s := range srcs {
			if _, _, r, _ := bulk.ParseRemote(s); r {
				return fmt.Errorf("source %q and destination %q are both remote", s, dstSpec)
			}
		}
	}
	opts := bulk.Options{Recursive: o.recursive, Resume: o.resume, BlockSize: o.blockSize, Checksum: bulk.Checksum(o.checksum), NoPace: o.noPace, Fair: o.fair, MaxStreams: o.maxStreams}
	if o.streams != "auto" {
		n, err := strconv.Atoi(o.streams)
		if err != nil || n < 1 {
			return fmt.Errorf("--streams %q: want a positive number or auto", o.streams)
		}
		opts.Streams = n
	}
	if opts.RateLimit, err = bulk.ParseRate(o.rateLimit); err != nil {
		return fmt.Errorf("--rate-limit: %w", err)
	}
	// A copy allocates one block buffer per message; collecting less often
	// cut the copy's CPU by about a tenth (GC was 18% of it in a profile).
	debug.SetGCPercent(400)
	id, err := cluster.Load(o.state)
	if err != nil {
		return fmt.Errorf("loading node identity from %s (set --state or HOLDFAST_STATE): %w", o.state, err)
	}
	log := logger()
	ccfg := bulk.ClientConfig{TLS: id.ClientTLS(log), Node: id.Name, CC: o.cc, Logger: log,
		// What each copy measured of its path, for the next copy to the
		// same peer (bulk.PathMemoryTTL).
		PathMemory: filepath.Join(o.state, "bulk-paths.json")}
	if !o.noDiag && fetchFrom == "" {
		// Every message's send and acknowledgement times, kernel
		// timestamps and TCP_INFO go to the netdiag log, for 'holdfast
		// netdiag report' (bench/netdiag measures what this costs).
		dir := o.diagDir
		if dir == "" {
			dir = netdiag.DirIn(o.state)
		}
		rec, err := netdiag.NewRecorder(netdiag.DefaultRecorderConfig(dir), log)
		if err != nil {
			return fmt.Errorf("opening the netdiag log (or pass --no-netdiag): %w", err)
		}
		defer rec.Close()
		ccfg.Diag = rec
	}
	if fetchFrom != "" {
		// Receive under the destination's parent directory.
		root, err := filepath.Abs(filepath.Dir(filepath.Clean(dstSpec)))
		if err != nil {
			return err
		}
		svc, err := bulk.NewService(bulk.ServiceConfig{Root: root, Logger: log})
		if err != nil {
			return err
		}
		defer svc.Close()
		ccfg.Service = svc
	}
	cl, err := bulk.NewClient(ccfg)
	if err != nil {
		return err
	}
	defer cl.Close()
	if !o.noProgress && !globals.json {
		opts.Progress = progressPrinter(cmd.ErrOrStderr())
	}
	// --deadline/--min-rate: a DSCP tagger follows the transfer (cmd_slo.go).
	sr, err := o.slo.attachBulk(cmd.Context(), &opts, log)
	if err != nil {
		return err
	}
	var rep *bulk.Report
	if fetchFrom != "" {
		rep, err = cl.Fetch(cmd.Context(), fetchFrom, fetchSrcs, dstSpec, opts)
	} else {
		rep, err = cl.SendFiles(cmd.Context(), addr, srcs, dst, opts)
	}
	sloRep := sr.finish()
	if !o.noProgress && !globals.json { // end the progress bar's line
		fmt.Fprintln(cmd.ErrOrStderr())
	}
	if rep != nil {
		if globals.json {
			if jerr := printJSON(cmd.OutOrStdout(), withSLO(rep, sloRep)); jerr != nil {
				return jerr
			}
		} else {
			fmt.Fprintf(cmd.OutOrStdout(), "copied %d files, %s in %.2fs: %.1f Mbit/s over up to %d connections (%d sub-transfers)\n",
				rep.Files, humanBytes(rep.Bytes), rep.Seconds, rep.Goodput/1e6, rep.MaxStreams, rep.Rounds)
			printSLO(cmd.OutOrStdout(), sloRep)
		}
	}
	if err != nil {
		if rep != nil && len(rep.Errors) > 0 && !errors.Is(err, bulk.ErrDestFull) {
			return &ExitError{Code: exitPartial, Err: err}
		}
		return err
	}
	return nil
}

// progressPrinter draws a progress bar with rate, ETA and connections in
// use.
func progressPrinter(w io.Writer) func(bulk.Progress) {
	var bar *progressbar.ProgressBar
	return func(p bulk.Progress) {
		if bar == nil {
			bar = progressbar.NewOptions64(p.Total, progressbar.OptionSetWriter(w), progressbar.OptionShowBytes(true),
				progressbar.OptionSetPredictTime(true), progressbar.OptionThrottle(200*time.Millisecond),
				progressbar.OptionSetWidth(30), progressbar.OptionShowDescriptionAtLineEnd())
		}
		bar.Describe(fmt.Sprintf("%.1f Mbit/s, %d conns", p.Rate*8/1e6, p.Streams))
		_ = bar.Set64(p.Bytes)
	}
}
