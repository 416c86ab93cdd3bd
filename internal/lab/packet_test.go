package lab

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
)

func ipv4Packet(tos byte, src, dst netip.Addr, proto byte) []byte {
	b := make([]byte, 28)
	b[0] = 0x45
	b[1] = tos
	binary.BigEndian.PutUint16(b[2:], 28)
	b[8] = 64
	b[9] = proto
	s, d := src.As4(), dst.As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	return b
}

func ipv6Packet(tc byte, src, dst netip.Addr, next byte) []byte {
	b := make([]byte, 48)
	b[0] = 0x60 | tc>>4
	b[1] = tc << 4
	binary.BigEndian.PutUint16(b[4:], 8)
	b[6] = next
	b[7] = 64
	s, d := src.As16(), dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	return b
}

func TestParseHeader(t *testing.T) {
	a0, a1 := HostAddr(0), HostAddr(1)
	b0, b1 := HostAddr6(0), HostAddr6(1)
	for _, tc := range []struct {
		name string
		pkt  []byte
		want Header
		host int
		err  error
	}{
		{"ipv4 EF", ipv4Packet(0xb8, a0, a1, 17), Header{Version: 4, Src: a0, Dst: a1, DSCP: 46, Protocol: 17}, 1, nil},
		{"ipv4 AF41 ECT0", ipv4Packet(0x8a, a1, a0, 6), Header{Version: 4, Src: a1, Dst: a0, DSCP: 34, ECN: 2, Protocol: 6}, 0, nil},
		{"ipv4 outside lab", ipv4Packet(0, a0, netip.MustParseAddr("8.8.8.8"), 17), Header{Version: 4, Src: a0, Dst: netip.MustParseAddr("8.8.8.8"), Protocol: 17}, -1, nil},
		{"ipv4 host beyond lab", ipv4Packet(0, a0, HostAddr(9), 17), Header{Version: 4, Src: a0, Dst: HostAddr(9), Protocol: 17}, -1, nil},
		{"ipv6 CS1", ipv6Packet(0x20, b0, b1, 17), Header{Version: 6, Src: b0, Dst: b1, DSCP: 8, Protocol: 17}, 1, nil},
		{"ipv6 EF CE", ipv6Packet(0xbb, b1, b0, 6), Header{Version: 6, Src: b1, Dst: b0, DSCP: 46, ECN: 3, Protocol: 6}, 0, nil},
		{"ipv6 multicast", ipv6Packet(0, b0, netip.MustParseAddr("ff02::16"), 58), Header{Version: 6, Src: b0, Dst: netip.MustParseAddr("ff02::16"), Protocol: 58}, -1, nil},
		{"empty", nil, Header{}, -1, ErrShortPacket},
		{"short ipv4", ipv4Packet(0, a0, a1, 6)[:19], Header{}, -1, ErrShortPacket},
		{"ipv4 bad IHL", append([]byte{0x4f}, make([]byte, 30)...), Header{}, -1, ErrShortPacket},
		{"ipv4 IHL under 5", append([]byte{0x44}, make([]byte, 30)...), Header{}, -1, ErrShortPacket},
		{"short ipv6", ipv6Packet(0, b0, b1, 6)[:39], Header{}, -1, ErrShortPacket},
		{"version 5", []byte{0x50, 0, 0, 0}, Header{}, -1, ErrBadVersion},
	} {
		got, err := ParseHeader(tc.pkt)
		if !errors.Is(err, tc.err) || got != tc.want {
			t.Errorf("%s: ParseHeader = %+v, %v; want %+v, %v", tc.name, got, err, tc.want, tc.err)
		}
		if tc.err == nil {
			dscp, host := dscpOf(tc.pkt, 2)
			if dscp != tc.want.DSCP || host != tc.host {
				t.Errorf("%s: dscpOf = %d, host %d; want %d, host %d", tc.name, dscp, host, tc.want.DSCP, tc.host)
			}
		}
	}
}

func TestHostAddr(t *testing.T) {
	for _, tc := range []struct {
		i      int
		v4, v6 string
	}{
		{0, "198.18.0.1", "2001:2::1"}, {7, "198.18.0.8", "2001:2::8"}, {63, "198.18.0.64", "2001:2::40"},
	} {
		if got := HostAddr(tc.i).String(); got != tc.v4 {
			t.Errorf("HostAddr(%d) = %s, want %s", tc.i, got, tc.v4)
		}
		if got := HostAddr6(tc.i).String(); got != tc.v6 {
			t.Errorf("HostAddr6(%d) = %s, want %s", tc.i, got, tc.v6)
		}
		if !prefix4.Contains(HostAddr(tc.i)) || !prefix6.Contains(HostAddr6(tc.i)) {
			t.Errorf("host %d outside the benchmarking ranges", tc.i)
		}
		if hostIndex4(HostAddr(tc.i).As4(), MaxHosts) != tc.i || hostIndex6(HostAddr6(tc.i).As16(), MaxHosts) != tc.i {
			t.Errorf("host %d address does not map back", tc.i)
		}
	}
}

// FuzzParseHeader checks that header parsing never panics and that the
// per-packet fast path agrees with ParseHeader.
func FuzzParseHeader(f *testing.F) {
	f.Add(ipv4Packet(0xb8, HostAddr(0), HostAddr(1), 17))
	f.Add(ipv6Packet(0x20, HostAddr6(1), HostAddr6(0), 6))
	f.Add([]byte{0x4f, 0})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHeader(b)
		dscp, host := dscpOf(b, 8)
		if err != nil {
			if host != -1 {
				t.Fatalf("unparseable packet routed to host %d", host)
			}
			return
		}
		if h.DSCP > 63 || h.ECN > 3 {
			t.Fatalf("DSCP %d ECN %d out of range", h.DSCP, h.ECN)
		}
		if h.Version == 4 {
			if h.DSCP != b[1]>>2 || h.ECN != b[1]&3 {
				t.Fatalf("IPv4 TOS %#x gave DSCP %d ECN %d", b[1], h.DSCP, h.ECN)
			}
			if !h.Dst.Is4() || !h.Src.Is4() {
				t.Fatalf("IPv4 packet with addresses %v %v", h.Src, h.Dst)
			}
		}
		if h.Version == 6 && (h.DSCP<<2|h.ECN) != (b[0]<<4|b[1]>>4) {
			t.Fatalf("IPv6 traffic class mismatch")
		}
		if dscp != h.DSCP {
			t.Fatalf("dscpOf %d, ParseHeader %d", dscp, h.DSCP)
		}
		if host >= 0 {
			want := HostAddr(host)
			if h.Version == 6 {
				want = HostAddr6(host)
			}
			if h.Dst != want {
				t.Fatalf("routed to host %d (%s) but destination is %s", host, want, h.Dst)
			}
		}
	})
}
