package tick

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// TestLoopStopsWhenFnSaysSo: fn returning false ends the loop.
func TestLoopStopsWhenFnSaysSo(t *testing.T) {
	n := 0
	Loop(context.Background(), time.Millisecond, func() bool {
		n++
		return n < 3
	})
	if n != 3 {
		t.Fatalf("fn called %d times, want 3", n)
	}
}

// TestLoopStopsOnContext: a done context ends the loop without calling fn
// again.
func TestLoopStopsOnContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	n := 0
	Loop(ctx, time.Millisecond, func() bool {
		n++
		if n == 2 {
			cancel()
		}
		return true
	})
	if n != 2 {
		t.Fatalf("fn called %d times after cancel, want 2", n)
	}
}

// TestStartStopWaits: stop returns only once a running fn has returned.
func TestStartStopWaits(t *testing.T) {
	var inFlight atomic.Int32
	entered := make(chan struct{}, 1)
	stop := Start(context.Background(), time.Millisecond, func() bool {
		inFlight.Add(1)
		defer inFlight.Add(-1)
		select {
		case entered <- struct{}{}:
		default:
		}
		time.Sleep(5 * time.Millisecond)
		return true
	})
	<-entered
	stop()
	if n := inFlight.Load(); n != 0 {
		t.Fatalf("%d call(s) of fn still running after stop", n)
	}
}
