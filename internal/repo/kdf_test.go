package repo

import (
	"testing"

	"golang.org/x/crypto/argon2"
	"golang.org/x/sys/unix"
)

// TestPrefaultHeap checks that argon2id's work area, after prefaultHeap,
// reuses memory that is already mapped: its page faults drop from one per
// page to a few.
func TestPrefaultHeap(t *testing.T) {
	const mem = 32 << 10 // KiB
	faults := func() int64 {
		var ru unix.Rusage
		if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
			t.Fatal(err)
		}
		return ru.Minflt
	}
	prefaultHeap(mem << 10)
	before := faults()
	argon2.IDKey([]byte("pw"), make([]byte, 16), 1, mem, 4, 32)
	got := faults() - before
	pages := int64(mem << 10 / 4096)
	t.Logf("argon2id over %d pages: %d minor faults after prefaultHeap", pages, got)
	if got > pages/2 {
		t.Fatalf("argon2id faulted %d times over %d pages after prefaultHeap: its memory was not reused", got, pages)
	}
}
