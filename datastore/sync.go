package datastore

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/format"
	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
)

// DefaultSyncOwner owns the groups a sync creates when the request names
// no owner, as in PBS.
const DefaultSyncOwner = "root@pam"

const (
	// clientLogName is the backup client's log, uploaded after the
	// manifest and not listed in it; PBS syncs it when present.
	clientLogName = "client.log.blob"
)

// SyncRequest describes a sync from one datastore into another.
type SyncRequest struct {
	// SourceNS is the source namespace; every namespace below it (down to
	// MaxDepth levels) maps to the same relative place below NS.
	SourceNS name.Namespace
	// NS is the target namespace; missing target namespaces are created.
	NS name.Namespace
	// MaxDepth limits the recursion below SourceNS; < 0 means no limit.
	MaxDepth int
	// Filters select groups, with PBS's include/exclude semantics.
	Filters []name.GroupFilter
	// TransferLast limits each group to its newest N finished source
	// snapshots; 0 means all.
	TransferLast int
	// RemoveVanished deletes target snapshots, groups and namespaces in
	// scope that the source no longer has (never protected snapshots,
	// never groups of another owner).
	RemoveVanished bool
	// ResyncCorrupt also re-syncs target snapshots whose last verification
	// failed, checking their chunks in the target as it goes.
	ResyncCorrupt bool
	// Owner of the target groups (default DefaultSyncOwner). An existing
	// target group with another owner is skipped.
	Owner string
	// Rate limits the chunk bytes read from the source, in bytes per
	// second; 0 means unlimited.
	Rate int64
	// Groups, when set, limits the sync to these source groups (one
	// shard of a sharded job).
	Groups []name.Group
	// Share, when set, shares the chunks the target has with the other
	// shards of a sharded job (nil: this task's own set).
	Share ChunkShare
}

// SyncResult is the outcome of Sync.
type SyncResult struct {
	// Groups is the number of groups handled completely.
	Groups            int `json:"groups"`
	GroupsCreated     int `json:"groups-created"`
	NamespacesCreated int `json:"namespaces-created"`
	// Snapshots were written (new, or changed and re-synced).
	Snapshots int `json:"snapshots"`
	// SnapshotsPresent were re-checked and found identical in the target.
	SnapshotsPresent int `json:"snapshots-present"`
	// Chunks were copied; ChunksPresent were already in the target.
	Chunks        int   `json:"chunks"`
	ChunksPresent int   `json:"chunks-present"`
	ChunksTouched int   `json:"chunks-touched"`
	ChunksRenamed int   `json:"chunks-renamed-bad"`
	Bytes         int64 `json:"bytes"`
	// FilesWritten counts every file written into the target other than
	// chunks: owner files, indexes, blobs, manifests.
	FilesWritten      int              `json:"files-written"`
	RemovedSnapshots  int              `json:"removed-snapshots"`
	RemovedGroups     int              `json:"removed-groups"`
	RemovedNamespaces int              `json:"removed-namespaces"`
	Failed            []FailedSnapshot `json:"failed"`
	Skipped           []Skipped        `json:"skipped"`
	Warnings          []string         `json:"warnings,omitempty"`
	Seconds           float64          `json:"seconds"`
	MiBPerSecond      float64          `json:"mib-per-second"`
}

// Add adds o's counts and lists to r: the sum of the shards of a job.
// Seconds and MiBPerSecond describe a whole run and are left to whoever
// ran it.
func (r *SyncResult) Add(o *SyncResult) {
	r.Groups += o.Groups
	r.GroupsCreated += o.GroupsCreated
	r.NamespacesCreated += o.NamespacesCreated
	r.Snapshots += o.Snapshots
	r.SnapshotsPresent += o.SnapshotsPresent
	r.Chunks += o.Chunks
	r.ChunksPresent += o.ChunksPresent
	r.ChunksTouched += o.ChunksTouched
	r.ChunksRenamed += o.ChunksRenamed
	r.Bytes += o.Bytes
	r.FilesWritten += o.FilesWritten
	r.RemovedSnapshots += o.RemovedSnapshots
	r.RemovedGroups += o.RemovedGroups
	r.RemovedNamespaces += o.RemovedNamespaces
	r.Failed = append(r.Failed, o.Failed...)
	r.Skipped = append(r.Skipped, o.Skipped...)
	r.Warnings = append(r.Warnings, o.Warnings...)
}

// Outcome folds the result into ok, skipped or failed.
func (r *SyncResult) Outcome() error {
	switch {
	case len(r.Failed) > 0:
		return fmt.Errorf("sync: %d snapshot(s) failed (%s:%s first): %w", len(r.Failed), r.Failed[0].NS, r.Failed[0].Snapshot, ErrFailed)
	case len(r.Skipped) > 0:
		return fmt.Errorf("sync: %d item(s) skipped (%s first): %w", len(r.Skipped), r.Skipped[0].Item, ErrSkipped)
	}
	return nil
}

// normalize fills in defaults and checks the request before any I/O.
func (r *SyncRequest) normalize(src, dst *Store) error {
	if src == nil || dst == nil {
		return invalidf("sync needs a source and a target datastore")
	}
	if r.Owner == "" {
		r.Owner = DefaultSyncOwner
	}
	if err := ValidateOwner(r.Owner); err != nil {
		return err
	}
	if r.TransferLast < 0 {
		return invalidf("transfer-last %d: must be at least 1, or 0 for all", r.TransferLast)
	}
	if r.Rate < 0 {
		return invalidf("rate %d: must not be negative", r.Rate)
	}
	if r.MaxDepth > name.MaxNamespaceDepth {
		return invalidf("max-depth %d exceeds the limit of %d levels", r.MaxDepth, name.MaxNamespaceDepth)
	}
	if src.name == dst.name && (r.SourceNS.Contains(r.NS) || r.NS.Contains(r.SourceNS)) {
		return invalidf("sync within store %q: source namespace %q and target namespace %q overlap", src.name, r.SourceNS, r.NS)
	}
	filters := make([]name.GroupFilter, len(r.Filters))
	for i, f := range r.Filters {
		switch f.Kind {
		case "group", "type":
		case "regex":
			if f.Regex == nil {
				re, err := regexp.Compile(f.Value)
				if err != nil {
					return invalidf("group-filter regex %q: %v", f.Value, err)
				}
				f.Regex = re
			}
		default:
			return invalidf("group-filter kind %q: must be group, type or regex", f.Kind)
		}
		filters[i] = f
	}
	r.Filters = filters
	return nil
}

