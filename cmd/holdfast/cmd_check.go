package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/holdfast/holdfast/internal/repo"
	"github.com/spf13/cobra"
)

func newCheckCommand() *cobra.Command {
	var f repoFlags
	var opts repo.CheckOptions
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Verify the repository (all data with --read-data)",
		Long: `Verify the repository's structure, and with --read-data every byte. Check
holds a shared lock: backups may run meanwhile, prune and forget may not.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withRepo(cmd, &f, true, func(ctx context.Context, r *repo.Repository) error {
				progress, done := newBar("check")
				if opts.ReadData {
					opts.Progress = progress
				}
				res, err := r.Check(ctx, opts)
				done()
				if res == nil {
					return repoError(err)
				}
				if perr := emit(cmd, res, func(w io.Writer) { printCheck(w, res, opts, err) }); perr != nil {
					return perr
				}
				return err
			})
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&opts.ReadData, "read-data", false, "read and verify every pack")
	return cmd
}

func printCheck(w io.Writer, res *repo.CheckResult, opts repo.CheckOptions, err error) {
	fmt.Fprintf(w, "checked %d snapshots, %d trees, %d packs, %d blobs\n", res.Snapshots, res.Trees, res.Packs, res.Blobs)
	if opts.ReadData {
		fmt.Fprintf(w, "read %d packs, %s\n", res.PacksRead, humanBytes(res.BytesRead))
	}
	if n := len(res.UnreferencedPacks); n > 0 {
		fmt.Fprintf(w, "%d packs are not referenced by any index (left by an interrupted backup; prune removes them)\n", n)
	}
	for _, e := range res.Errors {
		fmt.Fprintf(w, "error: %s\n", e)
	}
	for _, d := range res.DamagedBlobs {
		fmt.Fprintf(w, "damaged %s blob %s in pack %s, used by: %s\n", d.Type, d.ID, d.Pack.Short(), strings.Join(d.Files, ", "))
	}
	if err == nil {
		fmt.Fprintln(w, "no errors found")
	}
}

func newForgetCommand() *cobra.Command {
	var f repoFlags
	var p repo.ForgetPolicy
	var opts repo.ForgetOptions
	var prune bool
	cmd := &cobra.Command{
		Use:   "forget [SNAPSHOT...]",
		Short: "Remove snapshots by ID or by a retention policy",
		Args:  cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 && !p.Empty() {
				return errors.New("give snapshot IDs or a policy, not both")
			}
			return withRepo(cmd, &f, true, func(ctx context.Context, r *repo.Repository) error {
				var done func()
				opts.Progress, done = newCountBar("forget")
				out, err := forget(ctx, r, args, p, opts)
				done()
				if err != nil {
					return repoError(err)
				}
				if prune && !opts.DryRun {
					if err := r.LoadIndex(ctx); err != nil {
						return err
					}
					progress, done := newCountBar("prune")
					res, err := r.Prune(ctx, repo.PruneOptions{Progress: progress})
					done()
					if err != nil {
						return repoError(err)
					}
					out.Prune = res
				}
				return emit(cmd, out, func(w io.Writer) { printForget(w, out) })
			})
		},
	}
	f.add(cmd)
	fl := cmd.Flags()
	fl.IntVar(&p.Last, "keep-last", 0, "keep the last N snapshots")
	fl.IntVar(&p.Hourly, "keep-hourly", 0, "keep the last snapshot of each of the last N hours")
	fl.IntVar(&p.Daily, "keep-daily", 0, "keep the last snapshot of each of the last N days")
	fl.IntVar(&p.Weekly, "keep-weekly", 0, "keep the last snapshot of each of the last N weeks")
	fl.IntVar(&p.Monthly, "keep-monthly", 0, "keep the last snapshot of each of the last N months")
	fl.IntVar(&p.Yearly, "keep-yearly", 0, "keep the last snapshot of each of the last N years")
	fl.StringArrayVar(&p.Tags, "keep-tag", nil, "keep snapshots with this tag (repeatable)")
	fl.BoolVarP(&opts.DryRun, "dry-run", "n", false, "only show what would be removed")
	fl.BoolVar(&prune, "prune", false, "prune unreferenced data afterwards")
	return cmd
}

// forgetOutput is what forget prints (as JSON with --json).
type forgetOutput struct {
	Removed []repo.ID          `json:"removed,omitempty"`
	Groups  []repo.ForgetGroup `json:"groups,omitempty"`
	Prune   *repo.PruneResult  `json:"prune,omitempty"`
}

// forget removes the snapshots named in args, or those policy p does not keep.
func forget(ctx context.Context, r *repo.Repository, args []string, p repo.ForgetPolicy, opts repo.ForgetOptions) (*forgetOutput, error) {
	out := &forgetOutput{}
	if len(args) == 0 {
		groups, err := r.Forget(ctx, p, opts)
		out.Groups = groups
		return out, err
	}
	for _, a := range args {
		id, err := r.FindSnapshot(ctx, a)
		if err != nil {
			return nil, err
		}
		out.Removed = append(out.Removed, id)
	}
	return out, r.ForgetSnapshots(ctx, out.Removed, opts)
}

func printForget(w io.Writer, out *forgetOutput) {
	for _, id := range out.Removed {
		fmt.Fprintf(w, "removed snapshot %s\n", id.Short())
	}
	for _, g := range out.Groups {
		fmt.Fprintf(w, "host %s, paths %s: keep %d, remove %d\n", g.Hostname, strings.Join(g.Paths, " "), len(g.Keep), len(g.Remove))
		for _, s := range g.Remove {
			fmt.Fprintf(w, "  remove %s %s\n", s.ID.Short(), s.Time.Local().Format("2006-01-02 15:04:05"))
		}
	}
	if out.Prune != nil {
		printPrune(w, out.Prune)
	}
}

func printPrune(w io.Writer, res *repo.PruneResult) {
	fmt.Fprintf(w, "used blobs %d, unused %d\n", res.UsedBlobs, res.UnusedBlobs)
	fmt.Fprintf(w, "packs: %d kept, %d deleted, %d repacked into %d, %d unreferenced removed\n", res.PacksKept, res.PacksDeleted, res.PacksRepacked, res.PacksWritten, res.PacksUnreferenced)
	fmt.Fprintf(w, "repository size %s -> %s\n", humanBytes(res.BytesBefore), humanBytes(res.BytesAfter))
}

func newPruneCommand() *cobra.Command {
	var f repoFlags
	var opts repo.PruneOptions
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "Remove data no snapshot references (takes an exclusive lock)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withRepo(cmd, &f, true, func(ctx context.Context, r *repo.Repository) error {
				var done func()
				opts.Progress, done = newCountBar("prune")
				res, err := r.Prune(ctx, opts)
				done()
				if err != nil {
					return repoError(err)
				}
				return emit(cmd, res, func(w io.Writer) { printPrune(w, res) })
			})
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVarP(&opts.DryRun, "dry-run", "n", false, "only show what would be done")
	return cmd
}
