package pool

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/holdfast/holdfast/internal/agent"
	"github.com/holdfast/holdfast/internal/peer"
	"github.com/prometheus/client_golang/prometheus"
)

// Status is the answer to GET /v1/pool/status and `holdfast pool status`.
type Status struct {
	Name     string `json:"name"`
	Dir      string `json:"dir"`
	Scheme   string `json:"scheme"`
	Capacity int64  `json:"capacity"`
	// LocalUsed is the local portion: backup data of this agent's clients.
	LocalUsed int64 `json:"local_used"`
	// PeerUsed is the peer portion: shards held for other agents.
	PeerUsed int64 `json:"peer_used"`
	Free     int64 `json:"free"`
	// Reclaimable is the part of the peer portion whose origins are
	// reachable and can move it if local data needs room; Pinned cannot be
	// moved now.
	Reclaimable int64 `json:"reclaimable"`
	Pinned      int64 `json:"pinned"`
	// Lent is the space lent to each origin (shards held for it).
	Lent []Lent `json:"lent"`
	// Peers are the other agents as seen by this one's protection.
	Peers []PeerView `json:"peers"`
	// Backups is the protection of each local repository's peer version.
	Backups []peer.RepoProtection `json:"backups"`
	// Protection is the minimum level over Backups (-1 if a backup cannot
	// be rebuilt from peers; empty pools report the target).
	Protection int       `json:"protection"`
	Pending    int       `json:"pending"` // local files not yet in the peer version
	Generation uint64    `json:"shard_map_generation"`
	LastRound  time.Time `json:"last_round,omitzero"`
}

// Lent is space lent to one origin.
type Lent struct {
	Origin    string `json:"origin"`
	Bytes     int64  `json:"bytes"`
	Shards    int    `json:"shards"`
	Reachable bool   `json:"reachable"`
}

// PeerView is one peer as the pool sees it.
type PeerView struct {
	Name     string `json:"name"`
	Domain   string `json:"domain,omitempty"`
	Up       bool   `json:"up"`
	Failed   string `json:"failed_proof,omitempty"`
	Lendable int64  `json:"lendable"`
	// Holds is how many of this agent's shards (and bytes) the peer holds.
	Holds      int   `json:"holds_shards"`
	HoldsBytes int64 `json:"holds_bytes"`
}

