package faultproxy_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
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

// TestWaitQuietOutlivesClient: a request whose client hangs up still runs
// to its end on the server, and WaitQuiet returns only after that.
func TestWaitQuietOutlivesClient(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	var finished atomic.Bool
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
		finished.Store(true)
	}))
	defer upstream.Close()
	var releaseOnce sync.Once
	letGo := func() { releaseOnce.Do(func() { close(release) }) }
	defer letGo() // before upstream.Close, which waits for the handler
	p, err := faultproxy.New(upstream.URL, faultproxy.Rates{}, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	ctx, hangUp := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, p.URL()+"/bucket/key", nil)
	if err != nil {
		t.Fatal(err)
	}
	sent := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		sent <- err
	}()
	<-started
	hangUp() // the client dies mid-request
	if err := <-sent; err == nil {
		t.Fatal("the client got an answer it hung up on")
	}
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	err = p.WaitQuiet(short)
	cancel()
	if err == nil {
		t.Fatal("WaitQuiet returned while the server was still working on the request")
	}
	letGo()
	long, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := p.WaitQuiet(long); err != nil {
		t.Fatal(err)
	}
	if !finished.Load() {
		t.Fatal("WaitQuiet returned before the server finished the request")
	}
}
