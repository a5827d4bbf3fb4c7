package datastore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
)

// ---- one group: moving it

// groupBusyError stops a group move at a busy snapshot.
type groupBusyError struct {
	g           name.Group
	moved, left int
	err         error
}

func (e *groupBusyError) Error() string {
	return fmt.Sprintf("group %s in namespace %q: %d snapshot(s) moved, %d left at the source to keep the group time-ordered: %v",
		e.g, e.g.NS, e.moved, e.left, e.err)
}

func (e *groupBusyError) Unwrap() error { return e.err }

// execGroup moves a planned group (its group locks held): owner and notes
// first, then the snapshots oldest first in locked batches, then the
// emptied source group. A busy snapshot stops it with a groupBusyError
// after moving the older ones.
func (m *mover) execGroup(ctx context.Context, p *groupPlan) error {
	s := m.s
	if p.record {
		if err := s.writeMoveRecord(ctx, p.src, p.dst); err != nil {
			return err
		}
	}
	// Owner and notes must be in place before the first snapshot, and so
	// must the first journal entry: moveBatch writes them together.
	prelude := func(ctx context.Context) error {
		return moveConcurrently(ctx, func(ctx context.Context) error {
			if !p.writeOwner {
				return nil
			}
			if err := s.b.WriteFile(ctx, backend.Join(p.dst.Path(), "owner"), []byte(p.owner+"\n")); err != nil {
				return fmt.Errorf("write owner of group %s in namespace %q: %w", p.dst, p.dst.NS, err)
			}
			return nil
		}, func(ctx context.Context) error {
			if !p.writeNotes {
				return nil
			}
			if err := s.b.WriteFile(ctx, backend.Join(p.dst.Path(), "notes"), []byte(p.notes)); err != nil {
				return fmt.Errorf("write notes of group %s in namespace %q: %w", p.dst, p.dst.NS, err)
			}
			return nil
		})
	}
	if len(p.snaps) == 0 {
		if err := prelude(ctx); err != nil {
			return err
		}
	}
	moved := 0
	for start := 0; start < len(p.snaps); start += moveBatch {
		batch := p.snaps[start:min(start+moveBatch, len(p.snaps))]
		guards, lockErr := s.lockSnapshots(ctx, batch)
		n := len(guards)
		if s.locks == nil {
			n = len(batch)
		}
		var err error
		if n > 0 {
			bctx, cancel := lock.Watch(ctx, guards...)
			err = m.moveBatch(bctx, p, batch[:n], prelude)
			prelude = nil
			cancel()
		}
		_ = lock.ReleaseAll(guards...)
		if err != nil {
			return err
		}
		moved += n
		if lockErr != nil {
			if errors.Is(lockErr, lock.ErrBusy) {
				return &groupBusyError{g: p.src, moved: moved, left: len(p.snaps) - moved, err: lockErr}
			}
			return lockErr
		}
	}
	// The record goes before the source group: a rerun that finds the
	// source group without the record sees nothing left to add (see
	// addsNothing), while the other order could strand a record.
	if p.record {
		if err := s.removeMoveRecord(ctx, p.src, p.dst); err != nil {
			return err
		}
	}
	if err := m.removeSourceGroup(ctx, p); err != nil {
		return err
	}
	m.mu.Lock()
	m.res.Groups++
	if p.merge {
		m.res.MergedGroups = append(m.res.MergedGroups, groupLabel(p.dst))
	}
	m.mu.Unlock()
	return nil
}

// lockSnapshots takes exclusive locks on snaps in order and stops at the
// first failure, returning the guards taken (a prefix of snaps) and the
// error.
func (s *Store) lockSnapshots(ctx context.Context, snaps []moveSnap) ([]*lock.Guard, error) {
	reqs := make([]lock.Request, len(snaps))
	for i, sn := range snaps {
		reqs[i] = s.snapshotRequest(sn.Snapshot, lock.Exclusive)
	}
	return s.acquireGuards(ctx, reqs)
}

