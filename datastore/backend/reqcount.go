package backend

import (
	"context"
	"errors"
	"sync/atomic"
	"time"
)

type requestCounterKey struct{}

// CountRequests returns a context under which backends that talk to a
// server (S3) count every request they send, retries included, into the
// returned counter. Operations use it to report their cost (GC's
// "requests"); counters nest, each counting everything below it.
func CountRequests(ctx context.Context) (context.Context, *atomic.Int64) {
	n := new(atomic.Int64)
	parents, _ := ctx.Value(requestCounterKey{}).([]*atomic.Int64)
	all := append(append([]*atomic.Int64(nil), parents...), n)
	return context.WithValue(ctx, requestCounterKey{}, all), n
}

// AddRequest books one request on every counter of ctx.
func AddRequest(ctx context.Context) {
	cs, _ := ctx.Value(requestCounterKey{}).([]*atomic.Int64)
	for _, c := range cs {
		c.Add(1)
	}
}

// ConditionalToucher is implemented by backends that can refresh a file's
// AccessTime only when it is older than a time, in fewer requests than a
// Stat followed by a Touch (S3: a copy with x-amz-copy-source-if-unmodified-since).
type ConditionalToucher interface {
	// TouchIfOlder touches name when its AccessTime is not after before and
	// reports whether it did; fs.ErrNotExist when name is missing.
	TouchIfOlder(ctx context.Context, name string, before time.Time) (touched bool, err error)
}

// BatchRemover is implemented by backends that delete many files in a few
// requests (S3 DeleteObjects). Missing files are no error.
type BatchRemover interface {
	RemoveFiles(ctx context.Context, names []string) error
}

// RangeWalker is implemented by backends that list files in name order
// (byte-wise) and can start a listing after a given name (S3 StartAfter),
// so a part of a big directory tree can be listed again cheaply.
type RangeWalker interface {
	// WalkFrom is Walk in name order, starting after the file name after
	// (relative to the backend root); fn returning ErrStopWalk ends the
	// walk without error.
	WalkFrom(ctx context.Context, dir, after string, fn func(FileInfo) error) error
}

// ErrStopWalk ends a WalkFrom early without error.
var ErrStopWalk = errors.New("stop walk")
