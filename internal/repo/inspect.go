package repo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/holdfast/holdfast/internal/repo/backend"
)

// Stats describes a repository's contents.
type Stats struct {
	Snapshots    int     `json:"snapshots"`
	Packs        int     `json:"packs"`
	DataBlobs    int     `json:"data_blobs"`
	TreeBlobs    int     `json:"tree_blobs"`
	StoredBytes  int64   `json:"stored_bytes"`  // pack files
	RawBytes     int64   `json:"raw_bytes"`     // unique blob plaintext
	RestoreSize  int64   `json:"restore_size"`  // sum of file sizes over all snapshots
	Files        int64   `json:"files"`         // sum of files over all snapshots
	Compression  float64 `json:"compression"`   // raw / stored
	Deduplicated float64 `json:"deduplication"` // restore size / raw
}

// Stats computes repository statistics.
func (r *Repository) Stats(ctx context.Context) (*Stats, error) {
	st := &Stats{}
	for _, p := range r.idx.allPacks() {
		st.Packs++
		st.StoredBytes += p.Size
	}
	r.idx.mu.RLock()
	for _, l := range r.idx.blobs {
		if l.Type == DataBlob {
			st.DataBlobs++
		} else {
			st.TreeBlobs++
		}
		st.RawBytes += int64(l.RawLen)
	}
	r.idx.mu.RUnlock()
	snaps, err := r.Snapshots(ctx)
	if err != nil {
		return nil, err
	}
	st.Snapshots = len(snaps)
	type tsz struct{ bytes, files int64 }
	memo := map[ID]tsz{}
	var size func(id ID) (tsz, error)
	size = func(id ID) (tsz, error) {
		if v, ok := memo[id]; ok {
			return v, nil
		}
		t, err := r.LoadTree(ctx, id)
		if err != nil {
			return tsz{}, err
		}
		var v tsz
		for _, n := range t.Nodes {
			if n.Type == NodeDir {
				s, err := size(*n.Subtree)
				if err != nil {
					return tsz{}, err
				}
				v.bytes += s.bytes
				v.files += s.files
			} else {
				v.bytes += n.Size
				v.files++
			}
		}
		memo[id] = v
		return v, nil
	}
	for _, sn := range snaps {
		v, err := size(sn.Tree)
		if err != nil {
			return nil, err
		}
		st.RestoreSize += v.bytes
		st.Files += v.files
	}
	if st.StoredBytes > 0 {
		st.Compression = float64(st.RawBytes) / float64(st.StoredBytes)
	}
	if st.RawBytes > 0 {
		st.Deduplicated = float64(st.RestoreSize) / float64(st.RawBytes)
	}
	return st, nil
}

// DiffEntry is one difference between two snapshots.
type DiffEntry struct {
	Path   string `json:"path"`
	Change string `json:"change"` // "+" added, "-" removed, "M" content, "T" type, "U" metadata only
}

// Diff lists what changed from snapshot a to snapshot b.
func (r *Repository) Diff(ctx context.Context, a, b ID) ([]DiffEntry, error) {
	sa, err := r.LoadSnapshot(ctx, a)
	if err != nil {
		return nil, err
	}
	sb, err := r.LoadSnapshot(ctx, b)
	if err != nil {
		return nil, err
	}
	var out []DiffEntry
	err = r.diffTrees(ctx, &sa.Tree, &sb.Tree, "", &out)
	return out, err
}

func (r *Repository) listAll(ctx context.Context, id ID, prefix, change string, out *[]DiffEntry) error {
	return r.walkTree(ctx, id, prefix, func(p string, n *Node) error {
		s := "/" + p
		if n.Type == NodeDir {
			s += "/"
		}
		*out = append(*out, DiffEntry{Path: s, Change: change})
		return nil
	})
}

