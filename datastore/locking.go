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
// snapshot) and returns a release func; on failure nothing stays held. The
// root namespace is never locked, as in PBS.
func (s *Store) lockChain(ctx context.Context, reqs []lock.Request) (func(), error) {
	if s.locks == nil {
		return func() {}, nil
	}
	var held []*lock.Guard
	release := func() {
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
			release()
			return nil, err
		}
		held = append(held, g)
	}
	return release, nil
}
