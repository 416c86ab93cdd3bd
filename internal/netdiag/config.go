package netdiag

import (
	"errors"
	"fmt"
	"time"
)

// Limits on configuration values.
const (
	// MinTCPInfoInterval is the shortest TCP_INFO sampling interval allowed.
	MinTCPInfoInterval = time.Millisecond
	// MaxPendingWrites bounds how many timestamped writes a monitor keeps
	// waiting for their kernel timestamps; older ones are logged incomplete.
	MaxPendingWrites = 4096
	// MaxPendingMsgs bounds how many unacknowledged messages a monitor keeps.
	MaxPendingMsgs = 65536
)

// Config sets what a ConnMonitor measures and how often.
type Config struct {
	// Role labels the connection in the log ("sender", "receiver", ...).
	Role string
	// Peer overrides the peer label (default: the remote address).
	Peer string
	// KernelTimestamps enables SO_TIMESTAMPING transmit timestamps.
	KernelTimestamps bool
	// WriteSampleEvery timestamps and logs one write in this many (1: all).
	WriteSampleEvery int
	// WriteSampleInterval is the least time between two timestamped
	// writes (0: no limit). Each timestamped write makes the kernel queue
	// three error-queue messages and wake the connection's goroutines, so
	// this bounds the cost per second whatever the write size.
	WriteSampleInterval time.Duration
	// MsgSampleEvery logs one acknowledged message in this many (1: all).
	MsgSampleEvery int
	// TCPInfoInterval is the TCP_INFO sampling period; 0 disables it.
	TCPInfoInterval time.Duration
	// DrainInterval is how often the socket error queue is read when no
	// write or read does it first.
	DrainInterval time.Duration
}

// DefaultConfig returns the configuration holdfast uses on its own
// connections: a write timestamped at most every 20 ms, every message
// recorded, TCP_INFO every 100 ms, the error queue read every 50 ms.
// bench/netdiag measures its cost.
func DefaultConfig() Config {
	return Config{
		KernelTimestamps:    true,
		WriteSampleEvery:    1,
		WriteSampleInterval: 20 * time.Millisecond,
		MsgSampleEvery:      1,
		TCPInfoInterval:     100 * time.Millisecond,
		DrainInterval:       50 * time.Millisecond,
	}
}

// Validate reports the first invalid setting.
func (c Config) Validate() error {
	var errs []error
	if c.WriteSampleEvery < 1 {
		errs = append(errs, fmt.Errorf("WriteSampleEvery %d: must be at least 1", c.WriteSampleEvery))
	}
	if c.MsgSampleEvery < 1 {
		errs = append(errs, fmt.Errorf("MsgSampleEvery %d: must be at least 1", c.MsgSampleEvery))
	}
	if c.WriteSampleInterval < 0 {
		errs = append(errs, fmt.Errorf("WriteSampleInterval %v: must not be negative", c.WriteSampleInterval))
	}
	if c.TCPInfoInterval != 0 && c.TCPInfoInterval < MinTCPInfoInterval {
		errs = append(errs, fmt.Errorf("TCPInfoInterval %v: must be 0 (off) or at least %v", c.TCPInfoInterval, MinTCPInfoInterval))
	}
	if c.KernelTimestamps && c.DrainInterval <= 0 {
		errs = append(errs, fmt.Errorf("DrainInterval %v: must be positive with KernelTimestamps", c.DrainInterval))
	}
	return errors.Join(errs...)
}