// moveBatch moves locked snapshots, recording their index files in the
// move journal first so a concurrent GC cannot miss them.
// prelude, when set, runs alongside the journal write: both must be done
// before anything moves.
func (m *mover) moveBatch(ctx context.Context, p *groupPlan, batch []moveSnap, prelude func(context.Context) error) error {
	s := m.s
	var moves []JournalMove
	for _, sn := range batch {
		for _, f := range sn.files {
			if isMovedIndex(f) {
				moves = append(moves, JournalMove{From: sn.File(f), To: sn.InNS(p.dst.NS).File(f)})
			}
		}
	}
	var entry *JournalEntry
	err := moveConcurrently(ctx, func(ctx context.Context) (err error) {
		entry, err = s.journalOpen(ctx, moves)
		return err
	}, func(ctx context.Context) error {
		if prelude == nil {
			return nil
		}
		return prelude(ctx)
	})
	if err != nil {
		return err
	}
	if m.atomic {
		err = m.renameBatch(ctx, p, batch)
	} else {
		err = m.copyBatch(ctx, p, batch)
	}
	if err != nil {
		return err // the entry stays open: GC keeps honouring it
	}
	return s.journalClose(ctx, entry)
}

func isMovedIndex(file string) bool {
	return strings.HasSuffix(file, ".fidx") || strings.HasSuffix(file, ".didx")
}

// renameBatch moves each snapshot directory with one rename(2).
func (m *mover) renameBatch(ctx context.Context, p *groupPlan, batch []moveSnap) error {
	for _, sn := range batch {
		if err := ctx.Err(); err != nil {
			return err
		}
		to := sn.InNS(p.dst.NS)
		if err := m.s.b.Rename(ctx, sn.Path(), to.Path()); err != nil {
			return fmt.Errorf("move snapshot %s from namespace %q to %q: %w", sn.Snapshot, sn.NS, to.NS, err)
		}
		m.snapshotMoved(sn.Snapshot, p.dst.NS, len(sn.files))
	}
	return nil
}

// copyBatch moves snapshots on object storage: a wave's copyThenDelete on
// one group that stays for execGroup to remove. Each snapshot's data
// files, then its manifest, are copied; its source is deleted (manifest
// first) once it and the older ones are copied, while the newer ones still
// copy. At each step a crash leaves states planGroup accepts: a partial
// copy (target unfinished: copied again), two finished copies (copied
// again, then deleted), or a finished target next to an unfinished source
// leftover (only deleted).
func (m *mover) copyBatch(ctx context.Context, p *groupPlan, batch []moveSnap) error {
	bp := *p // the batch as a plan of its own: copyThenDelete moves p.snaps[:n]
	bp.snaps = batch
	w := &waveGroup{batchMember: batchMember{p: &bp, n: len(batch)}, keep: true}
	return m.copyThenDelete(ctx, []*waveGroup{w})
}

type xfer struct{ from, to string }

// copyPlan is what copying snapshots to their target takes: the copies
// (data files, then manifests) and the source deletes (manifests first).
type copyPlan struct {
	data, manifests       []xfer
	delManifests, delRest []string
	copies                map[name.Snapshot]int // objects copied per snapshot, for the metric
}

// add plans the copy of batch (snapshots of p). A snapshot finished at the
// target and unfinished at the source is the leftover of an interrupted
// move: it is only deleted.
func (c *copyPlan) add(p *groupPlan, batch []moveSnap) {
	if c.copies == nil {
		c.copies = map[name.Snapshot]int{}
	}
	for _, sn := range batch {
		to := sn.InNS(p.dst.NS)
		t, had := p.dstSnaps[sn.Time.Unix()]
		copyIt := !(had && t.finished && !sn.finished)
		for _, f := range sn.files {
			if f == ManifestName {
				c.delManifests = append(c.delManifests, sn.File(f))
			} else {
				c.delRest = append(c.delRest, sn.File(f))
			}
			if !copyIt {
				continue
			}
			c.copies[sn.Snapshot]++
			if f == ManifestName {
				c.manifests = append(c.manifests, xfer{sn.File(f), to.File(f)})
			} else {
				c.data = append(c.data, xfer{sn.File(f), to.File(f)})
			}
		}
	}
}