// syncer holds one sync task's state.
type syncer struct {
	src, dst     *Store
	req          SyncRequest
	res          *SyncResult
	rep          *reporter
	lim          *byteLimiter
	workers      int
	groupsAtOnce int
	// slots bounds the chunk jobs in flight across concurrent groups.
	slots chan struct{}

	// writerStart is when this sync registered as a writer on the
	// target (zero until its first chunk work); writerDone ends that.
	regMu       sync.Mutex
	writerStart time.Time
	writerDone  func()

	mu sync.Mutex // guards res, present, bad, inflight and done
	// present: chunks known to be in the target, checked once per task.
	present map[Digest]struct{}
	// bad: source chunks found corrupt or missing, with the reason.
	bad map[Digest]string
	// inflight: chunks a worker is providing right now; others wait for
	// it rather than copy the same chunk (groups sharing chunks).
	inflight map[Digest]chan struct{}
	// done: target snapshots (paths) already handled, so that a group
	// retried after a busy lock does not count them twice.
	done map[string]bool
	// bufs recycles *chunkBuffers across snapshots.
	bufs sync.Pool
	// decoders bound the memory of chunk decoding, as in verify.
	decoders *decoderPool
}

// nsPair is a source namespace and the target namespace it maps to.
type nsPair struct{ src, dst name.Namespace }

// groupPair is a source group and its target group.
type groupPair struct{ src, dst name.Group }

// Sync copies snapshots from src into dst as PBS's sync (pull) does: per
// group, the snapshots newer than the newest finished target snapshot,
// plus that one re-checked; per snapshot the chunks the target lacks (each
// verified on the way), then the index files and blobs, then the manifest
// last, so an interrupted sync never leaves a finished-looking snapshot
// with missing chunks. An unchanged source writes nothing.
//
// Locks: per group a shared lock on the target namespace and the target
// group exclusively, a shared lock on the source namespace; per snapshot
// the source snapshot shared and the target snapshot exclusively. Busy
// groups are retried once at the end, then skipped. A snapshot with a
// corrupt source chunk fails alone; the sync goes on (with the group's
// newer snapshots: later syncs start after those, so the failed one is
// not retried unless the target is resynced from scratch).
//
// Groups are synced a few at a time, each group's snapshots oldest first;
// chunks are checked and copied by a bounded pool shared by all groups,
// each chunk once per task.
func Sync(ctx context.Context, src, dst *Store, req SyncRequest, progress ProgressFunc) (*SyncResult, error) {
	if err := req.normalize(src, dst); err != nil {
		return nil, err
	}
	// For the whole sync, before anything is written: the target must not
	// be an object store a PBS uses, and PBS's GC must not run on it.
	unlock, err := dst.beginWrite(ctx, true)
	if err != nil {
		return nil, err
	}
	defer unlock()
	start := time.Now()
	// Chunks go as many at once as the busier backend wants. Groups are
	// independent (a group's snapshots go in order); where requests are
	// round trips each group's listings and re-checks overlap well, so
	// more groups go at once there.
	workers := max(src.b.Features().InFlight, dst.b.Features().InFlight)
	groupsAtOnce := 2
	if src.b.Features().RoundTrips || dst.b.Features().RoundTrips {
		groupsAtOnce = 8
	}
	y := &syncer{
		src: src, dst: dst, req: req,
		res:          &SyncResult{Failed: []FailedSnapshot{}, Skipped: []Skipped{}},
		lim:          newByteLimiter(req.Rate),
		workers:      workers,
		groupsAtOnce: groupsAtOnce,
		slots:        make(chan struct{}, workers),
		present:      map[Digest]struct{}{},
		bad:          map[Digest]string{},
		inflight:     map[Digest]chan struct{}{},
		done:         map[string]bool{},
		decoders:     newDecoderPool(verifyDecodeBudget),
	}
	defer y.decoders.close()

	defer func() {
		y.regMu.Lock()
		defer y.regMu.Unlock()
		if y.writerDone != nil {
			y.writerDone()
		}
	}()
	pairs, err := y.mapNamespaces(ctx)
	if err != nil {
		return nil, err
	}
	var groups []groupPair
	for _, p := range pairs {
		gs, err := src.ListGroups(ctx, p.src)
		if err != nil {
			return nil, err
		}
		for _, g := range gs {
			if name.ApplyFilters(g, req.Filters) && (req.Groups == nil || slices.Contains(req.Groups, g)) {
				groups = append(groups, groupPair{src: g, dst: g.InNS(p.dst)})
			}
		}
	}
	if err := y.createNamespaces(ctx, pairs); err != nil {
		return y.finish(start), err
	}

	y.rep = newReporter(progress, "sync", int64(len(groups)))
	dst.obs.logf("sync from datastore %s into %s: %d group(s) in scope", src.name, dst.name, len(groups))
	err = busyRetry[groupPair]{
		workers: y.groupsAtOnce,
		run:     y.group,
		skip:    func(gp groupPair, busy error) { y.skip(groupLabel(gp.src), busy.Error(), "busy") },
		done:    func(groupPair) { y.rep.add(1) },
	}.do(ctx, groups)
	if err != nil {
		return y.finish(start), err
	}

	if req.RemoveVanished {
		y.rep.phase("remove-vanished", 0)
		if err := y.removeVanished(ctx, pairs, groups); err != nil {
			return y.finish(start), err
		}
	}
	res := y.finish(start)
	y.rep.finish()
	dst.obs.logf("sync summary: %d snapshot(s) synced, %d already present, %d failed, %d skipped, %d chunk(s) copied (%d bytes), %d snapshot(s) removed",
		res.Snapshots, res.SnapshotsPresent, len(res.Failed), len(res.Skipped), res.Chunks, res.Bytes, res.RemovedSnapshots)
	return res, nil
}

func (y *syncer) finish(start time.Time) *SyncResult {
	y.mu.Lock()
	defer y.mu.Unlock()
	// Groups ran concurrently: give the lists a stable order.
	sort.SliceStable(y.res.Failed, func(i, j int) bool {
		a, b := y.res.Failed[i], y.res.Failed[j]
		return a.NS < b.NS || (a.NS == b.NS && a.Snapshot < b.Snapshot)
	})
	sort.SliceStable(y.res.Skipped, func(i, j int) bool { return y.res.Skipped[i].Item < y.res.Skipped[j].Item })
	y.res.Seconds = time.Since(start).Seconds()
	if y.res.Seconds > 0 {
		y.res.MiBPerSecond = float64(y.res.Bytes) / (1 << 20) / y.res.Seconds
	}
	return y.res
}

