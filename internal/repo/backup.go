package repo

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// ErrPartial is returned (wrapped) by Backup when the snapshot was saved but
// some files could not be read.
var ErrPartial = errors.New("backup incomplete: some files could not be read")

// BackupOptions configure a backup.
type BackupOptions struct {
	Tags     []string
	Excludes []string // glob patterns matched against the base name and the full path
	Hostname string   // default: os.Hostname()
	// Parent is the snapshot to compare with; nil picks the latest snapshot
	// of the same host and paths.
	Parent *ID
	// NoParent reads every file even if a parent snapshot exists.
	NoParent bool
	Time     time.Time // default: now
	// Progress, if set, is called about four times a second.
	Progress func(Progress)
}

// Progress reports a running backup, restore, check, forget or prune.
type Progress struct {
	// Phase names the current step of a command with several (prune).
	Phase      string `json:"phase,omitempty"`
	Files      int64  `json:"files"`
	Bytes      int64  `json:"bytes"`
	TotalFiles int64  `json:"total_files,omitempty"`
	TotalBytes int64  `json:"total_bytes,omitempty"`
	Stored     int64  `json:"stored"`
}

// Summary describes a finished backup.
type Summary struct {
	Start           time.Time `json:"start"`
	End             time.Time `json:"end"`
	FilesNew        int64     `json:"files_new"`
	FilesChanged    int64     `json:"files_changed"`
	FilesUnmodified int64     `json:"files_unmodified"`
	Dirs            int64     `json:"dirs"`
	TotalFiles      int64     `json:"total_files"`
	TotalBytes      int64     `json:"total_bytes"`
	BytesRead       int64     `json:"bytes_read"`
	DataBlobs       int64     `json:"data_blobs_added"`
	TreeBlobs       int64     `json:"tree_blobs_added"`
	DataAdded       int64     `json:"data_added"`
	PacksStored     int64     `json:"packs_stored"`
	BytesStored     int64     `json:"bytes_stored"`
	Warnings        []string  `json:"warnings,omitempty"`
}

// dirState is a directory whose entries are being saved. pending counts
// the work still out for it: its own scan, each batch of files handed to
// the file workers and each subdirectory. Whoever brings it to zero saves
// the directory's tree and reports to the parent (release), so no
// goroutine waits for a directory's entries one by one: on a tree of many
// small files that cost a goroutine wake-up per file.
type dirState struct {
	node     *Node // nil for the snapshot's root
	prev     *Node // the directory in the parent snapshot
	prevTree *Tree
	// nodes has one slot per entry, in the order read (by name); nil for
	// an entry left out (excluded or unreadable).
	nodes   []*Node
	pending atomic.Int64
	parent  *dirState
	done    chan struct{} // the root's: closed when every entry is saved
}

// fileItem is a file to read, at slot of its directory's nodes.
type fileItem struct {
	slot int
	path string
	prev bool // a parent version existed
}

// fileJob is a batch of files of one directory, read by one file worker.
type fileJob struct {
	d     *dirState
	items []fileItem
}

// fileBatch collects a directory's files until a batch is full.
type fileBatch struct {
	items []fileItem
	bytes int64
}

// A batch of files handed to a file worker holds at most batchFiles files
// or about batchBytes bytes (a file at or above batchBytes goes alone).
const (
	batchFiles = 32
	batchBytes = 1 << 20
)

type blobJob struct {
	id   ID
	data []byte
	buf  *[]byte
}

type archiver struct {
	r       *Repository
	ctx     context.Context
	opts    BackupOptions
	pw      *packWriter
	names   *idNames
	files   chan fileJob
	blobs   chan blobJob
	slots   chan struct{} // one per chunk handed to the blob workers
	walkers chan struct{} // one per directory being read concurrently
	bufs    sync.Pool     // read buffers, 2×max chunk
	sbufs   sync.Pool     // read buffers for small files

	filesDone, bytesRead, filesNew, filesChanged, filesUnmod, dirs atomic.Int64
	totalBytes, dataBlobs, treeBlobs, dataAdded                    atomic.Int64

	warnMu   sync.Mutex
	warnings []string
	failMu   sync.Mutex
	fail     error
}

func (a *archiver) warn(path string, err error) {
	a.warnMu.Lock()
	a.warnings = append(a.warnings, fmt.Sprintf("%s: %v", path, err))
	a.warnMu.Unlock()
	a.r.log.Warn("skipping unreadable entry", "path", path, "err", err)
}

