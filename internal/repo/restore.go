package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/holdfast/holdfast/internal/repo/backend"
	"golang.org/x/sys/unix"
)

// Restore reads whole packs when the needed blobs are close together:
// blobs closer than restoreGap are fetched with one read.
const restoreGap = 1 << 20

// restoreMaxRead bounds one read from a pack, which bounds memory.
const restoreMaxRead = 4 << 20

// ErrRestoreIncomplete is returned (wrapped) when some files could not be
// restored; all others were.
var ErrRestoreIncomplete = errors.New("restore incomplete")

// RestoreOptions configure a restore.
type RestoreOptions struct {
	// Includes limits the restore to paths (relative to the snapshot root,
	// slash-separated) matching one of these globs or lying under them.
	Includes []string
	// Progress, if set, is called about four times a second.
	Progress func(Progress)
}

// RestoreSummary describes a finished restore.
type RestoreSummary struct {
	Files    int64    `json:"files"`
	Dirs     int64    `json:"dirs"`
	Bytes    int64    `json:"bytes"`
	Seconds  float64  `json:"seconds"`
	Errors   []string `json:"errors,omitempty"`
	Damaged  []string `json:"damaged_files,omitempty"`
	Target   string   `json:"target"`
	Snapshot ID       `json:"snapshot"`
}

type restoreFile struct {
	path      string
	node      *Node
	remaining atomic.Int64
	failed    atomic.Bool
	mu        sync.Mutex
	created   bool
}

