package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
	"github.com/pbsq/pbsq/tasks"
	"github.com/pbsq/pbsq/worker"
)

func init() { extraCommands = append(extraCommands, (*app).workerCmd) }

// configuredQueue is the configured Redis as an asynq connection.
func (a *app) configuredQueue() asynq.RedisConnOpt {
	o := a.redisOptions()
	if o.MasterName != "" {
		return asynq.RedisFailoverClientOpt{MasterName: o.MasterName, SentinelAddrs: o.Addrs,
			Username: o.Username, Password: o.Password, DB: o.DB, TLSConfig: o.TLSConfig}
	}
	return asynq.RedisClientOpt{Addr: o.Addrs[0], Username: o.Username, Password: o.Password, DB: o.DB, TLSConfig: o.TLSConfig}
}

// errNoRedis explains where the queue is to be found.
func (a *app) errNoRedis() error {
	return usagef("no Redis configured in %s (redis.addr, or PBSQ_REDIS_ADDR) and no `pbsq serve` running for this config: start `pbsq serve` (embedded Redis) or configure one", a.configPath)
}

// queueConn finds the queue: the configured Redis, else the in-process
// Redis of a `pbsq serve` running with this config (its state file).
func (a *app) queueConn() (asynq.RedisConnOpt, error) {
	if a.cfg.Redis.Configured() {
		return a.configuredQueue(), nil
	}
	st, _, err := a.readServeState()
	if err != nil {
		return nil, err
	}
	if st == nil {
		return nil, a.errNoRedis()
	}
	return asynq.RedisClientOpt{Addr: st.Redis}, nil
}

// enqueuer connects to the queue.
func (a *app) enqueuer() (*worker.Enqueuer, error) {
	conn, err := a.queueConn()
	if err != nil {
		return nil, err
	}
	keys, err := a.taskKeys()
	if err != nil {
		return nil, err
	}
	e, err := worker.NewEnqueuer(conn)
	if err == nil {
		e.SignWith(keys)
		e.QueuePerStore()
	}
	return e, err
}

// workerStores opens configured datastores for a long-running worker: each
// backend and the lock backend are opened once and shared by all tasks
// (opening per task would leak S3 and Redis clients), and the lockers
// record lock metrics.
type workerStores struct {
	a       *app
	metrics *lock.Metrics
	// s3Request counts S3 requests (set once the worker exists).
	s3Request func(store, op, code string)

	mu       sync.Mutex
	locks    lock.Backend
	backends map[string]backend.Backend
}

func newWorkerStores(a *app, m *lock.Metrics) *workerStores {
	return &workerStores{a: a, metrics: m, backends: map[string]backend.Backend{}}
}

func (s *workerStores) Open(ctx context.Context, store, taskID string, wait *tasks.Duration) (*datastore.Store, error) {
	ds, err := s.a.storeConfig(store)
	if err != nil {
		// A store this worker does not know will not appear by retrying:
		// the task is archived at once (worker.conclude).
		if errors.Is(err, name.ErrInvalid) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %w", name.ErrInvalid, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// Opened for the worker's lifetime, not the first task's.
	bctx := context.WithoutCancel(ctx)
	b, ok := s.backends[store]
	if !ok {
		if b, err = s.openBackend(bctx, store, ds); err != nil {
			return nil, fmt.Errorf("datastore %q: %w", store, err)
		}
		s.backends[store] = b
	}
	if s.locks == nil {
		if s.locks, err = s.a.lockBackend(bctx); err != nil {
			return nil, fmt.Errorf("locks: %w", err)
		}
	}
	w := s.a.cfg.Locks.Wait
	if wait != nil {
		w = wait.Duration
	}
	l := lock.New(s.locks, lock.Options{Logger: s.a.log, Metrics: s.metrics, Holder: lock.Holder{TaskID: taskID}}).WithWait(w)
	opts := s.a.storeOptions(ds)
	opts.Locker = l
	return datastore.Open(store, b, opts)
}

// Close releases the backends; call it after the worker stopped.
func (s *workerStores) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, b := range s.backends {
		errs = append(errs, b.Close())
	}
	if s.locks != nil {
		errs = append(errs, s.locks.Close())
	}
	return errors.Join(errs...)
}

// workerFlags are the flags `worker` and `serve` share.
type workerFlags struct {
	concurrency     int
	listen          string
	shutdownTimeout time.Duration
	schedules       bool
	pollInterval    time.Duration
}

