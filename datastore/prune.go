package datastore

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
	"github.com/pbsq/pbsq/datastore/prune"
)

// PruneRequest selects groups and the keep rules.
type PruneRequest struct {
	Scope
	Keep   prune.Options
	DryRun bool
	// Location for the calendar rules; nil means the worker's local zone.
	Location *time.Location
}

// PruneDecision is the mark of one snapshot.
type PruneDecision struct {
	NS       string `json:"ns"`
	Snapshot string `json:"snapshot"`
	Mark     string `json:"mark"`
	// Removed is set once a snapshot marked remove is gone.
	Removed bool `json:"removed"`
}

// PruneResult is the outcome of Prune.
type PruneResult struct {
	DryRun    bool            `json:"dry-run"`
	Groups    int             `json:"groups"`
	Kept      int             `json:"kept"`
	Removed   int             `json:"removed"`
	Protected int             `json:"protected"`
	Decisions []PruneDecision `json:"decisions"`
	Skipped   []Skipped       `json:"skipped"`
	Warnings  []string        `json:"warnings,omitempty"`
	Seconds   float64         `json:"seconds"`
}

// Outcome folds the result into ok or skipped.
func (r *PruneResult) Outcome() error {
	if len(r.Skipped) > 0 {
		return fmt.Errorf("prune: %d item(s) skipped: %w", len(r.Skipped), ErrSkipped)
	}
	return nil
}

// Prune applies PBS's keep rules to every group in scope. Each group is
// handled under a shared namespace lock and its exclusive group lock; each
// removal (oldest first) under the snapshot's exclusive lock. Busy groups
// and snapshots are retried once at the end, then reported as skipped.
func (s *Store) Prune(ctx context.Context, req PruneRequest, progress ProgressFunc) (*PruneResult, error) {
	if err := req.Keep.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", name.ErrInvalid, err)
	}
	if req.Snapshot != nil {
		return nil, invalidf("prune works on groups or namespaces, not on one snapshot")
	}
	if !req.DryRun {
		if _, err := s.beginWrite(ctx, false); err != nil {
			return nil, err
		}
	}
	start := time.Now()
	groups, err := s.scopeGroups(ctx, req.Scope)
	if err != nil {
		return nil, err
	}
	res := &PruneResult{DryRun: req.DryRun, Decisions: []PruneDecision{}, Skipped: []Skipped{}}
	if !req.Keep.KeepsSomething() {
		res.Warnings = append(res.Warnings, "no keep option set: keeping every snapshot")
	}
	loc := req.Location
	if loc == nil {
		loc = time.Local
	}
	rep := newReporter(progress, "prune", int64(len(groups)))
	s.obs.logf("prune datastore %s: %d group(s) in scope%s", s.name, len(groups), map[bool]string{true: " (dry run)"}[req.DryRun])
	var asideSnaps []pendingRemoval
	err = busyRetry[name.Group]{
		run: func(ctx context.Context, g name.Group) error {
			busySnaps, err := s.pruneGroup(ctx, g, req, loc, res)
			asideSnaps = append(asideSnaps, busySnaps...)
			return err
		},
		aside: func(g name.Group, busy error) {
			s.obs.logf("group %s busy, retried at the end: %v", groupRef(g), busy)
		},
		skip: func(g name.Group, busy error) {
			res.Skipped = append(res.Skipped, Skipped{Item: groupLabel(g), Reason: busy.Error()})
			s.obs.skipped("prune", "busy")
			s.obs.logf("skipped group %s: busy: %v", groupRef(g), busy)
		},
		done: func(name.Group) { rep.add(1) },
	}.do(ctx, groups)
	if err != nil {
		return res, err
	}
	for _, p := range asideSnaps {
		if err := s.removeSnapshotLocked(ctx, p, true, res); err != nil {
			if !errors.Is(err, lock.ErrBusy) {
				return res, err
			}
			res.Skipped = append(res.Skipped, Skipped{Item: snapshotLabel(p.snap), Reason: err.Error()})
			s.obs.skipped("prune", "busy")
			s.obs.logf("skipped %s: busy: %v", snapRef(p.snap), err)
		}
	}
	res.Seconds = time.Since(start).Seconds()
	rep.finish()
	s.obs.logf("prune summary: %d group(s), %d kept, %d protected, %d removed, %d skipped", res.Groups, res.Kept, res.Protected, res.Removed, len(res.Skipped))
	return res, nil
}