// open opens the file for writing, creating it (at its final size, so
// unwritten ranges stay holes) on first use. whole says the caller is
// about to write the whole file in one piece, which sets its size anyway.
//
// It uses raw descriptors: os.File's poller registration costs three
// system calls per open, which matters when restoring many small files.
// A file written by a single blob is created with its final permissions
// (when the umask keeps them), so it needs no chmod afterwards.
func (f *restoreFile) open(umask uint32, whole bool) (fd int, finalMode bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.created {
		fd, err = unix.Open(f.path, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		return fd, false, err
	}
	mode := uint32(0o600)
	perm := f.node.Mode & 0o777
	if len(f.node.Content) <= 1 && f.node.Mode&^0o777 == 0 && perm&^umask == perm {
		mode, finalMode = perm, true
	}
	fd, err = unix.Open(f.path, unix.O_CREAT|unix.O_WRONLY|unix.O_TRUNC|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
	if err != nil {
		return -1, false, err
	}
	if f.node.Size > 0 && !whole {
		if err := unix.Ftruncate(fd, f.node.Size); err != nil {
			unix.Close(fd)
			return -1, false, err
		}
	}
	f.created = true
	return fd, finalMode, nil
}

// pwriteAll writes b at off.
func pwriteAll(fd int, b []byte, off int64) error {
	for len(b) > 0 {
		n, err := unix.Pwrite(fd, b, off)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return err
		}
		b, off = b[n:], off+int64(n)
	}
	return nil
}

type blobTarget struct {
	file   *restoreFile
	offset int64
}

type packWant struct {
	loc     BlobLocation
	targets []blobTarget
}

type restorer struct {
	r      *Repository
	target string
	opts   RestoreOptions
	packs  map[ID]map[ID]*packWant
	dirs   []struct {
		path string
		node *Node
	}
	links   [][2]string // hard links: [existing, new]
	inodes  map[[2]uint64]string
	files   []*restoreFile
	errMu   sync.Mutex
	errs    []string
	damaged []string
	total   int64
	written atomic.Int64
	nfiles  atomic.Int64
	asRoot  bool
	euid    int
	egid    int
	umask   uint32
}

func (rs *restorer) fail(format string, args ...any) {
	rs.errMu.Lock()
	rs.errs = append(rs.errs, fmt.Sprintf(format, args...))
	rs.errMu.Unlock()
}

// includeState says whether a path is wanted (all of it) or lies on the way
// to something wanted.
func includeState(includes []string, p string) (want, onPath bool) {
	if len(includes) == 0 {
		return true, false
	}
	for _, inc := range includes {
		inc = strings.Trim(inc, "/")
		if ok, _ := path.Match(inc, p); ok || inc == p || strings.HasPrefix(p, inc+"/") {
			return true, false
		}
		// p lies on the way to a match if each of its components
		// matches the pattern's component at the same depth.
		ip, pp := strings.Split(inc, "/"), strings.Split(p, "/")
		if len(pp) < len(ip) {
			on := true
			for i := range pp {
				if ok, _ := path.Match(ip[i], pp[i]); !ok {
					on = false
					break
				}
			}
			onPath = onPath || on
		}
		// A glob matching a prefix of p selects p's ancestor.
		for i := 1; i < len(pp); i++ {
			if ok, _ := path.Match(inc, strings.Join(pp[:i], "/")); ok {
				return true, false
			}
		}
	}
	return false, onPath
}

// Restore writes snapshot snapID (or the parts selected by opts.Includes)
// below target.
func (r *Repository) Restore(ctx context.Context, snapID ID, target string, opts RestoreOptions) (*RestoreSummary, error) {
	start := time.Now()
	sn, err := r.LoadSnapshot(ctx, snapID)
	if err != nil {
		return nil, err
	}
	for _, p := range opts.Includes {
		if _, err := path.Match(p, ""); err != nil {
			return nil, fmt.Errorf("restore: bad include pattern %q: %w", p, err)
		}
	}
	if err := os.MkdirAll(target, 0o700); err != nil {
		return nil, fmt.Errorf("restore: creating target: %w", err)
	}
	rs := &restorer{r: r, target: target, opts: opts, packs: map[ID]map[ID]*packWant{}, inodes: map[[2]uint64]string{}, asRoot: os.Geteuid() == 0, euid: os.Geteuid(), egid: os.Getegid()}
	rs.umask = uint32(unix.Umask(0))
	unix.Umask(int(rs.umask))
	if err := rs.plan(ctx, sn.Tree, "", isEmptyDir(target)); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	stop := rs.startProgress()
	rs.fetch(ctx)
	stop()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for _, f := range rs.files {
		if len(f.node.Content) == 0 {
			fd, finalMode, err := f.open(rs.umask, false)
			if err != nil {
				rs.fail("%s: %v", f.path, err)
				continue
			}
			rs.setFileMeta(fd, f, finalMode)
			unix.Close(fd)
			rs.nfiles.Add(1)
		}
	}
	for _, l := range rs.links {
		os.Remove(l[1])
		if err := os.Link(l[0], l[1]); err != nil {
			rs.fail("%s: hard link: %v", l[1], err)
		}
	}
	sort.SliceStable(rs.dirs, func(i, j int) bool { return len(rs.dirs[i].path) > len(rs.dirs[j].path) })
	for _, d := range rs.dirs {
		rs.setMeta(d.path, d.node)
	}
	sum := &RestoreSummary{Files: rs.nfiles.Load(), Dirs: int64(len(rs.dirs)), Bytes: rs.written.Load(),
		Seconds: time.Since(start).Seconds(), Errors: rs.errs, Target: target, Snapshot: snapID}
	for _, f := range rs.files {
		if f.failed.Load() {
			sum.Damaged = append(sum.Damaged, strings.TrimPrefix(f.path, target+"/"))
		}
	}
	r.log.Info("restore finished", "snapshot", snapID.Short(), "files", sum.Files, "bytes", sum.Bytes, "seconds", sum.Seconds)
	if len(rs.errs) > 0 {
		return sum, fmt.Errorf("%w: %d errors, first: %s", ErrRestoreIncomplete, len(rs.errs), rs.errs[0])
	}
	return sum, nil
}

// isEmptyDir reports whether dir has no entries.
func isEmptyDir(dir string) bool {
	f, err := os.Open(dir)
	if err != nil {
		return false
	}
	defer f.Close()
	names, _ := f.Readdirnames(1)
	return len(names) == 0
}

// plan creates directories, empty files, links and special files, and
// records which blobs go where.
//
// fresh says the directory for rel was just created (so it is empty and no
// existing entries need replacing).
func (rs *restorer) plan(ctx context.Context, tree ID, rel string, fresh bool) error {
	t, err := rs.r.LoadTree(ctx, tree)
	if err != nil {
		return err
	}
	for _, n := range t.Nodes {
		p := n.Name
		if rel != "" {
			p = rel + "/" + n.Name
		}
		want, onPath := includeState(rs.opts.Includes, p)
		if !want && !(onPath && n.Type == NodeDir) {
			continue
		}
		dst := filepath.Join(rs.target, filepath.FromSlash(p))
		switch n.Type {
		case NodeDir:
			merr := os.Mkdir(dst, 0o700)
			if errors.Is(merr, os.ErrExist) {
				// Never restore through a symlink (or into a file) that
				// already sits where a directory belongs.
				if fi, err := os.Lstat(dst); err == nil && !fi.IsDir() {
					os.Remove(dst)
					merr = os.Mkdir(dst, 0o700)
				}
			}
			if merr != nil && !errors.Is(merr, os.ErrExist) {
				rs.fail("%s: %v", dst, merr)
				continue
			}
			if want {
				rs.dirs = append(rs.dirs, struct {
					path string
					node *Node
				}{dst, n})
			}
			var sub []string
			if !want {
				sub = rs.opts.Includes
			}
			saved := rs.opts.Includes
			rs.opts.Includes = sub
			err := rs.plan(ctx, *n.Subtree, p, merr == nil)
			rs.opts.Includes = saved
			if err != nil {
				rs.fail("%s: %v", dst, err)
			}
		case NodeFile:
			if n.Links > 1 {
				key := [2]uint64{n.Device, n.Inode}
				if first, ok := rs.inodes[key]; ok {
					rs.links = append(rs.links, [2]string{first, dst})
					rs.nfiles.Add(1)
					continue
				}
				rs.inodes[key] = dst
			}
			if !fresh {
				if fi, err := os.Lstat(dst); err == nil && (!fi.Mode().IsRegular() || n.Links > 1) {
					os.Remove(dst)
				}
			}
			rf := &restoreFile{path: dst, node: n}
			rf.remaining.Store(int64(len(n.Content)))
			rs.files = append(rs.files, rf)
			var off int64
			for _, id := range n.Content {
				loc, ok := rs.r.idx.lookup(id)
				if !ok {
					rs.fail("%s: blob %s not in index", dst, id.Short())
					rf.failed.Store(true)
					rf.remaining.Add(-1)
					continue
				}
				pm := rs.packs[loc.Pack]
				if pm == nil {
					pm = map[ID]*packWant{}
					rs.packs[loc.Pack] = pm
				}
				pw := pm[id]
				if pw == nil {
					pw = &packWant{loc: loc}
					pm[id] = pw
				}
				pw.targets = append(pw.targets, blobTarget{file: rf, offset: off})
				off += int64(loc.RawLen)
				rs.total += int64(loc.RawLen)
			}
		case NodeSymlink:
			os.Remove(dst)
			if err := os.Symlink(n.LinkTarget, dst); err != nil {
				rs.fail("%s: %v", dst, err)
				continue
			}
			rs.setMeta(dst, n)
			rs.nfiles.Add(1)
		case NodeFifo:
			os.Remove(dst)
			if err := unix.Mkfifo(dst, n.Mode&07777); err != nil {
				rs.fail("%s: %v", dst, err)
				continue
			}
			rs.setMeta(dst, n)
			rs.nfiles.Add(1)
		case NodeDev, NodeCharDev:
			if !rs.asRoot {
				rs.fail("%s: device nodes need root", dst)
				continue
			}
			mode := uint32(unix.S_IFBLK)
			if n.Type == NodeCharDev {
				mode = unix.S_IFCHR
			}
			os.Remove(dst)
			if err := unix.Mknod(dst, mode|n.Mode&07777, int(n.Rdev)); err != nil {
				rs.fail("%s: %v", dst, err)
				continue
			}
			rs.setMeta(dst, n)
			rs.nfiles.Add(1)
		case NodeSocket:
			// Sockets cannot be restored meaningfully; skip them silently.
		}
	}
	return nil
}

func (rs *restorer) startProgress() func() {
	if rs.opts.Progress == nil {
		return func() {}
	}
	return reportEvery(progressInterval, func() {
		rs.opts.Progress(Progress{Files: rs.nfiles.Load(), TotalFiles: int64(len(rs.files)), Bytes: rs.written.Load(), TotalBytes: rs.total})
	})
}

// packRange is one read from a pack: blobs close together, fetched with
// one request. Ranges, not whole packs, are the unit of work, so that a
// few packs still keep every worker busy.
type packRange struct {
	pack       ID
	start, end int64
	blobs      []*packWant
}

// fetch reads the needed blobs range by range and writes them out.
func (rs *restorer) fetch(ctx context.Context) {
	ids := make(IDs, 0, len(rs.packs))
	for id := range rs.packs {
		ids = append(ids, id)
	}
	sort.Sort(ids)
	work := make(chan packRange)
	var wg sync.WaitGroup
	for i := 0; i < 2*runtime.GOMAXPROCS(0); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for pr := range work {
				rs.fetchRange(ctx, pr)
			}
		}()
	}
	for _, id := range ids {
		for _, pr := range packRanges(id, rs.packs[id]) {
			if ctx.Err() != nil {
				break
			}
			work <- pr
		}
	}
	close(work)
	wg.Wait()
}

