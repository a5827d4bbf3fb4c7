package datastore

import (
	"context"
	"errors"
	"sort"
	"sync"

	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
)

// ---- move-namespace on a filesystem, small groups in batches
//
// On a filesystem a snapshot moves with one rename(2); what a small group
// costs is its writes to the disk (two move-journal writes, each a temp
// file, an fsync and a rename; its owner) and its locks. Measured: 1,000
// groups of one snapshot moved at 160 snapshots/s where 200 groups of 50
// moved at 2,000. Small groups therefore move in batches sharing one
// journal entry:
//
//  1. each group of the batch locked and planned as moveOneGroup does
//     (busy: set aside; refused: skipped; gone: done), then its snapshots
//     locked oldest first (a busy one stops the group there);
//  2. the move records of new targets when merging is off;
//  3. one journal entry for the indexes of every locked snapshot of the
//     batch, written together with the targets' owners and notes, before
//     any rename;
//  4. the renames, group by group, oldest snapshot first;
//  5. the entry closed; then per group moved completely its record and
//     its emptied source group.
//
// Per group that is execGroup's order with one journal entry covering more
// than the group, so a crash at any point leaves what execGroup could
// leave, and a rerun finishes. Groups of more than fsBatchSnaps snapshots
// move by themselves (moveAlone) under the batch's group locks.

const (
	// fsBatchGroups bounds the groups of a batch: each holds two group
	// locks and its snapshot locks (file descriptors with flock).
	fsBatchGroups = 32
	// fsBatchSnaps is the most snapshots of a group moved in a batch.
	fsBatchSnaps = 16
	// fsBatchesInFlight batches move at once.
	fsBatchesInFlight = 2
)

// fsBatchGroup is one group of a batch.
type fsBatchGroup struct {
	batchMember
}

// batchMember is what a group moved together with others (a filesystem
// batch, an S3 wave) holds: its locks, its plan and how far it got.
type batchMember struct {
	job    moveJob
	locks  []*lock.Guard // the two group locks
	snapsL []*lock.Guard // snapshot locks, a prefix of p.snaps
	p      *groupPlan
	n      int   // snapshots moved: p.snaps[:n]
	busy   error // a busy lock: set aside (after moving p.snaps[:n])
	// alone: too big for its batch or wave; it moves by itself
	// (moveAlone) afterwards, under its group locks.
	alone bool
	// done: nothing (more) to do and counted: refused, gone since
	// listed, or moved alone (execGroup counted it).
	done bool
}

func (b *batchMember) member() *batchMember { return b }

// lockGroups takes the group's two locks; a busy one is recorded in busy.
func (b *batchMember) lockGroups(ctx context.Context, s *Store) error {
	reqs := []lock.Request{s.groupRequest(b.job.src), s.groupRequest(b.job.src.InNS(b.job.dstNS))}
	lock.SortRequests(reqs)
	guards, err := s.acquireGuards(ctx, reqs)
	if err != nil {
		_ = lock.ReleaseAll(guards...)
	}
	switch {
	case errors.Is(err, lock.ErrBusy):
		b.busy = err
		return nil
	case err != nil:
		return err
	}
	b.locks = guards
	return nil
}

// lockSnaps takes the planned snapshots' locks oldest first; a busy one
// stops there and is recorded in busy, with how many were taken in n.
func (b *batchMember) lockSnaps(ctx context.Context, s *Store) error {
	p := b.p
	guards, err := s.lockSnapshots(ctx, p.snaps)
	b.snapsL, b.n = guards, len(guards)
	if s.locks == nil {
		b.n = len(p.snaps)
	}
	switch {
	case errors.Is(err, lock.ErrBusy):
		b.busy = &groupBusyError{g: p.src, moved: b.n, left: len(p.snaps) - b.n, err: err}
	case err != nil:
		return err
	}
	return nil
}

// release lets go of every lock the group holds.
func (b *batchMember) release() {
	_ = lock.ReleaseAll(b.snapsL...)
	_ = lock.ReleaseAll(b.locks...)
}

// moveAlone moves the members marked alone by themselves (execGroup,
// m.groupParallel at once) under the group locks they hold, with the rule
// of every operation: a busy one is set aside in busy, for busyRetry to
// retry once and then skip, never an error; a refused one is skipped.
func moveAlone[M interface{ member() *batchMember }](ctx context.Context, m *mover, ms []M) error {
	var alone []*batchMember
	for _, x := range ms {
		if b := x.member(); b.alone {
			alone = append(alone, b)
		}
	}
	return parallel(ctx, m.groupParallel, len(alone), func(ctx context.Context, i int) error {
		b := alone[i]
		err := m.execGroup(ctx, b.p)
		switch {
		case errors.Is(err, lock.ErrBusy):
			b.busy = err
			return nil
		case errors.Is(err, name.ErrInvalid):
			m.skip(groupLabel(b.job.src), err, "refused")
		case err != nil:
			return err
		}
		b.done = true
		return nil
	})
}

// lockedMembers returns every lock the members hold, to watch them at
// once, and the members with something to move in the batch: a group
// stopped at its oldest snapshot changes nothing, as in execGroup.
func lockedMembers[M interface{ member() *batchMember }](ms []M) (all []*lock.Guard, moving []M) {
	for _, m := range ms {
		b := m.member()
		all = append(append(all, b.locks...), b.snapsL...)
		if b.p != nil && !b.alone && (b.n > 0 || b.busy == nil) {
			moving = append(moving, m)
		}
	}
	return all, moving
}

