package pool

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/holdfast/holdfast/internal/agent"
	"github.com/holdfast/holdfast/internal/repo"
	"github.com/holdfast/holdfast/internal/repo/backend"
)

// RestoreOptions say what to restore from peers.
type RestoreOptions struct {
	// Origin is the agent whose backups to restore (default: this agent).
	Origin string
	// Repo is the repository in the origin's pool.
	Repo string
	// Password opens the repository (the repository key's passphrase);
	// peers never had it.
	Password string
	// Snapshot is a snapshot id, unique prefix or "latest" (default).
	Snapshot string
	// Target is the directory to restore into.
	Target string
	// Dest is where the rebuilt repository is written (default: the
	// pool's local portion).
	Dest   string
	Logger *slog.Logger
}

// RestoreResult reports a restore from peers.
type RestoreResult struct {
	Rebuild  *RebuildResult       `json:"rebuild"`
	RepoDir  string               `json:"repo_dir"`
	Snapshot string               `json:"snapshot"`
	Restore  *repo.RestoreSummary `json:"restore"`
}

// RestoreFromPeers rebuilds a repository from the peers and restores a
// snapshot of it, byte for byte, into opts.Target.
func (s *Service) RestoreFromPeers(ctx context.Context, opts RestoreOptions) (*RestoreResult, error) {
	rb, err := s.Rebuild(ctx, RebuildOptions{Origin: opts.Origin, Repos: []string{opts.Repo}, Dest: opts.Dest})
	if err != nil {
		return nil, err
	}
	return restoreRebuilt(ctx, rb, opts)
}

// RestoreThroughAgent does what RestoreFromPeers does for a CLI: the
// running agent whose state directory is stateDir rebuilds the repository
// from its peers, then this process opens it with the password and
// restores the snapshot.
func RestoreThroughAgent(ctx context.Context, stateDir string, opts RestoreOptions) (*RestoreResult, error) {
	var rb RebuildResult
	req := RebuildOptions{Origin: opts.Origin, Repos: []string{opts.Repo}, Dest: opts.Dest}
	if err := agent.NewClient(stateDir).Do(ctx, "POST", "/v1/pool/rebuild", req, &rb); err != nil {
		return nil, fmt.Errorf("rebuilding %s from peers: %w", opts.Repo, err)
	}
	return restoreRebuilt(ctx, &rb, opts)
}

func restoreRebuilt(ctx context.Context, rb *RebuildResult, opts RestoreOptions) (*RestoreResult, error) {
	dir := filepath.Join(rb.Dest, opts.Repo)
	be, err := backend.NewLocal(dir)
	if err != nil {
		return nil, err
	}
	r, err := repo.Open(ctx, be, opts.Password, repo.OpenOptions{Logger: opts.Logger})
	if err != nil {
		return nil, fmt.Errorf("opening the rebuilt repository %s: %w", dir, err)
	}
	defer r.Close()
	if opts.Snapshot == "" {
		opts.Snapshot = "latest"
	}
	id, err := r.FindSnapshot(ctx, opts.Snapshot)
	if err != nil {
		return nil, fmt.Errorf("finding snapshot %q: %w", opts.Snapshot, err)
	}
	sum, err := r.Restore(ctx, id, opts.Target, repo.RestoreOptions{})
	if err != nil {
		return nil, fmt.Errorf("restoring snapshot %s: %w", id.Short(), err)
	}
	res := &RestoreResult{Rebuild: rb, RepoDir: dir, Snapshot: id.String(), Restore: sum}
	if len(sum.Errors) > 0 || len(sum.Damaged) > 0 {
		return res, fmt.Errorf("restore of %s incomplete: %d errors, %d damaged files", id.Short(), len(sum.Errors), len(sum.Damaged))
	}
	return res, nil
}
