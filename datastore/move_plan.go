package datastore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/format"
	"github.com/pbsq/pbsq/datastore/name"
)

// ---- one group: its plan

// moveSnap is a snapshot as a move sees it.
type moveSnap struct {
	name.Snapshot
	finished bool
	// files are the snapshot's files relative to its directory: on object
	// storage every object (the move copies them), on a filesystem the
	// visible ones (the journal needs the index files; rename moves all).
	files []string
}

// groupContents lists a group's snapshots, oldest first; exists reports
// whether the group is there at all.
func (s *Store) groupContents(ctx context.Context, g name.Group) (snaps []moveSnap, exists bool, err error) {
	if !s.b.Features().ImplicitDirs {
		exists, err := s.GroupExists(ctx, g)
		if err != nil || !exists {
			return nil, exists, err
		}
		infos, err := s.ListSnapshots(ctx, g)
		if err != nil {
			return nil, true, err
		}
		for _, in := range infos {
			snaps = append(snaps, moveSnap{Snapshot: in.Snapshot, finished: in.Finished, files: in.Files})
		}
		return snaps, true, nil
	}
	// Object storage: one flat listing instead of one per snapshot.
	prefix := g.Path() + "/"
	l := newGroupListing(g)
	err = s.b.Walk(ctx, g.Path(), func(fi backend.FileInfo) error {
		if rel, ok := strings.CutPrefix(fi.Name, prefix); ok {
			l.add(fi.Name, rel)
		}
		return nil
	})
	if err != nil {
		return nil, false, fmt.Errorf("list group %s in namespace %q: %w", g, g.NS, err)
	}
	return l.sorted(), len(l.files) > 0, nil
}

// groupListing is a group's objects as a flat listing shows them.
type groupListing struct {
	g      name.Group
	byTime map[int64]*moveSnap
	// files are the paths of every object below the group.
	files        []string
	owner, notes bool
}

func newGroupListing(g name.Group) *groupListing {
	return &groupListing{g: g, byTime: map[int64]*moveSnap{}}
}

// add records the object at path, rel being its path below the group.
func (l *groupListing) add(path, rel string) {
	l.files = append(l.files, path)
	dir, file, ok := strings.Cut(rel, "/")
	if !ok {
		l.owner = l.owner || rel == "owner"
		l.notes = l.notes || rel == "notes"
		return
	}
	t, err := name.ParseTime(dir)
	if err != nil {
		return
	}
	sn := l.byTime[t.Unix()]
	if sn == nil {
		sn = &moveSnap{Snapshot: name.Snapshot{Group: l.g, Time: t}}
		l.byTime[t.Unix()] = sn
	}
	sn.files = append(sn.files, file)
	if file == ManifestName {
		sn.finished = true
	}
}

// sorted returns the snapshots oldest first.
func (l *groupListing) sorted() []moveSnap {
	snaps := make([]moveSnap, 0, len(l.byTime))
	for _, sn := range l.byTime {
		sort.Strings(sn.files)
		snaps = append(snaps, *sn)
	}
	sort.Slice(snaps, func(i, j int) bool { return snaps[i].Time.Before(snaps[j].Time) })
	return snaps
}

// groupPlan is one group's move, checked before anything changes.
type groupPlan struct {
	src, dst name.Group
	snaps    []moveSnap         // source snapshots, oldest first
	dstSnaps map[int64]moveSnap // target snapshots by time
	merge    bool               // the target group exists
	owner    string             // source owner ("" when it has none)
	notes    string             // source notes
	// writeOwner/writeNotes: the target lacks them; they are written
	// before the first snapshot moves, so a target group never exists
	// without its owner.
	writeOwner, writeNotes bool
	// record: the target group is new and merging is off, so a rerun
	// must be able to tell that this move created it.
	record bool
	// copyOwner/copyNotes: the target group is new; its owner and notes
	// are copied from the source (moves in waves, which do not read them).
	copyOwner, copyNotes bool
}

