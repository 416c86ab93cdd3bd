package netdiag

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Stage is the point in the kernel's transmit path a timestamp was taken.
type Stage uint8

// Transmit timestamp stages, as reported in sock_extended_err.ee_info.
const (
	// StageSent is SCM_TSTAMP_SND: the data was handed to the device.
	StageSent Stage = unix.SCM_TSTAMP_SND
	// StageSched is SCM_TSTAMP_SCHED: the data entered the queueing layer.
	StageSched Stage = unix.SCM_TSTAMP_SCHED
	// StageAcked is SCM_TSTAMP_ACK: the peer acknowledged all of the data.
	StageAcked Stage = unix.SCM_TSTAMP_ACK
)

// String names the stage.
func (s Stage) String() string {
	switch s {
	case StageSent:
		return "sent"
	case StageSched:
		return "sched"
	case StageAcked:
		return "acked"
	}
	return fmt.Sprintf("stage(%d)", uint8(s))
}

// txTimestamp is one transmit timestamp read from the socket error queue.
type txTimestamp struct {
	// Key is ee_data: with SOF_TIMESTAMPING_OPT_ID on TCP, the offset of the
	// write's last byte counted from when timestamping was enabled, modulo
	// 2^32.
	Key   uint32
	Stage Stage
	// UnixNano is the software timestamp (CLOCK_REALTIME).
	UnixNano int64
}

// Sizes of the kernel structures carried in error-queue control messages.
const (
	sizeofScmTimestamping = 3 * 16 // struct scm_timestamping: 3 x timespec64
	sizeofSockExtendedErr = 16     // struct sock_extended_err
	// errQueueOOBSize is the control buffer for one error-queue message:
	// SCM_TIMESTAMPING plus IP(V6)_RECVERR with room for an offender address.
	errQueueOOBSize = 256
)

var errNotTimestamp = errors.New("error-queue message is not a transmit timestamp")

// parseTxTimestamp decodes the control messages of one MSG_ERRQUEUE read.
// It returns errNotTimestamp (wrapped) for messages that are not transmit
// timestamps and a descriptive error for malformed ones; it never panics on
// any input.
func parseTxTimestamp(oob []byte) (txTimestamp, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return txTimestamp{}, fmt.Errorf("parsing error-queue control messages: %w", err)
	}
	var (
		ts            txTimestamp
		haveTS, haveE bool
	)
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPING:
			if len(m.Data) < sizeofScmTimestamping {
				return txTimestamp{}, fmt.Errorf("SCM_TIMESTAMPING of %d bytes, want %d", len(m.Data), sizeofScmTimestamping)
			}
			sec := int64(binary.NativeEndian.Uint64(m.Data[0:8]))
			nsec := int64(binary.NativeEndian.Uint64(m.Data[8:16]))
			if sec < 0 || nsec < 0 || nsec >= 1e9 || sec > 1<<33 {
				return txTimestamp{}, fmt.Errorf("SCM_TIMESTAMPING out of range: %d s %d ns", sec, nsec)
			}
			ts.UnixNano = sec*1e9 + nsec
			haveTS = true
		case (m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_RECVERR) ||
			(m.Header.Level == unix.SOL_IPV6 && m.Header.Type == unix.IPV6_RECVERR):
			if len(m.Data) < sizeofSockExtendedErr {
				return txTimestamp{}, fmt.Errorf("sock_extended_err of %d bytes, want %d", len(m.Data), sizeofSockExtendedErr)
			}
			errno := binary.NativeEndian.Uint32(m.Data[0:4])
			origin := m.Data[4]
			if errno != uint32(unix.ENOMSG) || origin != unix.SO_EE_ORIGIN_TIMESTAMPING {
				return txTimestamp{}, fmt.Errorf("%w (errno %d, origin %d)", errNotTimestamp, errno, origin)
			}
			info := binary.NativeEndian.Uint32(m.Data[8:12])
			if info > uint32(StageAcked) {
				return txTimestamp{}, fmt.Errorf("unknown timestamp stage %d", info)
			}
			ts.Stage = Stage(info)
			ts.Key = binary.NativeEndian.Uint32(m.Data[12:16])
			haveE = true
		}
	}
	if !haveTS || !haveE {
		return txTimestamp{}, fmt.Errorf("%w (timestamp %v, extended error %v)", errNotTimestamp, haveTS, haveE)
	}
	return ts, nil
}

// timestampingFlags are set on the socket: report software timestamps, key
// them by byte offset (OPT_ID, counted from the next byte written with
// OPT_ID_TCP) and loop back only the timestamp, not the data (OPT_TSONLY).
// Which writes are timestamped is chosen per write with a control message
// carrying txRecordFlags.
const (
	timestampingFlags = unix.SOF_TIMESTAMPING_SOFTWARE | unix.SOF_TIMESTAMPING_OPT_ID |
		unix.SOF_TIMESTAMPING_OPT_TSONLY | unix.SOF_TIMESTAMPING_OPT_ID_TCP
	txRecordFlags = unix.SOF_TIMESTAMPING_TX_SCHED | unix.SOF_TIMESTAMPING_TX_SOFTWARE |
		unix.SOF_TIMESTAMPING_TX_ACK
)

// txCmsg builds the SO_TIMESTAMPING control message that asks for the
// scheduled, sent and acknowledged timestamps of one sendmsg.
func txCmsg() []byte {
	b := make([]byte, unix.CmsgSpace(4))
	h := (*unix.Cmsghdr)(unsafePointer(b))
	h.Level = unix.SOL_SOCKET
	h.Type = unix.SO_TIMESTAMPING
	h.SetLen(unix.CmsgLen(4))
	binary.NativeEndian.PutUint32(b[unix.CmsgLen(0):], uint32(txRecordFlags))
	return b
}

// errQueueBatch is how many error-queue messages one recvmmsg reads.
const errQueueBatch = 32

// errQueueReader reads the socket error queue in batches with recvmmsg.
type errQueueReader struct {
	hdrs [errQueueBatch]unix.Mmsghdr
	oob  [errQueueBatch][errQueueOOBSize]byte
}

func newErrQueueReader() *errQueueReader {
	r := &errQueueReader{}
	for i := range r.hdrs {
		r.hdrs[i].Hdr.Control = &r.oob[i][0]
	}
	return r
}

// read drains the error queue of fd, calling fn with the control bytes of
// each message (nil when the kernel truncated them). It returns when the
// queue is empty or on error.
func (r *errQueueReader) read(fd int, fn func(oob []byte)) {
	for {
		for i := range r.hdrs {
			r.hdrs[i].Hdr.SetControllen(errQueueOOBSize)
			r.hdrs[i].Hdr.Flags = 0
			r.hdrs[i].Len = 0
		}
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&r.hdrs[0])),
			errQueueBatch, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT, 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return // EAGAIN: empty
		}
		for i := 0; i < int(n); i++ {
			h := &r.hdrs[i].Hdr
			if h.Flags&unix.MSG_CTRUNC != 0 || int(h.Controllen) > errQueueOOBSize {
				fn(nil)
				continue
			}
			fn(r.oob[i][:h.Controllen])
		}
		if int(n) < errQueueBatch {
			return
		}
	}
}
