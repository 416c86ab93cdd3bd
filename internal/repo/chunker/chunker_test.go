package chunker

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

func split(c *Chunker, data []byte) [][]byte {
	var out [][]byte
	for len(data) > 0 {
		n := c.Boundary(data)
		out = append(out, data[:n])
		data = data[n:]
	}
	return out
}

func randomData(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed+1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestChunkSizes(t *testing.T) {
	c, err := New(DefaultParams(), []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	data := randomData(1, 64<<20)
	chunks := split(c, data)
	var total int
	for i, ch := range chunks {
		total += len(ch)
		if len(ch) > DefaultMax {
			t.Fatalf("chunk %d has %d bytes, above max", i, len(ch))
		}
		if len(ch) < DefaultMin && i != len(chunks)-1 {
			t.Fatalf("chunk %d has %d bytes, below min", i, len(ch))
		}
	}
	if total != len(data) {
		t.Fatalf("chunks cover %d bytes, want %d", total, len(data))
	}
	avg := total / len(chunks)
	if avg < DefaultAvg/2 || avg > DefaultAvg*2 {
		t.Fatalf("average chunk %d bytes, want near %d", avg, DefaultAvg)
	}
}

func TestShiftResistance(t *testing.T) {
	c, _ := New(DefaultParams(), []byte("k"))
	data := randomData(2, 32<<20)
	a := split(c, data)
	// Insert 100 bytes near the start: all but the first few chunks survive.
	mod := append(append(append([]byte{}, data[:1000]...), bytes.Repeat([]byte{7}, 100)...), data[1000:]...)
	b := split(c, mod)
	seen := map[string]bool{}
	for _, ch := range a {
		seen[string(ch)] = true
	}
	same := 0
	for _, ch := range b {
		if seen[string(ch)] {
			same++
		}
	}
	if same < len(a)-3 {
		t.Fatalf("only %d of %d chunks survived a small insertion", same, len(a))
	}
}

func TestSecretChangesBoundaries(t *testing.T) {
	data := randomData(3, 16<<20)
	c1, _ := New(DefaultParams(), []byte("one"))
	c2, _ := New(DefaultParams(), []byte("two"))
	if c1.Boundary(data) == c2.Boundary(data) {
		t.Fatal("different secrets gave the same first boundary")
	}
}

func TestParamsValidate(t *testing.T) {
	for _, tc := range []struct {
		p  Params
		ok bool
	}{
		{DefaultParams(), true},
		{Params{Min: 1024, Avg: 1 << 20, Max: 4 << 20}, false},
		{Params{Min: 256 << 10, Avg: 3 << 20, Max: 8 << 20}, false},
		{Params{Min: 2 << 20, Avg: 1 << 20, Max: 4 << 20}, false},
		{Params{Min: 256 << 10, Avg: 1 << 20, Max: 128 << 20}, false},
	} {
		if err := tc.p.Validate(); (err == nil) != tc.ok {
			t.Errorf("Validate(%+v) = %v, want ok=%v", tc.p, err, tc.ok)
		}
	}
}

func BenchmarkBoundary(b *testing.B) {
	c, _ := New(DefaultParams(), []byte("k"))
	data := randomData(4, 64<<20)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		split(c, data)
	}
}