func (a *archiver) setFail(err error) {
	a.failMu.Lock()
	if a.fail == nil {
		a.fail = err
	}
	a.failMu.Unlock()
}

func (a *archiver) failed() error {
	a.failMu.Lock()
	defer a.failMu.Unlock()
	return a.fail
}

// dirWalkers is how many directories are read concurrently.
const dirWalkers = 4

// smallFile: files below this size are read into a buffer of this size
// and stored by the file worker itself.
const smallFile = 1 << 20

// testHookBackupBeforeSnapshot runs after all data is stored and before the
// snapshot is written (tests use it to hold a backup in flight).
var testHookBackupBeforeSnapshot func()

// testHookBeforeRead runs in a file worker before it opens path (tests use
// it to make files vanish or to cancel a backup midway).
var testHookBeforeRead func(path string)

// Backup saves paths as a new snapshot. It holds a shared lock for its
// duration. If some entries could not be read the snapshot is still saved
// and the error wraps ErrPartial.
func (r *Repository) Backup(ctx context.Context, paths []string, opts BackupOptions) (*Snapshot, *Summary, error) {
	if len(paths) == 0 {
		return nil, nil, errors.New("backup: no paths given")
	}
	var sn *Snapshot
	var sum *Summary
	err := r.withLock(ctx, false, func(ctx context.Context) error {
		var err error
		sn, sum, err = r.backup(ctx, paths, opts)
		return err
	})
	return sn, sum, err
}

