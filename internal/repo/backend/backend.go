// Package backend stores the files of a holdfast backup repository.
//
// A repository is a set of immutable files, each identified by a file type
// (config, keys, data, index, snapshots, locks) and a name. Every file except
// the key files is encrypted by the repository and, except for the config,
// named by the BLAKE3 hash of its (encrypted) bytes, so a backend only ever
// sees opaque blobs and can verify them without any key. Implementations:
// Local (a directory tree) and S3 (any S3-compatible object store through
// minio-go). A backend reached through a holdfast agent can implement the same
// interface.
package backend

import (
	"context"
	"errors"
	"fmt"
	"os"
)

// FileType is the kind of a repository file; it is also the name of the
// directory (or key prefix) that holds files of that kind.
type FileType string

// The file types of a repository.
const (
	ConfigFile   FileType = "config"
	KeyFile      FileType = "keys"
	PackFile     FileType = "data"
	IndexFile    FileType = "index"
	SnapshotFile FileType = "snapshots"
	LockFile     FileType = "locks"
)

// AllTypes lists every file type, in the order a copy should restore them.
var AllTypes = []FileType{ConfigFile, KeyFile, PackFile, IndexFile, SnapshotFile, LockFile}

// Handle names one file of a repository. The config file has an empty Name.
type Handle struct {
	Type FileType
	Name string
}

// String returns the handle as a relative path ("data/ab/ab12...").
func (h Handle) String() string {
	switch {
	case h.Type == ConfigFile:
		return "config"
	case h.Type == PackFile && len(h.Name) >= 2:
		return fmt.Sprintf("data/%s/%s", h.Name[:2], h.Name)
	default:
		return string(h.Type) + "/" + h.Name
	}
}

// Valid reports whether the handle could name a file.
func (h Handle) Valid() error {
	switch h.Type {
	case ConfigFile:
		return nil
	case KeyFile, PackFile, IndexFile, SnapshotFile, LockFile:
	default:
		return fmt.Errorf("invalid file type %q", h.Type)
	}
	if h.Name == "" {
		return fmt.Errorf("empty name for %s file", h.Type)
	}
	for _, c := range h.Name {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '_') {
			return fmt.Errorf("invalid character %q in file name %q", c, h.Name)
		}
	}
	if h.Type == PackFile && len(h.Name) < 2 {
		return fmt.Errorf("pack name %q too short", h.Name)
	}
	return nil
}

// FileInfo describes a stored file.
type FileInfo struct {
	Name string
	Size int64
}

// ErrNotExist is returned (wrapped) when a file does not exist.
var ErrNotExist = errors.New("file does not exist")

// Backend stores the files of one repository. Files are written whole and
// never modified; Save must be atomic (a reader sees the whole file or none)
// and durable when it returns. Implementations are safe for concurrent use.
type Backend interface {
	// Location describes where the repository lives, for messages.
	Location() string
	// Create prepares an empty repository location; it fails if a config
	// file already exists.
	Create(ctx context.Context) error
	// Save stores data as the file h, atomically.
	Save(ctx context.Context, h Handle, data []byte) error
	// Load reads length bytes at offset of h; length 0 reads to the end.
	Load(ctx context.Context, h Handle, offset, length int64) ([]byte, error)
	// Stat returns the size of h, or an error wrapping ErrNotExist.
	Stat(ctx context.Context, h Handle) (FileInfo, error)
	// List calls fn for every file of type t, in no particular order.
	List(ctx context.Context, t FileType, fn func(FileInfo) error) error
	// Remove deletes h; removing a missing file is an error wrapping ErrNotExist.
	Remove(ctx context.Context, h Handle) error
	// Close releases resources held by the backend.
	Close() error
}

// FileSaver is implemented by backends that can store a finished file
// without it being copied into memory first. Packs are assembled in such a
// temporary file.
type FileSaver interface {
	// TempFile creates a temporary file for SaveFile.
	TempFile() (*os.File, error)
	// SaveFile stores the whole content of f as h, then closes f and
	// removes it; on error f is closed and removed as well.
	SaveFile(ctx context.Context, h Handle, f *os.File) error
}
