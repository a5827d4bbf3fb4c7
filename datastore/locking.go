package datastore

import (
	"context"

	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
)

func (s *Store) nsRequest(ns name.Namespace, mode lock.Mode) lock.Request {
	return lock.Request{Kind: lock.Namespace, Mode: mode, Store: s.name, NS: ns}
}

func (s *Store) groupRequest(g name.Group) lock.Request {
	return lock.Request{Kind: lock.Group, Mode: lock.Exclusive, Store: s.name, NS: g.NS, Group: g}
}

func (s *Store) snapshotRequest(snap name.Snapshot, mode lock.Mode) lock.Request {
	return lock.Request{Kind: lock.Snapshot, Mode: mode, Store: s.name, NS: snap.NS, Group: snap.Group, Snapshot: snap}
}

// lockChain takes the requests in order (callers give namespace → group →
// snapshot) and returns a context for the work done under them, and a
// release func; on failure nothing stays held. The context is cancelled as
// soon as a lease is lost (Redis locks), so the work stops before another
// holder can get in. The root namespace is never locked, as in PBS.
func (s *Store) lockChain(ctx context.Context, reqs []lock.Request) (context.Context, func(), error) {
	if s.locks == nil {
		return ctx, func() {}, nil
	}
	var held []*lock.Guard
	releaseAll := func() {
		for i := len(held) - 1; i >= 0; i-- {
			_ = held[i].Release()
		}
	}
	for _, r := range reqs {
		if r.Kind == lock.Namespace && r.NS.IsRoot() {
			continue
		}
		g, err := s.locks.Acquire(ctx, r)
		if err != nil {
			releaseAll()
			return ctx, nil, err
		}
		held = append(held, g)
	}
	wctx, cancel := lock.Watch(ctx, held...)
	return wctx, func() { cancel(); releaseAll() }, nil
}
