package datastore

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/lock/flock"
	"github.com/pbsq/pbsq/datastore/name"
)

// Helpers of this file are prefixed bt (busy test): how every operation
// tells a busy item (set aside, retried once, skipped) from a failure.

// btLocks is a flock backend whose TryLock fails as fail says (nil: as
// flock does), standing in for a lock server that errs.
type btLocks struct {
	lock.Backend
	fail func(req lock.Request) error
}

func (b *btLocks) TryLock(ctx context.Context, req lock.Request, h lock.Holder) (lock.Lease, error) {
	if b.fail != nil {
		if err := b.fail(req); err != nil {
			return nil, err
		}
	}
	return b.Backend.TryLock(ctx, req, h)
}

// btAudit records a locker's lock events in the order they happened.
type btAudit struct {
	mu     sync.Mutex
	events []lock.AuditEvent
	// onBusy, when set, is called (outside mu) on each final refusal.
	onBusy func(req lock.Request)
}

func (a *btAudit) record(e lock.AuditEvent) {
	a.mu.Lock()
	a.events = append(a.events, e)
	a.mu.Unlock()
	if e.Op == lock.AuditBusy && a.onBusy != nil {
		a.onBusy(e.Request)
	}
}

// at returns the positions of the events of op on the lock of req.
func (a *btAudit) at(op lock.AuditOp, req lock.Request) []int {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []int
	for i, e := range a.events {
		if e.Op == op && e.Request.ID() == req.Normalize().ID() {
			out = append(out, i)
		}
	}
	return out
}

// btLocker is a single-try flock locker on lockDir, audited by a and
// failing as fail says.
func btLocker(t *testing.T, lockDir string, a *btAudit, fail func(lock.Request) error) *lock.Locker {
	t.Helper()
	fb, err := flock.New(flock.Options{Dir: lockDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fb.Close() })
	opts := lock.Options{Wait: -1}
	if a != nil {
		opts.Audit = a.record
	}
	return lock.New(&btLocks{Backend: fb, fail: fail}, opts)
}

// btSyncFixture is a source with three groups: ct/200 with two snapshots
// (the oldest is ct0), vm/100 and, in namespace n, host/h.
func btSyncFixture(t *testing.T) (src, dst *Store, ct0 name.Snapshot) {
	t.Helper()
	src, dst = TestStore(t, TestName("src")), TestStore(t, TestName("dst"))
	stSmall(t, src, "", "vm/100", 0)
	ct0 = stSmall(t, src, "", "ct/200", 0)
	stSmall(t, src, "", "ct/200", 1)
	stSmall(t, src, "n", "host/h", 0)
	return src, dst, ct0
}

// TestSyncBusyRetriedOnceAtTheEnd: a group whose target group lock is
// refused, and one whose source snapshot lock is refused, are set aside;
// the other group finishes first; each is tried exactly once more after
// that, and reported as skipped (outcome skipped, exit 4) when still busy,
// or synced when its lock was freed meanwhile.
func TestSyncBusyRetriedOnceAtTheEnd(t *testing.T) {
	vm := name.Group{NS: name.Root, Type: name.TypeVM, ID: "100"}
	host := name.Group{NS: name.MustNamespace("n"), Type: name.TypeHost, ID: "h"}
	for _, freed := range []bool{false, true} {
		label := map[bool]string{false: "still-busy", true: "freed-for-the-retry"}[freed]
		t.Run(label, func(t *testing.T) {
			ctx := context.Background()
			lockDir := t.TempDir()
			src0, dst0, ct0 := btSyncFixture(t)
			other := TestFlockLocker(t, lockDir, -1)
			groupReq := lock.GroupRequest("dst", vm)
			snapReq := lock.SnapshotRequest("src", ct0, lock.Exclusive)
			held := map[string]*lock.Guard{}
			for _, r := range []lock.Request{groupReq, snapReq} {
				g, err := other.Acquire(ctx, r)
				if err != nil {
					t.Fatal(err)
				}
				held[r.ID()] = g
			}
			a := &btAudit{}
			if freed {
				// The holder lets go as soon as the sync is refused.
				a.onBusy = func(req lock.Request) {
					if g := held[req.ID()]; g != nil {
						_ = g.Release()
					}
				}
			}
			lk := btLocker(t, lockDir, a, nil)
			res, err := Sync(ctx, src0.WithLocker(lk), dst0.WithLocker(lk), SyncRequest{MaxDepth: -1}, nil)
			if err != nil {
				t.Fatalf("sync: %v", err)
			}

			// The untroubled group was done before any retry began.
			hostDone := a.at(lock.AuditRelease, lock.GroupRequest("dst", host))
			if len(hostDone) != 1 {
				t.Fatalf("target group lock of %s released %d times, want 1", host, len(hostDone))
			}
			for _, r := range []lock.Request{groupReq, snapReq} {
				refused := a.at(lock.AuditBusy, r)
				want := 2 // the first pass and the one retry
				if freed {
					want = 1 // and the retry got it
				}
				if len(refused) != want {
					t.Fatalf("%s refused %d times, want %d", r, len(refused), want)
				}
				if !freed && refused[1] < hostDone[0] {
					t.Errorf("%s retried before the other groups were done", r)
				}
				if freed {
					granted := a.at(lock.AuditGrant, r)
					if len(granted) != 1 || granted[0] < hostDone[0] {
						t.Errorf("%s granted at %v, want once, after the other groups (%d)", r, granted, hostDone[0])
					}
				}
			}

			if freed {
				if res.Outcome() != nil || res.Snapshots != 4 || len(res.Skipped) != 0 {
					t.Fatalf("outcome %v\n%s", res.Outcome(), stJSON(res))
				}
				stSameListing(t, src0, dst0)
				return
			}
			if !errors.Is(res.Outcome(), ErrSkipped) || res.Snapshots != 1 || res.Groups != 1 {
				t.Fatalf("outcome %v\n%s", res.Outcome(), stJSON(res))
			}
			wantSkip := map[string]string{":vm/100": groupReq.String(), ":ct/200": lock.SnapshotRequest("src", ct0, lock.Shared).String()}
			if len(res.Skipped) != len(wantSkip) {
				t.Fatalf("skipped %+v, want %v", res.Skipped, wantSkip)
			}
			for _, sk := range res.Skipped {
				if w, ok := wantSkip[sk.Item]; !ok || !strings.Contains(sk.Reason, w) || !strings.Contains(sk.Reason, lock.ErrBusy.Error()) {
					t.Errorf("skip %q: %q, want a busy reason naming %s", sk.Item, sk.Reason, w)
				}
			}
		})
	}
}

