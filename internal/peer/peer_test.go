package peer

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func randData(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestCodecRebuildsFromAnyK(t *testing.T) {
	for _, tc := range []struct {
		k, m, size int
		missing    []int
	}{
		{4, 2, 1 << 20, nil},
		{4, 2, 1<<20 + 3, []int{0, 1}},       // two data shards lost
		{4, 2, 12345, []int{4, 5}},           // both parity lost
		{4, 2, 7, []int{1, 5}},               // tiny file
		{2, 2, 0, []int{0, 1}},               // empty file, data lost
		{10, 4, 999_999, []int{0, 3, 9, 12}}, // wide scheme
		{1, 1, 100, []int{0}},                // mirror
	} {
		t.Run(fmt.Sprintf("%d+%d/%d/%v", tc.k, tc.m, tc.size, tc.missing), func(t *testing.T) {
			c, err := NewCodec(Scheme{K: tc.k, M: tc.m})
			if err != nil {
				t.Fatal(err)
			}
			data := randData(uint64(tc.size), tc.size)
			shards, err := c.Encode(data)
			if err != nil {
				t.Fatal(err)
			}
			for i := range shards {
				one, err := c.Shard(data, i)
				if err != nil || !bytes.Equal(one, shards[i]) {
					t.Fatalf("Shard(%d) differs from Encode's (err %v)", i, err)
				}
			}
			want := make([][]byte, len(shards))
			for i := range shards {
				want[i] = bytes.Clone(shards[i])
			}
			for _, i := range tc.missing {
				shards[i] = nil
			}
			got, all, err := c.Rebuild(shards, int64(tc.size))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatal("rebuilt file differs")
			}
			for i := range all {
				if !bytes.Equal(all[i], want[i]) {
					t.Errorf("recomputed shard %d differs", i)
				}
			}
		})
	}
}

func TestCodecRefusesTooFewOrWrongShards(t *testing.T) {
	c, _ := NewCodec(Scheme{K: 3, M: 2})
	data := randData(1, 1000)
	shards, _ := c.Encode(data)
	few := [][]byte{shards[0], nil, nil, nil, shards[4]}
	if _, _, err := c.Rebuild(few, 1000); !errors.Is(err, ErrTooFewShards) {
		t.Errorf("2 of 3: %v, want ErrTooFewShards", err)
	}
	short := [][]byte{shards[0][:10], shards[1], shards[2], nil, nil}
	if _, _, err := c.Rebuild(short, 1000); err == nil || !strings.Contains(err.Error(), "bytes, want") {
		t.Errorf("short shard: %v", err)
	}
	for _, s := range []Scheme{{0, 1}, {1, 0}, {33, 1}, {4, 17}} {
		if _, err := NewCodec(s); err == nil {
			t.Errorf("scheme %v accepted", s)
		}
	}
}

func TestProtectionLevel(t *testing.T) {
	for _, tc := range []struct {
		name    string
		k, m    int
		holders []string
		down    []string
		want    int
	}{
		{"distinct 4+2", 4, 2, []string{"a", "b", "c", "d", "e", "f"}, nil, 2},
		{"distinct 4+2 one down", 4, 2, []string{"a", "b", "c", "d", "e", "f"}, []string{"c"}, 1},
		{"distinct 4+2 three down", 4, 2, []string{"a", "b", "c", "d", "e", "f"}, []string{"a", "b", "c"}, -1},
		{"doubled on one peer", 2, 2, []string{"a", "a", "b", "c"}, nil, 1},
		{"all on one peer", 2, 1, []string{"a", "a", "a"}, nil, 0},
		{"unplaced shard", 2, 2, []string{"a", "b", "c", ""}, nil, 1},
		{"exactly k left", 2, 2, []string{"a", "b", "c", "d"}, []string{"a", "b"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := &FileEntry{Scheme: Scheme{K: tc.k, M: tc.m}}
			for _, h := range tc.holders {
				e.Shards = append(e.Shards, Shard{Peer: h})
			}
			down := map[string]bool{}
			for _, d := range tc.down {
				down[d] = true
			}
			if got := e.Protection(func(p string) bool { return !down[p] }); got != tc.want {
				t.Errorf("protection %d, want %d", got, tc.want)
			}
		})
	}
}

