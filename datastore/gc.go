package datastore

import (
	"context"
	"errors"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/pbsq/pbsq/datastore/backend"
)

// Garbage collection follows PBS (pbs-datastore datastore.rs
// garbage_collection and chunk_store.rs sweep_unused_chunks):
//
// Phase 1, mark: note the mark start, walk every namespace, group and
// snapshot (unfinished ones too: a running or aborted backup's index files
// protect their chunks) and touch every chunk an index file references, so
// that its access time is at least the mark start. Then drain the move
// journal, which names index files a concurrent move may have carried past
// the walk.
//
// Phase 2, sweep: remove every chunk last accessed before the cutoff,
// mark start − 24h5m (PBS's default; a day because of relatime, five
// minutes of safety), lowered to five minutes before the start of the
// oldest active writer when that is earlier: a writer inserts (or touches)
// its chunks long before the index referencing them exists.
//
// Where pbsq differs from PBS, it errs on the side of keeping data:
//   - The digests marked in this run are kept in memory (digestSet, about 24
//     bytes a chunk) rather than in PBS's bounded LRU, and the sweep never
//     removes a chunk in that set, whatever its access time. Touching is still
//     done, as PBS does; a referenced chunk whose access time stayed old
//     (a filesystem or server that ignores the touch) is reported.
//   - An index file that exists but cannot be parsed stops GC before the
//     sweep (PBS does the same): its chunks are unknown.
//   - GC takes no namespace locks (it runs alongside backups, moves and
//     prunes), but only one GC runs per store: see the lease below.
//
// Corrupt copies (<digest>.<n>.bad) are handled exactly as PBS does: during
// marking, when a referenced chunk is missing, its .bad copies are touched,
// since they are the only data left of it. Otherwise nothing touches them,
// so a .bad copy is removed by the first GC that finds it older than the
// cutoff once either a good copy has been uploaded again or no index
// references the chunk any more.
//
// On object storage a chunk's access time is its LastModified and a touch is
// a server-side copy onto itself. To spare requests, marking first reads a
// chunk's LastModified (one HEAD) and touches only chunks modified more
// than an hour before the mark start; newer ones are far inside the cutoff
// anyway. The sweep reads a candidate's LastModified again right before
// deleting it, since the listing it came from may be minutes old.

// DefaultGCCutoff is PBS's default access-time cutoff.
const DefaultGCCutoff = 24*time.Hour + 5*time.Minute

const (
	// writerGap is subtracted from the oldest writer's start, as PBS does.
	writerGap = 5 * time.Minute
	// objectTouchWindow: on object storage, chunks modified within this long
	// before the mark start are not touched again.
	objectTouchWindow = time.Hour
	// maxGroupRetries bounds the relisting of a group whose newest snapshot
	// vanished while it was being marked (PBS's retry loop).
	maxGroupRetries = 10
)

// The GC lease: only one GC may run per store, wherever it runs, and
// neither flock nor the Redis locker has a lock for "the whole chunk store"
// (a namespace lock would block backups). So GC creates .pbsq/gc-running
// with CreateFile (atomic create-if-absent on both backends), refreshes its
// heartbeat every gcLeaseRefresh, and removes it at the end. A lease whose
// heartbeat is older than gcLeaseStale belongs to a crashed GC and is taken
// over: renamed aside first, so that of two GCs finding it stale only one
// wins. The stale time is ten missed heartbeats (as for writers), so a
// killed worker's GC blocks the next one for minutes, not a day; a running
// GC never goes stale, whatever its length, thanks to the heartbeat.
const gcLeasePath = ".pbsq/gc-running"

// gcLeaseStale is ten heartbeats: a lease not refreshed for that long
// belongs to a crashed GC.
var gcLeaseStale = 10 * time.Minute

// gcLeaseRefresh is a variable so tests can speed it up.
var gcLeaseRefresh = time.Minute

// ErrGCLeaseLost is the cause of a GC cancelled because another GC took its
// lease over (it found the heartbeat stale).
var ErrGCLeaseLost = errors.New("gc lease lost")

// GCRequest configures a garbage collection.
type GCRequest struct {
	// DryRun marks and sweeps without touching or removing anything (and
	// without taking the GC lease); the result reports what a real run would
	// reclaim. Missing chunks are not detected in a dry run.
	DryRun bool
	// Now gives the mark start (tests shift it to make chunks look old);
	// nil means time.Now. Liveness of writers and leases is always judged by
	// the wall clock.
	Now func() time.Time
	// Cutoff: unreferenced chunks not accessed for this long before the
	// mark start are removed. 0 means DefaultGCCutoff; at least a minute.
	Cutoff time.Duration
}

