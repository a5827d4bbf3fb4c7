package worker

import (
	"context"
	"errors"

	"github.com/hibiken/asynq"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/datastore/name"
	"github.com/pbsq/pbsq/tasks"
)

// moveGroupRequest maps the payload (validated) to the operation's request;
// merge-group defaults to true.
func moveGroupRequest(p *tasks.MoveGroup) (datastore.MoveGroupRequest, error) {
	ns, err := name.ParseNamespace(p.NS)
	if err != nil {
		return datastore.MoveGroupRequest{}, err
	}
	g, err := name.NewGroup(ns, p.BackupType, p.BackupID)
	if err != nil {
		return datastore.MoveGroupRequest{}, err
	}
	target, err := name.ParseNamespace(p.TargetNS)
	if err != nil {
		return datastore.MoveGroupRequest{}, err
	}
	return datastore.MoveGroupRequest{Group: g, TargetNS: target, MergeGroup: moveFlag(p.MergeGroup, true)}, nil
}

// moveNamespaceRequest maps the payload (validated) to the operation's
// request; delete-source and merge-groups default to true, max-depth to all.
func moveNamespaceRequest(p *tasks.MoveNamespace) (datastore.MoveNamespaceRequest, error) {
	ns, err := name.ParseNamespace(p.NS)
	if err != nil {
		return datastore.MoveNamespaceRequest{}, err
	}
	target, err := name.ParseNamespace(p.TargetNS)
	if err != nil {
		return datastore.MoveNamespaceRequest{}, err
	}
	return datastore.MoveNamespaceRequest{
		NS:           ns,
		TargetNS:     target,
		MaxDepth:     depth(p.MaxDepth),
		DeleteSource: moveFlag(p.DeleteSource, true),
		MergeGroups:  moveFlag(p.MergeGroups, true),
	}, nil
}

func moveFlag(b *bool, def bool) bool {
	if b == nil {
		return def
	}
	return *b
}

func runMoveGroup(ctx context.Context, open opener, p *tasks.MoveGroup, progress datastore.ProgressFunc) (Outcome, error) {
	req, err := moveGroupRequest(p)
	if err != nil {
		return nil, err
	}
	s, err := open(p.Store)
	if err != nil {
		return nil, err
	}
	res, err := s.MoveGroup(ctx, req, progress)
	if errors.Is(err, datastore.ErrNotFound) && isRetry(ctx) {
		// A worker that died after finishing the move leaves a retry that
		// finds the source gone: done, if the target is there.
		if ok, _ := s.GroupExists(ctx, req.Group.InNS(req.TargetNS)); ok {
			return &datastore.MoveResult{Complete: true}, nil
		}
	}
	// A partial result stays next to its error, so the task record shows
	// what was done.
	return outcome(res, err)
}

// isRetry reports whether this run of a queued task follows an earlier one
// (`pbsq run` has no retry count: it keeps reporting the missing source).
func isRetry(ctx context.Context) bool {
	n, ok := retryCount(ctx)
	return ok && n > 0
}

// retryCount is asynq's; tests stand in for a run that follows a worker's
// death, which asynq alone cannot be made to produce on cue.
var retryCount = asynq.GetRetryCount

func runMoveNamespace(ctx context.Context, open opener, p *tasks.MoveNamespace, progress datastore.ProgressFunc) (Outcome, error) {
	req, err := moveNamespaceRequest(p)
	if err != nil {
		return nil, err
	}
	s, err := open(p.Store)
	if err != nil {
		return nil, err
	}
	res, err := s.MoveNamespace(ctx, req, progress)
	if errors.Is(err, datastore.ErrNotFound) && isRetry(ctx) {
		if ok, _ := s.NamespaceExists(ctx, req.TargetNS); ok {
			return &datastore.MoveResult{Complete: true}, nil
		}
	}
	return outcome(res, err)
}
