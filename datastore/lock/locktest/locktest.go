// Package locktest is the conformance suite every lock.Backend must pass.
//
// A backend's test calls Run with a constructor. The constructor must get
// whatever the backends of one test share (a locks dir, a Redis address)
// through Param, so that two backends built in one test see each other and
// so that the re-executed child processes of the multi-process test attach
// to the parent's resources instead of making their own:
//
//	func TestConformance(t *testing.T) {
//		locktest.Run(t, func(t *testing.T) lock.Backend {
//			dir := locktest.Param(t, "dir", t.TempDir)
//			b, err := flock.New(flock.Options{Dir: dir})
//			...
//		})
//	}
package locktest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
)

// Environment of a re-executed child (see multiprocess.go).
const (
	envChild    = "PBSQ_LOCKTEST_CHILD"
	envOut      = "PBSQ_LOCKTEST_OUT"
	envSeed     = "PBSQ_LOCKTEST_SEED"
	envDuration = "PBSQ_LOCKTEST_DURATION"
	envParam    = "PBSQ_LOCKTEST_PARAM_"
)

var params struct {
	sync.Mutex
	m map[testing.TB]map[string]string
}

// Param returns the test's shared value for key, creating it with create on
// first use in t. In a child process of the multi-process test it returns
// the parent's value instead. Keys must be valid environment variable name
// parts ([A-Za-z0-9_]).
func Param(t testing.TB, key string, create func() string) string {
	if os.Getenv(envChild) != "" {
		if v, ok := os.LookupEnv(envParam + key); ok {
			return v
		}
	}
	params.Lock()
	v, ok := params.m[t][key]
	params.Unlock()
	if ok {
		return v
	}
	v = create()
	params.Lock()
	defer params.Unlock()
	if params.m == nil {
		params.m = make(map[testing.TB]map[string]string)
	}
	if params.m[t] == nil {
		params.m[t] = make(map[string]string)
		t.Cleanup(func() {
			params.Lock()
			delete(params.m, t)
			params.Unlock()
		})
	}
	params.m[t][key] = v
	return v
}

func paramsOf(t testing.TB) map[string]string {
	params.Lock()
	defer params.Unlock()
	out := make(map[string]string)
	for k, v := range params.m[t] {
		out[k] = v
	}
	return out
}

// Run runs the conformance suite against backends made by newBackend.
func Run(t *testing.T, newBackend func(t *testing.T) lock.Backend) {
	if os.Getenv(envChild) != "" {
		// Re-executed by the multi-process test: only its worker runs.
		t.Run("multiprocess", func(t *testing.T) { childMain(t, newBackend) })
		return
	}
	open := func(t *testing.T) lock.Backend {
		t.Helper()
		b := newBackend(t)
		t.Cleanup(func() { _ = b.Close() })
		return b
	}
	for _, tc := range []struct {
		name string
		f    func(*testing.T, func(*testing.T) lock.Backend)
	}{
		{"compat", testCompat},
		{"hierarchy", testHierarchy},
		{"stores", testStores},
		{"release_frees", testReleaseFrees},
		{"release_idempotent", testReleaseIdempotent},
		{"atomic_chain", testAtomicChain},
		{"invalid", testInvalid},
		{"holders", testHolders},
		{"not_lost", testNotLost},
		{"close", testClose},
		{"locker_single_try", testLockerSingleTry},
		{"locker_waits", testLockerWaits},
		{"locker_gives_up", testLockerGivesUp},
		{"locker_cancel", testLockerCancel},
		{"locker_kinds", testLockerKinds},
		{"model", testModel},
		{"concurrent", testConcurrent},
		{"multiprocess", func(t *testing.T, _ func(*testing.T) lock.Backend) { testMultiprocess(t, newBackend) }},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.f(t, open) })
	}
}

const store = "main"

var (
	t1 = time.Date(2022, 5, 2, 8, 11, 33, 0, time.UTC)
	t2 = time.Date(2022, 5, 3, 9, 0, 0, 0, time.UTC)
)

func ns(s string) name.Namespace { return name.MustNamespace(s) }

func grp(n, g string) name.Group {
	gr, err := name.ParseGroup(ns(n), g)
	if err != nil {
		panic(err)
	}
	return gr
}

