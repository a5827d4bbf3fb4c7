package redislock_test

import (
	"context"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/lock/redislock"
	"github.com/pbsq/pbsq/datastore/lock/redistest"
	"github.com/pbsq/pbsq/datastore/name"
)

// BenchmarkChainDepth7 is acquire+release of a shared lock on a depth-7
// namespace against a local redis-server, counting round trips per
// acquire (must be 1) and per release.
func BenchmarkChainDepth7(b *testing.B) {
	srv := redistest.Start(b)
	cnt := &counter{}
	c := srv.Client()
	c.AddHook(cnt)
	be := redislock.New(c, redislock.Options{})
	defer be.Close()
	req := lock.NamespaceRequest("main", name.MustNamespace("a/b/c/d/e/f/g"), lock.Shared)
	ctx := context.Background()
	if l, err := be.TryLock(ctx, req, lock.Holder{}); err == nil { // load the scripts
		_ = l.Release()
	}
	var acquireTrips, releaseTrips int64
	start := time.Now()
	for b.Loop() {
		n0 := cnt.n.Load()
		l, err := be.TryLock(ctx, req, lock.Holder{})
		if err != nil {
			b.Fatal(err)
		}
		n1 := cnt.n.Load()
		if err := l.Release(); err != nil {
			b.Fatal(err)
		}
		acquireTrips += n1 - n0
		releaseTrips += cnt.n.Load() - n1
	}
	b.ReportMetric(float64(time.Since(start).Microseconds())/float64(b.N), "µs/op")
	b.ReportMetric(float64(acquireTrips)/float64(b.N), "roundtrips/acquire")
	b.ReportMetric(float64(releaseTrips)/float64(b.N), "roundtrips/release")
}
