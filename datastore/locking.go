package datastore

import (
	"context"

	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
)

func (s *Store) nsRequest(ns name.Namespace, mode lock.Mode) lock.Request {
	return lock.NamespaceRequest(s.name, ns, mode)
}

func (s *Store) groupRequest(g name.Group) lock.Request {
	return lock.GroupRequest(s.name, g)
}

func (s *Store) snapshotRequest(snap name.Snapshot, mode lock.Mode) lock.Request {
	return lock.SnapshotRequest(s.name, snap, mode)
}

// lockChain takes the requests in order (callers give namespace → group →
// snapshot) and returns a context for the work done under them, cancelled
// as soon as a lease is lost, and a release func; see lock.HoldAll.
func (s *Store) lockChain(ctx context.Context, reqs []lock.Request) (context.Context, func(), error) {
	return s.locks.Hold(ctx, reqs...)
}

// lockGuards takes group locks and returns their guards, for work that
// watches the locks of many groups at once (move waves and batches); with
// locking off it takes nothing.
func (s *Store) lockGuards(ctx context.Context, reqs []lock.Request) ([]*lock.Guard, error) {
	if s.locks == nil {
		return nil, nil
	}
	return s.locks.AcquireAll(ctx, reqs...)
}
