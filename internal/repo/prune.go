package repo

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/holdfast/holdfast/internal/repo/backend"
)

// indexPacksPerFile bounds how many packs prune writes into one index file.
const indexPacksPerFile = 20000

// PruneOptions configure a prune.
type PruneOptions struct {
	DryRun bool
	// Progress, if set, is called as prune goes through its phases:
	// "marking" (Files: snapshots read of TotalFiles), "repacking" (Files:
	// packs copied of TotalFiles, Bytes of TotalBytes) and "deleting"
	// (Files: index and pack files removed of TotalFiles).
	Progress func(Progress)
}

// PruneResult describes what prune did (or would do).
type PruneResult struct {
	UsedBlobs         int   `json:"used_blobs"`
	UnusedBlobs       int   `json:"unused_blobs"`
	PacksKept         int   `json:"packs_kept"`
	PacksDeleted      int   `json:"packs_deleted"`
	PacksRepacked     int   `json:"packs_repacked"`
	PacksUnreferenced int   `json:"packs_unreferenced"`
	PacksWritten      int   `json:"packs_written"`
	IndexFilesRemoved int   `json:"index_files_removed"`
	BytesBefore       int64 `json:"bytes_before"`
	BytesAfter        int64 `json:"bytes_after"`
}

// Prune removes data no snapshot references. It takes an exclusive lock,
// so no backup runs meanwhile. The order of work keeps the repository
// valid if prune is interrupted at any point: new packs, then the new
// index, then removal of old index files, then removal of old packs.
func (r *Repository) Prune(ctx context.Context, opts PruneOptions) (*PruneResult, error) {
	var res *PruneResult
	err := r.withLock(ctx, true, func(ctx context.Context) error {
		var err error
		res, err = r.prune(ctx, opts)
		return err
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

func (r *Repository) prune(ctx context.Context, opts PruneOptions) (*PruneResult, error) {
	progress := func(p Progress) {
		if opts.Progress != nil {
			opts.Progress(p)
		}
	}
	if err := r.LoadIndex(ctx); err != nil {
		return nil, fmt.Errorf("prune: %w (run check)", err)
	}
	oldIndex, err := r.listIDs(ctx, backend.IndexFile)
	if err != nil {
		return nil, err
	}
	used := map[ID]bool{}
	snaps, err := r.listIDs(ctx, backend.SnapshotFile)
	if err != nil {
		return nil, err
	}
	for i, sid := range snaps {
		sn, err := r.LoadSnapshot(ctx, sid)
		if err != nil {
			return nil, fmt.Errorf("prune: %w (nothing removed)", err)
		}
		if err := r.markUsed(ctx, sn.Tree, used); err != nil {
			return nil, fmt.Errorf("prune: snapshot %s: %w (nothing removed)", sid.Short(), err)
		}
		progress(Progress{Phase: "marking", Files: int64(i + 1), TotalFiles: int64(len(snaps))})
	}
	res := &PruneResult{UsedBlobs: len(used)}
	packs := r.idx.allPacks()
	sort.Slice(packs, func(i, j int) bool { return packs[i].ID.String() < packs[j].ID.String() })
	kept := map[ID]bool{}
	var keepPacks, repack, drop []*IndexPack
	// Fully used packs first, so their blobs count as kept.
	for _, p := range packs {
		res.BytesBefore += p.Size
		all := true
		for _, b := range p.Blobs {
			if !used[b.ID] || kept[b.ID] {
				all = false
				break
			}
		}
		if all {
			keepPacks = append(keepPacks, p)
			for _, b := range p.Blobs {
				kept[b.ID] = true
			}
		}
	}
	isKept := map[ID]bool{}
	for _, p := range keepPacks {
		isKept[p.ID] = true
	}
	for _, p := range packs {
		if isKept[p.ID] {
			continue
		}
		need := false
		for _, b := range p.Blobs {
			if used[b.ID] && !kept[b.ID] {
				need = true
			} else {
				res.UnusedBlobs++
			}
		}
		if need {
			repack = append(repack, p)
			for _, b := range p.Blobs {
				if used[b.ID] {
					kept[b.ID] = true
				}
			}
		} else {
			drop = append(drop, p)
		}
	}
	for id := range used {
		if !kept[id] {
			return nil, fmt.Errorf("prune: blob %s is used but not in any pack (nothing removed; run check)", id.Short())
		}
	}
	indexed := map[string]bool{}
	for _, p := range packs {
		indexed[p.ID.String()] = true
	}
	var orphans []string
	r.be.List(ctx, backend.PackFile, func(fi backend.FileInfo) error {
		if !indexed[fi.Name] {
			orphans = append(orphans, fi.Name)
		}
		return nil
	})
	res.PacksKept, res.PacksRepacked, res.PacksDeleted, res.PacksUnreferenced = len(keepPacks), len(repack), len(drop), len(orphans)
	if opts.DryRun {
		return res, nil
	}

	// 1. Copy the used blobs of partly used packs into new packs.
	pw := r.newPackWriter(ctx)
	pw.noIndex = true
	copied := map[ID]bool{}
	inKept := map[ID]bool{}
	for _, p := range keepPacks {
		for _, b := range p.Blobs {
			inKept[b.ID] = true
		}
	}
	var repackBytes, repacked int64
	for _, p := range repack {
		repackBytes += p.Size
	}
	for i, p := range repack {
		data, err := r.be.Load(ctx, backend.Handle{Type: backend.PackFile, Name: p.ID.String()}, 0, 0)
		if err == nil && fileID(data) != p.ID {
			err = errors.New("content does not match its name (damaged)")
		}
		if err != nil {
			pw.abort()
			return nil, fmt.Errorf("prune: reading pack %s: %w (nothing removed)", p.ID.Short(), err)
		}
		if err := r.repackBlobs(pw, p, data, func(id ID) bool { return used[id] && !copied[id] && !inKept[id] }, copied); err != nil {
			pw.abort()
			return nil, fmt.Errorf("prune: %w (nothing removed)", err)
		}
		repacked += p.Size
		progress(Progress{Phase: "repacking", Files: int64(i + 1), TotalFiles: int64(len(repack)), Bytes: repacked, TotalBytes: repackBytes})
	}
	if err := pw.finish(); err != nil {
		return nil, fmt.Errorf("prune: %w (nothing removed)", err)
	}
	res.PacksWritten = pw.packsStored

	// 2. Write the new index: kept packs and the new ones.
	final := make([]IndexPack, 0, len(keepPacks)+len(pw.written))
	for _, p := range keepPacks {
		final = append(final, *p)
	}
	final = append(final, pw.written...)
	newIndex := map[ID]bool{}
	for i := 0; i < len(final); i += indexPacksPerFile {
		end := min(i+indexPacksPerFile, len(final))
		id, err := r.saveFile(ctx, backend.IndexFile, encodeIndex(final[i:end]))
		if err != nil {
			return nil, fmt.Errorf("prune: writing index: %w (nothing removed)", err)
		}
		newIndex[id] = true
	}
	// 3. Remove the old index files, 4. then the packs they listed.
	var remove []string
	for _, p := range append(repack, drop...) {
		remove = append(remove, p.ID.String())
	}
	remove = append(remove, orphans...)
	var oldIdx []ID
	for _, id := range oldIndex {
		if !newIndex[id] {
			oldIdx = append(oldIdx, id)
		}
	}
	total, removed := int64(len(oldIdx)+len(remove)), int64(0)
	for _, id := range oldIdx {
		if err := r.be.Remove(ctx, backend.Handle{Type: backend.IndexFile, Name: id.String()}); err != nil {
			return nil, fmt.Errorf("prune: removing index %s: %w", id.Short(), err)
		}
		res.IndexFilesRemoved++
		removed++
		progress(Progress{Phase: "deleting", Files: removed, TotalFiles: total})
	}
	for _, name := range remove {
		if err := r.be.Remove(ctx, backend.Handle{Type: backend.PackFile, Name: name}); err != nil && !errors.Is(err, backend.ErrNotExist) {
			return nil, fmt.Errorf("prune: removing pack %s: %w", name, err)
		}
		removed++
		progress(Progress{Phase: "deleting", Files: removed, TotalFiles: total})
	}
	if l, ok := r.be.(*backend.Local); ok {
		l.RemoveTemporary()
	}
	if err := r.LoadIndex(ctx); err != nil {
		return nil, err
	}
	for _, p := range r.idx.allPacks() {
		res.BytesAfter += p.Size
	}
	r.log.Info("prune finished", "deleted", res.PacksDeleted, "repacked", res.PacksRepacked, "before", res.BytesBefore, "after", res.BytesAfter)
	return res, nil
}

// markUsed adds every blob reachable from tree id to used.
func (r *Repository) markUsed(ctx context.Context, id ID, used map[ID]bool) error {
	if used[id] {
		return nil
	}
	t, err := r.LoadTree(ctx, id)
	if err != nil {
		return err
	}
	used[id] = true
	for _, n := range t.Nodes {
		for _, b := range n.Content {
			used[b] = true
		}
		if n.Type == NodeDir {
			if err := r.markUsed(ctx, *n.Subtree, used); err != nil {
				return err
			}
		}
	}
	return ctx.Err()
}

// repackBlobs copies the blobs of pack p (whose bytes are data) that want
// accepts into pw, verifying each, and marks them in copied. A blob stored
// alone, or a group all of whose members are wanted, is copied as it is
// stored; the wanted members of a group that also holds unwanted blobs
// are decoded and stored again, in new groups.
func (r *Repository) repackBlobs(pw *packWriter, p *IndexPack, data []byte, want func(ID) bool, copied map[ID]bool) error {
	var cache objectCache
	defer cache.release()
	for i := 0; i < len(p.Blobs); {
		j := i + 1
		for j < len(p.Blobs) && p.Blobs[j].sameObject(p.Blobs[i]) {
			j++
		}
		object := p.Blobs[i:j] // one blob, or a group's members
		i = j
		var wanted []PackedBlob
		for _, b := range object {
			if want(b.ID) {
				wanted = append(wanted, b)
			}
		}
		if len(wanted) == 0 {
			continue
		}
		b0 := object[0]
		stored := data[b0.Offset : b0.Offset+b0.Length]
		enc := append([]byte(nil), stored...) // decoding below decrypts stored in place
		for _, b := range object {
			if _, err := r.openBlobAt(&cache, BlobLocation{Pack: p.ID, PackedBlob: b}, stored); err != nil {
				return err
			}
		}
		var err error
		switch {
		case !b0.Grouped:
			err = pw.addEncrypted(b0.Type, b0.ID, enc, int(b0.RawLen))
		case len(wanted) == len(object):
			entries := make([]PackedBlob, len(object))
			copy(entries, object)
			err = pw.addObject(b0.Type, entries, enc)
		default:
			for _, b := range wanted {
				plain, derr := r.openBlobAt(&cache, BlobLocation{Pack: p.ID, PackedBlob: b}, stored)
				if derr != nil {
					return derr
				}
				if err = pw.addToGroup(b.Type, b.ID, plain); err != nil {
					break
				}
			}
		}
		if err != nil {
			return err
		}
		for _, b := range wanted {
			copied[b.ID] = true
		}
	}
	return nil
}