// each runs fn for 0..n-1 with the operation's copy slots (shared by
// all its groups, waves and batches at once); it stops at the first error
// and returns it.
func (m *mover) each(ctx context.Context, n int, fn func(ctx context.Context, i int) error) error {
	g, gctx := errgroup.WithContext(ctx)
loop:
	for i := 0; i < n; i++ {
		select {
		case m.sem <- struct{}{}:
		case <-gctx.Done():
			break loop
		}
		g.Go(func() error {
			defer func() { <-m.sem }()
			return fn(gctx, i)
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return context.Cause(ctx)
}

// moveConcurrently runs independent steps at once (round trips on object
// storage) and returns the first error, cancelling the others.
func moveConcurrently(ctx context.Context, steps ...func(ctx context.Context) error) error {
	return parallel(ctx, len(steps), len(steps), func(ctx context.Context, i int) error { return steps[i](ctx) })
}

// removeSourceGroup deletes the source group once all its snapshots moved.
func (m *mover) removeSourceGroup(ctx context.Context, p *groupPlan) error {
	s := m.s
	if m.atomic {
		snaps, err := s.ListSnapshots(ctx, p.src)
		if err != nil {
			return err
		}
		if len(snaps) > 0 {
			return fmt.Errorf("group %s in namespace %q has %d new snapshot(s) after the move (%s first), written without the group lock; move it again",
				p.src, p.src.NS, len(snaps), snaps[0].TimeString())
		}
		return s.removeGroupIfEmpty(ctx, p.src)
	}
	// Object storage: every source manifest is gone, so whatever is left
	// are unfinished leftovers and owner/notes. The group lock keeps
	// writers out, so nothing new can be among them.
	if err := s.b.RemoveAll(ctx, p.src.Path()); err != nil {
		return fmt.Errorf("remove group %s in namespace %q: %w", p.src, p.src.NS, err)
	}
	return nil
}

func (m *mover) snapshotMoved(sn name.Snapshot, to name.Namespace, objects int) {
	m.s.obs.logf("moved %s to %s", snapRef(sn), nsRef(to))
	m.mu.Lock()
	m.res.Snapshots++
	n := m.res.Snapshots
	m.mu.Unlock()
	m.s.obs.snapshotMoved(m.kind, objects)
	if m.op == "move-group" {
		m.rep.add(1) // counts snapshots; move-namespace counts groups
	} else {
		m.rep.message(fmt.Sprintf("%d snapshot(s) moved", n))
	}
}

func (m *mover) skip(item string, err error, reason string) {
	m.mu.Lock()
	m.res.Skipped = append(m.res.Skipped, Skipped{Item: item, Reason: err.Error()})
	m.mu.Unlock()
	m.s.obs.skipped(m.op, reason)
	m.s.obs.logf("skipped %s: %s: %v", item, reason, err)
}

// finish fills the totals and, unless everything was done, says what is
// left and how to finish it.
func (m *mover) finish(start time.Time, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.res
	r.ObjectsCopied, r.ObjectsDeleted = m.copied.Load(), m.deleted.Load()
	r.Seconds = time.Since(start).Seconds()
	r.Complete = err == nil && len(r.Skipped) == 0
	m.s.obs.logf("%s summary: %d of %d group(s) moved, %d snapshot(s), %d object(s) copied, %d deleted, %d skipped",
		m.op, r.Groups, r.GroupsTotal, r.Snapshots, r.ObjectsCopied, r.ObjectsDeleted, len(r.Skipped))
	if r.Complete {
		m.rep.finish()
		return
	}
	var b strings.Builder
	fmt.Fprintf(&b, "moved %d of %d group(s) completely (%d snapshot(s))", r.Groups, r.GroupsTotal, r.Snapshots)
	if len(r.Skipped) > 0 {
		fmt.Fprintf(&b, "; %d item(s) skipped and left at the source", len(r.Skipped))
	}
	if err != nil {
		fmt.Fprintf(&b, "; stopped by: %v", err)
	}
	b.WriteString("; every snapshot is in exactly one place (an interrupted copy on object storage at worst twice, finished in the target)")
	b.WriteString("; rerun the same move to finish it")
	r.Partial = b.String()
}