func (r *Repository) backup(ctx context.Context, paths []string, opts BackupOptions) (*Snapshot, *Summary, error) {
	start := time.Now()
	if opts.Hostname == "" {
		opts.Hostname, _ = os.Hostname()
	}
	if opts.Time.IsZero() {
		opts.Time = start
	}
	for _, p := range opts.Excludes {
		if _, err := filepath.Match(p, ""); err != nil {
			return nil, nil, fmt.Errorf("backup: bad exclude pattern %q: %w", p, err)
		}
	}
	abs := make([]string, 0, len(paths))
	for _, p := range paths {
		ap, err := filepath.Abs(p)
		if err != nil {
			return nil, nil, fmt.Errorf("backup: %w", err)
		}
		abs = append(abs, filepath.Clean(ap))
	}
	sort.Strings(abs)
	if err := r.refuseOwnRepository(abs, opts); err != nil {
		return nil, nil, err
	}

	sn := &Snapshot{Time: opts.Time.UTC(), Paths: abs, Hostname: opts.Hostname, Tags: opts.Tags, Excludes: opts.Excludes}
	if u, err := user.Current(); err == nil {
		sn.Username = u.Username
	}
	var parentRoot *Tree
	if !opts.NoParent {
		pid := opts.Parent
		if pid == nil {
			pid, _ = r.findParent(ctx, opts.Hostname, abs)
		}
		if pid != nil {
			psn, err := r.LoadSnapshot(ctx, *pid)
			if err != nil {
				return nil, nil, fmt.Errorf("backup: parent: %w", err)
			}
			if parentRoot, err = r.LoadTree(ctx, psn.Tree); err != nil {
				r.log.Warn("parent snapshot tree unreadable, reading all files", "err", err)
				parentRoot = nil
			}
			sn.Parent = pid
		}
	}

	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	a := &archiver{r: r, ctx: actx, opts: opts, names: newIDNames(),
		files: make(chan fileJob, 64), blobs: make(chan blobJob, runtime.GOMAXPROCS(0)),
		slots: make(chan struct{}, runtime.GOMAXPROCS(0)), walkers: make(chan struct{}, dirWalkers)}
	a.pw = r.newPackWriter(actx)
	bufSize := r.cfg.Chunker.Max + 1<<20
	a.bufs.New = func() any { b := make([]byte, bufSize); return &b }
	a.sbufs.New = func() any { b := make([]byte, smallFile); return &b }

	ncpu := runtime.GOMAXPROCS(0)
	var fileWG, blobWG sync.WaitGroup
	for i := 0; i < ncpu+2; i++ {
		fileWG.Add(1)
		go func() { defer fileWG.Done(); a.fileWorker() }()
	}
	for i := 0; i < ncpu; i++ {
		blobWG.Add(1)
		go func() { defer blobWG.Done(); a.blobWorker() }()
	}
	stopProgress := a.startProgress()

	// Build the root tree: one entry per path, named by its base name.
	rootDir := &dirState{done: make(chan struct{}), nodes: make([]*Node, len(abs))}
	rootDir.pending.Store(1)
	var batch fileBatch
	used := map[string]int{}
	for i, p := range abs {
		fi, err := os.Lstat(p)
		if err != nil {
			a.warn(p, err)
			continue
		}
		name := filepath.Base(p)
		if name == "/" || name == "." {
			name = "root"
		}
		if c := used[name]; c > 0 {
			name = fmt.Sprintf("%s-%d", name, c)
		}
		used[filepath.Base(p)]++
		a.addEntry(rootDir, i, p, name, fi, parentRoot.Find(name), &batch)
	}
	a.flush(rootDir, &batch)
	a.release(rootDir)
	<-rootDir.done
	root := &Tree{Nodes: present(rootDir.nodes)}
	close(a.files)
	fileWG.Wait()
	close(a.blobs)
	blobWG.Wait()
	stopProgress()
	if err := errors.Join(a.failed(), ctx.Err()); err != nil {
		a.pw.abort()
		return nil, nil, fmt.Errorf("backup: %w", err)
	}
	if len(root.Nodes) == 0 {
		a.pw.abort()
		return nil, nil, fmt.Errorf("backup: nothing could be read: %s", strings.Join(a.warnings, "; "))
	}
	rootID, err := a.saveTree(root)
	if err != nil {
		a.pw.abort()
		return nil, nil, fmt.Errorf("backup: %w", err)
	}
	if err := a.pw.finish(); err != nil {
		return nil, nil, fmt.Errorf("backup: %w", err)
	}
	if testHookBackupBeforeSnapshot != nil {
		testHookBackupBeforeSnapshot()
	}
	sn.Tree = rootID
	sum := &Summary{Start: start, FilesNew: a.filesNew.Load(), FilesChanged: a.filesChanged.Load(),
		FilesUnmodified: a.filesUnmod.Load(), Dirs: a.dirs.Load(), TotalFiles: a.filesDone.Load(),
		TotalBytes: a.totalBytes.Load(), BytesRead: a.bytesRead.Load(), DataBlobs: a.dataBlobs.Load(),
		TreeBlobs: a.treeBlobs.Load(), DataAdded: a.dataAdded.Load(),
		PacksStored: int64(a.pw.packsStored), BytesStored: a.pw.bytesStored, Warnings: a.warnings}
	sum.End = time.Now()
	sn.Summary = sum
	if err := r.saveSnapshot(ctx, sn); err != nil {
		return nil, nil, err
	}
	r.log.Info("snapshot saved", "id", sn.ID.Short(), "files", sum.TotalFiles, "added", sum.DataAdded, "stored", sum.BytesStored, "duration", sum.End.Sub(start))
	if len(a.warnings) > 0 {
		return sn, sum, fmt.Errorf("snapshot %s saved, %d entries skipped: %w", sn.ID.Short(), len(a.warnings), ErrPartial)
	}
	return sn, sum, nil
}

// ErrBackupContainsRepository is returned (wrapped) by Backup when a path
// to back up holds the repository itself.
var ErrBackupContainsRepository = errors.New("backup would include the repository itself")

// refuseOwnRepository fails if the repository is a local directory lying
// in (or at) one of paths and no exclude pattern leaves it out: such a
// backup would read the packs it is writing.
func (r *Repository) refuseOwnRepository(paths []string, opts BackupOptions) error {
	d, ok := r.be.(interface{ Dir() string })
	if !ok {
		return nil
	}
	repoDir, err := filepath.Abs(d.Dir())
	if err != nil {
		return nil
	}
	if real, err := filepath.EvalSymlinks(repoDir); err == nil {
		repoDir = real
	}
	a := &archiver{opts: opts}
	for _, p := range paths {
		rp := p
		if real, err := filepath.EvalSymlinks(p); err == nil {
			rp = real
		}
		rel, err := filepath.Rel(rp, repoDir)
		if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
			continue
		}
		// Excluded if the repository or a directory between it and p
		// matches an exclude pattern (as the walk would see them).
		excluded := false
		for q := repoDir; q != rp && len(q) > len(rp); q = filepath.Dir(q) {
			if a.excluded(filepath.Join(p, mustRel(rp, q)), filepath.Base(q)) {
				excluded = true
				break
			}
		}
		if !excluded {
			if rel == "." {
				return fmt.Errorf("backup: %q is the repository: %w", p, ErrBackupContainsRepository)
			}
			return fmt.Errorf("backup: %q holds the repository %q (exclude it with --exclude %q): %w", p, d.Dir(), filepath.Join(p, rel), ErrBackupContainsRepository)
		}
	}
	return nil
}

