package netdiag

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// MaxLineBytes is the longest log line ReadLog accepts; longer lines are
// counted as bad and skipped.
const MaxLineBytes = 1 << 20

// LogStats counts what ReadLog saw.
type LogStats struct {
	Files    int
	Records  int
	BadLines int
}

// DecodeRecord parses one log line, rejecting lines that are not a known
// record kind with its matching payload.
func DecodeRecord(line []byte) (Record, error) {
	var r Record
	if err := json.Unmarshal(line, &r); err != nil {
		return Record{}, fmt.Errorf("decoding netdiag record: %w", err)
	}
	ok := false
	switch r.Kind {
	case KindConn:
		ok = r.Open != nil
	case KindWrite:
		ok = r.Write != nil
	case KindMsg:
		ok = r.Msg != nil
	case KindTCPInfo:
		ok = r.TCPInfo != nil
	case KindClose:
		ok = r.Close != nil
	}
	if !ok {
		return Record{}, fmt.Errorf("decoding netdiag record: kind %q without its payload", r.Kind)
	}
	if r.Conn == "" {
		return Record{}, errors.New("decoding netdiag record: no connection id")
	}
	return r, nil
}

// ReadRecords decodes JSON lines from rd and calls fn for each good record.
// Malformed lines (a torn last line after a crash, hand edits) are counted
// and skipped.
func ReadRecords(rd io.Reader, fn func(Record)) (good, bad int, err error) {
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 64<<10), MaxLineBytes)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 {
			continue
		}
		r, derr := DecodeRecord(line)
		if derr != nil {
			bad++
			continue
		}
		good++
		fn(r)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return good, bad + 1, nil
		}
		return good, bad, fmt.Errorf("reading netdiag log: %w", err)
	}
	return good, bad, nil
}

// ReadLog reads every log file in dir, oldest first, and calls fn for each
// record.
func ReadLog(dir string, fn func(Record)) (LogStats, error) {
	var st LogStats
	files, err := logFiles(dir)
	if err != nil {
		return st, err
	}
	for _, e := range files {
		path := filepath.Join(dir, e.Name())
		f, err := os.Open(path)
		if errors.Is(err, os.ErrNotExist) {
			continue // pruned while we listed
		}
		if err != nil {
			return st, fmt.Errorf("opening netdiag log: %w", err)
		}
		good, bad, err := ReadRecords(f, fn)
		f.Close()
		if err != nil {
			return st, fmt.Errorf("%s: %w", path, err)
		}
		st.Files++
		st.Records += good
		st.BadLines += bad
	}
	return st, nil
}