// mapNamespaces lists the source namespaces in scope (parents first) and
// maps each below the target namespace; a mapping deeper than PBS allows
// refuses the whole request before anything is written.
func (y *syncer) mapNamespaces(ctx context.Context) ([]nsPair, error) {
	srcNSs, err := y.src.ListNamespaces(ctx, y.req.SourceNS, y.req.MaxDepth)
	if err != nil {
		return nil, err
	}
	pairs := make([]nsPair, 0, len(srcNSs))
	for _, sns := range srcNSs {
		depth := y.req.NS.Depth() + sns.Depth() - y.req.SourceNS.Depth()
		if depth > name.MaxNamespaceDepth {
			return nil, invalidf("source namespace %q would be %d levels deep below target namespace %q, more than the limit of %d; sync into a shallower namespace or set max-depth",
				sns, depth, y.req.NS, name.MaxNamespaceDepth)
		}
		tns, err := name.Rebase(sns, y.req.SourceNS, y.req.NS)
		if err != nil {
			return nil, fmt.Errorf("sync source namespace %q into %q: %w", sns, y.req.NS, err)
		}
		pairs = append(pairs, nsPair{src: sns, dst: tns})
	}
	return pairs, nil
}

// createNamespaces creates the missing target namespaces, parents first,
// each under a shared lock on itself (and so its ancestors), which keeps a
// structural change of an ancestor out meanwhile.
func (y *syncer) createNamespaces(ctx context.Context, pairs []nsPair) error {
	existing, err := y.dst.ListNamespaces(ctx, y.req.NS, y.req.MaxDepth)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	have := map[string]bool{}
	for _, ns := range existing {
		have[ns.String()] = true
	}
	for _, p := range pairs {
		if have[p.dst.String()] || p.dst.IsRoot() {
			continue
		}
		ctx, release, err := hold(ctx, y.dst.on(y.dst.nsRequest(p.dst, lock.Shared))...)
		if err != nil {
			return err
		}
		err = y.dst.CreateNamespace(ctx, p.dst)
		release()
		if err != nil {
			return err
		}
		y.count(func(r *SyncResult) { r.NamespacesCreated++ })
	}
	return nil
}

// groupLocks are a group's locks in the documented order: the two
// namespaces shallowest first, then by path, then the target group.
func (y *syncer) groupLocks(gp groupPair) []storeLock {
	ns := []storeLock{
		{y.dst, y.dst.nsRequest(gp.dst.NS, lock.Shared)},
		{y.src, y.src.nsRequest(gp.src.NS, lock.Shared)},
	}
	slices.SortStableFunc(ns, func(a, b storeLock) int {
		return cmp.Or(cmp.Compare(a.r.NS.Depth(), b.r.NS.Depth()), cmp.Compare(a.r.NS.String(), b.r.NS.String()))
	})
	return append(ns, storeLock{y.dst, y.dst.groupRequest(gp.dst)})
}

func groupLabel(g name.Group) string       { return g.NS.String() + ":" + g.String() }
func snapshotLabel(s name.Snapshot) string { return s.NS.String() + ":" + s.String() }

// count updates the result; groups run concurrently.
func (y *syncer) count(fn func(r *SyncResult)) {
	y.mu.Lock()
	fn(y.res)
	y.mu.Unlock()
}

func (y *syncer) warn(msg string) {
	y.count(func(r *SyncResult) { r.Warnings = append(r.Warnings, msg) })
}

func (y *syncer) skip(item, reason, kind string) {
	y.count(func(r *SyncResult) { r.Skipped = append(r.Skipped, Skipped{Item: item, Reason: reason}) })
	y.dst.obs.skipped("sync", kind)
	y.dst.obs.logf("skipped %s: %s: %s", item, kind, reason)
}

func (y *syncer) fail(sn name.Snapshot, reasons []string) {
	y.count(func(r *SyncResult) {
		r.Failed = append(r.Failed, FailedSnapshot{NS: sn.NS.String(), Snapshot: sn.String(), Reasons: reasons})
	})
	y.dst.log.Warn("sync: snapshot failed", "source", y.src.name, "ns", sn.NS.String(), "snapshot", sn.String(), "reasons", reasons)
	y.dst.obs.logf("sync %s: FAILED: %s", snapRef(sn), strings.Join(reasons, "; "))
}

// group syncs one group. A refused lock (of the group or of one of its
// snapshots) returns an error wrapping lock.ErrBusy, which busyRetry sets
// aside; the snapshots synced before it stay synced.
func (y *syncer) group(ctx context.Context, gp groupPair) error {
	ctx, release, err := hold(ctx, y.groupLocks(gp)...)
	if err != nil {
		return err
	}
	defer release()

	// Three independent reads: one round trip on object storage, not three.
	var owner string
	var srcSnaps, dstSnaps []SnapshotInfo
	var ownerErr error
	err = parallel(ctx, 3, 3, func(ctx context.Context, i int) error {
		var err error
		switch i {
		case 0:
			owner, ownerErr = y.dst.GroupOwner(ctx, gp.dst)
		case 1:
			srcSnaps, err = y.src.listGroupSnapshots(ctx, gp.src)
		case 2:
			dstSnaps, err = y.dst.listGroupSnapshots(ctx, gp.dst)
		}
		return err
	})
	if err != nil {
		return err
	}
	newGroup := errors.Is(ownerErr, fs.ErrNotExist)
	if ownerErr != nil && !newGroup {
		return ownerErr
	}
	if !newGroup && owner != y.req.Owner {
		y.skip(groupLabel(gp.src), fmt.Sprintf("target group %s in namespace %q on store %q is owned by %q, not %q",
			gp.dst, gp.dst.NS, y.dst.name, owner, y.req.Owner), "owner")
		return nil
	}
	if newGroup {
		if err := y.dst.SetGroupOwner(ctx, gp.dst, y.req.Owner); err != nil {
			return err
		}
		y.count(func(r *SyncResult) { r.GroupsCreated++; r.FilesWritten++ })
	}
	plan, err := y.plan(ctx, srcSnaps, dstSnaps)
	if err != nil {
		return err
	}
	for _, it := range plan {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := y.snapshot(ctx, gp, it); err != nil {
			return err
		}
	}
	if y.req.RemoveVanished {
		if err := y.removeVanishedSnapshots(ctx, srcSnaps, dstSnaps); err != nil {
			return err
		}
	}
	y.count(func(r *SyncResult) { r.Groups++ })
	return nil
}