// Status reports the pool.
func (s *Service) Status(ctx context.Context) Status {
	held, byOrigin := s.st.Held()
	conn := s.connected()
	st := Status{Name: s.a.Name(), Dir: s.dir, Scheme: s.c.Scheme().String(), Capacity: s.cfg.Capacity, PeerUsed: held}
	for _, o := range slices.Sorted(maps.Keys(byOrigin)) {
		l := Lent{Origin: o, Bytes: byOrigin[o], Reachable: conn[o]}
		if hs, err := s.st.List(o); err == nil {
			l.Shards = len(hs)
		}
		st.Lent = append(st.Lent, l)
		if l.Reachable {
			st.Reclaimable += l.Bytes
		} else {
			st.Pinned += l.Bytes
		}
	}
	pending := 0
	if repos, err := s.localRepos(); err == nil {
		for _, r := range repos {
			refs, err := s.localFiles(ctx, r)
			if err != nil {
				continue
			}
			s.mu.Lock()
			for _, ref := range refs {
				if _, ok := s.m.Files[ref.Key()]; !ok {
					pending++
				}
			}
			s.mu.Unlock()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st.LocalUsed = s.localUsed
	st.Free = max(s.cfg.Capacity-s.localUsed-held, 0)
	st.Pending = pending
	st.Generation = s.m.Generation
	st.LastRound = s.lastScan
	st.Backups = s.m.Protection(s.upLocked)
	st.Protection = s.cfg.M
	for _, b := range st.Backups {
		st.Protection = min(st.Protection, b.Level)
	}
	if pending > 0 && len(st.Backups) == 0 {
		st.Protection = -1
	}
	views := map[string]*PeerView{}
	view := func(p string) *PeerView {
		v := views[p]
		if v == nil {
			v = &PeerView{Name: p, Up: s.upLocked(p), Failed: s.bad[p]}
			if info, ok := s.infos[p]; ok {
				v.Domain, v.Lendable = info.Domain, info.Lendable
			}
			views[p] = v
		}
		return v
	}
	for p := range s.infos {
		view(p)
	}
	for _, e := range s.m.Files {
		for _, sh := range e.Shards {
			if sh.Peer != "" {
				v := view(sh.Peer)
				v.Holds++
				v.HoldsBytes += e.ShardSize
			}
		}
	}
	for _, k := range slices.Sorted(maps.Keys(views)) {
		st.Peers = append(st.Peers, *views[k])
	}
	return st
}

// WriteText renders the status for people.
func (st *Status) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "pool\t%s (%s)\n", st.Name, st.Dir)
	fmt.Fprintf(tw, "capacity\t%s\n", human(st.Capacity))
	fmt.Fprintf(tw, "local portion\t%s\tbackup data of this agent's clients\n", human(st.LocalUsed))
	fmt.Fprintf(tw, "peer portion\t%s\tshards held for other agents (%s reclaimable, %s pinned)\n", human(st.PeerUsed), human(st.Reclaimable), human(st.Pinned))
	fmt.Fprintf(tw, "free\t%s\tlent to peers on demand\n", human(st.Free))
	fmt.Fprintf(tw, "scheme\t%s\tshard map generation %d\n", st.Scheme, st.Generation)
	tw.Flush()
	if len(st.Lent) > 0 {
		fmt.Fprintln(w, "\nlent to")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  ORIGIN\tSHARDS\tBYTES\tREACHABLE")
		for _, l := range st.Lent {
			fmt.Fprintf(tw, "  %s\t%d\t%s\t%v\n", l.Origin, l.Shards, human(l.Bytes), l.Reachable)
		}
		tw.Flush()
	}
	fmt.Fprintln(w, "\nbackups (peer version)")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  REPOSITORY\tFILES\tBYTES\tPROTECTION\tTARGET")
	for _, b := range st.Backups {
		fmt.Fprintf(tw, "  %s\t%d\t%s\t%s\t%d\n", b.Repo, b.Files, human(b.Bytes), levelText(b.Level), b.Target)
	}
	tw.Flush()
	fmt.Fprintf(w, "  protection: %s; %d local files not yet protected\n", levelText(st.Protection), st.Pending)
	if len(st.Peers) > 0 {
		fmt.Fprintln(w, "\npeers")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  PEER\tDOMAIN\tUP\tLENDABLE\tHOLDS\tNOTE")
		for _, p := range st.Peers {
			fmt.Fprintf(tw, "  %s\t%s\t%v\t%s\t%d shards, %s\t%s\n", p.Name, p.Domain, p.Up, human(p.Lendable), p.Holds, human(p.HoldsBytes), p.Failed)
		}
		tw.Flush()
	}
	return nil
}

func levelText(l int) string {
	switch {
	case l < 0:
		return "NOT RECOVERABLE from peers"
	case l == 1:
		return "survives 1 more peer loss"
	default:
		return fmt.Sprintf("survives %d more peer losses", l)
	}
}