func snap(n, g string, at time.Time) name.Snapshot { return name.NewSnapshot(grp(n, g), at) }

func nsReq(n string, m lock.Mode) lock.Request { return lock.NamespaceRequest(store, ns(n), m) }

var (
	S = lock.Shared
	X = lock.Exclusive
)

var taskSeq atomic.Int64

func holder() lock.Holder {
	return lock.Holder{Host: "locktest", PID: os.Getpid(), TaskID: fmt.Sprintf("task-%d", taskSeq.Add(1))}
}

func try(b lock.Backend, req lock.Request) (lock.Lease, error) {
	return b.TryLock(context.Background(), req, holder())
}

func mustLock(t *testing.T, b lock.Backend, req lock.Request) lock.Lease {
	t.Helper()
	l, err := try(b, req)
	if err != nil {
		t.Fatalf("lock %s: %v", req, err)
	}
	t.Cleanup(func() { _ = l.Release() })
	return l
}

func mustBusy(t *testing.T, b lock.Backend, req lock.Request) error {
	t.Helper()
	l, err := try(b, req)
	if err == nil {
		_ = l.Release()
		t.Fatalf("lock %s: granted, want busy", req)
	}
	if !errors.Is(err, lock.ErrBusy) {
		t.Fatalf("lock %s: %v, want an error wrapping lock.ErrBusy", req, err)
	}
	return err
}

func mustFree(t *testing.T, b lock.Backend, req lock.Request) {
	t.Helper()
	l, err := try(b, req)
	if err != nil {
		t.Fatalf("lock %s: %v, want granted", req, err)
	}
	if err := l.Release(); err != nil {
		t.Fatalf("release %s: %v", req, err)
	}
}

func release(t *testing.T, l lock.Lease) {
	t.Helper()
	if err := l.Release(); err != nil {
		t.Fatalf("release: %v", err)
	}
}

// kindCases are one lock of each kind, with the modes each allows.
func kindCases() []struct {
	name  string
	req   func(lock.Mode) lock.Request
	modes []lock.Mode
} {
	return []struct {
		name  string
		req   func(lock.Mode) lock.Request
		modes []lock.Mode
	}{
		{"namespace", func(m lock.Mode) lock.Request { return nsReq("a/b", m) }, []lock.Mode{S, X}},
		{"group", func(lock.Mode) lock.Request { return lock.GroupRequest(store, grp("a", "vm/100")) }, []lock.Mode{X}},
		{"root_group", func(lock.Mode) lock.Request { return lock.GroupRequest(store, grp("", "ct/200")) }, []lock.Mode{X}},
		{"snapshot", func(m lock.Mode) lock.Request {
			return lock.SnapshotRequest(store, snap("a/b", "vm/100", t1), m)
		}, []lock.Mode{S, X}},
	}
}

func testCompat(t *testing.T, open func(*testing.T) lock.Backend) {
	b1, b2 := open(t), open(t)
	for _, kc := range kindCases() {
		for _, m1 := range kc.modes {
			for _, m2 := range kc.modes {
				t.Run(fmt.Sprintf("%s/%s_%s", kc.name, m1, m2), func(t *testing.T) {
					first, second := kc.req(m1), kc.req(m2)
					l := mustLock(t, b1, first)
					for _, b := range []lock.Backend{b1, b2} { // same and another backend instance
						if m1 == S && m2 == S {
							mustFree(t, b, second)
							continue
						}
						err := mustBusy(t, b, second)
						if want := lockName(first); !strings.Contains(err.Error(), want) {
							t.Errorf("busy error %q does not name the lock %s", err, want)
						}
					}
					release(t, l)
					mustFree(t, b2, second)
				})
			}
		}
	}
}

// lockName is how errors name req's lock, e.g. `namespace "a/b"`.
func lockName(req lock.Request) string { return strings.SplitN(req.String(), " (", 2)[0] }