// pendingRemoval is a snapshot marked remove and its decision's index.
type pendingRemoval struct {
	snap     name.Snapshot
	decision int
}

// pruneGroup marks and removes in one group; it returns the snapshots that
// were busy so the caller can retry them once.
func (s *Store) pruneGroup(ctx context.Context, g name.Group, req PruneRequest, loc *time.Location, res *PruneResult) ([]pendingRemoval, error) {
	ctx, release, err := hold(ctx, s.on(s.nsRequest(g.NS, lock.Shared), s.groupRequest(g))...)
	if err != nil {
		return nil, err
	}
	defer release()
	snaps, err := s.ListSnapshots(ctx, g)
	if err != nil {
		return nil, err
	}
	res.Groups++
	in := make([]prune.Snapshot, len(snaps))
	for i, sn := range snaps {
		in[i] = prune.Snapshot{Time: sn.Time, Finished: sn.Finished, Protected: sn.Protected}
	}
	decisions := prune.Select(in, req.Keep, loc)
	var remove []pendingRemoval
	for _, d := range decisions {
		sn := snaps[d.Index]
		res.Decisions = append(res.Decisions, PruneDecision{NS: g.NS.String(), Snapshot: sn.Snapshot.String(), Mark: d.Mark.String()})
		s.obs.logf("%s %s", sn.Snapshot.String()+" "+nsRef(g.NS), d.Mark)
		switch d.Mark {
		case prune.Remove:
			remove = append(remove, pendingRemoval{snap: sn.Snapshot, decision: len(res.Decisions) - 1})
		case prune.Protected:
			res.Protected++
			s.obs.snapshotPruned("protected")
		default:
			res.Kept++
			s.obs.snapshotPruned("keep")
		}
	}
	if req.DryRun {
		return nil, nil
	}
	// Oldest first, as PBS removes them.
	sort.Slice(remove, func(i, j int) bool { return remove[i].snap.Time.Before(remove[j].snap.Time) })
	var busy []pendingRemoval
	for _, p := range remove {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		err := s.removeSnapshotLocked(ctx, p, false, res)
		if errors.Is(err, lock.ErrBusy) {
			s.obs.logf("%s busy, retried at the end: %v", snapRef(p.snap), err)
			busy = append(busy, p)
			continue
		}
		if err != nil {
			return nil, err
		}
	}
	return busy, nil
}

// removeSnapshotLocked removes one snapshot under its exclusive lock (and,
// when withParents, the namespace and group locks first).
func (s *Store) removeSnapshotLocked(ctx context.Context, p pendingRemoval, withParents bool, res *PruneResult) error {
	sn := p.snap
	reqs := []lock.Request{s.snapshotRequest(sn, lock.Exclusive)}
	if withParents {
		reqs = []lock.Request{s.nsRequest(sn.NS, lock.Shared), s.groupRequest(sn.Group), reqs[0]}
	}
	ctx, release, err := hold(ctx, s.on(reqs...)...)
	if err != nil {
		return err
	}
	defer release()
	info, err := s.SnapshotInfo(ctx, sn)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if info.Protected {
		s.obs.logf("kept %s: protected since it was marked", snapRef(sn))
		return nil // protected since it was marked: never removed
	}
	if err := s.removeSnapshotFiles(ctx, sn); err != nil {
		return err
	}
	s.obs.logf("removed %s", snapRef(sn))
	res.Removed++
	s.obs.snapshotPruned("remove")
	res.Decisions[p.decision].Removed = true
	return nil
}
