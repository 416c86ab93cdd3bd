package quickstart

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/holdfast/holdfast/internal/peer"
	"github.com/holdfast/holdfast/internal/pool"
)

// BackupResult tells what the backup part of a run did.
type BackupResult struct {
	Source        string   `json:"source"`
	Snapshot      string   `json:"snapshot"`
	Files         int64    `json:"files"`
	Bytes         int64    `json:"bytes"`
	Scheme        string   `json:"scheme"`
	Protection    int      `json:"protection"`
	ProtectedIn   string   `json:"protected_in"`
	ShardHolders  []string `json:"shard_holders"`
	PlaintextSeen []string `json:"plaintext_seen_on,omitempty"`
	Lost          []string `json:"lost"`
	RestoredFrom  int      `json:"restored_from_peers"`
	RestoredFiles int64    `json:"restored_files"`
	Verified      bool     `json:"verified"`
}

// repoName is the repository the quick start backs up into, in the first
// agent's local pool portion.
const repoName = "quickstart"

func backupProtectRestore(ctx context.Context, opts Options, dir string, nodes []*node, scheme peer.Scheme, out io.Writer) (*BackupResult, error) {
	origin := nodes[0]
	res := &BackupResult{Scheme: fmt.Sprintf("%d+%d", scheme.K, scheme.M)}
	src, marker := opts.Data, ""
	if src == "" {
		src = filepath.Join(dir, "data")
		var err error
		if marker, err = makeDemoData(src, opts.DataSize); err != nil {
			return nil, err
		}
	}
	res.Source = src
	password, err := randomPassword()
	if err != nil {
		return nil, err
	}

	fmt.Fprintf(out, "\n==> backing up %s to %s (deduplicated, compressed, encrypted; key wrapped by a generated passphrase)\n", src, origin.name)
	sn, sum, err := pool.BackupToAgent(ctx, origin.dir, repoName, password, []string{src}, opts.Logger)
	if err != nil {
		return nil, fmt.Errorf("quickstart: backup: %w", err)
	}
	res.Snapshot, res.Files, res.Bytes = sn.ID.String(), sum.TotalFiles, sum.TotalBytes
	fmt.Fprintf(out, "    snapshot %s: %d files, %s\n", sn.ID.String()[:12], sum.TotalFiles, size(sum.TotalBytes))

	fmt.Fprintf(out, "==> %s erasure-codes the backup's files (%d data + %d parity shards) onto its peers\n", origin.name, scheme.K, scheme.M)
	protectStart := time.Now()
	if _, err := pool.Protect(ctx, origin.dir); err != nil {
		return nil, fmt.Errorf("quickstart: starting protection: %w", err)
	}
	st, _, err := pool.WaitProtected(ctx, origin.dir, scheme.M)
	if err != nil {
		return nil, fmt.Errorf("quickstart: %w", err)
	}
	res.Protection, res.ProtectedIn = st.Protection, time.Since(protectStart).Round(time.Millisecond).String()
	for _, n := range nodes[1:] {
		pst, err := pool.GetStatus(ctx, n.dir)
		if err != nil {
			return nil, fmt.Errorf("quickstart: pool status of %s: %w", n.name, err)
		}
		for _, l := range pst.Lent {
			if l.Origin == origin.name && l.Shards > 0 {
				res.ShardHolders = append(res.ShardHolders, n.name)
				fmt.Fprintf(out, "    %s holds %d shards (%s) for %s\n", n.name, l.Shards, size(l.Bytes), origin.name)
			}
		}
	}
	fmt.Fprintf(out, "    protection level %d (survives %d more peer losses), %s after the backup ended\n", st.Protection, st.Protection, res.ProtectedIn)

	if marker != "" {
		for _, n := range nodes[1:] {
			found, err := containsBytes(n.dir, []byte(marker))
			if err != nil {
				return nil, err
			}
			if found {
				res.PlaintextSeen = append(res.PlaintextSeen, n.name)
			}
		}
		if len(res.PlaintextSeen) > 0 {
			return res, fmt.Errorf("quickstart: plaintext of the backup found on peers %v", res.PlaintextSeen)
		}
		fmt.Fprintf(out, "    no peer's state holds the plaintext marker %q\n", marker)
	}

	// Disaster: the origin loses everything, and m peers die with it.
	lost := append([]*node{origin}, nodes[1:1+scheme.M]...)
	survivor := nodes[len(nodes)-1]
	fmt.Fprintf(out, "==> disaster: SIGKILL %s (the origin) and %d peers (%s), delete %s's state and pool\n", origin.name, scheme.M, names(lost[1:]), origin.name)
	for _, n := range lost {
		n.kill()
		res.Lost = append(res.Lost, n.name)
	}
	if err := os.RemoveAll(origin.dir); err != nil {
		return nil, fmt.Errorf("quickstart: destroying %s: %w", origin.name, err)
	}

	target := filepath.Join(dir, "restored")
	fmt.Fprintf(out, "==> restoring %s's backup through %s from the surviving peers' shards\n", origin.name, survivor.name)
	rr, err := pool.RestoreThroughAgent(ctx, survivor.dir, pool.RestoreOptions{
		Origin: origin.name, Repo: repoName, Password: password, Target: target,
		Dest: filepath.Join(dir, "rebuilt"), Logger: opts.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("quickstart: restore from peers: %w", err)
	}
	res.RestoredFrom = len(nodes) - len(lost)
	if rr.Restore != nil {
		res.RestoredFiles = rr.Restore.Files
	}
	restored := filepath.Join(target, strings.TrimPrefix(src, string(filepath.Separator)))
	if _, err := os.Stat(restored); err != nil {
		restored = filepath.Join(target, filepath.Base(src))
	}
	if err := sameTree(src, restored); err != nil {
		return res, fmt.Errorf("quickstart: restored tree differs from the source: %w", err)
	}
	res.Verified = true
	fmt.Fprintf(out, "    snapshot %s rebuilt from %d files' shards and restored to %s\n", rr.Snapshot[:12], rr.Rebuild.Files, restored)
	fmt.Fprintf(out, "    verified: every file byte-identical to %s\n", src)
	return res, nil
}

func (n *node) kill() {
	if n.cmd == nil || n.cmd.Process == nil {
		return
	}
	_ = n.cmd.Process.Signal(syscall.SIGKILL)
	if n.exited != nil {
		err := <-n.exited
		n.exited <- err
	}
}

func names(ns []*node) string {
	var s []string
	for _, n := range ns {
		s = append(s, n.name)
	}
	return strings.Join(s, ", ")
}

func randomPassword() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("quickstart: generating a passphrase: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// makeDemoData writes a tree of about size bytes: text files that carry a
// marker string (to look for on peers afterwards), a duplicated file (to
// show deduplication), random binary files and a symlink. It returns the
// marker.
func makeDemoData(dir string, size int64) (string, error) {
	tag := make([]byte, 6)
	if _, err := rand.Read(tag); err != nil {
		return "", err
	}
	marker := "HOLDFAST-QUICKSTART-PLAINTEXT-" + hex.EncodeToString(tag)
	for _, d := range []string{"docs", "photos", "src"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return "", fmt.Errorf("quickstart: making demo data: %w", err)
		}
	}
	line := []byte(marker + " the quick brown fox keeps its data safe\n")
	text := bytes.Repeat(line, int(size/8)/len(line)+1)
	var written int64
	write := func(name string, data []byte) error {
		written += int64(len(data))
		return os.WriteFile(filepath.Join(dir, name), data, 0o644)
	}
	if err := write("docs/notes.txt", text); err != nil {
		return "", err
	}
	if err := write("docs/notes-copy.txt", text); err != nil {
		return "", err
	}
	for i := 0; written < size; i++ {
		n := min(size-written, 1<<20+int64(i)*4099)
		b := make([]byte, n)
		if _, err := rand.Read(b); err != nil {
			return "", err
		}
		if err := write(fmt.Sprintf("photos/img%03d.raw", i), b); err != nil {
			return "", err
		}
	}
	if err := write("src/main.go", []byte("package main\n\nfunc main() { println(\""+marker+"\") }\n")); err != nil {
		return "", err
	}
	if err := os.Symlink("../docs/notes.txt", filepath.Join(dir, "src", "notes-link")); err != nil {
		return "", err
	}
	return marker, nil
}

// containsBytes reports whether any regular file under dir contains needle.
func containsBytes(dir string, needle []byte) (bool, error) {
	found := false
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.Type().IsRegular() || found {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		found = bytes.Contains(data, needle)
		return nil
	})
	return found, err
}

// sameTree compares two trees: names, types, modes, symlink targets and
// file contents.
func sameTree(want, got string) error {
	n := 0
	err := filepath.WalkDir(want, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(want, p)
		q := filepath.Join(got, rel)
		wi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		gi, err := os.Lstat(q)
		if err != nil {
			return fmt.Errorf("%s: missing from the restore: %w", rel, err)
		}
		if wi.Mode() != gi.Mode() {
			return fmt.Errorf("%s: mode %v, restored as %v", rel, wi.Mode(), gi.Mode())
		}
		switch {
		case wi.Mode()&fs.ModeSymlink != 0:
			wl, _ := os.Readlink(p)
			gl, _ := os.Readlink(q)
			if wl != gl {
				return fmt.Errorf("%s: symlink to %q, restored to %q", rel, wl, gl)
			}
		case wi.Mode().IsRegular():
			a, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			b, err := os.ReadFile(q)
			if err != nil {
				return err
			}
			if !bytes.Equal(a, b) {
				return fmt.Errorf("%s: content differs", rel)
			}
			n++
		}
		return nil
	})
	if err == nil && n == 0 {
		return errors.New("no files compared")
	}
	return err
}

func size(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
