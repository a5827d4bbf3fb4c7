package datastore

import (
	"context"
	"sync"

	"golang.org/x/time/rate"
)

// minSyncBurst is the smallest burst of a sync rate limit: one fixed-size
// chunk, the commonest chunk size, passes without being split.
const minSyncBurst = FixedChunkSize + 64

// byteLimiter is a token bucket on bytes (one token per byte). A nil
// *byteLimiter does not limit.
type byteLimiter struct {
	mu sync.Mutex // serialises grow's read-modify-write of the burst
	l  *rate.Limiter
}

// newByteLimiter limits to bytesPerSec; 0 or less means unlimited (nil).
func newByteLimiter(bytesPerSec int64) *byteLimiter {
	if bytesPerSec <= 0 {
		return nil
	}
	return &byteLimiter{l: rate.NewLimiter(rate.Limit(bytesPerSec), minSyncBurst)}
}

// grow raises the burst to at least n, so that a chunk of n bytes can be
// taken in one piece. The burst only grows: a larger bucket never makes
// the average rate exceed the limit, it only lets one chunk through whole.
func (b *byteLimiter) grow(n int) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if n > b.l.Burst() {
		b.l.SetBurst(n)
	}
}

// wait blocks until n bytes may pass. n above the burst (which grow
// normally prevents) is taken in burst-sized pieces rather than refused.
func (b *byteLimiter) wait(ctx context.Context, n int) error {
	if b == nil {
		return nil
	}
	for n > 0 {
		k := min(n, b.l.Burst())
		if err := b.l.WaitN(ctx, k); err != nil {
			return err
		}
		n -= k
	}
	return nil
}