// GCResult is the outcome of GC. Byte counts are of chunk files as stored
// (compressed); IndexDataBytes is the logical size of the data indexed.
type GCResult struct {
	DryRun    bool      `json:"dry-run"`
	MarkStart time.Time `json:"mark-start"`
	// MinAccessTime is the effective cutoff: unreferenced chunks last
	// accessed before it are removed.
	MinAccessTime time.Time  `json:"min-access-time"`
	OldestWriter  *time.Time `json:"oldest-writer,omitempty"`
	ActiveWriters int        `json:"active-writers"`
	StaleWriters  int        `json:"stale-writers"`

	IndexFiles int `json:"index-files"`
	// StrayIndexFiles are index files found outside the datastore layout
	// (invalid names); their chunks were kept.
	StrayIndexFiles []string `json:"stray-index-files,omitempty"`
	// JournalIndexFiles were marked again from the move journal.
	JournalIndexFiles int `json:"journal-index-files"`
	// PBSJournalIndexFiles were marked from PBS's move journal.
	PBSJournalIndexFiles int    `json:"pbs-journal-index-files,omitempty"`
	IndexDataBytes       uint64 `json:"index-data-bytes"`
	// ReferencedChunks is the number of distinct digests the indexes name.
	ReferencedChunks int `json:"referenced-chunks"`
	// MissingChunks are referenced but absent (not checked in a dry run).
	MissingChunks int `json:"missing-chunks"`
	TouchedChunks int `json:"touched-chunks"`
	// TouchesSkipped: object storage only, chunks recent enough not to need
	// a touch.
	TouchesSkipped int `json:"touches-skipped,omitempty"`

	// InUse: referenced chunks, plus unreferenced ones accessed since the
	// oldest active writer started (about to be referenced).
	InUseChunks int   `json:"in-use-chunks"`
	InUseBytes  int64 `json:"in-use-bytes"`
	// Pending: unreferenced, but accessed after the cutoff; a later GC
	// removes them (PBS's "pending removals").
	PendingChunks int   `json:"pending-chunks"`
	PendingBytes  int64 `json:"pending-bytes"`
	// Reclaimable: what the sweep found removable (chunks and .bad copies);
	// in a dry run nothing more happens.
	ReclaimableChunks int   `json:"reclaimable-chunks"`
	ReclaimableBad    int   `json:"reclaimable-bad"`
	ReclaimableBytes  int64 `json:"reclaimable-bytes"`
	// Removed: what was actually deleted (zero in a dry run).
	RemovedChunks int   `json:"removed-chunks"`
	RemovedBad    int   `json:"removed-bad"`
	RemovedBytes  int64 `json:"removed-bytes"`
	// StillBad: .bad copies kept.
	StillBad int `json:"still-bad"`
	// Disk: chunks and bytes left in the chunk store afterwards (for a dry
	// run: that would be left).
	DiskChunks int   `json:"disk-chunks"`
	DiskBytes  int64 `json:"disk-bytes"`
	// DedupFactor is IndexDataBytes / InUseBytes.
	DedupFactor float64  `json:"dedup-factor"`
	Warnings    []string `json:"warnings,omitempty"`
	Seconds     float64  `json:"seconds"`
	// Requests: on object storage, the requests sent (retries included).
	Requests int64 `json:"requests,omitempty"`
}

// Outcome: GC has no skipped items; missing chunks are warnings (verify
// finds the snapshots they break).
func (r *GCResult) Outcome() error { return nil }

// gcRun is one GC's state.
type gcRun struct {
	s      *Store
	req    GCRequest
	res    *GCResult
	rep    *reporter
	cancel context.CancelCauseFunc
	// roundTrips: the backend's requests are round trips (object
	// storage): touches and removals go many at once, and in batches.
	roundTrips bool

	markStart, minAtime, oldestWriter time.Time

	// marked is written only by the marking goroutine, read by the sweep
	// after the touch workers are done.
	marked *digestSet

	// touchers touch newly marked chunks (nil in a dry run), handed over
	// in batches (touchBatch, of the marking goroutine).
	touchers   *errgroup.Group
	touchBatch []Digest

	mu         sync.Mutex // guards the fields below and res during the sweep
	missing    map[Digest]struct{}
	touched    int
	skipped    int
	staleAtime int
}

