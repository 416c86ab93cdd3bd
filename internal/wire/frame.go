// Package wire owns agent-to-agent sessions: mutually authenticated TLS 1.3
// connections carrying length-prefixed, typed frames.
//
// Every frame's header names the sending node and carries the sender's
// version vector: the version identifier of each versioned object it holds
// (agent build, configuration, policies). The upgrade capability reads it;
// a session reports a peer's newest vector through Config.OnVersions.
//
// A Session is symmetric: either end may Call (request/response, matched by
// id, handled concurrently) or Send (one-way, handled in order on the read
// loop, so a stream of one-way frames keeps its order and back-pressure
// reaches the sender through TCP). Frames are bounded (Config.MaxPayload,
// MaxHeaderExt); a malformed, oversized or truncated frame ends the session
// with an error and never allocates more than the bound.
//
// Frame layout (big-endian):
//
//	0  magic     "hf"
//	2  version   u8 (1)
//	3  kind      u8 (request, response, error, one-way)
//	4  type      u16 message type
//	6  flags     u16 (must be 0)
//	8  id        u32 request id (0 for one-way)
//	12 extlen    u16 length of the header extension
//	14 paylen    u32 length of the payload
//	18 ext       node id (u8 len, bytes), version vector (u8 count, then
//	             name (u8 len, bytes) and version (u8 len, bytes) each)
//	.. payload
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
)

// Frame size limits.
const (
	// HeaderSize is the size of the fixed part of a frame header.
	HeaderSize = 18
	// MaxHeaderExt bounds the header extension (node id + version vector).
	MaxHeaderExt = 4096
	// DefaultMaxPayload is the largest payload a session accepts unless
	// configured otherwise.
	DefaultMaxPayload = 16 << 20
	// HardMaxPayload is the largest payload any configuration may allow.
	HardMaxPayload = 64 << 20
	// MaxVersions bounds the number of entries of a version vector.
	MaxVersions = 32
)

const (
	magic0, magic1 = 'h', 'f'
	frameVersion   = 1
)

// Kind tells what a frame is for.
type Kind uint8

// Frame kinds.
const (
	KindRequest  Kind = 1 // expects a KindResponse or KindError with the same id
	KindResponse Kind = 2
	KindError    Kind = 3 // payload is a UTF-8 error message
	KindOneway   Kind = 4 // no reply
)

