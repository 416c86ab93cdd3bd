package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/holdfast/holdfast/internal/agent"
	"github.com/holdfast/holdfast/internal/pool"
	"github.com/holdfast/holdfast/internal/repo"
	"github.com/holdfast/holdfast/internal/repo/backend"
	"github.com/spf13/cobra"
)

func newPoolCommand() *cobra.Command {
	var state string
	cmd := &cobra.Command{
		Use:   "pool",
		Short: "The agent's storage pool and the peer protection of its backups",
		Long: `Every agent has a storage pool split between local backup data (from the
backup clients that use it as their server) and shards held for peers. Local
backups are erasure-coded into shards spread over the peers, so a site that
loses everything restores from any k of n of them. See docs/pool.md.`,
	}
	cmd.PersistentFlags().StringVar(&state, "state", defaultStateDir(), "agent state directory (env HOLDFAST_STATE)")

	status := &cobra.Command{
		Use:   "status",
		Short: "Show the local and peer portions, what is lent to whom, and each backup's protection",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := pool.GetStatus(cmd.Context(), state)
			if err != nil {
				return err
			}
			if globals.json {
				return printJSON(cmd.OutOrStdout(), st)
			}
			return st.WriteText(cmd.OutOrStdout())
		},
	}

	var capacity string
	var k, m int
	var dir string
	initCmd := &cobra.Command{
		Use:   "init",
		Short: "Write the pool configuration (<state>/pool.toml); restart the agent to apply it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := pool.LoadConfig(state)
			if err != nil {
				return err
			}
			if capacity != "" {
				n, err := pool.ParseSize(capacity)
				if err != nil {
					return err
				}
				c.Capacity = n
			}
			if k > 0 {
				c.K = k
			}
			if m > 0 {
				c.M = m
			}
			if dir != "" {
				c.Dir = dir
			}
			if err := pool.WriteConfig(state, c); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "pool: %d bytes at %s, %d+%d coding (restart the agent to apply)\n", c.Capacity, c.Dir, c.K, c.M)
			return nil
		},
	}
	initCmd.Flags().StringVar(&capacity, "capacity", "", "pool size, e.g. 500GiB")
	initCmd.Flags().IntVar(&k, "k", 0, "data shards per file (default 4)")
	initCmd.Flags().IntVar(&m, "m", 0, "parity shards per file (default 2)")
	initCmd.Flags().StringVar(&dir, "dir", "", "pool directory (default <state>/pool)")

	var wait time.Duration
	var level int
	protect := &cobra.Command{
		Use:   "protect",
		Short: "Run a protection round now; with --wait, wait for a protection level",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := pool.Protect(cmd.Context(), state)
			if err != nil && wait == 0 {
				return err
			}
			if wait > 0 {
				ctx, cancel := context.WithTimeout(cmd.Context(), wait)
				defer cancel()
				var took time.Duration
				st, took, err = pool.WaitProtected(ctx, state, level)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "protected at level %d after %s\n", st.Protection, took.Round(time.Millisecond))
			}
			if globals.json {
				return printJSON(cmd.OutOrStdout(), st)
			}
			return st.WriteText(cmd.OutOrStdout())
		},
	}
	protect.Flags().DurationVar(&wait, "wait", 0, "wait up to this long for --level")
	protect.Flags().IntVar(&level, "level", 1, "protection level to wait for (peer losses survived)")

	prove := &cobra.Command{
		Use:   "prove",
		Short: "Challenge every holder with proofs of storage now",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var res []pool.ProofResult
			if err := agent.NewClient(state).Do(cmd.Context(), "POST", "/v1/pool/prove", struct{}{}, &res); err != nil {
				return err
			}
			if globals.json {
				return printJSON(cmd.OutOrStdout(), res)
			}
			bad := 0
			for _, r := range res {
				mark := "ok"
				if !r.OK {
					mark, bad = "FAILED: "+r.Error, bad+1
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%-12s shard %d of %s: %s\n", r.Peer, r.Shard, r.File, mark)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%d proofs, %d failed\n", len(res), bad)
			return nil
		},
	}

	var origin string
	rebuild := &cobra.Command{
		Use:   "rebuild [REPO...]",
		Short: "Rebuild repositories from any k shards on the peers into the local portion",
		RunE: func(cmd *cobra.Command, args []string) error {
			var res pool.RebuildResult
			if err := agent.NewClient(state).Do(cmd.Context(), "POST", "/v1/pool/rebuild", pool.RebuildOptions{Origin: origin, Repos: args}, &res); err != nil {
				return err
			}
			if globals.json {
				return printJSON(cmd.OutOrStdout(), res)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "rebuilt %d files (%d bytes, %d already intact) of %s from shard map generation %d in %s into %s\n",
				res.Files, res.Bytes, res.Skipped, strings.Join(res.Repos, ", "), res.Generation, res.Elapsed, res.Dest)
			for _, c := range res.CorruptShards {
				fmt.Fprintf(cmd.OutOrStdout(), "corrupt shard (another was used): %s\n", c)
			}
			return nil
		},
	}
	rebuild.Flags().StringVar(&origin, "origin", "", "agent whose backups to rebuild (default: this agent)")

	var ropts pool.RestoreOptions
	var pwFile string
	restore := &cobra.Command{
		Use:   "restore [SNAPSHOT] --repo NAME --target DIR",
		Short: "Rebuild a repository from peers and restore a snapshot (default latest)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				ropts.Snapshot = args[0]
			}
			return runRestoreFromPeers(cmd, state, pwFile, ropts)
		},
	}
	restore.Flags().StringVarP(&ropts.Repo, "repo", "r", "", "repository name in the origin's pool")
	restore.Flags().StringVarP(&ropts.Target, "target", "t", "", "directory to restore into")
	restore.Flags().StringVar(&ropts.Origin, "origin", "", "agent whose backup to restore (default: this agent)")
	restore.Flags().StringVarP(&pwFile, "password-file", "p", os.Getenv("HOLDFAST_PASSWORD_FILE"), "file holding the repository password (else env HOLDFAST_PASSWORD)")

	forgive := &cobra.Command{
		Use:   "forgive PEER",
		Short: "Clear a peer's failed-proof mark so it may hold shards again",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return agent.NewClient(state).Do(cmd.Context(), "POST", "/v1/pool/forgive/"+args[0], struct{}{}, nil)
		},
	}
	cmd.AddCommand(status, initCmd, protect, prove, rebuild, restore, forgive)
	return cmd
}

