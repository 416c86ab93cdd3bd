package repo

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

func sampleIndex() []byte {
	return encodeIndex([]IndexPack{{ID: ID{1}, Size: 4096, Blobs: []PackedBlob{
		{Type: DataBlob, ID: ID{2}, Offset: 0, Length: 100, RawLen: 200},
		{Type: TreeBlob, ID: ID{3}, Offset: 100, Length: 50, RawLen: 40},
	}}})
}

// sampleIndexV2 is a version 2 index: a blob alone and a group of two.
func sampleIndexV2() []byte {
	return encodeIndex([]IndexPack{{ID: ID{1}, Size: 4096, Blobs: []PackedBlob{
		{Type: DataBlob, ID: ID{2}, Offset: 0, Length: 100, RawLen: 200},
		{Type: DataBlob, Grouped: true, ID: ID{3}, Offset: 100, Length: 90, RawLen: 300},
		{Type: DataBlob, Grouped: true, ID: ID{4}, Offset: 100, Length: 90, RawLen: 20, GroupOff: 300},
	}}})
}

func FuzzDecodeIndex(f *testing.F) {
	f.Add(sampleIndex())
	f.Add(sampleIndexV2())
	f.Add([]byte("HFIX\x01\x00"))
	f.Add([]byte("HFIX\x01\xff\xff\xff\xff\x0f"))
	f.Fuzz(func(t *testing.T, b []byte) {
		packs, err := decodeIndex(b)
		if err != nil {
			return
		}
		// Whatever decodes must re-encode to an equivalent index.
		again, err := decodeIndex(encodeIndex(packs))
		if err != nil || len(again) != len(packs) {
			t.Fatalf("re-decoding a decoded index: %v", err)
		}
		for i, p := range packs {
			for j, pb := range p.Blobs {
				if int64(pb.Offset)+int64(pb.Length) > p.Size {
					t.Fatalf("blob outside its pack accepted: %+v in %d", pb, p.Size)
				}
				if pb.Grouped && int64(pb.GroupOff)+int64(pb.RawLen) > MaxGroupSize {
					t.Fatalf("member outside the largest group accepted: %+v", pb)
				}
				if again[i].Blobs[j] != pb {
					t.Fatalf("blob %+v re-decoded as %+v", pb, again[i].Blobs[j])
				}
			}
		}
	})
}

func FuzzDecodePackHeader(f *testing.F) {
	hdr := encodePackHeader([]PackedBlob{{Type: DataBlob, ID: ID{9}, Length: 64, RawLen: 10}, {Type: TreeBlob, ID: ID{8}, Length: 30, RawLen: 5}})
	f.Add(hdr, int64(94))
	f.Add(hdr[:40], int64(0))
	f.Add([]byte{}, int64(0))
	// Format 2: a blob, a group of two, a group of one.
	f.Add(encodePackHeader([]PackedBlob{
		{Type: DataBlob, ID: ID{9}, Length: 64, RawLen: 10},
		{Type: DataBlob, Grouped: true, ID: ID{7}, Offset: 64, Length: 50, RawLen: 30},
		{Type: TreeBlob, Grouped: true, ID: ID{6}, Offset: 64, Length: 50, RawLen: 3, GroupOff: 30},
		{Type: DataBlob, Grouped: true, ID: ID{5}, Offset: 114, Length: 29, RawLen: 0},
	}), int64(143))
	f.Fuzz(func(t *testing.T, b []byte, dataLen int64) {
		blobs, err := decodePackHeader(b, dataLen)
		if err != nil {
			return
		}
		// Objects (a blob, or a group's members) are contiguous; members
		// lie one after another in their group's plaintext.
		var end int64
		for i, pb := range blobs {
			if i > 0 && pb.sameObject(blobs[i-1]) {
				prev := blobs[i-1]
				if pb.GroupOff != prev.GroupOff+prev.RawLen || pb.Length != prev.Length {
					t.Fatalf("group members not contiguous: %+v after %+v", pb, prev)
				}
				continue
			}
			if int64(pb.Offset) != end || (pb.Grouped && pb.GroupOff != 0) {
				t.Fatalf("offsets not contiguous at %+v", pb)
			}
			end += int64(pb.Length)
		}
		if end != dataLen {
			t.Fatalf("entries cover %d, data %d", end, dataLen)
		}
		// What decodes re-encodes to the same header.
		if again := encodePackHeader(blobs); !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs:\n%x\n%x", again, b)
		}
	})
}

