package worker

import (
	"encoding/json"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/tasks"
)

type writes struct {
	mu   sync.Mutex
	at   []time.Time
	last tasks.Progress
}

func (w *writes) write(b []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.at = append(w.at, time.Now())
	return json.Unmarshal(b, &w.last)
}

func (w *writes) snapshot() ([]time.Time, tasks.Progress) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]time.Time(nil), w.at...), w.last
}

func TestReporterRateLimitsAndKeepsTheLastState(t *testing.T) {
	const every = 100 * time.Millisecond
	var w writes
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "g"})
	// The reporter's first rest starts after this, so no write can come
	// sooner than one interval after start, however the goroutines are
	// scheduled.
	start := time.Now()
	r := newReporter(w.write, g, every, slog.New(slog.DiscardHandler))
	// 2000 updates from 4 goroutines over ~350 ms.
	var wg sync.WaitGroup
	for k := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				r.update(datastore.Progress{Phase: "verify", Done: int64(i + k), Total: 1000})
				time.Sleep(700 * time.Microsecond)
			}
		}()
	}
	wg.Wait()
	// At least one write during the updates (a starved reporter may not
	// have written yet), so that the trailing one makes two.
	waitUntil(t, "a progress write", func() bool { at, _ := w.snapshot(); return len(at) > 0 })
	r.update(datastore.Progress{Phase: "verify", Done: 999, Total: 1000, Message: "last"})
	elapsed := time.Since(start)
	// The trailing write comes after the rest.
	waitUntil(t, "the trailing write", func() bool { _, last := w.snapshot(); return last.Message == "last" })
	r.stop()

	at, last := w.snapshot()
	if max := int(elapsed/every) + 1; len(at) > max || len(at) < 2 {
		t.Fatalf("%d writes in %s, want 2..%d (one per %s)", len(at), elapsed, max, every)
	}
	if first := at[0].Sub(start); first < every-5*time.Millisecond {
		t.Errorf("first write %s after the start; the start record covers the first %s", first, every)
	}
	for i := 1; i < len(at); i++ {
		if gap := at[i].Sub(at[i-1]); gap < every-5*time.Millisecond {
			t.Errorf("writes %d and %d only %s apart", i-1, i, gap)
		}
	}
	if last.State != "running" || last.Done != 999 || last.Message != "last" || last.Percent != 99.9 || last.Updated == 0 {
		t.Errorf("last write %+v, want the final update", last)
	}
	if got := testutil.ToFloat64(g); got != 0.999 {
		t.Errorf("gauge %v, want 0.999", got)
	}

	// After stop nothing is written, so the final record is never
	// overwritten by a late progress: stop has ended the goroutine that
	// writes, so nothing can come later than now.
	n := len(at)
	r.update(datastore.Progress{Phase: "late"})
	if at, _ := w.snapshot(); len(at) != n {
		t.Errorf("write after stop")
	}
}

func TestReporterUnknownTotal(t *testing.T) {
	var w writes
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "g"})
	r := newReporter(w.write, g, 50*time.Millisecond, slog.New(slog.DiscardHandler))
	r.update(datastore.Progress{Phase: "scan", Done: 5})
	waitUntil(t, "the first progress write", func() bool { at, _ := w.snapshot(); return len(at) == 1 })
	if _, last := w.snapshot(); last.Phase != "scan" || last.Percent != 0 {
		t.Errorf("record %+v", last)
	}
	r.stop()
	if got := testutil.ToFloat64(g); got != 0 {
		t.Errorf("gauge %v with unknown total", got)
	}
}
