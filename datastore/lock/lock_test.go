package lock_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
)

func TestRequestString(t *testing.T) {
	g, _ := name.ParseGroup(name.MustNamespace("a/b"), "vm/100")
	rg, _ := name.ParseGroup(name.Root, "vm/100")
	s := name.NewSnapshot(g, time.Date(2022, 5, 2, 8, 11, 33, 0, time.UTC))
	for _, tc := range []struct {
		req  lock.Request
		want string
	}{
		{lock.NamespaceRequest("main", name.MustNamespace("a/b"), lock.Exclusive), `namespace "a/b" (exclusive) on store "main"`},
		{lock.GroupRequest("main", g), `group "vm/100" (exclusive) in namespace "a/b" on store "main"`},
		{lock.GroupRequest("main", rg), `group "vm/100" (exclusive) on store "main"`},
		{lock.SnapshotRequest("main", s, lock.Shared), `snapshot "vm/100/2022-05-02T08:11:33Z" (shared) in namespace "a/b" on store "main"`},
	} {
		if got := tc.req.String(); got != tc.want {
			t.Errorf("got  %s\nwant %s", got, tc.want)
		}
	}
}

func TestBusyErrorMessage(t *testing.T) {
	req := lock.NamespaceRequest("main", name.MustNamespace("a/b"), lock.Exclusive)
	err := error(&lock.BusyError{Request: req, Conflict: req, Holder: &lock.Holder{Host: "host1", PID: 123, TaskID: "9f2"}})
	if want := `namespace "a/b" (exclusive) on store "main": busy, held by host1 pid 123 task 9f2: lock busy`; err.Error() != want {
		t.Errorf("got  %s\nwant %s", err, want)
	}
	if !errors.Is(err, lock.ErrBusy) {
		t.Error("BusyError does not wrap ErrBusy")
	}
	deep := lock.NamespaceRequest("main", name.MustNamespace("a/b/c"), lock.Shared)
	err = &lock.BusyError{Request: deep, Conflict: deep.Chain()[1], Waited: 5 * time.Second}
	if want := `namespace "a/b/c" (shared) on store "main": namespace "a/b" (shared) busy for 5s, held by another process: lock busy`; err.Error() != want {
		t.Errorf("got  %s\nwant %s", err, want)
	}
}

func TestChainAndConflicts(t *testing.T) {
	r := lock.NamespaceRequest("main", name.MustNamespace("a/b/c"), lock.Exclusive)
	var got []string
	for _, u := range r.Chain() {
		got = append(got, u.NS.String()+":"+u.Mode.String())
	}
	if strings.Join(got, " ") != "a:shared a/b:shared a/b/c:exclusive" {
		t.Errorf("chain %v", got)
	}
	a := lock.NamespaceRequest("main", name.MustNamespace("a"), lock.Shared)
	if lock.Conflicts(a, a) || lock.Conflicts(a, r.Chain()[0]) {
		t.Error("shared/shared conflict")
	}
	ax := a
	ax.Mode = lock.Exclusive
	if !lock.Conflicts(a, ax) || lock.Conflicts(ax, lock.NamespaceRequest("other", name.MustNamespace("a"), lock.Exclusive)) {
		t.Error("Conflicts wrong")
	}
}

func TestSortRequests(t *testing.T) {
	g, _ := name.ParseGroup(name.Root, "vm/100")
	reqs := []lock.Request{
		lock.GroupRequest("main", g),
		lock.NamespaceRequest("main", name.MustNamespace("b/c"), lock.Exclusive),
		lock.NamespaceRequest("main", name.MustNamespace("z"), lock.Exclusive),
		lock.NamespaceRequest("main", name.MustNamespace("a/b/c"), lock.Exclusive),
		lock.NamespaceRequest("main", name.MustNamespace("a"), lock.Shared),
	}
	lock.SortRequests(reqs)
	var got []string
	for _, r := range reqs {
		got = append(got, r.ID())
	}
	want := "main:namespace:a main:namespace:z main:namespace:b/c main:namespace:a/b/c main:group:vm/100"
	if strings.Join(got, " ") != want {
		t.Errorf("got  %v\nwant %s", got, want)
	}
}

func TestHolderString(t *testing.T) {
	if s := (lock.Holder{}).String(); s != "unknown holder" {
		t.Error(s)
	}
	if s := (lock.Holder{PID: 7}).String(); s != "pid 7" {
		t.Error(s)
	}
}

// fake is a Backend whose answers the test controls.
type fake struct {
	mu    sync.Mutex
	busy  bool
	err   error
	tries int
	lost  chan struct{}
}

type fakeLease struct{ lost chan struct{} }

func (l fakeLease) Release() error        { return nil }
func (l fakeLease) Lost() <-chan struct{} { return l.lost }

func (f *fake) TryLock(_ context.Context, req lock.Request, h lock.Holder) (lock.Lease, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tries++
	switch {
	case f.err != nil:
		return nil, f.err
	case f.busy:
		return nil, &lock.BusyError{Request: req, Conflict: req, Holder: &lock.Holder{Host: "other"}}
	}
	return fakeLease{f.lost}, nil
}
func (f *fake) Holders(context.Context) ([]lock.Held, error) { return nil, nil }
func (f *fake) Close() error                                 { return nil }