// listGroupSnapshots lists a group's snapshots. On a filesystem it is
// ListSnapshots. Where requests are round trips (object storage), a
// listing of every snapshot's files costs the server a walk and a request
// per snapshot would cost round trips on every, even unchanged, sync: it
// lists only the snapshot directories. Files is nil there, and Finished
// unknown until snapshotFinished asks.
func (s *Store) listGroupSnapshots(ctx context.Context, g name.Group) ([]SnapshotInfo, error) {
	if !s.b.Features().RoundTrips {
		return s.ListSnapshots(ctx, g)
	}
	snaps, err := s.snapshotDirs(ctx, g)
	if err != nil {
		return nil, err
	}
	out := make([]SnapshotInfo, len(snaps))
	for i, sn := range snaps {
		out[i] = SnapshotInfo{Snapshot: sn}
	}
	return out, nil
}

// snapshotFinished reports whether info's snapshot has its manifest,
// asking the backend when the listing did not tell (Files == nil).
func (s *Store) snapshotFinished(ctx context.Context, info *SnapshotInfo) (bool, error) {
	if info.Files != nil || info.Finished {
		return info.Finished, nil
	}
	// A read, not a Stat: on object storage a missing key costs Stat a
	// second request (to rule out a directory).
	_, err := s.b.ReadFile(ctx, info.Snapshot.File(ManifestName))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("manifest of snapshot %s on store %q: %w", snapshotLabel(info.Snapshot), s.name, err)
	}
	info.Finished = true
	return true, nil
}

// syncItem is one snapshot to sync.
type syncItem struct {
	src SnapshotInfo
	// dst is the target's snapshot of the same time, if there is one.
	dst *SnapshotInfo
	// corrupt: the target's copy failed verification (ResyncCorrupt).
	corrupt bool
}

// plan selects a group's snapshots as PBS does, oldest first: finished
// source snapshots not older than the newest finished target snapshot
// (which is re-checked), limited to the newest TransferLast (the re-check
// of the newest target snapshot aside), plus with ResyncCorrupt those
// whose target copy failed verification. It walks from the newest down,
// so that on object storage only the few snapshots it selects are looked
// into.
func (y *syncer) plan(ctx context.Context, srcSnaps, dstSnaps []SnapshotInfo) ([]syncItem, error) {
	var lastSync time.Time
	for i := len(dstSnaps) - 1; i >= 0; i-- {
		ok, err := y.dst.snapshotFinished(ctx, &dstSnaps[i])
		if err != nil {
			return nil, err
		}
		if ok {
			lastSync = dstSnaps[i].Time
			break
		}
	}
	dstByTime := map[int64]*SnapshotInfo{}
	for i := range dstSnaps {
		dstByTime[dstSnaps[i].Time.Unix()] = &dstSnaps[i]
	}
	var out []syncItem
	finished := 0
	for i := len(srcSnaps) - 1; i >= 0; i-- {
		s := srcSnaps[i]
		older := !lastSync.IsZero() && s.Time.Before(lastSync)
		if older && !y.req.ResyncCorrupt {
			break // synced before, and so is everything older
		}
		ok, err := y.src.snapshotFinished(ctx, &s)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		finished++
		d := dstByTime[s.Time.Unix()]
		if y.req.ResyncCorrupt && d != nil {
			bad, err := y.dst.verifyFailed(ctx, d.Snapshot)
			if err != nil {
				return nil, err
			}
			if bad {
				out = append(out, syncItem{src: s, dst: d, corrupt: true})
				continue
			}
		}
		if older {
			continue
		}
		if n := y.req.TransferLast; n > 0 && finished > n && !s.Time.Equal(lastSync) {
			continue // outside transfer-last
		}
		out = append(out, syncItem{src: s, dst: d})
	}
	slices.Reverse(out)
	return out, nil
}

// verifyFailed reports whether a snapshot's last verification failed; an
// unreadable manifest counts as failed.
func (s *Store) verifyFailed(ctx context.Context, snap name.Snapshot) (bool, error) {
	m, err := s.ReadManifest(ctx, snap)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	case errors.Is(err, format.ErrInvalidManifest), errors.Is(err, format.ErrBadCRC), errors.Is(err, format.ErrCorrupt),
		errors.Is(err, format.ErrBadMagic), errors.Is(err, format.ErrTruncated):
		return true, nil
	case err != nil:
		return false, err
	}
	vs := m.VerifyState()
	return vs != nil && vs.State == format.VerifyFailed, nil
}

// syncFile is one file of a source snapshot, read and checked.
type syncFile struct {
	name string
	raw  []byte // nil: larger than syncKeep, streamed from the source
	size int64
	sum  [32]byte
	// same: the target has this file with identical bytes.
	same bool
}

// snapshot syncs one snapshot under its locks; a refused one returns an
// error wrapping lock.ErrBusy.
// Its phases: read the source manifest, look at what the target has, stop
// if that is the same, check the source files and copy the chunks they
// need, then write the files and the manifest last.
func (y *syncer) snapshot(ctx context.Context, gp groupPair, it syncItem) error {
	ssn := it.src.Snapshot
	tsn := ssn.InNS(gp.dst.NS)
	y.mu.Lock()
	done := y.done[tsn.Path()]
	y.mu.Unlock()
	if done {
		return nil
	}
	ctx, release, err := hold(ctx,
		storeLock{y.src, y.src.snapshotRequest(ssn, lock.Shared)},
		storeLock{y.dst, y.dst.snapshotRequest(tsn, lock.Exclusive)})
	if err != nil {
		return err
	}
	defer release()

	srcRaw, m, err := y.sourceManifest(ctx, ssn)
	if err != nil || m == nil {
		return err
	}
	old, err := y.targetFiles(ctx, tsn, it, m)
	if err != nil {
		return err
	}
	dstFinished := old.hasManifest
	sameManifest := dstFinished && bytes.Equal(old.manifest, srcRaw)
	dstHasLog := old.hasLog || (it.dst != nil && slices.Contains(it.dst.Files, clientLogName))
	if sameManifest && !it.corrupt && filesMatch(m, old.files) {
		if err := y.copyClientLog(ctx, ssn, tsn, it, dstHasLog); err != nil {
			return err
		}
		y.count(func(r *SyncResult) { r.SnapshotsPresent++; y.done[tsn.Path()] = true })
		y.dst.obs.logf("already synced %s", snapRef(tsn))
		return nil
	}

	files, refs, err := y.checkSourceFiles(ctx, ssn, m, old, dstFinished, it.corrupt)
	if err != nil || files == nil {
		return err
	}
	bad, inserted, err := y.copyChunks(ctx, refs, it.corrupt)
	if err != nil {
		return err
	}
	if len(bad) > 0 {
		y.fail(ssn, bad)
		return nil
	}

	unlock, err := y.writeSnapshot(ctx, ssn, tsn, files, srcRaw, dstFinished, sameManifest, inserted > 0)
	if err != nil {
		return err
	}
	defer unlock()
	if err := y.copyClientLog(ctx, ssn, tsn, it, dstHasLog); err != nil {
		return err
	}
	y.count(func(r *SyncResult) { r.Snapshots++; y.done[tsn.Path()] = true })
	y.dst.obs.logf("synced %s from %s %s", snapRef(tsn), y.src.name, nsRef(ssn.NS))
	y.progressMessage()
	return nil
}

