package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/holdfast/holdfast/internal/repo"
	"github.com/holdfast/holdfast/internal/repo/backend"
	"github.com/holdfast/holdfast/internal/repo/chunker"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// repoFlags locate and unlock a repository.
type repoFlags struct {
	repo         string
	passwordFile string
}

func (f *repoFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&f.repo, "repo", "r", os.Getenv("HOLDFAST_REPOSITORY"), "repository: a directory or s3:HOST/BUCKET/PREFIX (env HOLDFAST_REPOSITORY)")
	cmd.Flags().StringVarP(&f.passwordFile, "password-file", "p", os.Getenv("HOLDFAST_PASSWORD_FILE"), "file holding the repository password (else env HOLDFAST_PASSWORD, else a prompt)")
}

// readPassword gets a password from a file, an environment variable or the
// terminal.
func readPassword(file, env, prompt string, confirm bool) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("reading password file: %w", err)
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	}
	if p, ok := os.LookupEnv(env); ok {
		return p, nil
	}
	if !term.IsTerminal(int(os.Stdin.Fd())) {
		return "", &ExitError{Code: exitFatal, Err: fmt.Errorf("no password: use --password-file or %s", env)}
	}
	fmt.Fprint(os.Stderr, prompt)
	b, err := term.ReadPassword(int(os.Stdin.Fd()))
	fmt.Fprintln(os.Stderr)
	if err != nil {
		return "", fmt.Errorf("reading password: %w", err)
	}
	if confirm {
		fmt.Fprint(os.Stderr, "enter the password again: ")
		b2, err := term.ReadPassword(int(os.Stdin.Fd()))
		fmt.Fprintln(os.Stderr)
		if err != nil {
			return "", fmt.Errorf("reading password: %w", err)
		}
		if string(b) != string(b2) {
			return "", errors.New("passwords do not match")
		}
	}
	return string(b), nil
}

// repoError maps repository errors to documented exit codes.
func repoError(err error) error {
	if err == nil {
		return nil
	}
	var ee *ExitError
	switch {
	case errors.As(err, &ee):
		return err
	case errors.Is(err, repo.ErrWrongPassword):
		return &ExitError{Code: exitWrongPass, Err: err}
	case errors.Is(err, repo.ErrNoRepository):
		return &ExitError{Code: exitNoRepo, Err: err}
	case errors.Is(err, repo.ErrLocked):
		return &ExitError{Code: exitLocked, Err: err}
	case errors.Is(err, repo.ErrPartial):
		return &ExitError{Code: exitPartial, Err: err}
	}
	return err
}

// openRepo opens the repository named by f.
func openRepo(ctx context.Context, f *repoFlags, noIndex bool) (*repo.Repository, error) {
	be, err := backend.Open(f.repo)
	if err != nil {
		return nil, &ExitError{Code: exitNoRepo, Err: err}
	}
	pass, err := readPassword(f.passwordFile, "HOLDFAST_PASSWORD", "enter password for repository: ", false)
	if err != nil {
		return nil, err
	}
	r, err := repo.Open(ctx, be, pass, repo.OpenOptions{Logger: logger(), NoIndex: noIndex})
	if err != nil {
		return nil, repoError(err)
	}
	// The key derivation used 32 MiB for a moment: give it back.
	debug.FreeOSMemory()
	setMemoryLimit(r)
	return r, nil
}

// withRepo opens the repository named by f (with its index unless
// noIndex), runs fn with it and the command's context, and closes it.
func withRepo(cmd *cobra.Command, f *repoFlags, noIndex bool, fn func(ctx context.Context, r *repo.Repository) error) error {
	r, err := openRepo(cmd.Context(), f, noIndex)
	if err != nil {
		return err
	}
	defer r.Close()
	return fn(cmd.Context(), r)
}

// emit prints v as JSON with --json, else calls text with the command's
// standard output.
func emit(cmd *cobra.Command, v any, text func(w io.Writer)) error {
	if globals.json {
		return printJSON(cmd.OutOrStdout(), v)
	}
	text(cmd.OutOrStdout())
	return nil
}

// setMemoryLimit sets a soft memory limit for the Go runtime, unless
// GOMEMLIMIT is set: the repository's working set is small (bounded
// buffers plus the index), and without a limit the garbage collector lets
// the heap grow to twice the peak. 64 MiB plus 512 bytes per indexed blob.
func setMemoryLimit(r *repo.Repository) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	debug.SetMemoryLimit(64<<20 + int64(r.IndexedBlobs())*512)
}

