package datastore

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/format"
	"github.com/pbsq/pbsq/datastore/name"
	"github.com/pbsq/pbsq/datastore/prune"
)

// Benchmarks of prune and GC at scale. Sizes can be scaled down with
// PBSQ_BENCH_SNAPSHOTS (default 100000) and PBSQ_BENCH_CHUNKS (default
// 1000000). Each reports wall time per run and the peak heap (HeapAlloc
// sampled every 10 ms) as peak-MiB, plus the bytes allocated as alloc-MiB.

func btEnvInt(b *testing.B, key string, def int) int {
	v := os.Getenv(key)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("%s=%q: want a positive integer", key, v)
	}
	return n
}

// btCPU is the user and system CPU time this process has used so far:
// benchmarks report it beside wall time, which a loaded machine stretches.
func btCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// btPeak samples the heap while an operation runs.
type btPeak struct {
	stop       chan struct{}
	done       chan struct{}
	peak       uint64
	startAlloc uint64
}

func btStartPeak() *btPeak {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	p := &btPeak{stop: make(chan struct{}), done: make(chan struct{}), peak: ms.HeapAlloc, startAlloc: ms.TotalAlloc}
	go func() {
		defer close(p.done)
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			p.peak = max(p.peak, ms.HeapAlloc)
			select {
			case <-p.stop:
				return
			case <-t.C:
			}
		}
	}()
	return p
}

// report stops sampling and reports peak-MiB and alloc-MiB (of the one
// run measured: the first).
func (p *btPeak) report(b *testing.B) {
	close(p.stop)
	<-p.done
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	p.peak = max(p.peak, ms.HeapAlloc)
	b.ReportMetric(float64(p.peak)/(1<<20), "peak-MiB")
	b.ReportMetric(float64(ms.TotalAlloc-p.startAlloc)/(1<<20), "alloc-MiB")
}

// BenchmarkPrune100k prunes 100,000 snapshots (manifest blob only) in 1,000
// groups spread over 10 namespaces, on the filesystem with flock locks:
// first as a dry run, then for real (about 88 of 100 removed per group).
func BenchmarkPrune100k(b *testing.B) {
	total := btEnvInt(b, "PBSQ_BENCH_SNAPSHOTS", 100_000)
	nGroups := min(1000, max(1, total/10))
	perGroup := max(1, total/nGroups)
	env := NewTestEnv(b, TestFlock(-1))
	s, dir := env.Store, env.Dir
	groups := make([]name.Group, nGroups)
	var specs []ptSpec
	for i := range perGroup {
		specs = append(specs, ptSpec{at: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * 6 * time.Hour), finished: true})
	}
	build := func() {
		for i := range groups {
			groups[i] = ptGroup(b, fmt.Sprintf("ns%d", i%10), "vm", strconv.Itoa(100+i))
			ptBuild(b, s, dir, groups[i], specs)
		}
	}
	start := time.Now()
	build()
	b.Logf("created %d snapshots in %d groups in %s", nGroups*perGroup, nGroups, time.Since(start).Round(time.Millisecond))
	req := PruneRequest{Scope: Scope{MaxDepth: -1}, Keep: prune.Options{KeepLast: 3, KeepDaily: 7, KeepWeekly: 4}, Location: time.UTC}
	ctx := context.Background()
	for _, dry := range []bool{true, false} {
		b.Run(map[bool]string{true: "dry-run", false: "real"}[dry], func(b *testing.B) {
			req.DryRun = dry
			removed := 0
			for i := 0; i < b.N; i++ {
				if i > 0 && !dry {
					b.StopTimer()
					build()
					b.StartTimer()
				}
				var peak *btPeak
				if i == 0 {
					peak = btStartPeak()
				}
				res, err := s.Prune(ctx, req, nil)
				if err != nil {
					b.Fatal(err)
				}
				if peak != nil {
					peak.report(b)
				}
				removed = res.Removed
				if dry {
					removed = 0
					for _, d := range res.Decisions {
						if d.Mark == "remove" {
							removed++
						}
					}
				}
				if len(res.Decisions) != nGroups*perGroup {
					b.Fatalf("%d decisions for %d snapshots", len(res.Decisions), nGroups*perGroup)
				}
			}
			b.ReportMetric(float64(nGroups*perGroup)*float64(b.N)/b.Elapsed().Seconds(), "snapshots/s")
			b.ReportMetric(float64(removed), "removed")
		})
	}
}

// btChunkData is the plain data of bench chunk i.
func btChunkData(i int) []byte {
	var d [16]byte
	binary.LittleEndian.PutUint64(d[:], uint64(i))
	copy(d[8:], "pbsqbnch")
	return d[:]
}