func testHierarchy(t *testing.T, open func(*testing.T) lock.Backend) {
	b := open(t)
	t.Run("shared_deep_blocks_exclusive_ancestors", func(t *testing.T) {
		l := mustLock(t, b, nsReq("a/b/c", S))
		mustBusy(t, b, nsReq("a", X))
		mustBusy(t, b, nsReq("a/b", X))
		mustBusy(t, b, nsReq("a/b/c", X))
		mustFree(t, b, nsReq("a/x", X))
		mustFree(t, b, nsReq("a", S))
		mustFree(t, b, nsReq("a/b", S))
		mustFree(t, b, nsReq("a/b/c/d", X))
		mustFree(t, b, nsReq("b", X))
		release(t, l)
		mustFree(t, b, nsReq("a", X))
	})
	t.Run("exclusive_excludes_everything_below", func(t *testing.T) {
		l := mustLock(t, b, nsReq("a", X))
		mustBusy(t, b, nsReq("a", S))
		mustBusy(t, b, nsReq("a/b", S))
		mustBusy(t, b, nsReq("a/b/c", S))
		mustBusy(t, b, nsReq("a/b/c/d", X))
		mustFree(t, b, nsReq("b", X))
		mustFree(t, b, nsReq("b/a", S))
		// Group and snapshot locks take no namespace locks themselves.
		mustFree(t, b, lock.GroupRequest(store, grp("a", "vm/100")))
		mustFree(t, b, lock.SnapshotRequest(store, snap("a", "vm/100", t1), X))
		release(t, l)
	})
	t.Run("exclusive_middle", func(t *testing.T) {
		l := mustLock(t, b, nsReq("a/b", X))
		mustBusy(t, b, nsReq("a/b/c/d", S))
		mustBusy(t, b, nsReq("a", X))
		mustFree(t, b, nsReq("a", S))
		mustFree(t, b, nsReq("a/x/y", X))
		mustFree(t, b, nsReq("a/bb", X)) // a prefix is not an ancestor
		release(t, l)
	})
	t.Run("groups_and_snapshots_are_distinct", func(t *testing.T) {
		l1 := mustLock(t, b, lock.GroupRequest(store, grp("a", "vm/100")))
		mustFree(t, b, lock.GroupRequest(store, grp("a", "vm/101")))
		mustFree(t, b, lock.GroupRequest(store, grp("a/b", "vm/100")))
		mustFree(t, b, lock.GroupRequest(store, grp("", "vm/100")))
		mustFree(t, b, lock.GroupRequest(store, grp("a", "ct/100")))
		l2 := mustLock(t, b, lock.SnapshotRequest(store, snap("a", "vm/100", t1), X))
		mustFree(t, b, lock.SnapshotRequest(store, snap("a", "vm/100", t2), X))
		mustBusy(t, b, lock.SnapshotRequest(store, snap("a", "vm/100", t1), S))
		release(t, l2)
		release(t, l1)
	})
}

func testStores(t *testing.T, open func(*testing.T) lock.Backend) {
	b := open(t)
	l := mustLock(t, b, nsReq("a", X))
	mustFree(t, b, lock.NamespaceRequest("other", ns("a/b"), X))
	mustFree(t, b, lock.GroupRequest("other", grp("a", "vm/100")))
	release(t, l)
}

func testReleaseFrees(t *testing.T, open func(*testing.T) lock.Backend) {
	b1, b2 := open(t), open(t)
	for _, req := range []lock.Request{
		nsReq("a/b", X), nsReq("a/b/c", S),
		lock.GroupRequest(store, grp("a", "vm/100")),
		lock.SnapshotRequest(store, snap("a", "vm/100", t1), S),
	} {
		l := mustLock(t, b1, req)
		excl := req
		excl.Mode = X
		mustBusy(t, b2, excl)
		release(t, l)
		mustFree(t, b2, excl)
		if req.Kind == lock.Namespace {
			mustFree(t, b2, nsReq("a", X)) // the ancestors too
		}
	}
}

func testReleaseIdempotent(t *testing.T, open func(*testing.T) lock.Backend) {
	b := open(t)
	l1 := mustLock(t, b, nsReq("a/b", S))
	l2 := mustLock(t, b, nsReq("a/b", S))
	release(t, l1)
	release(t, l1) // must not drop l2's share
	mustBusy(t, b, nsReq("a/b", X))
	mustBusy(t, b, nsReq("a", X))
	release(t, l2)
	release(t, l2)
	mustFree(t, b, nsReq("a", X))
}