func (r *Repository) diffTrees(ctx context.Context, a, b *ID, prefix string, out *[]DiffEntry) error {
	if *a == *b {
		return nil
	}
	ta, err := r.LoadTree(ctx, *a)
	if err != nil {
		return err
	}
	tb, err := r.LoadTree(ctx, *b)
	if err != nil {
		return err
	}
	names := map[string]bool{}
	for _, n := range ta.Nodes {
		names[n.Name] = true
	}
	for _, n := range tb.Nodes {
		names[n.Name] = true
	}
	sorted := make([]string, 0, len(names))
	for n := range names {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	for _, name := range sorted {
		p := path.Join(prefix, name)
		na, nb := ta.Find(name), tb.Find(name)
		disp := "/" + p
		switch {
		case na == nil:
			if nb.Type == NodeDir {
				*out = append(*out, DiffEntry{disp + "/", "+"})
				if err := r.listAll(ctx, *nb.Subtree, p, "+", out); err != nil {
					return err
				}
			} else {
				*out = append(*out, DiffEntry{disp, "+"})
			}
		case nb == nil:
			if na.Type == NodeDir {
				*out = append(*out, DiffEntry{disp + "/", "-"})
				if err := r.listAll(ctx, *na.Subtree, p, "-", out); err != nil {
					return err
				}
			} else {
				*out = append(*out, DiffEntry{disp, "-"})
			}
		case na.Type != nb.Type:
			*out = append(*out, DiffEntry{disp, "T"})
		case na.Type == NodeDir:
			if err := r.diffTrees(ctx, na.Subtree, nb.Subtree, p, out); err != nil {
				return err
			}
		default:
			if !equalIDs(na.Content, nb.Content) || na.LinkTarget != nb.LinkTarget {
				*out = append(*out, DiffEntry{disp, "M"})
			} else if na.Mode != nb.Mode || na.UID != nb.UID || na.GID != nb.GID || !na.ModTime.Equal(nb.ModTime) {
				*out = append(*out, DiffEntry{disp, "U"})
			}
		}
	}
	return nil
}

func equalIDs(a, b []ID) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// LsEntry is one entry listed by Ls.
type LsEntry struct {
	Path    string    `json:"path"`
	Type    string    `json:"type"`
	Mode    uint32    `json:"mode"`
	Size    int64     `json:"size"`
	ModTime time.Time `json:"mtime"`
	User    string    `json:"user,omitempty"`
	Group   string    `json:"group,omitempty"`
	Target  string    `json:"link_target,omitempty"`
}

// Ls lists the entries of a snapshot at or below dir ("" or "/" for all).
func (r *Repository) Ls(ctx context.Context, snap ID, dir string) ([]LsEntry, error) {
	dir = strings.Trim(path.Clean("/"+dir), "/")
	var out []LsEntry
	found := dir == ""
	err := r.Walk(ctx, snap, func(p string, n *Node) error {
		if dir != "" && p != dir && !strings.HasPrefix(p, dir+"/") && !strings.HasPrefix(dir, p+"/") {
			return errSkipDir
		}
		if dir != "" && strings.HasPrefix(dir, p+"/") {
			return nil // on the way down
		}
		found = true
		out = append(out, LsEntry{Path: "/" + p, Type: n.Type, Mode: n.Mode, Size: n.Size, ModTime: n.ModTime, User: n.User, Group: n.Group, Target: n.LinkTarget})
		return nil
	})
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("path %q not in snapshot %s", dir, snap.Short())
	}
	return out, nil
}

// Cat returns a repository object in readable form: "config", "snapshot
// ID", "index ID", "tree ID", "key ID" and "pack ID" as JSON, "blob ID" as
// its raw plaintext. IDs may be unique prefixes (snapshots also "latest").
func (r *Repository) Cat(ctx context.Context, kind, id string) ([]byte, error) {
	pretty := func(v any) ([]byte, error) { return json.MarshalIndent(v, "", "  ") }
	switch kind {
	case "config":
		return pretty(r.cfg)
	case "snapshot":
		sid, err := r.FindSnapshot(ctx, id)
		if err != nil {
			return nil, err
		}
		sn, err := r.LoadSnapshot(ctx, sid)
		if err != nil {
			return nil, err
		}
		return pretty(sn)
	case "index", "pack", "key":
		t := map[string]backend.FileType{"index": backend.IndexFile, "pack": backend.PackFile, "key": backend.KeyFile}[kind]
		ids, err := r.listIDs(ctx, t)
		if err != nil {
			return nil, err
		}
		fid, err := matchPrefix(ids, id, kind)
		if err != nil {
			return nil, err
		}
		switch kind {
		case "key":
			return r.be.Load(ctx, backend.Handle{Type: t, Name: fid.String()}, 0, 0)
		case "index":
			b, err := r.loadFile(ctx, t, fid)
			if err != nil {
				return nil, err
			}
			packs, err := decodeIndex(b)
			if err != nil {
				return nil, err
			}
			return pretty(packs)
		default:
			data, err := r.be.Load(ctx, backend.Handle{Type: t, Name: fid.String()}, 0, 0)
			if err != nil {
				return nil, err
			}
			blobs, err := r.parsePack(data)
			if err != nil {
				return nil, err
			}
			return pretty(blobs)
		}
	case "tree", "blob":
		bid, err := r.findBlob(id)
		if err != nil {
			return nil, err
		}
		if kind == "tree" {
			t, err := r.LoadTree(ctx, bid)
			if err != nil {
				return nil, err
			}
			return pretty(t)
		}
		return r.LoadBlob(ctx, bid)
	}
	return nil, fmt.Errorf("cat: unknown object kind %q (want config, snapshot, index, pack, key, tree or blob)", kind)
}

