package netdiag

import (
	"encoding/binary"
	"fmt"
	"time"
)

// AckSize is the encoded size of an [Ack].
const AckSize = 24

// Ack is what a receiver sends back for one message so the sender can split
// the message's transit time. RecvUnixNano is when the receiver had read the
// whole message off the connection, HandoffUnixNano when it handed it to the
// application (wrote it out, queued it for the consumer); both are the
// receiver's clock, and only their difference is used by the sender.
type Ack struct {
	MsgID           uint64
	RecvUnixNano    int64
	HandoffUnixNano int64
}

// NewAck builds the acknowledgement of msgID from the receiver's times.
func NewAck(msgID uint64, recv, handoff time.Time) Ack {
	return Ack{MsgID: msgID, RecvUnixNano: recv.UnixNano(), HandoffUnixNano: handoff.UnixNano()}
}

// ReceiverApp returns the time the message spent in the receiving
// application.
func (a Ack) ReceiverApp() time.Duration {
	return time.Duration(a.HandoffUnixNano - a.RecvUnixNano)
}

// AppendBinary appends the 24-byte big-endian encoding of a to b.
func (a Ack) AppendBinary(b []byte) ([]byte, error) {
	b = binary.BigEndian.AppendUint64(b, a.MsgID)
	b = binary.BigEndian.AppendUint64(b, uint64(a.RecvUnixNano))
	b = binary.BigEndian.AppendUint64(b, uint64(a.HandoffUnixNano))
	return b, nil
}

// MarshalBinary returns the 24-byte encoding of a.
func (a Ack) MarshalBinary() ([]byte, error) { return a.AppendBinary(make([]byte, 0, AckSize)) }

// UnmarshalBinary decodes exactly AckSize bytes. It rejects a hand-off time
// before the receive time, which no correct receiver produces.
func (a *Ack) UnmarshalBinary(b []byte) error {
	if len(b) != AckSize {
		return fmt.Errorf("decoding netdiag ack: %d bytes, want %d", len(b), AckSize)
	}
	d := Ack{
		MsgID:           binary.BigEndian.Uint64(b[0:8]),
		RecvUnixNano:    int64(binary.BigEndian.Uint64(b[8:16])),
		HandoffUnixNano: int64(binary.BigEndian.Uint64(b[16:24])),
	}
	if d.RecvUnixNano <= 0 || d.HandoffUnixNano < d.RecvUnixNano {
		return fmt.Errorf("decoding netdiag ack for message %d: hand-off %d before receive %d", d.MsgID, d.HandoffUnixNano, d.RecvUnixNano)
	}
	*a = d
	return nil
}