func (k Kind) String() string {
	switch k {
	case KindRequest:
		return "request"
	case KindResponse:
		return "response"
	case KindError:
		return "error"
	case KindOneway:
		return "one-way"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// MsgType identifies a message. Types below 256 are reserved for wire and
// agent internals; feature packages define theirs from 256 up.
type MsgType uint16

// VersionVector maps a versioned object's name ("agent", "config",
// "policy/...") to the version identifier the sender holds.
type VersionVector map[string]string

// Frame is one decoded frame.
type Frame struct {
	Kind     Kind
	Type     MsgType
	ID       uint32
	Node     string
	Versions VersionVector
	Payload  []byte
}

// ErrMalformed wraps every decoding error caused by bad input.
var ErrMalformed = errors.New("malformed frame")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// encodeExt appends the header extension for node and vv to b.
func encodeExt(b []byte, node string, vv VersionVector) ([]byte, error) {
	if len(node) > 255 {
		return nil, fmt.Errorf("node id %q longer than 255 bytes", node)
	}
	if len(vv) > MaxVersions {
		return nil, fmt.Errorf("version vector has %d entries, at most %d allowed", len(vv), MaxVersions)
	}
	start := len(b)
	b = append(b, byte(len(node)))
	b = append(b, node...)
	b = append(b, byte(len(vv)))
	names := make([]string, 0, len(vv))
	for k := range vv {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		v := vv[k]
		if k == "" || len(k) > 255 || len(v) > 255 {
			return nil, fmt.Errorf("version vector entry %q=%q: name must be 1-255 bytes, version at most 255", k, v)
		}
		b = append(b, byte(len(k)))
		b = append(b, k...)
		b = append(b, byte(len(v)))
		b = append(b, v...)
	}
	if len(b)-start > MaxHeaderExt {
		return nil, fmt.Errorf("header extension of %d bytes exceeds %d", len(b)-start, MaxHeaderExt)
	}
	return b, nil
}

// AppendHeader appends the encoded header of a frame (without payload) of
// payload length n to b.
func AppendHeader(b []byte, kind Kind, typ MsgType, id uint32, node string, vv VersionVector, n int) ([]byte, error) {
	if n < 0 || n > HardMaxPayload {
		return nil, fmt.Errorf("payload of %d bytes exceeds %d", n, HardMaxPayload)
	}
	start := len(b)
	b = append(b, magic0, magic1, frameVersion, byte(kind), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
	h := b[start:]
	binary.BigEndian.PutUint16(h[4:], uint16(typ))
	binary.BigEndian.PutUint32(h[8:], id)
	binary.BigEndian.PutUint32(h[14:], uint32(n))
	b, err := encodeExt(b, node, vv)
	if err != nil {
		return nil, err
	}
	binary.BigEndian.PutUint16(b[start+12:], uint16(len(b)-start-HeaderSize))
	return b, nil
}

// Encode returns the full encoding of f.
func (f *Frame) Encode() ([]byte, error) {
	b, err := AppendHeader(make([]byte, 0, HeaderSize+64+len(f.Payload)), f.Kind, f.Type, f.ID, f.Node, f.Versions, len(f.Payload))
	if err != nil {
		return nil, err
	}
	return append(b, f.Payload...), nil
}

// ReadFrame reads one frame from r. It never allocates more than
// maxPayload+MaxHeaderExt bytes for a frame, whatever the input claims. An
// input that ends inside a frame yields io.ErrUnexpectedEOF; one that ends
// cleanly between frames yields io.EOF.
func ReadFrame(r io.Reader, maxPayload int) (*Frame, error) {
	return readFrame(r, maxPayload, nil)
}

// readFrame is ReadFrame with the payload buffer supplied by buf (when not
// nil and it returns a buffer): the session's read loop lends one reused
// buffer to handlers that do not keep their payload (Mux.HandleBorrowed),
// which spares a large allocation per bulk data frame.
func readFrame(r io.Reader, maxPayload int, buf func(kind Kind, typ MsgType, n int) []byte) (*Frame, error) {
	if maxPayload <= 0 || maxPayload > HardMaxPayload {
		maxPayload = DefaultMaxPayload
	}
	var h [HeaderSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	if h[0] != magic0 || h[1] != magic1 {
		return nil, malformed("bad magic %q", h[:2])
	}
	if h[2] != frameVersion {
		return nil, malformed("unsupported frame version %d", h[2])
	}
	kind := Kind(h[3])
	if kind < KindRequest || kind > KindOneway {
		return nil, malformed("unknown frame kind %d", h[3])
	}
	if flags := binary.BigEndian.Uint16(h[6:]); flags != 0 {
		return nil, malformed("unknown flags %#x", flags)
	}
	extLen := int(binary.BigEndian.Uint16(h[12:]))
	payLen := int64(binary.BigEndian.Uint32(h[14:]))
	if extLen > MaxHeaderExt {
		return nil, malformed("header extension of %d bytes exceeds %d", extLen, MaxHeaderExt)
	}
	if extLen < 2 {
		return nil, malformed("header extension of %d bytes is too short", extLen)
	}
	if payLen > int64(maxPayload) {
		return nil, malformed("payload of %d bytes exceeds the limit of %d", payLen, maxPayload)
	}
	ext := make([]byte, extLen)
	if _, err := io.ReadFull(r, ext); err != nil {
		return nil, truncated(err)
	}
	f := &Frame{
		Kind: kind,
		Type: MsgType(binary.BigEndian.Uint16(h[4:])),
		ID:   binary.BigEndian.Uint32(h[8:]),
	}
	if err := decodeExt(ext, f); err != nil {
		return nil, err
	}
	if buf != nil {
		f.Payload = buf(f.Kind, f.Type, int(payLen))
	}
	if f.Payload == nil {
		f.Payload = make([]byte, payLen)
	}
	if _, err := io.ReadFull(r, f.Payload); err != nil {
		return nil, truncated(err)
	}
	return f, nil
}

func truncated(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: truncated frame: %w", ErrMalformed, io.ErrUnexpectedEOF)
	}
	return err
}

func decodeExt(b []byte, f *Frame) error {
	p := 0
	str := func(what string) (string, error) {
		if p >= len(b) {
			return "", malformed("header extension ends before %s length", what)
		}
		n := int(b[p])
		p++
		if p+n > len(b) {
			return "", malformed("%s of %d bytes overruns the header extension", what, n)
		}
		s := string(b[p : p+n])
		p += n
		return s, nil
	}
	var err error
	if f.Node, err = str("node id"); err != nil {
		return err
	}
	if p >= len(b) {
		return malformed("header extension ends before the version vector")
	}
	count := int(b[p])
	p++
	if count > MaxVersions {
		return malformed("version vector of %d entries exceeds %d", count, MaxVersions)
	}
	if count > 0 {
		f.Versions = make(VersionVector, count)
	}
	for i := 0; i < count; i++ {
		k, err := str("version name")
		if err != nil {
			return err
		}
		v, err := str("version")
		if err != nil {
			return err
		}
		if k == "" {
			return malformed("empty version name")
		}
		if _, dup := f.Versions[k]; dup {
			return malformed("duplicate version name %q", k)
		}
		f.Versions[k] = v
	}
	if p != len(b) {
		return malformed("%d trailing bytes in header extension", len(b)-p)
	}
	return nil
}
