package worker

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/internal/promreg"
	"github.com/pbsq/pbsq/internal/tick"
	"github.com/pbsq/pbsq/tasks"
)

// ScanOptions configure the periodic store scan behind the datastore and
// group metrics (DESIGN §6): contents are read every Interval, never on a
// scrape.
type ScanOptions struct {
	// Stores are scanned (the configured datastores).
	Stores []string
	// Interval between scans (default DefaultScanInterval).
	Interval time.Duration
	// GroupSeries exports the per-group series: 3 series per backup group,
	// and a manifest read per finished snapshot per scan. A store with
	// 10,000 groups adds 30,000 series; turn them off there.
	GroupSeries bool
	// Jobs are the (store, type) pairs expected to succeed regularly (the
	// scheduled ones): pbsq_job_last_success_timestamp_seconds starts at
	// the time they were first seen, so an alert can tell "never".
	Jobs []JobKey
}

// JobKey names a task type on a store.
type JobKey struct{ Store, Type string }

// DefaultScanInterval is the default time between store scans.
const DefaultScanInterval = 5 * time.Minute

const (
	// jobSuccessKey: hash "<store> <type>" → unix ms of the last success.
	jobSuccessKey = "pbsq:job-last-success"
	// gcLastKey: hash store → JSON gcRun.
	gcLastKey = "pbsq:gc-last"
)

// gcRun is what pbsq remembers of a store's last (non-dry-run) GC.
type gcRun struct {
	Ended        int64 `json:"ended"` // unix ms
	PendingBytes int64 `json:"pending-bytes"`
	DiskBytes    int64 `json:"disk-bytes"`
}

// storeMetrics are the scanned gauges and the S3 request counter.
type storeMetrics struct {
	size, used, avail *prometheus.GaugeVec
	snapshots         *prometheus.GaugeVec
	lastBackup        *prometheus.GaugeVec
	lastVerify        *prometheus.GaugeVec
	verifyFailed      *prometheus.GaugeVec
	jobSuccess        *prometheus.GaugeVec
	jobScheduled      *prometheus.GaugeVec
	gcLast, gcPending *prometheus.GaugeVec
	s3Requests        *prometheus.CounterVec
	scanSeconds       *prometheus.GaugeVec
	sampleCoverage    *prometheus.GaugeVec
}

func newStoreMetrics(reg prometheus.Registerer) *storeMetrics {
	groupLabels := []string{"store", "ns", "backup_type", "backup_id"}
	g := func(name, help string, labels ...string) *prometheus.GaugeVec {
		v := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
		if reg != nil {
			v = promreg.Register(reg, v)
		}
		return v
	}
	m := &storeMetrics{
		size:         g("pbsq_datastore_size_bytes", "Size of the filesystem holding the datastore (statfs; absent on S3).", "store"),
		used:         g("pbsq_datastore_used_bytes", "Bytes in use: the filesystem's used bytes (statfs), or on S3 the chunk store's bytes as of the last GC.", "store"),
		avail:        g("pbsq_datastore_available_bytes", "Bytes available on the datastore's filesystem (statfs; absent on S3).", "store"),
		snapshots:    g("pbsq_snapshots", "Finished snapshots per namespace (ns \"\" is the root), as of the last scan.", "store", "ns"),
		lastBackup:   g("pbsq_group_last_backup_timestamp_seconds", "Time of the group's newest finished snapshot.", groupLabels...),
		lastVerify:   g("pbsq_group_last_verify_timestamp_seconds", "Start of the latest verify that passed one of the group's snapshots; 0: never verified ok.", groupLabels...),
		verifyFailed: g("pbsq_group_verify_failed_snapshots", "Snapshots of the group whose last verify failed.", groupLabels...),
		jobSuccess:   g("pbsq_job_last_success_timestamp_seconds", "Time the last task of the type ended ok on the store (scheduled pairs start at the time first seen).", "store", "type"),
		jobScheduled: g("pbsq_job_scheduled", "1 for every (store, type) a schedule runs: the jobs PbsqJobNotSucceeding watches.", "store", "type"),
		gcLast:       g("pbsq_gc_last_run_timestamp_seconds", "End of the store's last garbage collection (not dry runs).", "store"),
		gcPending:    g("pbsq_gc_pending_bytes", "Bytes of unreferenced chunks too recent to remove at the last GC (removed by a later one).", "store"),
		scanSeconds:  g("pbsq_store_scan_timestamp_seconds", "End of the last successful scan of the store for these metrics.", "store"),
		sampleCoverage: g("pbsq_verify_sample_coverage_ratio",
			"Share of the chunks (0..1) the store's most recently advanced sampled-verify rotation has checked; 1: complete.", "store"),
	}
	m.s3Requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pbsq_s3_requests_total",
		Help: "HTTP requests to S3 by operation and status code (\"error\": no response).",
	}, []string{"store", "op", "code"})
	if reg != nil {
		m.s3Requests = promreg.Register(reg, m.s3Requests)
	}
	return m
}

