// Package cdp provides continuous data protection of block volumes: volumes
// exported over NBD whose every write is appended to a local CDP log before
// it is acknowledged, shipped to a remote CDP log on another agent, and from
// which any point in time still in the retention window can be restored as
// a new volume that is usable at once.
//
// The Manager owns the volumes of one agent (under <state>/volumes) and the
// remote logs it holds for other agents (under <state>/replicas). Its agent
// API is Handler (JSON under /v1/volumes); its agent-to-agent protocol is
// HandleRemote; NBD clients attach through ServeNBD.
package cdp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/holdfast/holdfast/internal/cdp/cdplog"
	"github.com/holdfast/holdfast/internal/cdp/nbd"
)

// Size limits.
const (
	// MaxVolumeSize is the largest volume.
	MaxVolumeSize = 4 << 40
	// MaxTimelinePoints bounds one timeline answer.
	MaxTimelinePoints = 100000
)

// Config configures a Manager.
type Config struct {
	// StateDir holds volumes/ and replicas/.
	StateDir string
	// Retention is how long every write stays restorable; older log
	// segments are folded into the base image.
	Retention time.Duration
	// FoldInterval is how often folding runs.
	FoldInterval time.Duration
	// DefaultMode applies to volumes created with a remote and no mode.
	DefaultMode Mode
	// SyncTimeout is how long a sync write waits for the remote before the
	// volume degrades to async.
	SyncTimeout time.Duration
	// RemoteTimeout bounds one call to the remote.
	RemoteTimeout time.Duration
	// CheckpointInterval is how often the volume image is synced so that
	// replay after a crash starts later.
	CheckpointInterval time.Duration
	// SegmentBytes is the CDP log segment size.
	SegmentBytes int64
	// LazyApplyBytes: writes at least this large are not copied into the
	// volume image; reads find them in the log (and in the base image once
	// folded), so their data is written once. The default, one block,
	// leaves every write in the log only; 0 copies every write into the
	// image (in the background).
	LazyApplyBytes int64
	// ShipBatchBytes bounds one shipment to the remote.
	ShipBatchBytes int
	// ShipInFlight is how many shipments may be on the way at once.
	ShipInFlight int
	// ShipWindowBytes bounds the bytes of the shipments on the way at
	// once. Records are sent as soon as they are logged while the window
	// has room, so the lag is about one round trip plus the time the path
	// takes to carry them; the window must exceed the path's
	// bandwidth-delay product (200 Mbit/s × 40 ms is 1 MB).
	ShipWindowBytes int
	// BulkBacklogBytes is the backlog from which a volume whose remote is
	// a BacklogShipper ships with the bulk transfer instead of calls.
	BulkBacklogBytes int64
	// BulkMaxBytes bounds one bulk transfer of a backlog.
	BulkMaxBytes int64
	// BacklogDir is where bulk transfers of other agents' backlogs land on
	// this agent (the root of its bulk transfer service); empty refuses
	// them (MsgIngest).
	BacklogDir string
	// NBD configures the NBD server.
	NBD nbd.Config
}

// DefaultConfig returns the defaults for state directory dir.
func DefaultConfig(dir string) Config {
	return Config{
		StateDir:           dir,
		Retention:          24 * time.Hour,
		FoldInterval:       time.Minute,
		DefaultMode:        ModeAsync,
		SyncTimeout:        5 * time.Second,
		RemoteTimeout:      30 * time.Second,
		CheckpointInterval: 5 * time.Second,
		SegmentBytes:       cdplog.DefaultSegmentBytes,
		LazyApplyBytes:     cdplog.BlockSize,
		ShipBatchBytes:     4 << 20,
		ShipInFlight:       32,
		ShipWindowBytes:    32 << 20,
		BulkBacklogBytes:   64 << 20,
		BulkMaxBytes:       1 << 30,
		NBD:                nbd.DefaultConfig(),
	}
}