// planGroup reads both sides of a group move and checks DESIGN §4's
// preconditions: merging allowed, owners equal, target snapshots older.
// It accepts what an interrupted run of the same move leaves behind.
func (m *mover) planGroup(ctx context.Context, src name.Group, dstNS name.Namespace, allowMerge bool) (*groupPlan, error) {
	s := m.s
	dst := src.InNS(dstNS)
	p := &groupPlan{src: src, dst: dst, dstSnaps: map[int64]moveSnap{}}
	var (
		exists, dexists bool
		dsnaps          []moveSnap
	)
	err := moveConcurrently(ctx,
		func(ctx context.Context) (err error) { p.snaps, exists, err = s.groupContents(ctx, src); return err },
		func(ctx context.Context) (err error) { dsnaps, dexists, err = s.groupContents(ctx, dst); return err },
		func(ctx context.Context) (err error) { p.owner, err = s.readGroupFile(ctx, src, "owner"); return err },
		func(ctx context.Context) (err error) { p.notes, err = s.readGroupFile(ctx, src, "notes"); return err },
	)
	if err != nil {
		return nil, err
	}
	if !exists {
		return nil, fmt.Errorf("group %s in namespace %q on store %q: %w", src, src.NS, s.name, ErrNotFound)
	}
	p.owner = strings.TrimRight(p.owner, "\n")
	if !dexists {
		p.writeOwner, p.writeNotes = p.owner != "", p.notes != ""
		p.record = !allowMerge
		return p, nil
	}
	if err := m.planMerge(ctx, p, dsnaps, allowMerge); err != nil {
		return nil, err
	}
	return p, nil
}

// planMerge checks a move into the existing target group p.dst, whose
// snapshots are dsnaps; p holds the source side, its owner and notes read.
func (m *mover) planMerge(ctx context.Context, p *groupPlan, dsnaps []moveSnap, allowMerge bool) error {
	s := m.s
	src, dst := p.src, p.dst
	p.merge = true
	if !allowMerge {
		ok, err := s.hasMoveRecord(ctx, src, dst)
		if err != nil {
			return err
		}
		switch {
		case ok:
			p.record = true // ours: keep the record until the snapshots are moved
		case m.addsNothing(p, dsnaps):
			// Every source snapshot is at the target already: what is
			// left is the cleanup of an interrupted move, and no
			// snapshot joins the existing group.
		default:
			return invalidf("group %s already exists in target namespace %q and merging is off (merge-group=false); allow merging or choose another target",
				src, dst.NS)
		}
	}
	var downer, dnotes string
	err := moveConcurrently(ctx,
		func(ctx context.Context) (err error) { downer, err = s.readGroupFile(ctx, dst, "owner"); return err },
		func(ctx context.Context) (err error) { dnotes, err = s.readGroupFile(ctx, dst, "notes"); return err },
	)
	if err != nil {
		return err
	}
	downer = strings.TrimRight(downer, "\n")
	switch {
	case downer == "":
		p.writeOwner = p.owner != ""
	case p.owner != "" && p.owner != downer:
		return invalidf("cannot merge group %s of namespace %q (owner %q) into namespace %q: the target group is owned by %q",
			src, src.NS, p.owner, dst.NS, downer)
	}
	p.writeNotes = p.notes != "" && dnotes == ""
	for _, t := range dsnaps {
		p.dstSnaps[t.Time.Unix()] = t
	}
	return m.checkOrder(ctx, p, dsnaps)
}

// addsNothing reports whether moving p would add no snapshot to the
// target: the source has none left, or (object storage) only copies of
// target snapshots.
func (m *mover) addsNothing(p *groupPlan, dsnaps []moveSnap) bool {
	if m.atomic {
		return len(p.snaps) == 0
	}
	have := make(map[int64]bool, len(dsnaps))
	for _, t := range dsnaps {
		have[t.Time.Unix()] = t.finished
	}
	for _, sn := range p.snaps {
		if !have[sn.Time.Unix()] {
			return false
		}
	}
	return true
}

