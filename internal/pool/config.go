// Package pool is an agent's storage pool and the service that turns its
// local backups into a peer version held by other agents.
//
// The pool is a directory with a capacity, split between a local portion
// (repositories written by the backup clients that use this agent as their
// server, under <pool>/local/<repo>) and a peer portion (shards held for
// other agents, under <pool>/peer). The split is dynamic: free space is
// lent to peers, and when local data needs room the agent asks the origins
// of the shards it holds to move them to other peers first, so no backup
// loses protection; shards that cannot be moved yet stay.
//
// The Service plugs into the agent. It erasure-codes every file of every
// local repository (internal/peer), places the shards on distinct healthy
// peers with room, spread over failure domains, records them in a shard
// map that every holder also keeps a copy of, challenges holders with
// proofs of storage, and re-creates shards held by peers that are gone or
// that failed a proof. Rebuild fetches the shard map and any K good shards
// of every file from the surviving peers and writes the repositories back.
package pool

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/holdfast/holdfast/internal/peer"
)

// ConfigFile is the pool's configuration file in the agent's state
// directory.
const ConfigFile = "pool.toml"

// Config configures an agent's pool and its peer protection.
type Config struct {
	// Dir holds the pool; relative paths are under the state directory.
	Dir string `toml:"dir"`
	// Capacity is the pool's size in bytes: local data plus shards held
	// for peers.
	Capacity int64 `toml:"capacity"`
	// K and M are the erasure-coding scheme: K data + M parity shards.
	K int `toml:"k"`
	M int `toml:"m"`
	// DomainLabel is the agent label naming its failure domain.
	DomainLabel string `toml:"domain_label"`
	// ScanInterval is how often local repositories are scanned for files
	// to protect and shards to repair.
	ScanInterval Duration `toml:"scan_interval"`
	// ProofInterval is how often holders are challenged.
	ProofInterval Duration `toml:"proof_interval"`
	// ProofsPerPeer is how many shards of each holder one round challenges.
	ProofsPerPeer int `toml:"proofs_per_peer"`
	// DeadAfter is how long a peer may be unreachable before its shards
	// are re-created on others.
	DeadAfter Duration `toml:"dead_after"`
	// CallTimeout bounds one call to a peer.
	CallTimeout Duration `toml:"call_timeout"`
	// Gossip is how agents learn each other's pool (capacity, free space,
	// failure domain) and health: "lan" or "local" (memberlist timings)
	// over the agents' mTLS sessions, or "off" (poll each peer every round).
	Gossip string `toml:"gossip"`
}

// Duration is a time.Duration written as text ("30s").
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	d.Duration = v
	return err
}

// MarshalText writes the duration in Go syntax.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// DefaultConfig returns a 10 GiB pool with 4+2 coding.
func DefaultConfig() Config {
	s := peer.DefaultScheme()
	return Config{
		Dir:           "pool",
		Capacity:      10 << 30,
		K:             s.K,
		M:             s.M,
		DomainLabel:   "zone",
		ScanInterval:  Duration{10 * time.Second},
		ProofInterval: Duration{5 * time.Minute},
		ProofsPerPeer: 4,
		DeadAfter:     Duration{2 * time.Minute},
		CallTimeout:   Duration{60 * time.Second},
		Gossip:        "lan",
	}
}

// SchemeFor picks an erasure-coding scheme for a cluster in which an
// origin has peers other agents: the default 4+2 from six peers up, 2+2
// with four or five (every shard still on its own peer), 2+1 with three,
// 1+1 (a copy) with one or two.
func SchemeFor(peers int) peer.Scheme {
	switch {
	case peers >= 6:
		return peer.DefaultScheme()
	case peers >= 4:
		return peer.Scheme{K: 2, M: 2}
	case peers == 3:
		return peer.Scheme{K: 2, M: 1}
	default:
		return peer.Scheme{K: 1, M: 1}
	}
}

// MinCapacity is the smallest pool accepted.
const MinCapacity = 1 << 20