// sourceManifest reads and checks the source snapshot's manifest. A nil
// manifest without an error: the snapshot is gone (pruned or moved since
// it was listed) or failed (recorded).
func (y *syncer) sourceManifest(ctx context.Context, ssn name.Snapshot) ([]byte, *format.Manifest, error) {
	srcRaw, err := backend.ReadFileMax(ctx, y.src.b, ssn.File(ManifestName), maxManifestFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if errors.Is(err, backend.ErrTooLarge) {
		y.fail(ssn, []string{"source manifest: " + err.Error()})
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("manifest of snapshot %s on store %q: %w", snapshotLabel(ssn), y.src.name, err)
	}
	m, err := format.ParseManifest(srcRaw)
	if err != nil {
		y.fail(ssn, []string{"source manifest: " + err.Error()})
		return nil, nil, nil
	}
	if reasons := manifestProblems(m, ssn); len(reasons) > 0 {
		y.fail(ssn, reasons)
		return nil, nil, nil
	}
	return srcRaw, m, nil
}

// targetFiles fetches the target's manifest and the files it may share
// with the source at once (one round trip on object storage); both the
// re-check and the comparison before writing use them. The listing was
// taken under the group lock, which every writer of the snapshot
// directory holds too: it is current. Without a listing of the target
// snapshot's files (object storage), every file it may have is asked for;
// missing ones cost a 404.
func (y *syncer) targetFiles(ctx context.Context, tsn name.Snapshot, it syncItem, m *format.Manifest) (*snapFiles, error) {
	var wantManifest, wantLog bool
	var names []format.FileInfo
	if it.dst != nil {
		known := it.dst.Files != nil
		wantManifest = it.dst.Finished || !known
		for _, f := range m.Files {
			if !known || slices.Contains(it.dst.Files, f.Filename) {
				names = append(names, f)
			}
		}
		wantLog = !known
	}
	return y.dst.readSnapFiles(ctx, tsn, wantManifest, wantLog, names, false, y.workers)
}

// checkSourceFiles reads and checks every source file and collects the
// chunks to copy. Nil files without an error: the snapshot failed
// (recorded).
func (y *syncer) checkSourceFiles(ctx context.Context, ssn name.Snapshot, m *format.Manifest, old *snapFiles, dstFinished, corrupt bool) ([]syncFile, []chunkRef, error) {
	srcs, err := y.src.readSnapFiles(ctx, ssn, false, false, m.Files, true, y.workers)
	if err != nil {
		return nil, nil, err
	}
	var files []syncFile
	var refs []chunkRef
	seen := map[Digest]bool{}
	var reasons []string
	for _, f := range m.Files {
		c, ok := srcs.files[f.Filename]
		if !ok {
			reasons = append(reasons, f.Filename+": missing in the source")
			continue
		}
		if c.why != "" {
			reasons = append(reasons, c.why)
			continue
		}
		prev, had := old.files[f.Filename]
		sf := syncFile{name: f.Filename, raw: c.raw, size: c.size, sum: c.sum,
			same: had && prev.why == "" && prev.sum == c.sum}
		// An identical index in a finished target snapshot had its chunks
		// when it was written; anything else gets its chunks checked.
		if !sf.same || !dstFinished || corrupt {
			for _, r := range c.refs {
				if !seen[r.digest] {
					seen[r.digest] = true
					refs = append(refs, r)
				}
			}
		}
		files = append(files, sf)
	}
	if len(reasons) > 0 {
		y.fail(ssn, reasons)
		return nil, nil, nil
	}
	if files == nil {
		files = []syncFile{} // a manifest listing no files: nothing to check
	}
	return files, refs, nil
}

// writeSnapshot writes the files that differ and the manifest last. A
// target snapshot that gets anything written (a new one, or a finished one
// that changes) is written under PBS's manifest lock, as every manifest
// write is, which unlock releases; held elsewhere, it returns an error
// wrapping lock.ErrBusy before anything is written.
func (y *syncer) writeSnapshot(ctx context.Context, ssn, tsn name.Snapshot, files []syncFile, srcRaw []byte, dstFinished, sameManifest, inserted bool) (unlock func(), err error) {
	unlock = func() {}
	changed := slices.IndexFunc(files, func(f syncFile) bool { return !f.same }) >= 0
	if !dstFinished || changed || !sameManifest {
		// Taken before anything of the snapshot changes. Busy: the
		// snapshot is retried, then skipped, unchanged.
		u, err := y.dst.lockManifest(ctx, tsn)
		if err != nil {
			return nil, err
		}
		unlock = u
	}
	fail := func(err error) (func(), error) {
		unlock()
		return nil, err
	}
	if dstFinished && changed && !sameManifest {
		// Unfinish the target snapshot first: its old manifest must never
		// vouch for the new files, not even after a crash halfway.
		if err := y.dst.b.Remove(ctx, tsn.File(ManifestName)); err != nil {
			return fail(fmt.Errorf("replace snapshot %s on store %q: %w", snapshotLabel(tsn), y.dst.name, err))
		}
		dstFinished = false
	}
	var toWrite []syncFile
	for _, f := range files {
		if !f.same {
			toWrite = append(toWrite, f)
		}
	}
	err = parallel(ctx, y.workers, len(toWrite), func(ctx context.Context, i int) error {
		f := toWrite[i]
		if err := y.copySnapFile(ctx, ssn, tsn, f); err != nil {
			return fmt.Errorf("write %s of snapshot %s on store %q: %w", f.name, snapshotLabel(tsn), y.dst.name, err)
		}
		return nil
	})
	if err != nil {
		return fail(err)
	}
	y.count(func(r *SyncResult) { r.FilesWritten += len(toWrite) })
	// The manifest goes last: only now does the snapshot look finished.
	if !dstFinished || !sameManifest {
		if inserted {
			// New chunks are not flushed one by one (see backend.Syncer);
			// they must be durable before the manifest vouches for them.
			if err := backend.Sync(ctx, y.dst.b); err != nil {
				return fail(fmt.Errorf("flush store %q: %w", y.dst.name, err))
			}
		}
		if err := y.dst.b.WriteFile(ctx, tsn.File(ManifestName), srcRaw); err != nil {
			return fail(fmt.Errorf("write manifest of snapshot %s on store %q: %w", snapshotLabel(tsn), y.dst.name, err))
		}
		y.count(func(r *SyncResult) { r.FilesWritten++ })
	}
	return unlock, nil
}

// manifestProblems checks that a manifest belongs to snap and names only
// files a snapshot may hold.
func manifestProblems(m *format.Manifest, snap name.Snapshot) []string {
	var out []string
	if m.BackupType != string(snap.Type) || m.BackupID != snap.ID || m.BackupTime != snap.Time.Unix() {
		out = append(out, fmt.Sprintf("manifest names %s/%s/%d, not this snapshot", m.BackupType, m.BackupID, m.BackupTime))
	}
	for _, f := range m.Files {
		if err := name.ValidateFileName(f.Filename); err != nil || f.Filename == ManifestName || strings.HasPrefix(f.Filename, ".") {
			out = append(out, fmt.Sprintf("manifest lists file %q, which a snapshot cannot hold", f.Filename))
			continue
		}
		if !isBlobFile(f.Filename) && !strings.HasSuffix(f.Filename, ".fidx") && !strings.HasSuffix(f.Filename, ".didx") {
			out = append(out, fmt.Sprintf("manifest lists %q: not an index or blob", f.Filename))
		}
	}
	return out
}

// copyClientLog copies the client log when the source has it and the
// target does not, as PBS does (it is not part of the manifest).
func (y *syncer) copyClientLog(ctx context.Context, ssn, tsn name.Snapshot, it syncItem, dstHasLog bool) error {
	if dstHasLog || (it.src.Files != nil && !slices.Contains(it.src.Files, clientLogName)) {
		return nil
	}
	raw, err := backend.ReadFileMax(ctx, y.src.b, ssn.File(clientLogName), maxManifestFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if errors.Is(err, backend.ErrTooLarge) {
		y.warn(fmt.Sprintf("%s: client log not copied: %v", snapshotLabel(ssn), err))
		return nil
	}
	if err != nil {
		return fmt.Errorf("read client log of %s on store %q: %w", snapshotLabel(ssn), y.src.name, err)
	}
	if _, err := format.InspectBlob(raw); err != nil {
		y.warn(fmt.Sprintf("%s: client log not copied: %v", snapshotLabel(ssn), err))
		return nil
	}
	if err := y.dst.b.WriteFile(ctx, tsn.File(clientLogName), raw); err != nil {
		return fmt.Errorf("write client log of %s on store %q: %w", snapshotLabel(tsn), y.dst.name, err)
	}
	y.count(func(r *SyncResult) { r.FilesWritten++ })
	return nil
}

// copyChunks makes sure the target has every chunk of refs, copying the
// missing ones from the source, verified, by a pool of workers. With
// verifyTarget the target's copies are read and checked too, and corrupt
// ones are renamed .bad and replaced. It returns the reasons why chunks
// could not be provided (corrupt or missing in the source) and how many
// it inserted.
func (y *syncer) copyChunks(ctx context.Context, refs []chunkRef, verifyTarget bool) ([]string, int, error) {
	var todo []chunkRef
	var reasons []string
	maxLen := 0
	y.mu.Lock()
	for _, r := range refs {
		if why, ok := y.bad[r.digest]; ok {
			reasons = append(reasons, why)
			continue
		}
		if _, ok := y.present[r.digest]; ok && !verifyTarget {
			continue
		}
		todo = append(todo, r)
		maxLen = max(maxLen, int(min(r.size, format.MaxBlobSize)))
	}
	y.mu.Unlock()
	if len(reasons) > 0 {
		return reasons, 0, nil // the snapshot fails anyway
	}
	if len(todo) > 0 {
		if err := y.registerWriter(ctx); err != nil {
			return nil, 0, err
		}
	}
	// The largest chunk must fit the rate limiter's bucket in one piece;
	// the header and a non-shrinking compression add at most 64 bytes.
	y.lim.grow(maxLen + 64)
	// Chunk files sit in digest order in their prefix directories; that
	// order keeps a filesystem's directory and inode access local.
	sort.Slice(todo, func(i, j int) bool { return bytes.Compare(todo[i].digest[:], todo[j].digest[:]) < 0 })

	var mu sync.Mutex
	inserted := 0
	err := parallel(ctx, y.workers, len(todo), func(ctx context.Context, i int) error {
		// A slot first, then buffers: memory stays bounded by the slots
		// however many groups wait for one.
		select {
		case y.slots <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		b, _ := y.bufs.Get().(*chunkBuffers)
		if b == nil {
			b = &chunkBuffers{chk: &chunkChecker{blob: format.NewBlobStreamer(verifyReadBuffer), hash: sha256.New()}}
		}
		why, ins, err := y.chunk(ctx, todo[i], verifyTarget, b)
		y.bufs.Put(b)
		<-y.slots
		mu.Lock()
		if why != "" {
			reasons = append(reasons, why)
		}
		if ins {
			inserted++
		}
		mu.Unlock()
		return err
	})
	if err != nil {
		return nil, 0, err
	}
	sort.Strings(reasons)
	return reasons, inserted, nil
}

// registerWriter registers the sync as a writer on the target once,
// before the first chunk is inserted or touched, as a backup does: GC then
// keeps every chunk accessed since (shortly before) writerStart until this
// sync has written the indexes that reference them, however long that
// takes. Not earlier: a sync with nothing to copy writes nothing at all.
func (y *syncer) registerWriter(ctx context.Context) error {
	y.regMu.Lock()
	defer y.regMu.Unlock()
	if y.writerDone != nil {
		return nil
	}
	start := time.Now()
	done, err := y.dst.registerWriter(ctx)
	if err != nil {
		return err
	}
	y.writerStart, y.writerDone = start, done
	return nil
}

// chunkBuffers are a chunk worker's read buffer and streaming checker.
type chunkBuffers struct {
	raw []byte
	chk *chunkChecker
}

// chunk provides one chunk in the target. It returns a reason when the
// source cannot provide it, an error when the task cannot go on, and
// whether it inserted the chunk.
func (y *syncer) chunk(ctx context.Context, r chunkRef, verifyTarget bool, b *chunkBuffers) (string, bool, error) {
	// sharedAt: when the target was known to have the chunk (0: not).
	var sharedAt int64
	release, why, err := y.claim(ctx, r.digest, verifyTarget)
	if release == nil {
		return why, false, err
	}
	defer release()
	p := ChunkPath(r.digest)
	if verifyTarget {
		raw, err := readChunkFile(ctx, y.dst.b, p, b.raw)
		b.raw = raw
		var why string
		var bad bool
		if err == nil {
			why, bad, err = y.checkChunk(ctx, raw, r, b.chk)
			if err != nil {
				return "", false, err
			}
			if why != "" && !bad {
				return why, false, nil // the index is wrong, not the chunk
			}
		} else if errors.Is(err, errChunkTooLarge) {
			err, bad = nil, true
		}
		switch {
		case err == nil:
			if !bad {
				// Good: touch it as below (its access time is unknown).
				err := y.dst.b.Touch(ctx, p)
				if err == nil {
					y.markPresent(r.digest, int64(len(raw)), true)
					return "", false, nil
				}
				if !errors.Is(err, fs.ErrNotExist) {
					return "", false, fmt.Errorf("touch chunk %s on store %q: %w", r.digest, y.dst.name, err)
				}
				break // gone meanwhile: copy it
			}
			// Set the corrupt copy aside so a good one can take its name.
			if _, err := y.dst.RenameCorruptChunk(ctx, r.digest); err != nil {
				return "", false, err
			}
			y.mu.Lock()
			y.res.ChunksRenamed++
			y.mu.Unlock()
		case errors.Is(err, fs.ErrNotExist):
		default:
			return "", false, fmt.Errorf("read chunk %s on store %q: %w", r.digest, y.dst.name, err)
		}
	} else {
		known, publish, err := y.sharedPresent(ctx, r.digest)
		if err != nil {
			return "", false, err
		}
		if known {
			y.markPresent(r.digest, int64(r.size), false)
			return "", false, nil
		}
		defer func() { publish(sharedAt) }()
		fi, err := y.dst.b.Stat(ctx, p)
		if err == nil {
			// A chunk accessed before this sync registered as a writer
			// could be swept by a GC whose marking misses the index about
			// to reference it: touch it, as PBS and InsertChunk do.
			// Later ones are protected by the registration.
			touched := false
			if fi.AccessTime.Before(y.writerStart) {
				if err = y.dst.b.Touch(ctx, p); err == nil {
					touched = true
				}
			}
			if err == nil {
				sharedAt = fi.AccessTime.UnixMilli()
				if touched {
					sharedAt = time.Now().UnixMilli()
				}
				y.markPresent(r.digest, fi.Size, touched)
				return "", false, nil
			}
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", false, fmt.Errorf("check chunk %s on store %q: %w", r.digest, y.dst.name, err)
		}
		// Missing (or gone between Stat and Touch): copy it.
	}

	raw, err := readChunkFile(ctx, y.src.b, p, b.raw)
	b.raw = raw
	if errors.Is(err, fs.ErrNotExist) {
		return y.markBad(r.digest, fmt.Sprintf("chunk %s missing in the source", r.digest)), false, nil
	}
	if errors.Is(err, errChunkTooLarge) {
		return y.markBad(r.digest, fmt.Sprintf("chunk %s corrupt: %v (in the source)", r.digest, err)), false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("read chunk %s on store %q: %w", r.digest, y.src.name, err)
	}
	if err := y.lim.wait(ctx, len(raw)); err != nil {
		return "", false, err
	}
	why, bad, err := y.checkChunk(ctx, raw, r, b.chk)
	if err != nil {
		return "", false, err
	}
	if bad {
		return y.markBad(r.digest, why+" (in the source)"), false, nil
	}
	if why != "" {
		return why, false, nil // the index is wrong, not the chunk
	}
	inserted, err := y.dst.InsertChunk(ctx, r.digest, raw)
	if err != nil {
		return "", false, err
	}
	sharedAt = time.Now().UnixMilli()
	if !inserted {
		// Another writer stored it meanwhile; InsertChunk touched it.
		y.markPresent(r.digest, int64(len(raw)), true)
		return "", false, nil
	}
	y.mu.Lock()
	y.present[r.digest] = struct{}{}
	y.res.Chunks++
	y.res.Bytes += int64(len(raw))
	y.mu.Unlock()
	y.dst.obs.syncChunk("copied", int64(len(raw)))
	y.progressMessage()
	return "", true, nil
}

// sharedPresent asks the job's other shards about chunk d: known means a
// shard of this job found it in the target, or put it there, since this
// sync registered as a writer (so no touch is due). Otherwise d is claimed
// for this shard until publish, which tells the others whether it is in
// the target now; a claim another shard holds is waited for.
func (y *syncer) sharedPresent(ctx context.Context, d Digest) (known bool, publish func(at int64), err error) {
	if y.req.Share == nil {
		return false, func(int64) {}, nil
	}
	for {
		cl, err := y.req.Share.Claim(ctx, []Digest{d})
		if err != nil {
			return false, nil, fmt.Errorf("sync: shared chunk set: %w", err)
		}
		switch c := cl[0]; {
		case c.Done:
			// Known before this sync registered: touch it as usual.
			return c.Verdict.At >= y.writerStart.UnixMilli(), func(int64) {}, nil
		case c.Mine:
			return false, func(at int64) {
				// Code 0 hands the claim back: the chunk is not there.
				v := SharedVerdict{Digest: d, At: at}
				if at > 0 {
					v.Code = 1
				}
				// A failed publish only costs another shard a Stat.
				_ = y.req.Share.Publish(context.WithoutCancel(ctx), []SharedVerdict{v})
			}, nil
		}
		select {
		case <-ctx.Done():
			return false, nil, ctx.Err()
		case <-time.After(sharePoll):
		}
	}
}

// claim makes the caller the one worker providing chunk d. It returns a
// nil release when there is nothing left to do: another worker provided
// the chunk meanwhile (or found it bad: why), or ctx ended (err).
func (y *syncer) claim(ctx context.Context, d Digest, verifyTarget bool) (release func(), why string, err error) {
	for {
		y.mu.Lock()
		if why, ok := y.bad[d]; ok {
			y.mu.Unlock()
			return nil, why, nil
		}
		if _, ok := y.present[d]; ok && !verifyTarget {
			y.mu.Unlock()
			return nil, "", nil
		}
		wait, busy := y.inflight[d]
		if !busy {
			ch := make(chan struct{})
			y.inflight[d] = ch
			y.mu.Unlock()
			return func() {
				y.mu.Lock()
				delete(y.inflight, d)
				y.mu.Unlock()
				close(ch)
			}, "", nil
		}
		y.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, "", ctx.Err()
		}
	}
}

// checkChunk checks a chunk file held in raw as verify does: CRC,
// decoding (streamed, no more than the index says), SHA-256 equal to its
// name, length as the index says. bad: the chunk itself is corrupt;
// otherwise a reason means the index lists a good chunk with another
// length. Encrypted chunks can only have their CRC checked.
func (y *syncer) checkChunk(ctx context.Context, raw []byte, r chunkRef, c *chunkChecker) (why string, bad bool, err error) {
	st, n, err := checkChunkStream(ctx, y.decoders, c, memChunk(raw), r)
	switch {
	case errors.Is(err, errChunkRead):
		return "", false, err // only the context can fail a read from memory
	case err != nil:
		return fmt.Sprintf("chunk %s corrupt: %v", r.digest, err), true, nil
	case st == chunkOK && uint64(n) != r.size:
		return sizeMismatch(r, n), false, nil
	}
	return "", false, nil
}

func (y *syncer) markPresent(d Digest, size int64, touched bool) {
	y.mu.Lock()
	y.present[d] = struct{}{}
	y.res.ChunksPresent++
	if touched {
		y.res.ChunksTouched++
	}
	y.mu.Unlock()
	y.dst.obs.syncChunk("present", size)
}

func (y *syncer) markBad(d Digest, why string) string {
	y.mu.Lock()
	y.bad[d] = why
	y.mu.Unlock()
	return why
}

func (y *syncer) progressMessage() {
	if y.rep == nil {
		return
	}
	y.mu.Lock()
	msg := fmt.Sprintf("%d snapshot(s) synced, %d chunk(s) copied (%.1f MiB), %d present",
		y.res.Snapshots, y.res.Chunks, float64(y.res.Bytes)/(1<<20), y.res.ChunksPresent)
	y.mu.Unlock()
	y.rep.message(msg)
}

// removeVanishedSnapshots removes, in a group whose lock is held, the
// target snapshots the source no longer has; protected ones stay.
func (y *syncer) removeVanishedSnapshots(ctx context.Context, srcSnaps, dstSnaps []SnapshotInfo) error {
	inSource := map[int64]bool{}
	for _, s := range srcSnaps {
		inSource[s.Time.Unix()] = true
	}
	for _, d := range dstSnaps {
		if inSource[d.Time.Unix()] {
			continue
		}
		if err := y.removeSnapshot(ctx, d.Snapshot, false); err != nil {
			return err
		}
	}
	return nil
}

// removeSnapshot removes a vanished target snapshot under its exclusive
// lock (withParents: after the namespace and group locks); busy ones are
// skipped, protected ones kept.
func (y *syncer) removeSnapshot(ctx context.Context, snap name.Snapshot, withParents bool) error {
	reqs := []lock.Request{y.dst.snapshotRequest(snap, lock.Exclusive)}
	if withParents {
		reqs = append([]lock.Request{y.dst.nsRequest(snap.NS, lock.Shared), y.dst.groupRequest(snap.Group)}, reqs...)
	}
	ctx, release, err := hold(ctx, y.dst.on(reqs...)...)
	if errors.Is(err, lock.ErrBusy) {
		y.skip(snapshotLabel(snap), "vanished snapshot not removed: "+err.Error(), "busy")
		return nil
	}
	if err != nil {
		return err
	}
	defer release()
	info, err := y.dst.SnapshotInfo(ctx, snap)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if info.Protected {
		y.warn(fmt.Sprintf("vanished snapshot %s kept: it is protected", snapshotLabel(snap)))
		return nil
	}
	if err := y.dst.removeSnapshotFiles(ctx, snap); err != nil {
		if errors.Is(err, lock.ErrBusy) { // its manifest lock
			y.skip(snapshotLabel(snap), "vanished snapshot not removed: "+err.Error(), "busy")
			return nil
		}
		return err
	}
	y.count(func(r *SyncResult) { r.RemovedSnapshots++ })
	y.dst.obs.logf("removed vanished %s", snapRef(snap))
	return nil
}

// removeVanished removes target groups in scope that the source no longer
// has (only those matching the filters and owned by the sync's owner),
// then target namespaces in scope that vanished, deepest first, if empty.
func (y *syncer) removeVanished(ctx context.Context, pairs []nsPair, groups []groupPair) error {
	mapped := map[string]bool{}
	for _, p := range pairs {
		mapped[p.dst.String()] = true
	}
	inSource := map[string]bool{}
	for _, gp := range groups {
		inSource[gp.dst.Path()] = true
	}
	nss, err := y.dst.ListNamespaces(ctx, y.req.NS, y.req.MaxDepth)
	if err != nil {
		return err
	}
	for _, ns := range nss {
		gs, err := y.dst.ListGroups(ctx, ns)
		if err != nil {
			return err
		}
		for _, g := range gs {
			if err := ctx.Err(); err != nil {
				return err
			}
			if inSource[g.Path()] || !name.ApplyFilters(g, y.req.Filters) {
				continue
			}
			owner, err := y.dst.GroupOwner(ctx, g)
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			if owner != y.req.Owner {
				continue // not ours to remove, as in PBS
			}
			if err := y.removeGroup(ctx, g); err != nil {
				return err
			}
		}
	}
	slices.SortStableFunc(nss, func(a, b name.Namespace) int { return cmp.Compare(b.Depth(), a.Depth()) })
	for _, ns := range nss {
		if mapped[ns.String()] {
			continue
		}
		err := y.dst.RemoveNamespaceLocked(ctx, ns)
		switch {
		case err == nil:
			y.count(func(r *SyncResult) { r.RemovedNamespaces++ })
		case errors.Is(err, backend.ErrNotEmpty):
			y.warn(fmt.Sprintf("vanished namespace %q kept: %v", ns, err))
		case errors.Is(err, lock.ErrBusy):
			y.skip(fmt.Sprintf("namespace %q", ns), "vanished namespace not removed: "+err.Error(), "busy")
		case errors.Is(err, ErrNotFound):
		default:
			return err
		}
	}
	return nil
}

// removeGroup removes a vanished target group's snapshots (protected ones
// stay, and with them the group).
func (y *syncer) removeGroup(ctx context.Context, g name.Group) error {
	ctx, release, err := hold(ctx, y.dst.on(y.dst.nsRequest(g.NS, lock.Shared), y.dst.groupRequest(g))...)
	if errors.Is(err, lock.ErrBusy) {
		y.skip(groupLabel(g), "vanished group not removed: "+err.Error(), "busy")
		return nil
	}
	if err != nil {
		return err
	}
	defer release()
	snaps, err := y.dst.ListSnapshots(ctx, g)
	if err != nil {
		return err
	}
	for _, s := range snaps {
		if err := y.removeSnapshot(ctx, s.Snapshot, false); err != nil {
			return err
		}
	}
	if err := y.dst.removeGroupIfEmpty(ctx, g); err != nil {
		return err
	}
	if ok, err := y.dst.GroupExists(ctx, g); err != nil {
		return err
	} else if !ok {
		y.count(func(r *SyncResult) { r.RemovedGroups++ })
	}
	return nil
}