// packRanges groups the wanted blobs of a pack into reads: blobs less than
// restoreGap apart share a read of at most restoreMaxRead bytes.
func packRanges(pack ID, want map[ID]*packWant) []packRange {
	list := make([]*packWant, 0, len(want))
	for _, w := range want {
		list = append(list, w)
	}
	sort.Slice(list, func(i, j int) bool {
		if list[i].loc.Offset != list[j].loc.Offset {
			return list[i].loc.Offset < list[j].loc.Offset
		}
		return list[i].loc.GroupOff < list[j].loc.GroupOff
	})
	var out []packRange
	for i := 0; i < len(list); {
		j := i + 1
		start := int64(list[i].loc.Offset)
		end := start + int64(list[i].loc.Length)
		for j < len(list) && int64(list[j].loc.Offset)-end < restoreGap &&
			int64(list[j].loc.Offset)+int64(list[j].loc.Length)-start <= restoreMaxRead {
			end = int64(list[j].loc.Offset) + int64(list[j].loc.Length)
			j++
		}
		out = append(out, packRange{pack: pack, start: start, end: end, blobs: list[i:j]})
		i = j
	}
	return out
}

func (rs *restorer) fetchRange(ctx context.Context, pr packRange) {
	h := backend.Handle{Type: backend.PackFile, Name: pr.pack.String()}
	buf, err := rs.r.be.Load(ctx, h, pr.start, pr.end-pr.start)
	// The members of a group are next to each other in pr.blobs (same
	// offset): the cache decodes their group once.
	var cache objectCache
	defer cache.release()
	for _, w := range pr.blobs {
		if err != nil {
			rs.blobFailed(w, err)
			continue
		}
		o := int64(w.loc.Offset) - pr.start
		plain, derr := rs.r.openBlobAt(&cache, w.loc, buf[o:o+int64(w.loc.Length)])
		if derr != nil {
			rs.blobFailed(w, derr)
			continue
		}
		rs.writeBlob(w, plain)
	}
}

