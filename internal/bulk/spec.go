package bulk

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// DefaultPort is the port `holdfast serve` listens on and a remote spec
// without a port dials.
const DefaultPort = 7470

// ParseRemote splits a remote path spec, HOST:PATH or HOST:PORT:PATH (IPv6
// as [ADDR]:PORT:PATH), into a dial address and the path on the peer. ok is
// false for a local path: one without a colon, or with a slash before the
// first colon (as scp does).
func ParseRemote(s string) (addr, path string, ok bool, err error) {
	colon := strings.IndexByte(s, ':')
	if colon < 0 {
		return "", "", false, nil
	}
	if slash := strings.IndexByte(s, '/'); slash >= 0 && slash < colon && !strings.HasPrefix(s, "[") {
		return "", "", false, nil
	}
	var host, rest string
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]:")
		if end < 0 {
			return "", "", false, fmt.Errorf("remote %q: want [ADDR]:PATH or [ADDR]:PORT:PATH", s)
		}
		host, rest = s[1:end], s[end+2:]
	} else {
		host, rest = s[:colon], s[colon+1:]
	}
	if host == "" {
		return "", "", false, fmt.Errorf("remote %q: empty host", s)
	}
	port := DefaultPort
	if p, r, found := strings.Cut(rest, ":"); found {
		if n, err := strconv.Atoi(p); err == nil {
			if n < 1 || n > 65535 {
				return "", "", false, fmt.Errorf("remote %q: port %d out of range", s, n)
			}
			port, rest = n, r
		}
	}
	if rest == "" {
		rest = "."
	}
	return net.JoinHostPort(host, strconv.Itoa(port)), rest, true, nil
}

// ParseRate parses a rate: a number with a unit of bits per second (kbit,
// Mbit, Gbit; also k, M, G, bit) or bytes per second (kB, MB, GB, KiB,
// MiB, GiB, B). It returns bytes per second. "0" and "" mean no limit.
func ParseRate(s string) (float64, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "0" {
		return 0, nil
	}
	i := 0
	for i < len(s) && (s[i] == '.' || (s[i] >= '0' && s[i] <= '9')) {
		i++
	}
	v, err := strconv.ParseFloat(s[:i], 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("rate %q: want a number and a unit such as 200Mbit or 25MB", s)
	}
	unit := strings.TrimSuffix(strings.TrimSpace(s[i:]), "/s")
	mult := map[string]float64{
		"bit": 1.0 / 8, "kbit": 1e3 / 8, "Mbit": 1e6 / 8, "Gbit": 1e9 / 8, "k": 1e3 / 8, "M": 1e6 / 8, "G": 1e9 / 8,
		"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30,
	}
	m, ok := mult[unit]
	if !ok {
		return 0, fmt.Errorf("rate %q: unknown unit %q (want bit, kbit, Mbit, Gbit, B, kB, MB, GB, KiB, MiB, GiB)", s, unit)
	}
	return v * m, nil
}
