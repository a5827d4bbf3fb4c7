package datastore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sync/errgroup"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/name"
)

// ---- phase 1: mark ----

func (g *gcRun) mark(ctx context.Context) error {
	total, strays, err := g.scanIndexFiles(ctx)
	if err != nil {
		return err
	}
	g.rep.phase("mark", int64(total))
	if !g.req.DryRun {
		g.startTouchers()
	}
	err = g.markTree(ctx)
	if err == nil {
		err = g.markStrays(ctx, strays)
	}
	if err == nil {
		err = g.markJournal(ctx)
	}
	if g.touchers != nil {
		g.flushTouches(ctx)
		_ = g.touchers.Wait() // errors cancel ctx, reported below
	}
	if err != nil {
		return err
	}
	if err := context.Cause(ctx); err != nil {
		return err
	}
	g.res.ReferencedChunks = g.marked.len()
	g.res.MissingChunks = len(g.missing)
	g.res.TouchedChunks = g.touched
	g.res.TouchesSkipped = g.skipped
	if n := len(g.missing); n > 0 {
		var first Digest
		for d := range g.missing {
			first = d
			break
		}
		g.warn(fmt.Sprintf("%d referenced chunk(s) missing (e.g. %s); run verify to find the snapshots affected", n, first))
	}
	return nil
}

// scanIndexFiles counts the index files below the content directories, for
// progress, and returns those outside the datastore layout, which the walk
// by namespace, group and snapshot would not visit. It keeps no list of the
// regular ones, so its memory does not grow with the datastore.
func (g *gcRun) scanIndexFiles(ctx context.Context) (int, []string, error) {
	total := 0
	var strays []string
	tops := []string{"ns"}
	for _, t := range name.Types {
		tops = append(tops, string(t))
	}
	for _, top := range tops {
		err := g.s.b.Walk(ctx, top, func(fi backend.FileInfo) error {
			if !isIndexFile(fi.Name[strings.LastIndexByte(fi.Name, '/')+1:]) {
				return nil
			}
			if err := backend.ValidPath(fi.Name); err != nil {
				// An object key no path names (ns//x/…, ns/../x/…): nothing
				// pbsq or PBS writes, nor can read; one must not stop
				// every GC from sweeping.
				g.warn(fmt.Sprintf("skipped index file at a non-canonical key %q: not a datastore path", fi.Name))
				return nil
			}
			total++
			if !inLayout(fi.Name) {
				strays = append(strays, fi.Name)
			}
			return nil
		})
		if err != nil {
			return 0, nil, fmt.Errorf("gc: scan %s: %w", top, err)
		}
	}
	return total, strays, nil
}

// inLayout reports whether an index path is one the walk by namespace,
// group and snapshot visits: (ns/<comp>/)*<type>/<id>/<time>/<file>, all
// names valid.
func inLayout(p string) bool {
	parts := strings.Split(p, "/")
	var comps []string
	for len(parts) > 4 && parts[0] == "ns" {
		comps = append(comps, parts[1])
		parts = parts[2:]
	}
	if len(parts) != 4 {
		return false
	}
	ns, err := name.ParseNamespace(strings.Join(comps, "/"))
	if err != nil {
		return false
	}
	if _, err := name.NewGroup(ns, parts[0], parts[1]); err != nil {
		return false
	}
	_, err = name.ParseTime(parts[2])
	return err == nil && isIndexFile(parts[3])
}

// markTree walks namespaces, groups and snapshots, marking every index.
func (g *gcRun) markTree(ctx context.Context) error {
	groups, err := g.s.scopeGroups(ctx, Scope{NS: name.Root, MaxDepth: -1})
	if err != nil {
		return fmt.Errorf("gc: %w", err)
	}
	for _, grp := range groups {
		if err := context.Cause(ctx); err != nil {
			return err
		}
		if err := g.markGroup(ctx, grp); err != nil {
			return err
		}
	}
	return nil
}

// markGroup marks a group's snapshots newest first. If an index of the
// newest snapshot vanished meanwhile (pruned right after a new snapshot
// was added), the group is listed again, as PBS does, so that the new
// snapshot is not missed.
func (g *gcRun) markGroup(ctx context.Context, grp name.Group) error {
	for retry := 0; ; retry++ {
		snaps, err := g.s.ListSnapshots(ctx, grp)
		if err != nil {
			if ok, xerr := g.s.GroupExists(ctx, grp); xerr == nil && !ok {
				return nil // removed meanwhile
			}
			return fmt.Errorf("gc: %w", err)
		}
		again := false
	snapshots:
		for i := len(snaps) - 1; i >= 0; i-- {
			for _, f := range snaps[i].Files {
				if !isIndexFile(f) {
					continue
				}
				err := g.markIndex(ctx, snaps[i].File(f), true)
				if errors.Is(err, fs.ErrNotExist) {
					if i == len(snaps)-1 && retry < maxGroupRetries {
						again = true
						break snapshots
					}
					continue
				}
				if err != nil {
					return err
				}
			}
		}
		if !again {
			return nil
		}
	}
}

