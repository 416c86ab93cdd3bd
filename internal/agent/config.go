// Package agent is the holdfast daemon: it loads the node's configuration
// and cluster identity from a state directory, keeps its metadata in bbolt,
// accepts and maintains mTLS wire sessions with its peers, serves the local
// HTTP+JSON API (unix socket, optionally TCP behind mTLS) that the CLI talks
// to, exposes /healthz and Prometheus /metrics, and wires the feature
// services into both.
package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/holdfast/holdfast/internal/cluster"
)

// Files and sockets inside the state directory.
const (
	ConfigFile = "holdfast.toml"
	DBFile     = "agent.db"
	SocketFile = "agent.sock"
)

// Duration is a time.Duration that reads and writes as text ("2s").
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration in Go syntax.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Config is the agent's configuration, read from <state>/holdfast.toml.
// Every key is documented in the file DefaultConfigFile writes.
type Config struct {
	Name              string            `toml:"name"`
	Listen            string            `toml:"listen"`
	Advertise         string            `toml:"advertise"`
	APIListen         string            `toml:"api_listen"`
	Peers             []string          `toml:"peers"`
	Labels            map[string]string `toml:"labels"`
	HeartbeatInterval Duration          `toml:"heartbeat_interval"`
	PeerTimeout       Duration          `toml:"peer_timeout"`
	MaxFrame          int               `toml:"max_frame"`
}

// DefaultConfig returns the configuration used for keys a file leaves out.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	if cluster.ValidateNodeName(host) != nil {
		host = "holdfast"
	}
	return Config{
		Name:              host,
		Listen:            "0.0.0.0:7440",
		HeartbeatInterval: Duration{2 * time.Second},
		PeerTimeout:       Duration{10 * time.Second},
		MaxFrame:          16 << 20,
		Labels:            map[string]string{},
	}
}

// Validate checks a configuration and says what is wrong.
func (c *Config) Validate() error {
	var errs []error
	if err := cluster.ValidateNodeName(c.Name); err != nil {
		errs = append(errs, fmt.Errorf("name: %w", err))
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("listen %q: %w", c.Listen, err))
	}
	if c.APIListen != "" {
		if _, _, err := net.SplitHostPort(c.APIListen); err != nil {
			errs = append(errs, fmt.Errorf("api_listen %q: %w", c.APIListen, err))
		}
	}
	for _, p := range c.Peers {
		if _, _, err := net.SplitHostPort(p); err != nil {
			errs = append(errs, fmt.Errorf("peers: %q: %w", p, err))
		}
	}
	if c.HeartbeatInterval.Duration < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("heartbeat_interval %v: must be at least 100ms", c.HeartbeatInterval))
	}
	if c.PeerTimeout.Duration < 2*c.HeartbeatInterval.Duration {
		errs = append(errs, fmt.Errorf("peer_timeout %v: must be at least twice heartbeat_interval", c.PeerTimeout))
	}
	if c.MaxFrame < 64<<10 || c.MaxFrame > 64<<20 {
		errs = append(errs, fmt.Errorf("max_frame %d: must be between 64 KiB and 64 MiB", c.MaxFrame))
	}
	return errors.Join(errs...)
}

// AdvertiseAddr is the address peers should dial to reach this agent.
func (c *Config) AdvertiseAddr() string {
	if c.Advertise != "" {
		return c.Advertise
	}
	host, port, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return c.Listen
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		h, _ := os.Hostname()
		host = h
	}
	return net.JoinHostPort(host, port)
}

const configTemplate = `# holdfast agent configuration.
# Every key is shown with its default; a key left out takes the default.

# This node's name: its id in the cluster (letters, digits, '-', '_', '.').
# It must match the name in the node certificate (set at init/join).
name = %q

# Address the agent listens on for other agents (mTLS 1.3).
listen = %q

# Address other agents should dial to reach this one. Empty: the listen
# address, with the host name when listen has no host.
advertise = %q

# Optional TCP address for the HTTP+JSON API, behind mTLS with the cluster
# CA. The API is always served on the unix socket <state>/agent.sock.
api_listen = %q

# Agents to connect to at start. Peers learn of each other's peers, so one
# address of a running cluster member is enough.
peers = [%s]

# How often the agent checks on each peer.
heartbeat_interval = %q

# A peer not heard from for this long is shown as disconnected.
peer_timeout = %q

# Largest frame payload accepted from a peer, in bytes (64 KiB to 64 MiB).
max_frame = %d

# Free-form labels, e.g. the failure domain used to place peer shards:
#   zone = "rack-1"
[labels]
%s`

// Encode renders c as a commented config file.
func (c *Config) Encode() []byte {
	peers := make([]string, len(c.Peers))
	for i, p := range c.Peers {
		peers[i] = strconv.Quote(p)
	}
	keys := slices.Sorted(maps.Keys(c.Labels))
	var labels strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&labels, "%s = %q\n", strconv.Quote(k), c.Labels[k])
	}
	return fmt.Appendf(nil, configTemplate, c.Name, c.Listen, c.Advertise, c.APIListen,
		strings.Join(peers, ", "), c.HeartbeatInterval.String(), c.PeerTimeout.String(), c.MaxFrame, labels.String())
}

// WriteConfig writes c to <dir>/holdfast.toml atomically.
func WriteConfig(dir string, c Config) error {
	if err := c.Validate(); err != nil {
		return fmt.Errorf("invalid configuration: %w", err)
	}
	p := filepath.Join(dir, ConfigFile)
	if err := os.WriteFile(p+".tmp", c.Encode(), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", p, err)
	}
	return os.Rename(p+".tmp", p)
}

// LoadConfig reads <dir>/holdfast.toml over the defaults.
func LoadConfig(dir string) (Config, error) {
	c := DefaultConfig()
	p := filepath.Join(dir, ConfigFile)
	md, err := toml.DecodeFile(p, &c)
	if errors.Is(err, os.ErrNotExist) {
		return c, fmt.Errorf("no configuration at %s (run `holdfast cluster init` or `holdfast cluster join` first): %w", p, err)
	}
	if err != nil {
		return c, fmt.Errorf("reading %s: %w", p, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return c, fmt.Errorf("reading %s: unknown keys %v", p, und)
	}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("%s: %w", p, err)
	}
	return c, nil
}

// configHash identifies the configuration's version for the version vector.
func configHash(c Config) string {
	sum := sha256.Sum256(c.Encode())
	return hex.EncodeToString(sum[:6])
}
