package worker

import (
	"log/slog"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/internal/promreg"
	"github.com/pbsq/pbsq/tasks"
)

// Metrics are the worker's Prometheus metrics (docs/DESIGN.md §6). A nil *Metrics
// records nothing. The lock metrics are the lockers' own (lock.NewMetrics),
// made once by whatever builds the lockers: the Stores.
type Metrics struct {
	tasks      *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	inProgress *prometheus.GaugeVec
	progress   *prometheus.GaugeVec

	verifyChunks   *prometheus.CounterVec
	verifyBytes    *prometheus.CounterVec
	pruneSnapshots *prometheus.CounterVec
	moveSnapshots  *prometheus.CounterVec
	moveObjects    *prometheus.CounterVec
	syncChunks     *prometheus.CounterVec
	syncBytes      *prometheus.CounterVec
	skipped        *prometheus.CounterVec
	gcRemoved      *prometheus.CounterVec
	gcRemovedBytes *prometheus.CounterVec
	storeInfo      *prometheus.GaugeVec
}

// durationBuckets reach from a tiny verify to a day-long sync.
var durationBuckets = []float64{.1, .5, 1, 5, 15, 30, 60, 2 * 60, 5 * 60, 10 * 60, 30 * 60,
	3600, 2 * 3600, 4 * 3600, 8 * 3600, 16 * 3600, 24 * 3600}

// NewMetrics creates the metrics and registers them on reg (nil: not
// registered). Metrics already registered on reg, as when several workers
// share a registry, are reused.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		tasks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pbsq_tasks_total",
			Help: "Task runs by type and outcome (ok, skipped, failed, busy, invalid, cancelled, interrupted, retry).",
		}, []string{"type", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pbsq_task_duration_seconds",
			Help:    "Duration of task runs that reached an outcome (ok, skipped, failed).",
			Buckets: durationBuckets,
		}, []string{"type"}),
		inProgress: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pbsq_tasks_in_progress",
			Help: "Tasks running in this worker.",
		}, []string{"type"}),
		progress: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pbsq_task_progress_ratio",
			Help: "Progress of a running task's current phase (0..1); removed when the task ends.",
		}, []string{"type", "task_id"}),
		verifyChunks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pbsq_verify_chunks_total",
			Help: "Chunks verified, by result (ok, corrupt, missing, encrypted).",
		}, []string{"store", "result"}),
		verifyBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pbsq_verify_bytes_total",
			Help: "Bytes of chunk data verified.",
		}, []string{"store"}),
		pruneSnapshots: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pbsq_prune_snapshots_total",
			Help: "Snapshots marked by prune, by action (keep, remove, protected).",
		}, []string{"store", "action"}),
		moveSnapshots: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pbsq_move_snapshots_total",
			Help: "Snapshots moved, by backend (fs, s3).",
		}, []string{"store", "backend"}),
		moveObjects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pbsq_move_objects_total",
			Help: "Files or objects moved with snapshots.",
		}, []string{"store"}),
		syncChunks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pbsq_sync_chunks_total",
			Help: "Chunks handled by sync, by action (copied, present).",
		}, []string{"store", "action"}),
		syncBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pbsq_sync_bytes_total",
			Help: "Bytes of chunk data copied by sync.",
		}, []string{"store"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pbsq_skipped_items_total",
			Help: "Items set aside and reported as skipped, by task type and reason.",
		}, []string{"type", "reason"}),
		gcRemoved: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pbsq_gc_removed_chunks_total",
			Help: "Chunk files removed by garbage collection.",
		}, []string{"store"}),
		gcRemovedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pbsq_gc_removed_bytes_total",
			Help: "Bytes reclaimed by garbage collection.",
		}, []string{"store"}),
		storeInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pbsq_store_info",
			Help: "1 for every datastore this worker has opened, with its backend (fs, s3).",
		}, []string{"store", "backend"}),
	}
	if reg != nil {
		m.tasks = promreg.Register(reg, m.tasks)
		m.duration = promreg.Register(reg, m.duration)
		m.inProgress = promreg.Register(reg, m.inProgress)
		m.progress = promreg.Register(reg, m.progress)
		m.verifyChunks = promreg.Register(reg, m.verifyChunks)
		m.verifyBytes = promreg.Register(reg, m.verifyBytes)
		m.pruneSnapshots = promreg.Register(reg, m.pruneSnapshots)
		m.moveSnapshots = promreg.Register(reg, m.moveSnapshots)
		m.moveObjects = promreg.Register(reg, m.moveObjects)
		m.syncChunks = promreg.Register(reg, m.syncChunks)
		m.syncBytes = promreg.Register(reg, m.syncBytes)
		m.skipped = promreg.Register(reg, m.skipped)
		m.gcRemoved = promreg.Register(reg, m.gcRemoved)
		m.gcRemovedBytes = promreg.Register(reg, m.gcRemovedBytes)
		m.storeInfo = promreg.Register(reg, m.storeInfo)
	}
	// Known series start at 0, so that rate() and absent() work from the
	// first scrape instead of the first event.
	for _, t := range tasks.Types {
		m.inProgress.WithLabelValues(t)
		for _, o := range []string{tasks.OutcomeOK, tasks.OutcomeSkipped, tasks.OutcomeFailed} {
			m.tasks.WithLabelValues(t, o)
		}
	}
	return m
}

