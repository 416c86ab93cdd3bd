package pool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/holdfast/holdfast/internal/peer"
	"github.com/holdfast/holdfast/internal/repo/backend"
)

// RebuildOptions say what to rebuild from peers.
type RebuildOptions struct {
	// Origin is the agent whose peer version to rebuild (default: this
	// agent's name, as after re-joining a lost node under its old name).
	Origin string `json:"origin,omitempty"`
	// Repos limits the rebuild to these repositories (default: all).
	Repos []string `json:"repos,omitempty"`
	// Dest is the directory the repositories are written under, one
	// sub-directory each (default: the pool's local portion).
	Dest string `json:"dest,omitempty"`
}

// RebuildResult reports a rebuild.
type RebuildResult struct {
	Origin     string   `json:"origin"`
	Generation uint64   `json:"generation"`
	MapsFrom   []string `json:"maps_from"` // peers that had the chosen map
	Repos      []string `json:"repos"`
	Dest       string   `json:"dest"`
	Files      int      `json:"files"`
	Skipped    int      `json:"skipped"` // already present and intact
	Bytes      int64    `json:"bytes"`
	// CorruptShards lists shards a peer returned corrupted; other shards
	// were used and, when the origin is this agent, the bad ones are
	// re-created by the next protection round.
	CorruptShards []string `json:"corrupt_shards,omitempty"`
	Adopted       bool     `json:"adopted"`
	Elapsed       string   `json:"elapsed"`
	Seconds       float64  `json:"seconds"`
}

// rebuildWorkers bounds files rebuilt concurrently.
const rebuildWorkers = 4

// FetchShardMap asks every connected peer for origin's shard map and
// returns the newest, with the peers that hold that generation.
func (s *Service) FetchShardMap(ctx context.Context, origin string) (*peer.ShardMap, []string, error) {
	if err := peer.ValidName(origin); err != nil {
		return nil, nil, fmt.Errorf("origin: %w", err)
	}
	var mu sync.Mutex
	var best *peer.ShardMap
	var from []string
	var wg sync.WaitGroup
	for p := range s.connected() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, _ := json.Marshal(peer.MapRequest{Origin: origin})
			raw, err := s.call(ctx, p, peer.MsgMapGet, b)
			if err != nil || len(raw) == 0 {
				return
			}
			m, err := peer.DecodeShardMap(raw)
			if err != nil || m.Origin != origin {
				s.log.Warn("peer sent an unusable shard map", "peer", p, "err", err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case best == nil || m.Generation > best.Generation:
				best, from = m, []string{p}
			case m.Generation == best.Generation:
				from = append(from, p)
			}
		}()
	}
	wg.Wait()
	if best == nil {
		return nil, nil, fmt.Errorf("no connected peer holds a shard map of %q", origin)
	}
	return best, from, nil
}

// Rebuild rebuilds repositories of an origin from its peers: it takes the
// newest shard map any peer holds, fetches any K good shards of every file
// (checking every shard against the map and every file against its sum)
// and writes the files as a repository that repo.Open reads. When the
// origin is this agent and the destination is its local portion, the map
// becomes this agent's shard map again, so protection carries on.
func (s *Service) Rebuild(ctx context.Context, opts RebuildOptions) (*RebuildResult, error) {
	start := time.Now()
	if opts.Origin == "" {
		opts.Origin = s.a.Name()
	}
	local := filepath.Join(s.dir, LocalDir)
	if opts.Dest == "" {
		opts.Dest = local
	}
	m, from, err := s.FetchShardMap(ctx, opts.Origin)
	if err != nil {
		return nil, err
	}
	want := map[string]bool{}
	for _, r := range opts.Repos {
		want[r] = true
	}
	res := &RebuildResult{Origin: opts.Origin, Generation: m.Generation, MapsFrom: from, Dest: opts.Dest}
	for _, r := range m.Repos() {
		if len(want) == 0 || want[r] {
			res.Repos = append(res.Repos, r)
		}
	}
	for r := range want {
		if !contains(res.Repos, r) {
			return nil, fmt.Errorf("the shard map of %q has no repository %q", opts.Origin, r)
		}
	}
	bes := map[string]*backend.Local{}
	for _, r := range res.Repos {
		be, err := backend.NewLocal(filepath.Join(opts.Dest, r))
		if err != nil {
			return nil, err
		}
		if _, err := os.Stat(filepath.Join(be.Dir(), configName)); err != nil {
			if err := be.Create(ctx); err != nil {
				return nil, err
			}
		}
		bes[r] = be
	}
	jobs := make(chan *peer.FileEntry)
	var mu sync.Mutex
	var errs []error
	corrupt := map[string][]int{}
	var wg sync.WaitGroup
	for range rebuildWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for e := range jobs {
				be := bes[e.Repo]
				h := handleOf(e.FileRef)
				if b, err := be.Load(ctx, h, 0, 0); err == nil && peer.SumOf(b) == e.Sum {
					mu.Lock()
					res.Skipped++
					mu.Unlock()
					continue
				}
				data, bad, err := s.fetchFile(ctx, opts.Origin, e, nil)
				if err == nil {
					if err = be.Save(ctx, h, data); err != nil {
						err = fmt.Errorf("writing %s: %w", e.Key(), err)
					}
				}
				mu.Lock()
				if len(bad) > 0 {
					corrupt[e.Key()] = bad
					for _, i := range bad {
						res.CorruptShards = append(res.CorruptShards, fmt.Sprintf("%s#%d@%s", e.Key(), i, e.Shards[i].Peer))
					}
				}
				if err != nil {
					errs = append(errs, err)
				} else {
					res.Files++
					res.Bytes += int64(len(data))
				}
				mu.Unlock()
			}
		}()
	}
	for _, k := range m.Keys() {
		e := m.Files[k]
		if bes[e.Repo] == nil {
			continue
		}
		select {
		case jobs <- e:
		case <-ctx.Done():
		}
	}
	close(jobs)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if len(errs) > 0 {
		return res, fmt.Errorf("rebuilding from peers: %d files failed: %w", len(errs), errors.Join(errs...))
	}
	if opts.Origin == s.a.Name() && filepath.Clean(opts.Dest) == filepath.Clean(local) {
		s.adopt(m, corrupt)
		res.Adopted = true
	}
	if s.met != nil {
		s.met.rebuiltBytes.Add(float64(res.Bytes))
	}
	_, _ = s.scanLocalUsage()
	res.Seconds = time.Since(start).Seconds()
	res.Elapsed = time.Since(start).Round(time.Millisecond).String()
	return res, nil
}

// adopt makes a rebuilt map this agent's own, merging entries it already
// has, and leaves corrupted shards unplaced so the next round re-creates
// them.
func (s *Service) adopt(m *peer.ShardMap, corrupt map[string][]int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, e := range m.Files {
		if _, ok := s.m.Files[k]; ok && len(corrupt[k]) == 0 {
			continue
		}
		for _, i := range corrupt[k] {
			e.Shards[i].Peer = ""
		}
		s.m.Files[k] = e
	}
	if m.Generation > s.m.Generation {
		s.m.Generation = m.Generation
	}
	if _, err := s.saveMapLocked(); err != nil {
		s.log.Error("saving adopted shard map", "err", err)
	}
	go s.trigger()
}

func contains(l []string, v string) bool {
	for _, x := range l {
		if x == v {
			return true
		}
	}
	return false
}
