package lock

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pbsq/pbsq/datastore/name"
)

// Backend makes single, non-blocking lock attempts. Implementations: flock
// (one host) and redislock (cluster-wide leases).
type Backend interface {
	// TryLock makes one attempt, never sleeping or blocking on the lock.
	// For a namespace it takes the whole Chain atomically, or nothing. A
	// refusal wraps ErrBusy (usually as a *BusyError naming the holder when
	// known).
	TryLock(ctx context.Context, req Request, h Holder) (Lease, error)
	// Holders lists the locks currently held, for `pbsq locks ls`.
	Holders(ctx context.Context) ([]Held, error)
	// Close releases what the backend still holds. Stop the work first.
	Close() error
}

// Lease is one granted Request.
type Lease interface {
	// Release gives the locks back; calling it again does nothing.
	Release() error
	// Lost is closed when the lease can no longer be kept (a Redis lease
	// that could not be refreshed in time); the protected work must stop.
	// It may be nil, for backends whose locks cannot be lost (flock).
	Lost() <-chan struct{}
}

const (
	// DefaultWait is the retry window of a Locker when Options.Wait is 0.
	DefaultWait = 5 * time.Second
	// The backoff between tries starts at firstBackoff and doubles up to
	// maxBackoff; tries are jittered so that competing waiters spread out.
	firstBackoff = 50 * time.Millisecond
	maxBackoff   = time.Second
)

// Options configure a Locker.
type Options struct {
	// Wait is the retry window: 0 means DefaultWait, negative a single try.
	Wait time.Duration
	// Holder is recorded with every lock; Host and PID default to this
	// host and process.
	Holder  Holder
	Logger  *slog.Logger // nil: discard
	Metrics *Metrics     // nil: none
	// Audit, when set, is called on every grant, release, final busy
	// refusal and lost lease, synchronously (keep it fast). Tests use it
	// to check afterwards that no two holders ever overlapped.
	Audit func(AuditEvent)
}

// AuditOp is what an AuditEvent records.
type AuditOp uint8

// The audited events.
const (
	// AuditGrant: the lock is held from Time on.
	AuditGrant AuditOp = iota + 1
	// AuditRelease: the lock is held no more after Time.
	AuditRelease
	// AuditBusy: Acquire gave up after its retry window (or a single try).
	AuditBusy
	// AuditLost: the lease was lost at Time; the work under it stops, and
	// a later AuditRelease of the same guard changes nothing.
	AuditLost
)

func (o AuditOp) String() string {
	switch o {
	case AuditGrant:
		return "grant"
	case AuditRelease:
		return "release"
	case AuditBusy:
		return "busy"
	case AuditLost:
		return "lost"
	}
	return "op(" + strconv.Itoa(int(o)) + ")"
}

// AuditEvent is one audited lock event. A grant's Time is taken after the
// backend granted the lock and a release's before the backend releases it,
// so the interval between them lies within the time the lock was really
// held: overlaps found in an audit are real.
type AuditEvent struct {
	Op      AuditOp
	Time    time.Time
	Request Request
	Holder  Holder
	// Guard pairs a grant with its release or loss; unique per process.
	Guard uint64
	// Waited is the time Acquire spent (grant and busy only).
	Waited time.Duration
}

// Locker takes locks through a Backend, retrying busy ones within its
// window. It is safe for concurrent use; With* return adjusted copies.
type Locker struct {
	backend Backend
	wait    time.Duration
	holder  Holder
	log     *slog.Logger
	metrics *Metrics
	audit   func(AuditEvent)
	// onWait is told when Acquire starts waiting for a busy lock.
	onWait func(req Request, busy error, window time.Duration)
}

// guardSeq numbers guards for AuditEvent.Guard.
var guardSeq atomic.Uint64

// New builds a Locker on backend.
func New(backend Backend, opts Options) *Locker {
	l := &Locker{backend: backend, wait: opts.Wait, holder: opts.Holder, log: opts.Logger, metrics: opts.Metrics, audit: opts.Audit}
	switch {
	case l.wait == 0:
		l.wait = DefaultWait
	case l.wait < 0:
		l.wait = 0
	}
	if l.holder.Host == "" {
		l.holder.Host, _ = os.Hostname()
	}
	if l.holder.PID == 0 {
		l.holder.PID = os.Getpid()
	}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	return l
}

