package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/wire"
)

// InitOptions shape a new cluster.
type InitOptions struct {
	Name   string // this node's name (default: host name)
	Listen string // agent listen address (default from DefaultConfig)
	Peers  []string
	Labels map[string]string
}

// Init creates a new cluster in stateDir (CA and this node's identity) and
// writes a default configuration.
func Init(stateDir string, opts InitOptions) (*cluster.Identity, error) {
	cfg := configFor(opts)
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	id, err := cluster.Init(stateDir, cfg.Name)
	if err != nil {
		return nil, err
	}
	if err := WriteConfig(stateDir, cfg); err != nil {
		return nil, err
	}
	return id, nil
}

func configFor(opts InitOptions) Config {
	cfg := DefaultConfig()
	if opts.Name != "" {
		cfg.Name = opts.Name
	}
	if opts.Listen != "" {
		cfg.Listen = opts.Listen
	}
	cfg.Peers = opts.Peers
	if opts.Labels != nil {
		cfg.Labels = opts.Labels
	}
	return cfg
}

// Join asks the agent at addr to admit this node with token, and writes the
// node identity and a configuration (with addr as its first peer) into
// stateDir.
func Join(ctx context.Context, stateDir, addr, token string, opts InitOptions, log *slog.Logger) (*cluster.Identity, error) {
	if _, err := os.Stat(filepath.Join(stateDir, cluster.NodeCertFile)); err == nil {
		return nil, fmt.Errorf("joining: %s already holds a node identity", stateDir)
	}
	cfg := configFor(opts)
	if len(cfg.Peers) == 0 {
		cfg.Peers = []string{addr}
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	tok, err := cluster.ParseToken(token)
	if err != nil {
		return nil, err
	}
	req, key, err := cluster.NewJoinRequest(cfg.Name, token)
	if err != nil {
		return nil, err
	}
	payload, _ := json.Marshal(req)
	s, err := wire.Dial(ctx, "tcp", addr, cluster.JoinTLS(tok), &wire.Config{Node: cfg.Name, Logger: log}, nil)
	if err != nil {
		return nil, fmt.Errorf("joining through %s: %w", addr, err)
	}
	defer s.Close()
	resp, err := s.Call(ctx, MsgJoin, payload)
	if err != nil {
		return nil, fmt.Errorf("joining through %s: %w", addr, err)
	}
	var jr cluster.JoinResponse
	if err := json.Unmarshal(resp, &jr); err != nil {
		return nil, fmt.Errorf("decoding join response: %w", err)
	}
	id, err := tok.Complete(cfg.Name, key, &jr)
	if err != nil {
		return nil, err
	}
	if err := id.Save(stateDir); err != nil {
		return nil, err
	}
	if err := WriteConfig(stateDir, cfg); err != nil {
		return nil, err
	}
	return id, nil
}
