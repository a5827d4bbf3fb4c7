package datastore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
)

// Moves (DESIGN §4 move-group, move-namespace).
//
// A group moves snapshot by snapshot, oldest first, so that at any moment
// the target holds the older part of the group and the source the newer
// one: a crash leaves a time-ordered split that a rerun of the same request
// merges (the merge precondition "every target snapshot is older than the
// oldest source snapshot" holds for exactly that split).
//
// On a filesystem a snapshot moves with one rename(2), so it is always in
// exactly one place. On object storage it is copied (data files first, the
// manifest last) and then deleted at the source (manifest first), so a crash
// leaves at worst a complete copy at the target next to an unfinished-looking
// leftover, or a partial copy next to the intact source; a rerun recognises
// both (see planGroup and copyThenDelete).

const (
	// moveBatch bounds the snapshot locks (file descriptors, Redis keys)
	// held at once, and the snapshots per move-journal entry.
	moveBatch = 512
	// moveCopyParallel bounds the copy and delete requests in flight for
	// the whole operation on object storage. More only queues on the server:
	// measured on versitygw, 16–32 is as fast as 64 and gentler.
	moveCopyParallel = 32
	// moveGroupParallel is how many groups of a move-namespace move (or are
	// checked) at once: on object storage it keeps the copy slots busy
	// across each group's listing, journal writes and deletes, which are
	// round trips; on a filesystem it overlaps journal fsyncs.
	moveGroupParallelS3 = 8
	moveGroupParallelFS = 4
	// moveStateDir holds a record per group move that created its target
	// group without merge permission, so a rerun can tell its own partial
	// target from a group that existed before.
	moveStateDir = ".pbsq/move-state"
)

// MoveGroupRequest moves one backup group into another namespace.
type MoveGroupRequest struct {
	// Group is the source group; Group.NS is the source namespace.
	Group    name.Group
	TargetNS name.Namespace
	// MergeGroup allows moving into an existing target group (owners must
	// match and every target snapshot must be older than the moved ones).
	MergeGroup bool
}

// MoveNamespaceRequest moves a namespace subtree to a new place.
type MoveNamespaceRequest struct {
	NS       name.Namespace
	TargetNS name.Namespace
	// MaxDepth is how many levels below NS are moved (< 0: all); deeper
	// namespaces stay where they are, and so do their ancestors.
	MaxDepth int
	// DeleteSource removes the emptied source namespaces.
	DeleteSource bool
	// MergeGroups allows groups to merge into existing target groups.
	MergeGroups bool
}

// KeptNamespace is a source namespace left in place, with the reason.
type KeptNamespace struct {
	NS     string `json:"ns"`
	Reason string `json:"reason"`
}

// MoveResult is the outcome of MoveGroup and MoveNamespace.
type MoveResult struct {
	// Backend is "fs" (rename per snapshot) or "s3" (copy and delete).
	Backend     string `json:"backend"`
	GroupsTotal int    `json:"groups-total"`
	// Groups counts groups moved completely (source group removed).
	Groups    int `json:"groups"`
	Snapshots int `json:"snapshots"`
	// ObjectsCopied and ObjectsDeleted count files on object storage.
	ObjectsCopied  int64 `json:"objects-copied"`
	ObjectsDeleted int64 `json:"objects-deleted"`
	// MergedGroups are target groups that existed and received snapshots,
	// as "<ns>:<type>/<id>".
	MergedGroups      []string        `json:"merged-groups"`
	Skipped           []Skipped       `json:"skipped"`
	NamespacesCreated []string        `json:"namespaces-created"`
	NamespacesRemoved []string        `json:"namespaces-removed"`
	NamespacesKept    []KeptNamespace `json:"namespaces-kept"`
	// Complete is true when everything asked for was moved.
	Complete bool `json:"complete"`
	// Partial explains what is left when the move is not complete.
	Partial string  `json:"partial,omitempty"`
	Seconds float64 `json:"seconds"`
}

// Outcome folds the result into ok or skipped.
func (r *MoveResult) Outcome() error {
	if len(r.Skipped) > 0 {
		return fmt.Errorf("move: %d item(s) skipped (%s first): %w", len(r.Skipped), r.Skipped[0].Item, ErrSkipped)
	}
	return nil
}

