package redislock_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/lock/redislock"
	"github.com/pbsq/pbsq/datastore/lock/redistest"
	"github.com/pbsq/pbsq/datastore/name"
)

// gate is a go-redis hook that can cut a client off from Redis, as a
// network partition would: commands hang until their context ends.
type gate struct{ closed atomic.Bool }

func (g *gate) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		return next(ctx, network, addr)
	}
}

func (g *gate) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if g.closed.Load() {
			<-ctx.Done()
			cmd.SetErr(ctx.Err())
			return ctx.Err()
		}
		return next(ctx, cmd)
	}
}

func (g *gate) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// counter counts round trips: one per command or pipeline.
type counter struct{ n atomic.Int64 }

func (c *counter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *counter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmd)
	}
}
func (c *counter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmds)
	}
}

func nsReq(s string, m lock.Mode) lock.Request {
	return lock.NamespaceRequest("main", name.MustNamespace(s), m)
}

// A holder cut off from Redis must learn of the loss (Lost, Watch) before
// its lease expires on the server and so before anyone else is granted it.
func TestLeaseLostBeforeOthersGetIn(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	const lease = 600 * time.Millisecond

	g := &gate{}
	ca := srv.Client()
	ca.AddHook(g)
	la := lock.New(redislock.New(ca, redislock.Options{Lease: lease}), lock.Options{Wait: -1, Holder: lock.Holder{TaskID: "A"}})
	ga, err := la.Namespace(ctx, "main", name.MustNamespace("a"), lock.Exclusive)
	if err != nil {
		t.Fatal(err)
	}
	acquired := time.Now()
	wctx, cancel := lock.Watch(ctx, ga)
	defer cancel()
	lostAt := make(chan time.Time, 1)
	go func() { <-wctx.Done(); lostAt <- time.Now() }()
	g.closed.Store(true) // A's refreshes now hang

	lb := lock.New(redislock.New(srv.Client(), redislock.Options{Lease: lease}), lock.Options{Wait: 3 * time.Second, Holder: lock.Holder{TaskID: "B"}})
	gb, err := lb.Namespace(ctx, "main", name.MustNamespace("a/b"), lock.Shared)
	granted := time.Now()
	if err != nil {
		t.Fatalf("B not granted after A's lease expired: %v", err)
	}
	defer gb.Release()

	var lost time.Time
	select {
	case lost = <-lostAt:
	case <-time.After(time.Second):
		t.Fatal("A's watch context not cancelled although B holds the lock")
	}
	if !errors.Is(context.Cause(wctx), lock.ErrLeaseLost) {
		t.Errorf("watch cause %v, want ErrLeaseLost", context.Cause(wctx))
	}
	select {
	case <-ga.Lost():
	default:
		t.Error("A's Lost not closed")
	}
	t.Logf("A acquired, lost after %s, B granted after %s", lost.Sub(acquired), granted.Sub(acquired))
	if !lost.Before(granted) {
		t.Errorf("A learned of the loss at %s, after B was granted at %s", lost.Sub(acquired), granted.Sub(acquired))
	}
	if d := granted.Sub(acquired); d < lease-50*time.Millisecond {
		t.Errorf("B granted %s after A acquired, before A's lease of %s could expire", d, lease)
	}
	if d := lost.Sub(acquired); d > lease {
		t.Errorf("loss noticed %s after acquiring, later than the lease %s", d, lease)
	}
	g.closed.Store(false)
	if err := ga.Release(); err != nil { // removes nothing of B's
		t.Errorf("release after loss: %v", err)
	}
	if _, err := lb.WithWait(0).Namespace(ctx, "main", name.MustNamespace("a"), lock.Exclusive); !errors.Is(err, lock.ErrBusy) {
		t.Errorf("A's release dropped B's share: %v", err)
	}
}

