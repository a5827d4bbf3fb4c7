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
