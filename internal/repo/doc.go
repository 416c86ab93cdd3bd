// Package repo is holdfast's backup repository: content-defined chunks,
// deduplicated by a keyed hash, compressed with zstd and encrypted with
// AES-256-GCM, stored in pack files on a pluggable backend.
//
// # Using it
//
//	be, _ := backend.Open("/srv/backups")          // or "s3:host/bucket/prefix"
//	r, _ := repo.Init(ctx, be, pass, repo.DefaultInitOptions())
//	r, _ = repo.Open(ctx, be, pass, repo.OpenOptions{Logger: log})
//	sn, sum, err := r.Backup(ctx, []string{"/home"}, repo.BackupOptions{Tags: []string{"daily"}})
//	// errors.Is(err, repo.ErrPartial): saved, but some files were unreadable
//	_, err = r.Restore(ctx, sn.ID, "/tmp/restore", repo.RestoreOptions{})
//	res, err := r.Check(ctx, repo.CheckOptions{ReadData: true})
//	groups, err := r.Forget(ctx, repo.ForgetPolicy{Daily: 7, Weekly: 4}, false)
//	pr, err := r.Prune(ctx, repo.PruneOptions{})
//
// Also: Snapshots, FindSnapshot ("latest" or an ID prefix), Ls, Diff, Cat,
// Stats, Walk, Keys/AddKey/RemoveKey, Lock/Unlock. A Repository is safe for
// concurrent use. Errors to test with errors.Is: ErrWrongPassword,
// ErrNoRepository, ErrLocked, ErrPartial, ErrRestoreIncomplete,
// ErrCheckFailed.
//
// # On-disk format
//
// A repository is a set of immutable files, written once (atomically) and
// never modified:
//
//	config                 repository ID, chunker and pack parameters (encrypted)
//	keys/<id>              the master key wrapped by a passphrase (argon2id + AES-256-GCM); JSON
//	data/<2 hex>/<id>      pack files
//	index/<id>             which blobs are in which pack, where
//	snapshots/<id>         one per backup: time, host, paths, tags, parent, root tree
//	locks/<id>             who is using the repository
//
// Key files are the only files holding anything in the clear, and that is
// only KDF parameters, a salt and the wrapped key. Every other file is
// nonce ‖ AES-256-GCM(ciphertext) ‖ tag, and every file but config is
// named by the BLAKE3-256 hash of its bytes, so a copy can be verified, and
// moved between stores, without any key. A repository can be opened from
// nothing but these files (the peer pool relies on that).
//
// Plaintext objects start with one framing byte: 0 raw, 1 zstd, 2 zstd
// without the frame's magic number. Packs hold objects, each encrypted on
// its own, then an encrypted header listing each blob's type (data or
// tree), ID, stored length and plaintext length, then the header's length
// (4 bytes, little endian). Blob IDs are BLAKE3 keyed with a secret from
// the master key, so IDs reveal nothing about content; the FastCDC gear
// table is derived from the same secret. Index files are a compact binary
// list of packs and blobs (see index.go), compressed and encrypted.
// Chunks that look random (the byte histogram of three 8 KiB samples is
// near uniform) are stored raw without trying to compress them.
//
// # Format versions
//
// The config's version says which layout a repository uses; both are read.
//
// Version 1: every blob is its own object in its pack, compressed alone
// (zstd level 3 by default); index files are version 1.
//
// Version 2 (new repositories): data blobs shorter than 256 KiB (small
// files, the tails of large ones) are stored in groups: their plaintexts
// are concatenated, up to at least 512 KiB, and compressed together as one
// object, so that each small file is compressed with its neighbours as
// context. A group is one header entry (type 2, the group's stored length,
// its member count) followed by one entry per member (type 0x80|blob type,
// ID, stored length 0, plaintext length), see pack.go; index files that
// list grouped blobs are version 2 and give each member's offset in its
// group's plaintext. Data is compressed with zstd level 1 by default (with
// groups, small files end up smaller than level 3 made them one by one), and
// chunks average 512 KiB. Reading a grouped blob decodes its group (restore,
// check and prune decode each group once for all its members); a bit flip
// in a group damages all of its members, and check names them all. Prune
// copies a group whose members are all still used as it is, and stores the
// used members of a group that also holds unused blobs again, in new
// groups. Trees are never grouped. Older holdfast versions refuse a version 2
// repository (unsupported repository version); new backups into a
// version 1 repository keep the version 1 layout. Trees are JSON lists of nodes (name, type, mode, owner, times,
// inode, link count, xattrs, content blob IDs or subtree ID), sorted by
// name, stored as tree blobs; identical directories share one tree blob.
//
// # Concurrency and crash safety
//
// Backups take shared locks, forget and prune exclusive ones (see lock.go
// for the scheme). A backup writes packs, then index files (at least every
// few seconds), then the snapshot last; a backup killed at any point leaves
// a valid repository whose indexed packs the next backup reuses. Prune
// writes new packs, then the new index, then deletes old index files, then
// old packs, so an interrupted prune loses nothing.
//
// # Backends
//
// Storage is behind backend.Backend (List, Stat, ranged Load, Save,
// Remove by file type and name): a local directory and S3 through
// minio-go are implemented; a backend that reaches a holdfast agent over
// the wire fits the same interface.
package repo
