package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/internal/promreg"
	"github.com/pbsq/pbsq/tasks"
)

// Options configure a Worker.
type Options struct {
	// Redis is the queue's Redis (required).
	Redis asynq.RedisConnOpt
	// Stores opens the datastores tasks name (required).
	Stores Stores
	// Logger: nil discards.
	Logger *slog.Logger
	// Registerer takes the worker's metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Concurrency is the number of tasks run at once (default: the
	// number of CPUs).
	Concurrency int
	// ShutdownTimeout is how long Shutdown lets running tasks finish
	// before they are re-queued (default 30 s).
	ShutdownTimeout time.Duration

	// PollInterval is how often an idle worker looks for tasks
	// (default 1 s).
	PollInterval time.Duration
	// ForwardInterval is how often due scheduled and retrying tasks are
	// moved back to the queue (default 2 s).
	ForwardInterval time.Duration
	// ProgressInterval is the least time between two progress records in
	// Redis (default 1 s).
	ProgressInterval time.Duration
	// BusyDelay picks the delay of a busy re-queue (default 5–15 s).
	BusyDelay func() time.Duration
	// BusyLimit is how long a busy task keeps being re-queued (default
	// DefaultBusyLimit).
	BusyLimit time.Duration
	// Schedules are queued by a scheduler that runs from Start to
	// Shutdown (none: no scheduler). Any number of workers may run the
	// same schedules: each fire is claimed by one of them.
	Schedules []Schedule
	// ChainInterval is how often held dependents of job chains are
	// settled, besides when their tasks end (default DefaultChainInterval).
	ChainInterval time.Duration
	// Scan, when set, runs the periodic store scan of the datastore and
	// group metrics.
	Scan *ScanOptions
	// StoreNames are the datastores Stores can open: the worker listens to
	// their queues (tasks.StoreQueues) besides the legacy tasks.Queue.
	StoreNames []string
	// StoreCaps is max-jobs per store: at most that many tasks of the
	// store run at once on all workers sharing the Redis (0: no cap).
	StoreCaps map[string]int
	// TaskKeys, when set, makes the worker run only tasks signed with one
	// of them (tasks.NewSignedTask); others are archived as invalid. The
	// shards of sharded jobs are signed with the first.
	TaskKeys *tasks.Keys
	// LedgerCap bounds the chunk ledger of one sharded job, in entries
	// (default DefaultLedgerCap); beyond it shards check chunks alone.
	LedgerCap int
}

// Worker consumes pbsq's tasks from Redis: an asynq server with one
// handler per task type.
type Worker struct {
	srv        *asynq.Server
	mux        *asynq.ServeMux
	rdb        redis.UniversalClient
	ins        *asynq.Inspector
	client     *asynq.Client // queues the shards of sharded jobs
	stores     Stores
	log        *slog.Logger
	metrics    *Metrics
	timeout    time.Duration
	every      time.Duration
	busyDelay  func() time.Duration
	busyLimit  time.Duration
	chainEvery time.Duration
	stopChains func()
	storeM     *storeMetrics
	scan       *ScanOptions
	keys       *tasks.Keys
	caps       map[string]int
	ledgerCap  int
	// storeNames are Options.StoreNames, for messages.
	storeNames []string

	// running counts handlers still running: after asynq's shutdown
	// timeout they are abandoned, not finished.
	running sync.WaitGroup
	// onDone, when set (benchmarks), runs after each task.
	onDone func()

	scheduler     *Scheduler // nil: no schedules
	stopScheduler func()
}

// New builds a Worker; Start runs it.
func New(opts Options) *Worker {
	if opts.Redis == nil || opts.Stores == nil {
		panic("worker.New: Redis and Stores are required")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	rdb, ok := opts.Redis.MakeRedisClient().(redis.UniversalClient)
	if !ok {
		panic(fmt.Sprintf("worker.New: unsupported Redis connection %T", opts.Redis))
	}
	w := &Worker{
		rdb:       rdb,
		log:       log,
		metrics:   NewMetrics(opts.Registerer),
		timeout:   cmpOr(opts.ShutdownTimeout, 30*time.Second),
		every:     cmpOr(opts.ProgressInterval, time.Second),
		busyDelay: opts.BusyDelay,
		busyLimit: cmpOr(opts.BusyLimit, DefaultBusyLimit),
		ins:       asynq.NewInspectorFromRedisClient(rdb),
		client:    asynq.NewClientFromRedisClient(rdb),

		chainEvery: cmpOr(opts.ChainInterval, DefaultChainInterval),
		stopChains: func() {},
		storeM:     newStoreMetrics(opts.Registerer),
		scan:       opts.Scan,
		keys:       opts.TaskKeys,
		caps:       opts.StoreCaps,
		ledgerCap:  cmpOr(opts.LedgerCap, DefaultLedgerCap),
		storeNames: opts.StoreNames,
	}
	if w.busyDelay == nil {
		w.busyDelay = defaultBusyDelay
	}
	w.stores = observedStores{Stores: opts.Stores, metrics: w.metrics}
	if opts.Registerer != nil {
		promreg.Register(opts.Registerer, prometheus.Collector(NewQueueCollector(w.ins, log)))
	}
	w.mux = asynq.NewServeMux()
	for _, t := range tasks.Types {
		w.mux.Handle(t, w.handler(t))
	}
	if len(opts.Schedules) > 0 {
		// On the worker's connection, which Shutdown closes.
		// Signed like the CLI's tasks; routed per store when the worker
		// knows its stores (as the CLI does).
		enq := &Enqueuer{rdb: rdb, client: asynq.NewClientFromRedisClient(rdb), ins: asynq.NewInspectorFromRedisClient(rdb),
			keys: opts.TaskKeys, perStore: len(opts.StoreNames) > 0}
		w.scheduler = NewScheduler(enq, opts.Schedules, SchedulerOptions{Logger: log, Registerer: opts.Registerer})
	}
	w.srv = asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Concurrency:              opts.Concurrency,
		Queues:                   workerQueues(opts.StoreNames),
		ShutdownTimeout:          w.timeout,
		TaskCheckInterval:        cmpOr(opts.PollInterval, time.Second),
		DelayedTaskCheckInterval: cmpOr(opts.ForwardInterval, 2*time.Second),
		RetryDelayFunc:           w.retryDelay,
		IsFailure:                isFailure,
		Logger:                   asynqLogger{log},
		LogLevel:                 asynqLevel(log),
		HealthCheckFunc: func(err error) {
			if err != nil {
				log.Warn("redis health check failed", "err", err)
			}
		},
	})
	return w
}