// S3Request counts one request to a store's S3 bucket (for the backend's
// request hook).
func (w *Worker) S3Request(store, op, code string) {
	w.storeM.s3Requests.WithLabelValues(store, op, code).Inc()
}

// recordOutcome remembers a run's success for the job and GC metrics, in
// Redis (so every worker exports it) and in this worker's gauges.
func (w *Worker) recordOutcome(ctx context.Context, p tasks.Payload, outcome string, res Outcome) {
	if outcome != tasks.OutcomeOK && outcome != tasks.OutcomeSkipped {
		return
	}
	ctx, cancel := bookkeeping(ctx)
	defer cancel()
	now := time.Now()
	_, err := w.rdb.Pipelined(ctx, func(pp redis.Pipeliner) error {
		if outcome == tasks.OutcomeOK {
			for _, st := range p.Stores() {
				pp.HSet(ctx, jobSuccessKey, st+" "+p.TaskType(), now.UnixMilli())
				w.storeM.jobSuccess.WithLabelValues(st, p.TaskType()).Set(float64(now.Unix()))
			}
		}
		if r, ok := res.(*datastore.VerifyResult); ok && r != nil && r.Sample != nil {
			w.storeM.sampleCoverage.WithLabelValues(p.Stores()[0]).Set(r.Sample.Coverage)
		}
		if gp, ok := p.(*tasks.GC); ok && !gp.DryRun {
			if r, ok := res.(*datastore.GCResult); ok && r != nil {
				b, _ := json.Marshal(gcRun{Ended: now.UnixMilli(), PendingBytes: r.PendingBytes, DiskBytes: r.DiskBytes})
				pp.HSet(ctx, gcLastKey, gp.Store, b)
				w.storeM.gcLast.WithLabelValues(gp.Store).Set(float64(now.Unix()))
				w.storeM.gcPending.WithLabelValues(gp.Store).Set(float64(r.PendingBytes))
			}
		}
		return nil
	})
	if err != nil {
		w.log.Warn("job metrics not recorded", "err", err)
	}
}

// usager is a backend that knows its filesystem's usage (statfs).
type usager interface {
	Usage() (size, used, avail uint64, err error)
}

// scanLoop scans the stores at once and every interval.
func (w *Worker) scanLoop(ctx context.Context, o ScanOptions) {
	every := cmpOr(o.Interval, DefaultScanInterval)
	w.ScanStores(ctx, o)
	tick.Loop(ctx, every, func() bool {
		w.ScanStores(ctx, o)
		return true
	})
}

// ScanStores updates the datastore, snapshot, group, job and GC gauges.
func (w *Worker) ScanStores(ctx context.Context, o ScanOptions) {
	gcs := w.loadJobMetrics(ctx, o)
	for _, store := range o.Stores {
		if ctx.Err() != nil {
			return
		}
		if err := w.scanStore(ctx, store, o.GroupSeries, gcs[store]); err != nil {
			w.log.Warn("store scan failed; its metrics keep the last scan's values", "store", store, "err", err)
		}
	}
}