func TestLeaseLostWhenEntryDeleted(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := context.Background()
	b := redislock.New(srv.Client(), redislock.Options{Lease: 900 * time.Millisecond})
	defer b.Close()
	req := nsReq("a/b", lock.Exclusive)
	l, err := b.TryLock(ctx, req, lock.Holder{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	start := time.Now()
	if err := srv.Client().Del(ctx, b.Key(req)).Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.Lost():
		t.Logf("lost noticed after %s", time.Since(start))
	case <-time.After(900 * time.Millisecond):
		t.Fatal("deleted lease not noticed within one lease period")
	}
}

func TestRefreshKeepsLease(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := context.Background()
	const lease = 600 * time.Millisecond
	b := redislock.New(srv.Client(), redislock.Options{Lease: lease})
	defer b.Close()
	other := redislock.New(srv.Client(), redislock.Options{Lease: lease})
	defer other.Close()
	l, err := b.TryLock(ctx, nsReq("a/b", lock.Exclusive), lock.Holder{Host: "h1", PID: 42, TaskID: "t1"})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.Lost():
		t.Fatal("lease lost although refreshed")
	case <-time.After(3 * lease):
	}
	_, err = other.TryLock(ctx, nsReq("a", lock.Exclusive), lock.Holder{})
	var be *lock.BusyError
	if !errors.As(err, &be) {
		t.Fatalf("after 3 lease periods: %v, want busy", err)
	}
	if be.Holder == nil || *be.Holder != (lock.Holder{Host: "h1", PID: 42, TaskID: "t1"}) || be.Conflict.NS.String() != "a" {
		t.Errorf("busy error %+v: want holder h1 pid 42 task t1 on namespace a", be)
	}
	if want := `namespace "a" (exclusive) on store "main": busy, held by h1 pid 42 task t1: lock busy`; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	held, err := other.Holders(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(held) != 2 {
		t.Fatalf("Holders = %+v, want a (shared) and a/b (exclusive)", held)
	}
	for _, h := range held {
		if h.Holder.TaskID != "t1" || h.Holder.PID != 42 || h.Expires.Before(time.Now()) || h.Expires.After(time.Now().Add(lease+100*time.Millisecond)) {
			t.Errorf("holder %+v", h)
		}
		if !strings.HasPrefix(h.Path, "pbsq:lock:main:namespace:a") {
			t.Errorf("key %q", h.Path)
		}
	}
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if n, err := srv.Client().Exists(ctx, b.Key(nsReq("a", lock.Shared)), b.Key(nsReq("a/b", lock.Shared))).Result(); err != nil || n != 0 {
		t.Errorf("%d keys left after release (%v)", n, err)
	}
}

// An abandoned lease (its process gone) frees itself at expiry, and the key
// vanishes from Redis.
func TestAbandonedLeaseExpires(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := context.Background()
	const lease = 400 * time.Millisecond
	g := &gate{}
	c := srv.Client()
	c.AddHook(g)
	b := redislock.New(c, redislock.Options{Lease: lease})
	req := nsReq("a", lock.Shared)
	if _, err := b.TryLock(ctx, req, lock.Holder{}); err != nil {
		t.Fatal(err)
	}
	g.closed.Store(true)
	time.Sleep(lease + 100*time.Millisecond)
	if n, err := srv.Client().Exists(ctx, b.Key(req)).Result(); err != nil || n != 0 {
		t.Errorf("key of an abandoned lease still there after expiry (%d, %v)", n, err)
	}
	other := redislock.New(srv.Client(), redislock.Options{})
	l, err := other.TryLock(ctx, nsReq("a", lock.Exclusive), lock.Holder{})
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
	g.closed.Store(false)
}

// Leases survive a Redis restart with the append-only file, and their
// refreshers reconnect.
func TestRestartKeepsLeases(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t, redistest.WithAppendOnly(true))
	ctx := context.Background()
	const lease = 1500 * time.Millisecond
	b := redislock.New(srv.Client(), redislock.Options{Lease: lease})
	defer b.Close()
	l, err := b.TryLock(ctx, nsReq("a/b", lock.Exclusive), lock.Holder{})
	if err != nil {
		t.Fatal(err)
	}
	srv.Restart()
	other := redislock.New(srv.Client(), redislock.Options{Lease: lease})
	defer other.Close()
	if _, err := other.TryLock(ctx, nsReq("a/b", lock.Shared), lock.Holder{}); !errors.Is(err, lock.ErrBusy) {
		t.Fatalf("after restart: %v, want busy", err)
	}
	select {
	case <-l.Lost():
		t.Fatal("lease lost across a restart")
	case <-time.After(lease + 500*time.Millisecond):
	}
	if _, err := other.TryLock(ctx, nsReq("a", lock.Exclusive), lock.Holder{}); !errors.Is(err, lock.ErrBusy) {
		t.Fatalf("a lease past its first period after restart: %v, want still busy", err)
	}
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
}

// One round trip per try, granted or refused, and one per release.
func TestOneRoundTrip(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	cnt := &counter{}
	c := srv.Client()
	c.AddHook(cnt)
	b := redislock.New(c, redislock.Options{})
	defer b.Close()
	deep := nsReq("a/b/c/d/e/f/g", lock.Shared)
	warm, err := b.TryLock(ctx, deep, lock.Holder{}) // loads the scripts
	if err != nil {
		t.Fatal(err)
	}
	warm.Release()

	cnt.n.Store(0)
	l, err := b.TryLock(ctx, deep, lock.Holder{})
	if err != nil {
		t.Fatal(err)
	}
	if n := cnt.n.Swap(0); n != 1 {
		t.Errorf("granted depth-7 chain took %d round trips, want 1", n)
	}
	if _, err := b.TryLock(ctx, nsReq("a/b/c", lock.Exclusive), lock.Holder{}); !errors.Is(err, lock.ErrBusy) {
		t.Fatal(err)
	}
	if n := cnt.n.Swap(0); n != 1 {
		t.Errorf("refusal took %d round trips, want 1", n)
	}
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if n := cnt.n.Swap(0); n != 1 {
		t.Errorf("release took %d round trips, want 1", n)
	}
}

// Scripts missing from the server (a fresh or flushed Redis) are loaded
// transparently.
func TestScriptFlush(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	c := srv.Client()
	b := redislock.New(c, redislock.Options{})
	defer b.Close()
	for range 2 {
		l, err := b.TryLock(ctx, nsReq("a", lock.Shared), lock.Holder{})
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Release(); err != nil {
			t.Fatal(err)
		}
		if err := c.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRedisDown(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	c := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1, DialerRetries: 1})
	defer c.Close()
	srv.Stop()
	_, err := redislock.New(c, redislock.Options{}).TryLock(ctx, nsReq("a", lock.Shared), lock.Holder{})
	if err == nil || errors.Is(err, lock.ErrBusy) {
		t.Fatalf("TryLock with Redis down: %v, want a connection error (not busy)", err)
	}
}
