package pool

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/holdfast/holdfast/internal/peer"
	"github.com/holdfast/holdfast/internal/wire"
)

// registerWire serves the peer protocol. The wire layer has already
// refused any peer without a cluster certificate; the sender's verified
// node name (Session.Peer) is the origin of everything it stores, so an
// agent can only write, delete and challenge its own shards.
func (s *Service) registerWire(wm *wire.Mux) {
	wm.Handle(peer.MsgShardPut, func(ctx context.Context, r *wire.Request) ([]byte, error) {
		var h peer.PutHeader
		data, err := peer.DecodeMsg(r.Payload, &h)
		if err != nil {
			return nil, err
		}
		return nil, s.st.Put(r.Session.Peer(), h, data)
	})
	wm.Handle(peer.MsgShardGet, func(ctx context.Context, r *wire.Request) ([]byte, error) {
		var g peer.GetRequest
		if err := json.Unmarshal(r.Payload, &g); err != nil {
			return nil, fmt.Errorf("decoding shard request: %w", err)
		}
		if g.Length > peer.PieceSize {
			return nil, fmt.Errorf("shard request of %d bytes exceeds %d", g.Length, peer.PieceSize)
		}
		return s.st.Read(g.Origin, g.ShardID, g.Offset, g.Length)
	})
	wm.Handle(peer.MsgShardDelete, func(ctx context.Context, r *wire.Request) ([]byte, error) {
		var id peer.ShardID
		if err := json.Unmarshal(r.Payload, &id); err != nil {
			return nil, fmt.Errorf("decoding shard id: %w", err)
		}
		return nil, s.st.Delete(r.Session.Peer(), id)
	})
	wm.Handle(peer.MsgProof, func(ctx context.Context, r *wire.Request) ([]byte, error) {
		var ch peer.Challenge
		if err := json.Unmarshal(r.Payload, &ch); err != nil {
			return nil, fmt.Errorf("decoding challenge: %w", err)
		}
		sum, err := s.st.Prove(r.Session.Peer(), ch)
		if s.proofHook != nil {
			sum, err = s.proofHook(r.Session.Peer(), ch, sum, err)
		}
		if err != nil {
			return nil, err
		}
		return sum[:], nil
	})
	wm.Handle(peer.MsgMapPut, func(ctx context.Context, r *wire.Request) ([]byte, error) {
		return nil, s.st.SaveMap(r.Session.Peer(), r.Payload)
	})
	wm.Handle(peer.MsgMapGet, func(ctx context.Context, r *wire.Request) ([]byte, error) {
		var q peer.MapRequest
		if err := json.Unmarshal(r.Payload, &q); err != nil {
			return nil, fmt.Errorf("decoding map request: %w", err)
		}
		return s.st.LoadMap(q.Origin)
	})
	wm.Handle(peer.MsgPoolInfo, func(ctx context.Context, r *wire.Request) ([]byte, error) {
		return json.Marshal(s.Info())
	})
	wm.Handle(peer.MsgShardList, func(ctx context.Context, r *wire.Request) ([]byte, error) {
		var q peer.MapRequest
		if err := json.Unmarshal(r.Payload, &q); err != nil {
			return nil, fmt.Errorf("decoding list request: %w", err)
		}
		l, err := s.st.List(q.Origin)
		if err != nil {
			return nil, err
		}
		return json.Marshal(l)
	})
	wm.Handle(peer.MsgEvict, func(ctx context.Context, r *wire.Request) ([]byte, error) {
		var id peer.ShardID
		if err := json.Unmarshal(r.Payload, &id); err != nil {
			return nil, fmt.Errorf("decoding shard id: %w", err)
		}
		return nil, s.moveShard(ctx, id, r.Session.Peer())
	})
}