// showProgress reports whether to draw progress bars.
func showProgress() bool {
	return !globals.json && term.IsTerminal(int(os.Stderr.Fd()))
}

// newBar returns a progress callback and a function that ends the bar.
func newBar(desc string) (func(repo.Progress), func()) {
	if !showProgress() {
		return nil, func() {}
	}
	bar := progressbar.NewOptions64(-1, progressbar.OptionSetWriter(os.Stderr), progressbar.OptionShowBytes(true),
		progressbar.OptionSetDescription(desc), progressbar.OptionThrottle(200*time.Millisecond), progressbar.OptionClearOnFinish())
	return func(p repo.Progress) {
			if p.TotalBytes > 0 {
				bar.ChangeMax64(p.TotalBytes)
			}
			bar.Describe(fmt.Sprintf("%s %d files", desc, p.Files))
			bar.Set64(p.Bytes)
		}, func() {
			bar.Finish()
		}
}

// newCountBar returns a progress callback that counts Files of TotalFiles
// (described by the phase, if any) and a function that ends the bar.
func newCountBar(desc string) (func(repo.Progress), func()) {
	if !showProgress() {
		return nil, func() {}
	}
	bar := progressbar.NewOptions64(-1, progressbar.OptionSetWriter(os.Stderr), progressbar.OptionSetDescription(desc),
		progressbar.OptionShowCount(), progressbar.OptionThrottle(200*time.Millisecond), progressbar.OptionClearOnFinish())
	return func(p repo.Progress) {
			if p.TotalFiles > 0 {
				bar.ChangeMax64(p.TotalFiles)
			}
			if p.Phase != "" {
				bar.Describe(desc + ": " + p.Phase)
			}
			bar.Set64(p.Files)
		}, func() {
			bar.Finish()
		}
}

func newRepoCommands() []*cobra.Command {
	return []*cobra.Command{
		newInitCommand(), newBackupCommand(), newRestoreCommand(), newSnapshotsCommand(),
		newLsCommand(), newDiffCommand(), newCatCommand(), newCheckCommand(), newForgetCommand(),
		newPruneCommand(), newStatsCommand(), newKeyCommand(), newUnlockCommand(),
	}
}

func newInitCommand() *cobra.Command {
	var f repoFlags
	var avg, packMiB int
	var kdfMem uint32
	var compression string
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create a new backup repository",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			be, err := backend.Open(f.repo)
			if err != nil {
				return err
			}
			pass, err := readPassword(f.passwordFile, "HOLDFAST_PASSWORD", "enter password for new repository: ", true)
			if err != nil {
				return err
			}
			opts := repo.DefaultInitOptions()
			opts.Logger = logger()
			if avg > 0 {
				opts.Chunker = chunker.Params{Min: avg / 4, Avg: avg, Max: avg * 4}
			}
			if packMiB > 0 {
				opts.PackSize = packMiB << 20
			}
			if kdfMem > 0 {
				opts.KDF.Memory = kdfMem
			}
			opts.Compression = compression
			r, err := repo.Init(cmd.Context(), be, pass, opts)
			if err != nil {
				return err
			}
			defer r.Close()
			cfg := r.Config()
			return emit(cmd, map[string]any{"id": cfg.ID, "location": be.Location(), "config": cfg}, func(w io.Writer) {
				fmt.Fprintf(w, "created repository %s at %s\n", cfg.ID[:10], be.Location())
			})
		},
	}
	f.add(cmd)
	cmd.Flags().IntVar(&avg, "chunk-size", 0, "average chunk size in bytes, a power of two (default 512 KiB)")
	cmd.Flags().IntVar(&packMiB, "pack-size", 0, "target pack file size in MiB (default 16)")
	cmd.Flags().Uint32Var(&kdfMem, "kdf-memory", 0, "argon2id memory in KiB (default 32768)")
	cmd.Flags().StringVar(&compression, "compression", "default", "zstd level for data: fastest (1), default (1 with small files compressed together; 3 in repositories made before format 2), better (7) or off")
	return cmd
}

