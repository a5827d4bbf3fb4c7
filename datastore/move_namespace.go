package datastore

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
)

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

	ctx, release, err := hold(ctx, s.on(moveNamespaceLocks(s, src, dst)...)...)
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
	moves := busyRetry[moveJob]{
		workers: m.groupParallel,
		run: func(ctx context.Context, j moveJob) error {
			err := m.moveOneGroup(ctx, j, req.MergeGroups)
			if errors.Is(err, name.ErrInvalid) {
				m.skip(groupLabel(j.src), err, "refused")
				return nil
			}
			return err
		},
		skip:     func(j moveJob, busy error) { m.skip(groupLabel(j.src), busy, "busy") },
		retrying: func(n int) { m.rep.message(fmt.Sprintf("retrying %d busy group(s)", n)) },
		done:     func(moveJob) { m.rep.add(1) },
	}
	switch {
	case m.canWave():
		moves.firstPass = func(ctx context.Context, jobs []moveJob) ([]moveJob, error) {
			return m.runWaves(ctx, jobs, req.MergeGroups, moves.pass)
		}
	case m.atomic:
		moves.firstPass = func(ctx context.Context, jobs []moveJob) ([]moveJob, error) {
			return m.runFSBatches(ctx, jobs, req.MergeGroups)
		}
	}
	if err := moves.do(ctx, jobs); err != nil {
		return m.res, err
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
	if m.canWave() && !dst.IsRoot() {
		ok, err := s.NamespaceExists(ctx, dst)
		if err != nil {
			return nil, nil, nil, err
		}
		m.newTarget = !ok
	}
	nss, err := s.namespacesBelow(ctx, src, req.MaxDepth)
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
	err = parallel(ctx, m.groupParallel, len(jobs), func(ctx context.Context, i int) error {
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
	err := parallel(ctx, moveCopyParallel, len(nss), func(ctx context.Context, i int) error {
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
			func(ctx context.Context) (err error) {
				if m.newTarget {
					return nil
				}
				there, err = s.ListGroups(ctx, targets[i])
				return err
			},
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
		err := parallel(ctx, m.groupParallel, end-start, func(ctx context.Context, i int) (err error) {
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
	if m.newTarget {
		// Its parent is created or checked already: only its marker.
		return m.s.createNamespaceMarker(ctx, ns)
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

// moveOneGroup moves one group of a move-namespace under its group locks.
func (m *mover) moveOneGroup(ctx context.Context, j moveJob, merge bool) error {
	s := m.s
	dst := j.src.InNS(j.dstNS)
	reqs := []lock.Request{s.groupRequest(j.src), s.groupRequest(dst)}
	lock.SortRequests(reqs)
	ctx, release, err := hold(ctx, s.on(reqs...)...)
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
	if m.s.b.Features().ImplicitDirs && m.batchRm != nil && deleteSource && len(nss) > 0 {
		var err error
		if holds, err = m.namespaceContents(ctx, nss); err != nil {
			return err
		}
	}
	kept := map[name.Namespace]bool{}
	// With holds, the markers of the namespaces to remove go together at
	// the end (in any order: a namespace stays visible while anything
	// lies below it, so a crash between them leaves a rerun its work).
	var markers []string
	var removed []string
	// One depth at a time (deepest first), the namespaces of a depth at
	// once: each only needs its children decided.
	for start := 0; start < len(order); {
		end := start + 1
		for end < len(order) && order[end].Depth() == order[start].Depth() {
			end++
		}
		level := order[start:end]
		errs := make([]error, len(level))
		err := parallel(ctx, m.groupParallel, len(level), func(ctx context.Context, i int) error {
			ns := level[i]
			switch {
			case !deleteSource || keep[ns] > 0 || kept[ns]:
			case holds == nil:
				errs[i] = m.removeNamespace(ctx, ns)
			case holds[ns] != "":
				errs[i] = fmt.Errorf("namespace %q still holds %s: %w", ns, holds[ns], backend.ErrNotEmpty)
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
				case err == nil && holds != nil:
					markers = append(markers, backend.Join(ns.Path(), namespaceMarker))
					removed = append(removed, ns.String())
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
	if len(markers) == 0 {
		return nil
	}
	err := m.batchRm.RemoveFiles(ctx, markers)
	if err != nil {
		return fmt.Errorf("remove namespaces %s: %w", strings.Join(removed, ", "), err)
	}
	m.res.NamespacesRemoved = append(m.res.NamespacesRemoved, removed...)
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
