package datastore

import (
	"sync"
	"time"
)

// Progress is a snapshot of an operation's advance.
type Progress struct {
	Phase   string
	Done    int64
	Total   int64
	Message string
}

// Percent is Done/Total in percent (0 when Total is unknown).
func (p Progress) Percent() float64 {
	if p.Total <= 0 {
		return 0
	}
	return 100 * float64(p.Done) / float64(p.Total)
}

// ProgressFunc receives progress; it may be nil. Operations call it often;
// rate limiting is the receiver's business (see worker's reporter).
type ProgressFunc func(Progress)

// reporter accumulates progress from many goroutines.
type reporter struct {
	mu    sync.Mutex
	fn    ProgressFunc
	p     Progress
	last  time.Time
	every time.Duration
}

func newReporter(fn ProgressFunc, phase string, total int64) *reporter {
	r := &reporter{fn: fn, p: Progress{Phase: phase, Total: total}, every: 100 * time.Millisecond}
	r.emit(true)
	return r
}

func (r *reporter) emit(force bool) {
	if r.fn == nil {
		return
	}
	if !force && time.Since(r.last) < r.every {
		return
	}
	r.last = time.Now()
	r.fn(r.p)
}

// add advances Done by n.
func (r *reporter) add(n int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.p.Done += n
	r.emit(false)
}

// phase switches to a new phase with its own total.
func (r *reporter) phase(phase string, total int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.p = Progress{Phase: phase, Total: total}
	r.emit(true)
}

// message sets a message without changing counts.
func (r *reporter) message(msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.p.Message = msg
	r.emit(false)
}

// finish reports completion.
func (r *reporter) finish() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.p.Total > 0 {
		r.p.Done = r.p.Total
	}
	r.emit(true)
}
