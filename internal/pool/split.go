package pool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/holdfast/holdfast/internal/peer"
	"github.com/holdfast/holdfast/internal/repo/backend"
)

// ErrPoolFull is returned (wrapped) when local data cannot get room: the
// pool is full of local data and of shards that cannot be moved yet.
var ErrPoolFull = errors.New("pool full")

// Reserve makes room for n more bytes of local data. When the free space
// is short, the peer portion shrinks: the agent asks the origin of each
// shard it holds to move it to another peer (the origin re-creates it
// there, so no backup loses protection) and deletes it once moved. Shards
// whose origin is unreachable or finds no other place stay. On success
// the n bytes are counted as local data.
func (s *Service) Reserve(ctx context.Context, n int64) error {
	if n < 0 {
		return fmt.Errorf("reserving %d bytes", n)
	}
	s.reserve.Lock()
	defer s.reserve.Unlock()
	free := func() int64 {
		held, _ := s.st.Held()
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.cfg.Capacity - s.localUsed - held
	}
	if f := free(); f < n {
		if _, err := s.scanLocalUsage(); err != nil {
			return err
		}
		if f = free(); f < n {
			if err := s.shrinkPeerPortion(ctx, n-f); err != nil {
				return err
			}
		}
	}
	if f := free(); f < n {
		return fmt.Errorf("%w: %d bytes needed, %d free", ErrPoolFull, n, max(f, 0))
	}
	s.mu.Lock()
	s.localUsed += n
	s.mu.Unlock()
	return nil
}

// release undoes a reservation whose write failed.
func (s *Service) release(n int64) {
	s.mu.Lock()
	s.localUsed = max(s.localUsed-n, 0)
	s.mu.Unlock()
}

// shrinkPeerPortion frees at least need bytes of held shards by having
// their origins move them.
func (s *Service) shrinkPeerPortion(ctx context.Context, need int64) error {
	_, byOrigin := s.st.Held()
	conn := s.connected()
	origins := make([]string, 0, len(byOrigin))
	for o := range byOrigin {
		origins = append(origins, o)
	}
	// Origins holding the most first: fewer round trips.
	slices.SortFunc(origins, func(a, b string) int { return int(byOrigin[b] - byOrigin[a]) })
	var freed int64
	var errs []error
	for _, o := range origins {
		if !conn[o] {
			errs = append(errs, fmt.Errorf("%s is unreachable; its %d bytes of shards stay", o, byOrigin[o]))
			continue
		}
		held, err := s.st.List(o)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, h := range held {
			if freed >= need {
				return nil
			}
			b, _ := json.Marshal(h.ShardID)
			if _, err := s.call(ctx, o, peer.MsgEvict, b); err != nil {
				errs = append(errs, fmt.Errorf("moving shard %d of %s/%s: %w", h.Idx, o, h.Ref.Key(), err))
				if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
					break
				}
				continue
			}
			if err := s.st.Delete(o, h.ShardID); err != nil && !errors.Is(err, peer.ErrNoShard) {
				errs = append(errs, err)
				continue
			}
			freed += h.Size
			if s.met != nil {
				s.met.evictedBytes.Add(float64(h.Size))
			}
		}
	}
	if freed >= need {
		return nil
	}
	return fmt.Errorf("%w: freed %d of %d bytes from the peer portion: %w", ErrPoolFull, freed, need, errors.Join(errs...))
}

// LocalBackend returns a backend for local repository repo in the pool's
// local portion whose writes first reserve room (shrinking the peer
// portion when needed). Backup clients write through it.
func (s *Service) LocalBackend(repo string) (backend.Backend, error) {
	if err := peer.ValidName(repo); err != nil {
		return nil, fmt.Errorf("repository: %w", err)
	}
	l, err := backend.NewLocal(s.LocalRepoDir(repo))
	if err != nil {
		return nil, err
	}
	return &localBackend{Local: l, s: s, repo: repo}, nil
}

type localBackend struct {
	*backend.Local
	s    *Service
	repo string
}

func (b *localBackend) Save(ctx context.Context, h backend.Handle, data []byte) error {
	if err := b.s.Reserve(ctx, int64(len(data))); err != nil {
		return fmt.Errorf("saving %s: %w", h, err)
	}
	if err := b.Local.Save(ctx, h, data); err != nil {
		b.s.release(int64(len(data)))
		return err
	}
	if h.Type != backend.LockFile {
		b.s.trigger()
	}
	return nil
}

// Remove deletes a file and lets the next round drop its peer version.
func (b *localBackend) Remove(ctx context.Context, h backend.Handle) error {
	if err := b.Local.Remove(ctx, h); err != nil {
		return err
	}
	if h.Type != backend.LockFile {
		b.s.mu.Lock()
		b.s.removed[refOf(b.repo, h).Key()] = true
		b.s.mu.Unlock()
		b.s.trigger()
	}
	return nil
}
