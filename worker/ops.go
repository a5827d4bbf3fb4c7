// Package worker runs pbsq's tasks: the asynq server and mux, one thin
// handler per task type, the lock-retry policy, the progress reporter, the
// metrics and the scheduler. Execute is also what `pbsq run` calls, so the
// queue and the in-process path run the very same code.
package worker

import (
	"context"
	"fmt"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/datastore/name"
	"github.com/pbsq/pbsq/datastore/prune"
	"github.com/pbsq/pbsq/tasks"
)

// Stores opens datastores by name, already bound to a locker whose holder
// records taskID and whose retry window is wait (nil: the default).
type Stores interface {
	Open(ctx context.Context, store string, taskID string, wait *tasks.Duration) (*datastore.Store, error)
}

// Outcome is implemented by results that fold into ok/skipped/failed.
type Outcome interface{ Outcome() error }

// Execute runs one validated payload in-process and returns its result.
// The error is non-nil for failures of the operation itself; a completed
// result with failed or skipped items is reported by its Outcome.
func Execute(ctx context.Context, stores Stores, p tasks.Payload, taskID string, progress datastore.ProgressFunc) (Outcome, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	open := opener(func(store string) (*datastore.Store, error) {
		return stores.Open(ctx, store, taskID, p.Wait())
	})
	switch p := p.(type) {
	case *tasks.Verify:
		s, err := open(p.Store)
		if err != nil {
			return nil, err
		}
		req, err := verifyRequest(p, taskID)
		if err != nil {
			return nil, err
		}
		req.Share = shareFrom(ctx)
		return outcome(s.Verify(ctx, req, progress))
	case *tasks.Prune:
		s, err := open(p.Store)
		if err != nil {
			return nil, err
		}
		req, err := pruneRequest(p)
		if err != nil {
			return nil, err
		}
		return outcome(s.Prune(ctx, req, progress))
	case *tasks.MoveGroup:
		return runMoveGroup(ctx, open, p, progress)
	case *tasks.MoveNamespace:
		return runMoveNamespace(ctx, open, p, progress)
	case *tasks.Sync:
		return runSync(ctx, open, p, progress)
	case *tasks.GC:
		return runGC(ctx, open, p, progress)
	}
	return nil, fmt.Errorf("%w task type %s", name.ErrInvalid, p.TaskType())
}

// outcome returns an operation's result as an Outcome, and a nil result as
// a nil Outcome: a nil *VerifyResult in the interface would not compare
// equal to nil, and callers would print or record it as "null".
func outcome[R any, P interface {
	*R
	Outcome
}](res P, err error) (Outcome, error) {
	if res == nil {
		return nil, err
	}
	return res, err
}

// opener opens a datastore for the running task.
type opener func(store string) (*datastore.Store, error)

func depth(d *int) int {
	if d == nil {
		return -1
	}
	return *d
}

// scope builds a datastore scope from the common payload fields.
func scope(ns, typ, id, snapshot string, maxDepth *int) (datastore.Scope, error) {
	n, err := name.ParseNamespace(ns)
	if err != nil {
		return datastore.Scope{}, err
	}
	sc := datastore.Scope{NS: n, MaxDepth: depth(maxDepth)}
	if typ != "" {
		g, err := name.NewGroup(n, typ, id)
		if err != nil {
			return sc, err
		}
		sc.Group = &g
		if snapshot != "" {
			t, err := name.ParseTime(snapshot)
			if err != nil {
				return sc, err
			}
			snap := name.NewSnapshot(g, t)
			sc.Snapshot = &snap
		}
	}
	return sc, nil
}

func verifyRequest(p *tasks.Verify, taskID string) (datastore.VerifyRequest, error) {
	sc, err := scope(p.NS, p.BackupType, p.BackupID, p.Snapshot, p.MaxDepth)
	if err != nil {
		return datastore.VerifyRequest{}, err
	}
	ignore := true
	if p.IgnoreVerified != nil {
		ignore = *p.IgnoreVerified
	}
	if p.Shard != nil {
		if sc.Groups, err = shardGroups(p.Shard); err != nil {
			return datastore.VerifyRequest{}, err
		}
	}
	req := datastore.VerifyRequest{Scope: sc, IgnoreVerified: ignore, OutdatedAfter: p.OutdatedAfter, TaskID: taskID, ReadOnly: p.ReadOnly}
	if p.Sample != nil {
		req.Sample = *p.Sample
	}
	if p.MaxDuration != nil {
		req.MaxDuration = p.MaxDuration.Duration
	}
	return req, nil
}

// shardGroups are the groups a shard covers.
func shardGroups(sh *tasks.ShardOf) ([]name.Group, error) {
	out := make([]name.Group, 0, len(sh.Groups))
	for _, s := range sh.Groups {
		g, err := tasks.ParseShardGroup(s)
		if err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	return out, nil
}

func pruneRequest(p *tasks.Prune) (datastore.PruneRequest, error) {
	sc, err := scope(p.NS, p.BackupType, p.BackupID, "", p.MaxDepth)
	if err != nil {
		return datastore.PruneRequest{}, err
	}
	var keep prune.Options
	var setErr error
	p.Keep.Each(func(key string, v int) {
		if err := keep.Set(key, v); err != nil && setErr == nil {
			setErr = fmt.Errorf("%w: %w", name.ErrInvalid, err)
		}
	})
	if setErr != nil {
		return datastore.PruneRequest{}, setErr
	}
	return datastore.PruneRequest{Scope: sc, Keep: keep, DryRun: p.DryRun}, nil
}