func newSnapshotsCommand() *cobra.Command {
	var f repoFlags
	cmd := &cobra.Command{
		Use:   "snapshots",
		Short: "List snapshots",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withRepo(cmd, &f, true, func(ctx context.Context, r *repo.Repository) error {
				snaps, err := r.Snapshots(ctx)
				if err != nil {
					return err
				}
				if globals.json {
					if snaps == nil {
						snaps = []*repo.Snapshot{}
					}
					return printJSON(cmd.OutOrStdout(), snaps)
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 2, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tTime\tHost\tTags\tPaths")
				for _, s := range snaps {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.ID.Short(), s.Time.Local().Format("2006-01-02 15:04:05"), s.Hostname, strings.Join(s.Tags, ","), strings.Join(s.Paths, " "))
				}
				fmt.Fprintf(tw, "%d snapshots\n", len(snaps))
				return tw.Flush()
			})
		},
	}
	f.add(cmd)
	return cmd
}

func newLsCommand() *cobra.Command {
	var f repoFlags
	var long bool
	cmd := &cobra.Command{
		Use:   "ls SNAPSHOT [PATH]",
		Short: "List files in a snapshot",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withRepo(cmd, &f, false, func(ctx context.Context, r *repo.Repository) error {
				id, err := r.FindSnapshot(ctx, args[0])
				if err != nil {
					return err
				}
				dir := ""
				if len(args) == 2 {
					dir = args[1]
				}
				ents, err := r.Ls(ctx, id, dir)
				if err != nil {
					return err
				}
				if globals.json {
					return printJSON(cmd.OutOrStdout(), ents)
				}
				w := bufio.NewWriter(cmd.OutOrStdout())
				for _, e := range ents {
					if long {
						fmt.Fprintf(w, "%-8s %04o %8s/%-8s %12d %s %s", e.Type, e.Mode, e.User, e.Group, e.Size, e.ModTime.Local().Format("2006-01-02 15:04:05"), e.Path)
					} else {
						fmt.Fprint(w, e.Path)
					}
					if e.Target != "" {
						fmt.Fprintf(w, " -> %s", e.Target)
					}
					fmt.Fprintln(w)
				}
				return w.Flush()
			})
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVarP(&long, "long", "l", false, "show type, mode, owner, size and time")
	return cmd
}

func newDiffCommand() *cobra.Command {
	var f repoFlags
	cmd := &cobra.Command{
		Use:   "diff SNAPSHOT-A SNAPSHOT-B",
		Short: "Show what changed between two snapshots",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withRepo(cmd, &f, false, func(ctx context.Context, r *repo.Repository) error {
				a, err := r.FindSnapshot(ctx, args[0])
				if err != nil {
					return err
				}
				b, err := r.FindSnapshot(ctx, args[1])
				if err != nil {
					return err
				}
				d, err := r.Diff(ctx, a, b)
				if err != nil {
					return err
				}
				if globals.json {
					if d == nil {
						d = []repo.DiffEntry{}
					}
					return printJSON(cmd.OutOrStdout(), d)
				}
				for _, e := range d {
					fmt.Fprintf(cmd.OutOrStdout(), "%s  %s\n", e.Change, e.Path)
				}
				return nil
			})
		},
	}
	f.add(cmd)
	return cmd
}

func newCatCommand() *cobra.Command {
	var f repoFlags
	cmd := &cobra.Command{
		Use:   "cat config|snapshot|index|pack|key|tree|blob [ID]",
		Short: "Print a repository object (JSON, or raw bytes for a blob)",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withRepo(cmd, &f, args[0] == "config" || args[0] == "snapshot" || args[0] == "key", func(ctx context.Context, r *repo.Repository) error {
				id := ""
				if len(args) == 2 {
					id = args[1]
				}
				b, err := r.Cat(ctx, args[0], id)
				if err != nil {
					return err
				}
				w := cmd.OutOrStdout()
				if _, err := w.Write(b); err != nil {
					return err
				}
				if args[0] != "blob" {
					fmt.Fprintln(w)
				}
				return nil
			})
		},
	}
	f.add(cmd)
	return cmd
}

