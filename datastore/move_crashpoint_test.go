package datastore

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/backend/s3"
	"github.com/pbsq/pbsq/datastore/backend/s3/s3test"
	"github.com/pbsq/pbsq/datastore/name"
)

// crashAfter is an S3 backend that dies after a number of changes: the
// first ones go through, every later one fails, as if the process had been
// killed right there. The change that crashes a DeleteObjects request
// deletes the first half of its keys: a request cut off on the server.
type crashAfter struct {
	*s3.S3
	left atomic.Int64
}

var errCrashed = errors.New("crashed here")

func (c *crashAfter) change() (last bool, err error) {
	n := c.left.Add(-1)
	if n < -1 {
		return false, errCrashed
	}
	return n == -1, nil
}

func (c *crashAfter) step() error {
	if last, err := c.change(); err != nil || last {
		return errCrashed
	}
	return nil
}

func (c *crashAfter) WriteFile(ctx context.Context, n string, data []byte) error {
	if err := c.step(); err != nil {
		return err
	}
	return c.S3.WriteFile(ctx, n, data)
}

func (c *crashAfter) CreateFile(ctx context.Context, n string, data []byte) (bool, error) {
	if err := c.step(); err != nil {
		return false, err
	}
	return c.S3.CreateFile(ctx, n, data)
}

func (c *crashAfter) Remove(ctx context.Context, n string) error {
	if err := c.step(); err != nil {
		return err
	}
	return c.S3.Remove(ctx, n)
}

func (c *crashAfter) RemoveAll(ctx context.Context, dir string) error {
	if err := c.step(); err != nil {
		return err
	}
	return c.S3.RemoveAll(ctx, dir)
}

func (c *crashAfter) RemoveFiles(ctx context.Context, names []string) error {
	last, err := c.change()
	if err != nil {
		return err
	}
	if last {
		_ = c.S3.RemoveFiles(ctx, names[:len(names)/2])
		return errCrashed
	}
	return c.S3.RemoveFiles(ctx, names)
}

func (c *crashAfter) Copy(ctx context.Context, from, to string) error {
	if err := c.step(); err != nil {
		return err
	}
	return c.S3.Copy(ctx, from, to)
}

func (c *crashAfter) Mkdir(ctx context.Context, dir string) error {
	if err := c.step(); err != nil {
		return err
	}
	return c.S3.Mkdir(ctx, dir)
}

func (c *crashAfter) RemoveDir(ctx context.Context, dir string) error {
	if err := c.step(); err != nil {
		return err
	}
	return c.S3.RemoveDir(ctx, dir)
}

func (c *crashAfter) Touch(ctx context.Context, n string) error {
	if err := c.step(); err != nil {
		return err
	}
	return c.S3.Touch(ctx, n)
}

// TestMoveCrashPoints stops a move-namespace on object storage (small
// groups: waves) after its first k changes, for every k until the move
// completes within k. At each stop every snapshot must be finished in at
// least one place and whole wherever it is finished (the manifest is copied
// last and deleted first, and a source goes only once its group's older
// snapshots are copied); a rerun
// must then finish the move: every snapshot exactly once, at its target,
// valid, every moved index journalled, no source left.
func TestMoveCrashPoints(t *testing.T) {
	t.Parallel() // beside TestCreateMakesChunkDirs, which waits on the disk
	req := MoveNamespaceRequest{NS: name.MustNamespace("src"), TargetNS: name.MustNamespace("dst/moved"), MaxDepth: -1, DeleteSource: true, MergeGroups: true}
	cpEachStop(t, cpBuild, func(ctx context.Context, s *Store) (*MoveResult, error) {
		return s.MoveNamespace(ctx, req, nil)
	}, cpCheck)
}

