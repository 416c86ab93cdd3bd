// Command prime measures what a primed connection pool buys: the time to
// complete a small transfer on a fresh pool (dial, TLS, RTT, buffer sizing,
// priming traffic, then data) against the same transfer on a pool whose
// connections are already primed. Run it inside the sending lab host (see
// bench/bulk/prime.sh).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"time"

	"github.com/holdfast/holdfast/internal/bulk"
	"github.com/holdfast/holdfast/internal/cluster"
)

func main() {
	state := flag.String("state", "", "node state directory")
	peer := flag.String("peer", "", "receiver address")
	src := flag.String("src", "", "file to send")
	runs := flag.Int("runs", 5, "runs")
	streams := flag.Int("streams", 4, "connections")
	cc := flag.String("cc", "auto", "congestion control (auto, cubic, bbr, reno)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	id, err := cluster.Load(*state)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx := context.Background()
	var fresh, primed, nopool []float64
	var prime time.Duration
	for i := 0; i < *runs; i++ {
		cl, err := bulk.NewClient(bulk.ClientConfig{TLS: id.ClientTLS(log), Node: id.Name, CC: *cc, Logger: log})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		opts := bulk.Options{Streams: *streams}
		t0 := time.Now()
		rep, err := cl.SendFiles(ctx, *peer, []string{*src}, "prime-fresh.bin", opts)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fresh = append(fresh, time.Since(t0).Seconds())
		prime = rep.PrimeTime
		// The same client again: its pool holds the primed connections.
		t0 = time.Now()
		rep2, err := cl.SendFiles(ctx, *peer, []string{*src}, "prime-pooled.bin", opts)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		primed = append(primed, time.Since(t0).Seconds())
		cl.Close()
		re := 0
		for _, c := range rep2.Conns {
			if c.Prime.Reprimed {
				re++
			}
		}
		fmt.Fprintf(os.Stderr, "run %d: fresh %.2fs (connect+prime %.2fs), pooled %.2fs (%d of %d conns re-primed after idle)\n",
			i+1, fresh[i], prime.Seconds(), primed[i], re, len(rep2.Conns))
		_ = nopool
	}
	fmt.Printf("%-22s %10s\n", "pool", "median s")
	fmt.Printf("%-22s %10.2f\n", "fresh (connect+prime)", median(fresh))
	fmt.Printf("%-22s %10.2f\n", "primed pool", median(primed))
	fmt.Printf("primed pool is %.1fx faster\n", median(fresh)/median(primed))
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}
