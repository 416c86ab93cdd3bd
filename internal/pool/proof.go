package pool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/holdfast/holdfast/internal/peer"
	"github.com/holdfast/holdfast/internal/wire"
)

// ProofResult is the outcome of one challenge.
type ProofResult struct {
	Peer  string `json:"peer"`
	File  string `json:"file"`
	Shard int    `json:"shard"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

func (s *Service) proofLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.ProofInterval.Duration)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.ProveAll(ctx)
	}
}

// ProveAll challenges every connected holder over up to ProofsPerPeer
// random shards it holds for this agent. A holder that answers wrongly or
// says it lacks a shard it was given is marked and its shards re-created
// on others; a holder that cannot be reached is left to the dead-peer rule.
func (s *Service) ProveAll(ctx context.Context) []ProofResult {
	type item struct {
		e   *peer.FileEntry
		idx int
	}
	byPeer := map[string][]item{}
	s.mu.Lock()
	for _, e := range s.m.Files {
		for i, sh := range e.Shards {
			if sh.Peer != "" && s.upLocked(sh.Peer) {
				byPeer[sh.Peer] = append(byPeer[sh.Peer], item{e, i})
			}
		}
	}
	s.mu.Unlock()
	var out []ProofResult
	for p, items := range byPeer {
		rand.Shuffle(len(items), func(i, j int) { items[i], items[j] = items[j], items[i] })
		for _, it := range items[:min(len(items), s.cfg.ProofsPerPeer)] {
			r := s.proveOne(ctx, p, it.e, it.idx)
			out = append(out, r)
			if !r.OK && s.cfg.ProofsPerPeer > 0 {
				break
			}
		}
	}
	return out
}

// errUnverifiable means this agent cannot compute the expected answer.
var errUnverifiable = errors.New("local file missing; cannot verify")

func (s *Service) proveOne(ctx context.Context, p string, e *peer.FileEntry, idx int) ProofResult {
	r := ProofResult{Peer: p, File: e.Key(), Shard: idx}
	data, err := s.loadLocal(ctx, e.FileRef)
	if err != nil || peer.SumOf(data) != e.Sum {
		r.Error = errUnverifiable.Error()
		return r
	}
	shard, err := s.c.Shard(data, idx)
	if err != nil || e.Scheme != s.c.Scheme() {
		c, cerr := peer.NewCodec(e.Scheme)
		if cerr != nil {
			r.Error = cerr.Error()
			return r
		}
		if shard, err = c.Shard(data, idx); err != nil {
			r.Error = err.Error()
			return r
		}
	}
	ch := peer.NewChallenge(peer.ShardID{Ref: e.FileRef, Idx: idx}, int64(len(shard)), peer.MaxProofRange)
	want, _ := ch.Answer(shard)
	b, _ := json.Marshal(ch)
	got, err := s.call(ctx, p, peer.MsgProof, b)
	if s.met != nil {
		s.met.proofs.Inc()
	}
	var re *wire.RemoteError
	switch {
	case err != nil && errors.As(err, &re):
		// The holder answered, with an error: it does not have the shard.
		r.Error = err.Error()
		s.markBad(p, fmt.Sprintf("proof of shard %d of %s: %v", idx, e.Key(), err))
	case err != nil:
		r.Error = err.Error() // unreachable: the dead-peer rule applies
	case len(got) != len(want) || peer.Sum(got) != want:
		r.Error = "wrong answer"
		s.markBad(p, fmt.Sprintf("wrong proof for shard %d of %s", idx, e.Key()))
	default:
		r.OK = true
	}
	return r
}
