// Package redislock is the cluster-wide lock backend: locks are leases in
// Redis, taken and refused atomically per chain by one Lua script (one round
// trip per try), refreshed in the background and given up early when they
// cannot be refreshed, so that a holder stops before another can get in.
//
// Keys are "<prefix>:<store>:<kind>:<path>" (see lock.Request.ID), e.g.
// "pbsq:lock:main:namespace:a/b". A chain's keys share no hash slot, so
// this needs a single Redis (or Sentinel), not Redis Cluster.
package redislock

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
)

const (
	// DefaultPrefix starts every key.
	DefaultPrefix = "pbsq:lock"
	// DefaultLease is how long a lease lives on the server without refresh.
	DefaultLease = 30 * time.Second
	// MinLease keeps refresh intervals above scheduling noise.
	MinLease = 300 * time.Millisecond
	// releaseTimeout bounds a release; entries left behind expire anyway.
	releaseTimeout = 2 * time.Second
)

// Options configure a Backend.
type Options struct {
	Prefix string        // key prefix; default DefaultPrefix
	Lease  time.Duration // default DefaultLease, at least MinLease
	Logger *slog.Logger  // nil: discard
}

// Backend implements lock.Backend on Redis.
//
// Timing of a lease of length L: it is refreshed every L/3; a failed
// refresh is retried every L/15. Every successful try (acquire or refresh)
// sets the server-side expiry to the server's time of running the script
// plus L, which is no earlier than lastOK + L, lastOK being the moment the
// try was sent. Refreshes are given up at lastOK + L - margin (margin = L/6):
// no refresh reply is awaited beyond that point, and Lost is closed then at
// the latest, even with Redis unreachable. So the holder learns of the loss
// at least margin (5 s for the default 30 s) before any other client can be
// granted the lock; the margin absorbs timer latency, clock-rate drift and
// the time the work takes to stop (lock.Watch).
type Backend struct {
	rdb    redis.UniversalClient
	prefix string
	lease  time.Duration
	every  time.Duration // refresh interval
	retry  time.Duration // after a failed refresh
	margin time.Duration
	log    *slog.Logger

	mu     sync.Mutex
	closed bool
	leases map[*lease]struct{}
}

var _ lock.Backend = (*Backend)(nil)

// New builds a Backend on rdb, which it does not close.
func New(rdb redis.UniversalClient, opts Options) *Backend {
	l := max(cmp.Or(opts.Lease, DefaultLease), MinLease)
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Backend{
		rdb: rdb, prefix: cmp.Or(opts.Prefix, DefaultPrefix),
		lease: l, every: l / 3, retry: l / 15, margin: l / 6,
		log: log, leases: make(map[*lease]struct{}),
	}
}

// Key is the Redis key of req's lock.
func (b *Backend) Key(req lock.Request) string { return b.prefix + ":" + req.ID() }

// Lease is the lease length.
func (b *Backend) Lease() time.Duration { return b.lease }

// holderInfo is the JSON part of a member.
type holderInfo struct {
	Host  string `json:"h,omitempty"`
	PID   int    `json:"p,omitempty"`
	Task  string `json:"t,omitempty"`
	Since int64  `json:"s"` // Unix ms, holder's clock
}

// TryLock runs the acquire script once for the whole chain.
func (b *Backend) TryLock(ctx context.Context, req lock.Request, h lock.Holder) (lock.Lease, error) {
	req = req.Normalize()
	if err := req.Validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("redislock: %s: %w", req, lock.ErrClosed)
	}
	chain := req.Chain()
	keys := make([]string, len(chain))
	modes := make([]byte, len(chain))
	for i, u := range chain {
		keys[i] = b.Key(u)
		modes[i] = 'S'
		if u.Mode == lock.Exclusive {
			modes[i] = 'X'
		}
	}
	var tok [12]byte
	_, _ = rand.Read(tok[:]) // never fails
	since := time.Now()
	info, err := json.Marshal(holderInfo{Host: h.Host, PID: h.PID, Task: h.TaskID, Since: since.UnixMilli()})
	if err != nil {
		return nil, err
	}
	l := &lease{
		b: b, req: req, keys: keys,
		args: []any{b.lease.Milliseconds(), hex.EncodeToString(tok[:]) + "|" + string(info), string(modes)},
		lost: make(chan struct{}), done: make(chan struct{}),
	}
	res, err := acquireScript.Run(ctx, b.rdb, keys, l.args...).Slice()
	if err != nil {
		// The script may have run (say the reply timed out): take back
		// whatever it recorded rather than block others for a lease.
		_ = l.release()
		return nil, fmt.Errorf("redislock: %s: %w", req, err)
	}
	if len(res) == 0 {
		return nil, fmt.Errorf("redislock: %s: empty reply from acquire script", req)
	}
	if ok, _ := res[0].(int64); ok != 1 {
		be := &lock.BusyError{Request: req, Conflict: req}
		if len(res) == 3 {
			if i, _ := res[1].(int64); i >= 1 && int(i) <= len(chain) {
				be.Conflict = chain[i-1]
			}
			if m, _ := res[2].(string); m != "" {
				if _, h, _, ok := parseMember(m); ok {
					be.Holder = &h
				}
			}
		}
		return nil, be
	}
	kctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	l.stop = stop
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		stop()
		close(l.done)
		_ = l.release()
		return nil, fmt.Errorf("redislock: %s: %w", req, lock.ErrClosed)
	}
	b.leases[l] = struct{}{}
	b.mu.Unlock()
	go l.keep(kctx, since)
	return l, nil
}

