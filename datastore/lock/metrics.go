package lock

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pbsq/pbsq/internal/promreg"
)

// Metrics are the Locker's Prometheus metrics. A nil *Metrics records
// nothing.
type Metrics struct {
	acquire *prometheus.CounterVec
	wait    *prometheus.HistogramVec
}

// NewMetrics creates the metrics and registers them on reg (nil: not
// registered). If reg already has them, as when several Lockers share a
// registry, the registered ones are reused.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		acquire: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pbsq_lock_acquire_total",
			Help: "Lock acquisitions by kind, mode and result (ok, busy, error).",
		}, []string{"kind", "mode", "result"}),
		wait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pbsq_lock_wait_seconds",
			Help:    "Time spent until a lock was acquired or given up.",
			Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"kind", "mode"}),
	}
	if reg != nil {
		m.acquire = promreg.Register(reg, m.acquire)
		m.wait = promreg.Register(reg, m.wait)
	}
	return m
}

func (m *Metrics) observe(req Request, result string, waited time.Duration) {
	if m == nil {
		return
	}
	kind, mode := req.Kind.String(), req.Mode.String()
	m.acquire.WithLabelValues(kind, mode, result).Inc()
	m.wait.WithLabelValues(kind, mode).Observe(waited.Seconds())
}
