package repo

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/holdfast/holdfast/internal/repo/backend"
)

// ForgetPolicy says which snapshots to keep; snapshots kept by no rule are
// removed. Rules apply per group of snapshots with the same host and paths.
type ForgetPolicy struct {
	Last    int      `json:"keep_last,omitempty"`
	Hourly  int      `json:"keep_hourly,omitempty"`
	Daily   int      `json:"keep_daily,omitempty"`
	Weekly  int      `json:"keep_weekly,omitempty"`
	Monthly int      `json:"keep_monthly,omitempty"`
	Yearly  int      `json:"keep_yearly,omitempty"`
	Tags    []string `json:"keep_tags,omitempty"`
}

// Empty reports whether the policy keeps nothing (forget refuses to apply
// an empty policy, which would remove every snapshot).
func (p ForgetPolicy) Empty() bool {
	return p.Last == 0 && p.Hourly == 0 && p.Daily == 0 && p.Weekly == 0 && p.Monthly == 0 && p.Yearly == 0 && len(p.Tags) == 0
}

// ForgetGroup is the decision for one host+paths group.
type ForgetGroup struct {
	Hostname string      `json:"hostname"`
	Paths    []string    `json:"paths"`
	Keep     []*Snapshot `json:"keep"`
	Remove   []*Snapshot `json:"remove"`
}

type bucketRule struct {
	n   int
	key func(time.Time) string
}

// ApplyPolicy splits snapshots (of one group) into kept and removed.
func ApplyPolicy(snaps []*Snapshot, p ForgetPolicy) (keep, remove []*Snapshot) {
	list := append([]*Snapshot(nil), snaps...)
	sort.SliceStable(list, func(i, j int) bool { return list[i].Time.After(list[j].Time) })
	idx := 0
	rules := []bucketRule{
		{p.Last, func(time.Time) string { idx++; return fmt.Sprint(idx) }},
		{p.Hourly, func(t time.Time) string { return t.Local().Format("2006-01-02 15") }},
		{p.Daily, func(t time.Time) string { return t.Local().Format("2006-01-02") }},
		{p.Weekly, func(t time.Time) string { y, w := t.Local().ISOWeek(); return fmt.Sprintf("%d-%d", y, w) }},
		{p.Monthly, func(t time.Time) string { return t.Local().Format("2006-01") }},
		{p.Yearly, func(t time.Time) string { return t.Local().Format("2006") }},
	}
	last := make([]string, len(rules))
	left := make([]int, len(rules))
	for i, r := range rules {
		left[i] = r.n
	}
	for _, sn := range list {
		kept := false
		for _, tag := range p.Tags {
			if sn.HasTag(tag) {
				kept = true
			}
		}
		for i, r := range rules {
			if left[i] == 0 {
				continue
			}
			k := r.key(sn.Time)
			if k != last[i] {
				last[i] = k
				left[i]--
				kept = true
			}
		}
		if kept {
			keep = append(keep, sn)
		} else {
			remove = append(remove, sn)
		}
	}
	return keep, remove
}

// ForgetOptions configure forget.
type ForgetOptions struct {
	// DryRun only reports what would be removed.
	DryRun bool
	// Progress, if set, is called after each snapshot removed (Files of
	// TotalFiles).
	Progress func(Progress)
}

// Forget applies policy to every group and removes the snapshots it does
// not keep (unless opts.DryRun). It takes an exclusive lock.
func (r *Repository) Forget(ctx context.Context, p ForgetPolicy, opts ForgetOptions) ([]ForgetGroup, error) {
	if p.Empty() {
		return nil, fmt.Errorf("forget: empty policy would remove every snapshot")
	}
	var out []ForgetGroup
	err := r.withLock(ctx, true, func(ctx context.Context) error {
		snaps, err := r.Snapshots(ctx)
		if err != nil {
			return err
		}
		groups := map[string]*ForgetGroup{}
		var order []string
		members := map[string][]*Snapshot{}
		for _, sn := range snaps {
			k := sn.Hostname + "\x00" + strings.Join(sn.Paths, "\x00")
			if groups[k] == nil {
				groups[k] = &ForgetGroup{Hostname: sn.Hostname, Paths: sn.Paths}
				order = append(order, k)
			}
			members[k] = append(members[k], sn)
		}
		var remove []ID
		for _, k := range order {
			g := groups[k]
			g.Keep, g.Remove = ApplyPolicy(members[k], p)
			for _, sn := range g.Remove {
				remove = append(remove, sn.ID)
			}
			out = append(out, *g)
		}
		return r.removeSnapshots(ctx, remove, opts)
	})
	return out, err
}

// ForgetSnapshots removes the given snapshots (unless opts.DryRun). It
// takes an exclusive lock.
func (r *Repository) ForgetSnapshots(ctx context.Context, ids []ID, opts ForgetOptions) error {
	return r.withLock(ctx, true, func(ctx context.Context) error {
		return r.removeSnapshots(ctx, ids, opts)
	})
}

func (r *Repository) removeSnapshots(ctx context.Context, ids []ID, opts ForgetOptions) error {
	if opts.DryRun {
		return nil
	}
	for i, id := range ids {
		if err := r.be.Remove(ctx, backend.Handle{Type: backend.SnapshotFile, Name: id.String()}); err != nil {
			return fmt.Errorf("forget: removing snapshot %s: %w", id.Short(), err)
		}
		if opts.Progress != nil {
			opts.Progress(Progress{Phase: "removing snapshots", Files: int64(i + 1), TotalFiles: int64(len(ids))})
		}
	}
	return nil
}