// TestMoveGroupCrashPoints stops a move-group of a group too big for a
// wave (its batch copies and deletes at once, newer snapshots copying
// while older ones are deleted) after each change in turn, as
// TestMoveCrashPoints does for move-namespace.
func TestMoveGroupCrashPoints(t *testing.T) {
	t.Parallel()
	const snaps = waveGroupSnaps + 1
	req := MoveGroupRequest{Group: mtGroup(t, "src", "vm/7"), TargetNS: name.MustNamespace("dst"), MergeGroup: true}
	build := func(t *testing.T, s *Store) map[string]string {
		ctx := context.Background()
		mtNS(t, s, "src", "dst")
		want := map[string]string{}
		// An older snapshot at the target: the move merges.
		for h := 0; h <= snaps; h++ {
			ns := "src"
			if h == 0 {
				ns = "dst"
			}
			sn := name.NewSnapshot(mtGroup(t, ns, "vm/7"), mtAt(h))
			if err := mtPutSnapshot(ctx, s.b, sn, "alice@pbs", 0); err != nil {
				t.Fatal(err)
			}
			want[sn.String()] = "dst"
		}
		return want
	}
	check := func(t *testing.T, k int, s *Store, want map[string]string) {
		t.Helper()
		cpPlaced(t, k, s, want, "ns/src/vm", "ns/dst/vm", mtAt(0))
		ctx := context.Background()
		if o, err := s.GroupOwner(ctx, mtGroup(t, "dst", "vm/7")); err != nil || o != "alice@pbs" {
			t.Errorf("k=%d: owner: %q %v", k, o, err)
		}
		TestVerifyAll(t, s, -1, 0)
	}
	cpEachStop(t, build, func(ctx context.Context, s *Store) (*MoveResult, error) {
		return s.MoveGroup(ctx, req, nil)
	}, check)
}

// cpEachStop runs move on a store that build filled, on a fake S3 that
// fails every change after the first k (k = 0, 1, 2, …) until a run
// completes. After each stop every snapshot must be finished somewhere
// and whole; a rerun must complete, and check then sees the end state.
func cpEachStop(t *testing.T, build func(*testing.T, *Store) map[string]string,
	move func(context.Context, *Store) (*MoveResult, error),
	check func(t *testing.T, k int, s *Store, want map[string]string)) {
	ctx := context.Background()
	for k := 0; ; k++ {
		if k > 2000 {
			t.Fatal("the move never completed")
		}
		// Each stop point on a fake S3 of its own, freed after it: on a
		// shared one every listing went through all the earlier points'
		// objects (the test's time grew with the square of the points).
		done := false
		ok := t.Run(fmt.Sprint("k=", k), func(t *testing.T) {
			srv := s3test.StartFake(t)
			locks := filepath.Join(t.TempDir(), "locks")
			real := srv.New(t, srv.UniquePrefix("crashpoint"))
			s := TestStore(t, TestOn("gofakes3", real), TestFlockAt(locks, 0))
			want := build(t, s)
			crash := &crashAfter{S3: real}
			crash.left.Store(int64(k))
			cs, err := Open("test", crash, Options{Locker: TestFlockLocker(t, locks, 0)})
			if err != nil {
				t.Fatal(err)
			}
			_, err = move(ctx, cs)
			done = err == nil
			if err != nil && !errors.Is(err, errCrashed) {
				t.Fatalf("k=%d: %v", k, err)
			}
			at := cpFinished(t, s)
			for sn, ns := range want {
				if len(at[sn]) == 0 {
					t.Fatalf("k=%d: snapshot %s finished nowhere (want it in %q or its source)", k, sn, ns)
				}
			}
			// Finished means whole: no finished snapshot misses a file. (A
			// verify may well run between a crash and the rerun.)
			if vr, err := s.Verify(ctx, VerifyRequest{Scope: Scope{NS: name.Root, MaxDepth: -1}}, nil); err != nil || len(vr.Failed) > 0 {
				t.Fatalf("k=%d: a finished snapshot is not whole: %v %+v", k, err, vr)
			}
			if !done {
				res, err := move(ctx, s)
				mtMustComplete(t, res, err)
			}
			check(t, k, s, want)
		})
		if !ok || done {
			t.Logf("stopped after 0..%d changes: every stop left each snapshot finished somewhere, every rerun finished", k)
			return
		}
	}
}

