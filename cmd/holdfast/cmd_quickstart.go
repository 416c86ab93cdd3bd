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
		Short: "Run holdfast on this machine with nothing set up: a cluster of local agents",
		Long: `Create a fresh cluster in a temporary directory, start several real agent
processes on loopback, let them authenticate each other with mTLS and find each
other, show each agent's status, then stop them and clean up.`,
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
	f.IntVar(&opts.Agents, "agents", 3, "how many agents to start")
	f.StringVar(&opts.Dir, "dir", "", "directory for the agents' state (default: a temporary directory)")
	f.BoolVar(&opts.Keep, "keep", false, "keep the state directories afterwards")
	f.DurationVar(&opts.Timeout, "timeout", 2*time.Minute, "give up after this long")
	return cmd
}