// runFSBatches is move-namespace's first pass on a filesystem: it moves
// jobs in batches and returns the groups whose locks stayed busy, in order.
func (m *mover) runFSBatches(ctx context.Context, jobs []moveJob, merge bool) ([]moveJob, error) {
	// The first batches are small and each is twice the last, up to the
	// bound: the first snapshots move after one group's locks and plan,
	// not a whole batch's.
	var batches [][]moveJob
	for start, size := 0, 1; start < len(jobs); size = min(2*size, fsBatchGroups) {
		end := min(start+size, len(jobs))
		batches = append(batches, jobs[start:end])
		start = end
	}
	var (
		mu    sync.Mutex
		aside []moveJob
	)
	err := parallel(ctx, fsBatchesInFlight, len(batches), func(ctx context.Context, i int) error {
		a, err := m.moveFSBatch(ctx, batches[i], merge)
		mu.Lock()
		aside = append(aside, a...)
		mu.Unlock()
		return err
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(aside, func(i, k int) bool { return aside[i].seq < aside[k].seq })
	return aside, nil
}

// moveFSBatch moves one batch (see the section comment) and returns the
// groups set aside as busy.
func (m *mover) moveFSBatch(ctx context.Context, jobs []moveJob, merge bool) ([]moveJob, error) {
	s := m.s
	bs := make([]*fsBatchGroup, len(jobs))
	for i, j := range jobs {
		bs[i] = &fsBatchGroup{batchMember{job: j}}
	}
	defer func() {
		for _, b := range bs {
			b.release()
		}
	}()

	// 1. Locks and plans.
	err := parallel(ctx, moveGroupParallelFS, len(bs), func(ctx context.Context, i int) error {
		b := bs[i]
		if err := b.lockGroups(ctx, s); err != nil || b.busy != nil {
			return err
		}
		p, err := m.planGroup(ctx, b.job.src, b.job.dstNS, merge)
		switch {
		case errors.Is(err, ErrNotFound):
			return nil // removed since it was listed
		case errors.Is(err, name.ErrInvalid):
			m.skip(groupLabel(b.job.src), err, "refused")
			return nil
		case err != nil:
			return err
		}
		b.p = p
		if len(p.snaps) > fsBatchSnaps {
			b.alone = true
			return nil
		}
		return b.lockSnaps(ctx, s)
	})
	if err != nil {
		return nil, err
	}
	all, moving := lockedMembers(bs)
	wctx, cancel := lock.Watch(ctx, all...)
	defer cancel()
	if err := m.execFSBatch(wctx, moving); err != nil {
		return nil, err
	}
	if err := moveAlone(wctx, m, bs); err != nil {
		return nil, err
	}

	var aside []moveJob
	for _, b := range bs {
		if b.busy != nil {
			aside = append(aside, b.job)
			continue // counted when retried
		}
		m.rep.add(1)
	}
	return aside, nil
}

// execFSBatch moves the locked snapshots of planned groups, steps 2 to 5
// of the section comment.
func (m *mover) execFSBatch(ctx context.Context, bs []*fsBatchGroup) error {
	s := m.s
	if len(bs) == 0 {
		return nil
	}
	// 2. Records before anything lands at a target.
	for _, b := range bs {
		if b.p.record {
			if err := s.writeMoveRecord(ctx, b.p.src, b.p.dst); err != nil {
				return err
			}
		}
	}
	// 3. One journal entry, with owners and notes.
	var moves []JournalMove
	for _, b := range bs {
		for _, sn := range b.p.snaps[:b.n] {
			for _, f := range sn.files {
				if isMovedIndex(f) {
					moves = append(moves, JournalMove{From: sn.File(f), To: sn.InNS(b.p.dst.NS).File(f)})
				}
			}
		}
	}
	var entry *JournalEntry
	err := moveConcurrently(ctx, func(ctx context.Context) (err error) {
		if len(moves) == 0 {
			return nil
		}
		entry, err = s.journalOpen(ctx, moves)
		return err
	}, func(ctx context.Context) error {
		return parallel(ctx, moveGroupParallelFS, len(bs), func(ctx context.Context, i int) error {
			return m.writeOwnerNotes(ctx, bs[i].p)
		})
	})
	if err != nil {
		return err
	}
	// 4. The renames.
	for _, b := range bs {
		if err := m.renameBatch(ctx, b.p, b.p.snaps[:b.n]); err != nil {
			return err // the entry stays open: GC keeps honouring it
		}
	}
	// 5. The entry closed, then the emptied source groups.
	if entry != nil {
		if err := s.journalClose(ctx, entry); err != nil {
			return err
		}
	}
	return parallel(ctx, moveGroupParallelFS, len(bs), func(ctx context.Context, i int) error {
		b := bs[i]
		if b.busy != nil {
			return nil // its newer snapshots stay
		}
		// The record before the source group, as in execGroup.
		if b.p.record {
			if err := s.removeMoveRecord(ctx, b.p.src, b.p.dst); err != nil {
				return err
			}
		}
		if err := m.removeSourceGroup(ctx, b.p); err != nil {
			return err
		}
		m.mu.Lock()
		m.res.Groups++
		if b.p.merge {
			m.res.MergedGroups = append(m.res.MergedGroups, groupLabel(b.p.dst))
		}
		m.mu.Unlock()
		return nil
	})
}
