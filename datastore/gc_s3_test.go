package datastore

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"strings"
	"sync"
	"testing"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/backend/s3"
	"github.com/pbsq/pbsq/datastore/backend/s3/faultproxy"
	"github.com/pbsq/pbsq/datastore/backend/s3/s3test"
	"github.com/pbsq/pbsq/datastore/format"
)

// gbScene is an S3 store behind a counting proxy: s0 talks to versitygw
// directly (setup), s through the proxy (the GC being measured).
type gbScene struct {
	s0, s *Store
	proxy *faultproxy.Proxy
	refs  map[Digest]string
}

func gbSetup(t testing.TB, srv *s3test.Server) *gbScene {
	t.Helper()
	ctx := context.Background()
	prefix := srv.UniquePrefix("gcbatch")
	s0 := TestStore(t, TestOn("s3", srv.New(t, prefix)))
	TestBackup(t, s0, "", "vm/1", gtT0, TestFile(t, "root.pxar", 2<<20, 0))
	proxy, err := faultproxy.New(srv.Endpoint(), faultproxy.Rates{}, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Close)
	cfg := srv.Config(prefix)
	cfg.Endpoint = proxy.URL()
	b, err := s3.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	s, err := Open("test", b, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return &gbScene{s0: s0, s: s, proxy: proxy, refs: gtFinishedChunks(t, s0)}
}

// orphans writes n unreferenced chunks (seeded by base) directly.
func (sc *gbScene) orphans(t testing.TB, base, n int) []Digest {
	t.Helper()
	ds := make([]Digest, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 16)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			data := make([]byte, 64)
			binary.LittleEndian.PutUint64(data, uint64(base+i))
			ds[i] = Digest(sha256.Sum256(data))
			blob, err := format.EncodeBlob(data)
			if err == nil {
				_, err = sc.s0.InsertChunk(context.Background(), ds[i], blob)
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return ds
}

// unbatched hides the S3 backend's batch and conditional operations, so
// GC takes the chunk-by-chunk path (the "before" of the benchmark).
type unbatched struct{ backend.Backend }

// TestGCS3Batches: GC of a few thousand unreferenced chunks on versitygw
// deletes them with DeleteObjects batches and not one DeleteObject,
// reports the requests the proxy counted, and keeps what is referenced.
func TestGCS3Batches(t *testing.T) {
	ctx := context.Background()
	srv := s3test.StartVersity(t)
	sc := gbSetup(t, srv)
	const n = 2500
	orphans := sc.orphans(t, 0, n)
	sc.proxy.ResetLog()

	res, err := sc.s.GC(ctx, GCRequest{Now: gtLater}, nil)
	if err != nil {
		t.Fatal(err)
	}
	counts := sc.proxy.Counts()
	var total int64
	for _, c := range counts {
		total += c
	}
	t.Logf("GC of %d orphans, %d referenced chunks: %v (result: %d requests)", n, len(sc.refs), counts, res.Requests)
	if res.RemovedChunks != n {
		t.Errorf("removed %d chunks, want %d", res.RemovedChunks, n)
	}
	for _, e := range sc.proxy.Log() {
		if e.Kind == "DeleteObject" && strings.Contains(e.Path, "/.chunks/") {
			t.Errorf("single DeleteObject of chunk %s", e.Path)
		}
	}
	if c := counts["DeleteObjects"]; c < (n+999)/1000 || c > n/1000+2 {
		t.Errorf("%d DeleteObjects requests for %d chunks", c, n)
	}
	if c := counts["HeadObject"]; c != 0 {
		t.Errorf("%d HEAD requests, want none (listings and conditional copies instead)", c)
	}
	// The result is written before the GC lease is released (a GET and a
	// DELETE the proxy sees).
	if res.Requests != total-2 {
		t.Errorf("result reports %d requests, the proxy counted %d (2 of them releasing the lease)", res.Requests, total)
	}
	for _, d := range orphans[:10] {
		if ok, err := sc.s0.ChunkExists(ctx, d); err != nil || ok {
			t.Errorf("orphan %s still there (%v)", d, err)
		}
	}
	for d := range sc.refs {
		if ok, err := sc.s0.ChunkExists(ctx, d); err != nil || !ok {
			t.Errorf("referenced chunk %s gone (%v)", d, err)
		}
	}
	TestVerifyAll(t, sc.s0, 1, 0)
}

// BenchmarkGCS3Requests counts the S3 requests GC sends per 1,000 removed
// chunks on versitygw, chunk by chunk (before) and in batches (after).
func BenchmarkGCS3Requests(b *testing.B) {
	srv := s3test.StartVersity(b)
	const n = 1000
	for _, mode := range []string{"per-chunk", "batched"} {
		b.Run(mode, func(b *testing.B) {
			ctx := context.Background()
			sc := gbSetup(b, srv)
			s := sc.s
			if mode == "per-chunk" {
				var err error
				if s, err = Open("test", unbatched{sc.s.Backend()}, Options{}); err != nil {
					b.Fatal(err)
				}
			}
			var requests, removed int64
			for i := 0; b.Loop(); i++ {
				b.StopTimer()
				sc.orphans(b, i*n, n)
				sc.proxy.ResetLog()
				b.StartTimer()
				res, err := s.GC(ctx, GCRequest{Now: gtLater}, nil)
				if err != nil {
					b.Fatal(err)
				}
				requests += int64(len(sc.proxy.Log()))
				removed += int64(res.RemovedChunks)
			}
			b.ReportMetric(float64(requests)*1000/float64(removed), "requests/1000chunks")
		})
	}
}
