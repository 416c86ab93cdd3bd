package netdiag

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TCPInfoSample is the subset of the kernel's struct tcp_info that netdiag
// uses. Durations are microseconds as the kernel reports them; counters are
// cumulative over the connection's life.
type TCPInfoSample struct {
	State       uint8  `json:"state"`
	CAState     uint8  `json:"ca_state"`
	Retransmits uint8  `json:"retransmits"`
	Probes      uint8  `json:"probes"`
	Backoff     uint8  `json:"backoff"`
	RTTus       uint32 `json:"srtt_us"`
	RTTVarus    uint32 `json:"rttvar_us"`
	MinRTTus    uint32 `json:"min_rtt_us"`
	RTOus       uint32 `json:"rto_us"`
	SndCwnd     uint32 `json:"cwnd"`
	// SndSsthresh is the slow-start threshold; InfiniteSsthresh until the
	// first loss ends the initial slow start.
	SndSsthresh  uint32 `json:"ssthresh"`
	SndMSS       uint32 `json:"mss"`
	Unacked      uint32 `json:"unacked"`
	Lost         uint32 `json:"lost"`
	TotalRetrans uint32 `json:"total_retrans"`
	// DataSegsOut counts data segments sent, retransmissions included;
	// DsackDups counts retransmissions the peer reported as duplicates
	// (spurious: the original was not lost).
	DataSegsOut  uint32 `json:"data_segs_out"`
	DsackDups    uint32 `json:"dsack_dups"`
	BytesSent    uint64 `json:"bytes_sent"`
	BytesAcked   uint64 `json:"bytes_acked"`
	BytesRetrans uint64 `json:"bytes_retrans"`
	BytesRecv    uint64 `json:"bytes_received"`
	// DeliveryRate is the kernel's most recent delivery rate estimate in
	// bytes per second; AppLimited says the estimate was taken while the
	// sender had nothing to send (it then understates the path).
	DeliveryRate uint64 `json:"delivery_rate"`
	AppLimited   bool   `json:"app_limited"`
	PacingRate   uint64 `json:"pacing_rate"`
	// BusyUs is the time the connection had data to send (includes the two
	// limited times below); RwndLimitedUs the part limited by the peer's
	// receive window; SndbufLimitedUs the part limited by the send buffer.
	BusyUs          uint64 `json:"busy_us"`
	RwndLimitedUs   uint64 `json:"rwnd_limited_us"`
	SndbufLimitedUs uint64 `json:"sndbuf_limited_us"`
	// SndWnd is the peer's advertised receive window; 0 means zero window.
	SndWnd  uint32 `json:"snd_wnd"`
	RcvWnd  uint32 `json:"rcv_wnd"`
	NotSent uint32 `json:"notsent"`
	// RecvQueue is the number of unread bytes in this socket's receive
	// queue (SIOCINQ) and RecvBuf its receive buffer size (SO_RCVBUF).
	RecvQueue int `json:"recvq"`
	RecvBuf   int `json:"rcvbuf"`
	// SendQueue is the number of unsent plus unacknowledged bytes (SIOCOUTQ).
	SendQueue int `json:"sendq"`
}

// InfiniteSsthresh is the kernel's TCP_INFINITE_SSTHRESH.
const InfiniteSsthresh = 0x7fffffff

// caStateOpen is TCP_CA_Open: no loss recovery in progress.
const caStateOpen = 0

// tcpiBitfieldOffset is the offset in struct tcp_info of the byte holding
// tcpi_delivery_rate_app_limited (bit 0) and tcpi_fastopen_client_fail. The
// x/sys TCPInfo struct models it as padding, so it is read from memory.
const tcpiBitfieldOffset = 7

// readTCPInfo samples TCP_INFO, SIOCINQ, SIOCOUTQ and SO_RCVBUF on fd.
func readTCPInfo(fd int) (TCPInfoSample, error) {
	ti, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return TCPInfoSample{}, fmt.Errorf("getsockopt TCP_INFO: %w", err)
	}
	raw := (*[unix.SizeofTCPInfo]byte)(unsafe.Pointer(ti))
	s := TCPInfoSample{
		State:           ti.State,
		CAState:         ti.Ca_state,
		Retransmits:     ti.Retransmits,
		Probes:          ti.Probes,
		Backoff:         ti.Backoff,
		RTTus:           ti.Rtt,
		RTTVarus:        ti.Rttvar,
		MinRTTus:        ti.Min_rtt,
		RTOus:           ti.Rto,
		SndCwnd:         ti.Snd_cwnd,
		SndSsthresh:     ti.Snd_ssthresh,
		SndMSS:          ti.Snd_mss,
		Unacked:         ti.Unacked,
		Lost:            ti.Lost,
		TotalRetrans:    ti.Total_retrans,
		DataSegsOut:     ti.Data_segs_out,
		DsackDups:       ti.Dsack_dups,
		BytesSent:       ti.Bytes_sent,
		BytesAcked:      ti.Bytes_acked,
		BytesRetrans:    ti.Bytes_retrans,
		BytesRecv:       ti.Bytes_received,
		DeliveryRate:    ti.Delivery_rate,
		AppLimited:      raw[tcpiBitfieldOffset]&1 != 0,
		PacingRate:      ti.Pacing_rate,
		BusyUs:          ti.Busy_time,
		RwndLimitedUs:   ti.Rwnd_limited,
		SndbufLimitedUs: ti.Sndbuf_limited,
		SndWnd:          ti.Snd_wnd,
		RcvWnd:          ti.Rcv_wnd,
		NotSent:         ti.Notsent_bytes,
	}
	if n, err := unix.IoctlGetInt(fd, unix.SIOCINQ); err == nil {
		s.RecvQueue = n
	}
	if n, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ); err == nil {
		s.SendQueue = n
	}
	if n, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF); err == nil {
		s.RecvBuf = n
	}
	return s, nil
}