func (rs *restorer) blobFailed(w *packWant, err error) {
	for _, t := range w.targets {
		rs.fail("%s: %v", t.file.path, err)
		t.file.failed.Store(true)
		if t.file.remaining.Add(-1) == 0 {
			rs.finishFile(t.file)
		}
	}
}

var zeroBlock = make([]byte, 64<<10)

func isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroBlock))
		if !bytes.Equal(b[:n], zeroBlock[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

func (rs *restorer) writeBlob(w *packWant, plain []byte) {
	zero := isZero(plain)
	for _, t := range w.targets {
		// All-zero chunks are not written: they stay holes, so sparse
		// files stay sparse.
		whole := !zero && t.offset == 0 && int64(len(plain)) == t.file.node.Size
		fd, finalMode, err := t.file.open(rs.umask, whole)
		if err == nil && !zero {
			err = pwriteAll(fd, plain, t.offset)
		}
		if err != nil {
			rs.fail("%s: %v", t.file.path, err)
			t.file.failed.Store(true)
		}
		rs.written.Add(int64(len(plain)))
		last := t.file.remaining.Add(-1) == 0
		if fd >= 0 {
			if last && err == nil {
				rs.setFileMeta(fd, t.file, finalMode)
			}
			if cerr := unix.Close(fd); cerr != nil && err == nil {
				rs.fail("%s: %v", t.file.path, cerr)
				t.file.failed.Store(true)
			}
			if last {
				rs.nfiles.Add(1)
			}
		} else if last {
			rs.finishFile(t.file)
		}
	}
}

func (rs *restorer) finishFile(f *restoreFile) {
	rs.setMeta(f.path, f.node)
	rs.nfiles.Add(1)
}

// setFileMeta applies a regular file's metadata through its open
// descriptor. New files already belong to the restoring user and group, so
// ownership is only changed when it differs.
func (rs *restorer) setFileMeta(fd int, rf *restoreFile, finalMode bool) {
	n := rf.node
	if rs.asRoot && (int(n.UID) != rs.euid || int(n.GID) != rs.egid) {
		if err := unix.Fchown(fd, int(n.UID), int(n.GID)); err != nil {
			rs.fail("%s: chown: %v", rf.path, err)
		}
		finalMode = false // chown clears setuid/setgid; set the mode after it
	}
	if !finalMode {
		if err := unix.Fchmod(fd, n.Mode&07777); err != nil {
			rs.fail("%s: chmod: %v", rf.path, err)
		}
	}
	for k, v := range n.Xattrs {
		if err := unix.Fsetxattr(fd, k, v, 0); err != nil && !errors.Is(err, unix.ENOTSUP) && !errors.Is(err, unix.EPERM) {
			rs.fail("%s: xattr %s: %v", rf.path, k, err)
		}
	}
	ts := []unix.Timespec{unix.NsecToTimespec(n.ModTime.UnixNano()), unix.NsecToTimespec(n.ModTime.UnixNano())}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, rf.path, ts, 0); err != nil {
		rs.fail("%s: times: %v", rf.path, err)
	}
}

// setMeta applies ownership, mode, extended attributes and times.
func (rs *restorer) setMeta(p string, n *Node) {
	if rs.asRoot {
		if err := os.Lchown(p, int(n.UID), int(n.GID)); err != nil {
			rs.fail("%s: chown: %v", p, err)
		}
	}
	if n.Type != NodeSymlink {
		if err := unix.Chmod(p, n.Mode&07777); err != nil {
			rs.fail("%s: chmod: %v", p, err)
		}
	}
	for k, v := range n.Xattrs {
		if err := unix.Lsetxattr(p, k, v, 0); err != nil && !errors.Is(err, unix.ENOTSUP) && !errors.Is(err, unix.EPERM) {
			rs.fail("%s: xattr %s: %v", p, k, err)
		}
	}
	ts := []unix.Timespec{unix.NsecToTimespec(n.ModTime.UnixNano()), unix.NsecToTimespec(n.ModTime.UnixNano())}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		rs.fail("%s: times: %v", p, err)
	}
}
