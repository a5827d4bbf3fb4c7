package worker

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/lock/redistest"
	"github.com/pbsq/pbsq/datastore/name"
	"github.com/pbsq/pbsq/tasks"
)

func TestVerifyThroughQueue(t *testing.T) {
	rs := redistest.Start(t)
	f := newFixture(t)
	reg := prometheus.NewRegistry()
	w := startWorker(t, fastOptions(t, rs.Addr(), f.stores, reg))
	e := newEnqueuer(t, rs.Addr())

	id := mustEnqueue(t, e, &tasks.Verify{Store: testStoreName})
	info := waitTask(t, e.Inspector(), id, 20*time.Second, asynq.TaskStateCompleted, asynq.TaskStateArchived)
	if info.State != asynq.TaskStateCompleted {
		t.Fatalf("state %s, want completed; last error %q", info.State, info.LastErr)
	}
	rec := record(t, info)
	if rec.State != "done" || rec.Outcome != tasks.OutcomeOK || rec.Error != "" {
		t.Fatalf("record %+v, want done/ok", rec)
	}
	var res datastore.VerifyResult
	if err := json.Unmarshal(rec.Result, &res); err != nil {
		t.Fatal(err)
	}
	if res.OK != len(f.snaps) || res.Snapshots != len(f.snaps) {
		t.Fatalf("verified %d of %d snapshots ok: %+v", res.OK, len(f.snaps), res)
	}
	// The manifests record the task id, as PBS's upid.
	for _, sn := range f.snaps {
		m, err := f.store.ReadManifest(context.Background(), sn)
		if err != nil {
			t.Fatal(err)
		}
		// The UPID holds the task id systemd-escaped ('-' as \x2d).
		if vs := m.VerifyState(); vs == nil || vs.State != "ok" || !strings.Contains(vs.UPID, id[:8]) {
			t.Errorf("%s: verify state %+v, want ok with task %s", sn, vs, id)
		}
	}

	m := w.Metrics()
	if got := testutil.ToFloat64(m.tasks.WithLabelValues(tasks.TypeVerify, tasks.OutcomeOK)); got != 1 {
		t.Errorf("pbsq_tasks_total{verify,ok} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.verifyChunks.WithLabelValues(testStoreName, "ok")); got == 0 {
		t.Error("pbsq_verify_chunks_total{ok} = 0: the observer is not attached")
	}
	if got := testutil.ToFloat64(m.verifyBytes.WithLabelValues(testStoreName)); got == 0 {
		t.Error("pbsq_verify_bytes_total = 0")
	}
	if n := testutil.CollectAndCount(m.duration); n != 1 {
		t.Errorf("duration series = %d, want 1", n)
	}
	assertNoTaskSeries(t, m)
	lintRegistry(t, reg)

	// Queue metrics come from Redis at scrape time.
	if n, err := testutil.GatherAndCount(reg, "asynq_queue_size", "asynq_tasks_enqueued_total"); err != nil || n == 0 {
		t.Errorf("queue metrics: %d series, %v", n, err)
	}
}

// assertNoTaskSeries checks that finished tasks left no per-task series
// behind (pbsq_task_progress_ratio is keyed by task id).
func assertNoTaskSeries(t *testing.T, m *Metrics) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		n := testutil.CollectAndCount(m.progress)
		busy := 0.0
		for _, typ := range tasks.Types {
			busy += testutil.ToFloat64(m.inProgress.WithLabelValues(typ))
		}
		if n == 0 && busy == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the tasks ended: %d pbsq_task_progress_ratio series, %v in progress", n, busy)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func lintRegistry(t *testing.T, reg *prometheus.Registry) {
	t.Helper()
	problems, err := promlint.NewWithMetricFamilies(mustGather(t, reg)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

func mustGather(t *testing.T, reg *prometheus.Registry) []*dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

func TestPruneDryRunThroughQueue(t *testing.T) {
	rs := redistest.Start(t)
	f := newFixture(t)
	// A third snapshot in a/vm/100, so keep-last 2 removes one.
	datastore.TestBackup(t, f.store, "a", "vm/100", time.Date(2024, 3, 2, 10, 0, 0, 0, time.UTC), datastore.TestFile(t, "x.conf", 100, 0))
	reg := prometheus.NewRegistry()
	w := startWorker(t, fastOptions(t, rs.Addr(), f.stores, reg))
	e := newEnqueuer(t, rs.Addr())

	id := mustEnqueue(t, e, &tasks.Prune{Store: testStoreName, NS: "a", Keep: tasks.Keep{KeepLast: ptr(2)}, DryRun: true})
	info := waitTask(t, e.Inspector(), id, 20*time.Second, asynq.TaskStateCompleted, asynq.TaskStateArchived)
	rec := record(t, info)
	if info.State != asynq.TaskStateCompleted || rec.Outcome != tasks.OutcomeOK {
		t.Fatalf("state %s record %+v", info.State, rec)
	}
	var res datastore.PruneResult
	if err := json.Unmarshal(rec.Result, &res); err != nil {
		t.Fatal(err)
	}
	marked := 0
	for _, d := range res.Decisions {
		if d.Mark == "remove" {
			marked++
			if d.Snapshot != "vm/100/2024-03-01T10:00:00Z" || d.Removed {
				t.Errorf("decision %+v", d)
			}
		}
	}
	if !res.DryRun || res.Groups != 2 || marked != 1 || res.Removed != 0 {
		t.Fatalf("prune result %+v, want a dry run marking one snapshot", res)
	}
	g, err := name.NewGroup(name.MustNamespace("a"), "vm", "100")
	if err != nil {
		t.Fatal(err)
	}
	snaps, err := f.store.ListSnapshots(context.Background(), g)
	if err != nil || len(snaps) != 3 {
		t.Fatalf("dry run changed the group: %d snapshots, %v", len(snaps), err)
	}
	// A dry run removes nothing, so only the keeps are counted.
	if got := testutil.ToFloat64(w.Metrics().pruneSnapshots.WithLabelValues(testStoreName, "keep")); got != 3 {
		t.Errorf("pbsq_prune_snapshots_total{keep} = %v, want 3", got)
	}
	assertNoTaskSeries(t, w.Metrics())
}

func TestFailedVerifyArchivedWithResult(t *testing.T) {
	rs := redistest.Start(t)
	f := newFixture(t)
	corruptOneChunk(t, f.dir)
	startWorker(t, fastOptions(t, rs.Addr(), f.stores, nil))
	e := newEnqueuer(t, rs.Addr())

	id := mustEnqueue(t, e, &tasks.Verify{Store: testStoreName})
	info := waitTask(t, e.Inspector(), id, 20*time.Second, asynq.TaskStateCompleted, asynq.TaskStateArchived)
	rec := record(t, info)
	if info.State != asynq.TaskStateArchived || info.Retried != 0 {
		t.Fatalf("state %s retried %d, want archived without retries", info.State, info.Retried)
	}
	if rec.Outcome != tasks.OutcomeFailed || !strings.Contains(rec.Error, "failed") || len(rec.Result) == 0 {
		t.Fatalf("record %+v, want outcome failed with the result kept", rec)
	}
	var res datastore.VerifyResult
	if err := json.Unmarshal(rec.Result, &res); err != nil || len(res.Failed) == 0 {
		t.Fatalf("result %s: %v", rec.Result, err)
	}
}

// corruptOneChunk flips a byte in the payload of some chunk.
func corruptOneChunk(t *testing.T, dir string) {
	t.Helper()
	var victim string
	_ = filepath.WalkDir(filepath.Join(dir, ".chunks"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && victim == "" {
			victim = p
		}
		return nil
	})
	if victim == "" {
		t.Fatal("no chunk found")
	}
	data, err := os.ReadFile(victim)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)-1] ^= 0xff
	if err := os.WriteFile(victim, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestInvalidTasksArchivedWithReason(t *testing.T) {
	rs := redistest.Start(t)
	f := newFixture(t)
	reg := prometheus.NewRegistry()
	w := startWorker(t, fastOptions(t, rs.Addr(), f.stores, reg))
	client := asynq.NewClient(asynq.RedisClientOpt{Addr: rs.Addr()})
	defer client.Close()
	ins := asynq.NewInspector(asynq.RedisClientOpt{Addr: rs.Addr()})
	defer ins.Close()

	for _, c := range []struct {
		typ, payload, reason string
	}{
		{tasks.TypeVerify, `{"store":"test","bogus":1}`, `unknown field "bogus"`},
		{tasks.TypeVerify, `{"store":"test","ns":"../x"}`, `ns`},
		{tasks.TypeMoveNamespace, `{"store":"test","ns":"a","target-ns":"a/b"}`, "inside the source"},
		{tasks.TypePrune, `not json`, "invalid"},
		{tasks.TypeVerify + "-extra", `{"store":"test"}`, "task type"},
		{"other:thing", `{}`, "task type"},
	} {
		info, err := client.Enqueue(asynq.NewTask(c.typ, []byte(c.payload)), asynq.Queue(tasks.Queue),
			asynq.MaxRetry(tasks.MaxRetry), asynq.Retention(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		got := waitTask(t, ins, info.ID, 10*time.Second, asynq.TaskStateArchived, asynq.TaskStateCompleted)
		rec := record(t, got)
		if got.State != asynq.TaskStateArchived || got.Retried != 0 {
			t.Errorf("%s %s: state %s retried %d, want archived at once", c.typ, c.payload, got.State, got.Retried)
		}
		if !strings.Contains(got.LastErr, c.reason) || rec.Outcome != tasks.OutcomeInvalid || !strings.Contains(rec.Error, c.reason) {
			t.Errorf("%s %s: last error %q, record %+v; want outcome invalid naming %q", c.typ, c.payload, got.LastErr, rec, c.reason)
		}
	}
	if got := testutil.ToFloat64(w.Metrics().tasks.WithLabelValues(tasks.TypeVerify, tasks.OutcomeInvalid)); got != 2 {
		t.Errorf("pbsq_tasks_total{verify,invalid} = %v, want 2", got)
	}
	if got := testutil.ToFloat64(w.Metrics().tasks.WithLabelValues("unknown", tasks.OutcomeInvalid)); got != 2 {
		t.Errorf("pbsq_tasks_total{unknown,invalid} = %v, want 2", got)
	}
}

func TestBusyRequeuedWithoutSpendingRetries(t *testing.T) {
	rs := redistest.Start(t)
	f := newFixture(t)
	f.stores.probeNS = ptr(name.MustNamespace("a"))
	// Someone works inside a/b: shared on a/b takes shared a too, which
	// the task's exclusive a cannot get.
	release := f.holdNS(t, "a/b", lock.Shared)
	w := startWorker(t, fastOptions(t, rs.Addr(), f.stores, nil))
	e := newEnqueuer(t, rs.Addr())
	rdb := rs.Client()

	id := mustEnqueue(t, e, &tasks.Verify{Store: testStoreName, NS: "a", LockWait: &tasks.Duration{}})
	// Let it be refused several times.
	deadline := time.Now().Add(10 * time.Second)
	refusals := 0
	for refusals < 3 {
		info, err := e.Inspector().GetTaskInfo(tasks.Queue, id)
		if err != nil {
			t.Fatal(err)
		}
		if info.Retried != 0 {
			t.Fatalf("busy re-queue spent the retry budget: retried %d (%s)", info.Retried, info.LastErr)
		}
		if info.State == asynq.TaskStateCompleted || info.State == asynq.TaskStateArchived {
			t.Fatalf("task ended while its lock was busy: %s %s", info.State, info.Result)
		}
		refusals = int(testutil.ToFloat64(w.Metrics().tasks.WithLabelValues(tasks.TypeVerify, tasks.OutcomeBusy)))
		if time.Now().After(deadline) {
			t.Fatalf("only %d busy refusals in 10s", refusals)
		}
		time.Sleep(20 * time.Millisecond)
	}
	info, _ := e.Inspector().GetTaskInfo(tasks.Queue, id)
	if !strings.Contains(info.LastErr, "busy") {
		t.Errorf("last error %q does not say busy", info.LastErr)
	}
	if rec := record(t, info); rec.State != "waiting" && rec.State != "running" {
		t.Errorf("record while busy: %+v", rec)
	}
	if n, _ := rdb.Exists(context.Background(), busySinceKey(id)).Result(); n != 1 {
		t.Error("busy-since not recorded in Redis")
	}

	release()
	info = waitTask(t, e.Inspector(), id, 10*time.Second, asynq.TaskStateCompleted, asynq.TaskStateArchived)
	if rec := record(t, info); info.State != asynq.TaskStateCompleted || info.Retried != 0 || rec.Outcome != tasks.OutcomeOK {
		t.Fatalf("after release: state %s retried %d record %+v", info.State, info.Retried, rec)
	}
	if n, _ := rdb.Exists(context.Background(), busySinceKey(id)).Result(); n != 0 {
		t.Error("busy-since left in Redis after the task completed")
	}
}

func TestBusyGivesUpAfterLimit(t *testing.T) {
	rs := redistest.Start(t)
	f := newFixture(t)
	f.stores.probeNS = ptr(name.MustNamespace("a"))
	f.holdNS(t, "a", lock.Shared)
	opts := fastOptions(t, rs.Addr(), f.stores, nil)
	opts.BusyLimit = 1500 * time.Millisecond
	startWorker(t, opts)
	e := newEnqueuer(t, rs.Addr())

	id := mustEnqueue(t, e, &tasks.Verify{Store: testStoreName, NS: "a", LockWait: &tasks.Duration{}})
	info := waitTask(t, e.Inspector(), id, 15*time.Second, asynq.TaskStateArchived, asynq.TaskStateCompleted)
	rec := record(t, info)
	if info.State != asynq.TaskStateArchived || info.Retried != 0 || rec.Outcome != tasks.OutcomeBusy {
		t.Fatalf("state %s retried %d record %+v; want archived busy without retries", info.State, info.Retried, rec)
	}
	if !strings.Contains(rec.Error, "gave up") || !strings.Contains(rec.Error, `namespace "a"`) {
		t.Errorf("error %q should say it gave up and which lock", rec.Error)
	}
}

// TestBusyMoveNamespace runs the busy policy through the real
// move-namespace, which takes the source exclusively.
func TestBusyMoveNamespace(t *testing.T) {
	f := newFixture(t)
	probe, err := Execute(context.Background(), f.stores, &tasks.MoveNamespace{Store: testStoreName, NS: "zz", TargetNS: "yy"}, "probe", nil)
	if err != nil && strings.Contains(err.Error(), "not implemented") {
		t.Skip("move-namespace is still a stub:", err)
	}
	_ = probe
	rs := redistest.Start(t)
	release := f.holdNS(t, "a/b", lock.Shared)
	startWorker(t, fastOptions(t, rs.Addr(), f.stores, nil))
	e := newEnqueuer(t, rs.Addr())
	id := mustEnqueue(t, e, &tasks.MoveNamespace{Store: testStoreName, NS: "a", TargetNS: "moved", LockWait: &tasks.Duration{}})
	// Refused at least once: its busy episode is recorded.
	waitUntil(t, "move-namespace refused as busy", func() bool {
		n, err := e.Redis().Exists(context.Background(), busySinceKey(id)).Result()
		return err == nil && n == 1
	})
	info, err := e.Inspector().GetTaskInfo(tasks.Queue, id)
	if err != nil {
		t.Fatal(err)
	}
	if info.Retried != 0 || info.State == asynq.TaskStateCompleted || info.State == asynq.TaskStateArchived {
		t.Fatalf("while busy: state %s retried %d last error %q", info.State, info.Retried, info.LastErr)
	}
	release()
	info = waitTask(t, e.Inspector(), id, 20*time.Second, asynq.TaskStateCompleted, asynq.TaskStateArchived)
	if rec := record(t, info); info.State != asynq.TaskStateCompleted || info.Retried != 0 {
		t.Fatalf("after release: state %s retried %d record %+v", info.State, info.Retried, rec)
	}
}

// blockedVerify enqueues a verify of ns "a" that waits up to an hour for
// its locks while the test holds "a" exclusively: a slow task that costs
// nothing.
func blockedVerify(t *testing.T, f *fixture, e *Enqueuer) (id string, release func()) {
	t.Helper()
	release = f.holdNS(t, "a", lock.Exclusive)
	id = mustEnqueue(t, e, &tasks.Verify{Store: testStoreName, NS: "a", IgnoreVerified: ptr(false), LockWait: &tasks.Duration{Duration: time.Hour}})
	return id, release
}

// waitRunning waits until the task is active and has recorded progress.
func waitRunning(t *testing.T, ins *asynq.Inspector, id string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		info, err := ins.GetTaskInfo(tasks.Queue, id)
		if err == nil && info.State == asynq.TaskStateActive {
			if rec, _ := tasks.ParseRecord(info.Result); rec.State == "running" {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s not running after 15s: %+v %v", id, info, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestCancelRunning: cancelling a running task stops its handler (the
// task would otherwise wait an hour for its locks), archives it as
// cancelled, and it never runs again.
func TestCancelRunning(t *testing.T) {
	rs := redistest.Start(t)
	f := newFixture(t)
	w := startWorker(t, fastOptions(t, rs.Addr(), f.stores, nil))
	e := newEnqueuer(t, rs.Addr())
	id, _ := blockedVerify(t, f, e)
	waitRunning(t, e.Inspector(), id)

	start := time.Now()
	state, err := Cancel(context.Background(), e.Redis(), e.Inspector(), id)
	if err != nil || state != asynq.TaskStateActive {
		t.Fatalf("Cancel: %s, %v", state, err)
	}
	// The handler itself must return: no task in progress. (How fast is
	// for a benchmark; this only needs it well inside the hour.)
	cancelled := func() float64 {
		return testutil.ToFloat64(w.Metrics().tasks.WithLabelValues(tasks.TypeVerify, OutcomeCancelled))
	}
	waitUntil(t, "handler returned after cancel", func() bool {
		return testutil.ToFloat64(w.Metrics().inProgress.WithLabelValues(tasks.TypeVerify)) == 0 && cancelled() == 1
	})
	t.Logf("handler returned %s after cancel", time.Since(start))
	info := waitTask(t, e.Inspector(), id, waitLimit, asynq.TaskStateArchived)
	// The record is written after the handler returns.
	waitUntil(t, "record says cancelled", func() bool {
		info, _ = e.Inspector().GetTaskInfo(tasks.Queue, id)
		return info != nil && record(t, info).Outcome == OutcomeCancelled
	})
	// Archived means it never comes back, even if asked to run again: the
	// re-run (RunTask makes it pending at once) finds its final record and
	// is archived again without running.
	if err := e.Inspector().RunTask(tasks.Queue, id); err != nil {
		t.Fatal(err)
	}
	info = waitTask(t, e.Inspector(), id, waitLimit, asynq.TaskStateArchived)
	if rec := record(t, info); rec.Outcome != OutcomeCancelled || !strings.Contains(info.LastErr, "cancelled") {
		t.Errorf("re-run of a cancelled task: last error %q, record %+v", info.LastErr, rec)
	}
	if _, err := Cancel(context.Background(), e.Redis(), e.Inspector(), id); !errors.Is(err, ErrFinished) {
		t.Errorf("second cancel: %v, want ErrFinished", err)
	}
	if _, err := Cancel(context.Background(), e.Redis(), e.Inspector(), "nope"); !errors.Is(err, ErrTaskNotFound) {
		t.Errorf("cancel unknown: %v, want ErrTaskNotFound", err)
	}
}

func TestCancelPendingDeletes(t *testing.T) {
	rs := redistest.Start(t)
	e := newEnqueuer(t, rs.Addr())
	id := mustEnqueue(t, e, &tasks.GC{Store: testStoreName})
	state, err := Cancel(context.Background(), e.Redis(), e.Inspector(), id)
	if err != nil || state != asynq.TaskStatePending {
		t.Fatalf("Cancel: %s, %v", state, err)
	}
	if _, err := e.Inspector().GetTaskInfo(tasks.Queue, id); !errors.Is(err, asynq.ErrTaskNotFound) {
		t.Fatalf("cancelled pending task still there: %v", err)
	}
}

func TestDuplicateRefused(t *testing.T) {
	rs := redistest.Start(t)
	e := newEnqueuer(t, rs.Addr())
	p := &tasks.Prune{Store: testStoreName, NS: "a", Keep: tasks.Keep{KeepLast: ptr(2)}}
	id := mustEnqueue(t, e, p)

	_, err := e.Enqueue(context.Background(), &tasks.Prune{Store: testStoreName, NS: "a", Keep: tasks.Keep{KeepLast: ptr(2)}})
	var dup *DuplicateError
	if !errors.As(err, &dup) || dup.ID != id || !errors.Is(err, ErrDuplicate) {
		t.Fatalf("second enqueue: %v, want a duplicate of %s", err, id)
	}
	if !strings.Contains(err.Error(), id) {
		t.Errorf("message %q does not name the task", err)
	}
	// A different job goes in.
	mustEnqueue(t, e, &tasks.Prune{Store: testStoreName, NS: "a", Keep: tasks.Keep{KeepLast: ptr(3)}})

	// The same job written differently (key order, spacing) by another
	// client is still the same job.
	client := asynq.NewClient(asynq.RedisClientOpt{Addr: rs.Addr()})
	defer client.Close()
	raw, err := client.Enqueue(asynq.NewTask(tasks.TypeVerify, []byte(`{ "ns": "a/b", "store": "test" }`)), asynq.Queue(tasks.Queue))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Enqueue(context.Background(), &tasks.Verify{Store: testStoreName, NS: "a/b"}); !errors.As(err, &dup) || dup.ID != raw.ID {
		t.Fatalf("enqueue of a re-spelled duplicate: %v, want a duplicate of %s", err, raw.ID)
	}
	// Finished tasks do not block a new run.
	if err := e.Inspector().ArchiveTask(tasks.Queue, id); err != nil {
		t.Fatal(err)
	}
	mustEnqueue(t, e, p)
}

func TestShutdownRequeuesAndResumes(t *testing.T) {
	rs := redistest.Start(t)
	f := newFixture(t)
	opts := fastOptions(t, rs.Addr(), f.stores, nil)
	opts.ShutdownTimeout = 500 * time.Millisecond
	w := New(opts)
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	e := newEnqueuer(t, rs.Addr())
	id, release := blockedVerify(t, f, e)
	waitRunning(t, e.Inspector(), id)

	start := time.Now()
	w.Shutdown()
	// The configured timeout applied, not the 30 s default (the task waits
	// an hour for its locks); the margin is for a loaded machine, not a
	// speed requirement.
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("Shutdown took %s with a 500ms timeout", d)
	}
	info, err := e.Inspector().GetTaskInfo(tasks.Queue, id)
	if err != nil || info.State != asynq.TaskStatePending {
		t.Fatalf("after shutdown: %+v, %v; want the task back in pending", info, err)
	}

	release()
	startWorker(t, fastOptions(t, rs.Addr(), f.stores, nil))
	info = waitTask(t, e.Inspector(), id, 20*time.Second, asynq.TaskStateCompleted, asynq.TaskStateArchived)
	if rec := record(t, info); info.State != asynq.TaskStateCompleted || rec.Outcome != tasks.OutcomeOK {
		t.Fatalf("resumed: state %s record %+v", info.State, rec)
	}
}

func TestRedisRestartLosesNothing(t *testing.T) {
	rs := redistest.Start(t, redistest.WithAppendOnly(true))
	f := newFixture(t)
	startWorker(t, fastOptions(t, rs.Addr(), f.stores, nil))
	e := newEnqueuer(t, rs.Addr())
	first, release := blockedVerify(t, f, e)
	waitRunning(t, e.Inspector(), first)
	queued := []string{first,
		mustEnqueue(t, e, &tasks.Verify{Store: testStoreName, NS: "a/b", IgnoreVerified: ptr(false)}),
		mustEnqueue(t, e, &tasks.Prune{Store: testStoreName, NS: "a", Keep: tasks.Keep{KeepLast: ptr(5)}, DryRun: true}),
	}

	rs.Restart()

	// New work after the restart, through a fresh connection.
	e2 := newEnqueuer(t, rs.Addr())
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, err := e2.Enqueue(context.Background(), &tasks.Verify{Store: testStoreName, NS: "", MaxDepth: ptr(0), IgnoreVerified: ptr(false)})
		if err == nil {
			queued = append(queued, info.ID)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("enqueue after restart: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	release()
	for _, id := range queued {
		info := waitTask(t, e2.Inspector(), id, 30*time.Second, asynq.TaskStateCompleted, asynq.TaskStateArchived)
		if rec := record(t, info); info.State != asynq.TaskStateCompleted || rec.Outcome != tasks.OutcomeOK {
			t.Errorf("task %s after the restart: state %s record %+v", id, info.State, rec)
		}
	}
}

func TestMetricsLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	obs := m.Observer("main")
	m.storeOpened("main", "fs")
	obs.ChunkVerified("ok", 10)
	obs.ChunkRemoved(100)
	obs.SnapshotPruned("keep")
	obs.SnapshotMoved("fs", 3)
	obs.SyncChunk("copied", 5)
	obs.Skipped("verify", "busy")
	g, end := m.started(tasks.TypeVerify, "id-1")
	g.Set(.5)
	if n := testutil.CollectAndCount(m.progress); n != 1 {
		t.Fatalf("%d progress series while running", n)
	}
	end(tasks.OutcomeOK, time.Second)
	if n := testutil.CollectAndCount(m.progress); n != 0 {
		t.Fatalf("%d progress series after the end", n)
	}
	// A second worker on the same registry shares the metrics.
	if m2 := NewMetrics(reg); m2.tasks != m.tasks {
		t.Error("second NewMetrics on one registry did not reuse the collectors")
	}
	lintRegistry(t, reg)
	if got := testutil.ToFloat64(m.moveObjects.WithLabelValues("main")); got != 3 {
		t.Errorf("pbsq_move_objects_total = %v", got)
	}
	if got := testutil.ToFloat64(m.gcRemovedBytes.WithLabelValues("main")); got != 100 {
		t.Errorf("pbsq_gc_removed_bytes_total = %v", got)
	}
	if got := testutil.ToFloat64(m.storeInfo.WithLabelValues("main", "fs")); got != 1 {
		t.Errorf("pbsq_store_info = %v", got)
	}
}