// cpBuild writes the source tree: small groups in two namespaces, and an
// older snapshot of one group already at the target (a merge). It returns
// each snapshot's final namespace.
func cpBuild(t *testing.T, s *Store) map[string]string {
	t.Helper()
	ctx := context.Background()
	mtNS(t, s, "src/c", "dst/moved")
	want := map[string]string{}
	put := func(ns, group string, at int, owner string) {
		g := mtGroup(t, ns, group)
		sn := name.NewSnapshot(g, mtAt(at))
		if err := mtPutSnapshot(ctx, s.b, sn, owner, 0); err != nil {
			t.Fatal(err)
		}
		target, _ := name.Rebase(g.NS, name.MustNamespace("src"), name.MustNamespace("dst/moved"))
		if strings.HasPrefix(ns, "dst") {
			target = g.NS
		}
		want[sn.String()] = target.String()
	}
	put("dst/moved", "vm/1", 1, "alice@pbs")
	for h := 0; h < 3; h++ {
		put("src", "vm/1", 10+h, "alice@pbs")
	}
	for i := 2; i <= 4; i++ {
		for h := 0; h < 2; h++ {
			put("src", fmt.Sprintf("vm/%d", i), 10+h, "bob@pbs")
		}
	}
	put("src/c", "ct/5", 10, "carol@pbs")
	return want
}

// cpFinished maps each finished snapshot to the namespaces holding it.
func cpFinished(t *testing.T, s *Store) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	err := s.b.Walk(context.Background(), "", func(fi backend.FileInfo) error {
		parts := strings.Split(fi.Name, "/")
		var comps []string
		for len(parts) >= 2 && parts[0] == "ns" {
			comps, parts = append(comps, parts[1]), parts[2:]
		}
		if len(parts) == 4 && parts[3] == ManifestName {
			k := strings.Join(parts[:3], "/")
			out[k] = append(out[k], strings.Join(comps, "/"))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// cpCheck checks the finished move.
func cpCheck(t *testing.T, k int, s *Store, want map[string]string) {
	t.Helper()
	ctx := context.Background()
	cpPlaced(t, k, s, want, "ns/src", "ns/dst/ns/moved", mtAt(1))
	if mtExistsQuiet(s, "src") {
		t.Errorf("k=%d: source namespace left", k)
	}
	for _, g := range []struct{ ns, group, owner string }{{"dst/moved", "vm/1", "alice@pbs"}, {"dst/moved", "vm/3", "bob@pbs"}, {"dst/moved/c", "ct/5", "carol@pbs"}} {
		if o, err := s.GroupOwner(ctx, mtGroup(t, g.ns, g.group)); err != nil || o != g.owner {
			t.Errorf("k=%d: owner of %s:%s: %q %v", k, g.ns, g.group, o, err)
		}
	}
	TestVerifyAll(t, s, -1, 0)
}

// cpPlaced checks that every snapshot of want is exactly once where want
// says, that nothing is left below srcDir, and that every index below
// dstDir but those of the snapshot that was there before (at before) is
// journalled as moved from the source.
func cpPlaced(t *testing.T, k int, s *Store, want map[string]string, srcDir, dstDir string, before time.Time) {
	t.Helper()
	ctx := context.Background()
	where := mtWhereWalk(t, s)
	for sn, ns := range want {
		if got := where[sn]; len(got) != 1 || got[0] != ns {
			t.Errorf("k=%d: snapshot %s in %v, want exactly once in %q", k, sn, got, ns)
		}
	}
	if len(where) != len(want) {
		t.Errorf("k=%d: %d snapshots, want %d", k, len(where), len(want))
	}
	if err := s.b.Walk(ctx, srcDir, func(fi backend.FileInfo) error {
		return fmt.Errorf("source leftover %s", fi.Name)
	}); err != nil {
		t.Errorf("k=%d: %v", k, err)
	}
	journal := mtJournal(t, s)
	err := s.b.Walk(ctx, dstDir, func(fi backend.FileInfo) error {
		if !strings.HasSuffix(fi.Name, ".fidx") || strings.Contains(fi.Name, before.Format(name.TimeLayout)) {
			return nil
		}
		if from := journal[fi.Name]; !strings.HasPrefix(from, "ns/src/") {
			t.Errorf("k=%d: moved index %s not journalled (from %q)", k, fi.Name, from)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
