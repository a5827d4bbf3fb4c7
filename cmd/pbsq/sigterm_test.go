package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/pbsq/pbsq/datastore/backend/s3/s3test"
)

// stallProxy sits between pbsq and an S3 server and, while on, holds every
// GET of an index until the client gives up: a read that never ends by
// itself within the test (the S3 request timeout is 60 s).
type stallProxy struct {
	srv       *httptest.Server
	on        atomic.Bool
	stalled   chan struct{} // closed when the first read is held
	cancelled chan struct{} // closed when its client gave it up
	once      [2]sync.Once
}

func newStallProxy(t *testing.T, target string) *stallProxy {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{stalled: make(chan struct{}), cancelled: make(chan struct{})}
	rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(u)
		r.Out.Host = r.In.Host // the SDK signs the Host header
	}}
	done := make(chan struct{})
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p.on.Load() && r.Method == http.MethodGet && (strings.HasSuffix(r.URL.Path, ".fidx") || strings.HasSuffix(r.URL.Path, ".didx")) {
			p.once[0].Do(func() { close(p.stalled) })
			select {
			case <-r.Context().Done():
				p.once[1].Do(func() { close(p.cancelled) })
			case <-done:
			}
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(func() { close(done); p.srv.Close() })
	return p
}

// leaseKeys lists the GC lease objects in the bucket.
func leaseKeys(t *testing.T, srv *s3test.Server) []string {
	t.Helper()
	var keys []string
	p := awss3.NewListObjectsV2Paginator(srv.Client(), &awss3.ListObjectsV2Input{Bucket: aws.String(srv.Bucket())})
	for p.HasMorePages() {
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range page.Contents {
			if k := aws.ToString(o.Key); k == ".pbsq/gc-running" || strings.HasSuffix(k, "/.pbsq/gc-running") {
				keys = append(keys, k)
			}
		}
	}
	return keys
}

// TestWorkerSIGTERMEndsBlockedGC: a real `pbsq worker` runs a GC whose
// read of an index never answers (an S3 server behind a proxy that holds
// it). SIGTERM ends the worker: after its shutdown timeout (2 s) the task's
// context is cancelled, the read abandoned, the GC lease removed, so the
// next GC runs instead of being refused as busy. The deadline (45 s) is
// far above the 2 s expected and below the 60 s after which the read
// would have failed by itself.
func TestWorkerSIGTERMEndsBlockedGC(t *testing.T) {
	srv := s3test.StartVersity(t)
	stall := newStallProxy(t, srv.Endpoint())
	e := newEnv(t, true)
	e.mustRun("datastore", "create", "offsite", "--s3-endpoint", stall.srv.URL, "--s3-bucket", srv.Bucket(), "--s3-path-style")
	img := filepath.Join(e.dir, "disk.img")
	must(t, os.WriteFile(img, bytes.Repeat([]byte("pbsq sigterm "), 10000), 0o644))
	e.mustRun("backup", "--store", "offsite", "--type", "vm", "--id", "100", "--time", "2024-03-01T10:00:00Z", img)

	stall.on.Store(true)
	w := e.start("worker", "--concurrency", "1", "--shutdown-timeout", "2s")
	e.enqueueID("gc", "--store", "offsite")
	select {
	case <-stall.stalled:
	case <-w.done:
		t.Fatalf("the worker ended before GC read an index:\n%s", w.out.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("GC never read an index:\n%s", w.out.String())
	}
	if keys := leaseKeys(t, srv); len(keys) != 1 {
		t.Fatalf("GC blocked in its mark holds lease objects %q, want one", keys)
	}

	if err := w.stop(t, 45*time.Second); err != nil {
		t.Errorf("worker exit after SIGTERM: %v\n%s", err, w.out.String())
	}
	select {
	case <-stall.cancelled:
	case <-time.After(30 * time.Second):
		t.Errorf("the worker ended, but its held read was never given up")
	}
	if keys := leaseKeys(t, srv); len(keys) != 0 {
		t.Errorf("the cancelled GC left its lease: %q\n%s", keys, w.out.String())
	}
	stall.on.Store(false)
	out, errs, code := e.run("run", "gc", "--store", "offsite")
	if code != 0 {
		t.Errorf("GC after the cancelled one: exit %d, want 0\n%s%s", code, out, errs)
	}
}
