package main

import (
	"fmt"
	"text/tabwriter"

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
			printStatus(cmd, st)
			return nil
		},
	}
	addStateFlag(cmd, &state)
	return cmd
}

func printStatus(cmd *cobra.Command, st *agent.Status) {
	w := cmd.OutOrStdout()
	fmt.Fprintf(w, "agent %s  cluster %s  version %s  up %s\n", st.Name, st.Cluster, st.Versions["agent"], st.Uptime)
	fmt.Fprintf(w, "listening on %s (advertised %s)\n", st.Listen, st.Advertise)
	if len(st.Peers) == 0 {
		fmt.Fprintln(w, "no peers")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tADDRESS\tSTATE\tRTT\tAGENT VERSION\tCONFIG")
	for _, p := range st.Peers {
		state := "disconnected"
		if p.Connected {
			state = "connected (mTLS)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.Name, p.Address, state, p.RTT, p.Versions["agent"], p.Versions["config"])
	}
	tw.Flush()
}
