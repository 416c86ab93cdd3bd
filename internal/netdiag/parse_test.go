package netdiag

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// cmsg builds one control message as the kernel lays it out.
func cmsg(level, typ int32, data []byte) []byte {
	b := make([]byte, unix.CmsgSpace(len(data)))
	h := (*unix.Cmsghdr)(unsafePointer(b))
	h.Level, h.Type = level, typ
	h.SetLen(unix.CmsgLen(len(data)))
	copy(b[unix.CmsgLen(0):], data)
	return b
}

func scmTimestamping(sec, nsec int64) []byte {
	d := make([]byte, sizeofScmTimestamping)
	binary.NativeEndian.PutUint64(d[0:], uint64(sec))
	binary.NativeEndian.PutUint64(d[8:], uint64(nsec))
	return cmsg(unix.SOL_SOCKET, unix.SCM_TIMESTAMPING, d)
}

func extErr(level, typ int32, errno uint32, origin uint8, info, data uint32) []byte {
	d := make([]byte, sizeofSockExtendedErr)
	binary.NativeEndian.PutUint32(d[0:], errno)
	d[4] = origin
	binary.NativeEndian.PutUint32(d[8:], info)
	binary.NativeEndian.PutUint32(d[12:], data)
	return cmsg(level, typ, d)
}

func TestParseTxTimestamp(t *testing.T) {
	enomsg := uint32(unix.ENOMSG)
	ts := scmTimestamping(1_700_000_000, 123)
	tests := []struct {
		name    string
		oob     []byte
		want    txTimestamp
		wantErr string
		notTS   bool
	}{
		{"ipv4 ack", append(append([]byte{}, ts...), extErr(unix.SOL_IP, unix.IP_RECVERR, enomsg, unix.SO_EE_ORIGIN_TIMESTAMPING, unix.SCM_TSTAMP_ACK, 99999)...),
			txTimestamp{Key: 99999, Stage: StageAcked, UnixNano: 1_700_000_000*1e9 + 123}, "", false},
		{"ipv6 sched, error first", append(extErr(unix.SOL_IPV6, unix.IPV6_RECVERR, enomsg, unix.SO_EE_ORIGIN_TIMESTAMPING, unix.SCM_TSTAMP_SCHED, 7), ts...),
			txTimestamp{Key: 7, Stage: StageSched, UnixNano: 1_700_000_000*1e9 + 123}, "", false},
		{"no extended error", ts, txTimestamp{}, "", true},
		{"no timestamp", extErr(unix.SOL_IP, unix.IP_RECVERR, enomsg, unix.SO_EE_ORIGIN_TIMESTAMPING, 0, 1), txTimestamp{}, "", true},
		{"icmp error, not a timestamp", append(append([]byte{}, ts...), extErr(unix.SOL_IP, unix.IP_RECVERR, uint32(unix.EHOSTUNREACH), unix.SO_EE_ORIGIN_ICMP, 0, 0)...), txTimestamp{}, "", true},
		{"unknown stage", append(append([]byte{}, ts...), extErr(unix.SOL_IP, unix.IP_RECVERR, enomsg, unix.SO_EE_ORIGIN_TIMESTAMPING, 9, 0)...), txTimestamp{}, "unknown timestamp stage", false},
		{"short timestamp", cmsg(unix.SOL_SOCKET, unix.SCM_TIMESTAMPING, make([]byte, 8)), txTimestamp{}, "SCM_TIMESTAMPING of 8 bytes", false},
		{"short extended error", cmsg(unix.SOL_IP, unix.IP_RECVERR, make([]byte, 4)), txTimestamp{}, "sock_extended_err of 4 bytes", false},
		{"nanoseconds out of range", scmTimestamping(1, 2e9), txTimestamp{}, "out of range", false},
		{"shorter than a header", []byte{1, 2, 3}, txTimestamp{}, "", true},
		{"truncated message", ts[:20], txTimestamp{}, "parsing error-queue", false},
		{"empty", nil, txTimestamp{}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseTxTimestamp(tt.oob)
			switch {
			case tt.notTS:
				if !errors.Is(err, errNotTimestamp) {
					t.Fatalf("err %v, want errNotTimestamp", err)
				}
			case tt.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want one containing %q", err, tt.wantErr)
				}
			default:
				if err != nil {
					t.Fatal(err)
				}
				if got != tt.want {
					t.Fatalf("got %+v, want %+v", got, tt.want)
				}
			}
		})
	}
}