// checkOrder is the merge rule: every target snapshot must be older than
// the oldest remaining source snapshot, so the merged group is the source's
// history appended to the target's. On object storage a snapshot present
// on both sides is what an interrupted copy leaves and is exempt, unless
// both copies are finished and differ (then it is a real conflict).
func (m *mover) checkOrder(ctx context.Context, p *groupPlan, dsnaps []moveSnap) error {
	if len(p.snaps) == 0 {
		return nil
	}
	oldest, joining := p.snaps[0], true
	bySrc := make(map[int64]moveSnap, len(p.snaps))
	for _, sn := range p.snaps {
		bySrc[sn.Time.Unix()] = sn
	}
	if !m.atomic {
		// The rule applies to the snapshots that would join the target:
		// an interrupted move deletes a snapshot's source only once every
		// older one of its group has a copy at the target, but the
		// deletes of several snapshots may land in any order, leaving a
		// moved snapshot next to older ones on both sides.
		atTarget := make(map[int64]bool, len(dsnaps))
		for _, t := range dsnaps {
			atTarget[t.Time.Unix()] = true
		}
		i := 0
		for i < len(p.snaps) && atTarget[p.snaps[i].Time.Unix()] {
			i++
		}
		if i == len(p.snaps) {
			joining = false
		} else {
			oldest = p.snaps[i]
		}
	}
	for _, t := range dsnaps {
		if sn, ok := bySrc[t.Time.Unix()]; ok && !m.atomic {
			if t.finished && sn.finished {
				same, err := m.sameManifest(ctx, sn.Snapshot, t.Snapshot)
				if err != nil {
					return err
				}
				if !same {
					return invalidf("snapshot %s exists in namespace %q and in target namespace %q with different contents; remove one of them first",
						sn.Snapshot, p.src.NS, p.dst.NS)
				}
			}
			continue
		}
		if joining && !t.Time.Before(oldest.Time) {
			return invalidf("cannot merge group %s into namespace %q: its snapshot %s is not older than the oldest snapshot %s moving from namespace %q (the histories would interleave)",
				p.src, p.dst.NS, t.TimeString(), oldest.TimeString(), p.src.NS)
		}
	}
	return nil
}

// sameManifest compares two manifests, ignoring the unprotected part
// (a verify may have updated one copy since).
func (m *mover) sameManifest(ctx context.Context, a, b name.Snapshot) (bool, error) {
	ra, err := m.s.b.ReadFile(ctx, a.File(ManifestName))
	if errors.Is(err, fs.ErrNotExist) {
		// Gone since the listing (a killed run's last delete landing
		// late): no longer two finished copies, so no conflict; the
		// group is planned again under its locks before it moves.
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("manifest of %s in %q: %w", a, a.NS, err)
	}
	rb, err := m.s.b.ReadFile(ctx, b.File(ManifestName))
	if errors.Is(err, fs.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("manifest of %s in %q: %w", b, b.NS, err)
	}
	if bytes.Equal(ra, rb) {
		return true, nil
	}
	ma, errA := format.ParseManifest(ra)
	mb, errB := format.ParseManifest(rb)
	if errA != nil || errB != nil {
		return false, nil
	}
	ja, errA := protectedJSON(ma)
	jb, errB := protectedJSON(mb)
	return errA == nil && errB == nil && bytes.Equal(ja, jb), nil
}

// readGroupFile returns a group's owner or notes; "" when missing.
// Both are bounded, and an owner file is validated (see GroupOwner) so
// that no message ever shows a file's content.
func (s *Store) readGroupFile(ctx context.Context, g name.Group, file string) (string, error) {
	limit := int64(maxNotesFile)
	if file == "owner" {
		limit = maxOwnerFile
	}
	data, err := backend.ReadFileMax(ctx, s.b, backend.Join(g.Path(), file), limit)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("%s of group %s in namespace %q: %w", file, g, g.NS, err)
	}
	if file == "owner" && !plausibleAuthID(strings.TrimRight(string(data), "\n")) {
		return "", fmt.Errorf("owner of group %s in namespace %q: %w (%d bytes)", g, g.NS, ErrBadOwnerFile, len(data))
	}
	return string(data), nil
}
