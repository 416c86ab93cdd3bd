package pool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/holdfast/holdfast/internal/peer"
	"github.com/holdfast/holdfast/internal/repo/backend"
	"github.com/holdfast/holdfast/internal/wire"
)

// protectedTypes are the repository file types that get a peer version;
// locks are transient and are left out.
var protectedTypes = []backend.FileType{backend.KeyFile, backend.PackFile, backend.IndexFile, backend.SnapshotFile}

const configName = "config"

// fetchRetries is how often a shard piece is asked for again after the
// session to its holder broke.
const fetchRetries = 2

// protectWorkers bounds files being given a peer version at once.
const protectWorkers = 3

// handleOf maps a file ref back to the repository handle.
func handleOf(ref peer.FileRef) backend.Handle {
	if ref.Type == string(backend.ConfigFile) {
		return backend.Handle{Type: backend.ConfigFile}
	}
	return backend.Handle{Type: backend.FileType(ref.Type), Name: ref.Name}
}

func refOf(repo string, h backend.Handle) peer.FileRef {
	if h.Type == backend.ConfigFile {
		return peer.FileRef{Repo: repo, Type: string(backend.ConfigFile), Name: configName}
	}
	return peer.FileRef{Repo: repo, Type: string(h.Type), Name: h.Name}
}

func (s *Service) lockFile(key string) func() {
	v, _ := s.files.LoadOrStore(key, &sync.Mutex{})
	mu := v.(*sync.Mutex)
	mu.Lock()
	return mu.Unlock
}

