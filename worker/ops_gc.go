package worker

import (
	"context"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/tasks"
)

// runGC runs garbage collection on one store. GC takes no namespace locks;
// a GC already running on the store makes it fail with lock.ErrBusy, which
// the worker treats like any busy lock (re-queue without spending retries).
func runGC(ctx context.Context, open opener, p *tasks.GC, progress datastore.ProgressFunc) (Outcome, error) {
	s, err := open(p.Store)
	if err != nil {
		return nil, err
	}
	return outcome(s.GC(ctx, datastore.GCRequest{DryRun: p.DryRun}, progress))
}
