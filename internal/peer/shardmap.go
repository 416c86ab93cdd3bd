package peer

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"
)

// MaxShardMapSize bounds an encoded shard map (about 25,000 files).
const MaxShardMapSize = 12 << 20

// FileRef names one repository file in an agent's pool: the repository
// (a directory in the pool's local portion) and the file's type and name
// as in internal/repo/backend.
type FileRef struct {
	Repo string `json:"repo"`
	Type string `json:"type"`
	Name string `json:"name"`
}

// Key is the ref as one string, "repo/type/name".
func (r FileRef) Key() string { return r.Repo + "/" + r.Type + "/" + r.Name }

// Validate checks that every part is a safe path element.
func (r FileRef) Validate() error {
	for _, p := range []struct{ what, v string }{{"repository", r.Repo}, {"type", r.Type}, {"name", r.Name}} {
		if err := ValidName(p.v); err != nil {
			return fmt.Errorf("%s: %w", p.what, err)
		}
	}
	return nil
}

// MaxNameLen bounds names used as path elements.
const MaxNameLen = 128

// ValidName reports whether s is usable as one path element: 1 to
// MaxNameLen letters, digits, '-', '_' or '.', and not "." or "..".
func ValidName(s string) error {
	if s == "" || len(s) > MaxNameLen {
		return fmt.Errorf("name %q: want 1 to %d characters", s, MaxNameLen)
	}
	if s == "." || s == ".." {
		return fmt.Errorf("name %q is not allowed", s)
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("name %q: invalid character %q", s, c)
		}
	}
	return nil
}

// Shard is one placed shard: the peer that holds it and its checksum.
type Shard struct {
	Peer string `json:"peer"`
	Sum  Sum    `json:"sum"`
}

// FileEntry is the peer version of one file.
type FileEntry struct {
	FileRef
	Size      int64     `json:"size"`
	Sum       Sum       `json:"sum"` // of the whole file
	Scheme    Scheme    `json:"scheme"`
	ShardSize int64     `json:"shard_size"`
	Shards    []Shard   `json:"shards"` // index = shard number; Peer "" = not placed
	Placed    time.Time `json:"placed"`
}

// Validate checks an entry read from a peer or from disk.
func (e *FileEntry) Validate() error {
	if err := e.FileRef.Validate(); err != nil {
		return err
	}
	if err := e.Scheme.Validate(); err != nil {
		return err
	}
	if e.Size < 0 || e.Size > MaxFileSize {
		return fmt.Errorf("size %d out of range", e.Size)
	}
	if e.ShardSize != e.Scheme.ShardSize(e.Size) {
		return fmt.Errorf("shard size %d, want %d", e.ShardSize, e.Scheme.ShardSize(e.Size))
	}
	if len(e.Shards) != e.Scheme.N() {
		return fmt.Errorf("%d shards, want %d", len(e.Shards), e.Scheme.N())
	}
	for i, s := range e.Shards {
		if s.Peer != "" {
			if err := ValidName(s.Peer); err != nil {
				return fmt.Errorf("shard %d peer: %w", i, err)
			}
		}
	}
	return nil
}

// Holders counts the shards each peer holds.
func (e *FileEntry) Holders() map[string]int {
	m := map[string]int{}
	for _, s := range e.Shards {
		if s.Peer != "" {
			m[s.Peer]++
		}
	}
	return m
}

// Protection is how many more peer losses the file survives when only the
// peers for which up reports true count: the largest number of those peers
// that can be lost, worst case, while K shards remain. It is -1 when fewer
// than K shards are on live peers (the file cannot be rebuilt from peers).
func (e *FileEntry) Protection(up func(peer string) bool) int {
	var counts []int
	total := 0
	for p, n := range e.Holders() {
		if up == nil || up(p) {
			counts = append(counts, n)
			total += n
		}
	}
	if total < e.Scheme.K {
		return -1
	}
	sort.Sort(sort.Reverse(sort.IntSlice(counts)))
	lost := 0
	for _, c := range counts {
		if total-c < e.Scheme.K {
			break
		}
		total -= c
		lost++
	}
	return lost
}

