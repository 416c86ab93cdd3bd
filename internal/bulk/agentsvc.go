package bulk

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"

	"github.com/holdfast/holdfast/internal/agent"
	"github.com/holdfast/holdfast/internal/wire"
)

// InboxDir is where an agent receives `holdfast cp` transfers unless told
// otherwise: <state>/inbox.
const InboxDir = "inbox"

// AgentService serves incoming bulk transfers inside the agent, on its mTLS
// wire listener, so that `holdfast cp FILE AGENT:DST` works against any
// agent of the cluster.
type AgentService struct {
	root string
	svc  *Service
}

// NewAgentService returns the transfer service; root is the directory
// transfers land under ("" means <state>/inbox).
func NewAgentService(root string) *AgentService { return &AgentService{root: root} }

// Name implements agent.Service.
func (s *AgentService) Name() string { return "transfers" }

// Register opens the root and registers the bulk handlers.
func (s *AgentService) Register(a *agent.Agent, wm *wire.Mux, _ *http.ServeMux) error {
	root := s.root
	if root == "" {
		root = filepath.Join(a.StateDir(), InboxDir)
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fmt.Errorf("creating transfer root: %w", err)
	}
	svc, err := NewService(ServiceConfig{Root: root, Logger: a.Logger().With("service", "transfers")})
	if err != nil {
		return err
	}
	s.svc = svc
	svc.Register(wm)
	return nil
}

// Run waits for ctx and then closes unfinished transfers (their partial
// files and journals stay for --resume).
func (s *AgentService) Run(ctx context.Context) error {
	<-ctx.Done()
	return s.svc.Close()
}