// WithWait returns a copy with retry window d; d <= 0 means a single try.
func (l *Locker) WithWait(d time.Duration) *Locker {
	c := *l
	c.wait = max(d, 0)
	return &c
}

// WithWaitNotice returns a copy that calls fn once per Acquire that finds
// its lock busy and starts waiting for it (a task log's "waiting for lock"
// line); busy names the holder when known.
func (l *Locker) WithWaitNotice(fn func(req Request, busy error, window time.Duration)) *Locker {
	c := *l
	c.onWait = fn
	return &c
}

// WithTask returns a copy that records taskID as the holder's task.
func (l *Locker) WithTask(taskID string) *Locker {
	c := *l
	c.holder.TaskID = taskID
	return &c
}

// Wait is the retry window (0: a single try), for locks taken beside the
// Backend's, such as a chunk store's process lock.
func (l *Locker) Wait() time.Duration { return l.wait }

// Holder is who this Locker's locks are recorded as held by.
func (l *Locker) Holder() Holder { return l.holder }

// Namespace locks ns (and its ancestors, shared). Locking the root in
// shared mode is a no-op Guard, since root is never locked; exclusive root
// is invalid.
func (l *Locker) Namespace(ctx context.Context, store string, ns name.Namespace, mode Mode) (*Guard, error) {
	return l.Acquire(ctx, NamespaceRequest(store, ns, mode))
}

// Group locks a backup group exclusively.
func (l *Locker) Group(ctx context.Context, store string, g name.Group) (*Guard, error) {
	return l.Acquire(ctx, GroupRequest(store, g))
}

// Snapshot locks a snapshot.
func (l *Locker) Snapshot(ctx context.Context, store string, s name.Snapshot, mode Mode) (*Guard, error) {
	return l.Acquire(ctx, SnapshotRequest(store, s, mode))
}

// Acquire takes req, retrying with jittered backoff while it is busy until
// the window ends; then it returns a *BusyError (wrapping ErrBusy). When
// ctx ends first it returns an error wrapping ctx's cause.
func (l *Locker) Acquire(ctx context.Context, req Request) (*Guard, error) {
	req = req.Normalize()
	if req.Kind == Namespace && req.NS.IsRoot() && req.Mode == Shared {
		// Root itself is never locked; shared "root" means no lock at all.
		if err := name.ValidateStore(req.Store); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidRequest, err)
		}
		return &Guard{req: req}, nil
	}
	if err := req.Validate(); err != nil {
		return nil, err
	}
	start := time.Now()
	deadline := start.Add(l.wait)
	backoff := firstBackoff
	var busy error // the last refusal
	for {
		if err := context.Cause(ctx); err != nil {
			return nil, l.cancelled(req, start, busy, err)
		}
		lease, err := l.backend.TryLock(ctx, req, l.holder)
		if err == nil {
			waited := time.Since(start)
			l.metrics.observe(req, "ok", waited)
			l.log.DebugContext(ctx, "lock acquired", "lock", req.String(), "waited", waited)
			g := &Guard{req: req, lease: lease, log: l.log}
			if l.audit != nil {
				g.audited(l.audit, l.holder, waited)
			}
			return g, nil
		}
		if !errors.Is(err, ErrBusy) {
			if cause := context.Cause(ctx); cause != nil && errors.Is(err, ctx.Err()) {
				return nil, l.cancelled(req, start, busy, cause)
			}
			return nil, l.fail(req, start, "error", fmt.Errorf("lock %s: %w", req, err))
		}
		first := busy == nil
		busy = err
		remaining := time.Until(deadline)
		if first && remaining > 0 && l.onWait != nil {
			l.onWait(req, err, l.wait)
		}
		if remaining <= 0 {
			l.auditBusy(req, start)
			return nil, l.fail(req, start, "busy", withWaited(req, err, time.Since(start)))
		}
		sleep := min(backoff/2+rand.N(backoff/2+1), remaining)
		backoff = min(2*backoff, maxBackoff)
		l.log.DebugContext(ctx, "lock busy, retrying", "lock", req.String(), "err", err, "retry_in", sleep)
		t := time.NewTimer(sleep)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
}

