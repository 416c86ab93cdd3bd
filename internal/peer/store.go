package peer

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// Files inside a store directory.
const (
	partSuffix  = ".part"
	mapFileName = "shardmap.json"
)

// AdmitFunc decides whether a holder that keeps held bytes of shards (and
// has reservations for uploads in progress included) may take n more; it
// returns an error saying why not.
type AdmitFunc func(held, n int64) error

// Store keeps the shards an agent holds for other agents, one file per
// shard under <dir>/<origin>/<repo>/<type>/<name>.<idx>, and each origin's
// latest shard map. It is safe for concurrent use.
type Store struct {
	dir   string
	admit AdmitFunc

	mu       sync.Mutex
	held     map[string]int64 // bytes per origin
	reserved int64
	uploads  map[string]int64 // rel path -> reserved total
}

// OpenStore opens (creating) the store in dir, counting what it holds and
// removing uploads a crash left unfinished.
func OpenStore(dir string, admit AdmitFunc) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating shard store %s: %w", dir, err)
	}
	s := &Store{dir: dir, admit: admit, held: map[string]int64{}, uploads: map[string]int64{}}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if strings.HasSuffix(p, partSuffix) {
			return os.Remove(p)
		}
		if d.Name() == mapFileName {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		origin, _, _ := strings.Cut(filepath.ToSlash(rel), "/")
		s.held[origin] += fi.Size()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("scanning shard store %s: %w", dir, err)
	}
	return s, nil
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

// Held returns the bytes of shards held, in total (reservations included)
// and per origin.
func (s *Store) Held() (total int64, byOrigin map[string]int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	byOrigin = make(map[string]int64, len(s.held))
	for o, n := range s.held {
		if n > 0 {
			byOrigin[o] = n
			total += n
		}
	}
	return total + s.reserved, byOrigin
}

func (s *Store) heldLocked() int64 {
	t := s.reserved
	for _, n := range s.held {
		t += n
	}
	return t
}

func (s *Store) path(origin string, id ShardID) (string, string, error) {
	if err := ValidName(origin); err != nil {
		return "", "", fmt.Errorf("origin: %w", err)
	}
	if err := id.Validate(); err != nil {
		return "", "", err
	}
	rel := ShardPath(origin, id.Ref, id.Idx)
	return rel, filepath.Join(s.dir, filepath.FromSlash(rel)), nil
}

// Put writes one piece of a shard for origin. The first piece (offset 0)
// reserves the whole shard, or fails when the holder's admission refuses
// it; the last piece checks the shard's sum and makes it visible.
func (s *Store) Put(origin string, h PutHeader, piece []byte) error {
	rel, p, err := s.path(origin, h.ShardID)
	if err != nil {
		return err
	}
	if h.Total <= 0 || h.Total > MaxFileSize || h.Offset < 0 || h.Offset+int64(len(piece)) > h.Total {
		return fmt.Errorf("piece [%d, +%d) of a %d-byte shard is out of range", h.Offset, len(piece), h.Total)
	}
	s.mu.Lock()
	if h.Offset == 0 {
		if old, ok := s.uploads[rel]; ok {
			s.reserved -= old
			delete(s.uploads, rel)
		}
		if err := s.admit(s.heldLocked(), h.Total); err != nil {
			s.mu.Unlock()
			return err
		}
		s.reserved += h.Total
		s.uploads[rel] = h.Total
	} else if s.uploads[rel] != h.Total {
		s.mu.Unlock()
		return fmt.Errorf("piece at %d of shard %s without its first piece", h.Offset, rel)
	}
	s.mu.Unlock()
	release := func() {
		s.mu.Lock()
		if n, ok := s.uploads[rel]; ok {
			s.reserved -= n
			delete(s.uploads, rel)
		}
		s.mu.Unlock()
	}

	part := p + partSuffix
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		release()
		return fmt.Errorf("creating shard directory: %w", err)
	}
	whole := h.Offset == 0 && int64(len(piece)) == h.Total
	if whole && SumOf(piece) != h.Sum {
		release()
		return fmt.Errorf("shard %s: checksum mismatch after transfer", rel)
	}
	flag := os.O_RDWR | os.O_CREATE
	if h.Offset == 0 {
		flag |= os.O_TRUNC
	}
	f, err := os.OpenFile(part, flag, 0o600)
	if err != nil {
		release()
		return fmt.Errorf("opening shard %s: %w", rel, err)
	}
	if _, err := f.WriteAt(piece, h.Offset); err != nil {
		f.Close()
		release()
		os.Remove(part)
		return fmt.Errorf("writing shard %s: %w", rel, err)
	}
	if h.Offset+int64(len(piece)) < h.Total {
		return f.Close()
	}
	// Last piece: verify, sync, publish.
	defer release()
	var err2 error
	if !whole {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			f.Close()
			return err
		}
		all, err := io.ReadAll(io.LimitReader(f, h.Total+1))
		switch {
		case err != nil:
			err2 = err
		case int64(len(all)) != h.Total:
			err2 = fmt.Errorf("shard %s has %d bytes, want %d (pieces missing)", rel, len(all), h.Total)
		case SumOf(all) != h.Sum:
			err2 = fmt.Errorf("shard %s: checksum mismatch after transfer", rel)
		}
	}
	err = err2
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(part)
		return err
	}
	var old int64
	if fi, err := os.Stat(p); err == nil {
		old = fi.Size()
	}
	if err := os.Rename(part, p); err != nil {
		os.Remove(part)
		return fmt.Errorf("publishing shard %s: %w", rel, err)
	}
	s.mu.Lock()
	s.held[origin] += h.Total - old
	s.mu.Unlock()
	return nil
}