func mustRel(base, target string) string {
	rel, err := filepath.Rel(base, target)
	if err != nil {
		return target
	}
	return rel
}

// findParent returns the latest snapshot of host with the same paths.
func (r *Repository) findParent(ctx context.Context, host string, paths []string) (*ID, error) {
	snaps, err := r.Snapshots(ctx)
	if err != nil {
		return nil, err
	}
	want := strings.Join(paths, "\x00")
	for i := len(snaps) - 1; i >= 0; i-- {
		s := snaps[i]
		p := append([]string(nil), s.Paths...)
		sort.Strings(p)
		if s.Hostname == host && strings.Join(p, "\x00") == want {
			id := s.ID
			return &id, nil
		}
	}
	return nil, nil
}

func (a *archiver) startProgress() func() {
	if a.opts.Progress == nil {
		return func() {}
	}
	return reportEvery(progressInterval, func() {
		a.pw.statMu.Lock()
		stored := a.pw.bytesStored
		a.pw.statMu.Unlock()
		a.opts.Progress(Progress{Files: a.filesDone.Load(), Bytes: a.bytesRead.Load(), Stored: stored})
	})
}

// progressInterval is how often backup and restore report progress.
const progressInterval = 250 * time.Millisecond

// reportEvery calls report every interval until the returned stop function
// is called, which reports once more and waits for the loop to end.
func reportEvery(interval time.Duration, report func()) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				report()
			case <-quit:
				report()
				return
			}
		}
	}()
	return func() { close(quit); <-done }
}

func (a *archiver) excluded(path, name string) bool {
	for _, p := range a.opts.Excludes {
		if ok, _ := filepath.Match(p, name); ok {
			return true
		}
		if ok, _ := filepath.Match(p, path); ok {
			return true
		}
		if strings.HasSuffix(p, "/") || !strings.ContainsAny(p, "*?[") {
			if path == strings.TrimSuffix(p, "/") || strings.HasPrefix(path, strings.TrimSuffix(p, "/")+"/") {
				return true
			}
		}
	}
	return false
}

// unchanged reports whether a file's parent version can be reused.
func (a *archiver) unchanged(prev, n *Node) bool {
	if prev == nil || prev.Type != NodeFile || prev.Size != n.Size || !prev.ModTime.Equal(n.ModTime) ||
		!prev.ChangeTime.Equal(n.ChangeTime) || prev.Inode != n.Inode {
		return false
	}
	for _, id := range prev.Content {
		if !a.r.idx.has(id) {
			return false
		}
	}
	return true
}

// addEntry saves the entry at path, slot of directory d's entries, named
// name in d's tree. prev is the entry's node in the parent snapshot. A
// file to read joins batch (sent to the file workers when full); a
// directory is scanned by a walker goroutine if one is free, else inline.
func (a *archiver) addEntry(d *dirState, slot int, path, name string, fi os.FileInfo, prev *Node, batch *fileBatch) {
	n, err := nodeFromInfo(path, fi, a.names)
	if err != nil {
		a.warn(path, err)
		return
	}
	n.Name = name
	d.nodes[slot] = n
	switch n.Type {
	case NodeFile:
		a.totalBytes.Add(n.Size)
		if a.unchanged(prev, n) {
			n.Content = prev.Content
			a.filesUnmod.Add(1)
			a.filesDone.Add(1)
			return
		}
		batch.items = append(batch.items, fileItem{slot: slot, path: path, prev: prev != nil})
		batch.bytes += n.Size
		if len(batch.items) >= batchFiles || batch.bytes >= batchBytes {
			a.flush(d, batch)
		}
	case NodeDir:
		a.dirs.Add(1)
		sub := &dirState{node: n, prev: prev, parent: d}
		sub.pending.Store(1)
		d.pending.Add(1)
		select {
		case a.walkers <- struct{}{}:
			go func() {
				a.scanDir(path, sub)
				<-a.walkers
			}()
		default:
			// Hand on what this directory has collected before
			// descending, so the workers need not wait for the subtree.
			a.flush(d, batch)
			a.scanDir(path, sub)
		}
	}
}

