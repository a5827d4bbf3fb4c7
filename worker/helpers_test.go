package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/datastore/backend/local"
	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/lock/flock"
	"github.com/pbsq/pbsq/datastore/name"
	"github.com/pbsq/pbsq/tasks"
)

const testStoreName = "test"

// testStores opens filesystem stores with flock locks in one locks dir,
// as a worker process would (the CLI's Stores does the same from config).
type testStores struct {
	dirs     map[string]string
	locksDir string
	metrics  *lock.Metrics

	mu      sync.Mutex
	backend lock.Backend
	// probeNS, when set, makes every Open take and drop an exclusive lock
	// on that namespace first, like an operation that needs the whole
	// namespace (move-namespace): a busy namespace refuses the whole task.
	probeNS *name.Namespace
}

func (s *testStores) locker() (*lock.Locker, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.backend == nil {
		b, err := flock.New(flock.Options{Dir: s.locksDir})
		if err != nil {
			return nil, err
		}
		s.backend = b
	}
	return lock.New(s.backend, lock.Options{Metrics: s.metrics}), nil
}

func (s *testStores) Open(ctx context.Context, store, taskID string, wait *tasks.Duration) (*datastore.Store, error) {
	dir, ok := s.dirs[store]
	if !ok {
		return nil, fmt.Errorf("unknown datastore %q", store)
	}
	b, err := local.New(dir)
	if err != nil {
		return nil, err
	}
	l, err := s.locker()
	if err != nil {
		return nil, err
	}
	w := 5 * time.Second
	if wait != nil {
		w = wait.Duration
	}
	l = l.WithTask(taskID).WithWait(w)
	if s.probeNS != nil {
		g, err := l.WithWait(0).Namespace(ctx, store, *s.probeNS, lock.Exclusive)
		if err != nil {
			return nil, err
		}
		_ = g.Release()
	}
	// As the CLI opens a store with flock locks: manifest locks and PBS's
	// move journal in the same dir.
	return datastore.Open(store, b, datastore.Options{Locker: l, LocksDir: s.locksDir})
}

// fixture is a datastore with a few snapshots and what tests need around it.
type fixture struct {
	dir      string
	locksDir string
	stores   *testStores
	store    *datastore.Store // without locks, for setup and checks
	snaps    []name.Snapshot
}

// newFixture writes snapshots: ns "a" vm/100 ×2, ns "a/b" ct/200 ×1 and
// root host/h1 ×1, each a small disk image and a .conf.
func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := newEmptyFixture(t)
	img := datastore.TestFile(t, "disk.img", 96<<10, 160<<10)
	conf := datastore.TestFile(t, "vm.conf", 300, 0)
	base := time.Date(2024, 3, 1, 10, 0, 0, 0, time.UTC)
	for i, g := range []struct{ ns, typ, id string }{
		{"a", "vm", "100"}, {"a", "vm", "100"}, {"a/b", "ct", "200"}, {"", "host", "h1"},
	} {
		f.snaps = append(f.snaps, datastore.TestBackup(t, f.store, g.ns, g.typ+"/"+g.id, base.Add(time.Duration(i)*time.Hour), img, conf).SnapshotName())
	}
	return f
}

// newEmptyFixture is a datastore without snapshots.
func newEmptyFixture(t testing.TB) *fixture {
	t.Helper()
	dir := t.TempDir()
	s := datastore.TestStore(t, datastore.TestName(testStoreName), datastore.TestAt(dir))
	f := &fixture{dir: dir, locksDir: filepath.Join(t.TempDir(), "locks"), store: s}
	f.stores = &testStores{dirs: map[string]string{testStoreName: dir}, locksDir: f.locksDir}
	return f
}

// holdNS takes a namespace lock as another process would: its own flock
// backend on the same locks dir.
func (f *fixture) holdNS(t testing.TB, ns string, mode lock.Mode) (release func()) {
	t.Helper()
	b, err := flock.New(flock.Options{Dir: f.locksDir})
	if err != nil {
		t.Fatal(err)
	}
	l := lock.New(b, lock.Options{Wait: -1, Holder: lock.Holder{TaskID: "test-holder"}})
	g, err := l.Namespace(context.Background(), testStoreName, name.MustNamespace(ns), mode)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release = func() { once.Do(func() { _ = g.Release(); _ = b.Close() }) }
	t.Cleanup(release)
	return release
}

// testLogger logs into the test output at debug level when -v.
func testLogger(t testing.TB) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// fastOptions are worker options that keep tests quick.
func fastOptions(t testing.TB, addr string, stores Stores, reg prometheus.Registerer) Options {
	return Options{
		Redis:            asynq.RedisClientOpt{Addr: addr},
		Stores:           stores,
		Logger:           testLogger(t),
		Registerer:       reg,
		Concurrency:      2,
		ShutdownTimeout:  2 * time.Second,
		PollInterval:     50 * time.Millisecond,
		ForwardInterval:  100 * time.Millisecond,
		ProgressInterval: 100 * time.Millisecond,
		BusyDelay:        func() time.Duration { return 200 * time.Millisecond },
	}
}

// startWorker starts a worker, shut down when the test ends.
func startWorker(t testing.TB, opts Options) *Worker {
	t.Helper()
	w := New(opts)
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Shutdown)
	return w
}

func newEnqueuer(t testing.TB, addr string) *Enqueuer {
	t.Helper()
	e, err := NewEnqueuer(asynq.RedisClientOpt{Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	return e
}

func mustEnqueue(t testing.TB, e *Enqueuer, p tasks.Payload) string {
	t.Helper()
	info, err := e.Enqueue(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	return info.ID
}

// waitTask polls until the task is in one of states, failing after d.
func waitTask(t testing.TB, ins *asynq.Inspector, id string, d time.Duration, states ...asynq.TaskState) *asynq.TaskInfo {
	t.Helper()
	deadline := time.Now().Add(d)
	var last *asynq.TaskInfo
	for {
		info, err := ins.GetTaskInfo(tasks.Queue, id)
		if err == nil {
			last = info
			for _, s := range states {
				if info.State == s {
					return info
				}
			}
		} else if !errors.Is(err, asynq.ErrTaskNotFound) {
			t.Logf("get task %s: %v", id, err)
		}
		if time.Now().After(deadline) {
			if last != nil {
				t.Fatalf("task %s: still %s after %s (want %v); retried %d, last error %q, record %s",
					id, last.State, d, states, last.Retried, last.LastErr, last.Result)
			}
			t.Fatalf("task %s: not found after %s: %v", id, d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// record parses a task's result field.
func record(t testing.TB, info *asynq.TaskInfo) tasks.Record {
	t.Helper()
	r, err := tasks.ParseRecord(info.Result)
	if err != nil {
		t.Fatalf("task %s: record %q: %v", info.ID, info.Result, err)
	}
	return r
}

func ptr[T any](v T) *T { return &v }
