// Package datastore is the domain of pbsq: a PBS-format datastore on a
// backend, its namespaces, groups, snapshots and chunks, and the maintenance
// operations (backup, move, prune, verify, sync, gc), one file each. It knows
// nothing about the queue: every operation takes a context and a progress
// callback and returns a result struct.
package datastore

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"strings"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
)

// Errors callers map to exit codes. Bad input (a name, a request or a
// precondition that makes the request impossible as asked; nothing has
// been changed) wraps name.ErrInvalid, as everywhere in pbsq.
var (
	// ErrNotFound marks a missing namespace, group or snapshot.
	ErrNotFound = errors.New("not found")
	// ErrSkipped marks a result that completed but left busy items aside.
	ErrSkipped = errors.New("completed with skipped items")
)

// invalidf builds a name.ErrInvalid error.
func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", name.ErrInvalid, fmt.Sprintf(format, args...))
}

// Store is one datastore.
type Store struct {
	name  string
	b     backend.Backend
	locks *lock.Locker
	log   *slog.Logger
	obs   *Observer
	// pbs: manifest lock and PBS move journal in the flock locks dir (nil
	// without Options.LocksDir); see pbsinterop.go.
	pbs *pbsLocks
	// inUseOverride: see Options.PBSInUseOverride.
	inUseOverride string
}

// Options configure Open.
type Options struct {
	// Locker serialises work on the store; nil means no locking (tests and
	// read-only listing).
	Locker *lock.Locker
	Logger *slog.Logger
	// Observer receives metric events; nil for none.
	Observer *Observer
	// LocksDir is the flock lock backend's dir. With it, manifest updates
	// and removals take PBS's manifest lock there and filesystem moves and
	// GC use PBS's move journal there; "" (Redis lock backend, tests) for
	// neither.
	LocksDir string
	// PBSInUseOverride, on object storage, lets writing operations run
	// although PBS's .in-use marker names this host (or "*": any host):
	// the administrator has taken the datastore out of PBS's hands.
	PBSInUseOverride string
}

// Open wraps an existing datastore on b.
func Open(storeName string, b backend.Backend, opts Options) (*Store, error) {
	if err := name.ValidateStore(storeName); err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Store{name: storeName, b: b, locks: opts.Locker, log: log.With("store", storeName), obs: opts.Observer,
		pbs: newPBSLocks(opts.LocksDir), inUseOverride: opts.PBSInUseOverride}, nil
}

// Name is the datastore name.
func (s *Store) Name() string { return s.name }

// Backend is the storage below the store.
func (s *Store) Backend() backend.Backend { return s.b }

// Locker returns the store's locker (may be nil).
func (s *Store) Locker() *lock.Locker { return s.locks }

// WithLocker returns a copy of s that uses l, e.g. one bound to a task id
// and lock-wait window.
func (s *Store) WithLocker(l *lock.Locker) *Store {
	c := *s
	c.locks = l
	return &c
}

// WithObserver returns a copy of s that reports events to o.
func (s *Store) WithObserver(o *Observer) *Store {
	c := *s
	c.obs = o
	return &c
}

// WithLogger returns a copy of s that logs to l.
func (s *Store) WithLogger(l *slog.Logger) *Store {
	c := *s
	c.log = l.With("store", s.name)
	return &c
}

// String names the store for messages.
func (s *Store) String() string { return fmt.Sprintf("%s (%s)", s.name, s.b) }

// markerFile identifies a pbsq/PBS datastore on object storage, where an
// empty prefix is indistinguishable from a missing one.
const markerFile = ".datastore"

// IsDatastore reports whether b looks like a datastore (has a chunk store or,
// on object storage, the marker).
func IsDatastore(ctx context.Context, b backend.Backend) (bool, error) {
	if b.Features().ImplicitDirs {
		if _, err := b.Stat(ctx, markerFile); err == nil {
			return true, nil
		} else if !errors.Is(err, fs.ErrNotExist) {
			return false, err
		}
	}
	fi, err := b.Stat(ctx, ".chunks")
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return fi.Dir, nil
}

// Create initialises a new datastore on b: the chunk store with its 65536
// prefix directories (filesystem), or the marker (object storage). A
// backend that already holds a different datastore is refused.
func Create(ctx context.Context, storeName string, b backend.Backend, opts Options) (*Store, error) {
	if err := name.ValidateStore(storeName); err != nil {
		return nil, err
	}
	if b.Features().ImplicitDirs {
		// PBS's own S3 datastore: creating ours on it would write into it.
		probe := &Store{name: storeName, b: b, inUseOverride: opts.PBSInUseOverride, log: slog.New(slog.DiscardHandler)}
		if err := probe.checkPBSInUse(ctx); err != nil {
			return nil, err
		}
		data, err := backend.ReadFileMax(ctx, b, markerFile, 4<<10)
		switch {
		case err == nil && strings.TrimSpace(string(data)) != storeName:
			return nil, invalidf("%s already holds datastore %q; choose another prefix", b, strings.TrimSpace(string(data)))
		case err == nil:
			// Re-creating the same store is idempotent.
		case errors.Is(err, fs.ErrNotExist):
			if err := b.WriteFile(ctx, markerFile, []byte(storeName+"\n")); err != nil {
				return nil, fmt.Errorf("create datastore %q: %w", storeName, err)
			}
		default:
			return nil, fmt.Errorf("create datastore %q: %w", storeName, err)
		}
	} else {
		// PBS's chunk-store process lock file (processlock.go), created
		// before the chunk directories as PBS does; never replaced, since
		// someone may hold a lock on it.
		if _, err := b.CreateFile(ctx, processLockName, nil); err != nil {
			return nil, fmt.Errorf("create datastore %q: %w", storeName, err)
		}
		for i := 0; i < 1<<16; i++ {
			if err := b.Mkdir(ctx, chunkDir(uint16(i))); err != nil {
				return nil, fmt.Errorf("create datastore %q: %w", storeName, err)
			}
		}
	}
	return Open(storeName, b, opts)
}

func chunkDir(prefix uint16) string {
	var p [2]byte
	p[0], p[1] = byte(prefix>>8), byte(prefix)
	return ".chunks/" + hex.EncodeToString(p[:])
}
