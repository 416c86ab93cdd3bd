package slo

import (
	"errors"
	"net"
	"syscall"
	"testing"
)

// tcpPair returns both ends of a loopback TCP connection over network
// ("tcp4" or "tcp6"), closed when the test ends.
func tcpPair(t *testing.T, network, addr string) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Skipf("no %s loopback here: %v", network, err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	c, err := net.Dial(network, ln.Addr().String())
	if err != nil {
		t.Fatalf("dialing %s: %v", ln.Addr(), err)
	}
	s := <-acc
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

func TestSetDSCP(t *testing.T) {
	for _, tc := range []struct{ network, addr string }{{"tcp4", "127.0.0.1:0"}, {"tcp6", "[::1]:0"}} {
		t.Run(tc.network, func(t *testing.T) {
			c, _ := tcpPair(t, tc.network, tc.addr)
			for _, d := range []uint8{DSCPCS1, DSCPAF11, DSCPAF41, DSCPCS0, 63} {
				if err := SetDSCP(c, d); err != nil {
					t.Fatalf("SetDSCP(%d): %v", d, err)
				}
				got, err := DSCPOf(c)
				if err != nil || got != d {
					t.Fatalf("after SetDSCP(%d): DSCPOf = %d, %v", d, got, err)
				}
			}
			if err := SetDSCP(c, 64); err == nil {
				t.Fatal("SetDSCP(64) accepted")
			}
		})
	}
}

func TestSetDSCPUDP(t *testing.T) {
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if err := SetDSCP(pc, DSCPAF21); err != nil {
		t.Fatal(err)
	}
	if got, err := DSCPOf(pc); err != nil || got != DSCPAF21 {
		t.Fatalf("DSCPOf = %d, %v; want %d", got, err, DSCPAF21)
	}
}

func TestSetDSCPClosed(t *testing.T) {
	c, _ := tcpPair(t, "tcp4", "127.0.0.1:0")
	c.Close()
	var sc syscall.Conn = c
	if err := SetDSCP(sc, DSCPCS1); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("SetDSCP on a closed socket: %v, want net.ErrClosed", err)
	}
}
