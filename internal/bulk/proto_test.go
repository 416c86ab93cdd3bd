package bulk

import (
	"bytes"
	"strings"
	"testing"
)

func TestBlockAndAckRoundTrip(t *testing.T) {
	h := blockHeader{ID: TransferID{1, 2, 3}, File: 7, Index: 9, Msg: 1 << 40, SentNano: -5, Len: 3, Sum: ChecksumBLAKE3.sum([]byte("abc"))}
	b := make([]byte, blockHeaderSize+3)
	h.put(b)
	copy(b[blockHeaderSize:], "abc")
	got, data, err := parseBlock(b)
	if err != nil || got != h || string(data) != "abc" {
		t.Fatalf("block round trip: %+v %q %v", got, data, err)
	}
	a := ack{ID: h.ID, File: 1, Index: 2, Msg: 3, RecvNano: 4, WriteNano: 5, Total: 6, Status: ackFull, Err: "disk full"}
	ga, err := parseAck(a.encode())
	if err != nil || ga != a {
		t.Fatalf("ack round trip: %+v %v", ga, err)
	}
}

func TestParseBlockRejects(t *testing.T) {
	good := func() []byte {
		h := blockHeader{Len: 2}
		b := make([]byte, blockHeaderSize+2)
		h.put(b)
		return b
	}
	for _, tc := range []struct {
		name string
		mod  func([]byte) []byte
		want string
	}{
		{"short", func(b []byte) []byte { return b[:10] }, "short"},
		{"length mismatch", func(b []byte) []byte { return b[:len(b)-1] }, "carries"},
		{"hole with data", func(b []byte) []byte { b[40] = flagHole; return b }, "hole block carries"},
		{"flags", func(b []byte) []byte { b[40] = 0x80; return b }, "flags"},
		{"huge", func(b []byte) []byte { b[41] = 0xff; return b }, "exceeds"},
	} {
		if _, _, err := parseBlock(tc.mod(good())); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestParseRemote(t *testing.T) {
	for _, tc := range []struct {
		in         string
		addr, path string
		remote     bool
		err        bool
	}{
		{"host:/data", "host:7470", "/data", true, false},
		{"10.0.0.1:9000:/data/x", "10.0.0.1:9000", "/data/x", true, false},
		{"10.0.0.1:9000:", "10.0.0.1:9000", ".", true, false},
		{"[::1]:9000:dst", "[::1]:9000", "dst", true, false},
		{"[::1]:dst", "[::1]:7470", "dst", true, false},
		{"./local:file", "", "", false, false},
		{"plain", "", "", false, false},
		{":/x", "", "", false, true},
		{"h:70000:/x", "", "", false, true},
		{"[::1", "", "", false, true},
	} {
		addr, p, remote, err := ParseRemote(tc.in)
		if (err != nil) != tc.err || addr != tc.addr || p != tc.path || remote != tc.remote {
			t.Errorf("ParseRemote(%q) = %q %q %v %v; want %q %q %v err=%v", tc.in, addr, p, remote, err, tc.addr, tc.path, tc.remote, tc.err)
		}
	}
}

func TestParseRate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want float64
		err  bool
	}{
		{"200Mbit", 25e6, false}, {"1Gbit/s", 125e6, false}, {"25MB", 25e6, false},
		{"1MiB", 1 << 20, false}, {"", 0, false}, {"0", 0, false},
		{"fast", 0, true}, {"10 furlongs", 0, true}, {"-5M", 0, true},
	} {
		got, err := ParseRate(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseRate(%q) = %v, %v; want %v err=%v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func FuzzParseBlock(f *testing.F) {
	h := blockHeader{Len: 3}
	b := make([]byte, blockHeaderSize+3)
	h.put(b)
	f.Add(b)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		h, data, err := parseBlock(in)
		if err != nil {
			return
		}
		if h.Flags&flagHole == 0 && int(h.Len) != len(data) {
			t.Fatalf("accepted a block of %d bytes claiming %d", len(data), h.Len)
		}
		out := make([]byte, blockHeaderSize+len(data))
		h.put(out)
		copy(out[blockHeaderSize:], data)
		if !bytes.Equal(out, in) {
			t.Fatal("re-encoding differs")
		}
	})
}

func FuzzParseAck(f *testing.F) {
	f.Add((&ack{Err: "x"}).encode())
	f.Add([]byte{1, 2})
	f.Fuzz(func(t *testing.T, in []byte) {
		a, err := parseAck(in)
		if err != nil {
			return
		}
		if !bytes.Equal(a.encode(), in) {
			t.Fatal("re-encoding differs")
		}
	})
}

func FuzzParseRemote(f *testing.F) {
	for _, s := range []string{"host:/x", "[::1]:9:/x", "a:b:c", "/x:y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		addr, p, ok, err := ParseRemote(s)
		if err != nil || !ok {
			return
		}
		if addr == "" || p == "" {
			t.Fatalf("%q: remote with empty addr %q or path %q", s, addr, p)
		}
	})
}

func FuzzParseRate(f *testing.F) {
	for _, s := range []string{"200Mbit", "1.5GB", "x", "9999999999999999999999Gbit"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRate(s)
		if err == nil && (r < 0 || r != r) {
			t.Fatalf("%q: rate %v", s, r)
		}
	})
}
