package main

import (
	"errors"
	"fmt"
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
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := openRepo(cmd.Context(), &f, true)
			if err != nil {
				return err
			}
			defer r.Close()
			progress, done := newBar("check")
			if opts.ReadData {
				opts.Progress = progress
			}
			res, err := r.Check(cmd.Context(), opts)
			done()
			if res == nil {
				return err
			}
			if globals.json {
				if perr := printJSON(cmd.OutOrStdout(), res); perr != nil {
					return perr
				}
				return err
			}
			w := cmd.OutOrStdout()
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
			return err
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&opts.ReadData, "read-data", false, "read and verify every pack")
	return cmd
}

func newForgetCommand() *cobra.Command {
	var f repoFlags
	var p repo.ForgetPolicy
	var dryRun, prune bool
	cmd := &cobra.Command{
		Use:   "forget [SNAPSHOT...]",
		Short: "Remove snapshots by ID or by a retention policy",
		Args:  cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := openRepo(cmd.Context(), &f, true)
			if err != nil {
				return err
			}
			defer r.Close()
			ctx := cmd.Context()
			out := map[string]any{}
			if len(args) > 0 {
				if !p.Empty() {
					return errors.New("give snapshot IDs or a policy, not both")
				}
				var ids []repo.ID
				for _, a := range args {
					id, err := r.FindSnapshot(ctx, a)
					if err != nil {
						return err
					}
					ids = append(ids, id)
				}
				if !dryRun {
					if err := r.ForgetSnapshots(ctx, ids); err != nil {
						return repoError(err)
					}
				}
				out["removed"] = ids
				if !globals.json {
					for _, id := range ids {
						fmt.Fprintf(cmd.OutOrStdout(), "removed snapshot %s\n", id.Short())
					}
				}
			} else {
				groups, err := r.Forget(ctx, p, dryRun)
				if err != nil {
					return repoError(err)
				}
				out["groups"] = groups
				if !globals.json {
					w := cmd.OutOrStdout()
					for _, g := range groups {
						fmt.Fprintf(w, "host %s, paths %s: keep %d, remove %d\n", g.Hostname, strings.Join(g.Paths, " "), len(g.Keep), len(g.Remove))
						for _, s := range g.Remove {
							fmt.Fprintf(w, "  remove %s %s\n", s.ID.Short(), s.Time.Local().Format("2006-01-02 15:04:05"))
						}
					}
				}
			}
			if prune && !dryRun {
				if err := r.LoadIndex(ctx); err != nil {
					return err
				}
				res, err := r.Prune(ctx, repo.PruneOptions{})
				if err != nil {
					return repoError(err)
				}
				out["prune"] = res
				if !globals.json {
					printPrune(cmd, res)
				}
			}
			if globals.json {
				return printJSON(cmd.OutOrStdout(), out)
			}
			return nil
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
	fl.BoolVarP(&dryRun, "dry-run", "n", false, "only show what would be removed")
	fl.BoolVar(&prune, "prune", false, "prune unreferenced data afterwards")
	return cmd
}

func printPrune(cmd *cobra.Command, res *repo.PruneResult) {
	w := cmd.OutOrStdout()
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
			r, err := openRepo(cmd.Context(), &f, true)
			if err != nil {
				return err
			}
			defer r.Close()
			res, err := r.Prune(cmd.Context(), opts)
			if err != nil {
				return repoError(err)
			}
			if globals.json {
				return printJSON(cmd.OutOrStdout(), res)
			}
			printPrune(cmd, res)
			return nil
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVarP(&opts.DryRun, "dry-run", "n", false, "only show what would be done")
	return cmd
}