func FuzzPackTrailer(f *testing.F) {
	f.Add(make([]byte, 60))
	f.Add([]byte{1, 2, 3, 4, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		data, hdr, err := packTrailer(b)
		if err != nil {
			return
		}
		if len(data)+len(hdr)+4 != len(b) || len(hdr) < Overhead {
			t.Fatalf("bad split %d+%d of %d", len(data), len(hdr), len(b))
		}
	})
}

func FuzzDecodeTree(f *testing.F) {
	sub := ID{5}
	good, _ := encodeTree(&Tree{Nodes: []*Node{
		{Name: "a", Type: NodeFile, Size: 3, Content: []ID{{1}}, ModTime: time.Unix(1, 0)},
		{Name: "b", Type: NodeDir, Subtree: &sub, Xattrs: map[string][]byte{"user.x": []byte("y")}},
		{Name: "c", Type: NodeSymlink, LinkTarget: "../x"},
	}})
	f.Add(good)
	f.Add([]byte(`{"nodes":[{"name":"..","type":"dir","subtree":"` + sub.String() + `"}]}`))
	f.Add([]byte(`{"nodes":[null]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		tr, err := decodeTree(b)
		if err != nil {
			return
		}
		for _, n := range tr.Nodes {
			if validName(n.Name) != nil {
				t.Fatalf("unsafe name %q accepted", n.Name)
			}
			if n.Type == NodeDir && n.Subtree == nil {
				t.Fatal("directory without subtree accepted")
			}
		}
	})
}

func FuzzDecodeSnapshot(f *testing.F) {
	good, _ := json.Marshal(&Snapshot{Time: time.Unix(5, 0), Tree: ID{1}, Paths: []string{"/x"}, Hostname: "h"})
	f.Add(good)
	f.Add([]byte(`{"tree":"00"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		sn, err := decodeSnapshot(b)
		if err == nil && sn.Tree.IsNull() {
			t.Fatal("snapshot without tree accepted")
		}
	})
}

func FuzzParseKeyFile(f *testing.F) {
	mk, _ := newMasterKey()
	good, _ := wrapKey(mk, "pw", KDFParams{Time: 1, Memory: 64, Threads: 1})
	f.Add(good)
	f.Add([]byte(`{"version":1,"kdf":"argon2id","params":{"time":1,"memory":4294967295,"threads":1}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		kf, err := parseKeyFile(b)
		if err != nil {
			return
		}
		if kf.Params.Validate() != nil || len(kf.Salt) < 16 {
			t.Fatal("invalid key parameters accepted")
		}
	})
}

// FuzzDecodeObject feeds arbitrary ciphertext and arbitrary (validly
// encrypted) plaintext framing to the object decoder.
func FuzzDecodeObject(f *testing.F) {
	r, _ := newTestRepo(f)
	f.Add(r.encodeObject(bytes.Repeat([]byte("abc"), 100)), false)
	f.Add([]byte{1, 0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0}, true)
	f.Add([]byte{0}, true)
	f.Add([]byte{2, 0x24, 0x19, 0, 0, 0}, true)
	f.Fuzz(func(t *testing.T, b []byte, sealed bool) {
		if sealed {
			// Authentic ciphertext around arbitrary framing and payload,
			// through both decoders (restore's decodes in place).
			r.decodeObject(r.crypt.seal(nil, b), -1)
			r.decodeObject(r.crypt.seal(nil, b), 1000)
			if bp, _, err := r.openBlob(r.crypt.seal(nil, b), 1000); err == nil {
				putBuf(bp)
			}
			// As a group of unknown length, and a member of it.
			if bp, out, err := r.openBlob(r.crypt.seal(nil, b), -1); err == nil {
				if len(out) > MaxGroupSize {
					t.Fatalf("group of %d bytes decoded", len(out))
				}
				putBuf(bp)
			}
			var c objectCache
			loc := BlobLocation{PackedBlob: PackedBlob{Grouped: true, RawLen: 5, GroupOff: 3}}
			if out, err := r.openBlobAt(&c, loc, r.crypt.seal(nil, b)); err == nil && r.blobID(out) != loc.ID {
				t.Fatal("member accepted whose content does not match its id")
			}
			c.release()
			return
		}
		if _, err := r.decodeObject(b, -1); err == nil && len(b) < Overhead {
			t.Fatal("short object decoded")
		}
	})
}

func FuzzDecodeConfig(f *testing.F) {
	good, _ := json.Marshal(Config{Version: 1, ID: "x", Chunker: DefaultInitOptions().Chunker, PackSize: DefaultPackSize})
	f.Add(append([]byte{frameRaw}, good...))
	f.Add([]byte{frameRaw, '{', '}'})
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := decodeConfig(b)
		if err != nil {
			return
		}
		if cfg.Chunker.Validate() != nil || cfg.PackSize < MinPackSize || cfg.PackSize > MaxPackTarget {
			t.Fatalf("invalid config accepted: %+v", cfg)
		}
	})
}

func FuzzDecodeLock(f *testing.F) {
	good, _ := json.Marshal(lockInfo{Time: time.Unix(100, 0), Exclusive: true, Hostname: "h", PID: 4})
	f.Add(good)
	f.Add([]byte(`{"pid":-1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		li, err := decodeLock(b)
		if err == nil && (li.Time.IsZero() || li.PID < 0) {
			t.Fatalf("invalid lock accepted: %+v", li)
		}
	})
}

// FuzzEncodeTree checks that the tree encoder writes exactly what
// encoding/json writes, for any names, owners, link targets, sizes, times,
// extended attributes and content lists.
func FuzzEncodeTree(f *testing.F) {
	f.Add("a.go", "root", "../x\n", int64(3), int64(1700000000), int32(123456789), uint64(7), []byte("user.k"), 2, true)
	f.Add("<&>\"\\\x7f\u2028é\xff", "", "", int64(-1), int64(-62135596801), int32(0), uint64(0), []byte{}, 0, false)
	f.Add("x", "tab\t", "\x00", int64(1<<62), int64(253402300800), int32(-5), uint64(1<<63), []byte("\xff"), 40, true)
	f.Fuzz(func(t *testing.T, name, user, target string, size, sec int64, nsec int32, inode uint64, xkey []byte, nblobs int, sub bool) {
		zone := time.FixedZone("z", int(inode%86400)-43200)
		n := &Node{Name: name, Type: NodeFile, Mode: uint32(inode), UID: uint32(size), GID: uint32(sec), User: user, Group: target,
			Size: size, ModTime: time.Unix(sec, int64(nsec)), ChangeTime: time.Unix(sec/2, 0).In(zone), Inode: inode, Device: inode / 3,
			Links: uint64(nblobs), Rdev: uint64(size), LinkTarget: target}
		if len(xkey) > 0 {
			n.Xattrs = map[string][]byte{string(xkey): xkey, "user.b": nil}
		}
		for i := 0; i < nblobs%50; i++ {
			n.Content = append(n.Content, ID{byte(i), byte(sec)})
		}
		if sub {
			id := ID{9, byte(size)}
			n.Subtree = &id
		}
		for _, tr := range []*Tree{{}, {Nodes: []*Node{}}, {Nodes: []*Node{n}}, {Nodes: []*Node{n, {Name: name + "2", Type: NodeDir}}}} {
			want, werr := json.Marshal(tr)
			got, gerr := appendTreeJSON(nil, tr)
			if (werr != nil) != (gerr != nil) || !bytes.Equal(got, want) {
				t.Fatalf("tree encoding differs from encoding/json:\n got %s (%v)\nwant %s (%v)", got, gerr, want, werr)
			}
		}
	})
}
