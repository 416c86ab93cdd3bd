package pool

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"

	"github.com/holdfast/holdfast/internal/agent"
	"github.com/holdfast/holdfast/internal/bulk"
	"github.com/holdfast/holdfast/internal/peer"
	"github.com/holdfast/holdfast/internal/repo/backend"
)

// AdoptDir is the directory under the agent's bulk transfer root where
// backup clients stage pack files (AdoptDir/<repo>/<file>) before asking
// the pool to adopt them into the repository.
const AdoptDir = "pool-adopt"

// transferService is the name of the bulk transfer service
// (bulk.AgentService.Name); a pack can only arrive by bulk when it runs.
const transferService = "transfers"

// Adoption refusals, mapped to HTTP answers by the repository API.
var (
	// errAdoptRefused: the request itself is unacceptable (a path outside
	// the staging directory, a symlink, content that does not match its
	// name, a file type that is not adopted).
	errAdoptRefused = errors.New("adoption refused")
	// errAdoptConflict: the repository already holds a different file
	// under that name.
	errAdoptConflict = errors.New("a different file already has that name")
)

// BulkInfo is the agent's answer to GET /v1/pool/repos/{repo}/bulk: where a
// backup client sends packs by bulk transfer before adopting them.
type BulkInfo struct {
	// Listen is the agent's wire listener (host:port as it is bound),
	// which serves bulk transfers.
	Listen string `json:"listen"`
	// Dir is the staging directory relative to the transfer root.
	Dir string `json:"dir"`
}

// transferRoot is the directory bulk transfers land under.
func (s *Service) transferRoot() string {
	if s.opts.TransferRoot != "" {
		return s.opts.TransferRoot
	}
	return filepath.Join(s.a.StateDir(), bulk.InboxDir)
}

// stagingDir is the staging directory of repo, relative to the transfer
// root, with forward slashes (as a bulk destination).
func stagingDir(repo string) string { return path.Join(AdoptDir, repo) }

// registerAdoptAPI adds the routes of pack adoption to the repository API.
func (s *Service) registerAdoptAPI(api *http.ServeMux, fail func(http.ResponseWriter, error)) {
	api.HandleFunc("GET /v1/pool/repos/{repo}/bulk", func(w http.ResponseWriter, r *http.Request) {
		repo := r.PathValue("repo")
		if err := peer.ValidName(repo); err != nil {
			agent.WriteError(w, http.StatusBadRequest, fmt.Errorf("repository: %w", err))
			return
		}
		st := s.a.Status()
		if !slices.Contains(st.Services, transferService) {
			agent.WriteError(w, http.StatusNotImplemented, errors.New("this agent runs no bulk transfer service"))
			return
		}
		agent.WriteJSON(w, http.StatusOK, BulkInfo{Listen: st.Listen, Dir: stagingDir(repo)})
	})
	api.HandleFunc("POST /v1/pool/repos/{repo}/adopt/{type}/{name}", func(w http.ResponseWriter, r *http.Request) {
		h := handleOf(peer.FileRef{Type: r.PathValue("type"), Name: r.PathValue("name")})
		n, err := s.Adopt(r.Context(), r.PathValue("repo"), h, r.URL.Query().Get("from"))
		if err != nil {
			fail(w, err)
			return
		}
		agent.WriteJSON(w, http.StatusOK, backend.FileInfo{Name: h.Name, Size: n})
	})
}