// cancelled is the error when ctx ends while waiting: it wraps ctx's cause
// (not ErrBusy, so that callers see why they stopped) and tells who held
// the lock, if a try was refused.
func (l *Locker) cancelled(req Request, start time.Time, busy, cause error) error {
	if busy == nil {
		return l.fail(req, start, "error", fmt.Errorf("%s: %w", req, cause))
	}
	l.auditBusy(req, start)
	held := "another process"
	var be *BusyError
	if errors.As(busy, &be) && be.Holder != nil {
		held = be.Holder.String()
	}
	return l.fail(req, start, "busy", fmt.Errorf("%s: gave up waiting after %s, held by %s: %w",
		req, time.Since(start).Round(time.Millisecond), held, cause))
}

func (l *Locker) auditBusy(req Request, start time.Time) {
	if l.audit != nil {
		now := time.Now()
		l.audit(AuditEvent{Op: AuditBusy, Time: now, Request: req, Holder: l.holder, Waited: now.Sub(start)})
	}
}

func (l *Locker) fail(req Request, start time.Time, result string, err error) error {
	waited := time.Since(start)
	l.metrics.observe(req, result, waited)
	l.log.Info("lock not acquired", "lock", req.String(), "waited", waited, "err", err)
	return err
}

// withWaited records the wait in the backend's BusyError, keeping it the
// error callers see.
func withWaited(req Request, err error, waited time.Duration) error {
	var be *BusyError
	if errors.As(err, &be) {
		c := *be
		c.Request, c.Waited = req, waited
		return &c
	}
	return fmt.Errorf("%s: busy for %s: %w", req, waited.Round(time.Millisecond), err)
}

// AcquireAll takes several locks in the deadlock-free order of SortRequests
// and returns the guards in that order; on failure it releases what it took.
func (l *Locker) AcquireAll(ctx context.Context, reqs ...Request) ([]*Guard, error) {
	sorted := slices.Clone(reqs)
	SortRequests(sorted)
	on := make([]On, len(sorted))
	for i, r := range sorted {
		on[i] = On{Locker: l, Request: r}
	}
	return acquireAll(ctx, on)
}

// On is one lock to take: a request on a Locker (nil: locking is off).
type On struct {
	Locker  *Locker
	Request Request
}

// Hold is HoldAll with every request on l.
func (l *Locker) Hold(ctx context.Context, reqs ...Request) (context.Context, func(), error) {
	on := make([]On, len(reqs))
	for i, r := range reqs {
		on[i] = On{Locker: l, Request: r}
	}
	return HoldAll(ctx, on...)
}

// HoldAll takes the locks in the order given (callers give namespace →
// group → snapshot, several namespaces as SortRequests orders them) and
// returns a context for the work done under them and a release function
// that stops watching and releases them, last taken first. The context is
// cancelled, with a cause wrapping ErrLeaseLost, as soon as a lease is
// lost (Redis locks), so the work stops before another holder can get in.
// On failure nothing stays held. The root namespace is never locked, as in
// PBS, and a nil Locker takes nothing.
func HoldAll(ctx context.Context, locks ...On) (context.Context, func(), error) {
	locks = slices.DeleteFunc(slices.Clone(locks), func(o On) bool {
		return o.Locker == nil || (o.Request.Kind == Namespace && o.Request.NS.IsRoot())
	})
	held, err := acquireAll(ctx, locks)
	if err != nil {
		return ctx, nil, err
	}
	wctx, cancel := Watch(ctx, held...)
	return wctx, func() { cancel(); _ = ReleaseAll(held...) }, nil
}

// acquireAll takes the locks in order; on failure it releases what it took.
func acquireAll(ctx context.Context, locks []On) ([]*Guard, error) {
	held := make([]*Guard, 0, len(locks))
	for _, o := range locks {
		g, err := o.Locker.Acquire(ctx, o.Request)
		if err != nil {
			_ = ReleaseAll(held...)
			return nil, err
		}
		held = append(held, g)
	}
	return held, nil
}

