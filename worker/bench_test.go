package worker

import (
	"context"
	"encoding/json"
	"log/slog"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/datastore/lock/redistest"
	"github.com/pbsq/pbsq/tasks"
)

// BenchmarkWorkerOverhead measures what pbsq's worker stack (its asynq
// setup, mux, strict decode, cancel check, progress reporter, result
// records, metrics) costs per task, against a bare asynq handler doing the
// same operation, on one real redis-server, both with 2 workers. The two
// run in alternating rounds so that load from elsewhere hits both alike.
//
//	verify: a verify of a 1-snapshot store (1 chunk), re-verified each time
//	noop:   a dry-run prune of that store (reads only)
//
// Reported: pbsq-tasks/s, bare-tasks/s and overhead_ratio = pbsq time per
// task / bare time per task (target ≤ 1.2), the median over 16 alternating
// round pairs (overhead_ratio_sum: the ratio of the totals).
func BenchmarkWorkerOverhead(b *testing.B) {
	rs := redistest.Start(b)
	f := newEmptyFixture(b)
	f.snaps = append(f.snaps, datastore.TestBackup(b, f.store, "", "vm/100", time.Date(2024, 3, 1, 0, 0, 0, 0, time.UTC),
		datastore.TestFile(b, "disk.img", 64<<10, 64<<10)).SnapshotName())
	ctx := context.Background()

	// The bare side: asynq's server and a handler that opens the store and
	// runs the operation, nothing else.
	const bareQueue = "bare-bench"
	var bareDone atomic.Int64
	bare := asynq.NewServer(asynq.RedisClientOpt{Addr: rs.Addr()}, asynq.Config{
		Concurrency: 2, Queues: map[string]int{bareQueue: 1}, TaskCheckInterval: 10 * time.Millisecond,
		LogLevel: asynq.ErrorLevel,
	})
	mux := asynq.NewServeMux()
	mux.HandleFunc(tasks.TypeVerify, func(ctx context.Context, t *asynq.Task) error {
		defer bareDone.Add(1)
		var p tasks.Verify
		if err := json.Unmarshal(t.Payload(), &p); err != nil {
			return err
		}
		s, err := f.stores.Open(ctx, p.Store, "bare", p.LockWait)
		if err != nil {
			return err
		}
		_, err = s.Verify(ctx, datastore.VerifyRequest{Scope: datastore.Scope{MaxDepth: -1}, TaskID: "bare"}, nil)
		return err
	})
	mux.HandleFunc(tasks.TypePrune, func(ctx context.Context, t *asynq.Task) error {
		defer bareDone.Add(1)
		var p tasks.Prune
		if err := json.Unmarshal(t.Payload(), &p); err != nil {
			return err
		}
		s, err := f.stores.Open(ctx, p.Store, "bare", p.LockWait)
		if err != nil {
			return err
		}
		req, err := pruneRequest(&p)
		if err != nil {
			return err
		}
		_, err = s.Prune(ctx, req, nil)
		return err
	})
	if err := bare.Start(mux); err != nil {
		b.Fatal(err)
	}
	defer bare.Shutdown()

	// The pbsq side, as `pbsq worker` runs it.
	opts := Options{
		Redis: asynq.RedisClientOpt{Addr: rs.Addr()}, Stores: f.stores, Logger: slog.New(slog.DiscardHandler),
		Registerer: prometheus.NewRegistry(), Concurrency: 2, PollInterval: 10 * time.Millisecond,
	}
	w := New(opts)
	var pbsqDone atomic.Int64
	w.onDone = func() { pbsqDone.Add(1) }
	if err := w.Start(ctx); err != nil {
		b.Fatal(err)
	}
	defer w.Shutdown()

	client := asynq.NewClient(asynq.RedisClientOpt{Addr: rs.Addr()})
	defer client.Close()

	for _, c := range []struct {
		name string
		p    tasks.Payload
	}{
		{"verify", &tasks.Verify{Store: testStoreName, IgnoreVerified: ptr(false)}},
		{"noop", &tasks.Prune{Store: testStoreName, Keep: tasks.Keep{KeepLast: ptr(1)}, DryRun: true}},
	} {
		b.Run(c.name, func(b *testing.B) {
			// round queues n tasks on one side and waits for them.
			round := func(queue string, done *atomic.Int64, n int) time.Duration {
				start := time.Now()
				target := done.Load() + int64(n)
				for range n {
					task, err := tasks.NewTask(c.p, asynq.Queue(queue), asynq.Retention(time.Minute))
					if err != nil {
						b.Fatal(err)
					}
					if _, err := client.Enqueue(task); err != nil {
						b.Fatal(err)
					}
				}
				for done.Load() < target {
					time.Sleep(100 * time.Microsecond)
				}
				return time.Since(start)
			}
			// Warm both up (store caches, connections).
			round(bareQueue, &bareDone, 4)
			round(tasks.Queue, &pbsqDone, 4)
			b.ResetTimer()
			var tPbsq, tBare time.Duration
			var ratios []float64 // per round pair, for the median
			const rounds = 16
			for r := range rounds {
				n := b.N / rounds
				if r < b.N%rounds {
					n++
				}
				if n == 0 {
					continue
				}
				var p, q time.Duration
				if r%2 == 0 {
					q = round(bareQueue, &bareDone, n)
					p = round(tasks.Queue, &pbsqDone, n)
				} else {
					p = round(tasks.Queue, &pbsqDone, n)
					q = round(bareQueue, &bareDone, n)
				}
				tPbsq, tBare = tPbsq+p, tBare+q
				ratios = append(ratios, p.Seconds()/q.Seconds())
			}
			b.StopTimer()
			slices.Sort(ratios)
			b.ReportMetric(float64(b.N)/tPbsq.Seconds(), "pbsq-tasks/s")
			b.ReportMetric(float64(b.N)/tBare.Seconds(), "bare-tasks/s")
			// The median of the round pairs is the figure: a pause of the
			// shared machine during one round moves the sums, not it.
			b.ReportMetric(ratios[len(ratios)/2], "overhead_ratio")
			b.ReportMetric(tPbsq.Seconds()/tBare.Seconds(), "overhead_ratio_sum")
			b.ReportMetric(float64((tPbsq-tBare).Microseconds())/float64(b.N), "overhead-µs/task")
		})
	}
	// Every pbsq run must have succeeded, or the comparison means nothing.
	for _, typ := range []string{tasks.TypeVerify, tasks.TypePrune} {
		for _, o := range []string{tasks.OutcomeFailed, OutcomeRetry, tasks.OutcomeBusy, tasks.OutcomeInvalid} {
			if n := testutil.ToFloat64(w.Metrics().tasks.WithLabelValues(typ, o)); n != 0 {
				b.Errorf("%v %s runs ended %s", n, typ, o)
			}
		}
	}
}