// flush hands d's collected files to the file workers as one job.
func (a *archiver) flush(d *dirState, batch *fileBatch) {
	if len(batch.items) == 0 {
		return
	}
	job := fileJob{d: d, items: batch.items}
	*batch = fileBatch{}
	d.pending.Add(1)
	select {
	case a.files <- job:
	case <-a.ctx.Done():
		a.setFail(a.ctx.Err())
		a.release(d)
	}
}

// release drops one unit of d's outstanding work; the last one completes
// d: its tree is saved (unless the backup failed) and its parent released.
func (a *archiver) release(d *dirState) {
	if d.pending.Add(-1) != 0 {
		return
	}
	if d.done != nil {
		close(d.done)
		return
	}
	if a.failed() == nil && a.ctx.Err() == nil {
		a.saveDirTree(d)
	}
	a.release(d.parent)
}

// scanDir reads directory d at path and hands off its entries.
func (a *archiver) scanDir(path string, d *dirState) {
	defer a.release(d) // the scan's own unit of work
	if d.prev != nil && d.prev.Type == NodeDir && d.prev.Subtree != nil {
		t, err := a.r.LoadTree(a.ctx, *d.prev.Subtree)
		if err == nil {
			d.prevTree = t
		}
	}
	ents, err := os.ReadDir(path)
	if err != nil {
		a.warn(path, err)
	}
	d.nodes = make([]*Node, len(ents))
	var batch fileBatch
	for i, e := range ents {
		if a.ctx.Err() != nil {
			break
		}
		cp := filepath.Join(path, e.Name())
		if a.excluded(cp, e.Name()) {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			a.warn(cp, err)
			continue
		}
		a.addEntry(d, i, cp, e.Name(), fi, d.prevTree.Find(e.Name()), &batch)
	}
	a.flush(d, &batch)
}

// present returns the nodes that are not nil.
func present(nodes []*Node) []*Node {
	out := make([]*Node, 0, len(nodes))
	for _, n := range nodes {
		if n != nil {
			out = append(out, n)
		}
	}
	return out
}

// saveDirTree saves a directory's tree. A tree equal to the one in the
// parent snapshot is not encoded and saved again: its ID is reused.
func (a *archiver) saveDirTree(d *dirState) {
	t := &Tree{Nodes: present(d.nodes)}
	if d.prevTree != nil && a.r.idx.has(*d.prev.Subtree) && sameNodes(t.Nodes, d.prevTree.Nodes) {
		id := *d.prev.Subtree
		d.node.Subtree = &id
		return
	}
	id, err := a.saveTree(t)
	if err != nil {
		a.setFail(err)
		return
	}
	d.node.Subtree = &id
}

func (a *archiver) saveTree(t *Tree) (ID, error) {
	b, err := encodeTree(t)
	if err != nil {
		return ID{}, fmt.Errorf("encoding tree: %w", err)
	}
	id := a.r.blobID(b)
	stored, err := a.pw.saveBlob(TreeBlob, id, b)
	if err != nil {
		return id, err
	}
	if stored {
		a.treeBlobs.Add(1)
	}
	return id, nil
}

func (a *archiver) fileWorker() {
	for job := range a.files {
		for _, it := range job.items {
			if a.ctx.Err() != nil || a.pw.getErr() != nil {
				a.setFail(errors.Join(a.ctx.Err(), a.pw.getErr()))
				break
			}
			err := a.saveFile(it.path, job.d.nodes[it.slot])
			if err != nil {
				if a.ctx.Err() != nil || a.pw.getErr() != nil {
					a.setFail(errors.Join(a.ctx.Err(), a.pw.getErr(), err))
					break
				}
				a.warn(it.path, err)
				job.d.nodes[it.slot] = nil
				continue
			}
			a.filesDone.Add(1)
			if it.prev {
				a.filesChanged.Add(1)
			} else {
				a.filesNew.Add(1)
			}
		}
		a.release(job.d)
	}
}

