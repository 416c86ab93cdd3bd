package repo

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Node types.
const (
	NodeFile    = "file"
	NodeDir     = "dir"
	NodeSymlink = "symlink"
	NodeDev     = "dev"
	NodeCharDev = "chardev"
	NodeFifo    = "fifo"
	NodeSocket  = "socket"
)

// maxTreeSize bounds a tree blob's plaintext.
const maxTreeSize = 64 << 20

// Node is one directory entry in a tree, with its metadata.
type Node struct {
	Name       string            `json:"name"`
	Type       string            `json:"type"`
	Mode       uint32            `json:"mode"` // permission and special bits (07777)
	UID        uint32            `json:"uid"`
	GID        uint32            `json:"gid"`
	User       string            `json:"user,omitempty"`
	Group      string            `json:"group,omitempty"`
	Size       int64             `json:"size,omitempty"`
	ModTime    time.Time         `json:"mtime"`
	ChangeTime time.Time         `json:"ctime"`
	Inode      uint64            `json:"inode,omitempty"`
	Device     uint64            `json:"device,omitempty"`
	Links      uint64            `json:"links,omitempty"`
	Rdev       uint64            `json:"rdev,omitempty"`
	LinkTarget string            `json:"link_target,omitempty"`
	Xattrs     map[string][]byte `json:"xattrs,omitempty"`
	Content    []ID              `json:"content,omitempty"`
	Subtree    *ID               `json:"subtree,omitempty"`
}

// Tree is the list of entries of one directory, sorted by name.
type Tree struct {
	Nodes []*Node `json:"nodes"`
}

// sameNodes reports whether a and b hold equal nodes in the same order,
// so that a tree of a is the tree of b.
func sameNodes(a, b []*Node) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].equal(b[i]) {
			return false
		}
	}
	return true
}

// equal reports whether n and o have the same content and metadata (every
// field of Node; times as instants).
func (n *Node) equal(o *Node) bool {
	if n == nil || o == nil {
		return n == o
	}
	if n.Name != o.Name || n.Type != o.Type || n.Mode != o.Mode || n.UID != o.UID || n.GID != o.GID ||
		n.User != o.User || n.Group != o.Group || n.Size != o.Size || !n.ModTime.Equal(o.ModTime) ||
		!n.ChangeTime.Equal(o.ChangeTime) || n.Inode != o.Inode || n.Device != o.Device || n.Links != o.Links ||
		n.Rdev != o.Rdev || n.LinkTarget != o.LinkTarget || len(n.Xattrs) != len(o.Xattrs) ||
		!slices.Equal(n.Content, o.Content) || (n.Subtree == nil) != (o.Subtree == nil) ||
		(n.Subtree != nil && *n.Subtree != *o.Subtree) {
		return false
	}
	for k, v := range n.Xattrs {
		if w, ok := o.Xattrs[k]; !ok || !bytes.Equal(v, w) {
			return false
		}
	}
	return true
}

// Find returns the node named name, or nil.
func (t *Tree) Find(name string) *Node {
	if t == nil {
		return nil
	}
	i := sort.Search(len(t.Nodes), func(i int) bool { return t.Nodes[i].Name >= name })
	if i < len(t.Nodes) && t.Nodes[i].Name == name {
		return t.Nodes[i]
	}
	return nil
}

func encodeTree(t *Tree) ([]byte, error) {
	sort.Slice(t.Nodes, func(i, j int) bool { return t.Nodes[i].Name < t.Nodes[j].Name })
	return appendTreeJSON(make([]byte, 0, 64+len(t.Nodes)*256), t)
}

// appendTreeJSON appends exactly what json.Marshal(t) produces (so tree
// IDs do not depend on which encoder wrote them), without reflection:
// encoding trees was a few percent of a backup's CPU time. Values the fast
// path does not cover (strings needing escapes, extended attributes, times
// outside years 0-9999) are encoded by encoding/json.
func appendTreeJSON(b []byte, t *Tree) ([]byte, error) {
	if t.Nodes == nil {
		return append(b, `{"nodes":null}`...), nil
	}
	b = append(b, `{"nodes":[`...)
	for i, n := range t.Nodes {
		if i > 0 {
			b = append(b, ',')
		}
		if n == nil {
			b = append(b, "null"...)
			continue
		}
		var err error
		if b, err = appendNodeJSON(b, n); err != nil {
			return nil, err
		}
	}
	return append(b, "]}"...), nil
}

