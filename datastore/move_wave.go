package datastore

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
)

// ---- move-namespace on object storage, in waves
//
// Moved one by one, a namespace of many small groups pays each group's
// fixed costs in sequence: its listing, lock round trips, journal writes,
// the manifest-last copy, the manifest-first delete and the cleanup. Groups
// that fit in one snapshot batch move together in a wave instead, and the
// cost is per object:
//
//  1. the wave's group locks (in parallel), then one listing of the
//     wave's key range per namespace and type on each side, read under
//     those locks;
//  2. each group planned and checked as planGroup would;
//  3. the snapshot locks, oldest first within each group (a busy one stops
//     its group there, as in execGroup);
//  4. the move records of new targets when merging is off, before anything
//     lands at a target;
//  5. one move-journal entry for every index of the wave, written together
//     with the targets' owners and notes and before any snapshot moves;
//  6. each snapshot's data files, then its manifest, every copy in the
//     operation's copy slots;
//  7. at the source, once a snapshot and every older one of its group are
//     copied: its manifest, then its other files; once a group's snapshots
//     are all gone: its record, then its owner, notes and stray objects.
//     These deletes go in DeleteObjects requests shared by all groups of
//     the wave;
//  8. the journal entry closed.
//
// Per group that is the order execGroup keeps, except that deletes of
// several copied snapshots may land in any order, which checkOrder
// accepts; so a crash at any point leaves each group in a state planGroup
// accepts, and a rerun finishes. Groups of more than waveGroupSnaps
// snapshots move group by group (busyRetry.pass) alongside the waves; busy
// groups are retried one by one at the end (busyRetry).

const (
	// waveGroups bounds the groups of a wave (two locks each).
	waveGroups = 256
	// waveObjects bounds the objects of a wave (unless one group has
	// more): several waves keep the copy slots busy across each other's
	// round trips (locks, listing, journal, owners).
	waveObjects = 256
	// wavesInFlight waves move at once.
	wavesInFlight = 3
	// waveGroupSnaps is the most snapshots of a group that moves in a
	// wave; bigger groups move one by one (busyRetry.pass).
	waveGroupSnaps = 16
)

// canWave reports whether the backend supports moving in waves: object
// storage (requests are round trips) with ranged listings and batch
// deletes. (A filesystem moves in batches: a rename costs nothing next to
// a round trip.)
func (m *mover) canWave() bool {
	if m.atomic || m.batchRm == nil || !m.s.b.Features().RoundTrips {
		return false
	}
	_, ok := m.s.b.(backend.RangeWalker)
	return ok
}

// listNamespaceGroups lists the groups directly in ns with their contents,
// one flat listing per backup type.
func (m *mover) listNamespaceGroups(ctx context.Context, ns name.Namespace) (map[name.Group]*groupListing, error) {
	out := map[name.Group]*groupListing{}
	var mu sync.Mutex
	err := parallel(ctx, len(name.Types), len(name.Types), func(ctx context.Context, i int) error {
		ls, err := m.listTypeDir(ctx, ns, name.Types[i], "", "")
		mu.Lock()
		defer mu.Unlock()
		for g, l := range ls {
			out[g] = l
		}
		return err
	})
	return out, err
}

// listTypeDir lists the groups of type t in ns; with first and last (group
// ids), only the key range from the first to the last one.
func (m *mover) listTypeDir(ctx context.Context, ns name.Namespace, t name.BackupType, first, last string) (map[name.Group]*groupListing, error) {
	s := m.s
	dir := backend.Join(ns.Path(), string(t))
	out := map[name.Group]*groupListing{}
	var lastPrefix string
	var bad []string
	visit := func(fi backend.FileInfo) error {
		rel, ok := strings.CutPrefix(fi.Name, dir+"/")
		if !ok {
			return nil
		}
		id, below, ok := strings.Cut(rel, "/")
		if !ok {
			return nil // a file directly in the type directory
		}
		if lastPrefix != "" && fi.Name > lastPrefix && !strings.HasPrefix(fi.Name, lastPrefix) {
			return errMoveStopWalk // past the range
		}
		g := name.Group{NS: ns, Type: t, ID: id}
		l := out[g]
		if l == nil {
			if _, err := name.NewGroup(ns, string(t), id); err != nil {
				if len(bad) == 0 || bad[len(bad)-1] != id {
					bad = append(bad, id)
				}
				return nil
			}
			l = newGroupListing(g)
			out[g] = l
		}
		l.add(fi.Name, below)
		return nil
	}
	var err error
	if first == "" {
		err = s.b.Walk(ctx, dir, visit)
	} else {
		lastPrefix = backend.Join(dir, last) + "/"
		err = s.b.(backend.RangeWalker).WalkFrom(ctx, dir, backend.Join(dir, first), visit)
	}
	if errors.Is(err, errMoveStopWalk) {
		err = nil
	}
	if err != nil {
		return nil, fmt.Errorf("list groups of namespace %q: %w", ns, err)
	}
	for _, id := range bad {
		s.log.Warn("ignoring invalid group directory", "ns", ns.String(), "type", t, "name", id)
	}
	return out, nil
}

