package datastore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/pbsq/pbsq/datastore/backend"
)

// Batched sweep on object storage. Deleting chunk by chunk costs a HEAD (the
// second look at LastModified, see the top of gc.go) and a DELETE per chunk.
// Instead, condemned chunks are collected in walk order (key order) into
// batches; each batch is listed again (ListObjectsV2 from just before its
// first key to its last: the second look, 1,000 chunks a request) and the
// ones still old are deleted with one DeleteObjects. A batch is closed at
// sweepBatch candidates or once sweepSpan chunks were walked since its
// first, so that listing it again costs at most a few pages and the time
// between the second look and the delete stays as short as before.
const (
	sweepBatch        = 1000 // the DeleteObjects limit
	sweepSpan         = 2000
	sweepBatchWorkers = 4
)

// sweepBatcher collects and removes batches of condemned chunk files.
type sweepBatcher struct {
	g     *gcRun
	rm    backend.BatchRemover
	rw    backend.RangeWalker
	batch []ChunkFile
	span  int // chunk files walked since batch[0]
	// removals runs sweepBatchWorkers batches at a time; an error cancels
	// the GC, and every batch's error is reported.
	removals errgroup.Group
	errMu    sync.Mutex
	err      error
}

// newSweepBatcher returns nil when the sweep removes chunk by chunk: dry
// runs, filesystems, backends without batch deletes or ordered listings.
func (g *gcRun) newSweepBatcher() *sweepBatcher {
	rm, ok1 := g.s.b.(backend.BatchRemover)
	rw, ok2 := g.s.b.(backend.RangeWalker)
	if g.req.DryRun || !g.roundTrips || !ok1 || !ok2 {
		return nil
	}
	b := &sweepBatcher{g: g, rm: rm, rw: rw}
	b.removals.SetLimit(sweepBatchWorkers)
	return b
}

// add takes every walked chunk file; remove says whether it is condemned.
func (b *sweepBatcher) add(ctx context.Context, cf ChunkFile, remove bool) error {
	if len(b.batch) > 0 {
		b.span++
	}
	if remove {
		b.batch = append(b.batch, cf)
	}
	if len(b.batch) >= sweepBatch || b.span >= sweepSpan {
		return b.flush(ctx)
	}
	return nil
}

func (b *sweepBatcher) flush(ctx context.Context) error {
	if len(b.batch) == 0 {
		return nil
	}
	if err := context.Cause(ctx); err != nil {
		return err
	}
	batch := b.batch
	b.removals.Go(func() error {
		if ctx.Err() != nil {
			return nil
		}
		if err := b.g.removeBatch(ctx, b.rm, b.rw, batch); err != nil {
			b.errMu.Lock()
			b.err = errors.Join(b.err, err)
			b.errMu.Unlock()
			b.g.cancel(err)
		}
		return nil
	})
	b.batch, b.span = nil, 0
	return nil
}

// close removes the last batch and waits for all of them.
func (b *sweepBatcher) close(ctx context.Context) error {
	err := b.flush(ctx)
	_ = b.removals.Wait() // errors are joined in b.err
	b.errMu.Lock()
	defer b.errMu.Unlock()
	return errors.Join(err, b.err)
}

// removeBatch looks at a batch's LastModified again with one listing of
// its key range and deletes the chunk files still older than the cutoff.
func (g *gcRun) removeBatch(ctx context.Context, rm backend.BatchRemover, rw backend.RangeWalker, batch []ChunkFile) error {
	first, last := chunkFilePath(batch[0]), chunkFilePath(batch[len(batch)-1])
	want := make(map[string]ChunkFile, len(batch))
	for _, cf := range batch {
		want[chunkFilePath(cf)] = cf
	}
	fresh := make(map[string]backend.FileInfo, len(batch))
	// Listing starts after first minus its last byte: a prefix of first,
	// so first itself is listed (and maybe a few keys before it).
	err := rw.WalkFrom(ctx, ".chunks", first[:len(first)-1], func(fi backend.FileInfo) error {
		if fi.Name > last {
			return backend.ErrStopWalk
		}
		if _, ok := want[fi.Name]; ok {
			fresh[fi.Name] = fi
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("gc: list chunks again from %s: %w", first, err)
	}
	names := make([]string, 0, len(batch))
	doomed := make([]ChunkFile, 0, len(batch))
	for p, cf := range want {
		fi, ok := fresh[p]
		switch {
		case !ok:
			// Gone meanwhile (another sweep): nothing to do, as for a
			// single removal finding it missing.
		case !fi.AccessTime.Before(g.minAtime):
			g.kept(cf, fi)
		default:
			names = append(names, p)
			doomed = append(doomed, cf)
		}
	}
	if len(names) == 0 {
		return nil
	}
	if err := rm.RemoveFiles(ctx, names); err != nil {
		return fmt.Errorf("gc: remove %d chunk files from %s: %w", len(names), first, err)
	}
	for _, cf := range doomed {
		g.removed(cf)
	}
	return nil
}

// touchIfOlder is touch for backends that check the age and touch in one
// go (S3: one conditional copy instead of a HEAD and a copy).
func (g *gcRun) touchIfOlder(ctx context.Context, ct backend.ConditionalToucher, d Digest) error {
	touched, err := ct.TouchIfOlder(ctx, ChunkPath(d), g.markStart.Add(-objectTouchWindow))
	if errors.Is(err, fs.ErrNotExist) {
		return g.chunkMissing(ctx, d)
	}
	if err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if touched {
		g.touched++
	} else {
		g.skipped++
	}
	return nil
}
