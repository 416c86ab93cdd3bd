package bulk

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// TestChecksumsCatchDamagedPartialData interrupts a copy, flips a bit in a
// block the receiver has journalled, and resumes: with either checksum the
// damaged block is not taken as held but sent again, and the copy ends equal
// to the source. Resuming with the other checksum starts the file afresh.
func TestChecksumsCatchDamagedPartialData(t *testing.T) {
	for _, alg := range []Checksum{ChecksumCRC32C, ChecksumBLAKE3} {
		t.Run(string(alg), func(t *testing.T) {
			p := newPair(t)
			src := filepath.Join(t.TempDir(), "f")
			const bs = 64 << 10
			data := writeRandom(t, src, 64*bs)
			part := filepath.Join(p.root, partPrefix+"f")
			journal := filepath.Join(p.root, journalPrefix+"f")

			interrupt := func(opts Options) {
				t.Helper()
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				var sent atomic.Int32
				opts.testHook = func(ev string, _ int) {
					if ev == "sent" && sent.Add(1) == 24 {
						cancel()
					}
				}
				if _, err := p.client.SendFiles(ctx, p.addr, []string{src}, "f", opts); !errors.Is(err, context.Canceled) {
					t.Fatalf("interrupted copy: %v, want context.Canceled", err)
				}
				waitJournal(t, p.root, "f", 8)
				// Blocks already on the way are still being stored: wait
				// until the journal stops growing.
				last := int64(-1)
				for {
					time.Sleep(150 * time.Millisecond)
					fi, err := os.Stat(journal)
					if err != nil {
						t.Fatal(err)
					}
					if fi.Size() == last {
						break
					}
					last = fi.Size()
				}
			}
			opts := Options{Streams: 2, BlockSize: bs, Checksum: alg, RateLimit: 4 << 20}
			interrupt(opts)
			// The first journalled block gets one bit flipped.
			j, err := os.ReadFile(journal)
			if err != nil {
				t.Fatal(err)
			}
			held := (len(j) - journalHdr) / journalRec
			victim := int64(j[journalHdr])<<24 | int64(j[journalHdr+1])<<16 | int64(j[journalHdr+2])<<8 | int64(j[journalHdr+3])
			f, err := os.OpenFile(part, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			var b [1]byte
			f.ReadAt(b[:], victim*bs+100)
			b[0] ^= 0x10
			f.WriteAt(b[:], victim*bs+100)
			f.Close()

			opts.Resume, opts.RateLimit = true, 0
			rep, err := p.client.SendFiles(context.Background(), p.addr, []string{src}, "f", opts)
			if err != nil {
				t.Fatal(err)
			}
			mustEqualFile(t, filepath.Join(p.root, "f"), data)
			t.Logf("%d blocks journalled, block %d damaged; resumed %d bytes, sent %d", held, victim, rep.Resumed, rep.Sent)
			if rep.Resumed == 0 || rep.Resumed > int64(held-1)*bs {
				t.Errorf("resumed %d bytes of %d journalled blocks with one damaged: want 1 to %d blocks' worth", rep.Resumed, held, held-1)
			}

			// Resuming under the other checksum does not trust a journal
			// written with this one.
			other := ChecksumBLAKE3
			if alg == ChecksumBLAKE3 {
				other = ChecksumCRC32C
			}
			os.Remove(filepath.Join(p.root, "f"))
			opts.Resume, opts.RateLimit = false, 4<<20
			interrupt(opts)
			opts.Resume, opts.RateLimit, opts.Checksum = true, 0, other
			rep, err = p.client.SendFiles(context.Background(), p.addr, []string{src}, "f", opts)
			if err != nil {
				t.Fatal(err)
			}
			mustEqualFile(t, filepath.Join(p.root, "f"), data)
			if rep.Resumed != 0 {
				t.Errorf("a %s resume reused %d bytes journalled under %s", other, rep.Resumed, alg)
			}
		})
	}
}

// TestChecksumValues pins the two checksums to their definitions and checks
// that an unknown one is refused.
func TestChecksumValues(t *testing.T) {
	b := []byte("123456789")
	c := ChecksumCRC32C.sum(b)
	// 0xE3069283 is CRC-32C's standard check value for "123456789".
	if !bytes.Equal(c[:4], []byte{0xe3, 0x06, 0x92, 0x83}) || [28]byte(c[4:]) != [28]byte{} {
		t.Errorf("crc32c of the check string: %x", c)
	}
	if ChecksumBLAKE3.sum(b) == c || ChecksumBLAKE3.zero(10) == ChecksumCRC32C.zero(10) {
		t.Error("the two checksums agree")
	}
	if ChecksumCRC32C.zero(7) != ChecksumCRC32C.sum(make([]byte, 7)) {
		t.Error("the hole checksum is not the checksum of zeros")
	}
	o := Options{Checksum: "md5"}
	if err := o.fill(); err == nil {
		t.Error("an unknown checksum was accepted")
	}
	o = Options{}
	if err := o.fill(); err != nil || o.Checksum != ChecksumCRC32C {
		t.Errorf("default checksum %q (%v), want crc32c", o.Checksum, err)
	}
}

// BenchmarkBlockSum measures the two checksums on 1 MiB blocks.
func BenchmarkBlockSum(b *testing.B) {
	buf := make([]byte, 1<<20)
	for _, alg := range []Checksum{ChecksumCRC32C, ChecksumBLAKE3} {
		b.Run(string(alg), func(b *testing.B) {
			b.SetBytes(int64(len(buf)))
			for i := 0; i < b.N; i++ {
				alg.sum(buf)
			}
		})
	}
}
