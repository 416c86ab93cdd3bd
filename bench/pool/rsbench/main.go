// Command rsbench measures Reed-Solomon encode and reconstruct throughput
// on one core with the options holdfast's peer version uses, next to the
// instruction-set paths the library can be limited to and BLAKE3 (which
// every shard also goes through). It prints one table of medians.
package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/klauspost/reedsolomon"
	"github.com/zeebo/blake3"
)

func main() {
	runs := flag.Int("runs", 7, "runs per case; the median is shown")
	shardMiB := flag.Int("shard", 4, "shard size in MiB (4 MiB: a 16 MiB pack at 4+2)")
	dur := flag.Duration("time", 300*time.Millisecond, "time per run")
	flag.Parse()
	runtime.GOMAXPROCS(1)
	size := *shardMiB << 20

	type path struct {
		name string
		opts []reedsolomon.Option
	}
	paths := []path{
		{"auto (GFNI/AVX-512 here)", nil},
		{"AVX2 only", []reedsolomon.Option{reedsolomon.WithGFNI(false), reedsolomon.WithAVX512(false), reedsolomon.WithAVXGFNI(false)}},
		{"pure Go", []reedsolomon.Option{reedsolomon.WithGFNI(false), reedsolomon.WithAVX512(false), reedsolomon.WithAVXGFNI(false), reedsolomon.WithAVX2(false), reedsolomon.WithSSSE3(false)}},
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "scheme\tpath\tencode MB/s, all shards: median (best)\tencode MB/s, data\treconstruct 2 lost, MB/s data\t\n")
	for _, sc := range [][2]int{{4, 2}, {5, 2}, {10, 4}} {
		k, m := sc[0], sc[1]
		for _, p := range paths {
			opts := append([]reedsolomon.Option{reedsolomon.WithMaxGoroutines(1)}, p.opts...)
			enc, err := reedsolomon.New(k, m, opts...)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			shards := make([][]byte, k+m)
			r := rand.New(rand.NewPCG(1, 2))
			for i := range shards {
				shards[i] = make([]byte, size)
				if i < k {
					for j := range shards[i] {
						shards[i][j] = byte(r.Uint32())
					}
				}
			}
			encRate := median(*runs, func() float64 {
				return rate(*dur, int64(k*size), func() { _ = enc.Encode(shards) })
			})
			recRate := median(*runs, func() float64 {
				work := make([][]byte, k+m)
				return rate(*dur, int64(k*size), func() {
					copy(work, shards)
					work[0], work[1] = work[0][:0], work[1][:0] // lost
					_ = enc.ReconstructData(work)
				})
			})
			all := stat{encRate.med * float64(k+m) / float64(k), encRate.best * float64(k+m) / float64(k)}
			fmt.Fprintf(tw, "%d+%d\t%s\t%s\t%s\t%s\t\n", k, m, p.name, all, encRate, recRate)
		}
	}
	buf := make([]byte, size)
	b3 := median(*runs, func() float64 {
		return rate(*dur, int64(size), func() { _ = blake3.Sum256(buf) })
	})
	fmt.Fprintf(tw, "-\tBLAKE3 checksum (baseline)\t\t%s\t\t\n", b3)
	cp := make([]byte, size)
	mc := median(*runs, func() float64 {
		return rate(*dur, int64(size), func() { copy(cp, buf) })
	})
	fmt.Fprintf(tw, "-\tmemcpy (baseline)\t\t%s\t\t\n", mc)
	tw.Flush()
}

// rate runs f repeatedly for about d and returns MB/s (10^6 bytes) of n
// bytes per call.
func rate(d time.Duration, n int64, f func()) float64 {
	f() // warm up
	start := time.Now()
	calls := 0
	for time.Since(start) < d {
		f()
		calls++
	}
	return float64(n) * float64(calls) / time.Since(start).Seconds() / 1e6
}

// stat runs f n times and returns the median and the best result: on a
// shared machine the best run is closest to what the core can do, the
// median to what it did.
type stat struct{ med, best float64 }

func (s stat) String() string { return fmt.Sprintf("%.0f (%.0f)", s.med, s.best) }

func median(n int, f func() float64) stat {
	v := make([]float64, n)
	for i := range v {
		v[i] = f()
	}
	slices.Sort(v)
	return stat{v[n/2], v[n-1]}
}
