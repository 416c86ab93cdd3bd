//go:build tools

package tools

import (
	_ "github.com/digitalocean/go-qemu/qmp"
	_ "github.com/hanwen/go-fuse/v2/fs"
	_ "github.com/hashicorp/memberlist"
	_ "github.com/johannesboyne/gofakes3"
	_ "github.com/klauspost/compress/zstd"
	_ "github.com/klauspost/reedsolomon"
	_ "github.com/minio/minio-go/v7"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/restic/chunker"
	_ "github.com/schollz/progressbar/v3"
	_ "github.com/spf13/cobra"
	_ "github.com/vishvananda/netlink"
	_ "github.com/vishvananda/netns"
	_ "github.com/zeebo/blake3"
	_ "go.etcd.io/bbolt"
	_ "golang.org/x/crypto/argon2"
	_ "golang.org/x/crypto/chacha20poly1305"
	_ "golang.org/x/sys/unix"
)
