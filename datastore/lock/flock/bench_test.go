package flock_test

import (
	"context"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/lock/flock"
	"github.com/pbsq/pbsq/datastore/name"
)

// BenchmarkChainDepth7 is acquire+release of a shared lock on a depth-7
// namespace: 7 files opened, flocked and double-stat'ed, then closed.
func BenchmarkChainDepth7(b *testing.B) {
	be, err := flock.New(flock.Options{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer be.Close()
	req := lock.NamespaceRequest("main", name.MustNamespace("a/b/c/d/e/f/g"), lock.Shared)
	ctx := context.Background()
	start := time.Now()
	for b.Loop() {
		l, err := be.TryLock(ctx, req, lock.Holder{})
		if err != nil {
			b.Fatal(err)
		}
		if err := l.Release(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(time.Since(start).Microseconds())/float64(b.N), "µs/op")
}
