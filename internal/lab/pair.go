package lab

import (
	"fmt"
	"strconv"
	"strings"
)

// PairPath is a path for one pair of hosts, as `holdfast lab up --pair`
// takes it.
type PairPath struct {
	// A and B are the host indexes.
	A, B int
	// OneWay applies Path from A to B only; otherwise both directions.
	OneWay bool
	// Path is the path to set.
	Path Path
}

// ParsePairPath reads "A-B: <path>" (both directions) or "A>B: <path>"
// (from A to B only), where A and B are host indexes, optionally written
// h0, h1…, and <path> is in ParsePath's syntax. Example:
//
//	ParsePairPath("0-2: rtt 300ms, loss 2%")
func ParsePairPath(s string) (PairPath, error) {
	hosts, spec, ok := strings.Cut(s, ":")
	if !ok {
		return PairPath{}, fmt.Errorf("%w: pair %q: want \"A-B: path\" or \"A>B: path\"", ErrPathSyntax, s)
	}
	var pp PairPath
	sep := "-"
	if strings.Contains(hosts, ">") {
		sep, pp.OneWay = ">", true
	}
	as, bs, ok := strings.Cut(strings.TrimSpace(hosts), sep)
	if !ok {
		return PairPath{}, fmt.Errorf("%w: pair %q: want two host indexes joined by - or >", ErrPathSyntax, hosts)
	}
	var err error
	if pp.A, err = parseHostIndex(as); err != nil {
		return PairPath{}, err
	}
	if pp.B, err = parseHostIndex(bs); err != nil {
		return PairPath{}, err
	}
	if pp.A == pp.B {
		return PairPath{}, fmt.Errorf("%w: pair %q joins a host to itself", ErrPathSyntax, hosts)
	}
	if pp.Path, err = ParsePath(spec); err != nil {
		return PairPath{}, err
	}
	return pp, nil
}

func parseHostIndex(s string) (int, error) {
	s = strings.TrimPrefix(strings.TrimSpace(s), "h")
	i, err := strconv.Atoi(s)
	if err != nil || i < 0 || i >= MaxHosts {
		return 0, fmt.Errorf("%w: host %q: want an index 0 to %d", ErrPathSyntax, s, MaxHosts-1)
	}
	return i, nil
}

// Apply sets the pair's path in l (see SetPath and SetLink).
func (l *Lab) Apply(pp PairPath) error {
	if pp.OneWay {
		return l.SetLink(pp.A, pp.B, pp.Path)
	}
	return l.SetPath(pp.A, pp.B, pp.Path)
}
