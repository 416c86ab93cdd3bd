// Package peer owns the peer version of a backup: the repository's files
// (already encrypted by internal/repo) erasure-coded with Reed-Solomon into
// k data and m parity shards, the shard map that records which peer holds
// which shard, the choice of peers (free space, health, failure domain), the
// protection level of a file (how many more peer losses it survives), proofs
// of storage, the on-disk store of shards an agent holds for others, and the
// wire messages agents exchange about shards.
//
// A peer only ever sees shards of encrypted repository files and the shard
// map (file names, which are hashes of ciphertext, sizes and checksums): no
// plaintext byte and no key. Every shard is checked against the BLAKE3 sum
// the shard map records before it is used, and every rebuilt file against
// the sum of the whole file, so a corrupted or lying peer is detected and
// another shard is used.
package peer

import (
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/klauspost/reedsolomon"
	"github.com/zeebo/blake3"
)

// Limits of the erasure coding.
const (
	// MaxDataShards and MaxParityShards bound a scheme.
	MaxDataShards   = 32
	MaxParityShards = 16
	// MaxFileSize is the largest repository file the peer version takes
	// (repository packs are at most 256 MiB).
	MaxFileSize = 1 << 30
)

// Scheme is an erasure-coding scheme: K data shards and M parity shards.
// Any K of the K+M shards rebuild the file.
type Scheme struct {
	K int `json:"k"`
	M int `json:"m"`
}

// DefaultScheme is 4 data + 2 parity shards.
func DefaultScheme() Scheme { return Scheme{K: 4, M: 2} }

// N is the total number of shards.
func (s Scheme) N() int { return s.K + s.M }

// Validate checks the scheme.
func (s Scheme) Validate() error {
	if s.K < 1 || s.K > MaxDataShards {
		return fmt.Errorf("data shards k=%d: must be 1 to %d", s.K, MaxDataShards)
	}
	if s.M < 1 || s.M > MaxParityShards {
		return fmt.Errorf("parity shards m=%d: must be 1 to %d", s.M, MaxParityShards)
	}
	return nil
}

// String renders the scheme as "k+m".
func (s Scheme) String() string { return fmt.Sprintf("%d+%d", s.K, s.M) }

// ShardSize is the size of every shard of a file of n bytes.
func (s Scheme) ShardSize(n int64) int64 {
	if n <= 0 {
		return 1
	}
	return (n + int64(s.K) - 1) / int64(s.K)
}

// Sum is a BLAKE3-256 checksum.
type Sum [32]byte

// SumOf returns the BLAKE3-256 sum of b.
func SumOf(b []byte) Sum { return Sum(blake3.Sum256(b)) }

// String returns the sum in hex.
func (s Sum) String() string { return hex.EncodeToString(s[:]) }

// MarshalText encodes the sum in hex.
func (s Sum) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText decodes a hex sum.
func (s *Sum) UnmarshalText(b []byte) error {
	if len(b) != 64 {
		return fmt.Errorf("checksum %q: want 64 hex digits", b)
	}
	_, err := hex.Decode(s[:], b)
	if err != nil {
		return fmt.Errorf("checksum %q: %w", b, err)
	}
	return nil
}

// Codec erasure-codes files with one scheme. It is safe for concurrent use.
type Codec struct {
	s   Scheme
	enc reedsolomon.Encoder
}

// NewCodec returns a codec for s.
func NewCodec(s Scheme) (*Codec, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	enc, err := reedsolomon.New(s.K, s.M)
	if err != nil {
		return nil, fmt.Errorf("creating Reed-Solomon %s coder: %w", s, err)
	}
	return &Codec{s: s, enc: enc}, nil
}

// Scheme returns the codec's scheme.
func (c *Codec) Scheme() Scheme { return c.s }

// Encode splits data into K data shards (the last zero-padded) and computes
// M parity shards. The shards share one backing array.
func (c *Codec) Encode(data []byte) ([][]byte, error) {
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("file of %d bytes exceeds the %d-byte limit", len(data), MaxFileSize)
	}
	size := int(c.s.ShardSize(int64(len(data))))
	buf := make([]byte, size*c.s.N())
	copy(buf, data)
	shards := make([][]byte, c.s.N())
	for i := range shards {
		shards[i] = buf[i*size : (i+1)*size : (i+1)*size]
	}
	if err := c.enc.Encode(shards); err != nil {
		return nil, fmt.Errorf("erasure-coding %d bytes: %w", len(data), err)
	}
	return shards, nil
}

// Shard returns shard idx of data without keeping the others (a data shard
// is a slice of data, zero-padded; a parity shard needs a full encode).
func (c *Codec) Shard(data []byte, idx int) ([]byte, error) {
	if idx < 0 || idx >= c.s.N() {
		return nil, fmt.Errorf("shard index %d outside [0, %d)", idx, c.s.N())
	}
	size := c.s.ShardSize(int64(len(data)))
	if idx < c.s.K {
		out := make([]byte, size)
		lo := int64(idx) * size
		if lo < int64(len(data)) {
			copy(out, data[lo:])
		}
		return out, nil
	}
	shards, err := c.Encode(data)
	if err != nil {
		return nil, err
	}
	return shards[idx], nil
}

// ErrTooFewShards is returned when fewer than K good shards are available.
var ErrTooFewShards = errors.New("too few shards to rebuild")

// Rebuild rebuilds a file of size bytes from its shards; missing shards
// are nil. At least K must be present and of the right size. It also
// returns every shard (missing ones recomputed) so that a caller can
// replace lost or corrupted shards.
func (c *Codec) Rebuild(shards [][]byte, size int64) ([]byte, [][]byte, error) {
	if len(shards) != c.s.N() {
		return nil, nil, fmt.Errorf("got %d shard slots, want %d", len(shards), c.s.N())
	}
	if size < 0 || size > MaxFileSize {
		return nil, nil, fmt.Errorf("file size %d outside [0, %d]", size, MaxFileSize)
	}
	want := c.s.ShardSize(size)
	have := 0
	work := make([][]byte, len(shards))
	for i, sh := range shards {
		if sh == nil {
			continue
		}
		if int64(len(sh)) != want {
			return nil, nil, fmt.Errorf("shard %d has %d bytes, want %d", i, len(sh), want)
		}
		work[i] = sh
		have++
	}
	if have < c.s.K {
		return nil, nil, fmt.Errorf("%w: %d of %d needed", ErrTooFewShards, have, c.s.K)
	}
	if err := c.enc.Reconstruct(work); err != nil {
		return nil, nil, fmt.Errorf("reconstructing shards: %w", err)
	}
	out := make([]byte, 0, want*int64(c.s.K))
	for i := 0; i < c.s.K; i++ {
		out = append(out, work[i]...)
	}
	return out[:size], work, nil
}
