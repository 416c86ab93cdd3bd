package netdiag_test

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/holdfast/holdfast/internal/netdiag"
)

// A sender monitors its connection, records each message it sends and
// feeds the receiver's acknowledgements back; the receiver stamps arrival
// and hand-off and answers with a 24-byte netdiag.Ack.
func ExampleNewConnMonitor() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer ln.Close()

	// Receiver: 8-byte id + 64 KiB payload per message, one Ack back each.
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		msg := make([]byte, 8+64<<10)
		for {
			if _, err := io.ReadFull(c, msg); err != nil {
				return
			}
			received := time.Now()
			// ... hand the message to the application here ...
			ack, _ := netdiag.NewAck(binary.BigEndian.Uint64(msg), received, time.Now()).MarshalBinary()
			if _, err := c.Write(ack); err != nil {
				return
			}
		}
	}()

	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		fmt.Println(err)
		return
	}
	var msgs atomic.Int64
	sink := netdiag.SinkFunc(func(r netdiag.Record) { // a Recorder in real use
		if r.Kind == netdiag.KindMsg {
			msgs.Add(1)
		}
	})
	mon, err := netdiag.NewConnMonitor(conn.(*net.TCPConn), netdiag.DefaultConfig(), sink, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	msg := make([]byte, 8+64<<10)
	for id := uint64(1); id <= 3; id++ {
		binary.BigEndian.PutUint64(msg, id)
		mon.Sent(id, mon.Offset(), len(msg), time.Now())
		if _, err := mon.Write(msg); err != nil {
			fmt.Println(err)
			return
		}
		b := make([]byte, netdiag.AckSize)
		if _, err := io.ReadFull(mon, b); err != nil {
			fmt.Println(err)
			return
		}
		var a netdiag.Ack
		if err := a.UnmarshalBinary(b); err != nil {
			fmt.Println(err)
			return
		}
		if err := mon.AckedFrom(a); err != nil {
			fmt.Println(err)
			return
		}
	}
	mon.Close()
	fmt.Printf("%d messages recorded, %d bytes written\n", msgs.Load(), mon.Offset())
	// Output: 3 messages recorded, 196632 bytes written
}
