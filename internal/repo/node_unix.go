package repo

import (
	"errors"
	"os"
	"os/user"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// maxXattrSize bounds the extended attributes read from one file.
const maxXattrSize = 64 << 10

// idNames caches user and group names.
type idNames struct {
	mu     sync.Mutex
	users  map[uint32]string
	groups map[uint32]string
}

func newIDNames() *idNames {
	return &idNames{users: map[uint32]string{}, groups: map[uint32]string{}}
}

func (c *idNames) user(uid uint32) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n, ok := c.users[uid]; ok {
		return n
	}
	n := ""
	if u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil {
		n = u.Username
	}
	c.users[uid] = n
	return n
}

func (c *idNames) group(gid uint32) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n, ok := c.groups[gid]; ok {
		return n
	}
	n := ""
	if g, err := user.LookupGroupId(strconv.FormatUint(uint64(gid), 10)); err == nil {
		n = g.Name
	}
	c.groups[gid] = n
	return n
}

func nodeType(m os.FileMode) string {
	switch {
	case m.IsRegular():
		return NodeFile
	case m.IsDir():
		return NodeDir
	case m&os.ModeSymlink != 0:
		return NodeSymlink
	case m&os.ModeCharDevice != 0:
		return NodeCharDev
	case m&os.ModeDevice != 0:
		return NodeDev
	case m&os.ModeNamedPipe != 0:
		return NodeFifo
	case m&os.ModeSocket != 0:
		return NodeSocket
	}
	return ""
}

// nodeFromInfo fills a node's metadata from lstat results.
func nodeFromInfo(path string, fi os.FileInfo, names *idNames) (*Node, error) {
	n := &Node{Name: fi.Name(), Type: nodeType(fi.Mode()), ModTime: fi.ModTime()}
	if n.Type == "" {
		return nil, errors.New("unsupported file type")
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil, errors.New("no stat information")
	}
	n.Mode = st.Mode & 07777
	n.UID, n.GID = st.Uid, st.Gid
	n.User, n.Group = names.user(st.Uid), names.group(st.Gid)
	n.ChangeTime = time.Unix(st.Ctim.Sec, st.Ctim.Nsec)
	n.ModTime = time.Unix(st.Mtim.Sec, st.Mtim.Nsec)
	n.Inode = st.Ino
	n.Device = st.Dev
	n.Links = uint64(st.Nlink)
	if n.Type == NodeFile {
		n.Size = st.Size
	}
	if n.Type == NodeDev || n.Type == NodeCharDev {
		n.Rdev = st.Rdev
	}
	if n.Type == NodeSymlink {
		t, err := os.Readlink(path)
		if err != nil {
			return nil, err
		}
		n.LinkTarget = t
	}
	if n.Type == NodeFile || n.Type == NodeDir || n.Type == NodeSymlink {
		n.Xattrs = readXattrs(path)
	}
	return n, nil
}

// readXattrs returns the extended attributes of path (without following
// symlinks), or nil when there are none or the file system has none.
func readXattrs(path string) map[string][]byte {
	var buf [4096]byte
	sz, err := unix.Llistxattr(path, buf[:])
	if err != nil || sz <= 0 {
		return nil
	}
	out := map[string][]byte{}
	total := 0
	for _, name := range splitNul(buf[:sz]) {
		vsz, err := unix.Lgetxattr(path, name, nil)
		if err != nil || vsz < 0 || total+vsz > maxXattrSize {
			continue
		}
		v := make([]byte, vsz)
		vsz, err = unix.Lgetxattr(path, name, v)
		if err != nil {
			continue
		}
		total += vsz
		out[name] = v[:vsz]
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

func splitNul(b []byte) []string {
	var out []string
	start := 0
	for i, c := range b {
		if c == 0 {
			if i > start {
				out = append(out, string(b[start:i]))
			}
			start = i + 1
		}
	}
	return out
}