func FuzzParseTxTimestamp(f *testing.F) {
	ts := scmTimestamping(1_700_000_000, 5)
	f.Add(append(append([]byte{}, ts...), extErr(unix.SOL_IP, unix.IP_RECVERR, uint32(unix.ENOMSG), unix.SO_EE_ORIGIN_TIMESTAMPING, 2, 42)...))
	f.Add(ts)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, oob []byte) {
		got, err := parseTxTimestamp(oob)
		if err == nil && (got.Stage > StageAcked || got.UnixNano < 0) {
			t.Fatalf("accepted %+v", got)
		}
	})
}

func TestAckRoundTrip(t *testing.T) {
	recv := time.Unix(1_700_000_000, 5)
	tests := []struct {
		name    string
		ack     Ack
		wantErr bool
	}{
		{"normal", NewAck(7, recv, recv.Add(3*time.Millisecond)), false},
		{"instant hand-off", NewAck(1<<63, recv, recv), false},
		{"hand-off before receive", Ack{MsgID: 1, RecvUnixNano: 100, HandoffUnixNano: 99}, true},
		{"no receive time", Ack{MsgID: 1, RecvUnixNano: 0, HandoffUnixNano: 5}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := tt.ack.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if len(b) != AckSize {
				t.Fatalf("encoded %d bytes, want %d", len(b), AckSize)
			}
			var got Ack
			err = got.UnmarshalBinary(b)
			if (err != nil) != tt.wantErr {
				t.Fatalf("UnmarshalBinary: %v, wantErr %v", err, tt.wantErr)
			}
			if !tt.wantErr && got != tt.ack {
				t.Fatalf("round trip %+v, want %+v", got, tt.ack)
			}
			if tt.wantErr && got != (Ack{}) {
				t.Fatalf("failed decode modified the ack: %+v", got)
			}
		})
	}
	var a Ack
	if err := a.UnmarshalBinary(make([]byte, AckSize-1)); err == nil {
		t.Fatal("short ack accepted")
	}
	if d := NewAck(1, recv, recv.Add(time.Second)).ReceiverApp(); d != time.Second {
		t.Fatalf("ReceiverApp %v, want 1s", d)
	}
}

func FuzzAckUnmarshal(f *testing.F) {
	b, _ := NewAck(3, time.Unix(1, 0), time.Unix(2, 0)).MarshalBinary()
	f.Add(b)
	f.Add(make([]byte, AckSize))
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, b []byte) {
		var a Ack
		if err := a.UnmarshalBinary(b); err != nil {
			return
		}
		if a.HandoffUnixNano < a.RecvUnixNano || a.RecvUnixNano <= 0 {
			t.Fatalf("accepted inconsistent ack %+v", a)
		}
		enc, _ := a.MarshalBinary()
		if !bytes.Equal(enc, b) {
			t.Fatalf("re-encoding differs: %x vs %x", enc, b)
		}
	})
}

func TestDecodeRecord(t *testing.T) {
	tests := []struct {
		name string
		line string
		ok   bool
	}{
		{"tcpinfo", `{"t":1,"kind":"tcpinfo","conn":"a-1","peer":"p","tcp":{"srtt_us":5}}`, true},
		{"write", `{"t":1,"kind":"write","conn":"a-1","peer":"p","write":{"off":0,"size":1}}`, true},
		{"kind without payload", `{"t":1,"kind":"msg","conn":"a-1","peer":"p"}`, false},
		{"unknown kind", `{"t":1,"kind":"x","conn":"a-1","tcp":{}}`, false},
		{"no conn", `{"t":1,"kind":"tcpinfo","tcp":{}}`, false},
		{"torn", `{"t":1,"kind":"tcpinfo","conn":"a-1","tcp":{"srtt`, false},
		{"wrong type", `{"t":"yesterday","kind":"tcpinfo","conn":"a-1","tcp":{}}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeRecord([]byte(tt.line))
			if (err == nil) != tt.ok {
				t.Fatalf("DecodeRecord: %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

func FuzzDecodeRecord(f *testing.F) {
	f.Add([]byte(`{"t":1,"kind":"tcpinfo","conn":"a-1","peer":"p","tcp":{"srtt_us":5}}`))
	f.Add([]byte(`{"t":1,"kind":"msg","conn":"a-1","peer":"p","msg":{"id":1,"transit_ns":5}}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeRecord(b)
		if err != nil {
			return
		}
		if r.Conn == "" {
			t.Fatal("accepted a record without connection id")
		}
		// Whatever decodes must summarise and classify without panicking.
		for _, s := range Summarize([]Record{r}, 0, "") {
			_ = Classify(s, DefaultThresholds())
		}
	})
}

