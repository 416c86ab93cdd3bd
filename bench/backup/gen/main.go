// Command gen writes the generated data set of the backup benchmark: files
// of log-uniform sizes (4 KiB to 32 MiB), half compressible text and half
// random bytes, with a third of all content duplicated: whole files copied
// into other directories and runs of earlier files spliced into new ones
// at unaligned offsets (which only content-defined chunking finds).
package main

import (
	"flag"
	"fmt"
	"log"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
)

func main() {
	dir := flag.String("dir", "", "directory to create")
	sizeMiB := flag.Int("size", 512, "total size in MiB")
	seed := flag.Uint64("seed", 1, "random seed")
	flag.Parse()
	if *dir == "" {
		log.Fatal("gen: -dir is required")
	}
	rng := rand.New(rand.NewPCG(*seed, 2026))
	total := int64(*sizeMiB) << 20
	words := make([]string, 4096)
	for i := range words {
		n := 2 + rng.IntN(9)
		b := make([]byte, n)
		for j := range b {
			b[j] = byte('a' + rng.IntN(26))
		}
		words[i] = string(b)
	}
	var written, dup int64
	var files []string
	for i := 0; written < total; i++ {
		size := int64(math.Exp(rng.Float64()*(math.Log(8<<20)-math.Log(4<<10)) + math.Log(4<<10)))
		size = min(size, total-written)
		p := filepath.Join(*dir, fmt.Sprintf("d%02d", i%37), fmt.Sprintf("s%03d", i%11), fmt.Sprintf("f%05d", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			log.Fatal(err)
		}
		var data []byte
		switch {
		case dup*3 < written && len(files) > 0 && rng.IntN(2) == 0:
			// Duplicate: a whole earlier file, or an earlier file's
			// content spliced between fresh bytes.
			src, err := os.ReadFile(files[rng.IntN(len(files))])
			if err != nil {
				log.Fatal(err)
			}
			if rng.IntN(2) == 0 {
				data = src
			} else {
				pre := fresh(rng, words, int64(rng.IntN(100000)))
				data = append(append(pre, src...), fresh(rng, words, int64(rng.IntN(100000)))...)
			}
			dup += int64(len(src))
		default:
			data = fresh(rng, words, size)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			log.Fatal(err)
		}
		files = append(files, p)
		written += int64(len(data))
	}
	fmt.Printf("wrote %d files, %d MiB, %d MiB of it duplicated\n", len(files), written>>20, dup>>20)
}

// fresh returns n new bytes: text from a vocabulary or random bytes.
func fresh(rng *rand.Rand, words []string, n int64) []byte {
	out := make([]byte, 0, n)
	if rng.IntN(2) == 0 {
		for int64(len(out)) < n {
			out = append(out, words[rng.IntN(len(words))]...)
			if rng.IntN(12) == 0 {
				out = append(out, '\n')
			} else {
				out = append(out, ' ')
			}
		}
		return out[:n]
	}
	out = out[:n]
	for i := int64(0); i < n; i += 8 {
		v := rng.Uint64()
		for j := int64(0); j < 8 && i+j < n; j++ {
			out[i+j] = byte(v >> (8 * j))
		}
	}
	return out
}
