package netdiag

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ReportOptions selects what a report covers.
type ReportOptions struct {
	// Dir is the netdiag log directory.
	Dir string
	// Peer limits the report to one peer (host or host:port); empty: all.
	Peer string
	// Since limits the window to the last Since before Now; 0: everything.
	Since time.Duration
	// Now is the end of the window (default time.Now()).
	Now time.Time
	// Thresholds for the classifier (zero value: DefaultThresholds()).
	Thresholds *Thresholds
}

// Report is the result of classifying a log directory.
type Report struct {
	Dir      string    `json:"dir"`
	Since    string    `json:"since,omitempty"`
	Log      LogStats  `json:"log"`
	Verdicts []Verdict `json:"verdicts"`
}

// ErrNoRecords is returned when the log directory holds no records for the
// selection.
var ErrNoRecords = fmt.Errorf("no netdiag records")

// BuildReport reads the log directory and classifies every peer.
func BuildReport(ctx context.Context, opts ReportOptions) (Report, error) {
	th := DefaultThresholds()
	if opts.Thresholds != nil {
		th = *opts.Thresholds
	}
	if err := th.Validate(); err != nil {
		return Report{}, err
	}
	if _, err := os.Stat(opts.Dir); err != nil {
		return Report{}, fmt.Errorf("netdiag log dir: %w", err)
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	var since int64
	rep := Report{Dir: opts.Dir}
	if opts.Since > 0 {
		since = now.Add(-opts.Since).UnixNano()
		rep.Since = opts.Since.String()
	}
	// Keep only what the summaries use: the selected peers, and before the
	// window only the TCP_INFO samples that feed the baselines.
	var recs []Record
	st, err := ReadLog(opts.Dir, func(r Record) {
		if (opts.Peer != "" && !MatchPeer(r.Peer, opts.Peer)) || (r.Time < since && r.TCPInfo == nil) {
			return
		}
		recs = append(recs, r)
	})
	if err != nil {
		return Report{}, err
	}
	if err := ctx.Err(); err != nil {
		return Report{}, err
	}
	rep.Log = st
	sums := Summarize(recs, since, opts.Peer)
	for _, s := range sums {
		rep.Verdicts = append(rep.Verdicts, Classify(s, th))
	}
	if len(rep.Verdicts) == 0 {
		what := "in " + opts.Dir
		if opts.Peer != "" {
			what += " for peer " + opts.Peer
		}
		if opts.Since > 0 {
			what += " in the last " + opts.Since.String()
		}
		return rep, fmt.Errorf("%w %s (%d files, %d records, %d bad lines)", ErrNoRecords, what, st.Files, st.Records, st.BadLines)
	}
	return rep, nil
}

// WriteText prints the report for people: per peer the verdict, then the
// evidence that fired (marked "!") and the figures that did not.
func (r Report) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "netdiag report: %s (%d files, %d records", r.Dir, r.Log.Files, r.Log.Records)
	if r.Log.BadLines > 0 {
		fmt.Fprintf(&b, ", %d bad lines skipped", r.Log.BadLines)
	}
	b.WriteString(")")
	if r.Since != "" {
		fmt.Fprintf(&b, ", last %s", r.Since)
	}
	b.WriteString("\n")
	for _, v := range r.Verdicts {
		s := v.Summary
		fmt.Fprintf(&b, "\npeer %s: %s", v.Peer, strings.ToUpper(string(v.Class)))
		if len(v.Also) > 0 {
			also := make([]string, len(v.Also))
			for i, c := range v.Also {
				also[i] = string(c)
			}
			fmt.Fprintf(&b, " (also: %s)", strings.Join(also, ", "))
		}
		fmt.Fprintf(&b, "\n  %d conn(s), %.2f s active, %s acknowledged", s.Conns, s.ActiveSeconds, fmtBytes(float64(s.BytesAcked)))
		if s.ActiveSeconds > 0 {
			fmt.Fprintf(&b, " (%s/s)", fmtBytes(float64(s.BytesAcked)/s.ActiveSeconds))
		}
		b.WriteString("\n")
		if s.Writes > 0 {
			fmt.Fprintf(&b, "  %d timestamped writes: kernel queue p50 %v p90 %v, ack after send p50 %v p90 %v\n",
				s.Writes, rd(s.KernelQueueP50), rd(s.KernelQueueP90), rd(s.AckTimeP50), rd(s.AckTimeP90))
		}
		if s.Msgs > 0 {
			fmt.Fprintf(&b, "  %d messages: transit p50 %v p90 %v = network p50 %v + receiver app p50 %v\n",
				s.Msgs, rd(s.TransitP50), rd(s.TransitP90), rd(s.NetworkP50), rd(s.ReceiverAppP50))
		}
		if s.MsgDecomposed > 0 {
			fmt.Fprintf(&b, "  transit by stage (p50, sender clock): sender queue %v, wire %v, receiver %v\n",
				rd(s.MsgSenderQueueP50), rd(s.MsgWireP50), rd(s.MsgReceiverP50))
		}
		for _, e := range v.Evidence {
			mark := " "
			if e.Fired {
				mark = "!"
			}
			fmt.Fprintf(&b, "  %s [%s] %s\n", mark, e.Class, e.Text)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// DirIn returns the netdiag log directory inside an agent state
// directory: <state>/netdiag.
func DirIn(state string) string { return filepath.Join(state, "netdiag") }
