package datastore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/format"
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
// both (see planGroup and copyBatch).

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

// batchRemover is implemented by backends that delete many files in a few
// requests (S3 DeleteObjects); without it files are removed one by one.
type batchRemover interface {
	RemoveFiles(ctx context.Context, names []string) error
}

// mover is the state of one move operation.
type mover struct {
	s       *Store
	op      string // move-group or move-namespace
	kind    string // fs or s3
	atomic  bool   // rename(2) per snapshot
	batchRm batchRemover
	sem     chan struct{} // copy/delete requests in flight (object storage)
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
	m.batchRm, _ = s.b.(batchRemover)
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
	ctx, release, err := s.lockChain(ctx, reqs)
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

// ---- move-namespace

// moveJob is one group of a move-namespace.
type moveJob struct {
	seq   int
	src   name.Group
	dstNS name.Namespace
	// snaps and objects are what the check phase listed (object storage
	// only), to size the waves.
	snaps, objects int
}

// MoveNamespace moves the namespace NS with its groups and child
// namespaces (down to MaxDepth) to TargetNS (DESIGN §4). Preconditions are
// checked for every group before anything changes. Locks: exclusive on the
// source and target namespaces (a busy one fails the move with
// lock.ErrBusy); then per group its exclusive group locks and snapshot locks,
// taken within the window: busy groups are set aside, retried once at the
// end, and reported as skipped, and their source namespaces are kept.
func (s *Store) MoveNamespace(ctx context.Context, req MoveNamespaceRequest, progress ProgressFunc) (res *MoveResult, err error) {
	start := time.Now()
	src, dst := req.NS, req.TargetNS
	switch {
	case src.IsRoot():
		return nil, invalidf("move-namespace: the root namespace cannot be moved")
	case src == dst:
		return nil, invalidf("move-namespace: ns and target-ns are both %q", src)
	case src.Contains(dst):
		return nil, invalidf("move-namespace: target-ns %q lies inside the source namespace %q", dst, src)
	}
	if req.MaxDepth > name.MaxNamespaceDepth {
		return nil, invalidf("move-namespace: max-depth %d exceeds the limit of %d levels", req.MaxDepth, name.MaxNamespaceDepth)
	}
	m := s.newMover("move-namespace", progress)
	unlock, err := s.beginWrite(ctx, true) // pbsinuse.go, processlock.go
	if err != nil {
		return nil, fmt.Errorf("move-namespace %q: %w", src, err)
	}
	defer unlock()

	ctx, release, err := s.lockChain(ctx, moveNamespaceLocks(s, src, dst))
	if err != nil {
		return nil, fmt.Errorf("move-namespace %q to %q: %w", src, dst, err)
	}
	defer release()

	// A root target cannot be locked (moveNamespaceLocks): then only
	// the group locks protect the target side.
	m.lockedBothSides = s.locks != nil && !dst.IsRoot()
	nss, targets, jobs, err := m.checkNamespaceMove(ctx, req)
	if err != nil {
		return nil, err
	}

	// Checks passed: from here on the result reports what was done.
	m.res.GroupsTotal = len(jobs)
	defer func() { m.finish(start, err) }()

	m.rep.phase("create namespaces", int64(len(targets)))
	if err := m.createNamespaces(ctx, targets); err != nil {
		return m.res, err
	}

	m.rep.phase("move", int64(len(jobs)))
	var aside []busyJob
	switch {
	case m.canWave():
		aside, err = m.runWaves(ctx, jobs, req.MergeGroups)
	case m.atomic:
		aside, err = m.runFSBatches(ctx, jobs, req.MergeGroups)
	default:
		aside, err = m.runGroups(ctx, jobs, req.MergeGroups, m.groupParallel)
	}
	if err != nil {
		return m.res, err
	}
	if len(aside) > 0 {
		m.rep.message(fmt.Sprintf("retrying %d busy group(s)", len(aside)))
		retry := make([]moveJob, len(aside))
		for i, j := range aside {
			retry[i] = j.moveJob
		}
		again, err := m.runGroups(ctx, retry, req.MergeGroups, 1)
		if err != nil {
			return m.res, err
		}
		for _, j := range again {
			m.skip(groupLabel(j.src), j.busy, "busy")
		}
	}
	// Source namespaces holding skipped groups stay, with their ancestors.
	keep := map[name.Namespace]int{}
	for _, sk := range m.res.Skipped {
		if ns, _, ok := strings.Cut(sk.Item, ":"); ok {
			if n, err := name.ParseNamespace(ns); err == nil {
				keep[n]++
			}
		}
	}

	m.rep.phase("remove source namespaces", int64(len(nss)))
	err = m.removeSourceNamespaces(ctx, nss, keep, req.DeleteSource)
	return m.res, err
}

// moveNamespaceLocks are the exclusive namespace locks of a move-namespace.
// A target that contains the source (moving a/b up into a) is locked alone:
// its exclusive lock covers the source, and locking the source too would
// conflict with it (a/b takes a shared lock on a). A root target cannot be
// locked; the group locks then protect the target side.
func moveNamespaceLocks(s *Store, src, dst name.Namespace) []lock.Request {
	switch {
	case dst.IsRoot():
		return []lock.Request{s.nsRequest(src, lock.Exclusive)}
	case dst.Contains(src):
		return []lock.Request{s.nsRequest(dst, lock.Exclusive)}
	}
	reqs := []lock.Request{s.nsRequest(src, lock.Exclusive), s.nsRequest(dst, lock.Exclusive)}
	lock.SortRequests(reqs)
	return reqs
}

// checkNamespaceMove checks every precondition of a move-namespace and
// returns the source namespaces (parents first), their targets and the
// groups to move. It changes nothing.
func (m *mover) checkNamespaceMove(ctx context.Context, req MoveNamespaceRequest) ([]name.Namespace, []name.Namespace, []moveJob, error) {
	s := m.s
	src, dst := req.NS, req.TargetNS
	if ok, err := s.NamespaceExists(ctx, src); err != nil {
		return nil, nil, nil, err
	} else if !ok {
		return nil, nil, nil, fmt.Errorf("move-namespace: source namespace %q on store %q: %w", src, s.name, ErrNotFound)
	}
	if !dst.IsRoot() {
		if ok, err := s.NamespaceExists(ctx, dst.Parent()); err != nil {
			return nil, nil, nil, err
		} else if !ok {
			return nil, nil, nil, fmt.Errorf("%w: move-namespace: the parent %q of target-ns %q does not exist on store %q (create it first): %w",
				name.ErrInvalid, dst.Parent(), dst, s.name, ErrNotFound)
		}
	}
	nss, err := s.ListNamespaces(ctx, src, req.MaxDepth)
	if err != nil {
		return nil, nil, nil, err
	}
	deepest := src
	for _, ns := range nss {
		if ns.Depth() > deepest.Depth() {
			deepest = ns
		}
	}
	if d := deepest.Depth() - src.Depth() + dst.Depth(); d > name.MaxNamespaceDepth {
		return nil, nil, nil, invalidf("move-namespace: moving %q to %q would put its namespace %q at depth %d; the limit is %d (lower max-depth or choose a shallower target)",
			src, dst, deepest, d, name.MaxNamespaceDepth)
	}
	inSource := make(map[name.Namespace]bool, len(nss))
	for _, ns := range nss {
		inSource[ns] = true
	}
	targets := make([]name.Namespace, len(nss))
	for i, ns := range nss {
		t, err := name.Rebase(ns, src, dst)
		if err != nil {
			return nil, nil, nil, invalidf("move-namespace: namespace %q cannot move below %q: %v", ns, dst, err)
		}
		if inSource[t] {
			// Only possible when the target is an ancestor of the source.
			return nil, nil, nil, invalidf("move-namespace: %q would move to %q, which is itself being moved; move the subtree elsewhere first", ns, t)
		}
		targets[i] = t
	}

	jobs, targetGroups, err := m.listMoveJobs(ctx, nss, targets)
	if err != nil {
		return nil, nil, nil, err
	}
	m.rep.phase("check", int64(len(jobs)))
	checks := make([]error, len(jobs))
	err = m.forEach(ctx, len(jobs), m.groupParallel, func(ctx context.Context, i int) error {
		if targetGroups != nil && !targetGroups[jobs[i].src.InNS(jobs[i].dstNS)] {
			m.rep.add(1) // a new target group needs no checks
			return nil
		}
		checks[i] = m.checkGroup(ctx, jobs[i].src, jobs[i].dstNS, req.MergeGroups)
		m.rep.add(1)
		if checks[i] != nil && !errors.Is(checks[i], name.ErrInvalid) {
			return checks[i]
		}
		return nil
	})
	if err != nil {
		return nil, nil, nil, err
	}
	var refusals []string
	for _, err := range checks {
		if err != nil {
			refusals = append(refusals, err.Error())
		}
	}
	if len(refusals) > 0 {
		shown := refusals[:min(len(refusals), 5)]
		more := ""
		if len(refusals) > len(shown) {
			more = fmt.Sprintf("; and %d more", len(refusals)-len(shown))
		}
		// The sentinel is already in each message; keep it once.
		for i := range shown {
			shown[i] = strings.TrimPrefix(shown[i], name.ErrInvalid.Error()+": ")
		}
		return nil, nil, nil, invalidf("move-namespace %q to %q refused, nothing was changed: %d group(s) cannot move: %s%s",
			src, dst, len(refusals), strings.Join(shown, "; "), more)
	}
	return nss, targets, jobs, nil
}

// listMoveJobs lists the groups of the source namespaces nss, moving to
// targets. For moves in waves it also sizes them (one flat listing per
// namespace and type) and returns the groups existing at the targets.
func (m *mover) listMoveJobs(ctx context.Context, nss, targets []name.Namespace) ([]moveJob, map[name.Group]bool, error) {
	s := m.s
	wave := m.canWave()
	perNS := make([][]moveJob, len(nss))
	var targetGroups map[name.Group]bool
	var mu sync.Mutex
	if wave {
		targetGroups = map[name.Group]bool{}
		m.listed = map[name.Group]*groupListing{}
		m.targetGroups = targetGroups
	}
	err := m.forEach(ctx, len(nss), moveCopyParallel, func(ctx context.Context, i int) error {
		if !wave {
			groups, err := s.ListGroups(ctx, nss[i])
			if err != nil {
				return err
			}
			for _, g := range groups {
				perNS[i] = append(perNS[i], moveJob{src: g, dstNS: targets[i]})
			}
			return nil
		}
		var ls map[name.Group]*groupListing
		var there []name.Group
		err := moveConcurrently(ctx,
			func(ctx context.Context) (err error) { ls, err = m.listNamespaceGroups(ctx, nss[i]); return err },
			func(ctx context.Context) (err error) { there, err = s.ListGroups(ctx, targets[i]); return err },
		)
		if err != nil {
			return err
		}
		for g, l := range ls {
			perNS[i] = append(perNS[i], moveJob{src: g, dstNS: targets[i], snaps: len(l.byTime), objects: len(l.files)})
		}
		sort.Slice(perNS[i], func(a, b int) bool { return perNS[i][a].src.String() < perNS[i][b].src.String() })
		mu.Lock()
		for _, g := range there {
			targetGroups[g] = true
		}
		for g, l := range ls {
			if len(l.byTime) <= waveGroupSnaps { // the groups waves move
				m.listed[g] = l
			}
		}
		mu.Unlock()
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	var jobs []moveJob
	for _, js := range perNS {
		for _, j := range js {
			j.seq = len(jobs)
			jobs = append(jobs, j)
		}
	}
	return jobs, targetGroups, nil
}

// checkGroup runs the merge checks of one group without its locks; they
// are repeated under the locks when the group moves.
func (m *mover) checkGroup(ctx context.Context, src name.Group, dstNS name.Namespace, allowMerge bool) error {
	exists, err := m.s.GroupExists(ctx, src.InNS(dstNS))
	if err != nil || !exists {
		return err // a new target group needs no checks
	}
	_, err = m.planGroup(ctx, src, dstNS, allowMerge)
	if errors.Is(err, ErrNotFound) {
		return nil // gone since it was listed; moveOneGroup skips it too
	}
	return err
}

// createNamespaces creates the missing targets (given parents first),
// those of one depth at once, and reports them in the given order.
func (m *mover) createNamespaces(ctx context.Context, targets []name.Namespace) error {
	created := make([]bool, len(targets))
	defer func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		for i, ns := range targets {
			if created[i] {
				m.res.NamespacesCreated = append(m.res.NamespacesCreated, ns.String())
			}
		}
	}()
	for start := 0; start < len(targets); {
		end := start + 1
		for end < len(targets) && targets[end].Depth() == targets[start].Depth() {
			end++
		}
		err := m.forEach(ctx, end-start, m.groupParallel, func(ctx context.Context, i int) (err error) {
			created[start+i], err = m.createNamespace(ctx, targets[start+i])
			m.rep.add(1)
			return err
		})
		if err != nil {
			return err
		}
		start = end
	}
	return nil
}

func (m *mover) createNamespace(ctx context.Context, ns name.Namespace) (bool, error) {
	if ns.IsRoot() {
		return false, nil
	}
	ok, err := m.s.NamespaceExists(ctx, ns)
	if err != nil || ok {
		return false, err
	}
	if err := m.s.CreateNamespace(ctx, ns); err != nil {
		return false, err
	}
	return true, nil
}

// busyJob is a group set aside because a lock stayed busy.
type busyJob struct {
	moveJob
	busy error
}

// runGroups moves jobs, parallel groups at a time, in order. Groups whose
// locks stay busy are returned; a group whose checks fail now (changed
// since the check phase) is skipped; any other error stops the move.
func (m *mover) runGroups(ctx context.Context, jobs []moveJob, merge bool, parallel int) ([]busyJob, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		mu       sync.Mutex
		aside    []busyJob
		firstErr error
		wg       sync.WaitGroup
	)
	work := make(chan moveJob)
	for w := 0; w < min(parallel, len(jobs)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range work {
				err := m.moveOneGroup(ctx, j, merge)
				switch {
				case err == nil:
				case errors.Is(err, lock.ErrBusy):
					mu.Lock()
					aside = append(aside, busyJob{moveJob: j, busy: err})
					mu.Unlock()
					continue // counted when retried
				case errors.Is(err, name.ErrInvalid):
					m.skip(groupLabel(j.src), err, "refused")
				default:
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					cancel(err)
				}
				m.rep.add(1)
			}
		}()
	}
feed:
	for _, j := range jobs {
		select {
		case work <- j:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	sort.Slice(aside, func(i, k int) bool { return aside[i].seq < aside[k].seq })
	return aside, nil
}

// moveOneGroup moves one group of a move-namespace under its group locks.
func (m *mover) moveOneGroup(ctx context.Context, j moveJob, merge bool) error {
	s := m.s
	dst := j.src.InNS(j.dstNS)
	reqs := []lock.Request{s.groupRequest(j.src), s.groupRequest(dst)}
	lock.SortRequests(reqs)
	ctx, release, err := s.lockChain(ctx, reqs)
	if err != nil {
		return err
	}
	defer release()
	p, err := m.planGroup(ctx, j.src, j.dstNS, merge)
	if errors.Is(err, ErrNotFound) {
		return nil // removed since it was listed
	}
	if err != nil {
		return err
	}
	return m.execGroup(ctx, p)
}

// removeSourceNamespaces deletes the emptied source namespaces deepest
// first. A namespace that still holds anything (skipped groups, children
// below max-depth) is kept, and with it its ancestors.
func (m *mover) removeSourceNamespaces(ctx context.Context, nss []name.Namespace, keep map[name.Namespace]int, deleteSource bool) error {
	order := append([]name.Namespace(nil), nss...)
	sort.SliceStable(order, func(i, j int) bool {
		if order[i].Depth() != order[j].Depth() {
			return order[i].Depth() > order[j].Depth()
		}
		return order[i].String() > order[j].String()
	})
	// On object storage one listing of the whole source tree tells which
	// namespaces hold anything but their markers.
	var holds map[name.Namespace]string
	if m.s.b.Features().ImplicitDirs && deleteSource && len(nss) > 0 {
		var err error
		if holds, err = m.namespaceContents(ctx, nss); err != nil {
			return err
		}
	}
	kept := map[name.Namespace]bool{}
	// One depth at a time (deepest first), the namespaces of a depth at
	// once: each only needs its children decided.
	for start := 0; start < len(order); {
		end := start + 1
		for end < len(order) && order[end].Depth() == order[start].Depth() {
			end++
		}
		level := order[start:end]
		errs := make([]error, len(level))
		err := m.forEach(ctx, len(level), m.groupParallel, func(ctx context.Context, i int) error {
			ns := level[i]
			switch {
			case !deleteSource || keep[ns] > 0 || kept[ns]:
			case holds == nil:
				errs[i] = m.removeNamespace(ctx, ns)
			case holds[ns] != "":
				errs[i] = fmt.Errorf("namespace %q still holds %s: %w", ns, holds[ns], backend.ErrNotEmpty)
			default:
				if err := m.s.b.Remove(ctx, backend.Join(ns.Path(), namespaceMarker)); err != nil {
					errs[i] = fmt.Errorf("remove namespace %q: %w", ns, err)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		for i, ns := range level {
			var reason string
			switch {
			case !deleteSource:
				reason = "delete-source is off"
			case keep[ns] > 0:
				reason = fmt.Sprintf("holds %d skipped group(s)", keep[ns])
			case kept[ns]:
				reason = "a child namespace was kept"
			default:
				switch err := errs[i]; {
				case err == nil:
					m.res.NamespacesRemoved = append(m.res.NamespacesRemoved, ns.String())
				case errors.Is(err, backend.ErrNotEmpty):
					reason = "not empty: " + err.Error()
				case errors.Is(err, ErrNotFound):
					// Removed by an interrupted earlier run.
				default:
					return err
				}
			}
			if reason != "" {
				m.res.NamespacesKept = append(m.res.NamespacesKept, KeptNamespace{NS: ns.String(), Reason: reason})
				for _, a := range ns.Ancestors() {
					kept[a] = true
				}
			}
			m.rep.add(1)
		}
		start = end
	}
	return nil
}

// namespaceContents lists the subtree of nss[0] (nss: it and namespaces
// below it) once and returns, for each namespace of nss holding anything
// but the markers of namespaces in nss, one object it holds.
func (m *mover) namespaceContents(ctx context.Context, nss []name.Namespace) (map[name.Namespace]string, error) {
	top := nss[0]
	in := make(map[name.Namespace]bool, len(nss))
	for _, ns := range nss {
		in[ns] = true
	}
	holds := map[name.Namespace]string{}
	err := m.s.b.Walk(ctx, top.Path(), func(fi backend.FileInfo) error {
		rel, ok := strings.CutPrefix(fi.Name, top.Path()+"/")
		if !ok {
			return nil
		}
		ns := top
		for {
			below, ok := strings.CutPrefix(rel, "ns/")
			if !ok {
				break
			}
			child, rest, ok := strings.Cut(below, "/")
			if !ok {
				break
			}
			c, err := ns.Child(child)
			if err != nil {
				break
			}
			ns, rel = c, rest
		}
		if rel == namespaceMarker && in[ns] {
			return nil
		}
		for a := ns; ; a = a.Parent() {
			if in[a] && holds[a] == "" {
				holds[a] = fi.Name
			}
			if a == top || a.IsRoot() {
				break
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list namespace %q: %w", top, err)
	}
	return holds, nil
}

// removeNamespace removes an emptied source namespace. On object storage
// one listing shows whether anything but the marker is left, where
// RemoveNamespace's directory-by-directory checks cost a dozen requests.
func (m *mover) removeNamespace(ctx context.Context, ns name.Namespace) error {
	s := m.s
	if !s.b.Features().ImplicitDirs {
		return s.RemoveNamespace(ctx, ns)
	}
	marker := backend.Join(ns.Path(), namespaceMarker)
	var other string
	err := s.b.Walk(ctx, ns.Path(), func(fi backend.FileInfo) error {
		if fi.Name != marker {
			other = fi.Name
			return errMoveStopWalk
		}
		return nil
	})
	if err != nil && !errors.Is(err, errMoveStopWalk) {
		return fmt.Errorf("remove namespace %q: %w", ns, err)
	}
	if other != "" {
		return fmt.Errorf("namespace %q still holds %s: %w", ns, other, backend.ErrNotEmpty)
	}
	if err := s.b.Remove(ctx, marker); err != nil {
		return fmt.Errorf("remove namespace %q: %w", ns, err)
	}
	return nil
}

var errMoveStopWalk = errors.New("stop walk")

// ---- one group

// moveSnap is a snapshot as a move sees it.
type moveSnap struct {
	name.Snapshot
	finished bool
	// files are the snapshot's files relative to its directory: on object
	// storage every object (the move copies them), on a filesystem the
	// visible ones (the journal needs the index files; rename moves all).
	files []string
}

// groupContents lists a group's snapshots, oldest first; exists reports
// whether the group is there at all.
func (s *Store) groupContents(ctx context.Context, g name.Group) (snaps []moveSnap, exists bool, err error) {
	if !s.b.Features().ImplicitDirs {
		exists, err := s.GroupExists(ctx, g)
		if err != nil || !exists {
			return nil, exists, err
		}
		infos, err := s.ListSnapshots(ctx, g)
		if err != nil {
			return nil, true, err
		}
		for _, in := range infos {
			snaps = append(snaps, moveSnap{Snapshot: in.Snapshot, finished: in.Finished, files: in.Files})
		}
		return snaps, true, nil
	}
	// Object storage: one flat listing instead of one per snapshot.
	prefix := g.Path() + "/"
	l := newGroupListing(g)
	err = s.b.Walk(ctx, g.Path(), func(fi backend.FileInfo) error {
		if rel, ok := strings.CutPrefix(fi.Name, prefix); ok {
			l.add(fi.Name, rel)
		}
		return nil
	})
	if err != nil {
		return nil, false, fmt.Errorf("list group %s in namespace %q: %w", g, g.NS, err)
	}
	return l.sorted(), len(l.files) > 0, nil
}

// groupListing is a group's objects as a flat listing shows them.
type groupListing struct {
	g      name.Group
	byTime map[int64]*moveSnap
	// files are the paths of every object below the group.
	files        []string
	owner, notes bool
}

func newGroupListing(g name.Group) *groupListing {
	return &groupListing{g: g, byTime: map[int64]*moveSnap{}}
}

// add records the object at path, rel being its path below the group.
func (l *groupListing) add(path, rel string) {
	l.files = append(l.files, path)
	dir, file, ok := strings.Cut(rel, "/")
	if !ok {
		l.owner = l.owner || rel == "owner"
		l.notes = l.notes || rel == "notes"
		return
	}
	t, err := name.ParseTime(dir)
	if err != nil {
		return
	}
	sn := l.byTime[t.Unix()]
	if sn == nil {
		sn = &moveSnap{Snapshot: name.Snapshot{Group: l.g, Time: t}}
		l.byTime[t.Unix()] = sn
	}
	sn.files = append(sn.files, file)
	if file == ManifestName {
		sn.finished = true
	}
}

// sorted returns the snapshots oldest first.
func (l *groupListing) sorted() []moveSnap {
	snaps := make([]moveSnap, 0, len(l.byTime))
	for _, sn := range l.byTime {
		sort.Strings(sn.files)
		snaps = append(snaps, *sn)
	}
	sort.Slice(snaps, func(i, j int) bool { return snaps[i].Time.Before(snaps[j].Time) })
	return snaps
}

// groupPlan is one group's move, checked before anything changes.
type groupPlan struct {
	src, dst name.Group
	snaps    []moveSnap         // source snapshots, oldest first
	dstSnaps map[int64]moveSnap // target snapshots by time
	merge    bool               // the target group exists
	owner    string             // source owner ("" when it has none)
	notes    string             // source notes
	// writeOwner/writeNotes: the target lacks them; they are written
	// before the first snapshot moves, so a target group never exists
	// without its owner.
	writeOwner, writeNotes bool
	// record: the target group is new and merging is off, so a rerun
	// must be able to tell that this move created it.
	record bool
	// copyOwner/copyNotes: the target group is new; its owner and notes
	// are copied from the source (moves in waves, which do not read them).
	copyOwner, copyNotes bool
}

// planGroup reads both sides of a group move and checks DESIGN §4's
// preconditions: merging allowed, owners equal, target snapshots older.
// It accepts what an interrupted run of the same move leaves behind.
func (m *mover) planGroup(ctx context.Context, src name.Group, dstNS name.Namespace, allowMerge bool) (*groupPlan, error) {
	s := m.s
	dst := src.InNS(dstNS)
	p := &groupPlan{src: src, dst: dst, dstSnaps: map[int64]moveSnap{}}
	var (
		exists, dexists bool
		dsnaps          []moveSnap
	)
	err := moveConcurrently(ctx,
		func(ctx context.Context) (err error) { p.snaps, exists, err = s.groupContents(ctx, src); return err },
		func(ctx context.Context) (err error) { dsnaps, dexists, err = s.groupContents(ctx, dst); return err },
		func(ctx context.Context) (err error) { p.owner, err = s.readGroupFile(ctx, src, "owner"); return err },
		func(ctx context.Context) (err error) { p.notes, err = s.readGroupFile(ctx, src, "notes"); return err },
	)
	if err != nil {
		return nil, err
	}
	if !exists {
		return nil, fmt.Errorf("group %s in namespace %q on store %q: %w", src, src.NS, s.name, ErrNotFound)
	}
	p.owner = strings.TrimRight(p.owner, "\n")
	if !dexists {
		p.writeOwner, p.writeNotes = p.owner != "", p.notes != ""
		p.record = !allowMerge
		return p, nil
	}
	if err := m.planMerge(ctx, p, dsnaps, allowMerge); err != nil {
		return nil, err
	}
	return p, nil
}

// planMerge checks a move into the existing target group p.dst, whose
// snapshots are dsnaps; p holds the source side, its owner and notes read.
func (m *mover) planMerge(ctx context.Context, p *groupPlan, dsnaps []moveSnap, allowMerge bool) error {
	s := m.s
	src, dst := p.src, p.dst
	p.merge = true
	if !allowMerge {
		ok, err := s.hasMoveRecord(ctx, src, dst)
		if err != nil {
			return err
		}
		switch {
		case ok:
			p.record = true // ours: keep the record until the snapshots are moved
		case m.addsNothing(p, dsnaps):
			// Every source snapshot is at the target already: what is
			// left is the cleanup of an interrupted move, and no
			// snapshot joins the existing group.
		default:
			return invalidf("group %s already exists in target namespace %q and merging is off (merge-group=false); allow merging or choose another target",
				src, dst.NS)
		}
	}
	var downer, dnotes string
	err := moveConcurrently(ctx,
		func(ctx context.Context) (err error) { downer, err = s.readGroupFile(ctx, dst, "owner"); return err },
		func(ctx context.Context) (err error) { dnotes, err = s.readGroupFile(ctx, dst, "notes"); return err },
	)
	if err != nil {
		return err
	}
	downer = strings.TrimRight(downer, "\n")
	switch {
	case downer == "":
		p.writeOwner = p.owner != ""
	case p.owner != "" && p.owner != downer:
		return invalidf("cannot merge group %s of namespace %q (owner %q) into namespace %q: the target group is owned by %q",
			src, src.NS, p.owner, dst.NS, downer)
	}
	p.writeNotes = p.notes != "" && dnotes == ""
	for _, t := range dsnaps {
		p.dstSnaps[t.Time.Unix()] = t
	}
	return m.checkOrder(ctx, p, dsnaps)
}

// addsNothing reports whether moving p would add no snapshot to the
// target: the source has none left, or (object storage) only copies of
// target snapshots.
func (m *mover) addsNothing(p *groupPlan, dsnaps []moveSnap) bool {
	if m.atomic {
		return len(p.snaps) == 0
	}
	have := make(map[int64]bool, len(dsnaps))
	for _, t := range dsnaps {
		have[t.Time.Unix()] = t.finished
	}
	for _, sn := range p.snaps {
		if !have[sn.Time.Unix()] {
			return false
		}
	}
	return true
}

// checkOrder is the merge rule: every target snapshot must be older than
// the oldest remaining source snapshot, so the merged group is the source's
// history appended to the target's. On object storage a snapshot present
// on both sides is what an interrupted copy leaves and is exempt, unless
// both copies are finished and differ (then it is a real conflict).
func (m *mover) checkOrder(ctx context.Context, p *groupPlan, dsnaps []moveSnap) error {
	if len(p.snaps) == 0 {
		return nil
	}
	oldest, joining := p.snaps[0], true
	bySrc := make(map[int64]moveSnap, len(p.snaps))
	for _, sn := range p.snaps {
		bySrc[sn.Time.Unix()] = sn
	}
	if !m.atomic {
		// The rule applies to the snapshots that would join the target:
		// an interrupted move deletes a snapshot's source only once every
		// older one of its group has a copy at the target, but the
		// deletes of several snapshots may land in any order, leaving a
		// moved snapshot next to older ones on both sides.
		atTarget := make(map[int64]bool, len(dsnaps))
		for _, t := range dsnaps {
			atTarget[t.Time.Unix()] = true
		}
		i := 0
		for i < len(p.snaps) && atTarget[p.snaps[i].Time.Unix()] {
			i++
		}
		if i == len(p.snaps) {
			joining = false
		} else {
			oldest = p.snaps[i]
		}
	}
	for _, t := range dsnaps {
		if sn, ok := bySrc[t.Time.Unix()]; ok && !m.atomic {
			if t.finished && sn.finished {
				same, err := m.sameManifest(ctx, sn.Snapshot, t.Snapshot)
				if err != nil {
					return err
				}
				if !same {
					return invalidf("snapshot %s exists in namespace %q and in target namespace %q with different contents; remove one of them first",
						sn.Snapshot, p.src.NS, p.dst.NS)
				}
			}
			continue
		}
		if joining && !t.Time.Before(oldest.Time) {
			return invalidf("cannot merge group %s into namespace %q: its snapshot %s is not older than the oldest snapshot %s moving from namespace %q (the histories would interleave)",
				p.src, p.dst.NS, t.TimeString(), oldest.TimeString(), p.src.NS)
		}
	}
	return nil
}

// sameManifest compares two manifests, ignoring the unprotected part
// (a verify may have updated one copy since).
func (m *mover) sameManifest(ctx context.Context, a, b name.Snapshot) (bool, error) {
	ra, err := m.s.b.ReadFile(ctx, a.File(ManifestName))
	if errors.Is(err, fs.ErrNotExist) {
		// Gone since the listing (a killed run's last delete landing
		// late): no longer two finished copies, so no conflict; the
		// group is planned again under its locks before it moves.
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("manifest of %s in %q: %w", a, a.NS, err)
	}
	rb, err := m.s.b.ReadFile(ctx, b.File(ManifestName))
	if errors.Is(err, fs.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("manifest of %s in %q: %w", b, b.NS, err)
	}
	if bytes.Equal(ra, rb) {
		return true, nil
	}
	ma, errA := format.ParseManifest(ra)
	mb, errB := format.ParseManifest(rb)
	if errA != nil || errB != nil {
		return false, nil
	}
	ja, errA := protectedJSON(ma)
	jb, errB := protectedJSON(mb)
	return errA == nil && errB == nil && bytes.Equal(ja, jb), nil
}

// readGroupFile returns a group's owner or notes; "" when missing.
// Both are bounded, and an owner file is validated (see GroupOwner) so
// that no message ever shows a file's content.
func (s *Store) readGroupFile(ctx context.Context, g name.Group, file string) (string, error) {
	limit := int64(maxNotesFile)
	if file == "owner" {
		limit = maxOwnerFile
	}
	data, err := backend.ReadFileMax(ctx, s.b, backend.Join(g.Path(), file), limit)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("%s of group %s in namespace %q: %w", file, g, g.NS, err)
	}
	if file == "owner" && !plausibleAuthID(strings.TrimRight(string(data), "\n")) {
		return "", fmt.Errorf("owner of group %s in namespace %q: %w (%d bytes)", g, g.NS, ErrBadOwnerFile, len(data))
	}
	return string(data), nil
}

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
		last := start+len(batch) == len(p.snaps)
		guards, lockErr := s.lockSnapshots(ctx, batch)
		n := len(guards)
		if s.locks == nil {
			n = len(batch)
		}
		var err error
		if n > 0 {
			bctx, cancel := lock.Watch(ctx, guards...)
			err = m.moveBatch(bctx, p, batch[:n], last && lockErr == nil, prelude)
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
	if s.locks == nil {
		return nil, nil
	}
	guards := make([]*lock.Guard, 0, len(snaps))
	for _, sn := range snaps {
		g, err := s.locks.Acquire(ctx, s.snapshotRequest(sn.Snapshot, lock.Exclusive))
		if err != nil {
			return guards, err
		}
		guards = append(guards, g)
	}
	return guards, nil
}

// moveBatch moves locked snapshots, recording their index files in the
// move journal first so a concurrent GC cannot miss them.
// prelude, when set, runs alongside the journal write: both must be done
// before anything moves.
func (m *mover) moveBatch(ctx context.Context, p *groupPlan, batch []moveSnap, lastOfGroup bool, prelude func(context.Context) error) error {
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
		err = m.copyBatch(ctx, p, batch, lastOfGroup)
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

// copyBatch moves snapshots on object storage: copy every data file of the
// batch, then the manifests, then delete the source manifests, then the
// rest. At each step a crash leaves states planGroup accepts: a partial
// copy (target unfinished: copied again), two finished copies (copied
// again, then deleted), or a finished target next to an unfinished source
// leftover (only deleted). On the group's last batch without batch
// deletes, the leftovers go with the group in one RemoveAll.
func (m *mover) copyBatch(ctx context.Context, p *groupPlan, batch []moveSnap, lastOfGroup bool) error {
	var c copyPlan
	c.add(p, batch)
	if err := m.copyAll(ctx, &c); err != nil {
		return err
	}
	if err := m.removeFiles(ctx, c.delManifests); err != nil {
		return err
	}
	if lastOfGroup && m.batchRm == nil {
		m.deleted.Add(int64(len(c.delRest))) // removeSourceGroup takes them
	} else if err := m.removeFiles(ctx, c.delRest); err != nil {
		return err
	}
	for _, sn := range batch {
		m.snapshotMoved(sn.Snapshot, p.dst.NS, c.copies[sn.Snapshot])
	}
	return nil
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

// copyAll copies the data files, then the manifests.
func (m *mover) copyAll(ctx context.Context, c *copyPlan) error {
	for _, set := range [][]xfer{c.data, c.manifests} {
		err := m.each(ctx, len(set), func(ctx context.Context, i int) error {
			if err := m.s.b.Copy(ctx, set[i].from, set[i].to); err != nil {
				return fmt.Errorf("copy %s to %s: %w", set[i].from, set[i].to, err)
			}
			m.copied.Add(1)
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// removeFiles deletes files in batches where the backend can, else in
// parallel one by one.
func (m *mover) removeFiles(ctx context.Context, names []string) error {
	if len(names) == 0 {
		return nil
	}
	var err error
	if m.batchRm != nil {
		err = m.batchRm.RemoveFiles(ctx, names)
	} else {
		err = m.each(ctx, len(names), func(ctx context.Context, i int) error {
			return m.s.b.Remove(ctx, names[i])
		})
	}
	if err != nil {
		return fmt.Errorf("delete moved source files: %w", err)
	}
	m.deleted.Add(int64(len(names)))
	return nil
}

// each runs fn for 0..n-1 with the operation's copy slots; it stops at the
// first error and returns it.
func (m *mover) each(ctx context.Context, n int, fn func(ctx context.Context, i int) error) error {
	if n == 0 {
		return nil
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
loop:
	for i := 0; i < n; i++ {
		select {
		case m.sem <- struct{}{}:
		case <-ctx.Done():
			break loop
		}
		wg.Add(1)
		go func() {
			defer func() { <-m.sem; wg.Done() }()
			if err := fn(ctx, i); err != nil {
				once.Do(func() { first = err })
				cancel(err)
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return first
	}
	return ctx.Err()
}

// forEach runs fn for 0..n-1, at most parallel at once; it stops at the
// first error and returns it.
func (m *mover) forEach(ctx context.Context, n, parallel int, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
		next  atomic.Int64
	)
	for w := 0; w < min(parallel, n); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := fn(ctx, i); err != nil {
					once.Do(func() { first = err })
					cancel(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return first
	}
	return ctx.Err()
}

// moveConcurrently runs independent steps at once (round trips on object
// storage) and returns the first error.
func moveConcurrently(ctx context.Context, steps ...func(ctx context.Context) error) error {
	errs := make([]error, len(steps))
	var wg sync.WaitGroup
	for i, step := range steps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = step(ctx)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
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

// ---- move records

// moveRecord marks a target group created by a move with merging off.
type moveRecord struct {
	From    string    `json:"from"`
	To      string    `json:"to"`
	Created time.Time `json:"created"`
}

func moveRecordPath(src, dst name.Group) string {
	h := sha256.Sum256([]byte(src.Path() + "\x00" + dst.Path()))
	return backend.Join(moveStateDir, hex.EncodeToString(h[:16])+".json")
}

func (s *Store) hasMoveRecord(ctx context.Context, src, dst name.Group) (bool, error) {
	_, err := s.b.Stat(ctx, moveRecordPath(src, dst))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("move state of group %s: %w", src, err)
	}
	return true, nil
}

func (s *Store) writeMoveRecord(ctx context.Context, src, dst name.Group) error {
	data, err := json.Marshal(moveRecord{From: groupLabel(src), To: groupLabel(dst), Created: time.Now().UTC()})
	if err != nil {
		return err
	}
	if err := s.b.WriteFile(ctx, moveRecordPath(src, dst), data); err != nil {
		return fmt.Errorf("move state of group %s: %w", src, err)
	}
	return nil
}

func (s *Store) removeMoveRecord(ctx context.Context, src, dst name.Group) error {
	if err := s.b.Remove(ctx, moveRecordPath(src, dst)); err != nil {
		return fmt.Errorf("move state of group %s: %w", src, err)
	}
	return nil
}
