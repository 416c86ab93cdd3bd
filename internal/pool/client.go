package pool

import (
	"context"
	"fmt"
	"time"

	"github.com/holdfast/holdfast/internal/agent"
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
