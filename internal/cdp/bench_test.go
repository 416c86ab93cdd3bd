package cdp

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"testing"
)

// BenchmarkWrite4K measures the write path without NBD: 4 KiB random
// writes to a volume with and without the CDP log.
func BenchmarkWrite4K(b *testing.B) {
	for _, c := range []struct {
		name  string
		noCDP bool
		lazy  int64
	}{{"cdp", false, DefaultConfig("").LazyApplyBytes}, {"cdp-applied", false, 0}, {"nocdp", true, 0}} {
		noCDP := c.noCDP
		b.Run(c.name, func(b *testing.B) {
			cfg := DefaultConfig(b.TempDir())
			cfg.LazyApplyBytes = c.lazy
			m, err := New(context.Background(), cfg, nil, slog.New(slog.DiscardHandler))
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close()
			if _, err := m.Create(context.Background(), CreateOptions{Name: "v", Size: 1 << 30, NoCDP: noCDP}); err != nil {
				b.Fatal(err)
			}
			v, _ := m.Volume("v")
			p := make([]byte, 4096)
			b.SetBytes(4096)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := v.WriteAt(context.Background(), p, int64(rand.IntN(1<<18))*4096, false); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