// localRepos lists the repositories in the local portion: directories
// holding a config file.
func (s *Service) localRepos() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, LocalDir))
	if err != nil {
		return nil, fmt.Errorf("listing local repositories: %w", err)
	}
	var out []string
	for _, e := range ents {
		if !e.IsDir() || peer.ValidName(e.Name()) != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(s.dir, LocalDir, e.Name(), configName)); err == nil {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// localFiles lists every protected file of a local repository.
func (s *Service) localFiles(ctx context.Context, repo string) ([]peer.FileRef, error) {
	be, err := backend.NewLocal(s.LocalRepoDir(repo))
	if err != nil {
		return nil, err
	}
	refs := []peer.FileRef{refOf(repo, backend.Handle{Type: backend.ConfigFile})}
	for _, t := range protectedTypes {
		err := be.List(ctx, t, func(fi backend.FileInfo) error {
			refs = append(refs, refOf(repo, backend.Handle{Type: t, Name: fi.Name}))
			return nil
		})
		if err != nil && !errors.Is(err, backend.ErrNotExist) {
			return nil, fmt.Errorf("listing %s files of %s: %w", t, repo, err)
		}
	}
	return refs, nil
}

func (s *Service) loadLocal(ctx context.Context, ref peer.FileRef) ([]byte, error) {
	be, err := backend.NewLocal(s.LocalRepoDir(ref.Repo))
	if err != nil {
		return nil, err
	}
	return be.Load(ctx, handleOf(ref), 0, 0)
}

// connected returns the peers with a live session.
func (s *Service) connected() map[string]bool {
	out := map[string]bool{}
	for _, p := range s.a.Peers() {
		if p.Connected {
			out[p.Name] = true
		}
	}
	return out
}

// refreshPeers learns every connected peer's pool information: from
// gossip for members it reports alive, else by asking the peer.
func (s *Service) refreshPeers(ctx context.Context) {
	conn := s.connected()
	fromGossip := map[string]bool{}
	if s.g != nil {
		_ = s.g.UpdateMeta()
		now := time.Now()
		s.mu.Lock()
		for _, m := range s.g.Members() {
			var info peer.PoolInfo
			if m.Name == s.a.Name() || !conn[m.Name] || json.Unmarshal(m.Meta, &info) != nil || info.Name != m.Name {
				continue
			}
			// Health is the wire session's (its heartbeat closes a session
			// to a peer that stops answering): memberlist's probes share
			// the sessions with shard transfers and can time out behind
			// them on a busy path, so a suspect member that still has a
			// live session stays up.
			fromGossip[m.Name] = true
			s.infos[m.Name] = info
			s.lastUp[m.Name] = now
		}
		s.mu.Unlock()
	}
	var wg sync.WaitGroup
	for p := range conn {
		if fromGossip[p] {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var info peer.PoolInfo
			err := s.callJSON(ctx, p, peer.MsgPoolInfo, struct{}{}, &info)
			s.mu.Lock()
			defer s.mu.Unlock()
			if err != nil {
				delete(s.infos, p)
				return
			}
			s.infos[p] = info
			s.lastUp[p] = time.Now()
		}()
	}
	wg.Wait()
	s.mu.Lock()
	for p := range s.infos {
		if !conn[p] {
			delete(s.infos, p)
		}
	}
	s.mu.Unlock()
}

// up reports whether a peer counts for protection now: connected, answering
// and not marked for a failed proof.
func (s *Service) upLocked(p string) bool {
	_, ok := s.infos[p]
	return ok && s.bad[p] == ""
}

// goneLocked reports whether a peer's shards must be re-created: it failed
// a proof, or has been unreachable for DeadAfter.
func (s *Service) goneLocked(p string, now time.Time) bool {
	if s.bad[p] != "" {
		return true
	}
	if _, ok := s.infos[p]; ok {
		return false
	}
	last := s.lastUp[p]
	if last.Before(s.started) {
		last = s.started
	}
	return now.Sub(last) > s.cfg.DeadAfter.Duration
}

// candidatesLocked returns the peers that may receive shards.
func (s *Service) candidatesLocked() []peer.Candidate {
	var out []peer.Candidate
	for p, info := range s.infos {
		out = append(out, peer.Candidate{Name: p, Free: info.Lendable, Domain: info.Domain, Healthy: s.bad[p] == ""})
	}
	peer.SortCandidates(out)
	return out
}

// Round runs one protection round: it protects new local files, drops
// files removed from a repository, re-creates shards on peers that are gone
// or failed a proof, places shards left unplaced, and sends the shard map
// to the peers when it changed.
func (s *Service) Round(ctx context.Context) error {
	s.refreshPeers(ctx)
	if _, err := s.scanLocalUsage(); err != nil {
		return err
	}
	var errs []error
	repos, err := s.localRepos()
	if err != nil {
		return err
	}
	for _, r := range repos {
		refs, err := s.localFiles(ctx, r)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		present := map[string]bool{}
		var todo []peer.FileRef
		s.mu.Lock()
		for _, ref := range refs {
			present[ref.Key()] = true
			if _, have := s.m.Files[ref.Key()]; !have {
				todo = append(todo, ref)
			}
		}
		s.mu.Unlock()
		// A few files at a time keep every peer's path busy while one
		// file's shards wait for their acknowledgements.
		var wg sync.WaitGroup
		var emu sync.Mutex
		sem := make(chan struct{}, protectWorkers)
		for _, ref := range todo {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				if err := s.protectFile(ctx, ref); err != nil {
					emu.Lock()
					errs = append(errs, err)
					emu.Unlock()
				}
			}()
		}
		wg.Wait()
		s.dropMissing(ctx, r, present)
	}
	if err := s.repair(ctx); err != nil {
		errs = append(errs, err)
	}
	s.pushMap(ctx)
	s.flushDeletes(ctx)
	s.mu.Lock()
	s.lastScan = time.Now()
	s.mu.Unlock()
	if s.met != nil {
		s.met.rounds.Inc()
	}
	return errors.Join(errs...)
}

// protectFile makes the peer version of one local file.
func (s *Service) protectFile(ctx context.Context, ref peer.FileRef) error {
	defer s.lockFile(ref.Key())()
	data, err := s.loadLocal(ctx, ref)
	if err != nil {
		return fmt.Errorf("reading %s: %w", ref.Key(), err)
	}
	shards, err := s.c.Encode(data)
	if err != nil {
		return fmt.Errorf("coding %s: %w", ref.Key(), err)
	}
	sc := s.c.Scheme()
	e := &peer.FileEntry{
		FileRef: ref, Size: int64(len(data)), Sum: peer.SumOf(data), Scheme: sc,
		ShardSize: sc.ShardSize(int64(len(data))), Shards: make([]peer.Shard, sc.N()), Placed: time.Now().UTC(),
	}
	for i, sh := range shards {
		e.Shards[i].Sum = peer.SumOf(sh)
	}
	all := make([]int, sc.N())
	for i := range all {
		all[i] = i
	}
	perr := s.placeShards(ctx, e, all, func(i int) ([]byte, error) { return shards[i], nil }, nil)
	s.mu.Lock()
	s.m.Files[ref.Key()] = e
	_, serr := s.saveMapLocked()
	s.mu.Unlock()
	if perr != nil {
		return fmt.Errorf("placing shards of %s: %w", ref.Key(), perr)
	}
	if s.met != nil {
		s.met.protectedBytes.Add(float64(len(data)))
	}
	return serr
}