// ShardMap is an origin agent's shard map: where every shard of the peer
// version of its local repositories lives. A copy goes to every peer that
// holds a shard, so that a fresh agent can find the shards after the
// origin's pool is lost; the copy with the highest generation wins.
type ShardMap struct {
	Origin     string                `json:"origin"`
	Generation uint64                `json:"generation"`
	Updated    time.Time             `json:"updated"`
	Files      map[string]*FileEntry `json:"files"` // by FileRef.Key
}

// NewShardMap returns an empty map for origin.
func NewShardMap(origin string) *ShardMap {
	return &ShardMap{Origin: origin, Files: map[string]*FileEntry{}}
}

// Clone returns a deep copy.
func (m *ShardMap) Clone() *ShardMap {
	c := *m
	c.Files = make(map[string]*FileEntry, len(m.Files))
	for k, e := range m.Files {
		ce := *e
		ce.Shards = slices.Clone(e.Shards)
		c.Files[k] = &ce
	}
	return &c
}

// Keys returns the file keys in order.
func (m *ShardMap) Keys() []string { return slices.Sorted(maps.Keys(m.Files)) }

// Repos returns the repositories the map covers, in order.
func (m *ShardMap) Repos() []string {
	set := map[string]bool{}
	for _, e := range m.Files {
		set[e.Repo] = true
	}
	return slices.Sorted(maps.Keys(set))
}

// Encode returns the map as JSON.
func (m *ShardMap) Encode() ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encoding shard map: %w", err)
	}
	if len(b) > MaxShardMapSize {
		return nil, fmt.Errorf("shard map of %d bytes exceeds the %d-byte limit", len(b), MaxShardMapSize)
	}
	return b, nil
}

// DecodeShardMap parses and validates an encoded shard map.
func DecodeShardMap(b []byte) (*ShardMap, error) {
	if len(b) > MaxShardMapSize {
		return nil, fmt.Errorf("shard map of %d bytes exceeds the %d-byte limit", len(b), MaxShardMapSize)
	}
	var m ShardMap
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("decoding shard map: %w", err)
	}
	if err := ValidName(m.Origin); err != nil {
		return nil, fmt.Errorf("shard map origin: %w", err)
	}
	if m.Files == nil {
		m.Files = map[string]*FileEntry{}
	}
	for k, e := range m.Files {
		if e == nil {
			return nil, fmt.Errorf("shard map entry %q is empty", k)
		}
		if err := e.Validate(); err != nil {
			return nil, fmt.Errorf("shard map entry %q: %w", k, err)
		}
		if k != e.Key() {
			return nil, fmt.Errorf("shard map entry %q names %q", k, e.Key())
		}
	}
	return &m, nil
}

// RepoProtection is the protection of one repository's peer version.
type RepoProtection struct {
	Repo  string `json:"repo"`
	Files int    `json:"files"`
	Bytes int64  `json:"bytes"`
	// Level is the minimum protection over the repository's files: how
	// many more peer losses every file survives (-1: some file cannot be
	// rebuilt from peers now).
	Level int `json:"level"`
	// Target is the level the scheme aims at (M).
	Target int `json:"target"`
	// Pending counts local files not yet in the peer version.
	Pending int `json:"pending"`
}

// Protection summarises the map per repository.
func (m *ShardMap) Protection(up func(string) bool) []RepoProtection {
	by := map[string]*RepoProtection{}
	for _, e := range m.Files {
		rp := by[e.Repo]
		if rp == nil {
			rp = &RepoProtection{Repo: e.Repo, Level: 1 << 30}
			by[e.Repo] = rp
		}
		rp.Files++
		rp.Bytes += e.Size
		rp.Level = min(rp.Level, e.Protection(up))
		rp.Target = max(rp.Target, e.Scheme.M)
	}
	var out []RepoProtection
	for _, k := range slices.Sorted(maps.Keys(by)) {
		out = append(out, *by[k])
	}
	return out
}

// ShardPath is the relative path under which a holder stores shard idx of
// ref for origin.
func ShardPath(origin string, ref FileRef, idx int) string {
	return strings.Join([]string{origin, ref.Repo, ref.Type, fmt.Sprintf("%s.%d", ref.Name, idx)}, "/")
}