// ErrNoShard is returned (wrapped) when a shard is not held.
var ErrNoShard = errors.New("shard not held")

// Read returns length bytes (0: to the end) at offset of a shard.
func (s *Store) Read(origin string, id ShardID, offset, length int64) ([]byte, error) {
	rel, p, err := s.path(origin, id)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s", ErrNoShard, rel)
		}
		return nil, fmt.Errorf("opening shard %s: %w", rel, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if length == 0 {
		length = fi.Size() - offset
	}
	if offset < 0 || length < 0 || offset+length > fi.Size() || length > PieceSize*4 {
		return nil, fmt.Errorf("range [%d, +%d) invalid for shard %s of %d bytes", offset, length, rel, fi.Size())
	}
	buf := make([]byte, length)
	if _, err := f.ReadAt(buf, offset); err != nil {
		return nil, fmt.Errorf("reading shard %s: %w", rel, err)
	}
	return buf, nil
}

// Size returns the size of a held shard.
func (s *Store) Size(origin string, id ShardID) (int64, error) {
	rel, p, err := s.path(origin, id)
	if err != nil {
		return 0, err
	}
	fi, err := os.Stat(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 0, fmt.Errorf("%w: %s", ErrNoShard, rel)
		}
		return 0, err
	}
	return fi.Size(), nil
}

// Prove answers a challenge over a held shard.
func (s *Store) Prove(origin string, ch Challenge) (Sum, error) {
	if ch.Length <= 0 || ch.Length > MaxProofRange {
		return Sum{}, fmt.Errorf("proof length %d outside (0, %d]", ch.Length, MaxProofRange)
	}
	b, err := s.Read(origin, ch.ShardID, ch.Offset, ch.Length)
	if err != nil {
		return Sum{}, err
	}
	return ch.AnswerRange(b), nil
}

// Delete removes a held shard.
func (s *Store) Delete(origin string, id ShardID) error {
	rel, p, err := s.path(origin, id)
	if err != nil {
		return err
	}
	fi, err := os.Stat(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: %s", ErrNoShard, rel)
		}
		return err
	}
	if err := os.Remove(p); err != nil {
		return fmt.Errorf("removing shard %s: %w", rel, err)
	}
	s.mu.Lock()
	s.held[origin] -= fi.Size()
	s.mu.Unlock()
	return nil
}

// List returns the shards held for origin.
func (s *Store) List(origin string) ([]HeldShard, error) {
	if err := ValidName(origin); err != nil {
		return nil, err
	}
	root := filepath.Join(s.dir, origin)
	var out []HeldShard
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() || strings.HasSuffix(p, partSuffix) || p == filepath.Join(root, mapFileName) {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		parts := strings.Split(filepath.ToSlash(rel), "/")
		if len(parts) != 3 {
			return nil
		}
		i := strings.LastIndexByte(parts[2], '.')
		if i < 0 {
			return nil
		}
		idx, err := strconv.Atoi(parts[2][i+1:])
		if err != nil {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		out = append(out, HeldShard{ShardID: ShardID{Ref: FileRef{Repo: parts[0], Type: parts[1], Name: parts[2][:i]}, Idx: idx}, Size: fi.Size()})
		return nil
	})
	return out, err
}

// Origins returns the origins the store holds shards or maps for.
func (s *Store) Origins() ([]string, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && ValidName(e.Name()) == nil {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// SaveMap stores origin's encoded shard map if its generation is not older
// than the one held.
func (s *Store) SaveMap(origin string, b []byte) error {
	m, err := DecodeShardMap(b)
	if err != nil {
		return err
	}
	if m.Origin != origin {
		return fmt.Errorf("shard map of %q sent by %q", m.Origin, origin)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	dir := filepath.Join(s.dir, origin)
	if old, err := os.ReadFile(filepath.Join(dir, mapFileName)); err == nil {
		if om, err := DecodeShardMap(old); err == nil && om.Generation > m.Generation {
			return nil
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return WriteFileAtomic(filepath.Join(dir, mapFileName), b)
}

// LoadMap returns origin's stored shard map, or nil when none is held.
func (s *Store) LoadMap(origin string) ([]byte, error) {
	if err := ValidName(origin); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(s.dir, origin, mapFileName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return b, err
}

// WriteFileAtomic writes b to p through a synced temporary file and a
// rename.
func WriteFileAtomic(p string, b []byte) error {
	tmp := p + partSuffix
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", p, err)
	}
	return nil
}
