// Package tick runs a function at a fixed interval: the heartbeats that
// keep leases and registrations fresh, and the worker's periodic loops.
package tick

import (
	"context"
	"time"
)

// Loop calls fn every interval, the first time one interval from now,
// until ctx is done or fn returns false. It returns when the loop ends.
func Loop(ctx context.Context, every time.Duration, fn func() bool) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if !fn() {
				return
			}
		}
	}
}

// Start runs Loop in its own goroutine. stop ends it and waits for a
// running fn to return, so nothing of the loop outlives stop.
func Start(ctx context.Context, every time.Duration, fn func() bool) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		Loop(ctx, every, fn)
	}()
	return func() {
		cancel()
		<-done
	}
}
