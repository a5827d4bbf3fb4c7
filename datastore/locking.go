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

// storeLock is a lock request on a store's locker.
type storeLock struct {
	s *Store
	r lock.Request
}

// on pairs requests with s, for hold.
func (s *Store) on(reqs ...lock.Request) []storeLock {
	out := make([]storeLock, len(reqs))
	for i, r := range reqs {
		out[i] = storeLock{s, r}
	}
	return out
}

// hold is how every operation takes its set of locks (DESIGN §3.2), on one
// store or across two (sync): in the order given (namespace → group →
// snapshot, several namespaces in lock.SortRequests order), all or
// nothing. It returns a context for the work done under them, cancelled
// as soon as a lease is lost, and a release func; a store with locking
// off takes nothing. See lock.HoldAll.
func hold(ctx context.Context, locks ...storeLock) (context.Context, func(), error) {
	on := make([]lock.On, len(locks))
	for i, l := range locks {
		on[i] = lock.On{Locker: l.s.locks, Request: l.r}
	}
	return lock.HoldAll(ctx, on...)
}

// acquireGuards takes reqs in order and stops at the first failure,
// returning the guards taken (a prefix of reqs) and the error; with
// locking off it takes nothing. It serves work that keeps what it got
// (a group's snapshots, oldest first) and watches the locks of many groups
// at once (lock.Watch): move's snapshot batches, waves and fs batches.
func (s *Store) acquireGuards(ctx context.Context, reqs []lock.Request) ([]*lock.Guard, error) {
	if s.locks == nil {
		return nil, nil
	}
	guards := make([]*lock.Guard, 0, len(reqs))
	for _, r := range reqs {
		g, err := s.locks.Acquire(ctx, r)
		if err != nil {
			return guards, err
		}
		guards = append(guards, g)
	}
	return guards, nil
}
