package pool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/holdfast/holdfast/internal/agent"
	"github.com/holdfast/holdfast/internal/membership"
	"github.com/holdfast/holdfast/internal/peer"
	"github.com/holdfast/holdfast/internal/wire"
	bolt "go.etcd.io/bbolt"
)

// Directories inside the pool.
const (
	LocalDir = "local"
	PeerDir  = "peer"
)

var (
	bucketPool = []byte("pool")
	bucketBad  = []byte("pool-bad-peers")
	keyMap     = []byte("shardmap")
)

// Service is the agent service that runs the pool. Create it with
// NewService and pass it in agent.Options.Services.
type Service struct {
	opts Options
	cfg  Config
	a    *agent.Agent
	log  *slog.Logger
	dir  string
	st   *peer.Store
	c    *peer.Codec
	met  *poolMetrics
	g    *membership.Gossip // nil when gossip is off

	mu        sync.Mutex
	m         *peer.ShardMap
	dirty     bool
	infos     map[string]peer.PoolInfo // last answer per peer
	lastUp    map[string]time.Time     // last time each peer was connected
	bad       map[string]string        // peers that failed a proof -> why
	localUsed int64
	deletes   []pendingDelete // stale shard copies, deleted after the map is out
	removed   map[string]bool // file keys clients removed through LocalBackend
	lastScan  time.Time
	started   time.Time

	files   sync.Map // file key -> *sync.Mutex
	kick    chan struct{}
	reserve sync.Mutex // serialises local reservations

	adoptedPacks, adoptedBytes atomic.Int64 // packs adopted from bulk transfers

	// proofHook, when set (tests only), replaces this agent's answers to
	// proofs: it is how a test makes a peer lie.
	proofHook func(origin string, ch peer.Challenge, honest peer.Sum, err error) (peer.Sum, error)
}

// Options configure NewService.
type Options struct {
	// Config, when non-nil, is used instead of <state>/pool.toml.
	Config *Config
	// TransferRoot is the root of the agent's bulk transfer service
	// (bulk.NewAgentService's root), where backup clients stage packs for
	// adoption; "" means <state>/inbox, that service's default.
	TransferRoot string
}

// NewService returns the pool service.
func NewService(opts Options) *Service {
	return &Service{opts: opts, kick: make(chan struct{}, 1)}
}

// Name implements agent.Service.
func (s *Service) Name() string { return "pool" }

// Register opens the pool and registers the wire handlers, the API routes
// (under /v1/pool/) and the metrics.
func (s *Service) Register(a *agent.Agent, wm *wire.Mux, api *http.ServeMux) error {
	s.a = a
	s.log = a.Logger().With("service", "pool")
	if s.opts.Config != nil {
		s.cfg = *s.opts.Config
		if err := s.cfg.Validate(); err != nil {
			return err
		}
	} else {
		c, err := LoadConfig(a.StateDir())
		if err != nil {
			return err
		}
		s.cfg = c
	}
	s.dir = s.cfg.Dir
	if !filepath.IsAbs(s.dir) {
		s.dir = filepath.Join(a.StateDir(), s.dir)
	}
	if err := os.MkdirAll(filepath.Join(s.dir, LocalDir), 0o700); err != nil {
		return fmt.Errorf("creating pool %s: %w", s.dir, err)
	}
	codec, err := peer.NewCodec(s.cfg.Scheme())
	if err != nil {
		return err
	}
	s.c = codec
	st, err := peer.OpenStore(filepath.Join(s.dir, PeerDir), s.admit)
	if err != nil {
		return err
	}
	s.st = st
	s.infos = map[string]peer.PoolInfo{}
	s.lastUp = map[string]time.Time{}
	s.bad = map[string]string{}
	s.removed = map[string]bool{}
	s.m = peer.NewShardMap(a.Name())
	if err := s.loadState(); err != nil {
		return err
	}
	if _, err := s.scanLocalUsage(); err != nil {
		return err
	}
	if s.cfg.Gossip != "off" {
		gc := membership.DefaultConfig()
		gc.Local = s.cfg.Gossip == "local"
		gc.Meta = s.gossipMeta
		if gc.Local {
			gc.JoinInterval = time.Second
		}
		g, err := membership.New(a, wm, gc)
		if err != nil {
			return err
		}
		s.g = g
	}
	s.registerWire(wm)
	s.registerAPI(api)
	s.met = newPoolMetrics(s, a.Registry())
	return nil
}

func (s *Service) loadState() error {
	return s.a.DB().Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketPool)
		if err != nil {
			return err
		}
		bb, err := tx.CreateBucketIfNotExists(bucketBad)
		if err != nil {
			return err
		}
		if raw := b.Get(keyMap); raw != nil {
			m, err := peer.DecodeShardMap(raw)
			if err != nil {
				return fmt.Errorf("loading the shard map: %w", err)
			}
			s.m = m
		}
		return bb.ForEach(func(k, v []byte) error {
			s.bad[string(k)] = string(v)
			return nil
		})
	})
}

