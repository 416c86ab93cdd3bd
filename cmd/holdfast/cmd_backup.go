package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/holdfast/holdfast/internal/repo"
	"github.com/spf13/cobra"
)

func newBackupCommand() *cobra.Command {
	var f repoFlags
	var srv serverFlags
	var opts repo.BackupOptions
	var parent string
	cmd := &cobra.Command{
		Use:   "backup PATH...",
		Short: "Back up files and directories into a new snapshot",
		Long: `Back up files and directories into a new snapshot. Files whose size, mtime,
ctime and inode match the parent snapshot (the latest one of this host and
these paths) are not read again. Exit code 3 means the snapshot was saved but
some files could not be read.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := openRepoOn(cmd.Context(), &f, &srv)
			if err != nil {
				return err
			}
			defer r.Close()
			if parent != "" {
				id, err := r.FindSnapshot(cmd.Context(), parent)
				if err != nil {
					return err
				}
				opts.Parent = &id
			}
			progress, done := newBar("backup")
			opts.Progress = progress
			stop := startProfile()
			sn, sum, err := r.Backup(cmd.Context(), args, opts)
			stop()
			done()
			if sn == nil {
				return repoError(err)
			}
			if globals.json {
				if perr := printJSON(cmd.OutOrStdout(), map[string]any{"snapshot": sn.ID, "summary": sum}); perr != nil {
					return perr
				}
			} else {
				w := cmd.OutOrStdout()
				for _, warn := range sum.Warnings {
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s\n", warn)
				}
				fmt.Fprintf(w, "files: %d new, %d changed, %d unmodified (%d dirs)\n", sum.FilesNew, sum.FilesChanged, sum.FilesUnmodified, sum.Dirs)
				fmt.Fprintf(w, "added %s of new data, stored %s in %d packs\n", humanBytes(sum.DataAdded), humanBytes(sum.BytesStored), sum.PacksStored)
				d := sum.End.Sub(sum.Start)
				fmt.Fprintf(w, "processed %d files, %s in %s\n", sum.TotalFiles, humanBytes(sum.TotalBytes), d.Round(time.Millisecond))
				fmt.Fprintf(w, "snapshot %s saved\n", sn.ID.Short())
			}
			if errors.Is(err, repo.ErrPartial) {
				return &ExitError{Code: exitPartial, Err: err}
			}
			return err
		},
	}
	f.add(cmd)
	srv.add(cmd)
	fl := cmd.Flags()
	fl.StringArrayVar(&opts.Tags, "tag", nil, "tag the snapshot (repeatable)")
	fl.StringArrayVarP(&opts.Excludes, "exclude", "e", nil, "exclude paths matching a glob (base name or full path; repeatable)")
	fl.StringVar(&opts.Hostname, "host", "", "host name to record (default: this host)")
	fl.StringVar(&parent, "parent", "", "snapshot to compare with (default: latest of this host and paths)")
	fl.BoolVar(&opts.NoParent, "force", false, "read every file, ignoring the parent snapshot")
	return cmd
}