func TestBackoff(t *testing.T) {
	f := &fake{busy: true}
	start := time.Now()
	_, err := lock.New(f, lock.Options{Wait: time.Second}).Namespace(context.Background(), "main", name.MustNamespace("a"), lock.Shared)
	d := time.Since(start)
	var be *lock.BusyError
	if !errors.As(err, &be) || be.Waited < time.Second || be.Holder.Host != "other" {
		t.Fatalf("%v", err)
	}
	// Sleeps are jittered in [d/2, d] for d = 50, 100, 200, 400, 800 ms:
	// at most 8 tries fit in 1 s, plus the final try. (How few fit depends
	// on how loaded the machine is, so only the first and last are sure.)
	if f.tries < 2 || f.tries > 9 {
		t.Errorf("%d tries in %s", f.tries, d)
	}
	if !strings.Contains(err.Error(), "busy for 1") {
		t.Errorf("error %q lacks the wait", err)
	}
}

func TestBackendErrorNotRetried(t *testing.T) {
	boom := errors.New("boom")
	f := &fake{err: boom}
	_, err := lock.New(f, lock.Options{}).Namespace(context.Background(), "main", name.MustNamespace("a"), lock.Shared)
	if !errors.Is(err, boom) || errors.Is(err, lock.ErrBusy) || f.tries != 1 {
		t.Fatalf("%v after %d tries", err, f.tries)
	}
}

func TestWatch(t *testing.T) {
	lost := make(chan struct{})
	f := &fake{lost: lost}
	l := lock.New(f, lock.Options{})
	g1, err := l.Namespace(context.Background(), "main", name.MustNamespace("a"), lock.Shared)
	if err != nil {
		t.Fatal(err)
	}
	root, err := l.Namespace(context.Background(), "main", name.Root, lock.Shared) // Lost nil
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := lock.Watch(context.Background(), root, g1)
	defer cancel()
	select {
	case <-ctx.Done():
		t.Fatal("cancelled early")
	case <-time.After(20 * time.Millisecond):
	}
	close(lost)
	select {
	case <-ctx.Done():
	case <-time.After(time.Second):
		t.Fatal("not cancelled on loss")
	}
	if !errors.Is(context.Cause(ctx), lock.ErrLeaseLost) || !strings.Contains(context.Cause(ctx).Error(), `namespace "a"`) {
		t.Errorf("cause %v", context.Cause(ctx))
	}

	ctx2, cancel2 := lock.Watch(context.Background(), root)
	cancel2()
	if !errors.Is(context.Cause(ctx2), context.Canceled) {
		t.Errorf("cause %v", context.Cause(ctx2))
	}
}

func TestMetricsAndLogging(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := lock.NewMetrics(reg)
	if m2 := lock.NewMetrics(reg); m2 == nil { // re-registering reuses
		t.Fatal("nil metrics")
	}
	var logs bytes.Buffer
	f := &fake{}
	l := lock.New(f, lock.Options{Metrics: m, Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	ctx := context.Background()
	if _, err := l.Namespace(ctx, "main", name.MustNamespace("a"), lock.Shared); err != nil {
		t.Fatal(err)
	}
	f.busy = true
	_, _ = l.WithWait(0).Namespace(ctx, "main", name.MustNamespace("a"), lock.Exclusive)
	f.err = errors.New("boom")
	_, _ = l.Namespace(ctx, "main", name.MustNamespace("a"), lock.Exclusive)

	got := map[string]float64{}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			key := mf.GetName()
			for _, lp := range mt.GetLabel() {
				key += "," + lp.GetName() + "=" + lp.GetValue()
			}
			if c := mt.GetCounter(); c != nil {
				got[key] = c.GetValue()
			}
			if h := mt.GetHistogram(); h != nil {
				got[key] = float64(h.GetSampleCount())
			}
		}
	}
	for key, want := range map[string]float64{
		"pbsq_lock_acquire_total,kind=namespace,mode=shared,result=ok":       1,
		"pbsq_lock_acquire_total,kind=namespace,mode=exclusive,result=busy":  1,
		"pbsq_lock_acquire_total,kind=namespace,mode=exclusive,result=error": 1,
		"pbsq_lock_wait_seconds,kind=namespace,mode=exclusive":               2,
		"pbsq_lock_wait_seconds,kind=namespace,mode=shared":                  1,
	} {
		if got[key] != want {
			t.Errorf("%s = %v, want %v (all: %v)", key, got[key], want, got)
		}
	}
	if !strings.Contains(logs.String(), "lock acquired") || !strings.Contains(logs.String(), "lock not acquired") {
		t.Errorf("logs: %s", logs.String())
	}

	// nil Metrics and Logger are fine.
	f.err, f.busy = nil, false
	if _, err := lock.New(f, lock.Options{}).Namespace(ctx, "main", name.MustNamespace("a"), lock.Shared); err != nil {
		t.Fatal(err)
	}
}

func TestWithCopies(t *testing.T) {
	base := lock.New(&fake{}, lock.Options{Holder: lock.Holder{TaskID: "base"}})
	c := base.WithTask("t2").WithWait(0)
	if base.Holder().TaskID != "base" || c.Holder().TaskID != "t2" {
		t.Errorf("base %v, copy %v", base.Holder(), c.Holder())
	}
	if base.Holder().PID == 0 || base.Holder().Host == "" {
		t.Errorf("defaults not filled: %v", base.Holder())
	}
}

func TestInvalid(t *testing.T) {
	f := &fake{}
	l := lock.New(f, lock.Options{})
	ctx := context.Background()
	if _, err := l.Namespace(ctx, "main", name.Root, lock.Exclusive); !errors.Is(err, lock.ErrInvalidRequest) {
		t.Errorf("exclusive root: %v", err)
	}
	if _, err := l.Namespace(ctx, "x", name.Root, lock.Shared); !errors.Is(err, lock.ErrInvalidRequest) {
		t.Errorf("bad store: %v", err)
	}
	if f.tries != 0 {
		t.Errorf("backend tried %d times for invalid requests", f.tries)
	}
}
