package repo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/holdfast/holdfast/internal/repo/backend"
	"github.com/holdfast/holdfast/internal/repo/chunker"
	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/blake3"
)

// Size limits for repository objects.
const (
	// DefaultPackSize is the size at which a pack is closed.
	DefaultPackSize = 16 << 20
	// MinPackSize and MaxPackTarget bound the configured pack size.
	MinPackSize   = 256 << 10
	MaxPackTarget = 256 << 20
	// maxObjectSize bounds config, snapshot and lock files.
	maxObjectSize = 64 << 20
	// formatVersion is the format of new repositories. Version 2 stores
	// small blobs in groups (see pack.go) and compresses with zstd level
	// 1 by default; version 1 repositories are read, and written without
	// groups, as before.
	formatVersion = 2
	// groupBlobMax: data blobs shorter than this are stored in groups;
	// a group is sealed once its plaintext reaches groupTarget.
	groupBlobMax = 256 << 10
	groupTarget  = 512 << 10
	// zstdWindow is the compression window: chunks average 1 MiB, so a
	// larger one buys little and costs memory per encoder.
	zstdWindow = 2 << 20
)

// ErrNoRepository is returned when the location holds no repository.
var ErrNoRepository = errors.New("no repository at this location")

// Config is the repository's configuration, stored encrypted as "config".
type Config struct {
	Version  int            `json:"version"`
	ID       string         `json:"id"`
	Created  time.Time      `json:"created"`
	Chunker  chunker.Params `json:"chunker"`
	PackSize int            `json:"pack_size"`
	// Compression of data blobs: "fastest" (zstd level 1), "default"
	// (level 1 from format version 2, where small blobs are compressed
	// together in groups; level 3 in version 1 repositories), "better"
	// (level 7) or "off". Empty means default.
	Compression string `json:"compression,omitempty"`
}

// InitOptions configure a new repository.
type InitOptions struct {
	Chunker     chunker.Params
	PackSize    int
	Compression string // see Config.Compression
	KDF         KDFParams
	Logger      *slog.Logger
	// FormatVersion is the repository format: 0 for the newest (2), or 1
	// for a repository that holdfast versions without groups can use.
	FormatVersion int
}

// DefaultInitOptions returns 512 KiB average chunks, 16 MiB packs and
// argon2id at 32 MiB.
func DefaultInitOptions() InitOptions {
	return InitOptions{Chunker: chunker.DefaultParams(), PackSize: DefaultPackSize, KDF: DefaultKDFParams()}
}

// Validate checks the options.
func (o InitOptions) Validate() error {
	if err := o.Chunker.Validate(); err != nil {
		return err
	}
	if o.PackSize < MinPackSize || o.PackSize > MaxPackTarget {
		return fmt.Errorf("pack size %d outside [%d, %d]", o.PackSize, MinPackSize, MaxPackTarget)
	}
	if o.FormatVersion != 0 && o.FormatVersion != 1 && o.FormatVersion != formatVersion {
		return fmt.Errorf("unknown repository format version %d (want 1 or %d)", o.FormatVersion, formatVersion)
	}
	if _, err := compressionLevel(o.Compression, formatVersion); err != nil {
		return err
	}
	return o.KDF.Validate()
}

// grouped reports whether small blobs are stored in groups (format 2).
func (c Config) grouped() bool { return c.Version >= 2 }

// compressionLevel maps a Config.Compression name to a zstd level (0 for
// "off") in a repository of the given format version.
func compressionLevel(name string, version int) (zstd.EncoderLevel, error) {
	switch name {
	case "", "default":
		if version >= 2 {
			// Groups give small files the context that level 3 gave
			// them blob by blob, at level 1's speed (bench/backup).
			return zstd.SpeedFastest, nil
		}
		return zstd.SpeedDefault, nil
	case "fastest":
		return zstd.SpeedFastest, nil
	case "better":
		return zstd.SpeedBetterCompression, nil
	case "off":
		return 0, nil
	}
	return 0, fmt.Errorf("unknown compression %q (want fastest, default, better or off)", name)
}

// OpenOptions configure opening a repository.
type OpenOptions struct {
	Logger *slog.Logger
	// NoIndex skips loading the index (for key management).
	NoIndex bool
}

