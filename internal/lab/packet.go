package lab

import (
	"errors"
	"net/netip"
)

// Header is what the emulator reads from a packet: enough to route it and
// to pick its DSCP class.
type Header struct {
	// Version is 4 or 6.
	Version int
	// Src and Dst are the packet's addresses.
	Src, Dst netip.Addr
	// DSCP is the differentiated services code point (0-63), the upper six
	// bits of the IPv4 TOS byte or the IPv6 traffic class.
	DSCP uint8
	// ECN is the lower two bits of the same byte.
	ECN uint8
	// Protocol is the IPv4 protocol or the IPv6 next header (not following
	// extension headers).
	Protocol uint8
}

// Errors returned by ParseHeader.
var (
	ErrShortPacket = errors.New("packet too short for its IP header")
	ErrBadVersion  = errors.New("not an IPv4 or IPv6 packet")
)

const (
	ipv4MinHeader = 20
	ipv6Header    = 40
)

// ParseHeader reads the IP header at the start of b, as a TUN device
// without packet information delivers it. It never panics, whatever b holds.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < 1 {
		return Header{}, ErrShortPacket
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) < ipv4MinHeader {
			return Header{}, ErrShortPacket
		}
		ihl := int(b[0]&0x0f) * 4
		if ihl < ipv4MinHeader || ihl > len(b) {
			return Header{}, ErrShortPacket
		}
		return Header{
			Version:  4,
			DSCP:     b[1] >> 2,
			ECN:      b[1] & 3,
			Protocol: b[9],
			Src:      netip.AddrFrom4([4]byte(b[12:16])),
			Dst:      netip.AddrFrom4([4]byte(b[16:20])),
		}, nil
	case 6:
		if len(b) < ipv6Header {
			return Header{}, ErrShortPacket
		}
		tc := b[0]<<4 | b[1]>>4
		return Header{
			Version:  6,
			DSCP:     tc >> 2,
			ECN:      tc & 3,
			Protocol: b[6],
			Src:      netip.AddrFrom16([16]byte(b[8:24])),
			Dst:      netip.AddrFrom16([16]byte(b[24:40])),
		}, nil
	}
	return Header{}, ErrBadVersion
}

// dscpOf is the allocation-free fast path of ParseHeader used per packet:
// the DSCP and the index of the destination host in a lab of n hosts, or -1
// when the destination is not a lab host.
func dscpOf(b []byte, n int) (dscp uint8, host int) {
	if len(b) < 1 {
		return 0, -1
	}
	switch b[0] >> 4 {
	case 4:
		if ihl := int(b[0]&0x0f) * 4; len(b) < ipv4MinHeader || ihl < ipv4MinHeader || ihl > len(b) {
			return 0, -1
		}
		return b[1] >> 2, hostIndex4([4]byte(b[16:20]), n)
	case 6:
		if len(b) < ipv6Header {
			return 0, -1
		}
		return (b[0]<<4 | b[1]>>4) >> 2, hostIndex6([16]byte(b[24:40]), n)
	}
	return 0, -1
}

// Lab addressing. Host i has IPv4 198.18.0.(i+1)/15 (RFC 2544's
// benchmarking range) and IPv6 2001:2::(i+1)/64 (RFC 5180's).
var (
	prefix4 = netip.MustParsePrefix("198.18.0.0/15")
	prefix6 = netip.MustParsePrefix("2001:2::/64")
)

// HostAddr returns the IPv4 address of host i.
func HostAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 18, byte((i + 1) >> 8), byte(i + 1)})
}

// HostAddr6 returns the IPv6 address of host i.
func HostAddr6(i int) netip.Addr {
	a := prefix6.Addr().As16()
	a[14], a[15] = byte((i+1)>>8), byte(i+1)
	return netip.AddrFrom16(a)
}

func hostIndex4(a [4]byte, n int) int {
	if a[0] != 198 || a[1] != 18 {
		return -1
	}
	i := (int(a[2])<<8 | int(a[3])) - 1
	if i < 0 || i >= n {
		return -1
	}
	return i
}

func hostIndex6(a [16]byte, n int) int {
	p := prefix6.Addr().As16()
	for k := 0; k < 14; k++ {
		if a[k] != p[k] {
			return -1
		}
	}
	i := (int(a[14])<<8 | int(a[15])) - 1
	if i < 0 || i >= n {
		return -1
	}
	return i
}
