// Package nbd is a Network Block Device server (fixed newstyle handshake,
// simple and structured replies, base:allocation block status) written from
// the protocol description in NetworkBlockDevice/nbd doc/proto.md. It serves
// Devices that an Exports looks up by export name, over any net.Listener
// (TCP or unix socket).
package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
)

// Protocol magics.
const (
	magicInit       = 0x4e42444d41474943 // "NBDMAGIC"
	magicOpt        = 0x49484156454F5054 // "IHAVEOPT"
	magicOptReply   = 0x3e889045565a9
	magicRequest    = 0x25609513
	magicSimple     = 0x67446698
	magicStructured = 0x668e33ef
)

// Handshake flags.
const (
	flagFixedNewstyle = 1 << 0
	flagNoZeroes      = 1 << 1
)

// Options.
const (
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
	optListMetaContext = 9
	optSetMetaContext  = 10
)

// Option replies.
const (
	repAck         = 1
	repServer      = 2
	repInfo        = 3
	repMetaContext = 4
	repErrUnsup    = 1<<31 + 1
	repErrPolicy   = 1<<31 + 2
	repErrInvalid  = 1<<31 + 3
	repErrUnknown  = 1<<31 + 6
	repErrTooBig   = 1<<31 + 9
)

// Info types.
const (
	infoExport    = 0
	infoName      = 1
	infoBlockSize = 3
)

// Transmission flags.
const (
	tflagHasFlags       = 1 << 0
	tflagReadOnly       = 1 << 1
	tflagSendFlush      = 1 << 2
	tflagSendFUA        = 1 << 3
	tflagSendTrim       = 1 << 5
	tflagSendWriteZeros = 1 << 6
	tflagSendDF         = 1 << 7
	tflagCanMultiConn   = 1 << 8
	tflagSendCache      = 1 << 10
)

// Commands.
const (
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdBlockStatus = 7
)

// Command flags.
const (
	cmdFlagFUA      = 1 << 0
	cmdFlagNoHole   = 1 << 1
	cmdFlagDF       = 1 << 2
	cmdFlagReqOne   = 1 << 3
	cmdFlagFastZero = 1 << 4
	cmdFlagsKnown   = cmdFlagFUA | cmdFlagNoHole | cmdFlagDF | cmdFlagReqOne | cmdFlagFastZero
)

// Structured reply chunk types and flags.
const (
	replyFlagDone        = 1 << 0
	replyTypeNone        = 0
	replyTypeOffsetData  = 1
	replyTypeBlockStatus = 5
	replyTypeError       = 1<<15 + 1
)

// NBD error numbers (they are fixed by the protocol, not the host).
const (
	errPerm      = 1
	errIO        = 5
	errNoMem     = 12
	errInval     = 22
	errNoSpc     = 28
	errOverflow  = 75
	errNotSup    = 95
	errShutdown  = 108
	metaContextA = 1 // our id for base:allocation
	stateHole    = 1 // base:allocation: unallocated
	stateZero    = 2 // base:allocation: reads as zeros
	maxExtents   = 1024
)

// Size limits.
const (
	// MaxRequestLength is the largest READ or WRITE served (advertised as
	// the maximum block size).
	MaxRequestLength = 32 << 20
	// maxDiscard is the largest WRITE payload read and thrown away to keep
	// the stream in step when a request is refused; beyond it the
	// connection is closed.
	maxDiscard = 256 << 20
	// MaxOptionLength bounds the data of one handshake option.
	MaxOptionLength = 64 << 10
	// MaxExportName bounds an export name.
	MaxExportName = 4096
	// PreferredBlockSize is advertised to clients.
	PreferredBlockSize = 4096
	requestSize        = 28
)

// request is a parsed transmission-phase request.
type request struct {
	flags  uint16
	typ    uint16
	cookie uint64
	offset uint64
	length uint32
}

// errBadMagic means the stream is out of step; the connection must close.
var errBadMagic = errors.New("bad request magic")

// parseRequest decodes a 28-byte request header.
func parseRequest(b []byte) (request, error) {
	if len(b) < requestSize {
		return request{}, fmt.Errorf("request header of %d bytes: %w", len(b), errBadMagic)
	}
	if m := binary.BigEndian.Uint32(b[0:]); m != magicRequest {
		return request{}, fmt.Errorf("request magic %#x: %w", m, errBadMagic)
	}
	return request{
		flags:  binary.BigEndian.Uint16(b[4:]),
		typ:    binary.BigEndian.Uint16(b[6:]),
		cookie: binary.BigEndian.Uint64(b[8:]),
		offset: binary.BigEndian.Uint64(b[16:]),
		length: binary.BigEndian.Uint32(b[24:]),
	}, nil
}

// check validates a request against the export; it returns 0 or the NBD
// error to reply with.
func (r request) check(size uint64, structured, metaSet bool) uint32 {
	if r.flags&^cmdFlagsKnown != 0 {
		return errInval
	}
	end := r.offset + uint64(r.length)
	inRange := end >= r.offset && end <= size
	switch r.typ {
	case cmdRead:
		if r.flags&cmdFlagDF != 0 && !structured {
			return errInval
		}
		if r.length > MaxRequestLength {
			if structured {
				return errOverflow
			}
			return errInval
		}
		if !inRange {
			return errInval
		}
	case cmdWrite:
		if r.length > MaxRequestLength {
			if structured {
				return errOverflow
			}
			return errInval
		}
		if !inRange {
			return errNoSpc
		}
	case cmdWriteZeroes:
		if r.flags&cmdFlagFastZero != 0 {
			return errNotSup
		}
		if !inRange {
			return errNoSpc
		}
	case cmdTrim, cmdCache:
		if !inRange {
			return errInval
		}
	case cmdFlush:
		if r.offset != 0 || r.length != 0 {
			return errInval
		}
	case cmdBlockStatus:
		if !structured || !metaSet {
			return errInval
		}
		if !inRange || r.length == 0 {
			return errInval
		}
	default:
		return errInval
	}
	if r.typ != cmdFlush && r.length == 0 && r.typ != cmdCache {
		return errInval
	}
	return 0
}

// Errno maps an error from a Device to the NBD error sent to the client.
func Errno(err error) uint32 {
	var en syscall.Errno
	switch {
	case err == nil:
		return 0
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return errNoSpc
	case errors.Is(err, syscall.EINVAL):
		return errInval
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EROFS):
		return errPerm
	case errors.Is(err, syscall.ENOMEM):
		return errNoMem
	case errors.Is(err, syscall.ENOTSUP):
		return errNotSup
	case errors.Is(err, syscall.ESHUTDOWN):
		return errShutdown
	case errors.As(err, &en):
		return errIO
	}
	return errIO
}