func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func (s *Service) registerAPI(api *http.ServeMux) {
	api.HandleFunc("GET /v1/pool/status", func(w http.ResponseWriter, r *http.Request) {
		agent.WriteJSON(w, http.StatusOK, s.Status(r.Context()))
	})
	api.HandleFunc("POST /v1/pool/round", func(w http.ResponseWriter, r *http.Request) {
		if err := s.Round(r.Context()); err != nil {
			agent.WriteError(w, http.StatusServiceUnavailable, err)
			return
		}
		agent.WriteJSON(w, http.StatusOK, s.Status(r.Context()))
	})
	api.HandleFunc("POST /v1/pool/prove", func(w http.ResponseWriter, r *http.Request) {
		agent.WriteJSON(w, http.StatusOK, s.ProveAll(r.Context()))
	})
	api.HandleFunc("POST /v1/pool/rebuild", func(w http.ResponseWriter, r *http.Request) {
		var o RebuildOptions
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&o); err != nil && err != io.EOF {
			agent.WriteError(w, http.StatusBadRequest, fmt.Errorf("decoding rebuild options: %w", err))
			return
		}
		res, err := s.Rebuild(r.Context(), o)
		if err != nil {
			agent.WriteError(w, http.StatusBadGateway, err)
			return
		}
		agent.WriteJSON(w, http.StatusOK, res)
	})
	s.registerRepoAPI(api)
	api.HandleFunc("POST /v1/pool/forgive/{peer}", func(w http.ResponseWriter, r *http.Request) {
		if err := s.Forgive(r.PathValue("peer")); err != nil {
			agent.WriteError(w, http.StatusInternalServerError, err)
			return
		}
		agent.WriteJSON(w, http.StatusOK, map[string]string{"forgiven": r.PathValue("peer")})
	})
}

// poolMetrics are the pool's Prometheus metrics.
type poolMetrics struct {
	rounds, proofs, proofFailures, repairedShards, movedShards, corruptShards prometheus.Counter
	sentBytes, protectedBytes, rebuiltBytes, evictedBytes                     prometheus.Counter
	adoptedPacks, adoptedBytes                                                prometheus.Counter
}

func newPoolMetrics(s *Service, reg *prometheus.Registry) *poolMetrics {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "holdfast_pool_" + name, Help: help})
	}
	m := &poolMetrics{
		rounds:         c("rounds_total", "Protection rounds run."),
		proofs:         c("proofs_total", "Proofs of storage asked of holders."),
		proofFailures:  c("proof_failures_total", "Holders marked for a failed proof."),
		repairedShards: c("repaired_shards_total", "Shards re-created on other peers."),
		movedShards:    c("moved_shards_total", "Shards moved off holders that needed room."),
		corruptShards:  c("corrupt_shards_total", "Shards received that failed their checksum."),
		sentBytes:      c("shard_sent_bytes_total", "Shard bytes sent to peers."),
		protectedBytes: c("protected_bytes_total", "Local file bytes given a peer version."),
		rebuiltBytes:   c("rebuilt_bytes_total", "File bytes rebuilt from peers."),
		evictedBytes:   c("evicted_bytes_total", "Held shard bytes freed for local data."),
		adoptedPacks:   c("adopted_packs_total", "Pack files adopted from bulk transfers."),
		adoptedBytes:   c("adopted_bytes_total", "Bytes of pack files adopted from bulk transfers."),
	}
	g := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "holdfast_pool_" + name, Help: help}, f)
	}
	reg.MustRegister(m.rounds, m.proofs, m.proofFailures, m.repairedShards, m.movedShards, m.corruptShards,
		m.sentBytes, m.protectedBytes, m.rebuiltBytes, m.evictedBytes, m.adoptedPacks, m.adoptedBytes,
		g("capacity_bytes", "Pool capacity.", func() float64 { return float64(s.cfg.Capacity) }),
		g("local_bytes", "Local portion: backup data.", func() float64 { return float64(s.Info().LocalUsed) }),
		g("peer_bytes", "Peer portion: shards held for others.", func() float64 { return float64(s.Info().PeerUsed) }),
		g("free_bytes", "Free space, lent to peers on demand.", func() float64 { return float64(s.Info().Lendable) }),
		&protectionCollector{s: s, desc: prometheus.NewDesc("holdfast_pool_protection_level",
			"Peer losses each local repository's peer version survives (-1: not recoverable from peers).", []string{"repo"}, nil)},
	)
	return m
}

type protectionCollector struct {
	s    *Service
	desc *prometheus.Desc
}

func (c *protectionCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *protectionCollector) Collect(ch chan<- prometheus.Metric) {
	c.s.mu.Lock()
	ps := c.s.m.Protection(c.s.upLocked)
	c.s.mu.Unlock()
	for _, p := range ps {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(p.Level), p.Repo)
	}
}