// openNoAtime opens a file for reading without updating its access time
// (where permitted). It returns a raw descriptor: os.File's poller
// registration costs several system calls per file, which adds up over
// many small files.
func openNoAtime(path string) (int, error) {
	for {
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOATIME|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
		if errors.Is(err, unix.EPERM) {
			fd, err = unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return -1, &os.PathError{Op: "open", Path: path, Err: err}
		}
		return fd, nil
	}
}

// readFD reads into b, retrying on EINTR.
func readFD(fd int, b []byte) (int, error) {
	for {
		n, err := unix.Read(fd, b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if n < 0 {
			n = 0
		}
		return n, err
	}
}

// saveFile reads the file at path and stores its content, setting n's
// Content and Size (the bytes actually read).
func (a *archiver) saveFile(path string, n *Node) error {
	if testHookBeforeRead != nil {
		testHookBeforeRead(path)
	}
	fd, err := openNoAtime(path)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	statSize := n.Size
	// Small files are read into a small buffer and stored by this worker
	// directly; a file that turns out larger switches to a big buffer and
	// hands its chunks to the blob workers.
	small := n.Size < smallFile
	var bp *[]byte
	if small {
		bp = a.sbufs.Get().(*[]byte)
	} else {
		bp = a.bufs.Get().(*[]byte)
	}
	defer func() {
		if len(*bp) == smallFile {
			a.sbufs.Put(bp)
		} else {
			a.bufs.Put(bp)
		}
	}()
	buf := *bp
	max := a.r.cfg.Chunker.Max
	var content []ID
	start, end := 0, 0
	eof := false
	var size int64
	for {
		// Fill until a whole maximum chunk is buffered or the file ends.
		for !eof && end-start < max {
			if end == len(buf) {
				if start == 0 && len(buf) < 2*max {
					big := a.bufs.Get().(*[]byte)
					copy(*big, buf[:end])
					a.sbufs.Put(bp)
					bp, buf, small = big, *big, false
				} else {
					copy(buf, buf[start:end])
					end -= start
					start = 0
				}
			}
			want := len(buf) - end
			k, err := readFD(fd, buf[end:])
			if err != nil {
				return &os.PathError{Op: "read", Path: path, Err: err}
			}
			end += k
			size += int64(k)
			a.bytesRead.Add(int64(k))
			// A short read at or past the size lstat reported is the end
			// of a regular file; this saves a read per file.
			if k == 0 || (k < want && size >= statSize) {
				eof = true
			}
		}
		if start == end {
			break
		}
		if err := a.ctx.Err(); err != nil {
			return err
		}
		cut := a.r.chunker.Boundary(buf[start:end])
		chunk := buf[start : start+cut]
		start += cut
		id := a.r.blobID(chunk)
		content = append(content, id)
		if !a.r.idx.reserve(id, a.pw) {
			continue
		}
		a.dataBlobs.Add(1)
		a.dataAdded.Add(int64(len(chunk)))
		if small {
			if err := a.storeChunk(id, chunk); err != nil {
				return err
			}
			continue
		}
		// Hand the chunk to a blob worker if one is free (this worker
		// then reads on); otherwise store it here. Copies in flight are
		// thus bounded by the number of blob workers.
		select {
		case a.slots <- struct{}{}:
			cp := getBuf(len(chunk))
			data := append(*cp, chunk...)
			a.blobs <- blobJob{id: id, data: data, buf: cp}
		default:
			if err := a.storeChunk(id, chunk); err != nil {
				return err
			}
		}
	}
	n.Size = size
	n.Content = content
	return nil
}

// storeChunk compresses, encrypts and writes one data blob; small ones go
// into a group (format 2).
func (a *archiver) storeChunk(id ID, data []byte) error {
	if a.r.cfg.grouped() && len(data) < groupBlobMax {
		err := a.pw.addToGroup(DataBlob, id, data)
		if err != nil {
			a.pw.setErr(err)
		}
		return err
	}
	bp, enc := a.r.sealBlob(data)
	err := a.pw.addEncrypted(DataBlob, id, enc, len(data))
	putBuf(bp)
	if err != nil {
		a.pw.setErr(err)
	}
	return err
}

func (a *archiver) blobWorker() {
	for j := range a.blobs {
		if a.pw.getErr() != nil || a.ctx.Err() != nil {
			<-a.slots
			continue
		}
		a.storeChunk(j.id, j.data)
		putBuf(j.buf)
		<-a.slots
	}
}