func newStatsCommand() *cobra.Command {
	var f repoFlags
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Show repository size, deduplication and compression",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withRepo(cmd, &f, false, func(ctx context.Context, r *repo.Repository) error {
				st, err := r.Stats(ctx)
				if err != nil {
					return err
				}
				return emit(cmd, st, func(w io.Writer) {
					fmt.Fprintf(w, "snapshots:           %d\n", st.Snapshots)
					fmt.Fprintf(w, "files (all snaps):   %d\n", st.Files)
					fmt.Fprintf(w, "restore size:        %s\n", humanBytes(st.RestoreSize))
					fmt.Fprintf(w, "unique data:         %s in %d data and %d tree blobs\n", humanBytes(st.RawBytes), st.DataBlobs, st.TreeBlobs)
					fmt.Fprintf(w, "stored:              %s in %d packs\n", humanBytes(st.StoredBytes), st.Packs)
					fmt.Fprintf(w, "deduplication:       %.2fx\n", st.Deduplicated)
					fmt.Fprintf(w, "compression:         %.2fx\n", st.Compression)
				})
			})
		},
	}
	f.add(cmd)
	return cmd
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.2f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func newKeyCommand() *cobra.Command {
	key := &cobra.Command{Use: "key", Short: "Manage the passwords that open a repository"}
	var lf, af, rf repoFlags
	list := &cobra.Command{
		Use:   "list",
		Short: "List keys",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withRepo(cmd, &lf, true, func(ctx context.Context, r *repo.Repository) error {
				keys, err := r.Keys(ctx)
				if err != nil {
					return err
				}
				if globals.json {
					return printJSON(cmd.OutOrStdout(), keys)
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 2, 2, ' ', 0)
				fmt.Fprintln(tw, " ID\tUser\tHost\tCreated")
				for _, k := range keys {
					mark := " "
					if k.Current {
						mark = "*"
					}
					fmt.Fprintf(tw, "%s%s\t%s\t%s\t%s\n", mark, k.ID[:8], k.Username, k.Hostname, k.Created.Local().Format("2006-01-02 15:04:05"))
				}
				return tw.Flush()
			})
		},
	}
	lf.add(list)
	var newPassFile string
	var kdfMem uint32
	add := &cobra.Command{
		Use:   "add",
		Short: "Add a password (from --new-password-file, env HOLDFAST_NEW_PASSWORD or a prompt)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withRepo(cmd, &af, true, func(ctx context.Context, r *repo.Repository) error {
				np, err := readPassword(newPassFile, "HOLDFAST_NEW_PASSWORD", "enter the new password: ", true)
				if err != nil {
					return err
				}
				kdf := repo.DefaultKDFParams()
				if kdfMem > 0 {
					kdf.Memory = kdfMem
				}
				id, err := r.AddKey(ctx, np, kdf)
				if err != nil {
					return err
				}
				return emit(cmd, map[string]string{"id": id}, func(w io.Writer) { fmt.Fprintf(w, "added key %s\n", id[:8]) })
			})
		},
	}
	af.add(add)
	add.Flags().StringVar(&newPassFile, "new-password-file", "", "file holding the new password")
	add.Flags().Uint32Var(&kdfMem, "kdf-memory", 0, "argon2id memory in KiB (default 32768)")
	remove := &cobra.Command{
		Use:   "remove ID",
		Short: "Remove a key (not the one in use)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withRepo(cmd, &rf, true, func(ctx context.Context, r *repo.Repository) error {
				id, err := r.RemoveKey(ctx, args[0])
				if err != nil {
					return err
				}
				return emit(cmd, map[string]string{"removed": id}, func(w io.Writer) { fmt.Fprintf(w, "removed key %s\n", id[:8]) })
			})
		},
	}
	rf.add(remove)
	key.AddCommand(list, add, remove)
	return key
}

func newUnlockCommand() *cobra.Command {
	var f repoFlags
	var all bool
	cmd := &cobra.Command{
		Use:   "unlock",
		Short: "Remove stale locks (all locks with --remove-all)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withRepo(cmd, &f, true, func(ctx context.Context, r *repo.Repository) error {
				n, err := r.Unlock(ctx, all)
				if err != nil {
					return err
				}
				return emit(cmd, map[string]int{"removed": n}, func(w io.Writer) { fmt.Fprintf(w, "removed %d locks\n", n) })
			})
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&all, "remove-all", false, "remove every lock, also live ones")
	return cmd
}

// startProfile writes a CPU profile to $HOLDFAST_CPUPROFILE, if set, until
// the returned function is called (for benchmarking the repository).
func startProfile() func() {
	path := os.Getenv("HOLDFAST_CPUPROFILE")
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err != nil {
		logger().Warn("cannot write CPU profile", "err", err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return func() {}
	}
	return func() { pprof.StopCPUProfile(); f.Close() }
}