// Repository is an open repository. It is safe for concurrent use.
type Repository struct {
	be      backend.Backend
	log     *slog.Logger
	key     *masterKey
	keyName string
	crypt   *crypter
	cfg     Config
	chunker *chunker.Chunker
	enc     *zstd.Encoder
	dec     *zstd.Decoder
	idx     *memIndex
	hashers sync.Pool
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// Init creates a repository in an empty backend location and returns it open.
func Init(ctx context.Context, be backend.Backend, pass string, opts InitOptions) (*Repository, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("init: %w", err)
	}
	if pass == "" {
		return nil, errors.New("init: empty password")
	}
	if _, err := be.Stat(ctx, backend.Handle{Type: backend.ConfigFile}); err == nil {
		return nil, fmt.Errorf("init: repository already exists at %s", be.Location())
	}
	if err := be.Create(ctx); err != nil {
		return nil, fmt.Errorf("init: %w", err)
	}
	mk, err := newMasterKey()
	if err != nil {
		return nil, err
	}
	idb := make([]byte, 16)
	rand.Read(idb)
	version := formatVersion
	if opts.FormatVersion != 0 {
		version = opts.FormatVersion
	}
	cfg := Config{Version: version, ID: hex.EncodeToString(idb), Created: time.Now().UTC(), Chunker: opts.Chunker, PackSize: opts.PackSize, Compression: opts.Compression}
	r, err := newRepository(be, mk, cfg, opts.Logger)
	if err != nil {
		return nil, err
	}
	kb, err := wrapKey(mk, pass, opts.KDF)
	if err != nil {
		return nil, err
	}
	r.keyName = fileID(kb).String()
	if err := be.Save(ctx, backend.Handle{Type: backend.KeyFile, Name: r.keyName}, kb); err != nil {
		return nil, fmt.Errorf("init: saving key: %w", err)
	}
	cb, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	if err := be.Save(ctx, backend.Handle{Type: backend.ConfigFile}, r.crypt.seal(nil, append([]byte{frameRaw}, cb...))); err != nil {
		return nil, fmt.Errorf("init: saving config: %w", err)
	}
	r.log.Info("repository created", "location", be.Location(), "id", cfg.ID)
	return r, nil
}

func newRepository(be backend.Backend, mk *masterKey, cfg Config, log *slog.Logger) (*Repository, error) {
	if log == nil {
		log = discardLogger()
	}
	c, err := newCrypter(mk.Encrypt)
	if err != nil {
		return nil, err
	}
	ch, err := chunker.New(cfg.Chunker, mk.ID[:])
	if err != nil {
		return nil, err
	}
	level, err := compressionLevel(cfg.Compression, cfg.Version)
	if err != nil {
		return nil, err
	}
	if level == 0 {
		level = zstd.SpeedFastest // used only for metadata when compression is off
	}
	// Entropy-coding the literals of every block (level 1 skips it for
	// some) made the generated set of bench/backup 2% smaller at level 1
	// for no measurable CPU time.
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(level), zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)), zstd.WithLowerEncoderMem(true), zstd.WithWindowSize(zstdWindow), zstd.WithEncoderCRC(false), zstd.WithAllLitEntropyCompression(true))
	if err != nil {
		return nil, err
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(MaxIndexSize))
	if err != nil {
		return nil, err
	}
	r := &Repository{be: be, log: log, key: mk, crypt: c, cfg: cfg, chunker: ch, enc: enc, dec: dec, idx: newMemIndex()}
	r.hashers.New = func() any {
		h, _ := blake3.NewKeyed(mk.ID[:])
		return h
	}
	return r, nil
}

