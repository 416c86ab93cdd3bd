package netdiag

import "time"

// Kind names the type of a [Record].
type Kind string

// Record kinds.
const (
	// KindConn opens a connection: its addresses and what is measured.
	KindConn Kind = "conn"
	// KindWrite is one application write with its kernel timestamps.
	KindWrite Kind = "write"
	// KindMsg is one application message and its acknowledgement.
	KindMsg Kind = "msg"
	// KindTCPInfo is one TCP_INFO sample.
	KindTCPInfo Kind = "tcpinfo"
	// KindClose ends a connection with its totals.
	KindClose Kind = "close"
)

// Record is one line of the netdiag log. Exactly one of the pointer fields
// is set, matching Kind. Times are Unix nanoseconds of the recording host's
// clock unless the field says otherwise.
type Record struct {
	// Time is when the record was made (Unix ns).
	Time int64 `json:"t"`
	// Kind says which of the pointer fields is set.
	Kind Kind `json:"kind"`
	// Conn identifies the connection (unique within a log directory).
	Conn string `json:"conn"`
	// Peer is the remote address of the connection, or the label the
	// embedding application gave it.
	Peer string `json:"peer"`

	Open    *ConnOpen      `json:"open,omitempty"`
	Write   *WriteRecord   `json:"write,omitempty"`
	Msg     *MsgRecord     `json:"msg,omitempty"`
	TCPInfo *TCPInfoSample `json:"tcp,omitempty"`
	Close   *ConnClose     `json:"close,omitempty"`
}

// ConnOpen describes a monitored connection.
type ConnOpen struct {
	Local  string `json:"local"`
	Remote string `json:"remote"`
	// Role is what the embedding application does on the connection, e.g.
	// "sender", "receiver", "proxy-to-server", "proxy-to-client".
	Role string `json:"role,omitempty"`
	// KernelTimestamps reports whether SO_TIMESTAMPING could be enabled.
	KernelTimestamps bool `json:"kernel_ts"`
	// WriteSampleEvery is the write sampling period in force.
	WriteSampleEvery int `json:"write_sample_every"`
}

// WriteRecord is one sampled application write. Offsets count bytes written
// through the monitor since it was created. Kernel times are zero when the
// kernel did not report them.
type WriteRecord struct {
	Offset uint64 `json:"off"`
	Size   int    `json:"size"`
	// Start and End bracket the write call in the application.
	Start int64 `json:"start"`
	End   int64 `json:"end"`
	// Sched is when the write's last byte entered the queueing layer
	// (SCM_TSTAMP_SCHED), Sent when it was handed to the device
	// (SCM_TSTAMP_SND), Acked when the peer acknowledged it (SCM_TSTAMP_ACK).
	Sched int64 `json:"sched,omitempty"`
	Sent  int64 `json:"sent,omitempty"`
	Acked int64 `json:"acked,omitempty"`
}

// KernelQueue is the time the write's last byte waited in the sender's
// kernel (socket buffer and queueing layer) after the write returned.
func (w WriteRecord) KernelQueue() time.Duration {
	if w.Sent == 0 {
		return 0
	}
	return time.Duration(max(w.Sent-w.End, 0))
}

// AckTime is the time from the device hand-off of the write's last byte to
// its acknowledgement by the peer: one round trip plus any delay in the
// receiver's kernel.
func (w WriteRecord) AckTime() time.Duration {
	if w.Sent == 0 || w.Acked == 0 {
		return 0
	}
	return time.Duration(max(w.Acked-w.Sent, 0))
}

// MsgRecord is one acknowledged application message. SentAt and AckedAt are
// on the sender's clock; the receiver's figures arrive as a duration
// (ReceiverApp) so that the clocks never need to agree.
type MsgRecord struct {
	ID     uint64 `json:"id"`
	Offset uint64 `json:"off"`
	// End is the byte offset just past the message's last byte on the
	// connection (Offset+Size unless a layer above the monitor, such as
	// TLS, changed the byte count; see ConnMonitor.SentEnd).
	End  uint64 `json:"end,omitempty"`
	Size int    `json:"size"`
	// SentAt is when the sender handed the message to the connection.
	SentAt int64 `json:"sent"`
	// AckedAt is when the sender received the acknowledgement.
	AckedAt int64 `json:"acked"`
	// RecvAt and HandoffAt are the receiver's own timestamps (its clock).
	RecvAt    int64 `json:"recv"`
	HandoffAt int64 `json:"handoff"`
	// Transit is AckedAt - SentAt (ns).
	Transit int64 `json:"transit_ns"`
	// ReceiverApp is HandoffAt - RecvAt (ns): the time the message spent in
	// the receiving application between arriving and being handed on.
	ReceiverApp int64 `json:"recv_app_ns"`
	// Network is Transit - ReceiverApp (ns): the part of the transit spent
	// on the path, in kernels and in the sender's queue.
	Network int64 `json:"network_ns"`
}

// ConnClose carries a connection's totals.
type ConnClose struct {
	BytesWritten uint64 `json:"bytes_written"`
	BytesRead    uint64 `json:"bytes_read"`
	Writes       uint64 `json:"writes"`
	// TimestampsLost counts error-queue entries that could not be matched
	// to a write (evicted or malformed).
	TimestampsLost uint64 `json:"ts_lost"`
	// AckTimestampsMissing counts sampled writes logged without an
	// acknowledgement timestamp: a later write's came first, or the
	// connection was finished before it came.
	AckTimestampsMissing uint64 `json:"ack_ts_missing"`
	// NotPollableRecoveries counts reads that recovered from the Go
	// runtime's EPOLLERR-only wakeup (see ConnMonitor.Read).
	NotPollableRecoveries uint64 `json:"notpollable_recoveries"`
}
