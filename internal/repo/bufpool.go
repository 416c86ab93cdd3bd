package repo

import "sync"

// bufClasses are the capacities of pooled buffers; larger requests are
// allocated directly.
var bufClasses = [...]int{64 << 10, 256 << 10, 1<<20 + 4096, 2<<20 + 4096, 4<<20 + 4096, 16<<20 + 4096}

var bufPools [len(bufClasses)]sync.Pool

// getBuf returns an empty buffer with capacity at least n.
func getBuf(n int) *[]byte {
	for i, c := range bufClasses {
		if n <= c {
			if b, ok := bufPools[i].Get().(*[]byte); ok {
				*b = (*b)[:0]
				return b
			}
			b := make([]byte, 0, c)
			return &b
		}
	}
	b := make([]byte, 0, n)
	return &b
}

// putBuf returns a buffer from getBuf to its pool.
func putBuf(b *[]byte) {
	c := cap(*b)
	for i, cc := range bufClasses {
		if c == cc {
			bufPools[i].Put(b)
			return
		}
	}
}
