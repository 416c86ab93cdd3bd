package pool

import (
	"strings"
	"testing"
	"time"
)

func TestConfigValidateLoadWrite(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string // "" = valid
	}{
		{"default", func(*Config) {}, ""},
		{"tiny capacity", func(c *Config) { c.Capacity = 1000 }, "capacity"},
		{"no parity", func(c *Config) { c.M = 0 }, "parity"},
		{"too many data shards", func(c *Config) { c.K = 100 }, "data shards"},
		{"fast scan", func(c *Config) { c.ScanInterval = Duration{time.Microsecond} }, "scan_interval"},
		{"bad gossip", func(c *Config) { c.Gossip = "udp" }, "gossip"},
		{"empty dir", func(c *Config) { c.Dir = "" }, "dir"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.mod(&c)
			err := c.Validate()
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("Validate() = %v, want %q", err, tc.want)
			}
		})
	}
	dir := t.TempDir()
	c := DefaultConfig()
	c.Capacity, c.K, c.M, c.Gossip = 5<<30, 3, 2, "local"
	if err := WriteConfig(dir, c); err != nil {
		t.Fatal(err)
	}
	got, err := LoadConfig(dir)
	if err != nil || got != c {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
}

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		bad  bool
	}{
		{"1024", 1024, false}, {"10GiB", 10 << 30, false}, {"1.5 MiB", 3 << 19, false},
		{"2GB", 2e9, false}, {"512k", 512 << 10, false}, {"", 0, true}, {"10 parsecs", 0, true}, {"-1GiB", 0, true},
	} {
		got, err := ParseSize(tc.in)
		if tc.bad != (err != nil) || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v", tc.in, got, err)
		}
	}
}

func TestSchemeFor(t *testing.T) {
	for peers, want := range map[int]string{1: "1+1", 2: "1+1", 3: "2+1", 4: "2+2", 5: "2+2", 6: "4+2", 20: "4+2"} {
		if got := SchemeFor(peers).String(); got != want {
			t.Errorf("SchemeFor(%d) = %s, want %s", peers, got, want)
		}
	}
}