// placeShards sends shards idxs of e to peers chosen by peer.Place and
// records them in e (which the caller owns). Shards that cannot be placed
// stay unplaced (Peer "") for a later round.
func (s *Service) placeShards(ctx context.Context, e *peer.FileEntry, idxs []int, get func(int) ([]byte, error), exclude map[string]bool) error {
	ex := maps.Clone(exclude)
	if ex == nil {
		ex = map[string]bool{}
	}
	todo := slices.Clone(idxs)
	for _, i := range todo {
		e.Shards[i].Peer = ""
	}
	var lastErr error
	for attempt := 0; attempt < 4 && len(todo) > 0; attempt++ {
		s.mu.Lock()
		cands := s.candidatesLocked()
		domainOf := map[string]string{}
		for _, c := range cands {
			domainOf[c.Name] = c.Domain
		}
		s.mu.Unlock()
		holding := e.Holders()
		domains := map[string]int{}
		for p, n := range holding {
			d := domainOf[p]
			if d == "" {
				d = p
			}
			domains[d] += n
		}
		peers, perr := peer.Place(cands, len(todo), e.ShardSize, holding, domains, ex)
		if len(peers) == 0 {
			if perr != nil {
				lastErr = perr
			}
			break
		}
		type result struct {
			idx  int
			peer string
			err  error
		}
		res := make(chan result, len(peers))
		for j, p := range peers {
			idx := todo[j]
			go func() {
				sh, err := get(idx)
				if err == nil {
					err = s.sendShard(ctx, p, peer.ShardID{Ref: e.FileRef, Idx: idx}, sh)
				}
				res <- result{idx, p, err}
			}()
		}
		var failed []int
		for range peers {
			r := <-res
			if r.err != nil {
				s.log.Info("shard not placed, trying another peer", "file", e.Key(), "shard", r.idx, "peer", r.peer, "err", r.err)
				ex[r.peer] = true
				failed = append(failed, r.idx)
				lastErr = r.err
				continue
			}
			e.Shards[r.idx].Peer = r.peer
		}
		todo = append(failed, todo[len(peers):]...)
		if perr != nil && len(failed) == 0 {
			lastErr = perr
			break
		}
	}
	if len(todo) > 0 {
		if lastErr == nil {
			lastErr = peer.ErrNoPlacement
		}
		return fmt.Errorf("%d of %d shards unplaced: %w", len(todo), len(idxs), lastErr)
	}
	return nil
}

// sendShard writes a shard to a peer in pieces.
func (s *Service) sendShard(ctx context.Context, p string, id peer.ShardID, sh []byte) error {
	sum := peer.SumOf(sh)
	for off := 0; off < len(sh) || off == 0; {
		end := min(off+peer.PieceSize, len(sh))
		msg, err := peer.EncodeMsg(peer.PutHeader{ShardID: id, Offset: int64(off), Total: int64(len(sh)), Sum: sum}, sh[off:end])
		if err != nil {
			return err
		}
		if _, err := s.call(ctx, p, peer.MsgShardPut, msg); err != nil {
			return fmt.Errorf("sending shard %d of %s to %s: %w", id.Idx, id.Ref.Key(), p, err)
		}
		if s.met != nil {
			s.met.sentBytes.Add(float64(end - off))
		}
		off = end
		if off >= len(sh) {
			break
		}
	}
	return nil
}

