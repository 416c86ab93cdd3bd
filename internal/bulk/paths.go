package bulk

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// PathMemoryTTL is how long a path's measured bandwidth is trusted by the
// next transfer to the same peer.
const PathMemoryTTL = time.Hour

// pathInfo is what earlier transfers learned about the path to a peer.
type pathInfo struct {
	rtt     time.Duration
	bw      float64 // bytes per second; 0 when not measured
	streams int     // connections the measuring transfer ended with
	at      time.Time
}

// fresh reports whether the bandwidth was measured recently enough to start
// a transfer from it.
func (p pathInfo) fresh(now time.Time) bool {
	return p.bw > 0 && now.Sub(p.at) < PathMemoryTTL
}

// pathRecord is a pathInfo in the path memory file.
type pathRecord struct {
	RTT       time.Duration `json:"rtt_ns"`
	Bandwidth float64       `json:"bandwidth_bytes_per_sec"`
	Streams   int           `json:"streams,omitempty"`
	At        time.Time     `json:"measured_at"`
}

// loadPaths reads a path memory file; a missing file is an empty memory.
func loadPaths(file string) (map[string]pathInfo, error) {
	out := map[string]pathInfo{}
	b, err := os.ReadFile(file)
	if os.IsNotExist(err) {
		return out, nil
	}
	if err != nil {
		return out, fmt.Errorf("bulk: reading path memory: %w", err)
	}
	var recs map[string]pathRecord
	if err := json.Unmarshal(b, &recs); err != nil {
		return out, fmt.Errorf("bulk: path memory %s: %w", file, err)
	}
	for peer, r := range recs {
		if r.RTT > 0 && r.Bandwidth >= 0 {
			out[peer] = pathInfo{rtt: r.RTT, bw: r.Bandwidth, streams: min(max(r.Streams, 0), MaxStreams), at: r.At}
		}
	}
	return out, nil
}

// savePaths writes the path memory file atomically (a temporary file
// renamed over it), dropping entries older than PathMemoryTTL.
func savePaths(file string, paths map[string]pathInfo, now time.Time) error {
	recs := map[string]pathRecord{}
	for peer, p := range paths {
		if now.Sub(p.at) < PathMemoryTTL {
			recs[peer] = pathRecord{RTT: p.rtt, Bandwidth: p.bw, Streams: p.streams, At: p.at}
		}
	}
	b, err := json.MarshalIndent(recs, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), ".paths-*")
	if err != nil {
		return fmt.Errorf("bulk: writing path memory: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("bulk: writing path memory: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("bulk: writing path memory: %w", err)
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		return fmt.Errorf("bulk: writing path memory: %w", err)
	}
	return nil
}
