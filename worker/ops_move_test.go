package worker

import (
	"context"
	"errors"
	"testing"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/datastore/name"
	"github.com/pbsq/pbsq/tasks"
)

func TestMoveOpsRequestDefaults(t *testing.T) {
	g, err := moveGroupRequest(&tasks.MoveGroup{Store: "test", NS: "a", BackupType: "vm", BackupID: "100", TargetNS: "b"})
	if err != nil || !g.MergeGroup || g.Group.NS.String() != "a" || g.Group.String() != "vm/100" || g.TargetNS.String() != "b" {
		t.Errorf("move-group defaults: %+v %v", g, err)
	}
	g, _ = moveGroupRequest(&tasks.MoveGroup{Store: "test", NS: "a", BackupType: "vm", BackupID: "100", TargetNS: "b", MergeGroup: ptr(false)})
	if g.MergeGroup {
		t.Error("merge-group=false ignored")
	}
	n, err := moveNamespaceRequest(&tasks.MoveNamespace{Store: "test", NS: "a", TargetNS: "x/y"})
	if err != nil || !n.DeleteSource || !n.MergeGroups || n.MaxDepth != -1 || n.NS.String() != "a" || n.TargetNS.String() != "x/y" {
		t.Errorf("move-namespace defaults: %+v %v", n, err)
	}
	n, _ = moveNamespaceRequest(&tasks.MoveNamespace{Store: "test", NS: "a", TargetNS: "x", MaxDepth: ptr(2), DeleteSource: ptr(false), MergeGroups: ptr(false)})
	if n.DeleteSource || n.MergeGroups || n.MaxDepth != 2 {
		t.Errorf("move-namespace options: %+v", n)
	}
}

// TestMoveOpsExecute runs both moves through Execute, as a worker or
// `pbsq run` does.
func TestMoveOpsExecute(t *testing.T) {
	f := newFixture(t) // a: vm/100 ×2, a/b: ct/200, root: host/h1
	ctx := context.Background()
	if err := f.store.CreateNamespace(ctx, name.MustNamespace("x")); err != nil {
		t.Fatal(err)
	}

	out, err := Execute(ctx, f.stores, &tasks.MoveGroup{Store: testStoreName, NS: "a", BackupType: "vm", BackupID: "100", TargetNS: "nope"}, "t1", nil)
	if !errors.Is(err, name.ErrInvalid) || out != nil {
		t.Fatalf("move-group to a missing namespace: %v, %#v", err, out)
	}

	var phases []string
	out, err = Execute(ctx, f.stores, &tasks.MoveGroup{Store: testStoreName, NS: "a", BackupType: "vm", BackupID: "100", TargetNS: "x"}, "t2",
		func(p datastore.Progress) { phases = append(phases, p.Phase) })
	if err != nil || out.Outcome() != nil {
		t.Fatalf("move-group: %v %+v", err, out)
	}
	if res := out.(*datastore.MoveResult); res.Snapshots != 2 || res.Groups != 1 || len(phases) == 0 {
		t.Errorf("move-group result %+v, phases %v", res, phases)
	}

	out, err = Execute(ctx, f.stores, &tasks.MoveNamespace{Store: testStoreName, NS: "a", TargetNS: "x/a"}, "t3", nil)
	if err != nil || out.Outcome() != nil {
		t.Fatalf("move-namespace: %v %+v", err, out)
	}
	if res := out.(*datastore.MoveResult); res.Snapshots != 1 || res.Groups != 1 || len(res.NamespacesRemoved) != 2 {
		t.Errorf("move-namespace result %+v", res)
	}
	for _, ns := range []string{"a", "a/b"} {
		if ok, _ := f.store.NamespaceExists(ctx, name.MustNamespace(ns)); ok {
			t.Errorf("source namespace %q left", ns)
		}
	}
	g, _ := name.ParseGroup(name.MustNamespace("x/a/b"), "ct/200")
	if snaps, err := f.store.ListSnapshots(ctx, g); err != nil || len(snaps) != 1 {
		t.Errorf("moved group: %v %v", snaps, err)
	}
}

// TestMoveRerunAfterDeath: a worker that dies after a move finished but
// before asynq recorded it leaves a re-run that finds the source gone. The
// re-run counts as done when the target is there; a first run, or a
// re-run whose target is missing too, still reports the missing source.
func TestMoveRerunAfterDeath(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	open := func(store string) (*datastore.Store, error) {
		return f.stores.Open(ctx, store, "t", nil)
	}
	retries := 0
	old := retryCount
	retryCount = func(context.Context) (int, bool) { return retries, true }
	t.Cleanup(func() { retryCount = old })

	group := &tasks.MoveGroup{Store: testStoreName, NS: "a", BackupType: "vm", BackupID: "100", TargetNS: "a/b"}
	ns := &tasks.MoveNamespace{Store: testStoreName, NS: "a/b", TargetNS: "c"}
	runs := []struct {
		name string
		run  func() (Outcome, error)
	}{
		{"group", func() (Outcome, error) { return runMoveGroup(ctx, open, group, nil) }},
		{"namespace", func() (Outcome, error) { return runMoveNamespace(ctx, open, ns, nil) }},
	}
	for _, r := range runs {
		t.Run(r.name, func(t *testing.T) {
			retries = 0
			if out, err := r.run(); err != nil {
				t.Fatalf("first run: %v (%+v)", err, out)
			}
			// The first run's worker "died" before completion was recorded.
			if _, err := r.run(); !errors.Is(err, datastore.ErrNotFound) {
				t.Errorf("a first run that finds the source gone: %v, want ErrNotFound", err)
			}
			retries = 1
			out, err := r.run()
			if err != nil {
				t.Fatalf("re-run of a finished move: %v", err)
			}
			if res, ok := out.(*datastore.MoveResult); !ok || !res.Complete {
				t.Errorf("re-run of a finished move: %+v, want a complete move", out)
			}
		})
	}

	// Neither source nor target: the re-run reports the missing source.
	retries = 1
	missing := &tasks.MoveGroup{Store: testStoreName, NS: "a", BackupType: "vm", BackupID: "999", TargetNS: "x"}
	if _, err := runMoveGroup(ctx, open, missing, nil); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("re-run with neither source nor target: %v, want ErrNotFound", err)
	}
	missingNS := &tasks.MoveNamespace{Store: testStoreName, NS: "nope", TargetNS: "nope2"}
	if _, err := runMoveNamespace(ctx, open, missingNS, nil); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("namespace re-run with neither source nor target: %v, want ErrNotFound", err)
	}
}