// Validate checks the config.
func (c Config) Validate() error {
	switch {
	case c.StateDir == "":
		return errors.New("cdp: StateDir is required")
	case c.Retention <= 0:
		return errors.New("cdp: Retention must be positive")
	case c.FoldInterval <= 0 || c.CheckpointInterval <= 0 || c.SyncTimeout <= 0 || c.RemoteTimeout <= 0:
		return errors.New("cdp: intervals and timeouts must be positive")
	case c.DefaultMode != ModeSync && c.DefaultMode != ModeAsync:
		return fmt.Errorf("cdp: DefaultMode %q must be sync or async", c.DefaultMode)
	case c.SegmentBytes < 1<<20:
		return fmt.Errorf("cdp: SegmentBytes %d below 1 MiB", c.SegmentBytes)
	case c.ShipBatchBytes < 64<<10 || c.ShipBatchBytes > MaxAppendBytes/2:
		return fmt.Errorf("cdp: ShipBatchBytes %d out of range", c.ShipBatchBytes)
	case c.ShipInFlight < 1 || c.ShipInFlight > 64:
		return fmt.Errorf("cdp: ShipInFlight %d out of range 1..64", c.ShipInFlight)
	case c.BulkBacklogBytes < 1<<20 || c.BulkMaxBytes < c.BulkBacklogBytes:
		return fmt.Errorf("cdp: BulkBacklogBytes %d must be at least 1 MiB and at most BulkMaxBytes %d", c.BulkBacklogBytes, c.BulkMaxBytes)
	case c.ShipWindowBytes < c.ShipBatchBytes:
		return fmt.Errorf("cdp: ShipWindowBytes %d below ShipBatchBytes %d", c.ShipWindowBytes, c.ShipBatchBytes)
	}
	return c.NBD.Validate()
}

// Dialer returns the Remote for an agent name.
type Dialer func(agent string) (Remote, error)

// Manager owns the volumes and replica logs of one agent.
type Manager struct {
	cfg    Config
	logger *slog.Logger
	dial   Dialer
	ctx    context.Context

	mu       sync.Mutex
	vols     map[string]*Volume
	replicas map[string]*Volume
	nbd      *nbd.Server
}

// New opens every volume and replica under cfg.StateDir (replaying their
// logs) and starts their background work. dial may be nil when no volume
// has a remote.
func New(ctx context.Context, cfg Config, dial Dialer, logger *slog.Logger) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m := &Manager{cfg: cfg, logger: logger, dial: dial, ctx: ctx, vols: map[string]*Volume{}, replicas: map[string]*Volume{}}
	srv, err := nbd.NewServer(cfg.NBD, m, logger)
	if err != nil {
		return nil, err
	}
	m.nbd = srv
	for _, kind := range []string{"volumes", "replicas"} {
		dir := filepath.Join(cfg.StateDir, kind)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("creating %s: %w", dir, err)
		}
		ents, err := os.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("listing %s: %w", dir, err)
		}
		for _, e := range ents {
			if !e.IsDir() || validName(e.Name()) != nil {
				continue
			}
			if _, err := os.Stat(filepath.Join(dir, e.Name(), "meta.json")); err != nil {
				continue // an unfinished create
			}
			v, err := m.openVol(filepath.Join(dir, e.Name()))
			if err != nil {
				m.Close()
				return nil, err
			}
			if kind == "volumes" {
				m.vols[e.Name()] = v
			} else {
				m.replicas[e.Name()] = v
			}
		}
	}
	return m, nil
}

func (m *Manager) openVol(dir string) (*Volume, error) {
	v, err := openVolume(m.ctx, m, dir)
	if err != nil {
		return nil, err
	}
	if v.meta.Remote != "" && !v.meta.Replica {
		if m.dial == nil {
			v.Close()
			return nil, fmt.Errorf("volume %s has remote %s but no way to reach agents was configured", v.meta.Name, v.meta.Remote)
		}
		r, err := m.dial(v.meta.Remote)
		if err != nil {
			v.Close()
			return nil, fmt.Errorf("volume %s: remote %s: %w", v.meta.Name, v.meta.Remote, err)
		}
		v.remote = r
		v.wg.Add(1)
		go func() { defer v.wg.Done(); v.shipLoop(v.bctx) }()
	}
	return v, nil
}

