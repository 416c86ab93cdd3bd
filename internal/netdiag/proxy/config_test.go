package proxy

import (
	"errors"
	"io"
	"net"
	"strconv"
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Config)
		ok   bool
	}{
		{"defaults", func(*Config) {}, true},
		{"no server", func(c *Config) { c.To = "" }, false},
		{"server without port", func(c *Config) { c.To = "example" }, false},
		{"tiny buffer", func(c *Config) { c.BufferSize = 10 }, false},
		{"huge buffer", func(c *Config) { c.BufferSize = MaxBufferSize + 1 }, false},
		{"no dial timeout", func(c *Config) { c.DialTimeout = 0 }, false},
		{"bad monitor config", func(c *Config) { c.Monitor.WriteSampleEvery = 0 }, false},
		{"bad monitor config ignored when not measuring", func(c *Config) { c.Monitor.WriteSampleEvery = 0; c.Measure = false }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig(":0", "127.0.0.1:9")
			tt.mod(&c)
			if err := c.Validate(); (err == nil) != tt.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

// TestProxyServerDown: with nothing listening at --to, each client is
// closed promptly and the proxy keeps serving.
func TestProxyServerDown(t *testing.T) {
	rp := startProxy(t, net.JoinHostPort("127.0.0.1", itoa(freePort(t))), true)
	for i := range 2 {
		c, err := net.Dial("tcp", rp.addr)
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(make([]byte, 1))
		c.Close()
		if n != 0 || !(errors.Is(err, io.EOF) || isReset(err)) {
			t.Fatalf("client %d: read %d bytes, err %v; want the proxy to close the connection", i, n, err)
		}
	}
}

func isReset(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && !oe.Timeout()
}

func itoa(i int) string { return strconv.Itoa(i) }
