package bulk

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/holdfast/holdfast/internal/wire"
)

// Message types of the bulk protocol (1000-1099 are bulk's).
const (
	// MsgPing is a request answered at once: RTT measurement.
	MsgPing wire.MsgType = 1000
	// MsgPrime is a one-way message carrying priming traffic; discarded.
	MsgPrime wire.MsgType = 1001
	// MsgBegin is a request opening a transfer (JSON beginReq → beginResp).
	MsgBegin wire.MsgType = 1002
	// MsgBlock is a one-way message carrying one block (blockHeader + data).
	MsgBlock wire.MsgType = 1003
	// MsgAck is a one-way message acknowledging one block (ack).
	MsgAck wire.MsgType = 1004
	// MsgCommit is a request finishing one file (JSON commitReq).
	MsgCommit wire.MsgType = 1005
	// MsgEnd is a request finishing a transfer: directories, symlinks
	// (JSON endReq).
	MsgEnd wire.MsgType = 1006
	// MsgFetch is a request asking the peer to send files back (JSON
	// fetchReq → Report as JSON).
	MsgFetch wire.MsgType = 1007
	// MsgFetchJoin is a request adding the session it arrives on to a
	// fetch group (16-byte group id), so the peer can send a fetch over all
	// of the fetching client's connections.
	MsgFetchJoin wire.MsgType = 1008
)

// Protocol limits.
const (
	// MinBlockSize and MaxBlockSize bound the block size of a transfer.
	MinBlockSize = 4 << 10
	MaxBlockSize = 8 << 20
	// DefaultBlockSize is the block size unless Options say otherwise.
	DefaultBlockSize = 1 << 20
	// MaxEntries bounds the number of entries of one transfer.
	MaxEntries = 1 << 20
	// MaxBeginSize bounds the encoded Begin request.
	MaxBeginSize = 15 << 20
	// blockHeaderSize is the encoded size of blockHeader.
	blockHeaderSize = 16 + 4 + 4 + 8 + 8 + 1 + 4 + 32
	// ackSize is the encoded size of ack without its message.
	ackSize = 16 + 4 + 4 + 8 + 8 + 8 + 8 + 1 + 2
	// maxAckMsg bounds the error message of an ack.
	maxAckMsg = 1024
)

// TransferID identifies one transfer.
type TransferID [16]byte

func (id TransferID) String() string { return fmt.Sprintf("%x", id[:]) }

// block flags.
const (
	flagHole = 1 << 0 // no data: the block lies in a hole of a sparse file
)

// blockHeader precedes a block's data in a MsgBlock payload.
type blockHeader struct {
	ID       TransferID
	File     uint32 // index into the transfer's entries
	Index    uint32 // block index within the file
	Msg      uint64 // message id, unique within the transfer (for acks and tracing)
	SentNano int64  // sender's clock when the message was handed to the socket
	Flags    uint8
	Len      uint32 // length of the block (for a hole: of the hole)
	Sum      [32]byte
}

func (h *blockHeader) put(b []byte) {
	copy(b[0:16], h.ID[:])
	binary.BigEndian.PutUint32(b[16:], h.File)
	binary.BigEndian.PutUint32(b[20:], h.Index)
	binary.BigEndian.PutUint64(b[24:], h.Msg)
	binary.BigEndian.PutUint64(b[32:], uint64(h.SentNano))
	b[40] = h.Flags
	binary.BigEndian.PutUint32(b[41:], h.Len)
	copy(b[45:77], h.Sum[:])
}

var errShort = errors.New("bulk: short message")

func parseBlock(b []byte) (blockHeader, []byte, error) {
	var h blockHeader
	if len(b) < blockHeaderSize {
		return h, nil, fmt.Errorf("%w: block header of %d bytes", errShort, len(b))
	}
	copy(h.ID[:], b[0:16])
	h.File = binary.BigEndian.Uint32(b[16:])
	h.Index = binary.BigEndian.Uint32(b[20:])
	h.Msg = binary.BigEndian.Uint64(b[24:])
	h.SentNano = int64(binary.BigEndian.Uint64(b[32:]))
	h.Flags = b[40]
	h.Len = binary.BigEndian.Uint32(b[41:])
	copy(h.Sum[:], b[45:77])
	data := b[blockHeaderSize:]
	if h.Flags&^flagHole != 0 {
		return h, nil, fmt.Errorf("bulk: unknown block flags %#x", h.Flags)
	}
	if h.Len > MaxBlockSize {
		return h, nil, fmt.Errorf("bulk: block of %d bytes exceeds %d", h.Len, MaxBlockSize)
	}
	if h.Flags&flagHole != 0 {
		if len(data) != 0 {
			return h, nil, fmt.Errorf("bulk: hole block carries %d bytes", len(data))
		}
	} else if uint32(len(data)) != h.Len {
		return h, nil, fmt.Errorf("bulk: block says %d bytes, carries %d", h.Len, len(data))
	}
	return h, data, nil
}

