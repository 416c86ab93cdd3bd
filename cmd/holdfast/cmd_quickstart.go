package main

import (
	"time"

	"github.com/holdfast/holdfast/internal/quickstart"
	"github.com/spf13/cobra"
)

func newQuickstartCommand() *cobra.Command {
	var opts quickstart.Options
	cmd := &cobra.Command{
		Use:   "quickstart",
		Short: "Run holdfast's main job on this machine with nothing set up",
		Long: `Create a fresh cluster in a temporary directory and start several real agent
processes on loopback that authenticate each other with mTLS. Back up a
directory (by default a generated one) to the first agent, wait until the
backup's erasure-coded, encrypted shards are spread over the other agents,
then kill the first agent and m peers, delete the first agent's state, and
restore the backup from the surviving peers' shards, verifying every byte.
Finally stop the agents and clean up.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Logger = logger()
			out := cmd.OutOrStdout()
			if globals.json {
				out = cmd.ErrOrStderr()
			}
			res, err := quickstart.Run(cmd.Context(), opts, out)
			if err != nil {
				return err
			}
			if globals.json {
				return printJSON(cmd.OutOrStdout(), res)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&opts.Agents, "agents", 5, "how many agents to start (3 to 16)")
	f.StringVar(&opts.Data, "data", "", "directory to back up (default: a generated tree with a plaintext marker)")
	f.Int64Var(&opts.DataSize, "data-size", 16<<20, "size in bytes of the generated tree")
	f.StringVar(&opts.Dir, "dir", "", "directory for the agents' state (default: a temporary directory)")
	f.BoolVar(&opts.Keep, "keep", false, "keep the state directories afterwards")
	f.DurationVar(&opts.Timeout, "timeout", 2*time.Minute, "give up after this long")
	return cmd
}