// Close closes every volume.
func (m *Manager) Close() error {
	m.mu.Lock()
	var vols []*Volume
	for _, v := range m.vols {
		vols = append(vols, v)
	}
	for _, v := range m.replicas {
		vols = append(vols, v)
	}
	m.mu.Unlock()
	// Volumes still filling read from their sources: close them first.
	sort.SliceStable(vols, func(i, j int) bool { return vols[i].getMeta().Parent != nil && vols[j].getMeta().Parent == nil })
	var errs []error
	for _, v := range vols {
		errs = append(errs, v.Close())
	}
	m.mu.Lock()
	m.vols, m.replicas = map[string]*Volume{}, map[string]*Volume{}
	m.mu.Unlock()
	return errors.Join(errs...)
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

func validName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("volume name %q: want 1-64 of A-Z a-z 0-9 . _ - starting with a letter or digit: %w", name, ErrInvalid)
	}
	return nil
}

// CreateOptions describe a new volume.
type CreateOptions struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	Remote string `json:"remote,omitempty"`
	Mode   Mode   `json:"mode,omitempty"`
	// NoCDP creates a plain volume without a CDP log (a benchmark
	// baseline): no timeline, no restore, no remote.
	NoCDP bool `json:"no_cdp,omitempty"`
}

// Create creates a volume and exports it.
func (m *Manager) Create(ctx context.Context, o CreateOptions) (Info, error) {
	if err := validName(o.Name); err != nil {
		return Info{}, err
	}
	if o.Size <= 0 || o.Size > MaxVolumeSize || o.Size%bs != 0 {
		return Info{}, fmt.Errorf("volume size %d: want a multiple of %d up to %d: %w", o.Size, bs, int64(MaxVolumeSize), ErrInvalid)
	}
	if o.NoCDP && o.Remote != "" {
		return Info{}, fmt.Errorf("a volume without CDP cannot have a remote log: %w", ErrInvalid)
	}
	meta := volumeMeta{Name: o.Name, Size: o.Size, Created: time.Now().UTC(), Remote: o.Remote, Mode: o.Mode, NoCDP: o.NoCDP}
	if err := m.fillMode(&meta); err != nil {
		return Info{}, err
	}
	v, err := m.createVol(meta)
	if err != nil {
		return Info{}, err
	}
	return v.info(), nil
}

func (m *Manager) fillMode(meta *volumeMeta) error {
	switch {
	case meta.Remote == "" && (meta.Mode == "" || meta.Mode == ModeLocal):
		meta.Mode = ModeLocal
	case meta.Remote == "":
		return fmt.Errorf("mode %s needs a remote: %w", meta.Mode, ErrInvalid)
	case meta.Mode == "":
		meta.Mode = m.cfg.DefaultMode
	case meta.Mode != ModeSync && meta.Mode != ModeAsync:
		return fmt.Errorf("mode %q: want sync or async: %w", meta.Mode, ErrInvalid)
	}
	if meta.Remote != "" && m.dial == nil {
		return fmt.Errorf("remote %s: this agent has no connection to other agents: %w", meta.Remote, ErrInvalid)
	}
	return nil
}

func (m *Manager) createVol(meta volumeMeta) (*Volume, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.vols[meta.Name]; ok {
		return nil, fmt.Errorf("volume %s: %w", meta.Name, ErrExists)
	}
	dir := filepath.Join(m.cfg.StateDir, "volumes", meta.Name)
	os.RemoveAll(dir) // leftovers of an unfinished create
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating volume directory: %w", err)
	}
	if err := saveMeta(dir, meta); err != nil {
		return nil, err
	}
	v, err := m.openVol(dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	m.vols[meta.Name] = v
	m.logger.Info("volume created", "volume", meta.Name, "size", meta.Size, "mode", meta.Mode, "remote", meta.Remote)
	return v, nil
}

