// Command slo-bench measures service-level tagging on the lab: a deadline
// task sharing a DSCP-scheduling bottleneck with untagged bulk flows, run
// untagged, statically marked with the highest class, and tagged
// dynamically by holdfast's slo.Tagger, side by side; and a task far ahead
// of its deadline, untagged and tagged, to show what the competing flows
// gain when it drops to scavenger. It prints a table of medians. Run it
// through run.sh (it needs root for the lab's network namespaces).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/holdfast/holdfast/internal/lab"
	"github.com/holdfast/holdfast/internal/slo"
	"github.com/holdfast/holdfast/internal/slo/slolab"
)

type mode struct {
	name   string
	tagged bool
	fixed  string
}

type row struct {
	Scenario string           `json:"scenario"`
	Mode     string           `json:"mode"`
	Run      int              `json:"run"`
	Result   slolab.Result    `json:"result"`
	CompMbit float64          `json:"competitors_mbit"`
	TaskMbit float64          `json:"task_mbit"`
	Classes  []lab.ClassStats `json:"classes"`
}

func main() {
	runs := flag.Int("runs", 3, "runs of each scenario and mode")
	rate := flag.String("path", "rate 10Mbit, rtt 20ms", "bottleneck path (lab.ParsePath syntax; the scheduler is set to weighted classes)")
	jsonOut := flag.String("json", "", "also write every run's result as JSON to this file")
	verbose := flag.Bool("v", false, "log the tagger's decisions to stderr")
	flag.Parse()
	if err := run(*runs, *rate, *jsonOut, *verbose); err != nil {
		fmt.Fprintln(os.Stderr, "slo-bench:", err)
		os.Exit(1)
	}
}