// Open opens the repository in be with pass, trying every key file.
func Open(ctx context.Context, be backend.Backend, pass string, opts OpenOptions) (*Repository, error) {
	cfgBytes, err := be.Load(ctx, backend.Handle{Type: backend.ConfigFile}, 0, 0)
	if err != nil {
		if errors.Is(err, backend.ErrNotExist) {
			return nil, fmt.Errorf("opening %s: %w", be.Location(), ErrNoRepository)
		}
		return nil, fmt.Errorf("opening %s: %w", be.Location(), err)
	}
	var names []string
	if err := be.List(ctx, backend.KeyFile, func(fi backend.FileInfo) error {
		names = append(names, fi.Name)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("listing keys: %w", err)
	}
	sort.Strings(names)
	var mk *masterKey
	var keyName string
	for _, n := range names {
		kb, err := be.Load(ctx, backend.Handle{Type: backend.KeyFile, Name: n}, 0, 0)
		if err != nil {
			return nil, fmt.Errorf("loading key %s: %w", n, err)
		}
		k, err := unwrapKey(kb, pass)
		if err != nil {
			if !errors.Is(err, ErrWrongPassword) && opts.Logger != nil {
				opts.Logger.Warn("skipping unreadable key file", "key", n, "err", err)
			}
			continue
		}
		mk, keyName = k, n
		break
	}
	if mk == nil {
		return nil, ErrWrongPassword
	}
	c, err := newCrypter(mk.Encrypt)
	if err != nil {
		return nil, err
	}
	plain, err := c.open(nil, cfgBytes)
	if err != nil {
		return nil, fmt.Errorf("decrypting config: %w", err)
	}
	cfg, err := decodeConfig(plain)
	if err != nil {
		return nil, err
	}
	r, err := newRepository(be, mk, cfg, opts.Logger)
	if err != nil {
		return nil, err
	}
	r.keyName = keyName
	if !opts.NoIndex {
		if err := r.LoadIndex(ctx); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// decodeConfig parses and validates the decrypted config file.
func decodeConfig(plain []byte) (Config, error) {
	var cfg Config
	if len(plain) < 1 || plain[0] != frameRaw {
		return cfg, errors.New("parsing config: unknown framing")
	}
	if len(plain) > maxObjectSize {
		return cfg, errors.New("parsing config: too large")
	}
	if err := json.Unmarshal(plain[1:], &cfg); err != nil {
		return cfg, fmt.Errorf("parsing config: %w", err)
	}
	if cfg.Version != 1 && cfg.Version != formatVersion {
		return cfg, fmt.Errorf("unsupported repository version %d", cfg.Version)
	}
	if err := cfg.Chunker.Validate(); err != nil {
		return cfg, fmt.Errorf("config: %w", err)
	}
	if cfg.PackSize < MinPackSize || cfg.PackSize > MaxPackTarget {
		return cfg, fmt.Errorf("config: pack size %d invalid", cfg.PackSize)
	}
	if _, err := compressionLevel(cfg.Compression, cfg.Version); err != nil {
		return cfg, fmt.Errorf("config: %w", err)
	}
	return cfg, nil
}

// Config returns the repository configuration.
func (r *Repository) Config() Config { return r.cfg }

// IndexedBlobs returns the number of blobs in the loaded index (callers
// use it to size memory limits).
func (r *Repository) IndexedBlobs() int {
	r.idx.mu.RLock()
	defer r.idx.mu.RUnlock()
	return len(r.idx.blobs)
}

// Backend returns the backend the repository is stored in.
func (r *Repository) Backend() backend.Backend { return r.be }

// Close releases the repository's resources (not the backend).
func (r *Repository) Close() error {
	r.enc.Close()
	r.dec.Close()
	return nil
}

// blobID returns the keyed hash of a blob's plaintext.
func (r *Repository) blobID(data []byte) ID {
	h := r.hashers.Get().(*blake3.Hasher)
	h.Reset()
	h.Write(data)
	var id ID
	h.Sum(id[:0])
	r.hashers.Put(h)
	return id
}

// Object framing inside the encryption: one byte saying how the payload is
// stored, then the payload.
const (
	frameRaw  = 0
	frameZstd = 1
	// frameZstdBare is a zstd frame without its 4-byte magic number, which
	// every blob would otherwise repeat (data and tree blobs use it).
	frameZstdBare = 2
)

// zstdMagic starts every zstd frame.
var zstdMagic = [4]byte{0x28, 0xb5, 0x2f, 0xfd}

// encodeObject frames (compressing when it helps) and encrypts plain.
func (r *Repository) encodeObject(plain []byte) []byte {
	return r.crypt.seal(nil, r.frame(plain))
}

func (r *Repository) frame(plain []byte) []byte {
	return r.frameInto(make([]byte, 0, len(plain)/2+64), plain)
}

// frameInto frames plain into buf (reusing its capacity).
func (r *Repository) frameInto(buf, plain []byte) []byte {
	buf = append(buf[:0], frameZstd)
	buf = r.enc.EncodeAll(plain, buf)
	if len(buf) >= len(plain)+1 {
		buf = append(buf[:0], frameRaw)
		buf = append(buf, plain...)
	}
	return buf
}

// sealBlob frames (compressing when it helps) and encrypts plain into one
// pooled buffer, in place: nonce ‖ ciphertext ‖ tag. The caller returns
// the buffer with putBuf once the result is written.
func (r *Repository) sealBlob(plain []byte) (*[]byte, []byte) {
	return r.sealObject(plain, true)
}

// sealObject is sealBlob; guess says whether plain may be stored without
// trying to compress it when it looks random (a group is always tried:
// its members are different files, which three samples may not show).
func (r *Repository) sealObject(plain []byte, guess bool) (*[]byte, []byte) {
	bp := getBuf(nonceSize + 1 + len(plain) + tagSize)
	buf := (*bp)[:nonceSize+1]
	buf[nonceSize] = frameZstdBare
	var out []byte
	if r.cfg.Compression == "off" || guess && incompressible(plain) {
		out = buf[:nonceSize] // store raw below
	} else {
		out = r.enc.EncodeAll(plain, buf)
		if len(out) >= nonceSize+1+len(zstdMagic) && [4]byte(out[nonceSize+1:]) == zstdMagic {
			// Drop the magic number.
			out = append(out[:nonceSize+1], out[nonceSize+1+len(zstdMagic):]...)
		} else {
			out = buf[:nonceSize] // not a frame we know: store raw
		}
	}
	if len(out) <= nonceSize || len(out)-nonceSize-1 >= len(plain) || cap(out) != cap(buf) {
		// Not smaller (or it outgrew the buffer): store raw.
		out = append(buf[:nonceSize], frameRaw)
		out = append(out, plain...)
	}
	if _, err := rand.Read(out[:nonceSize]); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	sealed := r.crypt.aead.Seal(out[nonceSize:nonceSize], out[:nonceSize], out[nonceSize:], nil)
	return bp, out[:nonceSize+len(sealed)]
}

// openBlob decrypts enc in place and unframes it into a pooled buffer of
// rawLen bytes, which the caller returns with putBuf. A negative rawLen
// (a group's plaintext) means any length up to MaxGroupSize.
func (r *Repository) openBlob(enc []byte, rawLen int) (*[]byte, []byte, error) {
	if len(enc) < Overhead {
		return nil, nil, fmt.Errorf("%w: object too short (%d bytes)", ErrDecrypt, len(enc))
	}
	plain, err := r.crypt.aead.Open(enc[nonceSize:nonceSize], enc[:nonceSize], enc[nonceSize:], nil)
	if err != nil {
		return nil, nil, ErrDecrypt
	}
	if len(plain) < 1 {
		return nil, nil, errors.New("empty object")
	}
	size := rawLen
	if rawLen < 0 {
		size = groupTarget + groupBlobMax // what the groups we write hold at most
	}
	bp := getBuf(size)
	switch plain[0] {
	case frameRaw:
		if rawLen < 0 && len(plain)-1 > MaxGroupSize || rawLen >= 0 && len(plain)-1 != rawLen {
			putBuf(bp)
			return nil, nil, fmt.Errorf("object length %d, want %d", len(plain)-1, rawLen)
		}
		out := append((*bp)[:0], plain[1:]...)
		return bp, out, nil
	case frameZstd, frameZstdBare:
		frame := plain[1:]
		if plain[0] == frameZstdBare {
			// Put the magic number back in front of the frame, over the
			// frame byte and the end of the nonce (enc is not used again).
			frame = enc[nonceSize+1-len(zstdMagic) : nonceSize+len(plain)]
			copy(frame, zstdMagic[:])
		}
		out, err := r.dec.DecodeAll(frame, (*bp)[:0])
		if err != nil {
			putBuf(bp)
			return nil, nil, fmt.Errorf("decompressing: %w", err)
		}
		if rawLen < 0 && len(out) > MaxGroupSize || rawLen >= 0 && len(out) != rawLen {
			putBuf(bp)
			return nil, nil, fmt.Errorf("object length %d, want %d", len(out), rawLen)
		}
		return bp, out, nil
	}
	putBuf(bp)
	return nil, nil, fmt.Errorf("unknown object frame %d", plain[0])
}

// decodeObject decrypts and unframes an object; rawLen, if not negative,
// is the expected plaintext length.
func (r *Repository) decodeObject(enc []byte, rawLen int) ([]byte, error) {
	plain, err := r.crypt.open(nil, enc)
	if err != nil {
		return nil, err
	}
	return r.unframe(plain, rawLen)
}

func (r *Repository) unframe(plain []byte, rawLen int) ([]byte, error) {
	if len(plain) < 1 {
		return nil, errors.New("empty object")
	}
	switch plain[0] {
	case frameRaw:
		out := plain[1:]
		if rawLen >= 0 && len(out) != rawLen {
			return nil, fmt.Errorf("object length %d, want %d", len(out), rawLen)
		}
		return out, nil
	case frameZstd, frameZstdBare:
		var dst []byte
		if rawLen >= 0 {
			dst = make([]byte, 0, rawLen)
		}
		frame := plain[1:]
		if plain[0] == frameZstdBare {
			frame = append(zstdMagic[:len(zstdMagic):len(zstdMagic)], frame...)
		}
		out, err := r.dec.DecodeAll(frame, dst)
		if err != nil {
			return nil, fmt.Errorf("decompressing: %w", err)
		}
		if rawLen >= 0 && len(out) != rawLen {
			return nil, fmt.Errorf("object length %d, want %d", len(out), rawLen)
		}
		return out, nil
	}
	return nil, fmt.Errorf("unknown object frame %d", plain[0])
}

// saveFile encrypts plain and stores it under the hash of the result.
func (r *Repository) saveFile(ctx context.Context, t backend.FileType, plain []byte) (ID, error) {
	enc := r.encodeObject(plain)
	id := fileID(enc)
	if err := r.be.Save(ctx, backend.Handle{Type: t, Name: id.String()}, enc); err != nil {
		return id, err
	}
	return id, nil
}

// loadFile loads, verifies and decrypts a content-addressed file.
func (r *Repository) loadFile(ctx context.Context, t backend.FileType, id ID) ([]byte, error) {
	h := backend.Handle{Type: t, Name: id.String()}
	enc, err := r.be.Load(ctx, h, 0, 0)
	if err != nil {
		return nil, err
	}
	if fileID(enc) != id {
		return nil, fmt.Errorf("%s: content does not match its name (damaged)", h)
	}
	plain, err := r.decodeObject(enc, -1)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", h, err)
	}
	return plain, nil
}

// listIDs lists the content-addressed files of type t.
func (r *Repository) listIDs(ctx context.Context, t backend.FileType) (IDs, error) {
	var ids IDs
	err := r.be.List(ctx, t, func(fi backend.FileInfo) error {
		id, err := ParseID(fi.Name)
		if err != nil {
			r.log.Warn("ignoring file with a foreign name", "type", t, "name", fi.Name)
			return nil
		}
		ids = append(ids, id)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", t, err)
	}
	sort.Sort(ids)
	return ids, nil
}

// LoadIndex (re)reads every index file.
func (r *Repository) LoadIndex(ctx context.Context) error {
	ids, err := r.listIDs(ctx, backend.IndexFile)
	if err != nil {
		return err
	}
	idx := newMemIndex()
	type res struct {
		id    ID
		packs []IndexPack
		err   error
	}
	work := make(chan ID)
	out := make(chan res)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range work {
				plain, err := r.loadFile(ctx, backend.IndexFile, id)
				var packs []IndexPack
				if err == nil {
					packs, err = decodeIndex(plain)
				}
				out <- res{id, packs, err}
			}
		}()
	}
	go func() {
		for _, id := range ids {
			work <- id
		}
		close(work)
		wg.Wait()
		close(out)
	}()
	var errs []error
	for res := range out {
		if res.err != nil {
			errs = append(errs, fmt.Errorf("index %s: %w", res.id.Short(), res.err))
			continue
		}
		idx.addPacks(res.packs)
		idx.files[res.id] = struct{}{}
	}
	r.idx = idx
	if len(errs) > 0 {
		return fmt.Errorf("loading index: %w", errors.Join(errs...))
	}
	return nil
}

// LoadBlob reads, decrypts, decompresses and verifies one blob.
func (r *Repository) LoadBlob(ctx context.Context, id ID) ([]byte, error) {
	loc, ok := r.idx.lookup(id)
	if !ok {
		return nil, fmt.Errorf("blob %s not in index", id.Short())
	}
	enc, err := r.be.Load(ctx, backend.Handle{Type: backend.PackFile, Name: loc.Pack.String()}, int64(loc.Offset), int64(loc.Length))
	if err != nil {
		return nil, fmt.Errorf("loading blob %s: %w", id.Short(), err)
	}
	return r.decodeBlobInPlace(loc, enc)
}

// decodeBlobInPlace decrypts (in place) and checks one stored blob; enc
// is its stored object (for a grouped blob, its group's).
func (r *Repository) decodeBlobInPlace(loc BlobLocation, enc []byte) ([]byte, error) {
	var c objectCache
	plain, err := r.openBlobAt(&c, loc, enc)
	if err != nil {
		c.release()
		return nil, err
	}
	out := append([]byte(nil), plain...)
	c.release()
	return out, nil
}

// objectCache holds the last stored object decoded by openBlobAt, so that
// the members of a group, read one after another, decrypt and decompress
// their group once.
type objectCache struct {
	valid bool
	pack  ID
	off   uint32
	bp    *[]byte
	plain []byte
	err   error
}

// release returns the cached object's buffer to its pool.
func (c *objectCache) release() {
	if c.bp != nil {
		putBuf(c.bp)
	}
	*c = objectCache{}
}

// openBlobAt returns the verified plaintext of the blob at loc, given enc,
// the bytes of its stored object, which it decrypts in place (unless the
// object is the one cached in c, when enc is not touched). The result is
// valid until the next call with c or c.release.
func (r *Repository) openBlobAt(c *objectCache, loc BlobLocation, enc []byte) ([]byte, error) {
	fail := func(err error) ([]byte, error) {
		return nil, fmt.Errorf("blob %s in pack %s: %w", loc.ID.Short(), loc.Pack.Short(), err)
	}
	if !(loc.Grouped && c.valid && c.pack == loc.Pack && c.off == loc.Offset) {
		c.release()
		rawLen := int(loc.RawLen)
		if loc.Grouped {
			rawLen = -1
		}
		c.bp, c.plain, c.err = r.openBlob(enc, rawLen)
		c.valid, c.pack, c.off = true, loc.Pack, loc.Offset
	}
	if c.err != nil {
		return fail(c.err)
	}
	plain := c.plain
	if loc.Grouped {
		end := int64(loc.GroupOff) + int64(loc.RawLen)
		if end > int64(len(plain)) {
			return fail(fmt.Errorf("group of %d bytes ends before the blob (%d+%d)", len(plain), loc.GroupOff, loc.RawLen))
		}
		plain = plain[loc.GroupOff:end]
	}
	if r.blobID(plain) != loc.ID {
		return fail(errors.New("content does not match its id"))
	}
	return plain, nil
}

// FindSnapshot resolves a snapshot ID, unique prefix, or "latest".
func (r *Repository) FindSnapshot(ctx context.Context, s string) (ID, error) {
	ids, err := r.listIDs(ctx, backend.SnapshotFile)
	if err != nil {
		return ID{}, err
	}
	if s == "latest" {
		snaps, err := r.Snapshots(ctx)
		if err != nil {
			return ID{}, err
		}
		if len(snaps) == 0 {
			return ID{}, errors.New("no snapshots")
		}
		return snaps[len(snaps)-1].ID, nil
	}
	return matchPrefix(ids, s, "snapshot")
}

func matchPrefix(ids IDs, s, what string) (ID, error) {
	s = strings.ToLower(s)
	var found []ID
	for _, id := range ids {
		if strings.HasPrefix(id.String(), s) {
			found = append(found, id)
		}
	}
	switch {
	case s == "" || len(found) == 0:
		return ID{}, fmt.Errorf("no %s matches %q", what, s)
	case len(found) > 1:
		return ID{}, fmt.Errorf("%s prefix %q is ambiguous (%d matches)", what, s, len(found))
	}
	return found[0], nil
}

// incompressibleSample is the size of each of the three samples (start,
// middle, end) incompressible looks at.
const incompressibleSample = 8 << 10

// incompressible guesses whether compressing b would not pay: the bytes of
// three samples of it are near uniformly distributed (random, encrypted or
// already compressed data), so neither matches nor entropy coding would
// save anything worth their time. Small blobs are always tried.
func incompressible(b []byte) bool {
	if len(b) < 16*incompressibleSample {
		return false
	}
	var hist [256]uint32
	for _, off := range [3]int{0, len(b)/2 - incompressibleSample/2, len(b) - incompressibleSample} {
		for _, c := range b[off : off+incompressibleSample] {
			hist[c]++
		}
	}
	const n = 3 * incompressibleSample
	var bits float64
	for _, c := range hist {
		if c > 0 {
			p := float64(c) / n
			bits -= p * math.Log2(p)
		}
	}
	return bits > incompressibleBits
}

// incompressibleBits is the order-0 entropy (bits per byte) above which
// incompressible gives up: uniformly random samples of this size measure
// about 7.99; text about 4.5, machine code about 6.
const incompressibleBits = 7.95
