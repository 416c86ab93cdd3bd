package membership

import (
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

func TestStreamConnReadDeadlineAndData(t *testing.T) {
	c := &streamConn{stop: make(chan struct{})}
	c.cond = sync.NewCond(&c.mu)
	_ = c.SetDeadline(time.Now().Add(100 * time.Millisecond))
	start := time.Now()
	_, err := c.Read(make([]byte, 10))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past the deadline: %v, want a timeout", err)
	}
	if d := time.Since(start); d < 90*time.Millisecond || d > time.Second {
		t.Errorf("timed out after %v, want ~100ms", d)
	}
	_ = c.SetReadDeadline(time.Time{})
	go func() {
		time.Sleep(20 * time.Millisecond)
		c.push([]byte("hello"))
		c.remoteClosed()
	}()
	b := make([]byte, 10)
	n, err := c.Read(b)
	if err != nil || string(b[:n]) != "hello" {
		t.Fatalf("read %q, %v", b[:n], err)
	}
	if _, err := c.Read(b); err == nil {
		t.Fatal("read after the remote closed: no EOF")
	}
}