// Volume returns an open volume.
func (m *Manager) Volume(name string) (*Volume, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.vols[name]
	if !ok {
		return nil, fmt.Errorf("volume %s: %w", name, ErrNotFound)
	}
	return v, nil
}

// Export implements nbd.Exports.
func (m *Manager) Export(name string) (nbd.Device, error) { return m.Volume(name) }

// ExportNames implements nbd.Exports.
func (m *Manager) ExportNames() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	names := make([]string, 0, len(m.vols))
	for n := range m.vols {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// ServeNBD serves NBD clients on ln (TCP or unix socket) until ctx ends.
func (m *Manager) ServeNBD(ctx context.Context, ln net.Listener) error {
	return m.nbd.Serve(ctx, ln)
}

// Info describes a volume.
type Info struct {
	Name         string           `json:"name"`
	Size         int64            `json:"size"`
	Mode         Mode             `json:"mode"`
	Remote       string           `json:"remote,omitempty"`
	Created      time.Time        `json:"created"`
	FirstSeq     uint64           `json:"first_seq"`
	LastSeq      uint64           `json:"last_seq"`
	FoldSeq      uint64           `json:"fold_seq"`
	LogBytes     int64            `json:"log_bytes"`
	WrittenBytes int64            `json:"written_bytes"`
	RestoredFrom string           `json:"restored_from,omitempty"`
	FillDone     bool             `json:"fill_done"`
	FillPercent  float64          `json:"fill_percent"`
	Replication  *ReplicationInfo `json:"replication,omitempty"`
}

func (v *Volume) info() Info {
	meta := v.getMeta()
	in := Info{
		Name: meta.Name, Size: meta.Size, Mode: meta.Mode, Remote: meta.Remote, Created: meta.Created,
		FirstSeq: v.log.FirstSeq(), LastSeq: v.log.NextSeq() - 1, FoldSeq: meta.FoldSeq,
		LogBytes: v.log.Bytes(), WrittenBytes: v.written.Load(),
		FillDone: meta.Parent == nil, FillPercent: 100 * float64(v.filled.Load()) / float64(v.blocks),
		Replication: v.replicationInfo(),
	}
	if meta.Parent == nil {
		in.FillPercent = 100
	}
	if p := meta.RestoredFrom; p != nil {
		in.RestoredFrom = fmt.Sprintf("%s@%d", p.Volume, p.Seq)
		if p.Remote != "" {
			in.RestoredFrom += " on " + p.Remote
		}
	}
	return in
}

// List describes every volume.
func (m *Manager) List(ctx context.Context) []Info {
	var out []Info
	for _, n := range m.ExportNames() {
		if v, err := m.Volume(n); err == nil {
			out = append(out, v.info())
		}
	}
	return out
}

// Get describes one volume.
func (m *Manager) Get(ctx context.Context, name string) (Info, error) {
	v, err := m.Volume(name)
	if err != nil {
		return Info{}, err
	}
	return v.info(), nil
}

// Delete removes a volume, its log and base. A volume that a restored
// volume still reads through to cannot be deleted until that fill ends.
func (m *Manager) Delete(ctx context.Context, name string) error {
	m.mu.Lock()
	v, ok := m.vols[name]
	if !ok {
		m.mu.Unlock()
		return fmt.Errorf("volume %s: %w", name, ErrNotFound)
	}
	for _, o := range m.vols {
		if p := o.getMeta().Parent; p != nil && p.Remote == "" && p.Volume == name {
			m.mu.Unlock()
			return fmt.Errorf("volume %s is the source of %s, still being filled: %w", name, o.meta.Name, ErrInvalid)
		}
	}
	delete(m.vols, name)
	m.mu.Unlock()
	err := v.Close()
	if rerr := os.RemoveAll(v.dir); rerr != nil {
		return fmt.Errorf("removing volume %s: %w", name, rerr)
	}
	m.logger.Info("volume deleted", "volume", name)
	return err
}

// Point is a restorable point in time.
type Point struct {
	Seq    uint64    `json:"seq"`
	Time   time.Time `json:"time"`
	Kind   string    `json:"kind"`
	Offset uint64    `json:"offset,omitempty"`
	Length uint64    `json:"length,omitempty"`
	Label  string    `json:"label,omitempty"`
}

// Mark records a named point in time and makes the log durable up to it.
func (m *Manager) Mark(ctx context.Context, name, label string) (Point, error) {
	v, err := m.Volume(name)
	if err != nil {
		return Point{}, err
	}
	if v.meta.NoCDP {
		return Point{}, fmt.Errorf("volume %s has no CDP log: %w", name, ErrInvalid)
	}
	if label == "" || len(label) > cdplog.MaxLabel || strings.ContainsAny(label, "\x00\n") {
		return Point{}, fmt.Errorf("mark label %q: want 1-%d bytes without NUL or newline: %w", label, cdplog.MaxLabel, ErrInvalid)
	}
	if _, err := strconv.ParseUint(label, 10, 64); err == nil {
		return Point{}, fmt.Errorf("mark label %q would read as a sequence number: %w", label, ErrInvalid)
	}
	seq, err := v.appendPoint(cdplog.KindMark, []byte(label))
	if err != nil {
		return Point{}, err
	}
	if err := v.afterWrite(ctx, seq, true); err != nil {
		return Point{}, err
	}
	mt, _ := v.log.Meta(seq)
	return pointOf(mt), nil
}

func pointOf(m cdplog.Meta) Point {
	return Point{Seq: m.Seq, Time: m.Time, Kind: m.Kind.String(), Offset: m.Offset, Length: m.Length, Label: m.Label}
}

// TimelineQuery selects points.
type TimelineQuery struct {
	Since uint64   `json:"since,omitempty"` // first sequence number listed
	Limit int      `json:"limit,omitempty"` // 0: 1000
	Kinds []string `json:"kinds,omitempty"` // empty: all (write, zero, mark, flush)
}

// Timeline lists the restorable points of a volume.
type Timeline struct {
	Volume    string  `json:"volume"`
	FirstSeq  uint64  `json:"first_seq"`
	LastSeq   uint64  `json:"last_seq"`
	FoldSeq   uint64  `json:"fold_seq"`
	Points    []Point `json:"points"`
	Truncated bool    `json:"truncated"`
}

// Timeline lists the points of a volume's local log; with remote set it
// asks the remote log of that volume instead (when the local site is lost).
func (m *Manager) Timeline(ctx context.Context, name string, q TimelineQuery, remote string) (Timeline, error) {
	if remote != "" {
		r, err := m.remoteFor(remote)
		if err != nil {
			return Timeline{}, err
		}
		return r.Timeline(ctx, name, q)
	}
	v, err := m.Volume(name)
	if err != nil {
		return Timeline{}, err
	}
	return v.timeline(q)
}

func (v *Volume) timeline(q TimelineQuery) (Timeline, error) {
	if q.Limit <= 0 {
		q.Limit = 1000
	}
	if q.Limit > MaxTimelinePoints {
		q.Limit = MaxTimelinePoints
	}
	kinds := map[string]bool{}
	for _, k := range q.Kinds {
		switch k {
		case "write", "zero", "mark", "flush":
			kinds[k] = true
		default:
			return Timeline{}, fmt.Errorf("timeline kind %q: want write, zero, mark or flush: %w", k, ErrInvalid)
		}
	}
	tl := Timeline{Volume: v.meta.Name, FirstSeq: v.log.FirstSeq(), LastSeq: v.log.NextSeq() - 1, FoldSeq: v.getMeta().FoldSeq, Points: []Point{}}
	v.log.Metas(q.Since, func(mt cdplog.Meta) bool {
		if len(kinds) > 0 && !kinds[mt.Kind.String()] {
			return true
		}
		if len(tl.Points) == q.Limit {
			tl.Truncated = true
			return false
		}
		tl.Points = append(tl.Points, pointOf(mt))
		return true
	})
	return tl, nil
}

// resolve turns "now", a sequence number, a time (RFC 3339, or a duration
// ago such as "-90s") or a mark label into a point of this volume's log.
func (v *Volume) resolve(at string) (Point, error) {
	last := v.log.NextSeq() - 1
	fold := v.getMeta().FoldSeq
	inWindow := func(seq uint64) (Point, error) {
		if seq < fold {
			return Point{}, fmt.Errorf("%q is sequence number %d, folded up to %d: %w", at, seq, fold, ErrFolded)
		}
		if seq > last {
			return Point{}, fmt.Errorf("%q: sequence number %d beyond the last %d: %w", at, seq, last, ErrNotFound)
		}
		if mt, ok := v.log.Meta(seq); ok {
			return pointOf(mt), nil
		}
		return Point{Seq: seq, Kind: "base"}, nil
	}
	if at == "" || at == "now" {
		return inWindow(last)
	}
	if seq, err := strconv.ParseUint(at, 10, 64); err == nil {
		return inWindow(seq)
	}
	var t time.Time
	if d, err := time.ParseDuration(at); err == nil && strings.HasPrefix(at, "-") {
		t = time.Now().Add(d)
	} else if tt, err := time.Parse(time.RFC3339Nano, at); err == nil {
		t = tt
	}
	if !t.IsZero() {
		if meta := v.getMeta(); !meta.Replica && t.Before(meta.Created) {
			return Point{}, fmt.Errorf("time %s is before volume %s was created: %w", t.Format(time.RFC3339Nano), v.meta.Name, ErrNotFound)
		}
		seq := v.log.SeqAt(t)
		if seq == 0 {
			// Before the first record held: the base, if nothing was folded.
			if first := v.log.FirstSeq(); fold == 0 || first == fold+1 {
				if mt, ok := v.log.Meta(v.log.FirstSeq()); ok && t.Before(mt.Time) && fold == 0 {
					return Point{Seq: 0, Kind: "base", Time: t}, nil
				}
			}
			return Point{}, fmt.Errorf("time %s is before the oldest restorable point: %w", t.Format(time.RFC3339Nano), ErrFolded)
		}
		return inWindow(seq)
	}
	var found cdplog.Meta
	v.log.Metas(0, func(mt cdplog.Meta) bool {
		if mt.Kind == cdplog.KindMark && mt.Label == at {
			found = mt
		}
		return true
	})
	if found.Seq == 0 {
		return Point{}, fmt.Errorf("no mark %q (and not a sequence number or time) in volume %s: %w", at, v.meta.Name, ErrNotFound)
	}
	return pointOf(found), nil
}

// RestoreOptions describe a restore.
type RestoreOptions struct {
	Name string `json:"name"` // the volume to restore from
	At   string `json:"at"`   // TIME, SEQ, MARK, -DURATION or "now"
	As   string `json:"as"`   // the new volume
	// FromRemote restores from the remote log on this agent (when the
	// local volume is lost); empty uses the local volume.
	FromRemote string `json:"from_remote,omitempty"`
	// Remote and Mode protect the new volume in turn.
	Remote string `json:"remote,omitempty"`
	Mode   Mode   `json:"mode,omitempty"`
}

// Restore creates volume As with the content of volume Name as of At. It is
// exported at once; its blocks are copied in the background and read
// through to the source log until they are.
func (m *Manager) Restore(ctx context.Context, o RestoreOptions) (Info, error) {
	if err := validName(o.As); err != nil {
		return Info{}, err
	}
	var parent parentRef
	var size int64
	if o.FromRemote == "" {
		src, err := m.Volume(o.Name)
		if err != nil {
			return Info{}, err
		}
		p, err := src.resolve(o.At)
		if err != nil {
			return Info{}, err
		}
		parent = parentRef{Volume: o.Name, Seq: p.Seq}
		size = src.size
	} else {
		r, err := m.remoteFor(o.FromRemote)
		if err != nil {
			return Info{}, err
		}
		p, err := r.Resolve(ctx, o.Name, o.At)
		if err != nil {
			return Info{}, err
		}
		sz, err := m.remoteSize(ctx, r, o.Name)
		if err != nil {
			return Info{}, err
		}
		parent = parentRef{Volume: o.Name, Seq: p.Seq, Remote: o.FromRemote}
		size = sz
	}
	meta := volumeMeta{Name: o.As, Size: size, Created: time.Now().UTC(), Remote: o.Remote, Mode: o.Mode, Parent: &parent}
	pc := parent
	meta.RestoredFrom = &pc
	if err := m.fillMode(&meta); err != nil {
		return Info{}, err
	}
	v, err := m.createVol(meta)
	if err != nil {
		return Info{}, err
	}
	m.logger.Info("volume restored", "volume", o.As, "from", o.Name, "seq", parent.Seq, "remote", parent.Remote)
	return v.info(), nil
}

// remoteSize learns a remote volume's size: the remote timeline does not
// carry it, so it is asked through a resolve of "size" (see HandleRemote).
func (m *Manager) remoteSize(ctx context.Context, r Remote, vol string) (int64, error) {
	p, err := r.Resolve(ctx, vol, sizeQuery)
	if err != nil {
		return 0, err
	}
	return int64(p.Length), nil
}

// sizeQuery asks Resolve for the volume size (in Point.Length).
const sizeQuery = "\x00size"

func (m *Manager) remoteFor(agent string) (Remote, error) {
	if m.dial == nil {
		return nil, fmt.Errorf("remote %s: this agent has no connection to other agents: %w", agent, ErrInvalid)
	}
	return m.dial(agent)
}

// readParent reads the content of a restored volume's source.
func (m *Manager) readParent(ctx context.Context, p *parentRef, buf []byte, off int64) error {
	if p.Remote == "" {
		src, err := m.Volume(p.Volume)
		if err != nil {
			return err
		}
		return src.readAtSeq(ctx, buf, off, p.Seq)
	}
	r, err := m.remoteFor(p.Remote)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, m.cfg.RemoteTimeout)
	defer cancel()
	data, err := r.Fetch(cctx, p.Volume, off, len(buf), p.Seq)
	if err != nil {
		return err
	}
	copy(buf, data)
	return nil
}

