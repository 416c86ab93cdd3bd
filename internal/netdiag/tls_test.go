package netdiag

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"io"
	"math/big"
	"net"
	"testing"
	"time"
)

// selfSigned returns a TLS certificate for 127.0.0.1 made for the test.
func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "netdiag-test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestMonitorUnderTLS: with TLS above the monitor, the bytes on the wire
// are not the application's. SentEnd places each message's end at the
// ciphertext offset, so messages still join their last write's kernel
// timestamps and the transit splits into sender queue, wire and receiver.
func TestMonitorUnderTLS(t *testing.T) {
	cert := selfSigned(t)
	c, s := loopbackPair(t)
	const size, n = 256 << 10, 20
	go func() {
		srv := tls.Server(s, &tls.Config{Certificates: []tls.Certificate{cert}})
		defer srv.Close()
		msg := make([]byte, 8+size)
		for {
			if _, err := io.ReadFull(srv, msg); err != nil {
				return
			}
			now := time.Now()
			b, _ := NewAck(binary.BigEndian.Uint64(msg), now, now).MarshalBinary()
			if _, err := srv.Write(b); err != nil {
				return
			}
		}
	}()
	cfg := DefaultConfig()
	cfg.WriteSampleInterval = 0 // timestamp every write, so every message's last write is
	sink := &collect{}
	mon, err := NewConnMonitor(c, cfg, sink, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	pool.AddCert(leaf)
	cli := tls.Client(mon, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	msg := make([]byte, 8+size)
	ack := make([]byte, AckSize)
	for id := uint64(1); id <= n; id++ {
		binary.BigEndian.PutUint64(msg, id)
		mon.Sent(id, mon.Offset(), len(msg), time.Now())
		if _, err := cli.Write(msg); err != nil {
			t.Fatal(err)
		}
		mon.SentEnd(id)
		if _, err := io.ReadFull(cli, ack); err != nil {
			t.Fatal(err)
		}
		var a Ack
		if err := a.UnmarshalBinary(ack); err != nil {
			t.Fatal(err)
		}
		if err := mon.AckedFrom(a); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(50 * time.Millisecond)
	mon.Close()
	var msgs int
	for _, r := range sink.all() {
		if r.Msg != nil {
			msgs++
			if r.Msg.End <= r.Msg.Offset+uint64(r.Msg.Size) {
				t.Fatalf("message %d ends at %d, not past its plaintext end %d: TLS overhead not seen", r.Msg.ID, r.Msg.End, r.Msg.Offset+uint64(r.Msg.Size))
			}
		}
	}
	sums := Summarize(sink.all(), 0, "")
	if msgs != n || len(sums) != 1 {
		t.Fatalf("%d message records, %d summaries; want %d and 1", msgs, len(sums), n)
	}
	if d := sums[0].MsgDecomposed; d < n/2 {
		t.Fatalf("%d of %d messages joined their last write's timestamps, want most", d, n)
	}
	if sums[0].MsgWireP50 <= 0 {
		t.Fatalf("wire stage p50 %v, want positive", sums[0].MsgWireP50)
	}
}