func testAtomicChain(t *testing.T, open func(*testing.T) lock.Backend) {
	b1, b2 := open(t), open(t)
	t.Run("refused_in_the_middle", func(t *testing.T) {
		l := mustLock(t, b1, nsReq("a/b", X))
		err := mustBusy(t, b2, nsReq("a/b/c", S)) // took shared "a" before failing on a/b?
		var be *lock.BusyError
		if errors.As(err, &be) && be.Conflict.Kind != 0 && be.Conflict.ID() != nsReq("a/b", S).ID() {
			t.Errorf("conflict reported on %s, want namespace a/b", be.Conflict)
		}
		release(t, l)
		mustFree(t, b2, nsReq("a", X)) // nothing of the failed chain stayed
		mustFree(t, b1, nsReq("a/b", X))
	})
	t.Run("refused_at_the_end", func(t *testing.T) {
		l := mustLock(t, b1, nsReq("a/b/c/d", S))
		mustBusy(t, b2, nsReq("a/b/c/d", X))
		release(t, l)
		for _, n := range []string{"a", "a/b", "a/b/c", "a/b/c/d"} {
			mustFree(t, b1, nsReq(n, X))
		}
	})
	t.Run("no_holders_left", func(t *testing.T) {
		l := mustLock(t, b1, nsReq("a", X))
		for range 5 {
			mustBusy(t, b2, nsReq("a/b/c/d", S))
		}
		release(t, l)
		assertNoHolders(t, b1)
	})
}

func testInvalid(t *testing.T, open func(*testing.T) lock.Backend) {
	b := open(t)
	for _, req := range []lock.Request{
		nsReq("", S),
		nsReq("", X),
		{Kind: lock.Group, Mode: lock.Shared, Store: store, Group: grp("a", "vm/100")},
		{Kind: lock.Namespace, Mode: lock.ModeUnknown, Store: store, NS: ns("a")},
		lock.NamespaceRequest("x", ns("a"), S), // store name too short
		{Kind: lock.Snapshot, Mode: lock.Shared, Store: store},
	} {
		l, err := try(b, req)
		if err == nil {
			_ = l.Release()
			t.Errorf("lock %s: granted, want invalid", req)
			continue
		}
		if !errors.Is(err, lock.ErrInvalidRequest) || errors.Is(err, lock.ErrBusy) {
			t.Errorf("lock %s: %v, want ErrInvalidRequest", req, err)
		}
	}
}