// Ack status codes.
const (
	ackOK     = 0
	ackBadSum = 1 // checksum mismatch: send the block again
	ackFail   = 2 // the receiver cannot store the block: the transfer fails
	ackFull   = 3 // the receiver's disk is full: the transfer fails, resumable
)

// ack acknowledges one block. Its times are the receiver's clock: when the
// message was read off the connection and when its data was handed to the
// file system. Together with the sender's send time they feed latency
// records (internal/netdiag).
type ack struct {
	ID        TransferID
	File      uint32
	Index     uint32
	Msg       uint64
	RecvNano  int64
	WriteNano int64 // hand-off: the block was written to the file
	Total     int64 // bytes the receiver has stored for this transfer
	Status    uint8
	Err       string
}

func (a *ack) encode() []byte {
	msg := a.Err
	if len(msg) > maxAckMsg {
		msg = msg[:maxAckMsg]
	}
	b := make([]byte, ackSize+len(msg))
	copy(b[0:16], a.ID[:])
	binary.BigEndian.PutUint32(b[16:], a.File)
	binary.BigEndian.PutUint32(b[20:], a.Index)
	binary.BigEndian.PutUint64(b[24:], a.Msg)
	binary.BigEndian.PutUint64(b[32:], uint64(a.RecvNano))
	binary.BigEndian.PutUint64(b[40:], uint64(a.WriteNano))
	binary.BigEndian.PutUint64(b[48:], uint64(a.Total))
	b[56] = a.Status
	binary.BigEndian.PutUint16(b[57:], uint16(len(msg)))
	copy(b[ackSize:], msg)
	return b
}

func parseAck(b []byte) (ack, error) {
	var a ack
	if len(b) < ackSize {
		return a, fmt.Errorf("%w: ack of %d bytes", errShort, len(b))
	}
	copy(a.ID[:], b[0:16])
	a.File = binary.BigEndian.Uint32(b[16:])
	a.Index = binary.BigEndian.Uint32(b[20:])
	a.Msg = binary.BigEndian.Uint64(b[24:])
	a.RecvNano = int64(binary.BigEndian.Uint64(b[32:]))
	a.WriteNano = int64(binary.BigEndian.Uint64(b[40:]))
	a.Total = int64(binary.BigEndian.Uint64(b[48:]))
	a.Status = b[56]
	n := int(binary.BigEndian.Uint16(b[57:]))
	if n > maxAckMsg || len(b) != ackSize+n {
		return a, fmt.Errorf("bulk: ack message of %d bytes in a %d-byte ack", n, len(b))
	}
	a.Err = string(b[ackSize:])
	return a, nil
}

// EntryType is the kind of a transferred entry.
type EntryType string

// Entry types.
const (
	TypeFile    EntryType = "file"
	TypeDir     EntryType = "dir"
	TypeSymlink EntryType = "symlink"
)

// Entry describes one file system entry of a transfer.
type Entry struct {
	// Path is slash-separated and relative to the transfer's destination;
	// "." is the destination itself.
	Path   string    `json:"path"`
	Type   EntryType `json:"type"`
	Mode   uint32    `json:"mode"` // permission bits (and setuid/setgid/sticky)
	MTime  int64     `json:"mtime_ns"`
	Size   int64     `json:"size,omitempty"`
	Target string    `json:"target,omitempty"` // symlink target
	// UID and GID are the source's owner; a receiver running as root
	// gives the copy the same owner (like rsync -a), others ignore them.
	UID *uint32 `json:"uid,omitempty"`
	GID *uint32 `json:"gid,omitempty"`
}

// beginReq opens a transfer on the receiver.
type beginReq struct {
	ID        TransferID `json:"id"`
	Dst       string     `json:"dst"`
	Multi     bool       `json:"multi"` // several sources: Dst must be a directory
	BlockSize int        `json:"block_size"`
	// Checksum is the per-block checksum; empty is BLAKE3 (what senders
	// before CRC-32C used).
	Checksum Checksum `json:"checksum,omitempty"`
	Resume   bool     `json:"resume"`
	Entries  []Entry  `json:"entries"`
}

// beginResp tells the sender which blocks the receiver already holds
// (verified against its data), per file entry index, when resuming.
type beginResp struct {
	Have map[int][]haveBlock `json:"have,omitempty"`
	// Dst is where the entries land, as the receiver resolved it.
	Dst string `json:"dst"`
}

type haveBlock struct {
	Index uint32   `json:"i"`
	Sum   [32]byte `json:"s"`
}

type commitReq struct {
	ID   TransferID `json:"id"`
	File int        `json:"file"`
	Hash [32]byte   `json:"hash"`
}

type endReq struct {
	ID TransferID `json:"id"`
}

type fetchReq struct {
	Srcs []string `json:"srcs"` // paths under the serving peer's root
	Opts Options  `json:"opts"`
	// Group names the sessions (joined with MsgFetchJoin) to send over.
	Group TransferID `json:"group"`
	Dst   string     `json:"dst"` // under the fetching client's root
}
