package wire

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"testing"
	"time"
)

// TestHandleBorrowedReusesPayload checks that one-way messages to a
// HandleBorrowed handler arrive intact and in order, read into one reused
// buffer, while requests of the same type still get their own payload.
func TestHandleBorrowedReusesPayload(t *testing.T) {
	ids := newCluster(t, "srv", "cli")
	const typ MsgType = 310
	type seen struct {
		data  string
		first *byte
	}
	got := make(chan seen, 100)
	mux := &Mux{}
	mux.HandleBorrowed(typ, func(ctx context.Context, r *Request) ([]byte, error) {
		got <- seen{string(r.Payload), &r.Payload[0]}
		return []byte("ok"), nil
	})
	log := slog.New(slog.NewTextHandler(&logBuffer{}, nil))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		(&Listener{TLS: ids[0].ServerTLS(log), Cfg: &Config{Node: "srv", Mux: mux, Logger: log}}).Serve(ctx, ln)
	}()
	t.Cleanup(func() { cancel(); <-done })
	s, err := dial(t, ids[1], ln.Addr().String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var first *byte
	for i := range 50 {
		msg := fmt.Sprintf("%04d", i) + string(bytes.Repeat([]byte{byte('a' + i%26)}, 4096))
		if err := s.Send(ctx, typ, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		select {
		case g := <-got:
			if g.data != msg {
				t.Fatalf("message %d arrived as %.10q...", i, g.data)
			}
			if first == nil {
				first = g.first
			} else if g.first != first {
				t.Fatalf("message %d was read into a new buffer: payloads are not reused", i)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("message %d never arrived", i)
		}
	}
	// A request of the same type is served concurrently: own buffer.
	if _, err := s.Call(ctx, typ, []byte("request")); err != nil {
		t.Fatal(err)
	}
	if g := <-got; g.data != "request" || g.first == first {
		t.Fatalf("request payload %q in the lent buffer (%v)", g.data, g.first == first)
	}
}