// Observer feeds the datastore counters of one store; the worker attaches
// one to every store it opens.
func (m *Metrics) Observer(store string) *datastore.Observer {
	if m == nil {
		return nil
	}
	return &datastore.Observer{
		ChunkVerified: func(result string, bytes int64) {
			m.verifyChunks.WithLabelValues(store, result).Inc()
			m.verifyBytes.WithLabelValues(store).Add(float64(bytes))
		},
		SnapshotPruned: func(action string) { m.pruneSnapshots.WithLabelValues(store, action).Inc() },
		SnapshotMoved: func(backend string, objects int) {
			m.moveSnapshots.WithLabelValues(store, backend).Inc()
			m.moveObjects.WithLabelValues(store).Add(float64(objects))
		},
		SyncChunk: func(action string, bytes int64) {
			m.syncChunks.WithLabelValues(store, action).Inc()
			if action == "copied" {
				m.syncBytes.WithLabelValues(store).Add(float64(bytes))
			}
		},
		Skipped: func(op, reason string) { m.skipped.WithLabelValues(op, reason).Inc() },
		ChunkRemoved: func(bytes int64) {
			m.gcRemoved.WithLabelValues(store).Inc()
			m.gcRemovedBytes.WithLabelValues(store).Add(float64(bytes))
		},
	}
}

// storeOpened records a store in pbsq_store_info and starts its counters
// at 0, so rate() and the dashboard's store variable work at once.
func (m *Metrics) storeOpened(store, backend string) {
	if m == nil {
		return
	}
	m.storeInfo.WithLabelValues(store, backend).Set(1)
	m.verifyBytes.WithLabelValues(store)
	m.syncBytes.WithLabelValues(store)
	m.moveObjects.WithLabelValues(store)
	m.gcRemovedBytes.WithLabelValues(store)
	m.gcRemoved.WithLabelValues(store)
}

// started marks a task running; the returned func ends it, recording its
// outcome and removing its progress series so task IDs never pile up.
func (m *Metrics) started(typ, taskID string) (prometheus.Gauge, func(outcome string, d time.Duration)) {
	if m == nil {
		return nil, func(string, time.Duration) {}
	}
	m.inProgress.WithLabelValues(typ).Inc()
	g := m.progress.WithLabelValues(typ, taskID)
	return g, func(outcome string, d time.Duration) {
		m.progress.DeleteLabelValues(typ, taskID)
		m.inProgress.WithLabelValues(typ).Dec()
		m.finished(typ, outcome, d)
	}
}

// finished counts one run; only runs that reached a real outcome go into
// the duration histogram (busy re-queues would drown it in near-zeros).
func (m *Metrics) finished(typ, outcome string, d time.Duration) {
	if m == nil {
		return
	}
	m.tasks.WithLabelValues(typ, outcome).Inc()
	switch outcome {
	case tasks.OutcomeOK, tasks.OutcomeSkipped, tasks.OutcomeFailed:
		m.duration.WithLabelValues(typ).Observe(d.Seconds())
	}
}

