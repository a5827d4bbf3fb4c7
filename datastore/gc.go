package datastore

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
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
	s           *Store
	req         GCRequest
	res         *GCResult
	rep         *reporter
	cancel      context.CancelCauseFunc
	objectStore bool

	markStart, minAtime, oldestWriter time.Time

	// marked is written only by the marking goroutine, read by the sweep
	// after the touch workers are done.
	marked *digestSet

	touchq  chan Digest
	touchWG sync.WaitGroup

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
		objectStore: s.b.Features().ImplicitDirs,
		res:         &GCResult{DryRun: req.DryRun},
		marked:      newDigestSet(),
		missing:     make(map[Digest]struct{}),
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

// ---- phase 1: mark ----

func (g *gcRun) mark(ctx context.Context) error {
	total, strays, err := g.scanIndexFiles(ctx)
	if err != nil {
		return err
	}
	g.rep.phase("mark", int64(total))
	if !g.req.DryRun {
		g.startTouchers(ctx)
	}
	err = g.markTree(ctx)
	if err == nil {
		err = g.markStrays(ctx, strays)
	}
	if err == nil {
		err = g.markJournal(ctx)
	}
	if !g.req.DryRun {
		close(g.touchq)
		g.touchWG.Wait()
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
	if !g.req.DryRun {
		if err := g.s.DrainJournal(ctx, g.markStart, fn); err != nil {
			return fmt.Errorf("gc: %w", err)
		}
		return nil
	}
	entries, err := g.s.journalEntries(ctx)
	if err != nil {
		return fmt.Errorf("gc: %w", err)
	}
	for _, e := range entries {
		for _, m := range e.Moves {
			for _, p := range []string{m.From, m.To} {
				err := fn(p)
				if errors.Is(err, fs.ErrNotExist) {
					continue
				}
				if err != nil {
					return err
				}
				break
			}
		}
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
		if !g.marked.add(d) || g.touchq == nil {
			return nil
		}
		select {
		case g.touchq <- d:
			return nil
		case <-ctx.Done():
			return context.Cause(ctx)
		}
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

// startTouchers starts the goroutines that touch newly marked chunks.
func (g *gcRun) startTouchers(ctx context.Context) {
	n := runtime.GOMAXPROCS(0)
	if g.objectStore {
		n = g.s.b.Features().InFlight
	}
	g.touchq = make(chan Digest, 4096)
	for range n {
		g.touchWG.Add(1)
		go func() {
			defer g.touchWG.Done()
			for d := range g.touchq {
				if ctx.Err() != nil {
					continue // drain, so the sender never blocks
				}
				if err := g.touch(ctx, d); err != nil {
					g.cancel(fmt.Errorf("gc: touch chunk %s: %w", d, err))
				}
			}
		}()
	}
}

// touch refreshes a referenced chunk's access time; a missing chunk's .bad
// copies are touched instead.
func (g *gcRun) touch(ctx context.Context, d Digest) error {
	p := ChunkPath(d)
	if ct, ok := g.s.b.(backend.ConditionalToucher); ok && g.objectStore {
		return g.touchIfOlder(ctx, ct, d)
	}
	if g.objectStore {
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

// ---- phase 2: sweep ----

func (g *gcRun) sweep(ctx context.Context) error {
	g.rep.phase("sweep", 1<<16)
	var done int64
	var seen, reclaim int
	// Object stores without batch removal: one request per removal, as
	// many at a time as the backend keeps in flight.
	var removals *errgroup.Group
	batches := g.newSweepBatcher(ctx)
	if g.objectStore && !g.req.DryRun && batches == nil {
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

// ---- the GC lease ----

// gcLease is the content of .pbsq/gc-running.
type gcLease struct {
	ID        string    `json:"id"`
	Host      string    `json:"host"`
	PID       int       `json:"pid"`
	Start     time.Time `json:"start"`
	Heartbeat time.Time `json:"heartbeat"`
}

// gcLeaseHeld is a GC lease this process holds.
type gcLeaseHeld struct {
	// confirm reads the lease and fails with ErrGCLeaseLost (cancelling
	// the GC too) unless it is still ours.
	confirm func(ctx context.Context) error
	// release stops the heartbeat and removes the lease if still ours.
	release func()
}

// acquireGCLease takes the store's GC lease or fails with an error
// wrapping lock.ErrBusy. Should another GC take the lease over, the next
// heartbeat or confirm calls cancel with ErrGCLeaseLost.
func (s *Store) acquireGCLease(ctx context.Context, cancel context.CancelCauseFunc) (*gcLeaseHeld, error) {
	var r [8]byte
	_, _ = rand.Read(r[:])
	host, _ := os.Hostname()
	now := time.Now().UTC()
	me := gcLease{ID: hex.EncodeToString(r[:]), Host: host, PID: os.Getpid(), Start: now, Heartbeat: now}
	data, err := json.Marshal(me)
	if err != nil {
		return nil, err
	}
	var holder gcLease
	acquired := false
	for range 3 {
		created, err := s.b.CreateFile(ctx, gcLeasePath, data)
		if err != nil {
			return nil, fmt.Errorf("gc lease on store %q: %w", s.name, err)
		}
		if created {
			acquired = true
			break
		}
		holder, err = s.readGCLease(ctx)
		if errors.Is(err, fs.ErrNotExist) {
			continue // released meanwhile: try again
		}
		if err != nil {
			return nil, err
		}
		if time.Since(holder.Heartbeat) < gcLeaseStale {
			break
		}
		// Stale: move it aside; of several GCs doing this only one succeeds.
		aside := gcLeasePath + ".stale-" + me.ID
		if err := s.b.Rename(ctx, gcLeasePath, aside); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return nil, fmt.Errorf("gc lease on store %q: take over stale lease: %w", s.name, err)
		}
		s.log.Warn("took over a stale GC lease", "holder", holder.Host, "pid", holder.PID, "heartbeat", holder.Heartbeat)
		if err := s.b.Remove(ctx, aside); err != nil {
			s.log.Warn("could not remove the stale GC lease", "file", aside, "err", err)
		}
	}
	if !acquired {
		return nil, fmt.Errorf("garbage collection of store %q is already running on %s (pid %d) since %s, last heartbeat %s "+
			"(lease %s, considered stale %s after its last heartbeat): %w",
			s.name, holder.Host, holder.PID, holder.Start.Format(time.RFC3339), holder.Heartbeat.Format(time.RFC3339),
			gcLeasePath, gcLeaseStale, lock.ErrBusy)
	}

	bg := context.WithoutCancel(ctx)
	// confirm is called by the heartbeat goroutine and by GC itself.
	var mu sync.Mutex
	confirm := func(ctx context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		cur, err := s.readGCLease(ctx)
		if (err == nil && cur.ID != me.ID) || errors.Is(err, fs.ErrNotExist) {
			lost := fmt.Errorf("garbage collection of store %q: %w (now held by %s pid %d)", s.name, ErrGCLeaseLost, cur.Host, cur.PID)
			cancel(lost)
			return lost
		}
		return nil
	}
	stopBeat := heartbeat(gcLeaseRefresh, func() bool {
		if errors.Is(confirm(bg), ErrGCLeaseLost) {
			return false
		}
		me.Heartbeat = time.Now().UTC()
		if data, err := json.Marshal(me); err == nil {
			if err := s.b.WriteFile(bg, gcLeasePath, data); err != nil {
				s.log.Warn("gc lease heartbeat failed", "err", err)
			}
		}
		return true
	})
	release := func() {
		stopBeat()
		rctx, rcancel := context.WithTimeout(bg, time.Minute)
		defer rcancel()
		if cur, err := s.readGCLease(rctx); err == nil && cur.ID == me.ID {
			if err := s.b.Remove(rctx, gcLeasePath); err != nil {
				s.log.Warn("could not remove the GC lease; the next GC finds it stale after ten missed heartbeats", "err", err)
			}
		}
	}
	return &gcLeaseHeld{confirm: confirm, release: release}, nil
}

// readGCLease reads the lease; an unreadable one counts as last refreshed
// when the file was written.
func (s *Store) readGCLease(ctx context.Context) (gcLease, error) {
	var l gcLease
	data, err := s.b.ReadFile(ctx, gcLeasePath)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return l, err
		}
		return l, fmt.Errorf("gc lease on store %q: %w", s.name, err)
	}
	if err := json.Unmarshal(data, &l); err != nil || l.Heartbeat.IsZero() {
		fi, serr := s.b.Stat(ctx, gcLeasePath)
		if serr != nil {
			return l, serr
		}
		l = gcLease{Host: "unknown", Start: fi.ModTime, Heartbeat: fi.ModTime}
	}
	return l, nil
}

// ---- the set of marked digests ----

// digestSet is a compact set of chunk digests: 65536 shards by the first
// two bytes, each a sorted slice of the next 16. About 24 bytes a digest
// (a map[Digest]struct{} takes about 84), so a million referenced chunks
// cost some 25 MiB. Leaving out the last 14 bytes can only make two
// digests look the same (odds about n²/2^129): GC would then keep an
// unreferenced chunk or skip one touch, never lose a referenced chunk.
type digestSet struct {
	shards [1 << 16][]digestKey
	n      int
}

type digestKey struct{ hi, lo uint64 }

func newDigestSet() *digestSet { return new(digestSet) }

func digestShard(d *Digest) (int, digestKey) {
	return int(d[0])<<8 | int(d[1]), digestKey{binary.BigEndian.Uint64(d[2:10]), binary.BigEndian.Uint64(d[10:18])}
}

func compareDigestKey(a, b digestKey) int {
	if c := cmp.Compare(a.hi, b.hi); c != 0 {
		return c
	}
	return cmp.Compare(a.lo, b.lo)
}

// add inserts d and reports whether it was new.
func (s *digestSet) add(d Digest) bool {
	i, k := digestShard(&d)
	sh := s.shards[i]
	j, found := slices.BinarySearchFunc(sh, k, compareDigestKey)
	if found {
		return false
	}
	s.shards[i] = slices.Insert(sh, j, k)
	s.n++
	return true
}

func (s *digestSet) has(d Digest) bool {
	i, k := digestShard(&d)
	_, found := slices.BinarySearchFunc(s.shards[i], k, compareDigestKey)
	return found
}

func (s *digestSet) len() int { return s.n }