// listWaveSide lists the given groups (all of one side of a wave) with one
// ranged listing per namespace and type. Groups without objects are
// missing from the result.
func (m *mover) listWaveSide(ctx context.Context, groups []name.Group) (map[name.Group]*groupListing, error) {
	type dirKey struct {
		ns name.Namespace
		t  name.BackupType
	}
	ranges := map[dirKey][2]string{} // first and last group path, in key order
	for _, g := range groups {
		k := dirKey{g.NS, g.Type}
		r, ok := ranges[k]
		// Keys sort by the group's path with its slash ("vm/100-a/" comes
		// before "vm/100/").
		key := g.ID + "/"
		switch {
		case !ok:
			r = [2]string{g.ID, g.ID}
		case key < r[0]+"/":
			r[0] = g.ID
		case key > r[1]+"/":
			r[1] = g.ID
		}
		ranges[k] = r
	}
	keys := make([]dirKey, 0, len(ranges))
	for k := range ranges {
		keys = append(keys, k)
	}
	out := map[name.Group]*groupListing{}
	var mu sync.Mutex
	err := parallel(ctx, moveCopyParallel, len(keys), func(ctx context.Context, i int) error {
		k := keys[i]
		r := ranges[k]
		// Start just before the first group's keys: every key of it is
		// "<first>/…", which sorts after "<first>" itself.
		ls, err := m.listTypeDir(ctx, k.ns, k.t, r[0], r[1])
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		for g, l := range ls {
			out[g] = l
		}
		return nil
	})
	return out, err
}

// planListed is planGroup from listings taken under the group locks (dl
// nil: no target group). A new target gets the source's owner and notes
// by server-side copies, so they are read only when merging.
func (m *mover) planListed(ctx context.Context, src name.Group, dstNS name.Namespace, l, dl *groupListing, allowMerge bool) (*groupPlan, error) {
	if l == nil {
		return nil, fmt.Errorf("group %s in namespace %q on store %q: %w", src, src.NS, m.s.name, ErrNotFound)
	}
	p := &groupPlan{src: src, dst: src.InNS(dstNS), dstSnaps: map[int64]moveSnap{}, snaps: l.sorted()}
	if dl == nil {
		p.copyOwner, p.copyNotes = l.owner, l.notes
		p.record = !allowMerge
		return p, nil
	}
	err := moveConcurrently(ctx,
		func(ctx context.Context) (err error) { p.owner, err = m.s.readGroupFile(ctx, src, "owner"); return err },
		func(ctx context.Context) (err error) { p.notes, err = m.s.readGroupFile(ctx, src, "notes"); return err },
	)
	if err != nil {
		return nil, err
	}
	p.owner = strings.TrimRight(p.owner, "\n")
	if err := m.planMerge(ctx, p, dl.sorted(), allowMerge); err != nil {
		return nil, err
	}
	return p, nil
}

// waveGroup is one group of a wave.
type waveGroup struct {
	// Its locks and plan; alone: the group turned out bigger than its
	// wave's room.
	batchMember
	listed *groupListing // the source group

	// Progress of the copies and source deletes (execWave).
	mu     sync.Mutex
	moves  []*snapMove // p.snaps[:n]
	copied []bool      // per snapshot of moves
	next   int         // moves[:next] are copied, their sources may go
	left   int         // snapshots still at the source
	// keep: the group stays when its snapshots are gone (a batch of
	// execGroup, which removes the group after its last batch).
	keep bool
}