// Holders scans the keys under the prefix (SCAN, never KEYS) and lists
// their unexpired members.
func (b *Backend) Holders(ctx context.Context) ([]lock.Held, error) {
	now, err := b.rdb.Time(ctx).Result()
	if err != nil {
		return nil, fmt.Errorf("redislock: list holders: %w", err)
	}
	unexpired := "(" + strconv.FormatInt(now.UnixMilli(), 10)
	var out []lock.Held
	flush := func(keys []string) error {
		if len(keys) == 0 {
			return nil
		}
		pipe := b.rdb.Pipeline()
		cmds := make([]*redis.ZSliceCmd, len(keys))
		for i, k := range keys {
			cmds[i] = pipe.ZRangeByScoreWithScores(ctx, k, &redis.ZRangeBy{Min: unexpired, Max: "+inf"})
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		for i, k := range keys {
			req, ok := b.decodeKey(k)
			if !ok {
				continue
			}
			for _, z := range cmds[i].Val() {
				m, _ := z.Member.(string)
				mode, h, since, ok := parseMember(m)
				if !ok {
					continue
				}
				r := req
				r.Mode = mode
				out = append(out, lock.Held{Request: r, Holder: h, Since: since,
					Expires: time.UnixMilli(int64(z.Score)), Path: k})
			}
		}
		return nil
	}
	var batch []string
	iter := b.rdb.Scan(ctx, 0, b.prefix+":*", 512).Iterator()
	for iter.Next(ctx) {
		if batch = append(batch, iter.Val()); len(batch) == 256 {
			if err := flush(batch); err != nil {
				return nil, fmt.Errorf("redislock: list holders: %w", err)
			}
			batch = batch[:0]
		}
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("redislock: list holders: %w", err)
	}
	if err := flush(batch); err != nil {
		return nil, fmt.Errorf("redislock: list holders: %w", err)
	}
	slices.SortStableFunc(out, func(a, b lock.Held) int { return cmp.Compare(a.Path, b.Path) })
	return out, nil
}

// decodeKey maps "<prefix>:<store>:<kind>:<path>" back to a request.
func (b *Backend) decodeKey(key string) (lock.Request, bool) {
	rest, ok := strings.CutPrefix(key, b.prefix+":")
	if !ok {
		return lock.Request{}, false
	}
	parts := strings.SplitN(rest, ":", 3)
	if len(parts) != 3 {
		return lock.Request{}, false
	}
	store, kind, path := parts[0], parts[1], parts[2]
	comps := strings.Split(path, "/")
	nsOf := func(n int) (name.Namespace, string, bool) {
		if len(comps) < n {
			return name.Root, "", false
		}
		ns, err := name.ParseNamespace(strings.Join(comps[:len(comps)-n], "/"))
		return ns, strings.Join(comps[len(comps)-n:], "/"), err == nil
	}
	switch kind {
	case lock.Namespace.String():
		ns, err := name.ParseNamespace(path)
		return lock.Request{Kind: lock.Namespace, Store: store, NS: ns}, err == nil && !ns.IsRoot()
	case lock.Group.String():
		ns, rel, ok := nsOf(2)
		g, err := name.ParseGroup(ns, rel)
		return lock.Request{Kind: lock.Group, Store: store, NS: ns, Group: g}, ok && err == nil
	case lock.Snapshot.String():
		ns, rel, ok := nsOf(3)
		s, err := name.ParseSnapshot(ns, rel)
		return lock.Request{Kind: lock.Snapshot, Store: store, NS: ns, Group: s.Group, Snapshot: s}, ok && err == nil
	}
	return lock.Request{}, false
}

// parseMember decodes "<S|X>|<token>|<holder json>".
func parseMember(m string) (lock.Mode, lock.Holder, time.Time, bool) {
	parts := strings.SplitN(m, "|", 3)
	if len(parts) != 3 {
		return 0, lock.Holder{}, time.Time{}, false
	}
	mode := lock.Shared
	switch parts[0] {
	case "S":
	case "X":
		mode = lock.Exclusive
	default:
		return 0, lock.Holder{}, time.Time{}, false
	}
	var info holderInfo
	if err := json.Unmarshal([]byte(parts[2]), &info); err != nil {
		return 0, lock.Holder{}, time.Time{}, false
	}
	return mode, lock.Holder{Host: info.Host, PID: info.PID, TaskID: info.Task}, time.UnixMilli(info.Since), true
}

// Close releases the leases still held through this Backend (stop their
// work first). It does not close the Redis client.
func (b *Backend) Close() error {
	b.mu.Lock()
	b.closed = true
	leases := make([]*lease, 0, len(b.leases))
	for l := range b.leases {
		leases = append(leases, l)
	}
	b.mu.Unlock()
	var errs []error
	for _, l := range leases {
		errs = append(errs, l.Release())
	}
	return errors.Join(errs...)
}

// lease is a granted chain, kept alive by keep until released or lost.
type lease struct {
	b    *Backend
	req  lock.Request
	keys []string
	args []any // lease ms, member id, modes: as the scripts take them

	stop     context.CancelFunc
	done     chan struct{} // closed when keep has returned
	lost     chan struct{}
	lostOnce sync.Once
	relOnce  sync.Once
	relErr   error
}

func (l *lease) Lost() <-chan struct{} { return l.lost }

func (l *lease) markLost(why string) {
	l.lostOnce.Do(func() {
		close(l.lost)
		l.b.log.Warn("lock lease lost", "lock", l.req.String(), "why", why)
	})
}

// keep refreshes the lease; see Backend for the timing and its bound.
// lastOK is when the last successful try was sent.
func (l *lease) keep(ctx context.Context, lastOK time.Time) {
	defer close(l.done)
	b := l.b
	next := lastOK.Add(b.every)
	for {
		deadline := lastOK.Add(b.lease - b.margin)
		wake := next
		if wake.After(deadline) {
			wake = deadline
		}
		t := time.NewTimer(time.Until(wake))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if !time.Now().Before(deadline) {
			l.markLost(fmt.Sprintf("not refreshed within %s", b.lease-b.margin))
			return
		}
		sent := time.Now()
		rctx, cancel := context.WithDeadline(ctx, deadline)
		res, err := refreshScript.Run(rctx, b.rdb, l.keys, l.args...).Int64Slice()
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			b.log.Warn("lock lease refresh failed", "lock", l.req.String(), "err", err)
			next = time.Now().Add(b.retry)
		case len(res) < 2 || res[0] != 1:
			why := "entry gone"
			if len(res) == 2 && res[1] >= 1 && int(res[1]) <= len(l.keys) {
				why = "entry gone from " + l.keys[res[1]-1]
			}
			l.markLost(why)
			return
		default:
			lastOK, next = sent, sent.Add(b.every)
		}
	}
}

// Release stops refreshing and removes the lease's own entries. It does not
// wait past min(2 s, lease); if Redis is unreachable the entries expire.
func (l *lease) Release() error {
	l.relOnce.Do(func() {
		l.stop()
		<-l.done
		l.b.mu.Lock()
		delete(l.b.leases, l)
		l.b.mu.Unlock()
		if err := l.release(); err != nil {
			l.relErr = fmt.Errorf("redislock: release %s (entries expire within %s): %w", l.req, l.b.lease, err)
		}
	})
	return l.relErr
}

func (l *lease) release() error {
	ctx, cancel := context.WithTimeout(context.Background(), min(releaseTimeout, l.b.lease))
	defer cancel()
	return releaseScript.Run(ctx, l.b.rdb, l.keys, l.args...).Err()
}
