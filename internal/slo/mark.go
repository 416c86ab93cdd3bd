package slo

import (
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// SetDSCP marks every packet c sends from now on with code point dscp: it
// sets IP_TOS on an IPv4 socket, IPV6_TCLASS on an IPv6 one (and IP_TOS
// too, for IPv4-mapped peers). The TOS / traffic-class byte is dscp<<2;
// the kernel keeps the two ECN bits its own. c is any socket-backed
// connection (*net.TCPConn, *net.UDPConn, …).
func SetDSCP(c syscall.Conn, dscp uint8) error {
	if dscp > 63 {
		return fmt.Errorf("DSCP %d out of range [0, 63]", dscp)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("getting raw socket: %w", err)
	}
	tos := int(dscp) << 2
	var serr error
	err = rc.Control(func(fd uintptr) {
		domain, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
		if err != nil {
			serr = fmt.Errorf("reading socket domain: %w", err)
			return
		}
		switch domain {
		case unix.AF_INET:
			if err := unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TOS, tos); err != nil {
				serr = fmt.Errorf("setting IP_TOS 0x%02x: %w", tos, err)
			}
		case unix.AF_INET6:
			if err := unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_TCLASS, tos); err != nil {
				serr = fmt.Errorf("setting IPV6_TCLASS 0x%02x: %w", tos, err)
				return
			}
			// IPv4-mapped peers are reached through the IPv4 stack, which
			// reads IP_TOS; on a pure IPv6 socket this is harmless.
			_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TOS, tos)
		default:
			serr = fmt.Errorf("socket domain %d is neither IPv4 nor IPv6", domain)
		}
	})
	if err != nil {
		return fmt.Errorf("controlling socket: %w", err)
	}
	return serr
}

// DSCPOf returns the code point c's packets are marked with now (read back
// from IP_TOS or IPV6_TCLASS).
func DSCPOf(c syscall.Conn) (uint8, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("getting raw socket: %w", err)
	}
	var v int
	var serr error
	err = rc.Control(func(fd uintptr) {
		domain, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
		if err != nil {
			serr = fmt.Errorf("reading socket domain: %w", err)
			return
		}
		switch domain {
		case unix.AF_INET:
			v, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TOS)
		case unix.AF_INET6:
			v, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_TCLASS)
		default:
			serr = errors.New("socket is neither IPv4 nor IPv6")
		}
	})
	if err != nil {
		return 0, fmt.Errorf("controlling socket: %w", err)
	}
	if serr != nil {
		return 0, fmt.Errorf("reading mark: %w", serr)
	}
	return uint8(v>>2) & 63, nil
}
