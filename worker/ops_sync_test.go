package worker

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/datastore/name"
	"github.com/pbsq/pbsq/tasks"
)

// TestSyncTask runs a sync payload through Execute: namespaces, filters,
// transfer-last and the owner default reach the operation.
func TestSyncTask(t *testing.T) {
	ctx := context.Background()
	srcDir, dstDir := t.TempDir(), t.TempDir()
	stores := &testStores{dirs: map[string]string{"src": srcDir, "dst": dstDir}, locksDir: filepath.Join(t.TempDir(), "locks")}
	src := datastore.TestStore(t, datastore.TestName("src"), datastore.TestAt(srcDir))
	t0 := time.Date(2024, 3, 1, 10, 0, 0, 0, time.UTC)
	for h := 0; h < 3; h++ {
		at := t0.Add(time.Duration(h) * time.Hour)
		datastore.TestBackup(t, src, "a", "vm/100", at, datastore.TestFile(t, "disk.img", 100, 0))
		datastore.TestBackup(t, src, "a", "ct/200", at, datastore.TestFile(t, "disk.img", 100, 0))
		datastore.TestBackup(t, src, "a/b", "ct/201", at, datastore.TestFile(t, "disk.img", 100, 0))
	}
	one, depth := 1, 0
	p := &tasks.Sync{
		SourceStore: "src", SourceNS: "a", Store: "dst", NS: "x",
		MaxDepth: &depth, GroupFilter: []string{"exclude:type:vm"}, TransferLast: &one,
	}
	out, err := Execute(ctx, stores, p, "task-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	res, ok := out.(*datastore.SyncResult)
	if !ok || res.Outcome() != nil || res.Snapshots != 1 {
		t.Fatalf("result %#v", out)
	}
	dst := datastore.TestStore(t, datastore.TestName("dst"), datastore.TestAt(dstDir))
	g := name.Group{NS: name.MustNamespace("x"), Type: name.TypeCT, ID: "200"}
	snaps, err := dst.ListSnapshots(ctx, g)
	if err != nil || len(snaps) != 1 || !snaps[0].Time.Equal(t0.Add(2*time.Hour)) {
		t.Fatalf("target snapshots %v, %v", snaps, err)
	}
	if owner, err := dst.GroupOwner(ctx, g); err != nil || owner != datastore.DefaultSyncOwner {
		t.Errorf("owner %q, %v", owner, err)
	}
	if ok, _ := dst.NamespaceExists(ctx, name.MustNamespace("x/b")); ok {
		t.Error("max-depth 0 synced a child namespace")
	}

	// A missing source namespace is the operation's error, no result.
	p.SourceNS = "nope"
	if out, err := Execute(ctx, stores, p, "task-2", nil); !errors.Is(err, datastore.ErrNotFound) || out != nil {
		t.Errorf("missing source namespace: %v, %v", out, err)
	}
}
