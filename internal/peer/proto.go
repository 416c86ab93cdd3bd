package peer

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"

	"github.com/holdfast/holdfast/internal/wire"
	"github.com/zeebo/blake3"
)

// Message types agents exchange about pools and shards (1200-1299).
const (
	MsgShardPut    wire.MsgType = 1200 // PutHeader + piece -> empty
	MsgShardGet    wire.MsgType = 1201 // GetRequest -> bytes
	MsgShardDelete wire.MsgType = 1202 // ShardID -> empty
	MsgProof       wire.MsgType = 1203 // Challenge -> Sum
	MsgMapPut      wire.MsgType = 1204 // encoded ShardMap of the sender -> empty
	MsgMapGet      wire.MsgType = 1205 // MapRequest -> encoded ShardMap or empty
	MsgPoolInfo    wire.MsgType = 1206 // empty -> PoolInfo
	MsgEvict       wire.MsgType = 1207 // ShardID -> empty, once the origin moved it
	MsgShardList   wire.MsgType = 1208 // MapRequest -> []HeldShard
)

// Size limits of the protocol.
const (
	// MaxHeaderSize bounds a message's JSON header.
	MaxHeaderSize = 64 << 10
	// PieceSize is how much of a shard one message carries, well under the
	// wire's default 16 MiB payload limit.
	PieceSize = 4 << 20
	// MaxProofRange bounds the range a proof covers.
	MaxProofRange = 1 << 20
)

// ShardID names one shard of one file of an origin.
type ShardID struct {
	Ref FileRef `json:"ref"`
	Idx int     `json:"idx"`
}

// Validate checks the id.
func (s ShardID) Validate() error {
	if err := s.Ref.Validate(); err != nil {
		return err
	}
	if s.Idx < 0 || s.Idx >= MaxDataShards+MaxParityShards {
		return fmt.Errorf("shard index %d out of range", s.Idx)
	}
	return nil
}

// PutHeader heads one piece of a shard sent by its origin.
type PutHeader struct {
	ShardID
	Offset int64 `json:"offset"`
	Total  int64 `json:"total"` // the shard's size
	Sum    Sum   `json:"sum"`   // of the whole shard
}

// GetRequest asks for length bytes (0: to the end) at offset of a shard of
// origin.
type GetRequest struct {
	Origin string `json:"origin"`
	ShardID
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
}

// MapRequest names an origin.
type MapRequest struct {
	Origin string `json:"origin"`
}

// HeldShard is a shard a holder keeps for an origin.
type HeldShard struct {
	ShardID
	Size int64 `json:"size"`
}

// PoolInfo is what an agent tells its peers about its pool.
type PoolInfo struct {
	Name      string `json:"name"`
	Domain    string `json:"domain"`
	Capacity  int64  `json:"capacity"`
	LocalUsed int64  `json:"local_used"`
	PeerUsed  int64  `json:"peer_used"`
	// Lendable is how many more bytes of shards the agent accepts now.
	Lendable int64 `json:"lendable"`
}

// Challenge asks a holder to prove it holds a shard: it answers the BLAKE3
// sum of Nonce followed by Length bytes at Offset of the shard.
type Challenge struct {
	ShardID
	Offset int64    `json:"offset"`
	Length int64    `json:"length"`
	Nonce  [16]byte `json:"nonce"`
}

// NewChallenge picks a random range of at most maxLen bytes of a shard of
// shardSize bytes and a random nonce.
func NewChallenge(id ShardID, shardSize, maxLen int64) Challenge {
	var rnd [24]byte
	_, _ = rand.Read(rnd[:])
	ch := Challenge{ShardID: id}
	copy(ch.Nonce[:], rnd[:16])
	ch.Length = min(max(maxLen, 1), shardSize, MaxProofRange)
	if span := shardSize - ch.Length; span > 0 {
		ch.Offset = int64(binary.BigEndian.Uint64(rnd[16:]) % uint64(span+1))
	}
	return ch
}

// Answer computes the answer to ch over the whole shard.
func (ch Challenge) Answer(shard []byte) (Sum, error) {
	if ch.Offset < 0 || ch.Length <= 0 || ch.Length > MaxProofRange || ch.Offset+ch.Length > int64(len(shard)) {
		return Sum{}, fmt.Errorf("proof range [%d, +%d) outside a %d-byte shard", ch.Offset, ch.Length, len(shard))
	}
	return ch.AnswerRange(shard[ch.Offset : ch.Offset+ch.Length]), nil
}

// AnswerRange computes the answer from the challenged range alone.
func (ch Challenge) AnswerRange(r []byte) Sum {
	h := blake3.New()
	_, _ = h.Write(ch.Nonce[:])
	_, _ = h.Write(r)
	var s Sum
	copy(s[:], h.Sum(nil))
	return s
}

// EncodeMsg encodes a message: a 4-byte big-endian header length, the
// header as JSON, then data.
func EncodeMsg(hdr any, data []byte) ([]byte, error) {
	h, err := json.Marshal(hdr)
	if err != nil {
		return nil, fmt.Errorf("encoding message header: %w", err)
	}
	if len(h) > MaxHeaderSize {
		return nil, fmt.Errorf("message header of %d bytes exceeds %d", len(h), MaxHeaderSize)
	}
	b := make([]byte, 4, 4+len(h)+len(data))
	binary.BigEndian.PutUint32(b, uint32(len(h)))
	b = append(b, h...)
	return append(b, data...), nil
}

// DecodeMsg decodes a message made by EncodeMsg into hdr and returns its
// data (a sub-slice of b).
func DecodeMsg(b []byte, hdr any) ([]byte, error) {
	if len(b) < 4 {
		return nil, fmt.Errorf("message of %d bytes has no header length", len(b))
	}
	n := binary.BigEndian.Uint32(b)
	if n > MaxHeaderSize || int64(n) > int64(len(b)-4) {
		return nil, fmt.Errorf("message header length %d invalid for %d bytes", n, len(b))
	}
	if err := json.Unmarshal(b[4:4+n], hdr); err != nil {
		return nil, fmt.Errorf("decoding message header: %w", err)
	}
	return b[4+n:], nil
}
