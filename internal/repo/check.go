package repo

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/holdfast/holdfast/internal/repo/backend"
)

// ErrCheckFailed is returned (wrapped) when check finds damage.
var ErrCheckFailed = errors.New("repository check found errors")

// CheckOptions configure a check.
type CheckOptions struct {
	// ReadData reads and verifies every pack file, not just the structure.
	ReadData bool
	// Progress, if set, is called with packs read (Files) and bytes.
	Progress func(Progress)
}

// DamagedBlob is a blob that failed verification, with what uses it.
type DamagedBlob struct {
	ID    ID       `json:"id"`
	Type  string   `json:"type"`
	Pack  ID       `json:"pack"`
	Error string   `json:"error"`
	Files []string `json:"files,omitempty"` // "snapshot:path" entries whose content includes the blob
}

// CheckResult is the outcome of Check.
type CheckResult struct {
	Snapshots         int           `json:"snapshots"`
	Trees             int           `json:"trees"`
	Packs             int           `json:"packs"`
	Blobs             int           `json:"blobs"`
	PacksRead         int64         `json:"packs_read,omitempty"`
	BytesRead         int64         `json:"bytes_read,omitempty"`
	Errors            []string      `json:"errors,omitempty"`
	UnreferencedPacks []string      `json:"unreferenced_packs,omitempty"`
	DamagedPacks      []string      `json:"damaged_packs,omitempty"`
	DamagedBlobs      []DamagedBlob `json:"damaged_blobs,omitempty"`
}

// Check verifies the repository's structure: every index file decodes,
// every indexed pack exists with the recorded size, every snapshot's trees
// load and every referenced blob is indexed. With ReadData it also reads
// every pack and verifies every blob, naming damaged blobs and the files
// they belong to. It holds a shared lock, so that prune cannot remove
// packs while they are being checked.
func (r *Repository) Check(ctx context.Context, opts CheckOptions) (*CheckResult, error) {
	var res *CheckResult
	err := r.withLock(ctx, false, func(ctx context.Context) error {
		var err error
		res, err = r.check(ctx, opts)
		return err
	})
	return res, err
}