func run(runs int, pathText, jsonOut string, verbose bool) error {
	p := slo.DefaultPolicy()
	path, err := lab.ParsePath(pathText)
	if err != nil {
		return err
	}
	path.Sched = lab.Sched{Mode: lab.SchedWeighted, Classes: slolab.Classes(p)}
	var logger *slog.Logger
	if verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	} else {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	ctx := context.Background()
	l, err := lab.Start(ctx, lab.Config{Hosts: 2, Path: path}, logger)
	if err != nil {
		return err
	}
	defer l.Close()

	top := p.Classes[len(p.Classes)-1].Name
	deadline := slolab.Scenario{
		Policy: p, Deadline: 16 * time.Second, Size: 8_000_000,
		TaskConns: 2, Competitors: 2, CompetitorConns: 3, Warmup: 1500 * time.Millisecond,
		StopWhenDone: true, RunFor: 26 * time.Second,
	}
	ahead := slolab.Scenario{
		Policy: p, Deadline: 300 * time.Second, Size: 12_000_000,
		TaskConns: 4, Competitors: 2, CompetitorConns: 1, Warmup: time.Second,
		RunFor: 12 * time.Second,
	}
	scenarios := []struct {
		name  string
		sc    slolab.Scenario
		modes []mode
		desc  string
	}{
		{"deadline", deadline, []mode{{"untagged", false, ""}, {"static " + top, false, top}, {"dynamic", true, ""}},
			"8 MB task (2 connections), deadline 16 s, against 2 untagged bulk flows x 3 connections"},
		{"ahead", ahead, []mode{{"untagged", false, ""}, {"dynamic", true, ""}},
			"12 MB task (4 connections), deadline 300 s, against 2 untagged bulk flows x 1 connection; rates over 7-12 s after the start (the tagged task drops to scavenger at about 5.5 s)"},
	}
	var all []row
	fmt.Printf("# slo bench %s, path %q, weighted classes %v (scavenger..%s), %d runs, medians\n",
		time.Now().UTC().Format(time.RFC3339), pathText, slolab.Weights(len(p.Classes)), top, runs)
	for _, s := range scenarios {
		fmt.Printf("\n## %s: %s\n", s.name, s.desc)
		byMode := make(map[string][]row)
		// Interleave the modes so that load changes on the machine hit
		// them alike.
		for r := range runs {
			for _, m := range s.modes {
				sc := s.sc
				sc.Tagged, sc.Fixed = m.tagged, m.fixed
				res, err := slolab.Run(ctx, l, sc, logger)
				if err != nil {
					return fmt.Errorf("%s %s run %d: %w", s.name, m.name, r, err)
				}
				rw := row{Scenario: s.name, Mode: m.name, Run: r, Result: res, Classes: res.Classes}
				a, b := time.Duration(0), res.Elapsed
				if s.name == "ahead" {
					a, b = 7*time.Second, sc.RunFor
				}
				rw.CompMbit = res.Rate(true, a, b) * 8 / 1e6
				rw.TaskMbit = res.Rate(false, a, b) * 8 / 1e6
				byMode[m.name] = append(byMode[m.name], rw)
				all = append(all, rw)
				fmt.Fprintf(os.Stderr, "%s %-16s run %d: finished %v in %.1fs, task %.2f Mbit/s, competitors %.2f Mbit/s, %d changes\n",
					s.name, m.name, r, res.Finished, res.Elapsed.Seconds(), rw.TaskMbit, rw.CompMbit, len(res.Report.Changes))
			}
		}
		printTable(s.name, s.modes, byMode, p, s.sc)
	}
	if jsonOut != "" {
		b, err := json.MarshalIndent(all, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(jsonOut, b, 0o644); err != nil {
			return fmt.Errorf("writing %s: %w", jsonOut, err)
		}
	}
	return nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func printTable(name string, modes []mode, byMode map[string][]row, p slo.Policy, sc slolab.Scenario) {
	fmt.Printf("\n| mode | deadline met | finish s | task Mbit/s | competitors Mbit/s | class changes | bottleneck bytes per class, all flows (MB) | bottleneck drops per class, all flows |\n")
	fmt.Printf("|---|---|---|---|---|---|---|---|\n")
	base := median(collect(byMode[modes[0].name], func(r row) float64 { return r.CompMbit }))
	for _, m := range modes {
		rows := byMode[m.name]
		met := 0
		for _, r := range rows {
			if r.Result.MetDeadline {
				met++
			}
		}
		finish := "-"
		{
			var fs []float64
			unfinished := 0
			for _, r := range rows {
				if r.Result.Finished {
					fs = append(fs, r.Result.Elapsed.Seconds())
				} else {
					unfinished++
				}
			}
			if len(fs) > 0 {
				finish = fmt.Sprintf("%.1f", median(fs))
			}
			if unfinished > 0 {
				finish += fmt.Sprintf(" (%d unfinished at %.0fs)", unfinished, sc.RunFor.Seconds())
			}
		}
		comp := median(collect(rows, func(r row) float64 { return r.CompMbit }))
		compText := fmt.Sprintf("%.2f", comp)
		if m.name != modes[0].name && base > 0 {
			compText += fmt.Sprintf(" (x%.2f)", comp/base)
		}
		var bytes, drops []string
		for i := len(p.Classes) - 1; i >= 0; i-- {
			c := p.Classes[i].Name
			b := median(collect(rows, func(r row) float64 { return float64(classStat(r, c).OutBytes) / 1e6 }))
			d := median(collect(rows, func(r row) float64 { return float64(classStat(r, c).Drops()) }))
			if b == 0 && d == 0 {
				continue
			}
			bytes = append(bytes, fmt.Sprintf("%s %.1f", c, b))
			drops = append(drops, fmt.Sprintf("%s %.0f", c, d))
		}
		changes := median(collect(rows, func(r row) float64 { return float64(len(r.Result.Report.Changes)) }))
		metText := fmt.Sprintf("%d/%d", met, len(rows))
		if !sc.StopWhenDone && sc.RunFor < sc.Deadline {
			metText = "- (run ends first)"
		}
		fmt.Printf("| %s | %s | %s | %.2f | %s | %.0f | %s | %s |\n", m.name, metText, finish,
			median(collect(rows, func(r row) float64 { return r.TaskMbit })), compText, changes,
			strings.Join(bytes, ", "), strings.Join(drops, ", "))
	}
}

func classStat(r row, name string) lab.ClassStats {
	for _, c := range r.Classes {
		if c.Class == name {
			return c
		}
	}
	return lab.ClassStats{}
}

func collect(rows []row, f func(row) float64) []float64 {
	out := make([]float64, len(rows))
	for i, r := range rows {
		out[i] = f(r)
	}
	return out
}
