package datastore

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/format"
	"github.com/pbsq/pbsq/datastore/name"
)

// benchMB is the data size of the ingest benchmarks (env PBSQ_BENCH_MB).
func benchMB() int {
	if v, err := strconv.Atoi(os.Getenv("PBSQ_BENCH_MB")); err == nil && v > 0 {
		return v
	}
	return 1024
}

// benchData writes a file of mb MiB: alternating 4 MiB stretches of
// random and of compressible (repetitive text-like) data, as disk images
// have.
func benchData(b *testing.B, mb int, base string) string {
	b.Helper()
	p := filepath.Join(b.TempDir(), base)
	fh, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	// Seeded by the name, so two files share no chunk.
	seed := int64(0)
	for _, c := range base {
		seed = seed*31 + int64(c)
	}
	rng := rand.New(rand.NewSource(seed))
	buf := make([]byte, 4<<20)
	for i := 0; i < mb/4; i++ {
		if i%2 == 0 {
			rng.Read(buf)
		} else {
			for j := range buf {
				buf[j] = "the quick brown fox jumps over the lazy dog\n"[j%44] + byte(j/4096%3)
			}
			// Unique per stretch (so no dedup), still compressible.
			for j := 0; j+8 <= len(buf); j += 4096 {
				binary.LittleEndian.PutUint64(buf[j:], uint64(seed)^uint64(i)<<20^uint64(j))
			}
		}
		if _, err := fh.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if err := fh.Close(); err != nil {
		b.Fatal(err)
	}
	return p
}

// rawHashCompress is the baseline: read the same file in 4 MiB pieces and
// SHA-256 + zstd-1 them on all cores, with no datastore at all.
func rawHashCompress(b *testing.B, path string) time.Duration {
	start := time.Now()
	fh, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer fh.Close()
	work := make(chan []byte, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	for w := 0; w < runtime.GOMAXPROCS(0); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for buf := range work {
				_ = sha256.Sum256(buf)
				if _, err := format.EncodeBlob(buf); err != nil {
					b.Error(err)
				}
			}
		}()
	}
	for {
		buf := make([]byte, 4<<20)
		n, _ := fh.Read(buf)
		if n == 0 {
			break
		}
		work <- buf[:n]
	}
	close(work)
	wg.Wait()
	return time.Since(start)
}

// benchStore opens a store in memory (tmpfs) when PBSQ_BENCH_STORE=mem,
// to measure the pipeline's CPU efficiency apart from the disk; by default
// it is on disk like a real datastore, syncfs included.
func benchStore(b *testing.B) *Store {
	if os.Getenv("PBSQ_BENCH_STORE") != "mem" {
		return TestStore(b, TestFlock(-1))
	}
	dir, err := os.MkdirTemp("/dev/shm", "pbsq-bench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = os.RemoveAll(dir) })
	return TestStore(b, TestName("bench"), TestAt(dir))
}

func benchIngest(b *testing.B, archive string) {
	mb := benchMB()
	path := benchData(b, mb, archive)
	b.SetBytes(int64(mb) << 20)
	b.ResetTimer()
	var pbsq, raw time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		s := benchStore(b)
		b.StartTimer()
		start := time.Now()
		g, _ := name.NewGroup(name.Root, "vm", "1")
		if _, err := s.Backup(context.Background(), BackupRequest{Group: g, Owner: "root@pam", Time: time.Unix(1700000000, 0),
			Sources: []BackupSource{{Path: path}}}, nil); err != nil {
			b.Fatal(err)
		}
		pbsq += time.Since(start)
		b.StopTimer()
		raw += rawHashCompress(b, path)
		b.StartTimer()
	}
	mib := float64(mb) * float64(b.N)
	b.ReportMetric(mib/pbsq.Seconds(), "pbsq-MiB/s")
	b.ReportMetric(mib/raw.Seconds(), "raw-MiB/s")
	b.ReportMetric(raw.Seconds()/pbsq.Seconds(), "ratio")
}

// BenchmarkBackupIngestFixed: a disk image (fixed 4 MiB chunks).
func BenchmarkBackupIngestFixed(b *testing.B) { benchIngest(b, "disk.img") }

// BenchmarkBackupIngestDynamic: an archive (content-defined chunking).
func BenchmarkBackupIngestDynamic(b *testing.B) { benchIngest(b, "data.tar") }