func (r *Repository) check(ctx context.Context, opts CheckOptions) (*CheckResult, error) {
	res := &CheckResult{}
	var mu sync.Mutex
	addErr := func(format string, args ...any) {
		mu.Lock()
		res.Errors = append(res.Errors, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	if err := r.LoadIndex(ctx); err != nil {
		addErr("%v", err)
	}
	stored := map[string]int64{}
	if err := r.be.List(ctx, backend.PackFile, func(fi backend.FileInfo) error {
		stored[fi.Name] = fi.Size
		return nil
	}); err != nil {
		return nil, fmt.Errorf("check: listing packs: %w", err)
	}
	packs := r.idx.allPacks()
	sort.Slice(packs, func(i, j int) bool { return packs[i].ID.String() < packs[j].ID.String() })
	res.Packs = len(packs)
	indexed := map[string]bool{}
	for _, p := range packs {
		name := p.ID.String()
		indexed[name] = true
		res.Blobs += len(p.Blobs)
		size, ok := stored[name]
		switch {
		case !ok:
			addErr("pack %s is in the index but missing", p.ID.Short())
		case size != p.Size:
			addErr("pack %s has %d bytes, index says %d", p.ID.Short(), size, p.Size)
		}
	}
	for name := range stored {
		if !indexed[name] {
			res.UnreferencedPacks = append(res.UnreferencedPacks, name)
		}
	}
	sort.Strings(res.UnreferencedPacks)

	snaps, err := r.listIDs(ctx, backend.SnapshotFile)
	if err != nil {
		return nil, fmt.Errorf("check: %w", err)
	}
	seenTrees := map[ID]bool{}
	for _, sid := range snaps {
		sn, err := r.LoadSnapshot(ctx, sid)
		if err != nil {
			addErr("%v", err)
			continue
		}
		res.Snapshots++
		r.checkTree(ctx, sn.Tree, sid.Short()+":/", seenTrees, addErr)
	}
	res.Trees = len(seenTrees)

	if opts.ReadData {
		r.checkData(ctx, packs, res, opts, addErr)
		if len(res.DamagedBlobs) > 0 {
			r.attribute(ctx, snaps, res)
		}
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	sort.Strings(res.Errors)
	if len(res.Errors) > 0 {
		return res, fmt.Errorf("%w: %d errors", ErrCheckFailed, len(res.Errors))
	}
	return res, nil
}

func (r *Repository) checkTree(ctx context.Context, id ID, where string, seen map[ID]bool, addErr func(string, ...any)) {
	if seen[id] || ctx.Err() != nil {
		return
	}
	seen[id] = true
	t, err := r.LoadTree(ctx, id)
	if err != nil {
		addErr("%s: %v", where, err)
		return
	}
	for _, n := range t.Nodes {
		switch n.Type {
		case NodeDir:
			r.checkTree(ctx, *n.Subtree, where+n.Name+"/", seen, addErr)
		case NodeFile:
			var size int64
			for _, b := range n.Content {
				loc, ok := r.idx.lookup(b)
				if !ok {
					addErr("%s%s: blob %s not in index", where, n.Name, b.Short())
					continue
				}
				size += int64(loc.RawLen)
			}
			if size != n.Size && len(n.Content) > 0 {
				addErr("%s%s: content adds up to %d bytes, size is %d", where, n.Name, size, n.Size)
			}
		}
	}
}

// checkData reads every indexed pack and verifies every blob in it.
func (r *Repository) checkData(ctx context.Context, packs []*IndexPack, res *CheckResult, opts CheckOptions, addErr func(string, ...any)) {
	var mu sync.Mutex
	var nread, bread atomic.Int64
	var total int64
	for _, p := range packs {
		total += p.Size
	}
	work := make(chan *IndexPack)
	var wg sync.WaitGroup
	for i := 0; i < runtime.GOMAXPROCS(0); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range work {
				damaged, perr := r.verifyPack(ctx, p)
				nread.Add(1)
				bread.Add(p.Size)
				if opts.Progress != nil {
					opts.Progress(Progress{Files: nread.Load(), TotalFiles: int64(len(packs)), Bytes: bread.Load(), TotalBytes: total})
				}
				if perr == nil && len(damaged) == 0 {
					continue
				}
				mu.Lock()
				res.DamagedPacks = append(res.DamagedPacks, p.ID.String())
				res.DamagedBlobs = append(res.DamagedBlobs, damaged...)
				mu.Unlock()
				if perr != nil {
					addErr("pack %s: %v", p.ID.Short(), perr)
				}
				for _, d := range damaged {
					addErr("pack %s: %s blob %s: %s", p.ID.Short(), d.Type, d.ID.Short(), d.Error)
				}
			}
		}()
	}
	for _, p := range packs {
		if ctx.Err() != nil {
			break
		}
		work <- p
	}
	close(work)
	wg.Wait()
	res.PacksRead, res.BytesRead = nread.Load(), bread.Load()
	sort.Strings(res.DamagedPacks)
	sort.Slice(res.DamagedBlobs, func(i, j int) bool { return res.DamagedBlobs[i].ID.String() < res.DamagedBlobs[j].ID.String() })
}

// verifyPack reads one pack and returns its damaged blobs; the error
// describes damage to the pack as a whole.
func (r *Repository) verifyPack(ctx context.Context, p *IndexPack) ([]DamagedBlob, error) {
	data, err := r.be.Load(ctx, backend.Handle{Type: backend.PackFile, Name: p.ID.String()}, 0, 0)
	var damaged []DamagedBlob
	all := func(why string) []DamagedBlob {
		for _, b := range p.Blobs {
			damaged = append(damaged, DamagedBlob{ID: b.ID, Type: b.Type.String(), Pack: p.ID, Error: why})
		}
		return damaged
	}
	if err != nil {
		return all("pack unreadable"), fmt.Errorf("reading: %w", err)
	}
	var packErr error
	if fileID(data) != p.ID {
		packErr = errors.New("content does not match its name (damaged)")
	}
	if hdr, err := r.parsePack(data); err != nil {
		packErr = errors.Join(packErr, fmt.Errorf("header: %w", err))
	} else if len(hdr) != len(p.Blobs) {
		packErr = errors.Join(packErr, fmt.Errorf("header lists %d blobs, index %d", len(hdr), len(p.Blobs)))
	}
	// Objects are decrypted in place (data is not used afterwards); the
	// cache decodes a group once for all its members.
	var cache objectCache
	defer cache.release()
	for _, b := range p.Blobs {
		end := int64(b.Offset) + int64(b.Length)
		if end > int64(len(data)) {
			damaged = append(damaged, DamagedBlob{ID: b.ID, Type: b.Type.String(), Pack: p.ID, Error: "beyond end of pack"})
			continue
		}
		if _, err := r.openBlobAt(&cache, BlobLocation{Pack: p.ID, PackedBlob: b}, data[b.Offset:end]); err != nil {
			damaged = append(damaged, DamagedBlob{ID: b.ID, Type: b.Type.String(), Pack: p.ID, Error: err.Error()})
		}
	}
	return damaged, packErr
}

// attribute fills in, for each damaged blob, the files that contain it.
func (r *Repository) attribute(ctx context.Context, snaps IDs, res *CheckResult) {
	want := map[ID]*DamagedBlob{}
	for i := range res.DamagedBlobs {
		want[res.DamagedBlobs[i].ID] = &res.DamagedBlobs[i]
	}
	for _, sid := range snaps {
		r.Walk(ctx, sid, func(p string, n *Node) error {
			if n.Type == NodeDir && n.Subtree != nil {
				if d := want[*n.Subtree]; d != nil {
					d.Files = append(d.Files, sid.Short()+":/"+p+"/")
				}
			}
			for _, b := range n.Content {
				if d := want[b]; d != nil {
					d.Files = append(d.Files, sid.Short()+":/"+p)
				}
			}
			return nil
		})
	}
}