// saveMapLocked persists the shard map; s.mu must be held.
func (s *Service) saveMapLocked() ([]byte, error) {
	s.m.Generation++
	s.m.Updated = time.Now().UTC()
	b, err := s.m.Encode()
	if err != nil {
		return nil, err
	}
	err = s.a.DB().Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketPool).Put(keyMap, b) })
	if err != nil {
		return nil, fmt.Errorf("saving the shard map: %w", err)
	}
	s.dirty = true
	return b, nil
}

func (s *Service) markBad(p, why string) {
	s.mu.Lock()
	_, was := s.bad[p]
	s.bad[p] = why
	s.mu.Unlock()
	if !was {
		s.log.Warn("peer failed a proof of storage; its shards will be re-created elsewhere", "peer", p, "why", why)
		if s.met != nil {
			s.met.proofFailures.Inc()
		}
	}
	_ = s.a.DB().Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketBad).Put([]byte(p), []byte(why)) })
	s.trigger()
}

// Forgive clears a peer's failed-proof mark.
func (s *Service) Forgive(p string) error {
	s.mu.Lock()
	delete(s.bad, p)
	s.mu.Unlock()
	return s.a.DB().Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketBad).Delete([]byte(p)) })
}

func (s *Service) trigger() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Dir returns the pool directory.
func (s *Service) Dir() string { return s.dir }

// LocalRepoDir returns the directory of local repository repo.
func (s *Service) LocalRepoDir(repo string) string { return filepath.Join(s.dir, LocalDir, repo) }

// Config returns the pool configuration.
func (s *Service) Config() Config { return s.cfg }

// scanLocalUsage recomputes the bytes used by local repositories.
func (s *Service) scanLocalUsage() (int64, error) {
	var n int64
	err := filepath.WalkDir(filepath.Join(s.dir, LocalDir), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("measuring local data: %w", err)
	}
	s.mu.Lock()
	s.localUsed = n
	s.mu.Unlock()
	return n, nil
}

// admit is the holder's admission of n more bytes of peer shards.
func (s *Service) admit(held, n int64) error {
	s.mu.Lock()
	local := s.localUsed
	s.mu.Unlock()
	if free := s.cfg.Capacity - local - held; n > free {
		return fmt.Errorf("pool full: %d bytes of shards do not fit in %d bytes free", n, max(free, 0))
	}
	return nil
}

// Info returns what this agent tells peers about its pool.
func (s *Service) Info() peer.PoolInfo {
	held, _ := s.st.Held()
	s.mu.Lock()
	local := s.localUsed
	s.mu.Unlock()
	return peer.PoolInfo{
		Name: s.a.Name(), Domain: s.domainOf(s.a.Name(), s.a.Config().Labels),
		Capacity: s.cfg.Capacity, LocalUsed: local, PeerUsed: held,
		Lendable: max(s.cfg.Capacity-local-held, 0),
	}
}

func (s *Service) domainOf(name string, labels map[string]string) string {
	if d := labels[s.cfg.DomainLabel]; d != "" {
		return d
	}
	return name
}

// Run runs the protection and proof loops until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	s.mu.Lock()
	s.started = time.Now()
	s.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); s.proofLoop(ctx) }()
	if s.g != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.g.Run(ctx); err != nil {
				s.log.Error("gossip stopped; polling peers instead", "err", err)
			}
		}()
	}
	defer wg.Wait()
	t := time.NewTicker(s.cfg.ScanInterval.Duration)
	defer t.Stop()
	var swept time.Time
	for {
		if err := s.Round(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("protection round incomplete", "err", err)
		}
		if time.Since(swept) > StagedMaxAge/24 {
			swept = time.Now()
			s.sweepStaged(swept.Add(-StagedMaxAge))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-s.kick:
		}
	}
}

// call makes one call to a peer with the configured timeout.
func (s *Service) call(ctx context.Context, p string, t wire.MsgType, payload []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.CallTimeout.Duration)
	defer cancel()
	sess, err := s.a.Session(ctx, p)
	if err != nil {
		return nil, fmt.Errorf("reaching %s: %w", p, err)
	}
	return sess.Call(ctx, t, payload)
}

func (s *Service) callJSON(ctx context.Context, p string, t wire.MsgType, req, resp any) error {
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	out, err := s.call(ctx, p, t, b)
	if err != nil {
		return err
	}
	if resp == nil {
		return nil
	}
	if err := json.Unmarshal(out, resp); err != nil {
		return fmt.Errorf("decoding answer of %s: %w", p, err)
	}
	return nil
}

// gossipMeta is the record gossip spreads about this agent's pool.
func (s *Service) gossipMeta() []byte {
	b, _ := json.Marshal(s.Info())
	return b
}