// markStrays marks index files outside the layout, with a warning each.
func (g *gcRun) markStrays(ctx context.Context, strays []string) error {
	for _, p := range strays {
		err := g.markIndex(ctx, p, true)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		g.res.StrayIndexFiles = append(g.res.StrayIndexFiles, p)
		g.warn("marked chunks of index file outside the datastore layout: " + p)
	}
	return nil
}

// markJournal marks the index files of moves that may have crossed the
// walk. A dry run reads the journal without draining it.
func (g *gcRun) markJournal(ctx context.Context) error {
	fn := func(p string) error {
		err := g.markIndex(ctx, p, false)
		if err == nil {
			g.res.JournalIndexFiles++
		}
		return err
	}
	// PBS's journal, drained (in a dry run: read) as PBS's GC does.
	n, err := g.s.pbsJournalDrain(ctx, g.req.DryRun, func(p string) error { return g.markIndex(ctx, p, false) })
	g.res.PBSJournalIndexFiles += n
	if err != nil {
		return fmt.Errorf("gc: %w", err)
	}
	if g.req.DryRun {
		_, err = g.s.visitJournal(ctx, fn) // read, not drained
	} else {
		err = g.s.DrainJournal(ctx, g.markStart, fn)
	}
	if err != nil {
		return fmt.Errorf("gc: %w", err)
	}
	return nil
}

// markIndex reads one index file and marks its chunks. A missing file is
// returned as fs.ErrNotExist; count adds it to the index statistics (the
// journal's re-marks are not counted twice).
func (g *gcRun) markIndex(ctx context.Context, p string, count bool) error {
	// Streamed in bounded pieces: a huge (or sparse) index costs GC time,
	// not memory.
	info, err := scanIndexFile(ctx, g.s.b, p, func(_ int, d [32]byte, _, _ uint64) error {
		if !g.marked.add(d) || g.touchers == nil {
			return nil
		}
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		g.touchBatch = append(g.touchBatch, d)
		if len(g.touchBatch) == cap(g.touchBatch) {
			g.flushTouches(ctx)
		}
		return nil
	})
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return err
	case isFormatError(err):
		return fmt.Errorf("gc: index %s is unreadable, so the chunks it needs are unknown; not sweeping: %w", p, err)
	case err != nil && ctx.Err() == nil:
		return fmt.Errorf("gc: read index %s: %w", p, err)
	case err != nil:
		return context.Cause(ctx)
	}
	if count {
		g.res.IndexFiles++
		g.res.IndexDataBytes += info.DataSize
		g.rep.add(1)
	}
	return nil
}

// startTouchers bounds the touches of newly marked chunks, which run
// beside the marking: as many at a time as the backend keeps in flight
// (object stores) or as there are CPUs. On a filesystem a touch is one
// quick system call, cheaper than a goroutine and a hand-over of its own:
// touches go in batches there.
func (g *gcRun) startTouchers() {
	n, batch := runtime.GOMAXPROCS(0), 256
	if g.roundTrips {
		n, batch = g.s.b.Features().InFlight, 1
	}
	g.touchers = new(errgroup.Group)
	g.touchers.SetLimit(n)
	g.touchBatch = make([]Digest, 0, batch)
}

// flushTouches hands the batch of marked chunks to a toucher (waiting for
// a free one).
func (g *gcRun) flushTouches(ctx context.Context) {
	batch := g.touchBatch
	if len(batch) == 0 {
		return
	}
	g.touchBatch = make([]Digest, 0, cap(batch))
	g.touchers.Go(func() error {
		for _, d := range batch {
			if ctx.Err() != nil {
				return nil
			}
			if err := g.touch(ctx, d); err != nil {
				g.cancel(fmt.Errorf("gc: touch chunk %s: %w", d, err))
				return nil
			}
		}
		return nil
	})
}

// touch refreshes a referenced chunk's access time; a missing chunk's .bad
// copies are touched instead.
func (g *gcRun) touch(ctx context.Context, d Digest) error {
	p := ChunkPath(d)
	if ct, ok := g.s.b.(backend.ConditionalToucher); ok && g.roundTrips {
		return g.touchIfOlder(ctx, ct, d)
	}
	if g.roundTrips {
		fi, err := backend.StatFile(ctx, g.s.b, p)
		if errors.Is(err, fs.ErrNotExist) {
			return g.chunkMissing(ctx, d)
		}
		if err != nil {
			return err
		}
		if !fi.AccessTime.Before(g.markStart.Add(-objectTouchWindow)) {
			g.mu.Lock()
			g.skipped++
			g.mu.Unlock()
			return nil
		}
	}
	err := g.s.b.Touch(ctx, p)
	if errors.Is(err, fs.ErrNotExist) {
		return g.chunkMissing(ctx, d)
	}
	if err != nil {
		return err
	}
	g.mu.Lock()
	g.touched++
	g.mu.Unlock()
	return nil
}

func (g *gcRun) chunkMissing(ctx context.Context, d Digest) error {
	g.mu.Lock()
	g.missing[d] = struct{}{}
	g.mu.Unlock()
	g.s.log.Warn("gc: referenced chunk missing", "chunk", d.String())
	p := ChunkPath(d)
	for n := range maxBadCopies {
		err := g.s.b.Touch(ctx, p+"."+strconv.Itoa(n)+".bad")
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}
