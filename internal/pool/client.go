package pool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/holdfast/holdfast/internal/agent"
	"github.com/holdfast/holdfast/internal/repo"
	"github.com/holdfast/holdfast/internal/repo/backend"
)

// GetStatus fetches the pool status of the running agent whose state
// directory is stateDir.
func GetStatus(ctx context.Context, stateDir string) (*Status, error) {
	var st Status
	if err := agent.NewClient(stateDir).Do(ctx, "GET", "/v1/pool/status", nil, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// Protect asks the agent to run a protection round now and returns the
// status after it.
func Protect(ctx context.Context, stateDir string) (*Status, error) {
	var st Status
	if err := agent.NewClient(stateDir).Do(ctx, "POST", "/v1/pool/round", struct{}{}, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// WaitProtected waits until every local backup of the agent in stateDir
// is in the peer version at protection level want or more, and returns
// that status and how long it took. It is what the quick start calls
// after a backup.
func WaitProtected(ctx context.Context, stateDir string, want int) (*Status, time.Duration, error) {
	start := time.Now()
	var last *Status
	for {
		st, err := GetStatus(ctx, stateDir)
		if err == nil {
			last = st
			if st.Pending == 0 && len(st.Backups) > 0 && st.Protection >= want {
				return st, time.Since(start), nil
			}
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return last, time.Since(start), fmt.Errorf("waiting for protection level %d: at %d with %d files pending: %w", want, last.Protection, last.Pending, ctx.Err())
			}
			return nil, time.Since(start), fmt.Errorf("waiting for protection level %d: %w", want, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// BackupToAgent backs up paths into repository repoName in the local pool
// portion of the running agent whose state directory is stateDir (the
// repository is created, with password, on first use) and returns the
// snapshot. With WaitProtected and RestoreThroughAgent it is the whole
// cycle the quick start shows: backup, peer protection, restore from peers.
func BackupToAgent(ctx context.Context, stateDir, repoName, password string, paths []string, log *slog.Logger) (*repo.Snapshot, *repo.Summary, error) {
	be, err := DialAgentBackend(stateDir, "", repoName, log)
	if err != nil {
		return nil, nil, err
	}
	var r *repo.Repository
	_, serr := be.Stat(ctx, backend.Handle{Type: backend.ConfigFile})
	switch {
	case errors.Is(serr, backend.ErrNotExist):
		r, err = repo.Init(ctx, be, password, repo.DefaultInitOptions())
	case serr != nil:
		err = serr
	default:
		r, err = repo.Open(ctx, be, password, repo.OpenOptions{Logger: log})
	}
	if err != nil {
		be.Close()
		return nil, nil, fmt.Errorf("opening repository %s on the agent: %w", repoName, err)
	}
	defer r.Close()
	return r.Backup(ctx, paths, repo.BackupOptions{})
}
