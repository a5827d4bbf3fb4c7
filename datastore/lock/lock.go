// Package lock is the lock layer of pbsq: non-blocking shared/exclusive locks
// on namespaces, backup groups and snapshots of a datastore, with a retry
// window on top.
//
// The kinds and who takes them:
//
//	namespace  shared: anything reading or writing inside it
//	           exclusive: structural change of the namespace itself
//	           (move-namespace source and target, delete-namespace)
//	group      exclusive: writer, move-group, sync target, prune of the group
//	snapshot   shared: verify, sync source read
//	           exclusive: writer, prune removal, move
//
// Taking namespace a/b/c in either mode also takes shared locks on a/b and a
// (never on root), all or nothing, so an exclusive lock on an ancestor
// excludes all work below it at O(depth) cost. Group and snapshot locks take
// no namespace locks themselves: callers take namespace, then group, then
// snapshot, and several namespaces shallowest first (see SortRequests).
//
// A Backend makes single non-blocking attempts (flock on one host, Redis
// leases across hosts); Locker adds the retry window, logging and metrics.
package lock

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/pbsq/pbsq/datastore/name"
)

var (
	// ErrBusy is wrapped by every refusal because someone else holds a
	// conflicting lock.
	ErrBusy = errors.New("lock busy")
	// ErrLeaseLost is the cause of a Watch context cancelled because a lease
	// could no longer be kept; the work it protected must stop.
	ErrLeaseLost = errors.New("lock lease lost")
	// ErrInvalidRequest is wrapped when a Request cannot be locked as given.
	ErrInvalidRequest = errors.New("invalid lock request")
	// ErrClosed is wrapped by attempts on a closed Backend.
	ErrClosed = errors.New("lock backend closed")
)

// Mode is shared or exclusive. The zero value is ModeUnknown, which only
// appears in Held entries of backends that cannot tell the mode.
type Mode uint8

// The lock modes.
const (
	ModeUnknown Mode = iota
	Shared
	Exclusive
)

func (m Mode) String() string {
	switch m {
	case Shared:
		return "shared"
	case Exclusive:
		return "exclusive"
	case ModeUnknown:
		return "held"
	}
	return "mode(" + strconv.Itoa(int(m)) + ")"
}

// Kind is what a lock protects.
type Kind uint8

// The lock kinds; the zero value is invalid.
const (
	Namespace Kind = iota + 1
	Group
	Snapshot
)

func (k Kind) String() string {
	switch k {
	case Namespace:
		return "namespace"
	case Group:
		return "group"
	case Snapshot:
		return "snapshot"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Holder identifies who holds a lock, for error messages and `locks ls`.
type Holder struct {
	Host   string
	PID    int
	TaskID string
}

// String is like "host1 pid 123 task 9f2…", leaving out unknown parts.
func (h Holder) String() string {
	var parts []string
	if h.Host != "" {
		parts = append(parts, h.Host)
	}
	if h.PID != 0 {
		parts = append(parts, "pid "+strconv.Itoa(h.PID))
	}
	if h.TaskID != "" {
		parts = append(parts, "task "+h.TaskID)
	}
	if len(parts) == 0 {
		return "unknown holder"
	}
	return strings.Join(parts, " ")
}

// Request names one lock: a namespace, group or snapshot of a store, in a
// mode. For Group the namespace is Group.NS, for Snapshot it is Snapshot.NS;
// Normalize fills NS (and Group) from them.
type Request struct {
	Kind     Kind
	Mode     Mode
	Store    string
	NS       name.Namespace
	Group    name.Group
	Snapshot name.Snapshot
}

// NamespaceRequest builds a namespace lock request.
func NamespaceRequest(store string, ns name.Namespace, mode Mode) Request {
	return Request{Kind: Namespace, Mode: mode, Store: store, NS: ns}
}

// GroupRequest builds a group lock request; group locks are always exclusive.
func GroupRequest(store string, g name.Group) Request {
	return Request{Kind: Group, Mode: Exclusive, Store: store, NS: g.NS, Group: g}
}

// SnapshotRequest builds a snapshot lock request.
func SnapshotRequest(store string, s name.Snapshot, mode Mode) Request {
	return Request{Kind: Snapshot, Mode: mode, Store: store, NS: s.NS, Group: s.Group, Snapshot: s}
}

// Normalize makes the redundant fields agree with the authoritative ones
// (NS and Group come from Snapshot or Group) and clears unused ones, so that
// two requests for the same lock compare equal.
func (r Request) Normalize() Request {
	switch r.Kind {
	case Namespace:
		r.Group, r.Snapshot = name.Group{}, name.Snapshot{}
	case Group:
		r.NS, r.Snapshot = r.Group.NS, name.Snapshot{}
	case Snapshot:
		r.Group, r.NS = r.Snapshot.Group, r.Snapshot.NS
	}
	return r
}

// Validate reports why r cannot be locked; errors wrap ErrInvalidRequest.
func (r Request) Validate() error {
	bad := func(why string) error { return fmt.Errorf("%w: %s: %s", ErrInvalidRequest, r, why) }
	if err := name.ValidateStore(r.Store); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	switch r.Mode {
	case Shared, Exclusive:
	default:
		return bad("mode must be shared or exclusive")
	}
	switch r.Kind {
	case Namespace:
		if r.NS.IsRoot() {
			return bad("the root namespace is never locked")
		}
	case Group:
		if r.Mode != Exclusive {
			return bad("group locks are exclusive only")
		}
		if _, err := name.NewGroup(r.Group.NS, string(r.Group.Type), r.Group.ID); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidRequest, err)
		}
	case Snapshot:
		if _, err := name.NewGroup(r.Snapshot.NS, string(r.Snapshot.Type), r.Snapshot.ID); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidRequest, err)
		}
		if r.Snapshot.Time.IsZero() {
			return bad("snapshot time not set")
		}
	default:
		return bad("unknown kind")
	}
	return nil
}