// Adopt moves a pack file that arrived by bulk transfer into local
// repository repo as h, as Save would have stored it: from is the file's
// path relative to the transfer root and must lie in repo's staging
// directory (AdoptDir/<repo>/), be a regular file (not a symlink) and hash
// (BLAKE3) to h's name. Room is reserved in the pool first; the file is
// then renamed into the repository, its directory synced, and protection
// triggered. A refused file is removed from the staging directory. Adopting
// a pack the repository already holds with the same content succeeds; a
// different file under that name is a conflict. It returns the size.
func (s *Service) Adopt(ctx context.Context, repo string, h backend.Handle, from string) (int64, error) {
	if err := peer.ValidName(repo); err != nil {
		return 0, fmt.Errorf("%w: repository: %w", errAdoptRefused, err)
	}
	if err := h.Valid(); err != nil {
		return 0, fmt.Errorf("%w: %w", errAdoptRefused, err)
	}
	if h.Type != backend.PackFile {
		return 0, fmt.Errorf("%w: only pack files are adopted, not %s files", errAdoptRefused, h.Type)
	}
	rel, err := stagedRel(repo, from)
	if err != nil {
		return 0, err
	}
	repoDir := s.LocalRepoDir(repo)
	if _, err := os.Stat(filepath.Join(repoDir, "config")); err != nil {
		return 0, fmt.Errorf("repository %q: %w", repo, backend.ErrNotExist)
	}
	root, err := os.OpenRoot(s.transferRoot())
	if err != nil {
		return 0, fmt.Errorf("opening transfer root: %w", err)
	}
	defer root.Close()
	// Every component is checked without following links: a symlink in
	// the staging path could point anywhere on the agent.
	for _, p := range []string{AdoptDir, path.Join(AdoptDir, repo)} {
		fi, err := root.Lstat(p)
		if err != nil {
			return 0, fmt.Errorf("staged file %s: %w", from, backend.ErrNotExist)
		}
		if !fi.IsDir() {
			return 0, fmt.Errorf("%w: %s is not a directory", errAdoptRefused, p)
		}
	}
	fi, err := root.Lstat(rel)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 0, fmt.Errorf("staged file %s: %w", from, backend.ErrNotExist)
		}
		return 0, fmt.Errorf("staged file %s: %w", from, err)
	}
	if !fi.Mode().IsRegular() {
		_ = root.Remove(rel)
		return 0, fmt.Errorf("%w: staged file %s is not a regular file (%s)", errAdoptRefused, from, fi.Mode().Type())
	}
	size := fi.Size()
	if size > MaxAdoptSize {
		_ = root.Remove(rel)
		return 0, fmt.Errorf("%w: staged file %s has %d bytes, more than %d", errAdoptRefused, from, size, MaxAdoptSize)
	}
	if err := s.Reserve(ctx, size); err != nil {
		return 0, fmt.Errorf("adopting %s: %w", h, err)
	}
	added, err := s.adoptReserved(root, rel, filepath.Join(repoDir, filepath.FromSlash(h.String())), h, size)
	if err != nil || !added {
		s.release(size)
	}
	if err != nil {
		return 0, err
	}
	s.adoptedPacks.Add(1)
	s.adoptedBytes.Add(size)
	if s.met != nil {
		s.met.adoptedPacks.Inc()
		s.met.adoptedBytes.Add(float64(size))
	}
	if added {
		s.trigger()
	}
	return size, nil
}

// Adopted returns how many packs, and how many bytes, this agent has
// adopted from bulk transfers since it started.
func (s *Service) Adopted() (packs, bytes int64) {
	return s.adoptedPacks.Load(), s.adoptedBytes.Load()
}

// StagedMaxAge is how old a file in the staging directory gets before the
// pool removes it: what a client killed during a bulk transfer, or before
// asking for the adoption, left behind (bulk's partial files and journals
// of a pack, or a whole pack). No pack transfer takes that long.
const StagedMaxAge = 24 * time.Hour

// sweepStaged removes files in the staging directories last modified
// before cutoff, and staging directories left empty; it returns how many
// files it removed.
func (s *Service) sweepStaged(cutoff time.Time) int {
	dir := filepath.Join(s.transferRoot(), AdoptDir)
	repos, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	n := 0
	for _, r := range repos {
		if !r.IsDir() {
			continue
		}
		rd := filepath.Join(dir, r.Name())
		ents, err := os.ReadDir(rd)
		if err != nil {
			continue
		}
		for _, e := range ents {
			fi, err := e.Info()
			if err != nil || fi.IsDir() || !fi.ModTime().Before(cutoff) {
				continue
			}
			if os.Remove(filepath.Join(rd, e.Name())) == nil {
				n++
			}
		}
		_ = os.Remove(rd) // only when empty
	}
	if n > 0 {
		s.log.Info("removed stale staged pack files", "files", n, "dir", dir)
	}
	return n
}

// MaxAdoptSize bounds one adopted pack (the largest pack a repository
// writes is far smaller).
const MaxAdoptSize = 1 << 30

// stagedRel checks from and returns it as a clean path relative to the
// transfer root.
func stagedRel(repo, from string) (string, error) {
	if from == "" {
		return "", fmt.Errorf("%w: no staged file named (from=)", errAdoptRefused)
	}
	rel := strings.TrimPrefix(filepath.ToSlash(from), "./")
	if !filepath.IsLocal(rel) || path.Clean(rel) != rel {
		return "", fmt.Errorf("%w: %q is not a clean path under the transfer root", errAdoptRefused, from)
	}
	dir, base := path.Split(rel)
	if dir != stagingDir(repo)+"/" || base == "" || strings.HasPrefix(base, ".") {
		return "", fmt.Errorf("%w: %q is not a file in the staging directory %s/ of the transfer root", errAdoptRefused, from, stagingDir(repo))
	}
	return rel, nil
}

