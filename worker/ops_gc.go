package worker

import (
	"context"
	"errors"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/tasks"
)

// runGC is not wired yet. TODO(pbsq): replace with the real operation.
func runGC(ctx context.Context, open opener, p *tasks.GC, progress datastore.ProgressFunc) (Outcome, error) {
	return nil, errors.New("GC: not implemented yet")
}