// QueueCollector exports asynq's queue state from Redis at scrape time,
// under the names of github.com/hibiken/asynq/x/metrics (which is a module
// of its own that pbsq does not depend on), so that asynqmon's Prometheus
// view and existing dashboards work unchanged.
type QueueCollector struct {
	ins *asynq.Inspector
	log *slog.Logger
	// mu serialises scrapes: each one reads every queue from Redis.
	mu sync.Mutex
}

// NewQueueCollector returns a collector reading queues through ins.
func NewQueueCollector(ins *asynq.Inspector, log *slog.Logger) *QueueCollector {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &QueueCollector{ins: ins, log: log}
}

var (
	queueLabels = []string{"queue"}
	// asynq_tasks_enqueued_total and asynq_queue_paused_total are gauges
	// whose names end in _total; exporting them untyped keeps asynq's names
	// and keeps `promtool check metrics` quiet.
	descEnqueued  = prometheus.NewDesc("asynq_tasks_enqueued_total", "Number of tasks in the queue, by state.", []string{"queue", "state"}, nil)
	descSize      = prometheus.NewDesc("asynq_queue_size", "Number of tasks in the queue.", queueLabels, nil)
	descLatency   = prometheus.NewDesc("asynq_queue_latency_seconds", "Age of the oldest pending task.", queueLabels, nil)
	descMemory    = prometheus.NewDesc("asynq_queue_memory_usage_approx_bytes", "Approximate Redis memory used by the queue.", queueLabels, nil)
	descProcessed = prometheus.NewDesc("asynq_tasks_processed_total", "Tasks processed (succeeded or failed).", queueLabels, nil)
	descFailed    = prometheus.NewDesc("asynq_tasks_failed_total", "Task runs that failed.", queueLabels, nil)
	descPaused    = prometheus.NewDesc("asynq_queue_paused_total", "1 if the queue is paused, else 0.", queueLabels, nil)
	// descConsumers tells a queue whose store no worker has (tasks wait
	// there, visibly, for one) from a busy one.
	descConsumers = prometheus.NewDesc("pbsq_queue_consumers", "Running workers that listen to the queue.", queueLabels, nil)
)

// Describe implements prometheus.Collector.
func (c *QueueCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descEnqueued, descSize, descLatency, descMemory, descProcessed, descFailed, descPaused, descConsumers} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. A Redis failure yields an
// invalid metric, so the scrape reports it while other metrics still flow
// (with promhttp.ContinueOnError).
func (c *QueueCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	names, err := c.ins.Queues()
	if err != nil {
		c.log.Debug("queue metrics: list queues", "err", err)
		ch <- prometheus.NewInvalidMetric(descSize, err)
		return
	}
	consumers, cerr := queueConsumers(c.ins)
	if cerr != nil {
		c.log.Debug("queue metrics: list workers", "err", cerr)
	}
	for _, q := range names {
		if cerr == nil {
			ch <- prometheus.MustNewConstMetric(descConsumers, prometheus.GaugeValue, float64(consumers[q]), q)
		}
		info, err := c.ins.GetQueueInfo(q)
		if err != nil {
			c.log.Debug("queue metrics: queue info", "queue", q, "err", err)
			ch <- prometheus.NewInvalidMetric(descSize, err)
			continue
		}
		for state, n := range map[string]int{
			"active": info.Active, "pending": info.Pending, "scheduled": info.Scheduled, "retry": info.Retry,
			"archived": info.Archived, "completed": info.Completed, "aggregating": info.Aggregating,
		} {
			ch <- prometheus.MustNewConstMetric(descEnqueued, prometheus.UntypedValue, float64(n), q, state)
		}
		paused := 0.0
		if info.Paused {
			paused = 1
		}
		ch <- prometheus.MustNewConstMetric(descSize, prometheus.GaugeValue, float64(info.Size), q)
		ch <- prometheus.MustNewConstMetric(descLatency, prometheus.GaugeValue, info.Latency.Seconds(), q)
		ch <- prometheus.MustNewConstMetric(descMemory, prometheus.GaugeValue, float64(info.MemoryUsage), q)
		ch <- prometheus.MustNewConstMetric(descProcessed, prometheus.CounterValue, float64(info.ProcessedTotal), q)
		ch <- prometheus.MustNewConstMetric(descFailed, prometheus.CounterValue, float64(info.FailedTotal), q)
		ch <- prometheus.MustNewConstMetric(descPaused, prometheus.UntypedValue, paused, q)
	}
}