// Chain lists the locks a request takes, in acquisition order: for a
// namespace its ancestors in shared mode (shallowest first, root excluded)
// and then the namespace itself; for a group or snapshot just itself.
func (r Request) Chain() []Request {
	r = r.Normalize()
	if r.Kind != Namespace {
		return []Request{r}
	}
	anc := r.NS.Ancestors()
	out := make([]Request, 0, len(anc)+1)
	for _, a := range anc {
		out = append(out, NamespaceRequest(r.Store, a, Shared))
	}
	return append(out, r)
}

// ID identifies the lock regardless of mode: "<store>:<kind>:<path>" where
// path is the namespace components, then for groups and snapshots the
// relative path, all joined by '/' (e.g. "main:group:a/b/vm/100"). Requests
// with equal IDs are the same lock.
func (r Request) ID() string {
	r = r.Normalize()
	var p string
	switch r.Kind {
	case Group:
		p = r.Group.RelPath()
	case Snapshot:
		p = r.Snapshot.RelPath()
	}
	switch {
	case p == "":
		p = r.NS.String()
	case !r.NS.IsRoot():
		p = r.NS.String() + "/" + p
	}
	return r.Store + ":" + r.Kind.String() + ":" + p
}

// Conflicts reports whether a and b are the same lock in modes that exclude
// each other. It ignores hierarchy; compare the Chains for that.
func Conflicts(a, b Request) bool {
	return (a.Mode != Shared || b.Mode != Shared) && a.ID() == b.ID()
}

// String names the lock, e.g. `namespace "a/b" (exclusive) on store "main"`.
func (r Request) String() string {
	return r.describe() + fmt.Sprintf(" on store %q", r.Store)
}

// describe is String without the store.
func (r Request) describe() string {
	r = r.Normalize()
	var what string
	switch r.Kind {
	case Namespace:
		what = fmt.Sprintf("namespace %q", r.NS.String())
	case Group:
		what = fmt.Sprintf("group %q", r.Group.String())
	case Snapshot:
		what = fmt.Sprintf("snapshot %q", r.Snapshot.String())
	default:
		what = r.Kind.String()
	}
	what += " (" + r.Mode.String() + ")"
	if r.Kind != Namespace && !r.NS.IsRoot() {
		what += fmt.Sprintf(" in namespace %q", r.NS.String())
	}
	return what
}

// Held is one current holder of a lock, as listed by Backend.Holders.
type Held struct {
	Request Request // Mode is ModeUnknown where the backend cannot tell
	Holder  Holder  // zero fields where unknown
	Since   time.Time
	Expires time.Time // zero for locks that do not expire (flock)
	Path    string    // where the backend keeps it: lock file or Redis key
}

// BusyError is the refusal of a lock. It wraps ErrBusy.
type BusyError struct {
	Request  Request       // what was asked for
	Conflict Request       // the lock of Request's chain that was busy
	Holder   *Holder       // who holds Conflict; nil when unknown
	Waited   time.Duration // how long Locker retried; 0 for a single try
}

func (e *BusyError) Error() string {
	var b strings.Builder
	b.WriteString(e.Request.String())
	b.WriteString(": ")
	if e.Conflict.Kind != 0 && (e.Conflict.ID() != e.Request.ID() || e.Conflict.Mode != e.Request.Mode) {
		b.WriteString(e.Conflict.describe())
		b.WriteString(" ")
	}
	b.WriteString("busy")
	if e.Waited > 0 {
		b.WriteString(" for " + e.Waited.Round(time.Millisecond).String())
	}
	if e.Holder != nil {
		b.WriteString(", held by " + e.Holder.String())
	} else {
		b.WriteString(", held by another process")
	}
	b.WriteString(": ")
	b.WriteString(ErrBusy.Error())
	return b.String()
}

// Unwrap makes errors.Is(err, ErrBusy) hold.
func (e *BusyError) Unwrap() error { return ErrBusy }