// fetchShard reads shard idx of e from its holder and checks its sum.
func (s *Service) fetchShard(ctx context.Context, origin string, e *peer.FileEntry, idx int) ([]byte, error) {
	p := e.Shards[idx].Peer
	if p == "" {
		return nil, fmt.Errorf("shard %d of %s is not placed", idx, e.Key())
	}
	out := make([]byte, 0, e.ShardSize)
	for off := int64(0); off < e.ShardSize; {
		n := min(int64(peer.PieceSize), e.ShardSize-off)
		b, err := json.Marshal(peer.GetRequest{Origin: origin, ShardID: peer.ShardID{Ref: e.FileRef, Idx: idx}, Offset: off, Length: n})
		if err != nil {
			return nil, err
		}
		var piece []byte
		for try := 0; ; try++ {
			if p == s.a.Name() {
				// This agent holds the shard itself (a rebuild run on a
				// surviving peer): read it from the local store.
				piece, err = s.st.Read(origin, peer.ShardID{Ref: e.FileRef, Idx: idx}, off, n)
				break
			}
			piece, err = s.call(ctx, p, peer.MsgShardGet, b)
			var re *wire.RemoteError
			// A session that broke is dialled again; the holder's own
			// answer (it lacks the shard) is not retried.
			if err == nil || try == fetchRetries || errors.As(err, &re) || ctx.Err() != nil {
				break
			}
			time.Sleep(time.Duration(try+1) * 200 * time.Millisecond)
		}
		if err != nil {
			return nil, fmt.Errorf("fetching shard %d of %s from %s: %w", idx, e.Key(), p, err)
		}
		if int64(len(piece)) != n {
			return nil, fmt.Errorf("%w: shard %d of %s from %s: got %d bytes, want %d", ErrCorruptShard, idx, e.Key(), p, len(piece), n)
		}
		out = append(out, piece...)
		off += n
	}
	if peer.SumOf(out) != e.Shards[idx].Sum {
		return nil, fmt.Errorf("%w: shard %d of %s from %s fails its checksum", ErrCorruptShard, idx, e.Key(), p)
	}
	return out, nil
}

// ErrCorruptShard marks a shard whose bytes do not match the shard map.
var ErrCorruptShard = errors.New("corrupted shard")

// fetchFile rebuilds a file from any K good shards, trying data shards
// first and further shards as fetches fail. It returns the indices of
// shards found corrupted.
func (s *Service) fetchFile(ctx context.Context, origin string, e *peer.FileEntry, skip func(string) bool) ([]byte, []int, error) {
	c, err := peer.NewCodec(e.Scheme)
	if err != nil {
		return nil, nil, err
	}
	shards := make([][]byte, e.Scheme.N())
	var corrupt []int
	next := 0
	good := 0
	var errs []error
	for good < e.Scheme.K && next < len(shards) {
		type result struct {
			idx int
			b   []byte
			err error
		}
		want := e.Scheme.K - good
		var batch []int
		for ; next < len(shards) && len(batch) < want; next++ {
			if p := e.Shards[next].Peer; p == "" || (skip != nil && skip(p)) {
				continue
			}
			batch = append(batch, next)
		}
		if len(batch) == 0 {
			break
		}
		res := make(chan result, len(batch))
		for _, i := range batch {
			go func() {
				b, err := s.fetchShard(ctx, origin, e, i)
				res <- result{i, b, err}
			}()
		}
		for range batch {
			r := <-res
			if r.err != nil {
				if errors.Is(r.err, ErrCorruptShard) {
					corrupt = append(corrupt, r.idx)
					if s.met != nil {
						s.met.corruptShards.Inc()
					}
				}
				errs = append(errs, r.err)
				continue
			}
			shards[r.idx] = r.b
			good++
		}
	}
	if good < e.Scheme.K {
		return nil, corrupt, fmt.Errorf("rebuilding %s: %w: %d good of %d needed: %w", e.Key(), peer.ErrTooFewShards, good, e.Scheme.K, errors.Join(errs...))
	}
	data, _, err := c.Rebuild(shards, e.Size)
	if err != nil {
		return nil, corrupt, fmt.Errorf("rebuilding %s: %w", e.Key(), err)
	}
	if peer.SumOf(data) != e.Sum {
		return nil, corrupt, fmt.Errorf("rebuilding %s: the rebuilt file fails its checksum", e.Key())
	}
	return data, corrupt, nil
}