func TestPlace(t *testing.T) {
	c := func(name, dom string, free int64, ok bool) Candidate {
		return Candidate{Name: name, Domain: dom, Free: free, Healthy: ok}
	}
	for _, tc := range []struct {
		name    string
		cands   []Candidate
		need    int
		size    int64
		exclude []string
		want    string // chosen peers joined, "" with wantErr
		wantErr bool
	}{
		{"distinct by free space", []Candidate{c("a", "a", 10, true), c("b", "b", 30, true), c("c", "c", 20, true)}, 3, 5, nil, "b,c,a", false},
		{"spread over domains first", []Candidate{c("a", "r1", 100, true), c("b", "r1", 90, true), c("c", "r2", 10, true)}, 2, 5, nil, "a,c", false},
		{"unhealthy skipped", []Candidate{c("a", "a", 100, false), c("b", "b", 10, true), c("c", "c", 10, true)}, 2, 5, nil, "b,c", false},
		{"full skipped", []Candidate{c("a", "a", 4, true), c("b", "b", 10, true), c("c", "c", 10, true)}, 2, 5, nil, "b,c", false},
		{"reuse when too few peers", []Candidate{c("a", "a", 100, true), c("b", "b", 100, true)}, 4, 5, nil, "a,b,a,b", false},
		{"excluded holder", []Candidate{c("a", "a", 100, true), c("b", "b", 50, true)}, 1, 5, []string{"a"}, "b", false},
		{"nowhere", []Candidate{c("a", "a", 4, true)}, 1, 5, nil, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ex := map[string]bool{}
			for _, e := range tc.exclude {
				ex[e] = true
			}
			got, err := Place(tc.cands, tc.need, tc.size, map[string]int{}, map[string]int{}, ex)
			if tc.wantErr {
				if !errors.Is(err, ErrNoPlacement) {
					t.Fatalf("err %v, want ErrNoPlacement", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s := strings.Join(got, ","); s != tc.want {
				t.Errorf("placed on %s, want %s", s, tc.want)
			}
		})
	}
}

func TestStorePiecesChecksumsAndAdmission(t *testing.T) {
	dir := t.TempDir()
	capacity := int64(1000)
	st, err := OpenStore(dir, func(held, n int64) error {
		if held+n > capacity {
			return fmt.Errorf("pool full")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	id := ShardID{Ref: FileRef{Repo: "r", Type: "data", Name: "p1"}, Idx: 2}
	shard := randData(3, 600)
	sum := SumOf(shard)
	// Two pieces: the shard appears only after the last, checked.
	if err := st.Put("o", PutHeader{ShardID: id, Offset: 0, Total: 600, Sum: sum}, shard[:400]); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Read("o", id, 0, 0); !errors.Is(err, ErrNoShard) {
		t.Fatalf("half-written shard readable: %v", err)
	}
	// The reservation counts against admission meanwhile.
	other := ShardID{Ref: id.Ref, Idx: 3}
	if err := st.Put("o", PutHeader{ShardID: other, Total: 500, Sum: sum}, make([]byte, 10)); err == nil {
		t.Fatal("admission ignored a reservation in progress")
	}
	if err := st.Put("o", PutHeader{ShardID: id, Offset: 400, Total: 600, Sum: sum}, shard[400:]); err != nil {
		t.Fatal(err)
	}
	got, err := st.Read("o", id, 0, 0)
	if err != nil || !bytes.Equal(got, shard) {
		t.Fatalf("read back: %v", err)
	}
	if held, by := st.Held(); held != 600 || by["o"] != 600 {
		t.Errorf("held %d %v, want 600", held, by)
	}
	// A corrupted transfer is refused and leaves nothing.
	bad := bytes.Clone(shard[:300])
	bad[5] ^= 1
	if err := st.Put("o", PutHeader{ShardID: ShardID{Ref: id.Ref, Idx: 4}, Total: 300, Sum: SumOf(shard[:300])}, bad); err == nil {
		t.Fatal("corrupted shard accepted")
	}
	// Proofs answer over the bytes held.
	ch := NewChallenge(id, 600, 100)
	want, _ := ch.Answer(shard)
	if ans, err := st.Prove("o", ch); err != nil || ans != want {
		t.Errorf("proof %v %v", ans, err)
	}
	// Unsafe names are refused.
	for _, o := range []string{"..", "a/b", ""} {
		if err := st.Put(o, PutHeader{ShardID: id, Total: 1}, []byte{1}); err == nil {
			t.Errorf("origin %q accepted", o)
		}
	}
	// Reopen: the count survives; an unfinished upload is cleaned.
	os.WriteFile(filepath.Join(dir, "o", "r", "data", "x.0.part"), []byte("junk"), 0o600)
	st2, err := OpenStore(dir, func(int64, int64) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if held, _ := st2.Held(); held != 600 {
		t.Errorf("held after reopen %d, want 600", held)
	}
	l, _ := st2.List("o")
	if len(l) != 1 || l[0].ShardID != id || l[0].Size != 600 {
		t.Errorf("list %+v", l)
	}
	if err := st2.Delete("o", id); err != nil {
		t.Fatal(err)
	}
	if held, _ := st2.Held(); held != 0 {
		t.Errorf("held after delete %d", held)
	}
}

func TestShardMapRoundTripAndValidation(t *testing.T) {
	m := NewShardMap("a")
	e := &FileEntry{FileRef: FileRef{Repo: "r", Type: "data", Name: "p"}, Size: 10, Scheme: Scheme{K: 2, M: 1}, ShardSize: 5, Shards: []Shard{{Peer: "b"}, {Peer: "c"}, {Peer: ""}}}
	m.Files[e.Key()] = e
	b, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeShardMap(b)
	if err != nil || got.Files[e.Key()].Shards[1].Peer != "c" {
		t.Fatalf("round trip: %v", err)
	}
	for name, bad := range map[string]string{
		"bad origin":    `{"origin":"../x","files":{}}`,
		"key mismatch":  `{"origin":"a","files":{"r/data/q":{"repo":"r","type":"data","name":"p","size":10,"scheme":{"k":2,"m":1},"shard_size":5,"shards":[{},{},{}]}}}`,
		"wrong shards":  `{"origin":"a","files":{"r/data/p":{"repo":"r","type":"data","name":"p","size":10,"scheme":{"k":2,"m":1},"shard_size":5,"shards":[{}]}}}`,
		"bad shardsize": `{"origin":"a","files":{"r/data/p":{"repo":"r","type":"data","name":"p","size":10,"scheme":{"k":2,"m":1},"shard_size":9,"shards":[{},{},{}]}}}`,
		"path in name":  `{"origin":"a","files":{"r/data/..":{"repo":"r","type":"data","name":"..","size":10,"scheme":{"k":2,"m":1},"shard_size":5,"shards":[{},{},{}]}}}`,
		"null entry":    `{"origin":"a","files":{"x":null}}`,
		"not json":      `{`,
	} {
		if _, err := DecodeShardMap([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzDecodeShardMap(f *testing.F) {
	m := NewShardMap("a")
	e := &FileEntry{FileRef: FileRef{Repo: "r", Type: "data", Name: "p"}, Size: 10, Scheme: Scheme{K: 2, M: 1}, ShardSize: 5, Shards: []Shard{{Peer: "b"}, {Peer: "c"}, {}}}
	m.Files[e.Key()] = e
	b, _ := m.Encode()
	f.Add(b)
	f.Add([]byte(`{"origin":"a","files":{}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeShardMap(b)
		if err != nil {
			return
		}
		// Whatever decodes must be safe to use: paths stay inside, levels
		// compute, and it re-encodes.
		for _, e := range m.Files {
			p := ShardPath(m.Origin, e.FileRef, 0)
			if strings.Contains(p, "..") || strings.HasPrefix(p, "/") {
				t.Fatalf("unsafe path %q", p)
			}
			_ = e.Protection(nil)
		}
		if _, err := m.Encode(); err != nil {
			t.Fatal(err)
		}
	})
}

func FuzzDecodeMsg(f *testing.F) {
	b, _ := EncodeMsg(PutHeader{ShardID: ShardID{Ref: FileRef{Repo: "r", Type: "data", Name: "p"}, Idx: 1}, Total: 3}, []byte("abc"))
	f.Add(b)
	f.Add([]byte{0, 0, 0, 2, '{', '}'})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		var h PutHeader
		data, err := DecodeMsg(b, &h)
		if err != nil {
			return
		}
		if len(data) > len(b) {
			t.Fatal("data longer than the message")
		}
		st, err := OpenStore(t.TempDir(), func(held, n int64) error {
			if n > 1<<20 {
				return errors.New("too big")
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		_ = st.Put("o", h, data) // must not panic or escape the store
	})
}