// Validate checks the configuration.
func (c *Config) Validate() error {
	var errs []error
	if c.Dir == "" {
		errs = append(errs, errors.New("dir: empty"))
	}
	if c.Capacity < MinCapacity {
		errs = append(errs, fmt.Errorf("capacity %d: must be at least %d bytes", c.Capacity, MinCapacity))
	}
	if err := c.Scheme().Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.ScanInterval.Duration < 10*time.Millisecond {
		errs = append(errs, fmt.Errorf("scan_interval %v: must be at least 10ms", c.ScanInterval))
	}
	if c.ProofInterval.Duration < 10*time.Millisecond {
		errs = append(errs, fmt.Errorf("proof_interval %v: must be at least 10ms", c.ProofInterval))
	}
	if c.ProofsPerPeer < 0 || c.ProofsPerPeer > 1000 {
		errs = append(errs, fmt.Errorf("proofs_per_peer %d: must be 0 to 1000", c.ProofsPerPeer))
	}
	if c.DeadAfter.Duration < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("dead_after %v: must be at least 100ms", c.DeadAfter))
	}
	if c.CallTimeout.Duration < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("call_timeout %v: must be at least 100ms", c.CallTimeout))
	}
	switch c.Gossip {
	case "lan", "local", "off":
	default:
		errs = append(errs, fmt.Errorf("gossip %q: want lan, local or off", c.Gossip))
	}
	return errors.Join(errs...)
}

// Scheme is the configured erasure-coding scheme.
func (c *Config) Scheme() peer.Scheme { return peer.Scheme{K: c.K, M: c.M} }

// LoadConfig reads <stateDir>/pool.toml over the defaults; a missing file
// means the defaults.
func LoadConfig(stateDir string) (Config, error) {
	c := DefaultConfig()
	p := filepath.Join(stateDir, ConfigFile)
	b, err := os.ReadFile(p)
	if err != nil && !os.IsNotExist(err) {
		return c, fmt.Errorf("reading %s: %w", p, err)
	}
	if err == nil {
		md, err := toml.Decode(string(b), &c)
		if err != nil {
			return c, fmt.Errorf("parsing %s: %w", p, err)
		}
		if und := md.Undecoded(); len(und) > 0 {
			return c, fmt.Errorf("parsing %s: unknown key %q", p, und[0].String())
		}
	}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("%s: %w", p, err)
	}
	return c, nil
}

// WriteConfig writes c to <stateDir>/pool.toml.
func WriteConfig(stateDir string, c Config) error {
	if err := c.Validate(); err != nil {
		return err
	}
	b := fmt.Appendf(nil, configTemplate, c.Dir, c.Capacity, c.K, c.M, c.DomainLabel,
		c.ScanInterval.String(), c.ProofInterval.String(), c.ProofsPerPeer, c.DeadAfter.String(), c.CallTimeout.String(), c.Gossip)
	return peer.WriteFileAtomic(filepath.Join(stateDir, ConfigFile), b)
}

const configTemplate = `# holdfast storage pool and peer protection.

# Directory of the pool (relative: under the agent's state directory).
dir = %q
# Pool size in bytes: local backup data plus shards held for peers.
capacity = %d
# Erasure coding: k data + m parity shards; any k rebuild a file.
k = %d
m = %d
# Agent label that names the failure domain (shards spread over domains).
domain_label = %q
# How often local repositories are scanned for new files and repairs.
scan_interval = %q
# How often holders must prove they hold shards, and how many per holder.
proof_interval = %q
proofs_per_peer = %d
# A peer unreachable this long has its shards re-created on others.
dead_after = %q
# Bound on one call to a peer.
call_timeout = %q
# How agents learn each other's pool and health: "lan" or "local"
# (memberlist gossip over the agents' mTLS sessions), or "off" (poll).
gossip = %q
`

// ParseSize parses a byte size: a number with an optional unit (B, KB,
// MB, GB, TB: powers of 1000; KiB, MiB, GiB, TiB: powers of 1024).
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := len(t)
	for i > 0 && (t[i-1] < '0' || t[i-1] > '9') && t[i-1] != '.' {
		i--
	}
	num, unit := strings.TrimSpace(t[:i]), strings.ToLower(strings.TrimSpace(t[i:]))
	mult := map[string]float64{"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
		"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
		"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}[unit]
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || mult == 0 || v < 0 || v*mult > 1<<62 {
		return 0, fmt.Errorf("size %q: want a number with an optional unit (KiB, MiB, GiB, TiB, KB, MB, GB, TB)", s)
	}
	return int64(v * mult), nil
}