func (r *Repository) findBlob(prefix string) (ID, error) {
	if id, err := ParseID(prefix); err == nil {
		return id, nil
	}
	if len(prefix) < 4 {
		return ID{}, errors.New("blob id prefix too short")
	}
	r.idx.mu.RLock()
	ids := make(IDs, 0)
	for id := range r.idx.blobs {
		if strings.HasPrefix(id.String(), prefix) {
			ids = append(ids, id)
		}
	}
	r.idx.mu.RUnlock()
	return matchPrefix(ids, prefix, "blob")
}

// KeyInfo describes a key file.
type KeyInfo struct {
	ID       string    `json:"id"`
	Current  bool      `json:"current"`
	Created  time.Time `json:"created"`
	Hostname string    `json:"hostname"`
	Username string    `json:"username"`
}

// Keys lists the key files.
func (r *Repository) Keys(ctx context.Context) ([]KeyInfo, error) {
	var out []KeyInfo
	var names []string
	if err := r.be.List(ctx, backend.KeyFile, func(fi backend.FileInfo) error {
		names = append(names, fi.Name)
		return nil
	}); err != nil {
		return nil, err
	}
	sort.Strings(names)
	for _, n := range names {
		b, err := r.be.Load(ctx, backend.Handle{Type: backend.KeyFile, Name: n}, 0, 0)
		if err != nil {
			return nil, err
		}
		kf, err := parseKeyFile(b)
		if err != nil {
			return nil, fmt.Errorf("key %s: %w", n, err)
		}
		out = append(out, KeyInfo{ID: n, Current: n == r.keyName, Created: kf.Created, Hostname: kf.Hostname, Username: kf.Username})
	}
	return out, nil
}

// AddKey wraps the master key with another passphrase and returns the new
// key's ID.
func (r *Repository) AddKey(ctx context.Context, pass string, kdf KDFParams) (string, error) {
	if pass == "" {
		return "", errors.New("empty password")
	}
	kb, err := wrapKey(r.key, pass, kdf)
	if err != nil {
		return "", err
	}
	name := fileID(kb).String()
	if err := r.be.Save(ctx, backend.Handle{Type: backend.KeyFile, Name: name}, kb); err != nil {
		return "", fmt.Errorf("saving key: %w", err)
	}
	return name, nil
}

// RemoveKey deletes a key file (by unique ID prefix). The key in use
// cannot be removed, so a repository always keeps at least one key.
func (r *Repository) RemoveKey(ctx context.Context, prefix string) (string, error) {
	keys, err := r.Keys(ctx)
	if err != nil {
		return "", err
	}
	var match []KeyInfo
	for _, k := range keys {
		if strings.HasPrefix(k.ID, prefix) && prefix != "" {
			match = append(match, k)
		}
	}
	if len(match) != 1 {
		return "", fmt.Errorf("key prefix %q matches %d keys", prefix, len(match))
	}
	if match[0].Current {
		return "", errors.New("refusing to remove the key in use; open the repository with another key first")
	}
	return match[0].ID, r.be.Remove(ctx, backend.Handle{Type: backend.KeyFile, Name: match[0].ID})
}
