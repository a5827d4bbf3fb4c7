package datastore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/pbsq/pbsq/datastore/lock"
)

// TestBusyRetry: busy items are set aside, retried once after the others
// in their original order, one at a time, and skipped when still busy;
// every item is done once; any other error stops the run.
func TestBusyRetry(t *testing.T) {
	for _, workers := range []int{1, 3} {
		t.Run(fmt.Sprint("workers=", workers), func(t *testing.T) {
			var mu sync.Mutex
			tries := map[int]int{}
			var retried, skipped, done []int
			var aside int
			nRetrying := -1
			busy := fmt.Errorf("held elsewhere: %w", lock.ErrBusy)
			items := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}
			err := busyRetry[int]{
				workers: workers,
				run: func(ctx context.Context, i int) error {
					mu.Lock()
					defer mu.Unlock()
					tries[i]++
					if tries[i] == 2 {
						retried = append(retried, i)
					}
					if i == 7 || (tries[i] == 1 && (i == 2 || i == 5)) {
						return busy
					}
					return nil
				},
				aside:    func(int, error) { mu.Lock(); aside++; mu.Unlock() },
				retrying: func(n int) { nRetrying = n },
				skip: func(i int, err error) {
					if !errors.Is(err, lock.ErrBusy) {
						t.Errorf("skip %d with %v", i, err)
					}
					skipped = append(skipped, i)
				},
				done: func(i int) { mu.Lock(); done = append(done, i); mu.Unlock() },
			}.do(context.Background(), items)
			if err != nil {
				t.Fatal(err)
			}
			slices.Sort(done)
			if !slices.Equal(retried, []int{2, 5, 7}) || !slices.Equal(skipped, []int{7}) || !slices.Equal(done, items) ||
				aside != 3 || nRetrying != 3 {
				t.Errorf("retried %v, skipped %v, done %v, aside %d, retrying %d", retried, skipped, done, aside, nRetrying)
			}
		})
	}
	boom := errors.New("boom")
	err := busyRetry[int]{
		workers: 2,
		run: func(ctx context.Context, i int) error {
			if i == 4 {
				return boom
			}
			return nil
		},
		skip: func(int, error) { t.Error("skip after a failure") },
	}.do(context.Background(), []int{1, 2, 3, 4, 5, 6})
	if !errors.Is(err, boom) {
		t.Errorf("failing item: %v, want its error", err)
	}
}

// TestParallel: the first error is returned and the others see their
// context cancelled; a cancelled parent is reported by its cause.
func TestParallel(t *testing.T) {
	boom := errors.New("boom")
	err := parallel(context.Background(), 2, 100, func(ctx context.Context, i int) error {
		if i == 3 {
			return boom
		}
		if i > 3 {
			<-ctx.Done()
		}
		return nil
	})
	if !errors.Is(err, boom) {
		t.Errorf("parallel = %v, want the item's error", err)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	cause := errors.New("lease lost")
	cancel(cause)
	ran := 0
	if err := parallel(ctx, 2, 10, func(context.Context, int) error { ran++; return nil }); !errors.Is(err, cause) || ran != 0 {
		t.Errorf("cancelled parallel = %v after %d item(s), want the cause and none", err, ran)
	}
}
