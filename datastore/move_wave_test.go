package datastore

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/backend"
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
				if snaps, err := s.ListSnapshots(ctx, dst); err != nil || len(snaps) != 3 {
					t.Errorf("target: %d snapshots, %v", len(snaps), err)
				}
				if ok, _ := s.GroupExists(ctx, src); ok {
					t.Error("source group left")
				}
				if recs, _ := s.b.List(ctx, moveStateDir); len(recs) != 0 {
					t.Errorf("move records left: %v", recs)
				}
				TestVerifyAll(t, s, -1, 0)
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
