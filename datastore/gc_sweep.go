package datastore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"

	"golang.org/x/sync/errgroup"

	"github.com/pbsq/pbsq/datastore/backend"
)

// ---- phase 2: sweep ----

func (g *gcRun) sweep(ctx context.Context) error {
	g.rep.phase("sweep", 1<<16)
	var done int64
	var seen, reclaim int
	// Object stores without batch removal: one request per removal, as
	// many at a time as the backend keeps in flight.
	var removals *errgroup.Group
	batches := g.newSweepBatcher()
	if g.roundTrips && !g.req.DryRun && batches == nil {
		removals = new(errgroup.Group)
		removals.SetLimit(g.s.b.Features().InFlight)
	}
	err := g.s.WalkChunks(ctx, func(cf ChunkFile) error {
		if err := context.Cause(ctx); err != nil {
			return err
		}
		// Chunks come in prefix order on both backends, which makes the
		// prefix a fair measure of progress.
		if pos := (int64(cf.Digest[0])<<8 | int64(cf.Digest[1])) + 1; pos > done {
			g.rep.add(pos - done)
			done = pos
		}
		seen++
		remove, err := g.classify(ctx, cf)
		if err != nil {
			return err
		}
		if batches != nil {
			if err := batches.add(ctx, cf, remove); err != nil {
				return err
			}
		}
		if !remove {
			return nil
		}
		reclaim++
		if reclaim%1024 == 1 {
			g.rep.message(fmt.Sprintf("%d chunks checked, %d reclaimable", seen, reclaim))
		}
		switch {
		case g.req.DryRun, batches != nil:
			return nil
		case removals != nil:
			removals.Go(func() error {
				if ctx.Err() == nil {
					if err := g.removeRechecked(ctx, cf); err != nil {
						g.cancel(err)
					}
				}
				return nil
			})
			return nil
		default:
			// The filesystem walk stat()ed the file just now: remove at once.
			return g.remove(ctx, cf)
		}
	})
	if removals != nil {
		_ = removals.Wait() // errors cancel ctx, reported below
	}
	if batches != nil {
		if ferr := batches.close(ctx); err == nil {
			err = ferr
		}
	}
	if err != nil {
		return fmt.Errorf("gc: sweep: %w", err)
	}
	return context.Cause(ctx)
}

// classify books one chunk file and reports whether it is to be removed.
func (g *gcRun) classify(ctx context.Context, cf ChunkFile) (bool, error) {
	old := cf.AccessTime.Before(g.minAtime)
	referenced := g.marked.has(cf.Digest)
	if cf.Bad {
		keep := !old
		if !keep && referenced {
			// Marking touches the .bad copies of a referenced chunk that is
			// missing; a dry run did not touch, so it asks now.
			missing, err := g.goodMissing(ctx, cf.Digest)
			if err != nil {
				return false, err
			}
			keep = missing
		}
		g.mu.Lock()
		defer g.mu.Unlock()
		if keep {
			g.res.StillBad++
			g.res.DiskBytes += cf.Size
			return false, nil
		}
		g.res.ReclaimableBad++
		g.res.ReclaimableBytes += cf.Size
		return true, nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case referenced:
		if old && !g.req.DryRun {
			g.staleAtime++
		}
		g.inUse(cf.Size)
	case !old && cf.AccessTime.Before(g.oldestWriter):
		g.res.PendingChunks++
		g.res.PendingBytes += cf.Size
	case !old:
		g.inUse(cf.Size)
	default:
		g.res.ReclaimableChunks++
		g.res.ReclaimableBytes += cf.Size
		return true, nil
	}
	return false, nil
}

func (g *gcRun) inUse(size int64) {
	g.res.InUseChunks++
	g.res.InUseBytes += size
}

// goodMissing reports whether the good copy of a chunk is absent.
func (g *gcRun) goodMissing(ctx context.Context, d Digest) (bool, error) {
	if !g.req.DryRun {
		g.mu.Lock()
		_, missing := g.missing[d]
		g.mu.Unlock()
		return missing, nil
	}
	_, err := g.s.b.Stat(ctx, ChunkPath(d))
	if errors.Is(err, fs.ErrNotExist) {
		return true, nil
	}
	return false, err
}

func chunkFilePath(cf ChunkFile) string {
	if cf.Bad {
		return cf.Name // the walk's path, <digest>.<n>.bad
	}
	return ChunkPath(cf.Digest)
}

// remove deletes a chunk file the sweep condemned and books it.
func (g *gcRun) remove(ctx context.Context, cf ChunkFile) error {
	if err := g.s.b.Remove(ctx, chunkFilePath(cf)); err != nil {
		return fmt.Errorf("remove chunk %s: %w", cf.Name, err)
	}
	g.removed(cf)
	return nil
}

// removed books a chunk file the sweep deleted.
func (g *gcRun) removed(cf ChunkFile) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if cf.Bad {
		g.res.RemovedBad++
	} else {
		g.res.RemovedChunks++
	}
	g.res.RemovedBytes += cf.Size
	g.s.obs.chunkRemoved(cf.Size)
}

// removeRechecked is remove for object storage, where the listing may be
// stale: a chunk touched or re-uploaded since is kept.
func (g *gcRun) removeRechecked(ctx context.Context, cf ChunkFile) error {
	fi, err := g.s.b.Stat(ctx, chunkFilePath(cf))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("gc: stat chunk %s: %w", cf.Name, err)
	}
	if !fi.AccessTime.Before(g.minAtime) {
		g.kept(cf, fi)
		return nil
	}
	return g.remove(ctx, cf)
}

// kept books a condemned chunk file that turned out fresh (fi) on a
// second look right before its removal.
func (g *gcRun) kept(cf ChunkFile, fi backend.FileInfo) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.res.ReclaimableBytes -= cf.Size
	if cf.Bad {
		g.res.ReclaimableBad--
		g.res.StillBad++
		g.res.DiskBytes += fi.Size
	} else {
		g.res.ReclaimableChunks--
		g.inUse(fi.Size)
	}
}

// finish derives the totals.
func (g *gcRun) finish() {
	r := g.res
	r.DiskChunks = r.InUseChunks + r.PendingChunks
	r.DiskBytes += r.InUseBytes + r.PendingBytes
	if r.InUseBytes > 0 {
		r.DedupFactor = float64(r.IndexDataBytes) / float64(r.InUseBytes)
	}
	if g.staleAtime > 0 {
		g.warn(fmt.Sprintf("%d referenced chunk(s) still had an access time before the cutoff after marking; "+
			"the storage may not update access times (noatime?), which PBS's own GC would need. They were kept.", g.staleAtime))
	}
}

func (g *gcRun) warn(msg string) {
	g.res.Warnings = append(g.res.Warnings, msg)
	g.s.log.Warn(msg)
}
