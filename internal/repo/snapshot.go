package repo

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/holdfast/holdfast/internal/repo/backend"
)

// Snapshot records one backup.
type Snapshot struct {
	ID       ID        `json:"id"`
	Time     time.Time `json:"time"`
	Tree     ID        `json:"tree"`
	Paths    []string  `json:"paths"`
	Hostname string    `json:"hostname"`
	Username string    `json:"username,omitempty"`
	Tags     []string  `json:"tags,omitempty"`
	Parent   *ID       `json:"parent,omitempty"`
	Excludes []string  `json:"excludes,omitempty"`
	Summary  *Summary  `json:"summary,omitempty"`
}

// HasTag reports whether the snapshot carries tag.
func (s *Snapshot) HasTag(tag string) bool {
	for _, t := range s.Tags {
		if t == tag {
			return true
		}
	}
	return false
}

// saveSnapshot stores a snapshot and sets its ID.
func (r *Repository) saveSnapshot(ctx context.Context, sn *Snapshot) error {
	sn.ID = ID{}
	b, err := json.Marshal(sn)
	if err != nil {
		return err
	}
	id, err := r.saveFile(ctx, backend.SnapshotFile, b)
	if err != nil {
		return fmt.Errorf("saving snapshot: %w", err)
	}
	sn.ID = id
	return nil
}

func decodeSnapshot(b []byte) (*Snapshot, error) {
	if len(b) > maxObjectSize {
		return nil, fmt.Errorf("snapshot of %d bytes above limit", len(b))
	}
	var sn Snapshot
	if err := json.Unmarshal(b, &sn); err != nil {
		return nil, fmt.Errorf("decoding snapshot: %w", err)
	}
	if sn.Tree.IsNull() {
		return nil, fmt.Errorf("snapshot has no tree")
	}
	return &sn, nil
}

// LoadSnapshot loads one snapshot.
func (r *Repository) LoadSnapshot(ctx context.Context, id ID) (*Snapshot, error) {
	b, err := r.loadFile(ctx, backend.SnapshotFile, id)
	if err != nil {
		return nil, fmt.Errorf("loading snapshot %s: %w", id.Short(), err)
	}
	sn, err := decodeSnapshot(b)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", id.Short(), err)
	}
	sn.ID = id
	return sn, nil
}

// Snapshots loads every snapshot, oldest first.
func (r *Repository) Snapshots(ctx context.Context) ([]*Snapshot, error) {
	ids, err := r.listIDs(ctx, backend.SnapshotFile)
	if err != nil {
		return nil, err
	}
	out := make([]*Snapshot, 0, len(ids))
	for _, id := range ids {
		sn, err := r.LoadSnapshot(ctx, id)
		if err != nil {
			return nil, err
		}
		out = append(out, sn)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out, nil
}