// shardSource returns a function giving shard i of e: computed from the
// local file when it is intact, else from a rebuild out of other shards.
func (s *Service) shardSource(ctx context.Context, e *peer.FileEntry, avoid string) func(int) ([]byte, error) {
	var once sync.Once
	var shards [][]byte
	var err error
	return func(i int) ([]byte, error) {
		once.Do(func() {
			data, lerr := s.loadLocal(ctx, e.FileRef)
			if lerr != nil || peer.SumOf(data) != e.Sum {
				data, _, err = s.fetchFile(ctx, s.a.Name(), e, func(p string) bool { return p == avoid })
				if err != nil {
					return
				}
			}
			c, cerr := peer.NewCodec(e.Scheme)
			if cerr != nil {
				err = cerr
				return
			}
			shards, err = c.Encode(data)
		})
		if err != nil {
			return nil, err
		}
		if peer.SumOf(shards[i]) != e.Shards[i].Sum {
			return nil, fmt.Errorf("re-created shard %d of %s does not match the shard map", i, e.Key())
		}
		return shards[i], nil
	}
}

// repair re-creates shards on peers that are gone or failed a proof, and
// places shards left unplaced.
func (s *Service) repair(ctx context.Context) error {
	now := time.Now()
	type job struct {
		key  string
		idxs []int
		old  map[int]string
	}
	var jobs []job
	s.mu.Lock()
	cands := s.candidatesLocked()
	for _, k := range s.m.Keys() {
		e := s.m.Files[k]
		j := job{key: k, old: map[int]string{}}
		for i, sh := range e.Shards {
			if sh.Peer == "" || s.goneLocked(sh.Peer, now) {
				j.idxs = append(j.idxs, i)
				j.old[i] = sh.Peer
			}
		}
		if len(j.idxs) == 0 {
			j.idxs, j.old = rebalance(e, cands)
		}
		if len(j.idxs) > 0 {
			jobs = append(jobs, j)
		}
	}
	s.mu.Unlock()
	var errs []error
	for _, j := range jobs {
		if err := s.repairFile(ctx, j.key, j.idxs, j.old); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// rebalance picks shards to move when a peer holds more than one shard of
// a file (placed so while too few peers had room) and a healthy peer with
// room now holds none: one extra shard per such peer, so the file gets
// back to its target protection level.
func rebalance(e *peer.FileEntry, cands []peer.Candidate) ([]int, map[int]string) {
	holders := e.Holders()
	free := 0
	for _, c := range cands {
		if c.Healthy && holders[c.Name] == 0 && c.Free >= e.ShardSize {
			free++
		}
	}
	var idxs []int
	old := map[int]string{}
	seen := map[string]int{}
	for i, sh := range e.Shards {
		if free == 0 {
			break
		}
		if sh.Peer == "" {
			continue
		}
		seen[sh.Peer]++
		if seen[sh.Peer] > 1 {
			idxs = append(idxs, i)
			old[i] = sh.Peer
			free--
		}
	}
	return idxs, old
}

func (s *Service) repairFile(ctx context.Context, key string, idxs []int, old map[int]string) error {
	defer s.lockFile(key)()
	s.mu.Lock()
	cur := s.m.Files[key]
	if cur == nil {
		s.mu.Unlock()
		return nil
	}
	e := *cur
	e.Shards = slices.Clone(cur.Shards)
	exclude := map[string]bool{}
	for _, p := range old {
		if p != "" {
			exclude[p] = true
		}
	}
	s.mu.Unlock()
	// Shards of a gone peer no longer count toward spreading.
	for _, i := range idxs {
		e.Shards[i].Peer = ""
	}
	err := s.placeShards(ctx, &e, idxs, s.shardSource(ctx, &e, ""), exclude)
	placed := 0
	for _, i := range idxs {
		if e.Shards[i].Peer == "" {
			e.Shards[i].Peer = old[i] // keep the record until it can move
		} else {
			placed++
		}
	}
	if placed == 0 {
		return err
	}
	s.mu.Lock()
	s.m.Files[key] = &e
	_, serr := s.saveMapLocked()
	s.mu.Unlock()
	if s.met != nil {
		s.met.repairedShards.Add(float64(placed))
	}
	s.log.Info("re-created shards", "file", key, "shards", placed, "from", old)
	for _, i := range idxs {
		if p := old[i]; p != "" && e.Shards[i].Peer != p {
			s.deleteLater(p, peer.ShardID{Ref: e.FileRef, Idx: i})
		}
	}
	return errors.Join(err, serr)
}

// pendingDelete is a shard copy no longer in the shard map, to delete
// from its holder once the map without it has reached the peers: until
// then a peer's copy of the map may still point at it.
type pendingDelete struct {
	peer string
	id   peer.ShardID
}

func (s *Service) deleteLater(p string, id peer.ShardID) {
	s.mu.Lock()
	s.deletes = append(s.deletes, pendingDelete{p, id})
	s.mu.Unlock()
}

// flushDeletes deletes stale shard copies, once the current map has been
// delivered to every connected peer.
func (s *Service) flushDeletes(ctx context.Context) {
	s.mu.Lock()
	if s.dirty || len(s.deletes) == 0 {
		s.mu.Unlock()
		return
	}
	todo := s.deletes
	s.deletes = nil
	s.mu.Unlock()
	for _, d := range todo {
		s.deleteRemote(ctx, d.peer, d.id)
	}
}

func (s *Service) deleteRemote(ctx context.Context, p string, id peer.ShardID) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := s.callJSON(ctx, p, peer.MsgShardDelete, id, nil); err != nil {
		s.log.Debug("could not delete shard on peer", "peer", p, "shard", id.Idx, "file", id.Ref.Key(), "err", err)
	}
}

// dropMissing forgets files that a backup client removed from a local
// repository through this agent (prune, forget) and deletes their shards.
// A file that vanished any other way (a lost disk, a deleted directory) is
// a lost local copy: its peer version is kept, since it is what a restore
// needs then.
func (s *Service) dropMissing(ctx context.Context, repo string, present map[string]bool) {
	var gone []*peer.FileEntry
	s.mu.Lock()
	for k, e := range s.m.Files {
		if e.Repo == repo && !present[k] && s.removed[k] {
			gone = append(gone, e)
			delete(s.m.Files, k)
			delete(s.removed, k)
		}
	}
	if len(gone) > 0 {
		_, _ = s.saveMapLocked()
	}
	s.mu.Unlock()
	for _, e := range gone {
		for i, sh := range e.Shards {
			if sh.Peer != "" {
				s.deleteLater(sh.Peer, peer.ShardID{Ref: e.FileRef, Idx: i})
			}
		}
	}
}

// moveShard moves one of this agent's shards off holder (which asked for
// it to free room for its local data) to another peer.
func (s *Service) moveShard(ctx context.Context, id peer.ShardID, holder string) error {
	if err := id.Validate(); err != nil {
		return err
	}
	key := id.Ref.Key()
	defer s.lockFile(key)()
	s.mu.Lock()
	cur := s.m.Files[key]
	if cur == nil || id.Idx >= len(cur.Shards) || cur.Shards[id.Idx].Peer != holder {
		s.mu.Unlock()
		return nil // not ours to keep there: the holder may drop it
	}
	e := *cur
	e.Shards = slices.Clone(cur.Shards)
	s.mu.Unlock()
	e.Shards[id.Idx].Peer = ""
	if err := s.placeShards(ctx, &e, []int{id.Idx}, s.shardSource(ctx, &e, ""), map[string]bool{holder: true}); err != nil {
		return fmt.Errorf("moving shard %d of %s off %s: %w", id.Idx, key, holder, err)
	}
	s.mu.Lock()
	s.m.Files[key] = &e
	_, err := s.saveMapLocked()
	s.mu.Unlock()
	if s.met != nil {
		s.met.movedShards.Inc()
	}
	s.log.Info("moved shard for a peer that needs room", "file", key, "shard", id.Idx, "from", holder, "to", e.Shards[id.Idx].Peer)
	s.pushMap(ctx)
	return err
}

// pushMap sends the shard map to every connected peer when it changed.
func (s *Service) pushMap(ctx context.Context) {
	s.mu.Lock()
	if !s.dirty {
		s.mu.Unlock()
		return
	}
	b, err := s.m.Encode()
	s.dirty = false
	s.mu.Unlock()
	if err != nil {
		s.log.Error("encoding shard map", "err", err)
		return
	}
	var wg sync.WaitGroup
	failed := false
	var fmu sync.Mutex
	for p := range s.connected() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.call(ctx, p, peer.MsgMapPut, b); err != nil {
				s.log.Debug("shard map not delivered", "peer", p, "err", err)
				fmu.Lock()
				failed = true
				fmu.Unlock()
			}
		}()
	}
	wg.Wait()
	if failed {
		s.mu.Lock()
		s.dirty = true
		s.mu.Unlock()
	}
}