// btWriteChunks writes the chunks i for which want(i) holds directly as
// files (no fsync), on 4 goroutines.
func btWriteChunks(b *testing.B, dir string, n int, want func(int) bool) {
	const workers = 4
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				if !want(i) {
					continue
				}
				data := btChunkData(i)
				d := sha256.Sum256(data)
				blob, err := format.EncodeBlobUncompressed(data)
				if err != nil {
					errs <- err
					return
				}
				h := hex.EncodeToString(d[:])
				if err := os.WriteFile(filepath.Join(dir, ".chunks", h[:4], h), blob, 0o644); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// BenchmarkGC1M collects garbage over 1,000,000 chunk files, half of them
// referenced by 100 dynamic indexes; GC runs with its clock two days ahead,
// so the other half is garbage: a dry run first, then for real.
func BenchmarkGC1M(b *testing.B) {
	n := btEnvInt(b, "PBSQ_BENCH_CHUNKS", 1_000_000)
	env := NewTestEnv(b, TestFlock(-1))
	s, dir := env.Store, env.Dir
	start := time.Now()
	for i := range 1 << 16 {
		if err := os.Mkdir(filepath.Join(dir, filepath.FromSlash(chunkDir(uint16(i)))), 0o755); err != nil {
			b.Fatal(err)
		}
	}
	btWriteChunks(b, dir, n, func(int) bool { return true })
	// Indexes of up to 10,000 chunks (even i), one per snapshot.
	const perIndex = 10_000
	nIdx := 0
	for first := 0; first < n; first += 2 * perIndex {
		idx := &format.DynamicIndex{CTime: 1}
		var end uint64
		for i := first; i < min(n, first+2*perIndex); i += 2 {
			end += 16
			idx.Entries = append(idx.Entries, format.DynamicEntry{End: end, Digest: sha256.Sum256(btChunkData(i))})
		}
		g := ptGroup(b, "", "vm", strconv.Itoa(nIdx))
		sn := name.NewSnapshot(g, time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC))
		p := filepath.Join(dir, filepath.FromSlash(sn.Path()))
		if err := os.MkdirAll(p, 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, "data.didx"), idx.Marshal(), 0o644); err != nil {
			b.Fatal(err)
		}
		nIdx++
	}
	b.Logf("created %d chunks and %d indexes in %s", n, nIdx, time.Since(start).Round(time.Millisecond))
	later := func() time.Time { return time.Now().Add(48 * time.Hour) }
	ctx := context.Background()
	// swept: a real GC removed the garbage, to be written again before the
	// next (b.Run calls the function with b.N = 1 first, then again).
	swept := false
	for _, dry := range []bool{true, false} {
		b.Run(map[bool]string{true: "dry-run", false: "real"}[dry], func(b *testing.B) {
			var res *GCResult
			var cpu time.Duration
			for i := 0; i < b.N; i++ {
				if swept && !dry {
					b.StopTimer()
					btWriteChunks(b, dir, n, func(i int) bool { return i%2 == 1 })
					b.StartTimer()
				}
				var peak *btPeak
				if i == 0 {
					peak = btStartPeak()
				}
				var err error
				cpu0 := btCPU(b)
				res, err = s.GC(ctx, GCRequest{DryRun: dry, Now: later}, nil)
				cpu += btCPU(b) - cpu0
				if err != nil {
					b.Fatal(err)
				}
				swept = swept || !dry
				if peak != nil {
					peak.report(b)
				}
				if res.ReferencedChunks != (n+1)/2 || res.ReclaimableChunks != n/2 {
					b.Fatalf("referenced %d, reclaimable %d of %d chunks", res.ReferencedChunks, res.ReclaimableChunks, n)
				}
			}
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "chunks/s")
			b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
			b.ReportMetric(float64(res.ReclaimableChunks), "reclaimable")
			b.ReportMetric(float64(res.RemovedChunks), "removed")
		})
	}
}

// BenchmarkGCDigestSet1M measures the marked-digest set alone: one million
// random digests, heap bytes per digest.
func BenchmarkGCDigestSet1M(b *testing.B) {
	ds := make([]Digest, 1_000_000)
	for i := range ds {
		ds[i] = Digest(sha256.Sum256(btChunkData(i)))
	}
	for range b.N {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		set := newDigestSet()
		for _, d := range ds {
			set.add(d)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(len(ds)), "B/digest")
		if set.len() != len(ds) || !set.has(ds[len(ds)/2]) {
			b.Fatal("set lost digests")
		}
	}
	b.ReportMetric(float64(len(ds))*float64(b.N)/b.Elapsed().Seconds(), "digests/s")
}
