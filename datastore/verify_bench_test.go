package datastore

import (
	"context"
	"crypto/sha256"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/format"
	"github.com/pbsq/pbsq/datastore/name"
)

// rawVerify is the machine's limit for the same work: every chunk file read,
// CRC-checked, decoded and SHA-256-hashed by a bare loop on all cores.
func rawVerify(b *testing.B, dir string) (time.Duration, int64) {
	var files []string
	_ = filepath.WalkDir(filepath.Join(dir, ".chunks"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.HasPrefix(d.Name(), ".") {
			files = append(files, p)
		}
		return nil
	})
	start := time.Now()
	var bytes atomic.Int64
	work := make(chan string)
	var wg sync.WaitGroup
	for w := 0; w < runtime.GOMAXPROCS(0); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rbuf := make([]byte, 0, 17<<20)
			dbuf := make([]byte, 0, 17<<20)
			for p := range work {
				raw, err := readInto(p, rbuf)
				if err != nil {
					b.Error(err)
					continue
				}
				_ = crc32.ChecksumIEEE(raw[12:])
				data, _, err := format.DecodeBlobAppend(dbuf[:0], raw)
				if err != nil {
					b.Error(err)
					continue
				}
				dbuf = data
				_ = sha256.Sum256(data)
				bytes.Add(int64(len(data)))
			}
		}()
	}
	for _, f := range files {
		work <- f
	}
	close(work)
	wg.Wait()
	return time.Since(start), bytes.Load()
}

// readInto reads a whole file into buf, as the fs backend does for verify.
func readInto(p string, buf []byte) ([]byte, error) {
	fh, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return nil, err
	}
	buf = buf[:st.Size()]
	_, err = io.ReadFull(fh, buf)
	return buf, err
}

// peakHeap samples the heap in use until stop is closed.
func peakHeap(stop <-chan struct{}) <-chan uint64 {
	out := make(chan uint64, 1)
	go func() {
		var peak uint64
		var ms runtime.MemStats
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
			select {
			case <-stop:
				out <- peak
				return
			case <-t.C:
			}
		}
	}()
	return out
}

// BenchmarkVerify verifies a datastore of PBSQ_BENCH_MB (default 2048) MiB
// of mixed compressible and incompressible chunks and reports the ratio to
// the raw limit measured in the same run, and the peak heap against the
// budget of 64 MiB + 48 bytes per unique chunk.
func BenchmarkVerify(b *testing.B) {
	mb := benchMB()
	if os.Getenv("PBSQ_BENCH_MB") == "" {
		mb = 2048
	}
	env := NewTestEnv(b, TestFlock(-1))
	s, dir := env.Store, env.Dir
	// Several snapshots so the once-per-task chunk cache matters: half of
	// the data twice.
	img := benchData(b, mb/2, "disk.img")
	tar := benchData(b, mb/2, "data.tar")
	for i, files := range [][]string{{img}, {tar}, {img, tar}} {
		TestBackup(b, s, "", "vm/1", time.Unix(int64(1700000000+i*60), 0), files...)
	}
	_ = os.Remove(img)
	_ = os.Remove(tar)
	if err := backend.Sync(context.Background(), s.Backend()); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	var pbsq, raw time.Duration
	var res *VerifyResult
	var peak, base uint64
	for i := 0; i < b.N; i++ {
		runtime.GC()
		// What the process holds before verify starts (the backup's zstd
		// encoders, test data) is not verify's memory.
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		base = ms.HeapInuse
		stop := make(chan struct{})
		peakc := peakHeap(stop)
		start := time.Now()
		var err error
		res, err = s.Verify(context.Background(), VerifyRequest{Scope: Scope{NS: name.Root, MaxDepth: -1}}, nil)
		pbsq += time.Since(start)
		close(stop)
		if p := <-peakc; p > base {
			peak = max(peak, p-base)
		}
		if err != nil || res.Outcome() != nil {
			b.Fatalf("verify: %v %v", err, res.Outcome())
		}
		b.StopTimer()
		d, n := rawVerify(b, dir)
		raw += d
		if n != res.Bytes {
			b.Logf("raw loop hashed %d bytes, verify %d", n, res.Bytes)
		}
		b.StartTimer()
	}
	mib := float64(res.Bytes) / (1 << 20) * float64(b.N)
	budget := 64<<20 + 48*uint64(res.Chunks)
	b.ReportMetric(mib/pbsq.Seconds(), "verify-MiB/s")
	b.ReportMetric(mib/raw.Seconds(), "raw-MiB/s")
	b.ReportMetric(raw.Seconds()/pbsq.Seconds(), "ratio")
	b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MiB")
	b.ReportMetric(float64(budget)/(1<<20), "budget-MiB")
	b.ReportMetric(float64(base)/(1<<20), "heap-before-MiB")
	b.ReportMetric(float64(res.Chunks), "chunks")
	if peak > budget {
		b.Logf("peak heap %d MiB over the budget of %d MiB", peak>>20, budget>>20)
	}
}
