package main

import (
	"fmt"
	"time"

	"github.com/holdfast/holdfast/internal/agent"
	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/spf13/cobra"
)

func newClusterCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Create a cluster, issue join tokens, join nodes",
	}
	cmd.AddCommand(newClusterInitCommand(), newClusterTokenCommand(), newClusterJoinCommand())
	return cmd
}

type clusterNodeOptions struct {
	state, name, listen string
	peers               []string
	labels              map[string]string
}

func (o *clusterNodeOptions) flags(cmd *cobra.Command) {
	addStateFlag(cmd, &o.state)
	cmd.Flags().StringVar(&o.name, "name", "", "this node's name (default: host name)")
	cmd.Flags().StringVar(&o.listen, "listen", "", "agent listen address written to the config (default 0.0.0.0:7440)")
	cmd.Flags().StringSliceVar(&o.peers, "peer", nil, "peer address to connect to (repeatable)")
	cmd.Flags().StringToStringVar(&o.labels, "label", nil, "label key=value, e.g. zone=rack-1 (repeatable)")
}

func (o *clusterNodeOptions) init() agent.InitOptions {
	return agent.InitOptions{Name: o.name, Listen: o.listen, Peers: o.peers, Labels: o.labels}
}

type nodeResult struct {
	Name    string `json:"name"`
	Cluster string `json:"cluster"`
	State   string `json:"state"`
}

func newClusterInitCommand() *cobra.Command {
	var o clusterNodeOptions
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create a new cluster: its CA and this node's identity",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := agent.Init(o.state, o.init())
			if err != nil {
				return err
			}
			res := nodeResult{Name: id.Name, Cluster: id.ClusterID(), State: o.state}
			if globals.json {
				return printJSON(cmd.OutOrStdout(), res)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "created cluster %s with node %q in %s\nnext: holdfast agent --state %s\n", res.Cluster, res.Name, res.State, res.State)
			return nil
		},
	}
	o.flags(cmd)
	return cmd
}

func newClusterTokenCommand() *cobra.Command {
	var state string
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Issue a short-lived join token (on a node holding the cluster CA)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ca, err := cluster.LoadCA(state)
			if err != nil {
				return err
			}
			tok, err := ca.IssueToken(ttl)
			if err != nil {
				return err
			}
			if globals.json {
				return printJSON(cmd.OutOrStdout(), map[string]any{"token": tok, "expires": time.Now().Add(ttl).UTC()})
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), tok)
			return err
		},
	}
	addStateFlag(cmd, &state)
	cmd.Flags().DurationVar(&ttl, "ttl", cluster.DefaultTokenTTL, "how long the token is valid")
	return cmd
}

func newClusterJoinCommand() *cobra.Command {
	var o clusterNodeOptions
	var token string
	cmd := &cobra.Command{
		Use:   "join ADDR --token TOKEN",
		Short: "Join the cluster through the agent at ADDR and get a node certificate",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if token == "" {
				return fmt.Errorf("--token is required (get one with `holdfast cluster token` on the first node)")
			}
			id, err := agent.Join(cmd.Context(), o.state, args[0], token, o.init(), logger())
			if err != nil {
				return err
			}
			res := nodeResult{Name: id.Name, Cluster: id.ClusterID(), State: o.state}
			if globals.json {
				return printJSON(cmd.OutOrStdout(), res)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "joined cluster %s as %q; state in %s\nnext: holdfast agent --state %s\n", res.Cluster, res.Name, res.State, res.State)
			return nil
		},
	}
	o.flags(cmd)
	cmd.Flags().StringVar(&token, "token", "", "join token from `holdfast cluster token`")
	return cmd
}
