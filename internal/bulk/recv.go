package bulk

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"golang.org/x/sys/unix"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/holdfast/holdfast/internal/wire"
)

// Names of the files a receiver keeps next to an unfinished file.
const (
	partPrefix    = ".holdfast-part."
	journalPrefix = ".holdfast-journal."
	journalMagic  = "hfj2"
	journalHdr    = 4 + 8 + 8 + 4 + 4
	journalRec    = 4 + 32
	// MaxTransfers bounds the transfers a Service runs at once.
	MaxTransfers = 64
	// transferIdle is how long an abandoned transfer keeps its files open.
	transferIdle = 10 * time.Minute
)

// ServiceConfig configures a Service.
type ServiceConfig struct {
	// Root is the directory incoming transfers are written under; a
	// destination path is taken relative to it and can never leave it.
	Root string
	// Logger receives transfer events (default slog.Default()).
	Logger *slog.Logger
}

// Validate reports a bad configuration.
func (c ServiceConfig) Validate() error {
	if c.Root == "" {
		return errors.New("bulk: service root is not set")
	}
	fi, err := os.Stat(c.Root)
	if err != nil {
		return fmt.Errorf("bulk: service root: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("bulk: service root %s is not a directory", c.Root)
	}
	return nil
}

// Service receives transfers (and serves fetches) under a root directory.
// Mount it on an agent's wire mux with Register.
type Service struct {
	cfg  ServiceConfig
	log  *slog.Logger
	root *os.Root

	mu        sync.Mutex
	transfers map[TransferID]*recvTransfer

	// Fetch groups: the sessions a fetching client joined, and the conn
	// wrapping each session that is sending (for its acks).
	fmu        sync.Mutex
	groups     map[TransferID][]*wire.Session
	fetchConns map[*wire.Session]*conn
	nextConn   int
}

// NewService opens a service on cfg.Root.
func NewService(cfg ServiceConfig) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r, err := os.OpenRoot(cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("bulk: opening root %s: %w", cfg.Root, err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Service{cfg: cfg, log: log, root: r, transfers: make(map[TransferID]*recvTransfer)}, nil
}

// Close closes the service's open files.
func (s *Service) Close() error {
	s.mu.Lock()
	ts := s.transfers
	s.transfers = map[TransferID]*recvTransfer{}
	s.mu.Unlock()
	for _, t := range ts {
		t.close()
	}
	return s.root.Close()
}

// Register mounts the service's handlers on mux.
func (s *Service) Register(mux *wire.Mux) {
	mux.Handle(MsgPing, func(ctx context.Context, req *wire.Request) ([]byte, error) { return nil, nil })
	mux.Handle(MsgPrime, func(ctx context.Context, req *wire.Request) ([]byte, error) { return nil, nil })
	mux.Handle(MsgBegin, s.handleBegin)
	// handleBlock writes the block before it returns: it may borrow the
	// payload buffer instead of getting one allocated per block.
	mux.HandleBorrowed(MsgBlock, s.handleBlock)
	mux.Handle(MsgCommit, s.handleCommit)
	mux.Handle(MsgEnd, s.handleEnd)
	mux.Handle(MsgFetch, s.handleFetch)
	mux.Handle(MsgFetchJoin, s.handleFetchJoin)
	mux.Handle(MsgAck, s.handleAck)
}

type recvFile struct {
	mu       sync.Mutex
	entry    Entry
	target   string // final path under root
	partRel  string
	jrnlRel  string
	part     *os.File
	journal  *os.File
	have     []bool
	sums     [][32]byte
	count    int
	finished bool
}

type recvTransfer struct {
	id      TransferID
	owner   string
	bs      int
	sum     Checksum
	dst     string
	entries []Entry
	targets []string
	files   map[int]*recvFile
	stored  atomic.Int64
	last    atomic.Int64 // unix nanos of the last message
	ctx     context.Context
	cancel  context.CancelFunc
}

func (t *recvTransfer) close() {
	t.cancel()
	for _, f := range t.files {
		f.mu.Lock()
		if f.part != nil {
			f.part.Close()
			f.part = nil
		}
		if f.journal != nil {
			f.journal.Close()
			f.journal = nil
		}
		f.mu.Unlock()
	}
}

func (s *Service) authorize(req *wire.Request) error {
	if !req.Session.Authenticated() {
		return errors.New("bulk: peer refused: not a member of this cluster")
	}
	return nil
}

// rootRel turns a user destination ("/data/x", "data/x", "") into a path
// relative to the service root.
func rootRel(dst string) (string, error) {
	d := strings.TrimLeft(dst, "/")
	if d == "" {
		d = "."
	}
	return cleanRel(d)
}

func (s *Service) handleBegin(ctx context.Context, req *wire.Request) ([]byte, error) {
	if err := s.authorize(req); err != nil {
		return nil, err
	}
	if len(req.Payload) > MaxBeginSize {
		return nil, fmt.Errorf("bulk: begin request of %d bytes exceeds %d", len(req.Payload), MaxBeginSize)
	}
	var br beginReq
	if err := json.Unmarshal(req.Payload, &br); err != nil {
		return nil, fmt.Errorf("bulk: decoding begin request: %w", err)
	}
	if br.BlockSize < MinBlockSize || br.BlockSize > MaxBlockSize {
		return nil, fmt.Errorf("bulk: block size %d out of range %d..%d", br.BlockSize, MinBlockSize, MaxBlockSize)
	}
	sum := br.Checksum
	if sum == "" {
		sum = ChecksumBLAKE3
	}
	if !sum.valid() {
		return nil, fmt.Errorf("bulk: unknown block checksum %q", sum)
	}
	if len(br.Entries) > MaxEntries {
		return nil, fmt.Errorf("bulk: %d entries exceed %d", len(br.Entries), MaxEntries)
	}
	dst, err := rootRel(br.Dst)
	if err != nil {
		return nil, fmt.Errorf("bulk: destination: %w", err)
	}
	// Sources land under dst/<name> when there are several or dst is an
	// existing directory; a single source otherwise becomes dst itself.
	nest := br.Multi
	if fi, err := s.root.Stat(dst); err == nil && fi.IsDir() {
		nest = true
	} else if br.Multi {
		if err := s.root.MkdirAll(dst, 0o755); err != nil {
			return nil, fmt.Errorf("bulk: creating destination %s: %w", dst, err)
		}
	}
	t := &recvTransfer{id: br.ID, owner: req.Session.Peer(), bs: br.BlockSize, sum: sum, dst: dst, entries: br.Entries, files: map[int]*recvFile{}}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	t.last.Store(time.Now().UnixNano())
	resp := beginResp{Have: map[int][]haveBlock{}, Dst: dst}
	for i, e := range br.Entries {
		p, err := cleanRel(e.Path)
		if err != nil {
			t.close()
			return nil, fmt.Errorf("bulk: entry %d: %w", i, err)
		}
		var target string
		if nest {
			target = path.Join(dst, p)
		} else {
			// Strip the source's own name: it becomes dst.
			_, rest, _ := strings.Cut(p, "/")
			if p == "." || !strings.Contains(p, "/") {
				rest = ""
			}
			target = path.Join(dst, rest)
		}
		t.targets = append(t.targets, target)
		switch e.Type {
		case TypeDir:
			if err := s.root.MkdirAll(target, 0o700|fs.FileMode(e.Mode&0o777)); err != nil {
				t.close()
				return nil, fmt.Errorf("bulk: creating directory %s: %w", target, err)
			}
		case TypeSymlink:
		case TypeFile:
			if e.Size < 0 {
				t.close()
				return nil, fmt.Errorf("bulk: entry %s has negative size", e.Path)
			}
			f, have, err := s.openPartial(target, e, br.BlockSize, sum, br.Resume)
			if err != nil {
				t.close()
				return nil, err
			}
			t.files[i] = f
			if len(have) > 0 {
				resp.Have[i] = have
			}
		default:
			t.close()
			return nil, fmt.Errorf("bulk: entry %s has unknown type %q", e.Path, e.Type)
		}
	}
	s.mu.Lock()
	s.reapLocked()
	if len(s.transfers) >= MaxTransfers {
		s.mu.Unlock()
		t.close()
		return nil, fmt.Errorf("bulk: receiver busy: %d transfers running", MaxTransfers)
	}
	// A new transfer to the same files from the same peer supersedes an
	// abandoned one (a resumed transfer after the sender was killed).
	for id, o := range s.transfers {
		if o.owner == t.owner && o.dst == t.dst {
			o.close()
			delete(s.transfers, id)
		}
	}
	s.transfers[t.id] = t
	s.mu.Unlock()
	s.log.Info("transfer begins", "id", t.id, "peer", t.owner, "dst", dst, "entries", len(br.Entries), "resume", br.Resume)
	return json.Marshal(resp)
}

func (s *Service) reapLocked() {
	now := time.Now().UnixNano()
	for id, t := range s.transfers {
		if time.Duration(now-t.last.Load()) > transferIdle {
			t.close()
			delete(s.transfers, id)
		}
	}
}

// openPartial opens (or, resuming, reopens and verifies) the partial file
// and journal for a file entry and returns the blocks already held.
func (s *Service) openPartial(target string, e Entry, bs int, sum Checksum, resume bool) (*recvFile, []haveBlock, error) {
	dir, base := path.Split(target)
	if base == "" || base == "." {
		return nil, nil, fmt.Errorf("bulk: destination %q names no file", target)
	}
	if dir == "" {
		dir = "."
	}
	if err := s.root.MkdirAll(dir, 0o755); err != nil {
		return nil, nil, fmt.Errorf("bulk: creating directory %s: %w", dir, err)
	}
	n := numBlocks(e.Size, bs)
	f := &recvFile{entry: e, target: target, partRel: path.Join(dir, partPrefix+base), jrnlRel: path.Join(dir, journalPrefix+base),
		have: make([]bool, n), sums: make([][32]byte, n)}
	var have []haveBlock
	if resume {
		have = s.loadJournal(f, bs, sum)
	}
	if have == nil {
		var err error
		f.part, err = s.root.OpenFile(f.partRel, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return nil, nil, fmt.Errorf("bulk: creating %s: %w", f.partRel, err)
		}
		// Truncating to the final size keeps holes of a sparse source as
		// holes: blocks that lie in one are never written.
		if err := f.part.Truncate(e.Size); err != nil {
			f.part.Close()
			return nil, nil, fmt.Errorf("bulk: sizing %s: %w", f.partRel, err)
		}
		f.journal, err = s.root.OpenFile(f.jrnlRel, os.O_RDWR|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
		if err != nil {
			f.part.Close()
			return nil, nil, fmt.Errorf("bulk: creating %s: %w", f.jrnlRel, err)
		}
		var h [journalHdr]byte
		copy(h[:4], journalMagic)
		binary.BigEndian.PutUint64(h[4:], uint64(e.Size))
		binary.BigEndian.PutUint64(h[12:], uint64(e.MTime))
		binary.BigEndian.PutUint32(h[20:], uint32(bs))
		binary.BigEndian.PutUint32(h[24:], sum.code())
		if _, err := f.journal.Write(h[:]); err != nil {
			f.part.Close()
			f.journal.Close()
			return nil, nil, fmt.Errorf("bulk: writing %s: %w", f.jrnlRel, err)
		}
	}
	return f, have, nil
}

// loadJournal reopens an earlier run's partial file when its journal
// describes the same source, re-reads every journalled block and keeps those
// whose data still matches their checksum. It returns nil (start afresh)
// when there is nothing usable.
func (s *Service) loadJournal(f *recvFile, bs int, sumAlg Checksum) []haveBlock {
	j, err := s.root.OpenFile(f.jrnlRel, os.O_RDWR|os.O_APPEND, 0)
	if err != nil {
		return nil
	}
	data, err := io.ReadAll(io.LimitReader(j, journalHdr+int64(len(f.have))*journalRec*4+journalRec))
	if err != nil || len(data) < journalHdr || string(data[:4]) != journalMagic ||
		int64(binary.BigEndian.Uint64(data[4:])) != f.entry.Size ||
		int64(binary.BigEndian.Uint64(data[12:])) != f.entry.MTime ||
		int(binary.BigEndian.Uint32(data[20:])) != bs ||
		binary.BigEndian.Uint32(data[24:]) != sumAlg.code() {
		j.Close()
		return nil
	}
	part, err := s.root.OpenFile(f.partRel, os.O_RDWR, 0)
	if err != nil {
		j.Close()
		return nil
	}
	if fi, err := part.Stat(); err != nil || fi.Size() != f.entry.Size {
		part.Close()
		j.Close()
		return nil
	}
	buf := make([]byte, bs)
	have := []haveBlock{}
	// A record cut short by a kill is ignored (only whole records count).
	for p := journalHdr; p+journalRec <= len(data); p += journalRec {
		idx := binary.BigEndian.Uint32(data[p:])
		var sum [32]byte
		copy(sum[:], data[p+4:p+journalRec])
		if int(idx) >= len(f.have) || f.have[idx] {
			continue
		}
		n := blockLen(f.entry.Size, bs, int(idx))
		if _, err := part.ReadAt(buf[:n], int64(idx)*int64(bs)); err != nil {
			continue
		}
		if sumAlg.sum(buf[:n]) != sum {
			continue // torn or never flushed: send again
		}
		f.have[idx] = true
		f.sums[idx] = sum
		f.count++
		have = append(have, haveBlock{Index: idx, Sum: sum})
	}
	f.part, f.journal = part, j
	s.log.Info("resuming file", "file", f.target, "blocks_held", len(have), "blocks", len(f.have))
	return have
}

// blockLen is the length of block idx of a file of size bytes.
func blockLen(size int64, bs, idx int) int {
	off := int64(idx) * int64(bs)
	return int(min(int64(bs), size-off))
}

func (s *Service) transfer(req *wire.Request, id TransferID) (*recvTransfer, error) {
	s.mu.Lock()
	t := s.transfers[id]
	s.mu.Unlock()
	if t == nil {
		return nil, fmt.Errorf("bulk: no transfer %s", id)
	}
	if req.Session.Peer() != t.owner {
		return nil, fmt.Errorf("bulk: transfer %s belongs to %s, not %s", id, t.owner, req.Session.Peer())
	}
	t.last.Store(time.Now().UnixNano())
	return t, nil
}

// handleBlock stores one block. It runs on the session's read loop, so a
// slow disk pushes back on the sender through TCP.
func (s *Service) handleBlock(ctx context.Context, req *wire.Request) ([]byte, error) {
	recv := time.Now()
	if err := s.authorize(req); err != nil {
		return nil, err
	}
	h, data, err := parseBlock(req.Payload)
	if err != nil {
		return nil, err
	}
	t, err := s.transfer(req, h.ID)
	if err != nil {
		// A late duplicate of a block re-sent elsewhere after the
		// transfer ended; nothing to do.
		s.log.Debug("block for no running transfer", "err", err)
		return nil, nil
	}
	a := ack{ID: h.ID, File: h.File, Index: h.Index, Msg: h.Msg, RecvNano: recv.UnixNano()}
	a.Status, a.Err = t.store(h, data)
	a.WriteNano = time.Now().UnixNano()
	a.Total = t.stored.Load()
	if a.Status == ackFail || a.Status == ackFull {
		s.log.Warn("block not stored", "transfer", t.id, "file", h.File, "block", h.Index, "err", a.Err)
	}
	return nil, req.Session.Send(ctx, MsgAck, a.encode())
}

func (t *recvTransfer) store(h blockHeader, data []byte) (uint8, string) {
	f := t.files[int(h.File)]
	if f == nil {
		return ackFail, fmt.Sprintf("no file entry %d", h.File)
	}
	if int(h.Index) >= len(f.have) {
		return ackFail, fmt.Sprintf("block %d beyond the end of %s", h.Index, f.target)
	}
	n := blockLen(f.entry.Size, t.bs, int(h.Index))
	if int(h.Len) != n {
		return ackFail, fmt.Sprintf("block %d of %s is %d bytes, want %d", h.Index, f.target, h.Len, n)
	}
	var sum [32]byte
	if h.Flags&flagHole != 0 {
		sum = t.sum.zero(n)
	} else {
		sum = t.sum.sum(data)
	}
	if sum != h.Sum {
		return ackBadSum, fmt.Sprintf("checksum mismatch in block %d of %s", h.Index, f.target)
	}
	f.mu.Lock()
	if f.have[h.Index] || f.finished {
		f.mu.Unlock()
		return ackOK, "" // a duplicate (re-sent after a stall)
	}
	part := f.part
	f.mu.Unlock()
	if part == nil {
		return ackFail, "transfer closed"
	}
	if h.Flags&flagHole == 0 {
		if _, err := part.WriteAt(data, int64(h.Index)*int64(t.bs)); err != nil {
			if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
				return ackFull, fmt.Sprintf("writing %s: %v (partial data kept; free space and rerun with --resume)", f.target, err)
			}
			return ackFail, fmt.Sprintf("writing %s: %v", f.target, err)
		}
	}
	var rec [journalRec]byte
	binary.BigEndian.PutUint32(rec[:], h.Index)
	copy(rec[4:], sum[:])
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.have[h.Index] {
		return ackOK, ""
	}
	if f.journal == nil {
		return ackFail, "transfer closed"
	}
	if _, err := f.journal.Write(rec[:]); err != nil {
		if errors.Is(err, syscall.ENOSPC) {
			return ackFull, fmt.Sprintf("writing the journal of %s: %v", f.target, err)
		}
		return ackFail, fmt.Sprintf("writing the journal of %s: %v", f.target, err)
	}
	f.have[h.Index] = true
	f.sums[h.Index] = sum
	f.count++
	t.stored.Add(int64(n))
	return ackOK, ""
}

func (s *Service) handleCommit(ctx context.Context, req *wire.Request) ([]byte, error) {
	if err := s.authorize(req); err != nil {
		return nil, err
	}
	var cr commitReq
	if err := json.Unmarshal(req.Payload, &cr); err != nil {
		return nil, fmt.Errorf("bulk: decoding commit: %w", err)
	}
	t, err := s.transfer(req, cr.ID)
	if err != nil {
		return nil, err
	}
	f := t.files[cr.File]
	if f == nil {
		return nil, fmt.Errorf("bulk: commit of unknown file %d", cr.File)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.finished {
		return nil, nil
	}
	if f.count != len(f.have) {
		return nil, fmt.Errorf("bulk: %s: %d of %d blocks received", f.target, f.count, len(f.have))
	}
	if got := fileHash(f.entry.Size, t.bs, f.sums); got != cr.Hash {
		return nil, fmt.Errorf("bulk: %s: end-to-end hash mismatch (stored %x, source %x)", f.target, got[:8], cr.Hash[:8])
	}
	if uid, gid, ok := owner(f.entry); ok {
		if err := f.part.Chown(uid, gid); err != nil {
			return nil, fmt.Errorf("bulk: %s: setting owner: %w", f.target, err)
		}
	}
	if err := f.part.Chmod(fs.FileMode(f.entry.Mode & 0o777)); err != nil {
		return nil, fmt.Errorf("bulk: %s: setting mode: %w", f.target, err)
	}
	if err := f.part.Sync(); err != nil {
		return nil, fmt.Errorf("bulk: %s: syncing: %w", f.target, err)
	}
	f.part.Close()
	f.part = nil
	mt := time.Unix(0, f.entry.MTime)
	if err := s.root.Chtimes(f.partRel, mt, mt); err != nil {
		return nil, fmt.Errorf("bulk: %s: setting mtime: %w", f.target, err)
	}
	if fi, err := s.root.Lstat(f.target); err == nil && fi.IsDir() {
		return nil, fmt.Errorf("bulk: %s is a directory; not replacing it with a file", f.target)
	}
	if err := s.root.Rename(f.partRel, f.target); err != nil {
		return nil, fmt.Errorf("bulk: %s: %w", f.target, err)
	}
	// Setuid/setgid/sticky bits survive only when set after the rename's
	// ownership is final.
	if f.entry.Mode&0o7000 != 0 {
		_ = s.root.Chmod(f.target, fs.FileMode(f.entry.Mode&0o777)|modeExtra(f.entry.Mode))
	}
	syncDir(s.root, path.Dir(f.target))
	f.journal.Close()
	f.journal = nil
	_ = s.root.Remove(f.jrnlRel)
	f.finished = true
	return nil, nil
}

// owner returns the owner to give a copy of e: only a receiver running as
// root can, and only when the sender said who owns the source.
func owner(e Entry) (uid, gid int, ok bool) {
	if e.UID == nil || e.GID == nil || os.Geteuid() != 0 {
		return 0, 0, false
	}
	return int(*e.UID), int(*e.GID), true
}

// lchtimes sets the modification time of name under root without following
// it if it is a symlink (os.Root has no Lchtimes): the parent directory is
// opened through root, so the change cannot escape it.
func lchtimes(root *os.Root, name string, mt time.Time) error {
	dir, err := root.Open(path.Dir(name))
	if err != nil {
		return err
	}
	defer dir.Close()
	ts := []unix.Timespec{unix.NsecToTimespec(mt.UnixNano()), unix.NsecToTimespec(mt.UnixNano())}
	return unix.UtimesNanoAt(int(dir.Fd()), path.Base(name), ts, unix.AT_SYMLINK_NOFOLLOW)
}

func modeExtra(m uint32) fs.FileMode {
	var x fs.FileMode
	if m&0o4000 != 0 {
		x |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		x |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		x |= fs.ModeSticky
	}
	return x
}

func syncDir(r *os.Root, dir string) {
	if d, err := r.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}

func (s *Service) handleEnd(ctx context.Context, req *wire.Request) ([]byte, error) {
	if err := s.authorize(req); err != nil {
		return nil, err
	}
	var er endReq
	if err := json.Unmarshal(req.Payload, &er); err != nil {
		return nil, fmt.Errorf("bulk: decoding end: %w", err)
	}
	t, err := s.transfer(req, er.ID)
	if err != nil {
		return nil, err
	}
	var errs []error
	for i, e := range t.entries {
		if e.Type != TypeSymlink {
			continue
		}
		tmp := path.Join(path.Dir(t.targets[i]), partPrefix+path.Base(t.targets[i]))
		_ = s.root.Remove(tmp)
		if err := s.root.Symlink(e.Target, tmp); err != nil {
			errs = append(errs, fmt.Errorf("creating symlink %s: %w", t.targets[i], err))
			continue
		}
		if uid, gid, ok := owner(e); ok {
			if err := s.root.Lchown(tmp, uid, gid); err != nil {
				errs = append(errs, fmt.Errorf("setting owner of symlink %s: %w", t.targets[i], err))
			}
		}
		if err := lchtimes(s.root, tmp, time.Unix(0, e.MTime)); err != nil {
			errs = append(errs, fmt.Errorf("setting mtime of symlink %s: %w", t.targets[i], err))
		}
		if err := s.root.Rename(tmp, t.targets[i]); err != nil {
			errs = append(errs, fmt.Errorf("placing symlink %s: %w", t.targets[i], err))
		}
	}
	// Directories last and deepest first: writing into a directory changes
	// its mtime, and a read-only mode would stop the writes.
	var dirs []int
	for i, e := range t.entries {
		if e.Type == TypeDir {
			dirs = append(dirs, i)
		}
	}
	sort.Slice(dirs, func(a, b int) bool {
		return strings.Count(t.targets[dirs[a]], "/") > strings.Count(t.targets[dirs[b]], "/")
	})
	for _, i := range dirs {
		e := t.entries[i]
		if uid, gid, ok := owner(e); ok {
			if err := s.root.Lchown(t.targets[i], uid, gid); err != nil {
				errs = append(errs, fmt.Errorf("setting owner of %s: %w", t.targets[i], err))
			}
		}
		if err := s.root.Chmod(t.targets[i], fs.FileMode(e.Mode&0o777)|modeExtra(e.Mode)); err != nil {
			errs = append(errs, fmt.Errorf("setting mode of %s: %w", t.targets[i], err))
		}
		mt := time.Unix(0, e.MTime)
		if err := s.root.Chtimes(t.targets[i], mt, mt); err != nil {
			errs = append(errs, fmt.Errorf("setting mtime of %s: %w", t.targets[i], err))
		}
	}
	s.mu.Lock()
	delete(s.transfers, t.id)
	s.mu.Unlock()
	t.close()
	s.log.Info("transfer ends", "id", t.id, "peer", t.owner, "stored", t.stored.Load())
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("bulk: finishing %s: %w", t.dst, err)
	}
	return nil, nil
}