// GC runs garbage collection on the store. See the comment at the top of
// gc.go for the rules. A second GC on the same store while one runs fails
// with an error wrapping lock.ErrBusy.
func (s *Store) GC(ctx context.Context, req GCRequest, progress ProgressFunc) (*GCResult, error) {
	switch {
	case req.Cutoff == 0:
		req.Cutoff = DefaultGCCutoff
	case req.Cutoff < time.Minute:
		return nil, invalidf("gc cutoff %s: must be at least a minute", req.Cutoff)
	}
	now := req.Now
	if now == nil {
		now = time.Now
	}
	started := time.Now()
	ctx, requests := backend.CountRequests(ctx)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	confirmLease := func(context.Context) error { return nil }
	if !req.DryRun {
		// The chunk-store lock first: it keeps PBS's writers and GC away
		// (processlock.go); the lease then excludes pbsq GCs elsewhere.
		if err := s.checkPBSInUse(ctx); err != nil {
			return nil, err
		}
		unlock, err := s.processLock(ctx, processLockGC)
		if err != nil {
			return nil, err
		}
		defer unlock()
		lease, err := s.acquireGCLease(ctx, cancel)
		if err != nil {
			return nil, err
		}
		defer lease.release()
		confirmLease = lease.confirm
	}

	g := &gcRun{
		s: s, req: req, cancel: cancel,
		roundTrips: s.b.Features().RoundTrips,
		res:        &GCResult{DryRun: req.DryRun},
		marked:     newDigestSet(),
		missing:    make(map[Digest]struct{}),
	}
	g.markStart = now().UTC()
	g.res.MarkStart = g.markStart
	if err := g.cutoff(ctx); err != nil {
		return g.res, err
	}
	g.rep = newReporter(progress, "mark", 0)
	s.obs.logf("gc datastore %s: phase 1 (mark), cutoff %s", s.name, g.res.MinAccessTime.Format(time.RFC3339))
	if err := g.mark(ctx); err != nil {
		return g.res, gcErr(ctx, err)
	}
	s.obs.logf("marked %d index file(s), %d chunk(s) referenced, %d missing", g.res.IndexFiles, g.res.ReferencedChunks, g.res.MissingChunks)
	// The heartbeat notices a takeover only at its next beat; nothing may
	// be removed by a GC that no longer holds the lease.
	if err := confirmLease(ctx); err != nil {
		return g.res, err
	}
	s.obs.logf("phase 2 (sweep)")
	if err := g.sweep(ctx); err != nil {
		return g.res, gcErr(ctx, err)
	}
	g.finish()
	g.res.Seconds = time.Since(started).Seconds()
	g.res.Requests = requests.Load()
	g.rep.finish()
	s.obs.logf("gc summary: %d chunk(s) in use (%d bytes), %d pending removal (%d bytes), %d removed (%d bytes)%s",
		g.res.InUseChunks, g.res.InUseBytes, g.res.PendingChunks, g.res.PendingBytes, g.res.RemovedChunks, g.res.RemovedBytes,
		map[bool]string{true: " (dry run)"}[req.DryRun])
	return g.res, nil
}

// gcErr prefers the cancellation cause (a touch error, a lost lease) to the
// bare context.Canceled a loop returned.
func gcErr(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); cause != nil && errors.Is(err, context.Canceled) {
		return cause
	}
	return err
}

// cutoff reads the writer registry and fixes the minimum access time.
func (g *gcRun) cutoff(ctx context.Context) error {
	live, stale, err := g.s.activeWriters(ctx)
	if err != nil {
		return err
	}
	g.oldestWriter = g.markStart
	for _, w := range live {
		if w.Start.Before(g.oldestWriter) {
			g.oldestWriter = w.Start.UTC()
		}
	}
	g.minAtime = g.markStart.Add(-g.req.Cutoff)
	if g.oldestWriter.Before(g.minAtime) {
		g.minAtime = g.oldestWriter.Add(-writerGap)
	}
	g.res.MinAccessTime = g.minAtime
	g.res.ActiveWriters = len(live)
	g.res.StaleWriters = len(stale)
	if len(live) > 0 {
		ow := g.oldestWriter
		g.res.OldestWriter = &ow
	}
	if !g.req.DryRun {
		for _, f := range stale {
			if err := g.s.b.Remove(ctx, backend.Join(writersDir, f)); err != nil {
				g.s.log.Warn("could not remove stale writer registration", "file", f, "err", err)
			}
		}
	}
	return nil
}