func (f *workerFlags) register(cmd *cobra.Command, listenHelp string) {
	cmd.Flags().IntVar(&f.concurrency, "concurrency", 0, "tasks run at once (default: number of CPUs)")
	cmd.Flags().StringVar(&f.listen, "listen", "", listenHelp+" (default metrics.listen from the config, 127.0.0.1:9464; \"off\": none)")
	cmd.Flags().DurationVar(&f.shutdownTimeout, "shutdown-timeout", 30*time.Second, "on SIGTERM, how long running tasks may finish before they are re-queued")
	cmd.Flags().DurationVar(&f.pollInterval, "poll-interval", time.Second, "how often an idle worker looks for new tasks (shorter: quicker pick-up of shards, more Redis calls)")
	cmd.Flags().BoolVar(&f.schedules, "schedules", true, "queue the config's schedules (each fire is claimed in Redis: any number of hosts may run them)")
}

// workerRuntime is a running worker and what it needs.
type workerRuntime struct {
	w      *worker.Worker
	stores *workerStores
	reg    *prometheus.Registry
}

func (a *app) startWorker(ctx context.Context, conn asynq.RedisConnOpt, f workerFlags) (*workerRuntime, error) {
	keys, err := a.taskKeys()
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	stores := newWorkerStores(a, lock.NewMetrics(reg))
	opts := worker.Options{
		Redis:           conn,
		Stores:          stores,
		Logger:          a.log,
		Registerer:      reg,
		Concurrency:     f.concurrency,
		ShutdownTimeout: f.shutdownTimeout,
		PollInterval:    f.pollInterval,
		Scan:            a.scanOptions(),
		TaskKeys:        keys,
		StoreNames:      slices.Sorted(maps.Keys(a.cfg.Datastores)),
		StoreCaps:       a.storeCaps(),
	}
	if f.schedules {
		opts.Schedules = a.cfg.schedules()
	}
	w := worker.New(opts)
	stores.s3Request = w.S3Request
	if err := w.Start(ctx); err != nil {
		return nil, err
	}
	return &workerRuntime{w: w, stores: stores, reg: reg}, nil
}

// metricsHandler serves the registry; a failing collector (Redis down for
// the queue metrics) leaves the others readable.
func (rt *workerRuntime) metricsHandler() http.Handler {
	return promhttp.HandlerFor(rt.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError, Registry: rt.reg})
}

func (rt *workerRuntime) shutdown() {
	rt.w.Shutdown()
	_ = rt.stores.Close()
}

// serveHTTP listens on addr at once (so a taken port is an error now, not
// a log line later) and serves h in the background.
func serveHTTP(addr string, h http.Handler) (*http.Server, string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("listen %s: %w", addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return srv, ln.Addr().String(), nil
}

func shutdownHTTP(servers ...*http.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range servers {
		if s != nil {
			_ = s.Shutdown(ctx)
		}
	}
}

func (a *app) listenAddr(flag string) string {
	if flag == "" {
		return a.cfg.Metrics.Listen
	}
	return flag
}

func (a *app) workerCmd() *cobra.Command {
	var f workerFlags
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run a worker against the configured Redis (SIGTERM: finish running tasks, then stop)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !a.cfg.Redis.Configured() {
				return usagef("no Redis configured in %s: set redis.addr (or PBSQ_REDIS_ADDR); `pbsq serve` runs an embedded one", a.configPath)
			}
			ctx := cmd.Context()
			rt, err := a.startWorker(ctx, a.configuredQueue(), f)
			if err != nil {
				return err
			}
			defer rt.shutdown()
			var srv *http.Server
			if addr := a.listenAddr(f.listen); addr != "off" {
				mux := http.NewServeMux()
				mux.Handle("/metrics", rt.metricsHandler())
				rt.handleLogs(mux)
				var bound string
				if srv, bound, err = serveHTTP(addr, mux); err != nil {
					return err
				}
				a.log.Info("metrics", "url", "http://"+bound+"/metrics")
			}
			a.log.Info("worker running; SIGTERM or Ctrl-C stops it", "redis", redisLabel(a.configuredQueue()), "datastores", a.cfg.storeNames())
			<-ctx.Done()
			a.log.Info("stopping: no new tasks; running ones get the shutdown timeout", "timeout", f.shutdownTimeout)
			shutdownHTTP(srv)
			return nil
		},
	}
	f.register(cmd, "address of /metrics")
	return cmd
}

// redisLabel names a connection for messages, without secrets.
func redisLabel(c asynq.RedisConnOpt) string {
	switch o := c.(type) {
	case asynq.RedisClientOpt:
		return o.Addr
	case asynq.RedisFailoverClientOpt:
		return fmt.Sprintf("sentinel %s %v", o.MasterName, o.SentinelAddrs)
	}
	return fmt.Sprintf("%T", c)
}
