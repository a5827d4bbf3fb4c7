package worker

import (
	"context"
	"errors"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/tasks"
)

// runSync is not wired yet. TODO(pbsq): replace with the real operation.
func runSync(ctx context.Context, open opener, p *tasks.Sync, progress datastore.ProgressFunc) (Outcome, error) {
	return nil, errors.New("Sync: not implemented yet")
}
