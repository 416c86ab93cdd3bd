package main

import (
	"context"
	"fmt"
	"io"

	"github.com/holdfast/holdfast/internal/repo"
	"github.com/spf13/cobra"
)

func newRestoreCommand() *cobra.Command {
	var f repoFlags
	var fp fromPeersFlags
	var target string
	var opts repo.RestoreOptions
	cmd := &cobra.Command{
		Use:   "restore SNAPSHOT --target DIR",
		Short: "Restore a snapshot (or part of it) into a directory",
		Long: `Restore a snapshot into a directory, with modes, owners (as root), times,
symlinks, hard links, extended attributes and sparse files. SNAPSHOT is an ID,
a unique prefix, or "latest". Files whose data is damaged are reported and
every other file is still restored.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if target == "" {
				return fmt.Errorf("--target is required")
			}
			if fp.enabled {
				return restoreFromPeers(cmd, &fp, &f, args[0], target)
			}
			return withRepo(cmd, &f, false, func(ctx context.Context, r *repo.Repository) error {
				id, err := r.FindSnapshot(ctx, args[0])
				if err != nil {
					return err
				}
				progress, done := newBar("restore")
				opts.Progress = progress
				stop := startProfile()
				sum, err := r.Restore(ctx, id, target, opts)
				stop()
				done()
				if sum == nil {
					return repoError(err)
				}
				for _, e := range sum.Errors {
					fmt.Fprintf(cmd.ErrOrStderr(), "error: %s\n", e)
				}
				if perr := emit(cmd, sum, func(w io.Writer) {
					fmt.Fprintf(w, "restored %d files, %d dirs, %s from snapshot %s to %s in %.2fs\n",
						sum.Files, sum.Dirs, humanBytes(sum.Bytes), id.Short(), target, sum.Seconds)
				}); perr != nil {
					return perr
				}
				return err
			})
		},
	}
	f.add(cmd)
	fp.add(cmd)
	cmd.Flags().StringVarP(&target, "target", "t", "", "directory to restore into")
	cmd.Flags().StringArrayVarP(&opts.Includes, "include", "i", nil, "restore only paths matching a glob or lying under it (repeatable)")
	return cmd
}
