package datastore

import (
	"fmt"

	"github.com/pbsq/pbsq/datastore/name"
)

// Observer receives events for metrics; the worker implements it with
// Prometheus counters so that this package stays free of them. Any field
// may be nil.
type Observer struct {
	// ChunkVerified: result is ok, corrupt, missing or encrypted.
	ChunkVerified func(result string, bytes int64)
	// SnapshotPruned: action is keep, remove or protected.
	SnapshotPruned func(action string)
	// SnapshotMoved: backend is fs or s3; objects is the files moved.
	SnapshotMoved func(backend string, objects int)
	// SyncChunk: action is copied or present.
	SyncChunk func(action string, bytes int64)
	// Skipped: an item was set aside (reason: busy, ...).
	Skipped func(op, reason string)
	// ChunkRemoved: garbage collection removed a chunk file of that size.
	ChunkRemoved func(bytes int64)
	// Log receives the operation's task-log lines, PBS style: one per
	// snapshot checked, removed, moved or synced, every skip with its
	// reason, errors and a summary. Called from many goroutines.
	Log func(line string)
}

// logf writes one task-log line.
func (o *Observer) logf(format string, args ...any) {
	if o != nil && o.Log != nil {
		o.Log(fmt.Sprintf(format, args...))
	}
}

// snapRef names a snapshot in log lines: type/id/time and its namespace.
func snapRef(sn name.Snapshot) string {
	return sn.String() + " " + nsRef(sn.NS)
}

// groupRef names a group in log lines: type/id and its namespace.
func groupRef(g name.Group) string {
	return g.String() + " " + nsRef(g.NS)
}

func nsRef(ns name.Namespace) string {
	if ns.IsRoot() {
		return "(ns root)"
	}
	return "(ns " + ns.String() + ")"
}

func (o *Observer) chunkVerified(result string, bytes int64) {
	if o != nil && o.ChunkVerified != nil {
		o.ChunkVerified(result, bytes)
	}
}

func (o *Observer) snapshotPruned(action string) {
	if o != nil && o.SnapshotPruned != nil {
		o.SnapshotPruned(action)
	}
}

func (o *Observer) snapshotMoved(backend string, objects int) {
	if o != nil && o.SnapshotMoved != nil {
		o.SnapshotMoved(backend, objects)
	}
}

func (o *Observer) syncChunk(action string, bytes int64) {
	if o != nil && o.SyncChunk != nil {
		o.SyncChunk(action, bytes)
	}
}

func (o *Observer) skipped(op, reason string) {
	if o != nil && o.Skipped != nil {
		o.Skipped(op, reason)
	}
}

func (o *Observer) chunkRemoved(bytes int64) {
	if o != nil && o.ChunkRemoved != nil {
		o.ChunkRemoved(bytes)
	}
}
