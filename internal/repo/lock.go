package repo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/holdfast/holdfast/internal/repo/backend"
)

// Locking scheme. A lock is an encrypted file in locks/ naming its holder
// (host, pid) and the time it was last refreshed. Backups take shared
// locks, and so does check (prune must not delete packs it is reading);
// forget and prune take an exclusive lock. To take a lock a process
// (1) lists the existing locks and fails if one conflicts, (2) writes its
// own lock file, (3) lists again and, if a conflicting lock appeared in the
// meantime, removes its own and fails. Two racing processes may thus both
// fail, but never both succeed with conflicting locks. Holders refresh
// their lock every LockRefreshInterval; a lock older than LockStaleAfter,
// or held by a dead process on this host, is stale and ignored (and removed
// by the next exclusive locker).
const (
	LockRefreshInterval = 5 * time.Minute
	LockStaleAfter      = 30 * time.Minute
)

// ErrLocked is returned (wrapped) when a conflicting lock is held.
var ErrLocked = errors.New("repository is locked")

// lockInfo is the content of a lock file.
type lockInfo struct {
	Time      time.Time `json:"time"`
	Exclusive bool      `json:"exclusive"`
	Hostname  string    `json:"hostname"`
	PID       int       `json:"pid"`
}

// decodeLock parses a decrypted lock file.
func decodeLock(b []byte) (lockInfo, error) {
	var li lockInfo
	if len(b) > maxObjectSize {
		return li, errors.New("lock file too large")
	}
	if err := json.Unmarshal(b, &li); err != nil {
		return li, fmt.Errorf("decoding lock: %w", err)
	}
	if li.Time.IsZero() || li.PID < 0 {
		return li, errors.New("decoding lock: missing time or bad pid")
	}
	return li, nil
}

// Lock is a held repository lock.
type Lock struct {
	r    *Repository
	mu   sync.Mutex // guards info and id against a concurrent refresh
	info lockInfo
	id   ID
}

func (l lockInfo) stale(now time.Time, host string) bool {
	if now.Sub(l.Time) > LockStaleAfter {
		return true
	}
	if l.Hostname == host && l.PID > 0 {
		if err := syscall.Kill(l.PID, 0); errors.Is(err, syscall.ESRCH) {
			return true
		}
	}
	return false
}

// locks returns the live locks other than skip, and the stale ones.
func (r *Repository) locks(ctx context.Context, skip ID) (live map[ID]lockInfo, stale []ID, err error) {
	ids, err := r.listIDs(ctx, backend.LockFile)
	if err != nil {
		return nil, nil, err
	}
	host, _ := os.Hostname()
	now := time.Now()
	live = map[ID]lockInfo{}
	for _, id := range ids {
		if id == skip {
			continue
		}
		b, err := r.loadFile(ctx, backend.LockFile, id)
		if errors.Is(err, backend.ErrNotExist) {
			continue // released meanwhile
		}
		if err != nil {
			return nil, nil, fmt.Errorf("reading lock %s: %w", id.Short(), err)
		}
		li, err := decodeLock(b)
		if err != nil {
			return nil, nil, fmt.Errorf("lock %s: %w", id.Short(), err)
		}
		if li.stale(now, host) {
			stale = append(stale, id)
			continue
		}
		live[id] = li
	}
	return live, stale, nil
}

func conflict(want bool, live map[ID]lockInfo) error {
	for id, li := range live {
		if want || li.Exclusive {
			kind := "shared"
			if li.Exclusive {
				kind = "exclusive"
			}
			return fmt.Errorf("%w: %s lock %s held by pid %d on %s since %s", ErrLocked, kind, id.Short(), li.PID, li.Hostname, li.Time.Format(time.RFC3339))
		}
	}
	return nil
}

// Lock takes a shared or exclusive lock on the repository.
func (r *Repository) Lock(ctx context.Context, exclusive bool) (*Lock, error) {
	live, stale, err := r.locks(ctx, ID{})
	if err != nil {
		return nil, err
	}
	if err := conflict(exclusive, live); err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	l := &Lock{r: r, info: lockInfo{Time: time.Now().UTC(), Exclusive: exclusive, Hostname: host, PID: os.Getpid()}}
	if err := l.write(ctx); err != nil {
		return nil, err
	}
	live, _, err = r.locks(ctx, l.id)
	if err == nil {
		err = conflict(exclusive, live)
	}
	if err != nil {
		l.Unlock(context.WithoutCancel(ctx))
		return nil, err
	}
	if exclusive {
		for _, id := range stale {
			r.log.Info("removing stale lock", "lock", id.Short())
			r.be.Remove(ctx, backend.Handle{Type: backend.LockFile, Name: id.String()})
		}
	}
	return l, nil
}

func (l *Lock) write(ctx context.Context) error {
	b, err := json.Marshal(l.info)
	if err != nil {
		return err
	}
	id, err := l.r.saveFile(ctx, backend.LockFile, b)
	if err != nil {
		return fmt.Errorf("writing lock: %w", err)
	}
	l.id = id
	return nil
}

// Refresh rewrites the lock with the current time.
func (l *Lock) Refresh(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	old := l.id
	l.info.Time = time.Now().UTC()
	if err := l.write(ctx); err != nil {
		return err
	}
	return l.r.be.Remove(ctx, backend.Handle{Type: backend.LockFile, Name: old.String()})
}

// KeepFresh refreshes the lock until ctx ends.
func (l *Lock) KeepFresh(ctx context.Context) error {
	t := time.NewTicker(LockRefreshInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := l.Refresh(ctx); err != nil {
				return fmt.Errorf("refreshing lock: %w", err)
			}
		}
	}
}

// withLock runs fn holding a shared or exclusive lock, refreshed while fn
// runs; if a refresh fails, fn's context is cancelled with that error.
func (r *Repository) withLock(ctx context.Context, exclusive bool, fn func(ctx context.Context) error) error {
	lock, err := r.Lock(ctx, exclusive)
	if err != nil {
		return err
	}
	defer lock.Unlock(context.WithoutCancel(ctx))
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		if err := lock.KeepFresh(ctx); err != nil && ctx.Err() == nil {
			cancel(err)
		}
	}()
	if err := fn(ctx); err != nil {
		if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil && !errors.Is(cause, context.Canceled) {
			return errors.Join(err, cause)
		}
		return err
	}
	return nil
}

// Unlock removes the lock file.
func (l *Lock) Unlock(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.be.Remove(ctx, backend.Handle{Type: backend.LockFile, Name: l.id.String()})
}

// Unlock removes stale locks (all locks if all is set) and reports how many.
func (r *Repository) Unlock(ctx context.Context, all bool) (int, error) {
	live, stale, err := r.locks(ctx, ID{})
	if err != nil {
		return 0, err
	}
	if all {
		for id := range live {
			stale = append(stale, id)
		}
	}
	n := 0
	for _, id := range stale {
		if err := r.be.Remove(ctx, backend.Handle{Type: backend.LockFile, Name: id.String()}); err == nil {
			n++
		}
	}
	return n, nil
}