func TestRecorderRotatesAndBounds(t *testing.T) {
	dir := t.TempDir()
	cfg := RecorderConfig{Dir: dir, MaxFileBytes: MinMaxFileBytes, MaxTotalBytes: 4 * MinMaxFileBytes, Buffer: 100000, FlushInterval: time.Millisecond}
	rec, err := NewRecorder(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	const n = 2000
	for i := range n {
		rec.Record(Record{Time: int64(i + 1), Kind: KindTCPInfo, Conn: "c-1", Peer: "p", TCPInfo: &TCPInfoSample{RTTus: uint32(i)}})
		if i%200 == 0 {
			time.Sleep(time.Millisecond) // distinct file names
		}
	}
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	if d := rec.Dropped(); d != 0 {
		t.Fatalf("dropped %d records with a large buffer", d)
	}
	files, err := logFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, f := range files {
		info, _ := f.Info()
		total += info.Size()
		if info.Size() > cfg.MaxFileBytes {
			t.Errorf("%s is %d bytes, above the rotation size %d", f.Name(), info.Size(), cfg.MaxFileBytes)
		}
	}
	if len(files) < 2 {
		t.Fatalf("%d files: want rotation", len(files))
	}
	if total > cfg.MaxTotalBytes+cfg.MaxFileBytes {
		t.Fatalf("directory holds %d bytes, bound %d (+ one file being written)", total, cfg.MaxTotalBytes)
	}
	// What is kept is the newest records, in order, ending with the last.
	var last uint32
	var got int
	st, err := ReadLog(dir, func(r Record) {
		if r.TCPInfo.RTTus < last {
			t.Fatalf("record %d after %d: out of order", r.TCPInfo.RTTus, last)
		}
		last = r.TCPInfo.RTTus
		got++
	})
	if err != nil {
		t.Fatal(err)
	}
	if last != n-1 || got == 0 || got >= n || st.BadLines != 0 {
		t.Fatalf("read %d records ending at %d (%d bad lines); want the newest, ending at %d", got, last, st.BadLines, n-1)
	}
}

func TestReadLogSkipsBadLines(t *testing.T) {
	dir := t.TempDir()
	good := `{"t":1,"kind":"tcpinfo","conn":"a-1","peer":"p","tcp":{"srtt_us":5}}`
	content := good + "\nnot json\n\n" + good + "\n" + `{"t":2,"kind":"tcpinfo","conn":"a-1","tcp":{"srt`
	if err := os.WriteFile(filepath.Join(dir, logPrefix+"00000000000000000001-1"+logSuffix), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "unrelated.txt"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	var n int
	st, err := ReadLog(dir, func(Record) { n++ })
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 || st.Records != 2 || st.BadLines != 2 || st.Files != 1 {
		t.Fatalf("got %d records, stats %+v; want 2 records, 2 bad lines, 1 file", n, st)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Config)
		ok   bool
	}{
		{"defaults", func(*Config) {}, true},
		{"sampling off", func(c *Config) { c.TCPInfoInterval = 0; c.KernelTimestamps = false }, true},
		{"zero write sampling", func(c *Config) { c.WriteSampleEvery = 0 }, false},
		{"zero msg sampling", func(c *Config) { c.MsgSampleEvery = 0 }, false},
		{"tcpinfo too fast", func(c *Config) { c.TCPInfoInterval = time.Microsecond }, false},
		{"no drain with timestamps", func(c *Config) { c.DrainInterval = 0 }, false},
		{"negative sample interval", func(c *Config) { c.WriteSampleInterval = -time.Second }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.mod(&c)
			if err := c.Validate(); (err == nil) != tt.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tt.ok)
			}
		})
	}
	rc := DefaultRecorderConfig("")
	if err := rc.Validate(); err == nil {
		t.Fatal("recorder config without dir accepted")
	}
}
