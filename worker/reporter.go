package worker

import (
	"encoding/json"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/tasks"
)

// reporter forwards an operation's progress into the task's result field
// and its progress gauge. Operations report often and from many
// goroutines; the gauge takes every update, Redis at most one per interval,
// written from the reporter's own goroutine so that a slow Redis never
// stalls the operation.
type reporter struct {
	write func([]byte) error
	gauge prometheus.Gauge // nil: none
	every time.Duration
	log   *slog.Logger

	mu    sync.Mutex
	cur   tasks.Progress
	dirty bool

	kick chan struct{}
	done chan struct{}
	wg   sync.WaitGroup
}

func newReporter(write func([]byte) error, gauge prometheus.Gauge, every time.Duration, log *slog.Logger) *reporter {
	r := &reporter{write: write, gauge: gauge, every: every, log: log,
		kick: make(chan struct{}, 1), done: make(chan struct{})}
	r.wg.Add(1)
	go r.run()
	return r
}

// update records p; it never blocks on Redis.
func (r *reporter) update(p datastore.Progress) {
	if r.gauge != nil {
		ratio := 0.0
		if p.Total > 0 {
			ratio = min(float64(p.Done)/float64(p.Total), 1)
		}
		r.gauge.Set(ratio)
	}
	r.mu.Lock()
	r.cur = tasks.Progress{State: "running", Phase: p.Phase, Done: p.Done, Total: p.Total,
		Percent: p.Percent(), Message: p.Message, Updated: time.Now().Unix()}
	r.dirty = true
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// run rests for the interval, then writes the latest progress when there
// is news, and so on; news arriving during a rest is written after it, so
// the last state before a pause is never lost. It starts with a rest: the
// task's start was just recorded, and a task done within the interval
// needs no progress in Redis at all.
func (r *reporter) run() {
	defer r.wg.Done()
	rest := time.NewTimer(r.every)
	defer rest.Stop()
	for {
		select {
		case <-rest.C:
		case <-r.done:
			return
		}
		select {
		case <-r.kick:
		case <-r.done:
			return
		}
		r.flush()
		rest.Reset(r.every)
	}
}

func (r *reporter) flush() {
	r.mu.Lock()
	if !r.dirty {
		r.mu.Unlock()
		return
	}
	p := r.cur
	r.dirty = false
	r.mu.Unlock()
	b, err := json.Marshal(p)
	if err == nil {
		err = r.write(b)
	}
	if err != nil {
		r.log.Debug("progress not recorded", "err", err)
	}
}

// stop ends the reporter without a last write: the final record replaces
// the progress, and must not be overwritten by a late one.
func (r *reporter) stop() {
	close(r.done)
	r.wg.Wait()
}
