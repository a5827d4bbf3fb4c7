package faultproxy_test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/backend/s3"
	"github.com/pbsq/pbsq/datastore/backend/s3/faultproxy"
	"github.com/pbsq/pbsq/datastore/backend/s3/s3test"
)

// TestBackendThroughFaults: with ~15 % of requests failing in every way,
// the S3 backend's retries make every operation succeed, and what it reads
// back is exactly what it wrote.
func TestBackendThroughFaults(t *testing.T) {
	srv := s3test.StartVersity(t)
	proxy, err := faultproxy.New(srv.Endpoint(), faultproxy.Rates{
		SlowDown: 0.05, Internal: 0.04, Reset: 0.03, ResetAfter: 0.03, Slow: 0.05, SlowDelay: 200 * time.Millisecond,
	}, 42)
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	cfg := srv.Config(srv.UniquePrefix("faults"))
	cfg.Endpoint = proxy.URL()
	b, err := s3.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	const n = 150
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			name := fmt.Sprintf(".chunks/%04x/%064x", i, i)
			data := bytes.Repeat([]byte{byte(i)}, 1000+i)
			if _, err := b.CreateFile(ctx, name, data); err != nil {
				errs <- fmt.Errorf("create %s: %w", name, err)
				return
			}
			got, err := b.ReadFile(ctx, name)
			if err != nil {
				errs <- fmt.Errorf("read %s: %w", name, err)
				return
			}
			if !bytes.Equal(got, data) {
				errs <- fmt.Errorf("read %s: wrong content", name)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	count := 0
	if err := b.Walk(ctx, ".chunks", func(fi backend.FileInfo) error { count++; return nil }); err != nil {
		t.Fatal(err)
	}
	if count != n {
		t.Fatalf("walk found %d objects, want %d", count, n)
	}
	if err := b.RemoveAll(ctx, ".chunks"); err != nil {
		t.Fatal(err)
	}
	st := proxy.Stats()
	failed := st.SlowDown + st.Internal + st.Reset + st.ResetAfter
	t.Logf("proxy: %+v (%.1f%% failed)", st, 100*float64(failed)/float64(st.Requests))
	if failed == 0 || st.Requests < n*2 {
		t.Fatalf("the proxy injected nothing: %+v", st)
	}
}
