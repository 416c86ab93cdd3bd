package main

import (
	"os"
	"path/filepath"

	"github.com/holdfast/holdfast/internal/agent"
	"github.com/holdfast/holdfast/internal/bulk"
	"github.com/holdfast/holdfast/internal/cdp"
	"github.com/holdfast/holdfast/internal/pool"
	"github.com/spf13/cobra"
)

// defaultStateDir is $HOLDFAST_STATE, else /var/lib/holdfast for root and
// ~/.holdfast for others.
func defaultStateDir() string {
	if d := os.Getenv("HOLDFAST_STATE"); d != "" {
		return d
	}
	if os.Geteuid() == 0 {
		return "/var/lib/holdfast"
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".holdfast")
}

func addStateFlag(cmd *cobra.Command, p *string) {
	cmd.Flags().StringVar(p, "state", defaultStateDir(), "agent state directory (env HOLDFAST_STATE)")
}

func newAgentCommand() *cobra.Command {
	var state, listen string
	var svc serviceOptions
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the holdfast agent daemon",
		Long: `Run the holdfast agent on this node until SIGINT or SIGTERM.

The state directory must hold a cluster identity and configuration, made by
'holdfast cluster init' (first node) or 'holdfast cluster join' (others).
The agent serves its API on <state>/agent.sock, talks to peers over mTLS on
--listen, and exposes /healthz and /metrics on the API. It runs the storage
pool (peer shards), the CDP volumes, whose NBD exports are served on
<state>/nbd.sock and, with --nbd-listen, on TCP, and receives
'holdfast cp' transfers into --transfer-root.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			a, err := agent.New(state, agent.Options{Logger: logger(), Listen: listen, Services: agentServices(svc)})
			if err != nil {
				return err
			}
			return a.Run(cmd.Context())
		},
	}
	addStateFlag(cmd, &state)
	cmd.Flags().StringVar(&listen, "listen", "", "address for peer connections (overrides the config's listen)")
	cmd.Flags().StringVar(&svc.transferRoot, "transfer-root", "", "directory that `holdfast cp` to this agent writes under (default <state>/inbox)")
	cmd.Flags().StringVar(&svc.nbdListen, "nbd-listen", "", "TCP address to serve volumes over NBD (the unix socket <state>/nbd.sock is always served)")
	return cmd
}

// serviceOptions are the agent flags that configure its services.
type serviceOptions struct {
	nbdListen    string
	transferRoot string
}

// agentServices returns the feature services an agent runs.
func agentServices(o serviceOptions) []agent.Service {
	return []agent.Service{
		pool.NewService(pool.Options{TransferRoot: o.transferRoot}),
		cdp.NewService(cdp.ServiceOptions{NBDListen: o.nbdListen, TransferRoot: o.transferRoot}),
		bulk.NewAgentService(o.transferRoot),
	}
}