func testHolders(t *testing.T, open func(*testing.T) lock.Backend) {
	b := open(t)
	reqs := []lock.Request{
		nsReq("a/b", X),
		lock.GroupRequest(store, grp("a/b", "vm/100")),
		lock.GroupRequest(store, grp("", "host/h1")),
		lock.SnapshotRequest(store, snap("a", "ct/200", t1), S),
	}
	var leases []lock.Lease
	for _, r := range reqs {
		leases = append(leases, mustLock(t, b, r))
	}
	held, err := b.Holders(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := append([]lock.Request{nsReq("a", S)}, reqs...)
	for _, w := range want {
		found := false
		for _, h := range held {
			if h.Request.ID() != w.ID() {
				continue
			}
			found = true
			if h.Request.Mode != lock.ModeUnknown && h.Request.Mode != w.Mode {
				t.Errorf("holder of %s: mode %s, want %s", w.ID(), h.Request.Mode, w.Mode)
			}
			if h.Holder.PID != 0 && h.Holder.PID != os.Getpid() {
				t.Errorf("holder of %s: pid %d, want %d", w.ID(), h.Holder.PID, os.Getpid())
			}
			if h.Holder.TaskID != "" && !strings.HasPrefix(h.Holder.TaskID, "task-") {
				t.Errorf("holder of %s: task %q", w.ID(), h.Holder.TaskID)
			}
			if !h.Expires.IsZero() && !h.Expires.After(time.Now().Add(-time.Second)) {
				t.Errorf("holder of %s: expires %s, in the past", w.ID(), h.Expires)
			}
		}
		if !found {
			t.Errorf("Holders lacks %s; got %v", w, held)
		}
	}
	for _, h := range held {
		ok := false
		for _, w := range want {
			ok = ok || h.Request.ID() == w.ID()
		}
		if !ok {
			t.Errorf("Holders lists %s (%s), which is not held", h.Request, h.Path)
		}
	}
	for _, l := range leases {
		release(t, l)
	}
	assertNoHolders(t, b)
}

func assertNoHolders(t *testing.T, b lock.Backend) {
	t.Helper()
	held, err := b.Holders(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range held {
		t.Errorf("still held: %s by %s (%s)", h.Request, h.Holder, h.Path)
	}
}

func testNotLost(t *testing.T, open func(*testing.T) lock.Backend) {
	b := open(t)
	l := mustLock(t, b, nsReq("a/b", X))
	select {
	case <-l.Lost():
		t.Fatal("lease lost while held normally")
	case <-time.After(200 * time.Millisecond):
	}
	release(t, l)
}

func testClose(t *testing.T, open func(*testing.T) lock.Backend) {
	b1, b2 := open(t), open(t)
	_, err := try(b1, nsReq("a/b", X))
	if err != nil {
		t.Fatal(err)
	}
	if err := b1.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	mustFree(t, b2, nsReq("a", X))
	if l, err := try(b1, nsReq("b", S)); err == nil {
		_ = l.Release()
		t.Fatal("lock granted by a closed backend")
	} else if !errors.Is(err, lock.ErrClosed) {
		t.Fatalf("lock on closed backend: %v, want ErrClosed", err)
	}
}

// counting wraps a Backend to count tries.
type counting struct {
	lock.Backend
	tries atomic.Int64
}

func (c *counting) TryLock(ctx context.Context, req lock.Request, h lock.Holder) (lock.Lease, error) {
	c.tries.Add(1)
	return c.Backend.TryLock(ctx, req, h)
}

func testLockerSingleTry(t *testing.T, open func(*testing.T) lock.Backend) {
	b := open(t)
	l := mustLock(t, b, nsReq("a/b", X))
	c := &counting{Backend: b}
	lk := lock.New(c, lock.Options{}).WithWait(0)
	start := time.Now()
	_, err := lk.Namespace(context.Background(), store, ns("a/b"), S)
	if !errors.Is(err, lock.ErrBusy) {
		t.Fatalf("got %v, want ErrBusy", err)
	}
	if n := c.tries.Load(); n != 1 {
		t.Errorf("Wait 0 made %d tries, want 1", n)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("a single try took %s", d)
	}
	c.tries.Store(0)
	_, err = lock.New(c, lock.Options{Wait: -1}).Namespace(context.Background(), store, ns("a/b"), S)
	if n := c.tries.Load(); !errors.Is(err, lock.ErrBusy) || n != 1 {
		t.Errorf("Options.Wait < 0: %d tries (%v), want 1 busy try", n, err)
	}
	release(t, l)
}

func testLockerWaits(t *testing.T, open func(*testing.T) lock.Backend) {
	b := open(t)
	l := mustLock(t, b, nsReq("a", X))
	const hold = 300 * time.Millisecond
	start := time.Now()
	time.AfterFunc(hold, func() { _ = l.Release() })
	g, err := lock.New(b, lock.Options{Wait: 2 * time.Second}).Namespace(context.Background(), store, ns("a/b"), X)
	if err != nil {
		t.Fatalf("not acquired within 2s after the holder released at %s: %v", hold, err)
	}
	defer g.Release()
	if d := time.Since(start); d < hold || d > 2*time.Second {
		t.Errorf("acquired after %s, want between %s and 2s", d, hold)
	}
	if g.Request().ID() != nsReq("a/b", X).ID() {
		t.Errorf("guard holds %s", g.Request())
	}
}

func testLockerGivesUp(t *testing.T, open func(*testing.T) lock.Backend) {
	b := open(t)
	mustLock(t, b, nsReq("a/b", X))
	c := &counting{Backend: b}
	const wait = 400 * time.Millisecond
	start := time.Now()
	_, err := lock.New(c, lock.Options{Wait: wait}).Namespace(context.Background(), store, ns("a/b"), S)
	d := time.Since(start)
	if !errors.Is(err, lock.ErrBusy) {
		t.Fatalf("got %v, want ErrBusy", err)
	}
	if d < wait || d > wait+time.Second {
		t.Errorf("gave up after %s, want just after %s", d, wait)
	}
	if n := c.tries.Load(); n < 3 || n > 10 {
		t.Errorf("%d tries in %s; want backoff from 50ms doubling", n, wait)
	}
	for _, want := range []string{`namespace "a/b"`, `store "main"`, "busy", "lock busy"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	t.Logf("error: %v", err)
}

func testLockerCancel(t *testing.T, open func(*testing.T) lock.Backend) {
	b := open(t)
	mustLock(t, b, nsReq("a", X))
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(150*time.Millisecond, cancel)
	start := time.Now()
	_, err := lock.New(b, lock.Options{Wait: 5 * time.Second}).Namespace(ctx, store, ns("a/b"), S)
	if d := time.Since(start); d > time.Second {
		t.Errorf("returned %s after cancel, want promptly", d)
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
}

func testLockerKinds(t *testing.T, open func(*testing.T) lock.Backend) {
	b := open(t)
	lk := lock.New(b, lock.Options{Wait: -1}).WithTask("kinds")
	ctx := context.Background()
	root, err := lk.Namespace(ctx, store, name.Root, S)
	if err != nil {
		t.Fatalf("shared root: %v", err)
	}
	if _, err := lk.Namespace(ctx, store, name.Root, X); !errors.Is(err, lock.ErrInvalidRequest) {
		t.Errorf("exclusive root: %v, want ErrInvalidRequest", err)
	}
	n, err := lk.Namespace(ctx, store, ns("a"), S)
	if err != nil {
		t.Fatal(err)
	}
	g, err := lk.Group(ctx, store, grp("a", "vm/100"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := lk.Snapshot(ctx, store, snap("a", "vm/100", t1), S)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lk.Group(ctx, store, grp("a", "vm/100")); !errors.Is(err, lock.ErrBusy) {
		t.Errorf("second group lock: %v, want ErrBusy", err)
	}
	if err := lock.ReleaseAll(root, n, g, s); err != nil {
		t.Fatal(err)
	}
	if err := s.Release(); err != nil {
		t.Errorf("second release: %v", err)
	}
	gs, err := lk.AcquireAll(ctx, nsReq("a/y", X), nsReq("a", S), nsReq("b/c", X))
	if err != nil {
		t.Fatal(err)
	}
	if got := []string{gs[0].Request().NS.String(), gs[1].Request().NS.String(), gs[2].Request().NS.String()}; strings.Join(got, ",") != "a,a/y,b/c" {
		t.Errorf("AcquireAll order %v, want shallowest first then by path", got)
	}
	if err := lock.ReleaseAll(gs...); err != nil {
		t.Fatal(err)
	}
	mustLock(t, b, nsReq("b/c", S))
	if _, err := lk.AcquireAll(ctx, nsReq("a", X), nsReq("b/c", X)); !errors.Is(err, lock.ErrBusy) {
		t.Fatalf("AcquireAll against a holder: %v, want ErrBusy", err)
	}
	mustFree(t, b, nsReq("a", X)) // AcquireAll released what it had taken
	assertNoHoldersExcept(t, b, nsReq("b/c", S), nsReq("b", S))

	// HoldAll: root and nil lockers take nothing, release frees all and
	// ends the watched context; a refusal leaves nothing held.
	hctx, release, err := lock.HoldAll(ctx, lock.On{Locker: lk, Request: nsReq("", S)},
		lock.On{Locker: lk, Request: nsReq("a", X)}, lock.On{Request: nsReq("d", X)})
	if err != nil {
		t.Fatal(err)
	}
	mustBusy(t, b, nsReq("a", S))
	mustFree(t, b, nsReq("d", X))
	release()
	if hctx.Err() == nil {
		t.Error("HoldAll's context lives on after release")
	}
	mustFree(t, b, nsReq("a", X))
	if _, _, err := lk.Hold(ctx, nsReq("a", X), nsReq("b/c", X)); !errors.Is(err, lock.ErrBusy) {
		t.Fatalf("Hold against a holder: %v, want ErrBusy", err)
	}
	mustFree(t, b, nsReq("a", X))
	assertNoHoldersExcept(t, b, nsReq("b/c", S), nsReq("b", S))
}

func assertNoHoldersExcept(t *testing.T, b lock.Backend, reqs ...lock.Request) {
	t.Helper()
	held, err := b.Holders(context.Background())
	if err != nil {
		t.Fatal(err)
	}
next:
	for _, h := range held {
		for _, r := range reqs {
			if r.ID() == h.Request.ID() {
				continue next
			}
		}
		t.Errorf("still held: %s by %s (%s)", h.Request, h.Holder, h.Path)
	}
}
