package datastore

import (
	"context"
	"fmt"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/backend/s3"
	"github.com/pbsq/pbsq/datastore/backend/s3/s3test"
	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
)

// TestMoveResumeDeletesOutOfOrder resumes what a move on object storage
// leaves when it is killed while the source deletes of copied snapshots
// land out of order (several DeleteObjects requests at once): every
// snapshot copied, the newest one already gone at the source, the older
// ones still there. The rerun must accept it and finish, as a merge with
// merging off too (the move's own record is there).
func TestMoveResumeDeletesOutOfOrder(t *testing.T) {
	eachBackend(t, func(t *testing.T, newEnv func(t testing.TB, opts ...TestStoreOption) *TestEnv) {
		for _, merge := range []bool{true, false} {
			t.Run(fmt.Sprint("merge-", merge), func(t *testing.T) {
				env := newEnv(t, TestFlock(-1))
				if env.Kind == "fs" {
					t.Skip("a filesystem renames: no copies to leave behind")
				}
				s, ctx := env.Store, context.Background()
				mtNS(t, s, "a", "b")
				for h := 0; h < 3; h++ {
					mtBackup(t, s, "a", "vm/1", h, "alice@pbs")
				}
				src := mtGroup(t, "a", "vm/1")
				dst := src.InNS(name.MustNamespace("b"))
				if !merge {
					if err := s.writeMoveRecord(ctx, src, dst); err != nil {
						t.Fatal(err)
					}
				}
				var files []string
				err := s.b.Walk(ctx, src.Path(), func(fi backend.FileInfo) error {
					files = append(files, fi.Name)
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				newest := name.NewSnapshot(src, mtAt(2)).Path() + "/"
				for _, f := range files {
					to := dst.Path() + strings.TrimPrefix(f, src.Path())
					if err := s.b.Copy(ctx, f, to); err != nil {
						t.Fatal(err)
					}
					if strings.HasPrefix(f, newest) {
						if err := s.b.Remove(ctx, f); err != nil {
							t.Fatal(err)
						}
					}
				}
				res, err := s.MoveGroup(ctx, MoveGroupRequest{Group: src, TargetNS: dst.NS, MergeGroup: merge}, nil)
				mtMustComplete(t, res, err)
				mtGroupMoved(t, s, src, dst, 3)
			})
		}
	})
}

// TestMoveNamespaceBusySnapshot holds a snapshot in the middle of a small
// group while a move-namespace moves it with other small groups (waves on
// object storage, batches on a filesystem): the older snapshot moves, the
// held one and the newer stay, the group is reported busy, the other
// groups move completely, and a rerun finishes.
func TestMoveNamespaceBusySnapshot(t *testing.T) {
	eachBackend(t, func(t *testing.T, newEnv func(t testing.TB, opts ...TestStoreOption) *TestEnv) {
		env := newEnv(t, TestFlock(-1))
		s, ctx := env.Store, context.Background()
		ns := name.MustNamespace
		mtNS(t, s, "a")
		for g := 1; g <= 5; g++ {
			for h := 0; h < 3; h++ {
				mtBackup(t, s, "a", fmt.Sprintf("vm/%d", g), h, "alice@pbs")
			}
		}
		src := mtGroup(t, "a", "vm/3")
		held, err := TestFlockLocker(t, env.LockDir, -1).Snapshot(ctx, "test", name.NewSnapshot(src, mtAt(1)), lock.Shared)
		if err != nil {
			t.Fatal(err)
		}
		req := MoveNamespaceRequest{NS: ns("a"), TargetNS: ns("b"), MaxDepth: -1, DeleteSource: true, MergeGroups: false}
		res, err := s.WithLocker(s.Locker().WithWait(20*time.Millisecond)).MoveNamespace(ctx, req, nil)
		if err != nil {
			t.Fatal(err)
		}
		if res.Complete || len(res.Skipped) != 1 || res.Skipped[0].Item != "a:vm/3" || res.Groups != 4 || res.Snapshots != 13 {
			t.Fatalf("result %+v", res)
		}
		// Oldest first: the target holds the older part only.
		if snaps, _ := s.ListSnapshots(ctx, src.InNS(ns("b"))); len(snaps) != 1 || !snaps[0].Time.Equal(mtAt(0)) {
			t.Errorf("target %+v", snaps)
		}
		if snaps, _ := s.ListSnapshots(ctx, src); len(snaps) != 2 {
			t.Errorf("source %+v", snaps)
		}
		_ = held.Release()
		// merge-groups=false still finishes its own interrupted move.
		res, err = s.MoveNamespace(ctx, req, nil)
		mtMustComplete(t, res, err)
		if res.Groups != 1 || res.Snapshots != 2 || mtExists(t, s, "a") {
			t.Errorf("rerun result %+v", res)
		}
		for sn, nss := range mtWhere(t, s) {
			if len(nss) != 1 || nss[0] != "b" {
				t.Errorf("%s in %v", sn, nss)
			}
		}
		if recs, _ := s.b.List(ctx, moveStateDir); len(recs) != 0 {
			t.Errorf("move records left: %v", recs)
		}
		TestVerifyAll(t, s, -1, 0)
	})
}

// TestMoveNamespaceS3Requests moves a namespace of 150 one-snapshot
// groups on versitygw and counts the requests by operation: each object
// is copied once, every source delete goes in a shared DeleteObjects
// request, and everything else (listings, checks, journal, markers) stays
// a small part of the copies. (The snapshots' chunk is not written: this
// counts objects, TestMoveNamespace* verify.) Moved group by group, the same namespace
// took 157 such requests (73 DeleteObjects); waves that pool their
// deletes take about 70.
func TestMoveNamespaceS3Requests(t *testing.T) {
	srv := s3test.StartVersity(t)
	var mu sync.Mutex
	ops := map[string]int{}
	counting := false
	bk := srv.New(t, srv.UniquePrefix("requests"), s3.WithRequestHook(func(op, code string) {
		mu.Lock()
		defer mu.Unlock()
		if counting {
			ops[op]++
		}
	}))
	s := TestStore(t, TestName("requests"), TestOn("s3", bk), TestFlock(0))
	ctx := context.Background()
	mtNS(t, s, "src")
	const groups = 150
	objects := 0
	for _, sn := range mtBenchGroups(t, "src", groups, 1) {
		if err := bk.WriteFile(ctx, backend.Join(sn.Group.Path(), "owner"), []byte("root@pam\n")); err != nil {
			t.Fatal(err)
		}
		objects++
		for fn, data := range mtBenchFiles(t, sn, 2) {
			if err := bk.WriteFile(ctx, sn.File(fn), data); err != nil {
				t.Fatal(err)
			}
			objects++
		}
	}
	mu.Lock()
	counting = true
	mu.Unlock()
	res, err := s.MoveNamespace(ctx, MoveNamespaceRequest{NS: name.MustNamespace("src"), TargetNS: name.MustNamespace("dst"), MaxDepth: -1, DeleteSource: true, MergeGroups: true}, nil)
	mtMustComplete(t, res, err)
	mu.Lock()
	counting = false
	mu.Unlock()
	other := 0
	for op, n := range ops {
		if op != "CopyObject" {
			other += n
		}
	}
	t.Logf("%d objects: %v", objects, ops)
	if ops["CopyObject"] != objects {
		t.Errorf("%d copies of %d objects", ops["CopyObject"], objects)
	}
	if ops["DeleteObject"] != 0 {
		t.Errorf("%d single deletes, want all in DeleteObjects", ops["DeleteObject"])
	}
	if other > objects/7 {
		t.Errorf("%d requests besides the copies of %d objects, want at most %d", other, objects, objects/7)
	}
	if res.Groups != groups || mtExists(t, s, "src") {
		t.Errorf("result %+v", res)
	}
	moved := 0
	err = bk.Walk(ctx, "ns/dst", func(fi backend.FileInfo) error {
		if path.Base(fi.Name) != namespaceMarker {
			moved++
		}
		return nil
	})
	if err != nil || moved != objects {
		t.Errorf("%d of %d objects at the target: %v", moved, objects, err)
	}
}

// copyGate holds the copies of one snapshot until every other copy is
// done, and records each DeleteObjects.
type copyGate struct {
	*s3.S3
	held    string // path prefix of the held snapshot
	others  int    // copies to wait for
	done    atomic.Int64
	release chan struct{}

	mu       sync.Mutex
	released bool
	deletes  [][]string
}

func (g *copyGate) Copy(ctx context.Context, from, to string) error {
	if strings.HasPrefix(from, g.held) {
		select {
		case <-g.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := g.S3.Copy(ctx, from, to); err != nil {
		return err
	}
	if !strings.HasPrefix(from, g.held) && g.done.Add(1) == int64(g.others) {
		g.mu.Lock()
		g.released = true
		g.mu.Unlock()
		close(g.release)
	}
	return nil
}

func (g *copyGate) RemoveFiles(ctx context.Context, names []string) error {
	g.mu.Lock()
	if !g.released {
		g.deletes = append(g.deletes, names)
	}
	g.mu.Unlock()
	return g.S3.RemoveFiles(ctx, names)
}

// TestMoveDeletesOnlyCopiedPrefix moves a group whose oldest snapshot
// copies last: while it is held, enough newer snapshots are copied to
// fill DeleteObjects requests, yet none of them may be deleted at the
// source (a crash would leave them at the target only, newer than a
// snapshot still at the source).
func TestMoveDeletesOnlyCopiedPrefix(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := s3test.StartFake(t)
	real := srv.New(t, srv.UniquePrefix("prefix"))
	locks := filepath.Join(t.TempDir(), "locks")
	s := TestStore(t, TestOn("gofakes3", real), TestFlockAt(locks, 0))
	mtNS(t, s, "a", "b")
	snaps := deleteMinBatch + 20 // more manifests than a request waits for
	g := mtGroup(t, "a", "vm/1")
	for h := 0; h < snaps; h++ {
		if err := mtPutSnapshot(ctx, s.b, name.NewSnapshot(g, mtAt(h)), "alice@pbs", 0); err != nil {
			t.Fatal(err)
		}
	}
	oldest := name.NewSnapshot(g, mtAt(0))
	files, err := s.b.List(ctx, oldest.Path())
	if err != nil {
		t.Fatal(err)
	}
	gate := &copyGate{S3: real, held: oldest.Path() + "/", others: (snaps - 1) * len(files), release: make(chan struct{})}
	gs, err := Open("test", gate, Options{Locker: TestFlockLocker(t, locks, 0)})
	if err != nil {
		t.Fatal(err)
	}
	res, err := gs.MoveGroup(ctx, MoveGroupRequest{Group: g, TargetNS: name.MustNamespace("b")}, nil)
	mtMustComplete(t, res, err)
	for _, names := range gate.deletes {
		t.Errorf("deleted %d source files (%s, …) before the oldest snapshot was copied", len(names), names[0])
	}
	mtGroupMoved(t, s, g, g.InNS(name.MustNamespace("b")), snaps)
}

// TestMoveGroupManyBatches moves a group of more snapshots than a batch
// locks at once, into a new target group with merging off (a move record
// from first to last): every batch moves, the record and the source group
// go after the last one.
func TestMoveGroupManyBatches(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, newEnv func(t testing.TB, opts ...TestStoreOption) *TestEnv) {
		env := newEnv(t, TestFlock(-1))
		s, ctx := env.Store, context.Background()
		mtNS(t, s, "a", "b")
		g := mtGroup(t, "a", "vm/1")
		const snaps = moveBatch + 3
		for h := 0; h < snaps; h++ {
			if err := mtPutSnapshot(ctx, s.b, name.NewSnapshot(g, mtAt(h)), "alice@pbs", 0); err != nil {
				t.Fatal(err)
			}
		}
		res, err := s.MoveGroup(ctx, MoveGroupRequest{Group: g, TargetNS: name.MustNamespace("b")}, nil)
		mtMustComplete(t, res, err)
		if res.Snapshots != snaps {
			t.Errorf("moved %d snapshots, want %d", res.Snapshots, snaps)
		}
		mtGroupMoved(t, s, g, g.InNS(name.MustNamespace("b")), snaps)
	})
}

// mtGroupMoved checks a finished group move: n snapshots at dst, src gone,
// no move record left, the store verifies.
func mtGroupMoved(t *testing.T, s *Store, src, dst name.Group, n int) {
	t.Helper()
	ctx := context.Background()
	if snaps, err := s.ListSnapshots(ctx, dst); err != nil || len(snaps) != n {
		t.Errorf("target: %d snapshots, want %d, %v", len(snaps), n, err)
	}
	if ok, _ := s.GroupExists(ctx, src); ok {
		t.Error("source group left")
	}
	if recs, _ := s.b.List(ctx, moveStateDir); len(recs) != 0 {
		t.Errorf("move records left: %v", recs)
	}
	TestVerifyAll(t, s, -1, 0)
}

// TestMoveWithoutBatchDeletes moves on object storage that deletes only
// one file per request (no backend.BatchRemover): the deleter removes
// one by one, and a move-group and a move-namespace finish as on S3.
func TestMoveWithoutBatchDeletes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := s3test.StartFake(t)
	one := struct{ backend.Backend }{srv.New(t, srv.UniquePrefix("single"))}
	if _, ok := backend.Backend(one).(backend.BatchRemover); ok {
		t.Fatal("the wrapper still deletes in batches")
	}
	s := TestStore(t, TestOn("gofakes3", one), TestFlock(-1))
	mtNS(t, s, "a", "b")
	g := mtGroup(t, "a", "vm/1")
	for h := 0; h < waveGroupSnaps+2; h++ {
		mtBackup(t, s, "a", "vm/1", h, "alice@pbs")
		mtBackup(t, s, "a", "ct/2", h, "bob@pbs")
	}
	res, err := s.MoveGroup(ctx, MoveGroupRequest{Group: g, TargetNS: name.MustNamespace("b")}, nil)
	mtMustComplete(t, res, err)
	mtGroupMoved(t, s, g, g.InNS(name.MustNamespace("b")), waveGroupSnaps+2)
	res, err = s.MoveNamespace(ctx, MoveNamespaceRequest{NS: name.MustNamespace("b"), TargetNS: name.MustNamespace("c"), MaxDepth: -1, DeleteSource: true, MergeGroups: true}, nil)
	mtMustComplete(t, res, err)
	mtGroupMoved(t, s, g.InNS(name.MustNamespace("b")), g.InNS(name.MustNamespace("c")), waveGroupSnaps+2)
}
