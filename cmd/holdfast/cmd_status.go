package main

import (
	"github.com/holdfast/holdfast/internal/agent"
	"github.com/spf13/cobra"
)

func newStatusCommand() *cobra.Command {
	var state string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the agent, its peers and their versions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := agent.NewClient(state).Status(cmd.Context())
			if err != nil {
				return err
			}
			if globals.json {
				return printJSON(cmd.OutOrStdout(), st)
			}
			return st.WriteText(cmd.OutOrStdout())
		},
	}
	addStateFlag(cmd, &state)
	return cmd
}