// errLockServer is a lock backend failing, not refusing.
var errLockServer = errors.New("lock server unreachable")

// errDiskGone is a backend write failing.
var errDiskGone = errors.New("disk gone")

// btFailWrites fails every write of a file whose name ends in suffix.
type btFailWrites struct {
	backend.Backend
	suffix string
}

func (b *btFailWrites) WriteFile(ctx context.Context, name string, data []byte) error {
	if strings.HasSuffix(name, b.suffix) {
		return errDiskGone
	}
	return b.Backend.WriteFile(ctx, name, data)
}

// TestBusyNotMistaken: an error that is not a refused lock (a lock server
// that fails, a write that fails) in a sync's group, in one of its
// snapshots or in a verified snapshot fails the task with that error; it
// is never set aside and reported as skipped as a busy lock would be.
func TestBusyNotMistaken(t *testing.T) {
	ctx := context.Background()
	vm := name.Group{NS: name.Root, Type: name.TypeVM, ID: "100"}
	failOn := func(r lock.Request) func(lock.Request) error {
		return func(req lock.Request) error {
			if req.ID() == r.Normalize().ID() {
				return errLockServer
			}
			return nil
		}
	}
	check := func(t *testing.T, what string, err error, skipped []Skipped, want error) {
		t.Helper()
		if !errors.Is(err, want) || errors.Is(err, lock.ErrBusy) || len(skipped) != 0 {
			t.Errorf("%s: error %v, skipped %+v; want the error %q, nothing skipped", what, err, skipped, want)
		}
	}
	t.Run("sync-group-lock", func(t *testing.T) {
		src, dst, _ := btSyncFixture(t)
		lk := btLocker(t, t.TempDir(), nil, failOn(lock.GroupRequest("dst", vm)))
		res, err := Sync(ctx, src.WithLocker(lk), dst.WithLocker(lk), SyncRequest{MaxDepth: -1}, nil)
		check(t, "sync", err, res.Skipped, errLockServer)
	})
	t.Run("sync-snapshot-lock", func(t *testing.T) {
		src, dst, ct0 := btSyncFixture(t)
		lk := btLocker(t, t.TempDir(), nil, failOn(lock.SnapshotRequest("src", ct0, lock.Shared)))
		res, err := Sync(ctx, src.WithLocker(lk), dst.WithLocker(lk), SyncRequest{MaxDepth: -1}, nil)
		check(t, "sync", err, res.Skipped, errLockServer)
	})
	t.Run("sync-snapshot-write", func(t *testing.T) {
		src, dst, _ := btSyncFixture(t)
		failing, err := Open("dst", &btFailWrites{Backend: dst.b, suffix: ManifestName}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		res, err := Sync(ctx, src, failing, SyncRequest{MaxDepth: -1}, nil)
		check(t, "sync", err, res.Skipped, errDiskGone)
	})
	t.Run("verify-snapshot-lock", func(t *testing.T) {
		src, _, ct0 := btSyncFixture(t)
		lk := btLocker(t, t.TempDir(), nil, failOn(lock.SnapshotRequest("src", ct0, lock.Shared)))
		res, err := src.WithLocker(lk).Verify(ctx, VerifyRequest{Scope: Scope{MaxDepth: -1}}, nil)
		check(t, "verify", err, res.Skipped, errLockServer)
	})
}

// TestMoveNamespaceBusyAloneGroup: a group too big for its filesystem
// batch or S3 wave moves by itself (moveAlone); when one of its snapshot
// locks is refused it follows every operation's rule: the older snapshots
// move, the group is set aside, tried exactly once more at the end, then
// reported as skipped; the move does not fail and the other groups move.
// On object storage a group is counted small for its wave and then grows
// (PBS writing meanwhile) past the wave's room, the only way a wave gets
// a group that must move alone.
func TestMoveNamespaceBusyAloneGroup(t *testing.T) {
	eachBackend(t, func(t *testing.T, newEnv func(t testing.TB, opts ...TestStoreOption) *TestEnv) {
		env := newEnv(t, TestFlock(-1))
		s, ctx := env.Store, context.Background()
		mtNS(t, s, "a")
		put := func(g name.Group, from, to int) {
			for h := from; h < to; h++ {
				if err := mtPutSnapshot(ctx, s.b, name.NewSnapshot(g, mtAt(h)), "alice@pbs", 0); err != nil {
					t.Fatal(err)
				}
			}
		}
		// vm/1 moves in the first batch or wave, vm/2 and vm/3 share the
		// second; vm/3 is the one that moves alone.
		for _, g := range []string{"vm/1", "vm/2"} {
			put(mtGroup(t, "a", g), 0, 3)
		}
		big := mtGroup(t, "a", "vm/3")
		size := fsBatchSnaps + 1
		var grow func(Progress)
		if env.Kind == "fs" {
			put(big, 0, size)
		} else {
			put(big, 0, 3)
			size = moveBatch - 2 // more than the room vm/2 leaves
			var once sync.Once
			grow = func(p Progress) {
				if p.Phase == "move" {
					once.Do(func() { put(big, 3, size) })
				}
			}
		}
		held := lock.SnapshotRequest("test", name.NewSnapshot(big, mtAt(1)), lock.Exclusive)
		g, err := TestFlockLocker(t, env.LockDir, -1).Acquire(ctx, held)
		if err != nil {
			t.Fatal(err)
		}
		defer g.Release()
		a := &btAudit{}
		req := MoveNamespaceRequest{NS: name.MustNamespace("a"), TargetNS: name.Root, MaxDepth: -1, DeleteSource: true, MergeGroups: true}
		res, err := s.WithLocker(btLocker(t, env.LockDir, a, nil)).MoveNamespace(ctx, req, grow)
		if err != nil {
			t.Fatalf("move: %v (result %+v)", err, res)
		}
		if n := len(a.at(lock.AuditBusy, held)); n != 2 {
			t.Errorf("%s refused %d times, want 2 (the first pass and one retry)", held, n)
		}
		if !errors.Is(res.Outcome(), ErrSkipped) || res.Groups != 2 || len(res.Skipped) != 1 ||
			res.Skipped[0].Item != "a:vm/3" || !strings.Contains(res.Skipped[0].Reason, lock.ErrBusy.Error()) {
			t.Fatalf("result %+v", res)
		}
		// Oldest first: the target holds the older part only.
		if snaps, _ := s.ListSnapshots(ctx, big.InNS(name.Root)); len(snaps) != 1 || !snaps[0].Time.Equal(mtAt(0)) {
			t.Errorf("target holds %d snapshot(s), want the oldest", len(snaps))
		}
		if snaps, _ := s.ListSnapshots(ctx, big); len(snaps) != size-1 {
			t.Errorf("source holds %d snapshot(s), want %d", len(snaps), size-1)
		}
		for _, g := range []string{"vm/1", "vm/2"} {
			if snaps, _ := s.ListSnapshots(ctx, mtGroup(t, "", g)); len(snaps) != 3 {
				t.Errorf("%s: %d snapshot(s) at the target, want 3", g, len(snaps))
			}
		}
		if env.Kind != "fs" {
			return // a rerun would copy the rest: the filesystem shows it
		}
		_ = g.Release()
		res, err = s.MoveNamespace(ctx, req, nil)
		mtMustComplete(t, res, err)
		TestVerifyAll(t, s, 3+3+size, 0)
	})
}
