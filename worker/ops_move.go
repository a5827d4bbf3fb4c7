package worker

import (
	"context"
	"errors"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/tasks"
)

// runMoveGroup is not wired yet. TODO(pbsq): replace with the real operation.
func runMoveGroup(ctx context.Context, open opener, p *tasks.MoveGroup, progress datastore.ProgressFunc) (Outcome, error) {
	return nil, errors.New("MoveGroup: not implemented yet")
}

// runMoveNamespace is not wired yet. TODO(pbsq): replace with the real operation.
func runMoveNamespace(ctx context.Context, open opener, p *tasks.MoveNamespace, progress datastore.ProgressFunc) (Outcome, error) {
	return nil, errors.New("MoveNamespace: not implemented yet")
}