func (w *Worker) scanStore(ctx context.Context, store string, groups bool, gc *gcRun) error {
	s, err := w.stores.Open(ctx, store, "", nil)
	if err != nil {
		return err
	}
	m := w.storeM
	if u, ok := s.Backend().(usager); ok {
		size, used, avail, err := u.Usage()
		if err != nil {
			return err
		}
		m.size.WithLabelValues(store).Set(float64(size))
		m.used.WithLabelValues(store).Set(float64(used))
		m.avail.WithLabelValues(store).Set(float64(avail))
	} else if gc != nil {
		// Object storage: the chunk store's size as the last GC saw it.
		m.used.WithLabelValues(store).Set(float64(gc.DiskBytes))
	}
	st, err := s.Stats(ctx, groups)
	if err != nil {
		return err
	}
	// Series of namespaces and groups gone since the last scan go too.
	m.snapshots.DeletePartialMatch(prometheus.Labels{"store": store})
	for ns, n := range st.Snapshots {
		m.snapshots.WithLabelValues(store, ns).Set(float64(n))
	}
	for _, v := range []*prometheus.GaugeVec{m.lastBackup, m.lastVerify, m.verifyFailed} {
		v.DeletePartialMatch(prometheus.Labels{"store": store})
	}
	for _, g := range st.Groups {
		l := []string{store, g.Group.NS.String(), string(g.Group.Type), g.Group.ID}
		m.lastBackup.WithLabelValues(l...).Set(float64(g.LastBackup.Unix()))
		verified := 0.0
		if !g.LastVerifyOK.IsZero() {
			verified = float64(g.LastVerifyOK.Unix())
		}
		m.lastVerify.WithLabelValues(l...).Set(verified)
		m.verifyFailed.WithLabelValues(l...).Set(float64(g.VerifyFailed))
	}
	if cov, ok, err := s.VerifySampleCoverage(ctx); err != nil {
		return err
	} else if ok {
		m.sampleCoverage.WithLabelValues(store).Set(cov)
	} else {
		m.sampleCoverage.DeleteLabelValues(store)
	}
	m.scanSeconds.WithLabelValues(store).Set(float64(time.Now().Unix()))
	return nil
}

// loadJobMetrics reads the job and GC records every worker writes.
func (w *Worker) loadJobMetrics(ctx context.Context, o ScanOptions) map[string]*gcRun {
	ctx, cancel := context.WithTimeout(ctx, redisTimeout)
	defer cancel()
	now := time.Now().UnixMilli()
	for _, j := range o.Jobs {
		// First sighting of a scheduled pair: its baseline.
		w.rdb.HSetNX(ctx, jobSuccessKey, j.Store+" "+j.Type, now)
		w.storeM.jobScheduled.WithLabelValues(j.Store, j.Type).Set(1)
	}
	jobs, err := w.rdb.HGetAll(ctx, jobSuccessKey).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		w.log.Debug("job metrics not read", "err", err)
		return nil
	}
	for k, v := range jobs {
		store, typ, ok := strings.Cut(k, " ")
		ms, err := strconv.ParseInt(v, 10, 64)
		if !ok || err != nil {
			continue
		}
		w.storeM.jobSuccess.WithLabelValues(store, typ).Set(float64(ms / 1000))
	}
	gcs, err := w.rdb.HGetAll(ctx, gcLastKey).Result()
	if err != nil {
		return nil
	}
	out := map[string]*gcRun{}
	for store, v := range gcs {
		var r gcRun
		if json.Unmarshal([]byte(v), &r) != nil {
			continue
		}
		out[store] = &r
		w.storeM.gcLast.WithLabelValues(store).Set(float64(r.Ended / 1000))
		w.storeM.gcPending.WithLabelValues(store).Set(float64(r.PendingBytes))
	}
	return out
}