// replica returns the remote log this agent holds for vol.
func (m *Manager) replica(vol string) (*Volume, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.replicas[vol]
	if !ok {
		return nil, fmt.Errorf("remote log of volume %s: %w", vol, ErrNotFound)
	}
	return v, nil
}

// replicaFor returns the remote log for vol, creating it on first use.
func (m *Manager) replicaFor(vol string, size int64) (*Volume, error) {
	if size <= 0 || size > MaxVolumeSize || size%bs != 0 {
		return nil, fmt.Errorf("replica size %d: %w", size, ErrInvalid)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if v, ok := m.replicas[vol]; ok {
		if v.size != size {
			return nil, fmt.Errorf("remote log of %s has size %d, not %d: %w", vol, v.size, size, ErrInvalid)
		}
		return v, nil
	}
	dir := filepath.Join(m.cfg.StateDir, "replicas", vol)
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating replica directory: %w", err)
	}
	meta := volumeMeta{Name: vol, Size: size, Created: time.Now().UTC(), Mode: ModeLocal, Replica: true}
	if err := saveMeta(dir, meta); err != nil {
		return nil, err
	}
	v, err := openVolume(m.ctx, m, dir)
	if err != nil {
		return nil, err
	}
	m.replicas[vol] = v
	m.logger.Info("holding remote CDP log", "volume", vol, "size", size)
	return v, nil
}
