package repo

import (
	"encoding/hex"
	"fmt"
	"strings"
)

// ID identifies an object: a blob by the keyed BLAKE3 hash of its
// plaintext, a file by the BLAKE3 hash of its encrypted bytes.
type ID [32]byte

// String returns the ID in hex.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Short returns the first eight hex digits, for display.
func (id ID) Short() string { return hex.EncodeToString(id[:4]) }

// IsNull reports whether the ID is all zeros.
func (id ID) IsNull() bool { return id == ID{} }

// MarshalText encodes the ID as hex.
func (id ID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText decodes a hex ID.
func (id *ID) UnmarshalText(b []byte) error {
	p, err := ParseID(string(b))
	if err != nil {
		return err
	}
	*id = p
	return nil
}

// ParseID decodes a 64-digit hex ID.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != 64 {
		return id, fmt.Errorf("invalid id %q: want 64 hex digits", s)
	}
	if _, err := hex.Decode(id[:], []byte(strings.ToLower(s))); err != nil {
		return id, fmt.Errorf("invalid id %q: %w", s, err)
	}
	return id, nil
}

// IDs is a sortable list of IDs.
type IDs []ID

// Len implements sort.Interface.
func (s IDs) Len() int { return len(s) }

// Less orders IDs bytewise.
func (s IDs) Less(i, j int) bool { return string(s[i][:]) < string(s[j][:]) }

// Swap implements sort.Interface.
func (s IDs) Swap(i, j int) { s[i], s[j] = s[j], s[i] }
