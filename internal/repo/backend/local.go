package backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// tmpPrefix marks files being written; List ignores them and a crash leaves
// them behind harmlessly.
const tmpPrefix = ".tmp-"

// Local is a repository in a directory of the local file system.
type Local struct {
	dir string
}

// NewLocal returns a backend for the repository at dir. The directory need
// not exist until Create.
func NewLocal(dir string) (*Local, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("resolving repository path %q: %w", dir, err)
	}
	return &Local{dir: abs}, nil
}

// Location returns the directory.
func (l *Local) Location() string { return l.dir }

// Dir returns the directory that holds the repository.
func (l *Local) Dir() string { return l.dir }

func (l *Local) path(h Handle) string {
	return filepath.Join(l.dir, filepath.FromSlash(h.String()))
}

// Create makes the directory tree of an empty repository.
func (l *Local) Create(ctx context.Context) error {
	if _, err := os.Lstat(filepath.Join(l.dir, "config")); err == nil {
		return fmt.Errorf("creating repository at %s: config already exists", l.dir)
	}
	for _, t := range []FileType{KeyFile, IndexFile, SnapshotFile, LockFile, PackFile} {
		if err := os.MkdirAll(filepath.Join(l.dir, string(t)), 0o700); err != nil {
			return fmt.Errorf("creating repository at %s: %w", l.dir, err)
		}
	}
	for i := 0; i < 256; i++ {
		if err := os.MkdirAll(filepath.Join(l.dir, "data", fmt.Sprintf("%02x", i)), 0o700); err != nil {
			return fmt.Errorf("creating repository at %s: %w", l.dir, err)
		}
	}
	return nil
}

// Save writes data to a temporary file, syncs it and renames it into place.
func (l *Local) Save(ctx context.Context, h Handle, data []byte) error {
	if err := h.Valid(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	final := l.path(h)
	dir := filepath.Dir(final)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("saving %s: %w", h, err)
	}
	f, err := os.CreateTemp(dir, tmpPrefix+"*")
	if err != nil {
		return fmt.Errorf("saving %s: %w", h, err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("saving %s: %w", h, err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("saving %s: %w", h, err)
	}
	if err := os.Chmod(tmp, 0o400); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("saving %s: %w", h, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("saving %s: %w", h, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

func wrapNotExist(h Handle, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %w", h, ErrNotExist)
	}
	return err
}

// TempFile creates a temporary file inside the repository (so SaveFile can
// rename it into place); List ignores it and prune removes leftovers.
func (l *Local) TempFile() (*os.File, error) {
	return os.CreateTemp(filepath.Join(l.dir, string(PackFile)), tmpPrefix+"*")
}

// SaveFile syncs f and renames it into place as h.
func (l *Local) SaveFile(ctx context.Context, h Handle, f *os.File) error {
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("saving %s: %w", h, err)
	}
	if err := h.Valid(); err != nil {
		return fail(err)
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Chmod(0o400); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("saving %s: %w", h, err)
	}
	final := l.path(h)
	if err := os.MkdirAll(filepath.Dir(final), 0o700); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("saving %s: %w", h, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("saving %s: %w", h, err)
	}
	if d, err := os.Open(filepath.Dir(final)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// Load reads a range of a file.
func (l *Local) Load(ctx context.Context, h Handle, offset, length int64) ([]byte, error) {
	if err := h.Valid(); err != nil {
		return nil, err
	}
	f, err := os.Open(l.path(h))
	if err != nil {
		return nil, wrapNotExist(h, err)
	}
	defer f.Close()
	if length == 0 {
		fi, err := f.Stat()
		if err != nil {
			return nil, fmt.Errorf("loading %s: %w", h, err)
		}
		length = fi.Size() - offset
		if length < 0 {
			return nil, fmt.Errorf("loading %s: offset %d beyond size %d", h, offset, fi.Size())
		}
	}
	buf := make([]byte, length)
	n, err := f.ReadAt(buf, offset)
	if err != nil && !(errors.Is(err, io.EOF) && int64(n) == length) {
		return nil, fmt.Errorf("loading %s at %d+%d: %w", h, offset, length, err)
	}
	return buf, nil
}

// Stat returns the size of a file.
func (l *Local) Stat(ctx context.Context, h Handle) (FileInfo, error) {
	if err := h.Valid(); err != nil {
		return FileInfo{}, err
	}
	fi, err := os.Stat(l.path(h))
	if err != nil {
		return FileInfo{}, wrapNotExist(h, err)
	}
	return FileInfo{Name: h.Name, Size: fi.Size()}, nil
}

// List calls fn for every file of type t, skipping temporary (dot) files.
func (l *Local) List(ctx context.Context, t FileType, fn func(FileInfo) error) error {
	if t == ConfigFile {
		fi, err := os.Stat(filepath.Join(l.dir, "config"))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		return fn(FileInfo{Name: "", Size: fi.Size()})
	}
	dirs := []string{filepath.Join(l.dir, string(t))}
	if t == PackFile {
		ents, err := os.ReadDir(dirs[0])
		if err != nil {
			return fmt.Errorf("listing %s: %w", t, err)
		}
		dirs = dirs[:0]
		for _, e := range ents {
			if e.IsDir() {
				dirs = append(dirs, filepath.Join(l.dir, string(t), e.Name()))
			}
		}
	}
	for _, d := range dirs {
		ents, err := os.ReadDir(d)
		if err != nil {
			return fmt.Errorf("listing %s: %w", t, err)
		}
		for _, e := range ents {
			if err := ctx.Err(); err != nil {
				return err
			}
			// No repository file name starts with a dot (Handle.Valid):
			// dot files are temporaries, ours (tmpPrefix) or another
			// writer's, such as bulk's .holdfast-part.* and
			// .holdfast-journal.* of a file arriving by bulk transfer.
			if e.IsDir() || strings.HasPrefix(e.Name(), ".") {
				continue
			}
			fi, err := e.Info()
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					continue
				}
				return fmt.Errorf("listing %s: %w", t, err)
			}
			if err := fn(FileInfo{Name: e.Name(), Size: fi.Size()}); err != nil {
				return err
			}
		}
	}
	return nil
}

// Remove deletes a file.
func (l *Local) Remove(ctx context.Context, h Handle) error {
	if err := h.Valid(); err != nil {
		return err
	}
	if err := os.Remove(l.path(h)); err != nil {
		return wrapNotExist(h, err)
	}
	return nil
}

// RemoveTemporary deletes leftover temporary files from interrupted writes.
func (l *Local) RemoveTemporary() (int, error) {
	n := 0
	err := filepath.WalkDir(l.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if !d.IsDir() && strings.HasPrefix(d.Name(), tmpPrefix) {
			if os.Remove(p) == nil {
				n++
			}
		}
		return nil
	})
	return n, err
}

// Close does nothing for a local directory.
func (l *Local) Close() error { return nil }
