package worker

import (
	"context"
	"errors"
	"testing"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/tasks"
)

// TestExecuteNoResultIsNil: an operation that fails before it has a result
// returns a nil Outcome, not a nil *Result in the interface, which `pbsq
// run` would print as "null" and the task record would carry.
func TestExecuteNoResultIsNil(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	for _, p := range []tasks.Payload{
		&tasks.Verify{Store: testStoreName, NS: "missing"},
		&tasks.Prune{Store: testStoreName, NS: "missing", Keep: tasks.Keep{KeepLast: ptr(1)}},
		&tasks.Sync{SourceStore: testStoreName, SourceNS: "missing", Store: testStoreName, NS: "x"},
		&tasks.MoveGroup{Store: testStoreName, NS: "a", BackupType: "vm", BackupID: "999", TargetNS: "a/b"},
		&tasks.MoveNamespace{Store: testStoreName, NS: "missing", TargetNS: "x"},
	} {
		out, err := Execute(ctx, f.stores, p, "t", nil)
		if !errors.Is(err, datastore.ErrNotFound) {
			t.Errorf("%s: error %v, want ErrNotFound", p.TaskType(), err)
		}
		if out != nil {
			t.Errorf("%s: result %#v, want a nil Outcome", p.TaskType(), out)
		}
	}
}