// runWaves is move-namespace's first pass on object storage: small
// groups in waves, bigger ones one by one alongside (byGroup: busyRetry's
// usual pass). It returns the groups whose locks stayed busy, in order.
func (m *mover) runWaves(ctx context.Context, jobs []moveJob, merge bool, byGroup func(context.Context, []moveJob) ([]moveJob, error)) ([]moveJob, error) {
	var small, big []moveJob
	for _, j := range jobs {
		// A group with enough snapshots to fill the copy slots moves
		// faster by itself in execGroup's batches (measured: 40 groups
		// of 50 snapshots, 1.9 × rclone move that way, 1.2 × in waves).
		if j.snaps > waveGroupSnaps {
			big = append(big, j)
		} else {
			small = append(small, j)
		}
	}
	// The first waves are small and each is twice the last, up to the
	// bounds: the first snapshots move after a few round trips instead of
	// after a whole big wave's locks, listing and journal.
	var waves [][]moveJob
	for start, limit := 0, 1; start < len(small); limit = min(2*limit, waveGroups) {
		end, snaps, objects := start, 0, 0
		for end < len(small) && end-start < limit &&
			(end == start || snaps+small[end].snaps <= moveBatch && objects+small[end].objects <= waveObjects) {
			snaps += small[end].snaps
			objects += small[end].objects
			end++
		}
		waves = append(waves, small[start:end])
		start = end
	}

	var (
		mu    sync.Mutex
		aside []moveJob
	)
	err := moveConcurrently(ctx, func(ctx context.Context) error {
		a, err := byGroup(ctx, big)
		mu.Lock()
		aside = append(aside, a...)
		mu.Unlock()
		return err
	}, func(ctx context.Context) error {
		return parallel(ctx, wavesInFlight, len(waves), func(ctx context.Context, i int) error {
			a, err := m.moveWave(ctx, waves[i], merge)
			mu.Lock()
			aside = append(aside, a...)
			mu.Unlock()
			return err
		})
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(aside, func(i, k int) bool { return aside[i].seq < aside[k].seq })
	return aside, nil
}

// moveWave moves a wave of small groups (see the section comment) and
// returns the groups set aside as busy. Any other error stops it; what it
// did is what execGroup would have done up to the same point.
func (m *mover) moveWave(ctx context.Context, jobs []moveJob, merge bool) (_ []moveJob, err error) {
	s := m.s
	ws := make([]*waveGroup, len(jobs))
	for i, j := range jobs {
		ws[i] = &waveGroup{batchMember: batchMember{job: j}}
	}
	defer func() {
		for _, w := range ws {
			w.release()
		}
	}()

	// 1. Group locks, then the listings under them.
	err = parallel(ctx, moveCopyParallel, len(ws), func(ctx context.Context, i int) error {
		return ws[i].lockGroups(ctx, s)
	})
	if err != nil {
		return nil, err
	}
	var srcs, dsts []name.Group
	for _, w := range ws {
		if w.busy == nil {
			srcs = append(srcs, w.job.src)
			dsts = append(dsts, w.job.src.InNS(w.job.dstNS))
		}
	}
	var srcL, dstL map[name.Group]*groupListing
	if m.lockedBothSides && m.listed != nil {
		// The namespace locks kept both sides as the check phase listed
		// them: only targets that existed then need their contents.
		srcL = m.listed
		var merging []name.Group
		for _, g := range dsts {
			if m.targetGroups[g] {
				merging = append(merging, g)
			}
		}
		dstL, err = m.listWaveSide(ctx, merging)
	} else {
		err = moveConcurrently(ctx,
			func(ctx context.Context) (err error) { srcL, err = m.listWaveSide(ctx, srcs); return err },
			func(ctx context.Context) (err error) { dstL, err = m.listWaveSide(ctx, dsts); return err },
		)
	}
	if err != nil {
		return nil, err
	}

	// 2. Plans.
	err = parallel(ctx, moveCopyParallel, len(ws), func(ctx context.Context, i int) error {
		w := ws[i]
		if w.busy != nil {
			return nil
		}
		w.listed = srcL[w.job.src]
		p, err := m.planListed(ctx, w.job.src, w.job.dstNS, w.listed, dstL[w.job.src.InNS(w.job.dstNS)], merge)
		switch {
		case errors.Is(err, ErrNotFound):
			w.done = true // removed since it was listed
			return nil
		case errors.Is(err, name.ErrInvalid):
			w.done = true
			m.skip(groupLabel(w.job.src), err, "refused")
			return nil
		case err != nil:
			return err
		}
		w.p = p
		return nil
	})
	if err != nil {
		return nil, err
	}
	// A group that grew since it was counted may not fit: it moves alone.
	room := moveBatch
	for _, w := range ws {
		if w.p == nil || w.busy != nil {
			continue
		}
		if len(w.p.snaps) > room && room < moveBatch {
			w.alone = true
			continue
		}
		room -= len(w.p.snaps)
	}

	// 3. Snapshot locks, oldest first within each group.
	err = parallel(ctx, moveCopyParallel, len(ws), func(ctx context.Context, i int) error {
		w := ws[i]
		if w.p == nil || w.busy != nil || w.alone {
			return nil
		}
		return w.lockSnaps(ctx, s)
	})
	if err != nil {
		return nil, err
	}
	all, moving := lockedMembers(ws)
	wctx, cancel := lock.Watch(ctx, all...)
	defer cancel()
	if err := m.execWave(wctx, moving); err != nil {
		return nil, err
	}
	if err := moveAlone(wctx, m, ws); err != nil {
		return nil, err
	}

	var aside []moveJob
	for _, w := range ws {
		if w.busy != nil {
			aside = append(aside, w.job)
			continue // counted when retried
		}
		if !w.done {
			m.mu.Lock()
			m.res.Groups++
			if w.p.merge {
				m.res.MergedGroups = append(m.res.MergedGroups, groupLabel(w.p.dst))
			}
			m.mu.Unlock()
		}
		m.rep.add(1)
	}
	return aside, nil
}

// writeOwnerNotes writes the owner and notes p's target lacks.
func (m *mover) writeOwnerNotes(ctx context.Context, p *groupPlan) error {
	s := m.s
	if p.writeOwner {
		if err := s.b.WriteFile(ctx, backend.Join(p.dst.Path(), "owner"), []byte(p.owner+"\n")); err != nil {
			return fmt.Errorf("write owner of group %s in namespace %q: %w", p.dst, p.dst.NS, err)
		}
	}
	if p.writeNotes {
		if err := s.b.WriteFile(ctx, backend.Join(p.dst.Path(), "notes"), []byte(p.notes)); err != nil {
			return fmt.Errorf("write notes of group %s in namespace %q: %w", p.dst, p.dst.NS, err)
		}
	}
	return nil
}

// execWave moves the locked snapshots of planned groups on object
// storage, steps 4 to 8 of the section comment. A group whose snapshots
// all move (busy unset) is removed at the source.
func (m *mover) execWave(ctx context.Context, ws []*waveGroup) error {
	s := m.s
	if len(ws) == 0 {
		return nil
	}
	// 4. Records before any target write: a rerun must know the target
	// groups this move created.
	var recorded []*waveGroup
	for _, w := range ws {
		if w.p.record {
			recorded = append(recorded, w)
		}
	}
	err := m.each(ctx, len(recorded), func(ctx context.Context, i int) error {
		return s.writeMoveRecord(ctx, recorded[i].p.src, recorded[i].p.dst)
	})
	if err != nil {
		return err
	}

	// 5. The journal entry, with owners and notes.
	var moves []JournalMove
	var prelude []xfer
	for _, w := range ws {
		p, batch := w.p, w.p.snaps[:w.n]
		for _, sn := range batch {
			for _, f := range sn.files {
				if isMovedIndex(f) {
					moves = append(moves, JournalMove{From: sn.File(f), To: sn.InNS(p.dst.NS).File(f)})
				}
			}
		}
		for _, f := range []struct {
			copy bool
			file string
		}{{p.copyOwner, "owner"}, {p.copyNotes, "notes"}} {
			if f.copy {
				prelude = append(prelude, xfer{backend.Join(p.src.Path(), f.file), backend.Join(p.dst.Path(), f.file)})
			}
		}
	}
	var entry *JournalEntry
	err = moveConcurrently(ctx, func(ctx context.Context) (err error) {
		if len(moves) == 0 {
			return nil
		}
		entry, err = s.journalOpen(ctx, moves)
		return err
	}, func(ctx context.Context) error {
		return m.each(ctx, len(prelude), func(ctx context.Context, i int) error {
			if err := s.b.Copy(ctx, prelude[i].from, prelude[i].to); err != nil {
				return fmt.Errorf("copy %s to %s: %w", prelude[i].from, prelude[i].to, err)
			}
			return nil
		})
	}, func(ctx context.Context) error {
		// Owners and notes of merge targets that lack them (read while
		// planning).
		return m.each(ctx, len(ws), func(ctx context.Context, i int) error {
			return m.writeOwnerNotes(ctx, ws[i].p)
		})
	})
	if err != nil {
		return err
	}

	// 6–7. Copies and source deletes.
	if err := m.copyThenDelete(ctx, ws); err != nil {
		return err // the entry stays open: GC keeps honouring it
	}

	// 8. Done.
	if entry != nil {
		return s.journalClose(ctx, entry)
	}
	return nil
}

// copyThenDelete copies the locked snapshots of ws (each w.p.snaps[:w.n])
// and deletes them at the source, steps 6 and 7 of the section comment:
// each snapshot's data files, then its manifest, in the operation's copy
// slots; once a snapshot and every older one of its group are copied,
// its source manifest goes, then its other files, in DeleteObjects
// requests shared by all groups; once a whole group's snapshots are gone
// (and the group is not kept), its record, then its other objects.
// Deleting while copying keeps the server's cores busy: a batch's deletes
// left to the end ran as one request on one core.
func (m *mover) copyThenDelete(ctx context.Context, ws []*waveGroup) error {
	s := m.s
	ctx, fail := context.WithCancelCause(ctx)
	defer fail(nil)
	d := &deleter{m: m, ctx: ctx, fail: fail}
	var moving []*snapMove
	for _, w := range ws {
		w.left = w.n
		w.copied = make([]bool, w.n)
		for i, sn := range w.p.snaps[:w.n] {
			sm := &snapMove{w: w, i: i, sn: sn}
			sm.c.add(w.p, []moveSnap{sn})
			w.moves = append(w.moves, sm)
			moving = append(moving, sm)
		}
		if w.n == 0 {
			d.finishGroup(w)
		}
	}
	err := m.each(ctx, len(moving), func(ctx context.Context, i int) error {
		sm := moving[i]
		for _, set := range [][]xfer{sm.c.data, sm.c.manifests} {
			for _, x := range set {
				if err := s.b.Copy(ctx, x.from, x.to); err != nil {
					return fmt.Errorf("copy %s to %s: %w", x.from, x.to, err)
				}
				m.copied.Add(1)
			}
		}
		d.copied(sm)
		return nil
	})
	if err != nil {
		fail(err)
	}
	d.flush()
	d.wg.Wait()
	if err != nil {
		return err
	}
	return d.err
}

// snapMove is one snapshot of a wave.
type snapMove struct {
	w  *waveGroup
	i  int // in w.moves
	sn moveSnap
	c  copyPlan // its copies and source deletes
}

// deleteRequests bounds the DeleteObjects requests of a wave in flight,
// deleteBatch their keys: what becomes deletable meanwhile waits and goes
// in the next one. (16 requests of 250 keys measured slower on versitygw:
// the deletes then compete with the copies.) While copies run, a request
// waits for deleteMinBatch keys: a request costs the server about as much
// as a few keys, and sent as soon as anything was deletable they carried
// five keys on average.
const (
	deleteRequests = 4
	deleteBatch    = 1000
	deleteMinBatch = 200
)

// deleter deletes the source objects of a wave as they become deletable.
type deleter struct {
	m    *mover
	ctx  context.Context
	fail context.CancelCauseFunc
	wg   sync.WaitGroup // items not done

	mu      sync.Mutex
	pending []delItem
	busy    int // requests in flight
	// held: callbacks of a finished request are adding what they allow;
	// it goes in one request once they are all done, not one each.
	held int
	err  error
	// flushing: the copies are over, so nothing is worth waiting for.
	flushing bool
}

// flush sends whatever is pending, now and from then on.
func (d *deleter) flush() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.flushing = true
	d.kick()
}

type delItem struct {
	path  string
	moved bool   // a moved snapshot's file (counted)
	then  func() // runs once the file is deleted
}

func (d *deleter) add(items ...delItem) {
	if len(items) == 0 {
		return
	}
	d.wg.Add(len(items))
	d.mu.Lock()
	defer d.mu.Unlock()
	d.pending = append(d.pending, items...)
	d.kick()
}

// kick sends what is pending while request slots are free; d.mu held.
func (d *deleter) kick() {
	for d.held == 0 && len(d.pending) > 0 && d.busy < deleteRequests && (d.flushing || len(d.pending) >= deleteMinBatch) {
		n := min(len(d.pending), deleteBatch)
		batch := d.pending[:n:n]
		d.pending = d.pending[n:]
		d.busy++
		go d.send(batch)
	}
}

func (d *deleter) send(batch []delItem) {
	err := context.Cause(d.ctx)
	if err == nil {
		paths := make([]string, len(batch))
		for i, it := range batch {
			paths[i] = it.path
		}
		if err = d.remove(paths); err != nil {
			err = fmt.Errorf("delete moved source files: %w", err)
		}
	}
	if err != nil {
		d.mu.Lock()
		if d.err == nil {
			d.err = err
		}
		d.mu.Unlock()
		d.fail(err)
	} else {
		d.mu.Lock()
		d.held++
		d.mu.Unlock()
		for _, it := range batch {
			if it.moved {
				d.m.deleted.Add(1)
			}
			if it.then != nil {
				it.then()
			}
		}
		d.mu.Lock()
		d.held--
		d.mu.Unlock()
	}
	d.mu.Lock()
	d.busy--
	d.kick()
	d.mu.Unlock()
	d.wg.Add(-len(batch))
}

// remove deletes paths in one request where the backend can, else one by
// one, several at once.
func (d *deleter) remove(paths []string) error {
	if d.m.batchRm != nil {
		return d.m.batchRm.RemoveFiles(d.ctx, paths)
	}
	return parallel(d.ctx, moveCopyParallel, len(paths), func(ctx context.Context, i int) error {
		return d.m.s.b.Remove(ctx, paths[i])
	})
}

// copied notes sm copied and releases the source deletes that are now
// allowed: those of the group's copied prefix, so that a crash never
// leaves a moved snapshot next to an older one not yet at the target.
func (d *deleter) copied(sm *snapMove) {
	w := sm.w
	w.mu.Lock()
	w.copied[sm.i] = true
	var ready []*snapMove
	for w.next < w.n && w.copied[w.next] {
		ready = append(ready, w.moves[w.next])
		w.next++
	}
	w.mu.Unlock()
	for _, r := range ready {
		d.deleteSource(r)
	}
}

// deleteSource deletes a copied snapshot at the source, manifest first.
func (d *deleter) deleteSource(sm *snapMove) {
	rest := func() {
		if len(sm.c.delRest) == 0 {
			d.snapshotGone(sm)
			return
		}
		var left atomic.Int64
		left.Store(int64(len(sm.c.delRest)))
		items := make([]delItem, len(sm.c.delRest))
		for i, f := range sm.c.delRest {
			items[i] = delItem{path: f, moved: true, then: func() {
				if left.Add(-1) == 0 {
					d.snapshotGone(sm)
				}
			}}
		}
		d.add(items...)
	}
	if len(sm.c.delManifests) == 0 {
		rest()
		return
	}
	d.add(delItem{path: sm.c.delManifests[0], moved: true, then: rest})
}

func (d *deleter) snapshotGone(sm *snapMove) {
	d.m.snapshotMoved(sm.sn.Snapshot, sm.w.p.dst.NS, sm.c.copies[sm.sn.Snapshot])
	w := sm.w
	w.mu.Lock()
	w.left--
	last := w.left == 0
	w.mu.Unlock()
	if last {
		d.finishGroup(w)
	}
}

// finishGroup removes a group whose snapshots are all gone at the source:
// its record first (a rerun that finds the source group without the record
// sees nothing left to add, see addsNothing), then every other object the
// listing showed (owner, notes, stray objects).
func (d *deleter) finishGroup(w *waveGroup) {
	if w.busy != nil || w.keep {
		return // its newer snapshots stay, or execGroup removes it
	}
	rest := func() {
		moved := map[string]bool{}
		for _, sn := range w.p.snaps[:w.n] {
			for _, f := range sn.files {
				moved[sn.File(f)] = true
			}
		}
		var items []delItem
		for _, f := range w.listed.files {
			if !moved[f] {
				items = append(items, delItem{path: f})
			}
		}
		d.add(items...)
	}
	if w.p.record {
		d.add(delItem{path: moveRecordPath(w.p.src, w.p.dst), then: rest})
		return
	}
	rest()
}