func runRestoreFromPeers(cmd *cobra.Command, state, pwFile string, o pool.RestoreOptions) error {
	if o.Repo == "" || o.Target == "" {
		return fmt.Errorf("--repo and --target are required")
	}
	pass, err := readPassword(pwFile, "HOLDFAST_PASSWORD", "enter password for repository: ", false)
	if err != nil {
		return err
	}
	o.Password = pass
	o.Logger = logger()
	res, err := pool.RestoreThroughAgent(cmd.Context(), state, o)
	if res == nil {
		return repoError(err)
	}
	if globals.json {
		if perr := printJSON(cmd.OutOrStdout(), res); perr != nil {
			return perr
		}
	} else {
		rb, rs := res.Rebuild, res.Restore
		fmt.Fprintf(cmd.OutOrStdout(), "rebuilt %s of %s from peers (%d files, %s) in %s\n", o.Repo, rb.Origin, rb.Files, humanBytes(rb.Bytes), rb.Elapsed)
		for _, c := range rb.CorruptShards {
			fmt.Fprintf(cmd.OutOrStdout(), "corrupt shard (another was used): %s\n", c)
		}
		fmt.Fprintf(cmd.OutOrStdout(), "restored %d files, %d dirs, %s from snapshot %.8s to %s in %.2fs\n", rs.Files, rs.Dirs, humanBytes(rs.Bytes), res.Snapshot, o.Target, rs.Seconds)
	}
	return repoError(err)
}

// fromPeersFlags are the flags `holdfast restore` takes to restore from
// the peers' shards instead of a reachable repository.
type fromPeersFlags struct {
	enabled bool
	state   string
	origin  string
}

func (f *fromPeersFlags) add(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&f.enabled, "from-peers", false, "rebuild the repository (--repo names it in the origin's pool) from peer shards through the local agent, then restore")
	cmd.Flags().StringVar(&f.state, "state", defaultStateDir(), "with --from-peers: the local agent's state directory")
	cmd.Flags().StringVar(&f.origin, "origin", "", "with --from-peers: agent whose backup to restore (default: the local agent)")
}

// serverFlags let `holdfast backup` (and the other repository commands)
// use a repository in an agent's pool: --server AGENT.
type serverFlags struct {
	server string
	state  string
	bulk   string
}

func (f *serverFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.server, "server", "", "back up to an agent: its state directory (local) or HOST:PORT of its api_listen (mTLS); --repo names the repository in its pool")
	cmd.Flags().StringVar(&f.state, "client-state", defaultStateDir(), "with --server HOST:PORT: this client's cluster identity (made by holdfast cluster join)")
	cmd.Flags().StringVar(&f.bulk, "server-bulk", "auto", "with --server: how pack files travel: auto (by bulk transfer to the agent's wire listener when reached over TCP), off (through the API), or HOST:PORT of the agent's wire listener")
}

// serverBackend opens the repository named repoName on the agent; it
// creates it first when create is set and it does not exist yet.
func (f *serverFlags) backend(repoName string) (backend.Backend, error) {
	if repoName == "" {
		return nil, fmt.Errorf("--server needs --repo NAME (the repository's name in the agent's pool)")
	}
	return pool.DialAgentBackendWith(f.server, f.state, repoName, pool.AgentBackendOptions{Bulk: f.bulk, Logger: logger()})
}

// openRepoOn opens the repository named by f, on the agent of srv when
// --server is given (creating it there on first use), else as openRepo.
func openRepoOn(ctx context.Context, f *repoFlags, srv *serverFlags) (*repo.Repository, error) {
	if srv == nil || srv.server == "" {
		return openRepo(ctx, f, false)
	}
	be, err := srv.backend(f.repo)
	if err != nil {
		return nil, err
	}
	_, serr := be.Stat(ctx, backend.Handle{Type: backend.ConfigFile})
	fresh := errors.Is(serr, backend.ErrNotExist)
	pass, err := readPassword(f.passwordFile, "HOLDFAST_PASSWORD", "enter password for repository: ", fresh)
	if err != nil {
		return nil, err
	}
	var r *repo.Repository
	if fresh {
		r, err = repo.Init(ctx, be, pass, repo.DefaultInitOptions())
	} else {
		r, err = repo.Open(ctx, be, pass, repo.OpenOptions{Logger: logger()})
	}
	if err != nil {
		be.Close()
		return nil, repoError(err)
	}
	return r, nil
}

// restoreFromPeers is `holdfast restore --from-peers`.
func restoreFromPeers(cmd *cobra.Command, fp *fromPeersFlags, f *repoFlags, snapshot, target string) error {
	return runRestoreFromPeers(cmd, fp.state, f.passwordFile, pool.RestoreOptions{Origin: fp.origin, Repo: f.repo, Snapshot: snapshot, Target: target})
}