// adoptReserved moves the staged file into a temporary file next to final
// (a rename; a copy across file systems), checks its content there, where
// no client can change it any more, and links it into place.
// It reports whether the file was added (false: the same pack was already
// stored).
func (s *Service) adoptReserved(root *os.Root, rel, final string, h backend.Handle, size int64) (bool, error) {
	dir := filepath.Dir(final)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, fmt.Errorf("adopting %s: %w", h, err)
	}
	tmp, err := os.CreateTemp(dir, ".tmp-adopt-*")
	if err != nil {
		return false, fmt.Errorf("adopting %s: %w", h, err)
	}
	tmpName := tmp.Name()
	tmp.Close()
	defer os.Remove(tmpName)
	if err := renameStaged(root, rel, tmpName); err != nil {
		if !errors.Is(err, syscall.EXDEV) {
			return false, fmt.Errorf("adopting %s from %s: %w", h, rel, err)
		}
		if err := copyStaged(root, rel, tmpName); err != nil {
			return false, fmt.Errorf("adopting %s from %s: %w", h, rel, err)
		}
		_ = root.Remove(rel)
	}
	// O_NOFOLLOW: what was renamed is the staged name; if a client swapped
	// it for a symlink after the checks, this open fails.
	f, err := os.OpenFile(tmpName, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return false, fmt.Errorf("%w: staged file %s: %w", errAdoptRefused, rel, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("adopting %s: %w", h, err)
	}
	if !fi.Mode().IsRegular() || fi.Size() != size {
		return false, fmt.Errorf("%w: staged file %s changed while being adopted", errAdoptRefused, rel)
	}
	sum, err := hashFile(f)
	if err != nil {
		return false, fmt.Errorf("adopting %s: hashing: %w", h, err)
	}
	if sum != h.Name {
		return false, fmt.Errorf("%w: staged file %s hashes to %.16s…, not to its name %.16s…", errAdoptRefused, rel, sum, h.Name)
	}
	if err := f.Sync(); err != nil {
		return false, fmt.Errorf("adopting %s: %w", h, err)
	}
	if err := f.Chmod(0o400); err != nil {
		return false, fmt.Errorf("adopting %s: %w", h, err)
	}
	// A link never replaces an existing file: it fails instead, and the
	// existing file is then either the same pack or a conflict.
	if err := os.Link(tmpName, final); err != nil {
		if !errors.Is(err, fs.ErrExist) {
			return false, fmt.Errorf("adopting %s: %w", h, err)
		}
		ef, err := os.Open(final)
		if err != nil {
			return false, fmt.Errorf("adopting %s: %w", h, err)
		}
		have, err := hashFile(ef)
		ef.Close()
		if err != nil {
			return false, fmt.Errorf("adopting %s: hashing the stored file: %w", h, err)
		}
		if have != h.Name {
			return false, fmt.Errorf("adopting %s: %w (stored content hashes to %.16s…)", h, errAdoptConflict, have)
		}
		// Already stored: nothing new uses room.
		return false, nil
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return true, nil
}

// renameStaged renames the staged file rel to dst with renameat(2) from
// the staging directory opened inside root: a client that swaps a
// directory of the staging path for a symlink meanwhile cannot make it
// move a file from elsewhere.
func renameStaged(root *os.Root, rel, dst string) error {
	sd, err := root.Open(path.Dir(rel))
	if err != nil {
		return err
	}
	defer sd.Close()
	dd, err := os.Open(filepath.Dir(dst))
	if err != nil {
		return err
	}
	defer dd.Close()
	if err := unix.Renameat(int(sd.Fd()), path.Base(rel), int(dd.Fd()), filepath.Base(dst)); err != nil {
		return &os.LinkError{Op: "renameat", Old: rel, New: dst, Err: err}
	}
	return nil
}

// copyStaged copies the staged file rel to dst (an adoption across file
// systems) and syncs it.
func copyStaged(root *os.Root, rel, dst string) error {
	in, err := root.OpenFile(rel, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// hashFile returns the hex BLAKE3 hash of f's content: a repository file's
// name.
func hashFile(f *os.File) (string, error) {
	h := blake3.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, 1<<62)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