// ReleaseAll releases guards in reverse order, returning the joined errors.
func ReleaseAll(guards ...*Guard) error {
	var errs []error
	for i := len(guards) - 1; i >= 0; i-- {
		errs = append(errs, guards[i].Release())
	}
	return errors.Join(errs...)
}

// Holders lists the backend's current lock holders.
func (l *Locker) Holders(ctx context.Context) ([]Held, error) { return l.backend.Holders(ctx) }

// SortRequests orders requests for taking them one after another: namespaces
// first, shallowest first, then by store and path; then groups, then
// snapshots. Tasks that take several locks in this order never hold one
// while retrying another that a peer holds while retrying theirs, so
// they cannot starve each other.
func SortRequests(reqs []Request) {
	slices.SortStableFunc(reqs, func(a, b Request) int {
		a, b = a.Normalize(), b.Normalize()
		return cmp.Or(
			cmp.Compare(a.Kind, b.Kind),
			cmp.Compare(a.NS.Depth(), b.NS.Depth()),
			cmp.Compare(a.ID(), b.ID()),
		)
	})
}

// Guard is a held lock. Release it when done (defer g.Release()).
type Guard struct {
	req   Request
	lease Lease // nil for the no-op root guard
	log   *slog.Logger
	once  sync.Once
	err   error

	// Set when auditing (see Options.Audit).
	audit    func(AuditEvent)
	holder   Holder
	id       uint64
	released chan struct{}
}

// audited records the grant and arranges for the release (and a lost
// lease) to be recorded too.
func (g *Guard) audited(audit func(AuditEvent), h Holder, waited time.Duration) {
	g.audit, g.holder, g.id = audit, h, guardSeq.Add(1)
	audit(AuditEvent{Op: AuditGrant, Time: time.Now(), Request: g.req, Holder: h, Guard: g.id, Waited: waited})
	lost := g.lease.Lost()
	if lost == nil {
		return
	}
	g.released = make(chan struct{})
	go func() {
		select {
		case <-lost:
			audit(AuditEvent{Op: AuditLost, Time: time.Now(), Request: g.req, Holder: h, Guard: g.id})
		case <-g.released:
		}
	}()
}

// Request is what the guard holds.
func (g *Guard) Request() Request { return g.req }

// Release gives the lock back; later calls return the first call's result.
// A nil Guard releases nothing.
func (g *Guard) Release() error {
	if g == nil || g.lease == nil {
		return nil
	}
	g.once.Do(func() {
		if g.audit != nil {
			// Before the backend lets go, so the audit never claims a
			// lock held longer than it was.
			g.audit(AuditEvent{Op: AuditRelease, Time: time.Now(), Request: g.req, Holder: g.holder, Guard: g.id})
			if g.released != nil {
				close(g.released)
			}
		}
		if err := g.lease.Release(); err != nil {
			g.err = fmt.Errorf("release %s: %w", g.req, err)
			g.log.Warn("lock release failed", "lock", g.req.String(), "err", err)
		}
	})
	return g.err
}

// Lost is closed when the lease behind the guard is lost; nil (never
// ready) when it cannot be lost.
func (g *Guard) Lost() <-chan struct{} {
	if g == nil || g.lease == nil {
		return nil
	}
	return g.lease.Lost()
}

// Watch returns a context that is cancelled, with a cause wrapping
// ErrLeaseLost, as soon as any guard's lease is lost: run the protected
// operation under it so that it stops before the lease can run out and
// another holder get in. Call the CancelFunc when done.
func Watch(ctx context.Context, guards ...*Guard) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	for _, g := range guards {
		lost := g.Lost()
		if lost == nil {
			continue
		}
		go func() {
			select {
			case <-lost:
				cancel(fmt.Errorf("%s: %w", g.req, ErrLeaseLost))
			case <-ctx.Done():
			}
		}()
	}
	return ctx, func() { cancel(context.Canceled) }
}