func cmpOr[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Metrics returns the worker's metrics.
func (w *Worker) Metrics() *Metrics { return w.metrics }

// Start checks Redis and starts taking tasks.
func (w *Worker) Start(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, redisTimeout)
	defer cancel()
	if err := w.rdb.Ping(pctx).Err(); err != nil {
		return fmt.Errorf("worker: redis: %w", err)
	}
	// Chains first: what was left unsettled (a worker died at a hand-over)
	// is settled before this worker takes tasks.
	w.settleAll(ctx)
	if err := w.srv.Start(w); err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	cctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	var loops sync.WaitGroup
	loops.Go(func() { w.chainLoop(cctx, w.chainEvery) })
	if w.scan != nil {
		loops.Go(func() { w.scanLoop(cctx, *w.scan) })
	}
	w.stopChains = func() { cancel(); loops.Wait() }
	w.log.Info("worker started", "stores", w.storeNames, "signed_tasks_only", w.keys != nil)
	w.warnTrust()
	if w.scheduler != nil {
		ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		done := make(chan struct{})
		go func() {
			defer close(done)
			w.scheduler.Run(ctx)
		}()
		w.stopScheduler = func() { cancel(); <-done }
		w.log.Info("scheduler running", "schedules", len(w.scheduler.schedules))
	}
	return nil
}

// Shutdown stops taking tasks, lets running ones finish within the
// shutdown timeout (then they are re-queued and their contexts cancelled,
// which the operations honour), and closes the Redis connection.
func (w *Worker) Shutdown() {
	if w.stopScheduler != nil {
		w.stopScheduler()
	}
	w.stopChains()
	w.srv.Shutdown()
	// Abandoned handlers see their cancelled context within a second or
	// so; wait for them briefly so they do not outlive the worker.
	done := make(chan struct{})
	go func() { w.running.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		w.log.Warn("worker: handlers still running after shutdown")
	}
	_ = w.rdb.Close()
}

// observedStores attaches the worker's metrics observer to every store.
type observedStores struct {
	Stores
	metrics *Metrics
}

func (o observedStores) Open(ctx context.Context, store, taskID string, wait *tasks.Duration) (*datastore.Store, error) {
	s, err := o.Stores.Open(ctx, store, taskID, wait)
	if err != nil {
		return s, err
	}
	obs := o.metrics.Observer(store)
	if o.metrics != nil {
		o.metrics.storeOpened(store, s.Backend().Features().Kind)
	}
	if tl := taskLogFrom(ctx); tl != nil {
		if obs == nil {
			obs = &datastore.Observer{}
		}
		obs.Log = tl.Line
		if l := s.Locker(); l != nil {
			s = s.WithLocker(l.WithWaitNotice(func(req lock.Request, busy error, window time.Duration) {
				var be *lock.BusyError
				if errors.As(busy, &be) {
					// It names the lock, what is busy and its holder.
					tl.Printf("waiting up to %s for lock %v", window, busy)
					return
				}
				tl.Printf("waiting up to %s for lock %s: %v", window, req, busy)
			}))
		}
	}
	if obs == nil {
		return s, nil
	}
	return s.WithObserver(obs), nil
}

// asynqLogger routes asynq's own logging into slog.
type asynqLogger struct{ log *slog.Logger }

func (l asynqLogger) Debug(args ...any) { l.log.Debug(fmt.Sprint(args...), "component", "asynq") }
func (l asynqLogger) Info(args ...any)  { l.log.Info(fmt.Sprint(args...), "component", "asynq") }
func (l asynqLogger) Warn(args ...any)  { l.log.Warn(fmt.Sprint(args...), "component", "asynq") }
func (l asynqLogger) Error(args ...any) { l.log.Error(fmt.Sprint(args...), "component", "asynq") }
func (l asynqLogger) Fatal(args ...any) {
	l.log.Error(fmt.Sprint(args...), "component", "asynq")
	os.Exit(1)
}

// asynqLevel keeps asynq's chatty info lines (start, shutdown steps) out
// of the log unless debugging.
func asynqLevel(log *slog.Logger) asynq.LogLevel {
	if log.Enabled(context.Background(), slog.LevelDebug) {
		return asynq.DebugLevel
	}
	return asynq.WarnLevel
}