func appendNodeJSON(b []byte, n *Node) ([]byte, error) {
	var err error
	b = append(b, `{"name":`...)
	b = appendJSONString(b, n.Name)
	b = append(b, `,"type":`...)
	b = appendJSONString(b, n.Type)
	b = append(b, `,"mode":`...)
	b = strconv.AppendUint(b, uint64(n.Mode), 10)
	b = append(b, `,"uid":`...)
	b = strconv.AppendUint(b, uint64(n.UID), 10)
	b = append(b, `,"gid":`...)
	b = strconv.AppendUint(b, uint64(n.GID), 10)
	if n.User != "" {
		b = append(b, `,"user":`...)
		b = appendJSONString(b, n.User)
	}
	if n.Group != "" {
		b = append(b, `,"group":`...)
		b = appendJSONString(b, n.Group)
	}
	if n.Size != 0 {
		b = append(b, `,"size":`...)
		b = strconv.AppendInt(b, n.Size, 10)
	}
	b = append(b, `,"mtime":`...)
	if b, err = appendJSONTime(b, n.ModTime); err != nil {
		return nil, err
	}
	b = append(b, `,"ctime":`...)
	if b, err = appendJSONTime(b, n.ChangeTime); err != nil {
		return nil, err
	}
	for _, f := range [...]struct {
		key string
		v   uint64
	}{{`,"inode":`, n.Inode}, {`,"device":`, n.Device}, {`,"links":`, n.Links}, {`,"rdev":`, n.Rdev}} {
		if f.v != 0 {
			b = append(b, f.key...)
			b = strconv.AppendUint(b, f.v, 10)
		}
	}
	if n.LinkTarget != "" {
		b = append(b, `,"link_target":`...)
		b = appendJSONString(b, n.LinkTarget)
	}
	if len(n.Xattrs) > 0 {
		x, err := json.Marshal(n.Xattrs)
		if err != nil {
			return nil, err
		}
		b = append(b, `,"xattrs":`...)
		b = append(b, x...)
	}
	if len(n.Content) > 0 {
		b = append(b, `,"content":[`...)
		for i, id := range n.Content {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONID(b, id)
		}
		b = append(b, ']')
	}
	if n.Subtree != nil {
		b = append(b, `,"subtree":`...)
		b = appendJSONID(b, *n.Subtree)
	}
	return append(b, '}'), nil
}

func appendJSONID(b []byte, id ID) []byte {
	b = append(b, '"')
	b = hex.AppendEncode(b, id[:])
	return append(b, '"')
}

// appendJSONString quotes s as encoding/json does; only printable ASCII
// other than the characters it escapes takes the fast path.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// appendJSONTime encodes t as time.Time's MarshalJSON does.
func appendJSONTime(b []byte, t time.Time) ([]byte, error) {
	if y := t.Year(); y < 0 || y > 9999 {
		q, err := json.Marshal(t)
		if err != nil {
			return nil, err
		}
		return append(b, q...), nil
	}
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"'), nil
}

// decodeTree parses and validates a tree blob.
func decodeTree(b []byte) (*Tree, error) {
	if len(b) > maxTreeSize {
		return nil, fmt.Errorf("tree of %d bytes above limit", len(b))
	}
	var t Tree
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, fmt.Errorf("decoding tree: %w", err)
	}
	prev := ""
	for i, n := range t.Nodes {
		if n == nil {
			return nil, fmt.Errorf("tree entry %d is null", i)
		}
		if err := validName(n.Name); err != nil {
			return nil, fmt.Errorf("tree entry %d: %w", i, err)
		}
		if i > 0 && n.Name <= prev {
			return nil, fmt.Errorf("tree entries not sorted or duplicated at %q", n.Name)
		}
		prev = n.Name
		switch n.Type {
		case NodeDir:
			if n.Subtree == nil {
				return nil, fmt.Errorf("directory %q has no subtree", n.Name)
			}
		case NodeFile, NodeSymlink, NodeDev, NodeCharDev, NodeFifo, NodeSocket:
		default:
			return nil, fmt.Errorf("entry %q has unknown type %q", n.Name, n.Type)
		}
		if n.Size < 0 {
			return nil, fmt.Errorf("entry %q has negative size", n.Name)
		}
	}
	return &t, nil
}

// validName rejects names that could escape a restore target.
func validName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("invalid entry name %q", name)
	}
	return nil
}

// LoadTree loads and decodes a tree blob.
func (r *Repository) LoadTree(ctx context.Context, id ID) (*Tree, error) {
	b, err := r.LoadBlob(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("loading tree %s: %w", id.Short(), err)
	}
	t, err := decodeTree(b)
	if err != nil {
		return nil, fmt.Errorf("tree %s: %w", id.Short(), err)
	}
	return t, nil
}

// errSkipDir, returned by a walk function for a directory, skips it.
var errSkipDir = errors.New("skip directory")

// WalkFunc is called for every node; path is slash-separated and relative
// to the snapshot root.
type WalkFunc func(path string, n *Node) error

// walkTree visits the nodes of tree id depth first, in name order.
func (r *Repository) walkTree(ctx context.Context, id ID, prefix string, fn WalkFunc) error {
	t, err := r.LoadTree(ctx, id)
	if err != nil {
		return err
	}
	for _, n := range t.Nodes {
		if err := ctx.Err(); err != nil {
			return err
		}
		p := n.Name
		if prefix != "" {
			p = prefix + "/" + n.Name
		}
		err := fn(p, n)
		if errors.Is(err, errSkipDir) {
			continue
		}
		if err != nil {
			return err
		}
		if n.Type == NodeDir && n.Subtree != nil {
			if err := r.walkTree(ctx, *n.Subtree, p, fn); err != nil {
				return err
			}
		}
	}
	return nil
}

// Walk visits every node of a snapshot's tree.
func (r *Repository) Walk(ctx context.Context, snapID ID, fn WalkFunc) error {
	sn, err := r.LoadSnapshot(ctx, snapID)
	if err != nil {
		return err
	}
	return r.walkTree(ctx, sn.Tree, "", fn)
}