// mover is the state of one move operation.
type mover struct {
	s       *Store
	op      string               // move-group or move-namespace
	kind    string               // fs or s3
	atomic  bool                 // rename(2) per snapshot
	batchRm backend.BatchRemover // nil: files are removed one by one
	sem     chan struct{}        // copy/delete requests in flight (object storage)
	rep     *reporter
	// groupParallel is how many groups move (or are checked) at once.
	groupParallel int
	// listed and targetGroups are what a move-namespace's check phase
	// listed (moves in waves): the source groups with their objects and
	// the groups that existed at the targets. With both namespaces locked
	// exclusively (lockedBothSides) nothing else changes them, so the
	// waves plan from these instead of listing every group again.
	listed          map[name.Group]*groupListing
	targetGroups    map[name.Group]bool
	lockedBothSides bool
	// newTarget: the target namespace did not exist when checked, so no
	// target namespace or group needs listing or checking (object
	// storage; under the target's exclusive lock nothing else puts one
	// there, and the waves' group locks cover a move without locks).
	newTarget bool

	mu      sync.Mutex // guards res
	res     *MoveResult
	copied  atomic.Int64
	deleted atomic.Int64
}

func (s *Store) newMover(op string, progress ProgressFunc) *mover {
	m := &mover{
		s: s, op: op,
		atomic: s.b.Features().AtomicRename,
		sem:    make(chan struct{}, moveCopyParallel),
		rep:    newReporter(progress, "check", 0),
		res: &MoveResult{
			MergedGroups: []string{}, Skipped: []Skipped{}, NamespacesCreated: []string{},
			NamespacesRemoved: []string{}, NamespacesKept: []KeptNamespace{},
		},
	}
	m.kind = s.b.Features().Kind
	m.res.Backend = m.kind
	m.batchRm, _ = s.b.(backend.BatchRemover)
	m.groupParallel = moveGroupParallelS3
	if m.atomic {
		m.groupParallel = moveGroupParallelFS
	}
	return m
}

// ---- move-group

// MoveGroup moves a backup group into another namespace (DESIGN §4). Every
// precondition is checked under the locks before anything changes; a
// refusal wraps ErrInvalid (or ErrNotFound) and leaves the store as it was.
// Locks: shared on both namespaces, exclusive on both groups (a busy one
// fails the whole move with lock.ErrBusy), exclusive on the snapshots in
// batches. A snapshot still busy after one retry stops the move there: the
// older snapshots are moved, it and the newer ones stay, reported as
// skipped. On error the result (if not nil) says what was done.
func (s *Store) MoveGroup(ctx context.Context, req MoveGroupRequest, progress ProgressFunc) (res *MoveResult, err error) {
	start := time.Now()
	src := req.Group
	if _, err := name.NewGroup(src.NS, string(src.Type), src.ID); err != nil {
		return nil, err
	}
	if src.NS == req.TargetNS {
		return nil, invalidf("move-group: group %s is already in namespace %q (ns and target-ns are equal)", src, src.NS)
	}
	dst := src.InNS(req.TargetNS)
	m := s.newMover("move-group", progress)
	unlock, err := s.beginWrite(ctx, true) // pbsinuse.go, processlock.go
	if err != nil {
		return nil, fmt.Errorf("move-group %s: %w", src, err)
	}
	defer unlock()

	reqs := []lock.Request{
		s.nsRequest(src.NS, lock.Shared), s.nsRequest(dst.NS, lock.Shared),
		s.groupRequest(src), s.groupRequest(dst),
	}
	lock.SortRequests(reqs)
	ctx, release, err := hold(ctx, s.on(reqs...)...)
	if err != nil {
		return nil, fmt.Errorf("move-group %s from %q to %q: %w", src, src.NS, dst.NS, err)
	}
	defer release()

	if ok, err := s.NamespaceExists(ctx, src.NS); err != nil {
		return nil, err
	} else if !ok {
		return nil, fmt.Errorf("move-group: source namespace %q on store %q: %w", src.NS, s.name, ErrNotFound)
	}
	if ok, err := s.NamespaceExists(ctx, dst.NS); err != nil {
		return nil, err
	} else if !ok {
		return nil, fmt.Errorf("%w: move-group: target namespace %q does not exist on store %q (create it with `pbsq ns create`): %w",
			name.ErrInvalid, dst.NS, s.name, ErrNotFound)
	}
	p, err := m.planGroup(ctx, src, dst.NS, req.MergeGroup)
	if err != nil {
		return nil, err
	}

	// Checks passed: from here on the result reports what was done.
	m.res.GroupsTotal = 1
	defer func() { m.finish(start, err) }()
	m.rep.phase("move", int64(len(p.snaps)))
	err = m.execGroup(ctx, p)
	if errors.Is(err, lock.ErrBusy) {
		// Retry the rest once; the window has already been waited.
		p, err = m.planGroup(ctx, src, dst.NS, req.MergeGroup)
		if err == nil {
			err = m.execGroup(ctx, p)
		}
		if errors.Is(err, lock.ErrBusy) {
			m.skip(groupLabel(src), err, "busy")
			err = nil
		}
	}
	return m.res, err
}
