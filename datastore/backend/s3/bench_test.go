package s3_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/backend/s3"
	"github.com/pbsq/pbsq/datastore/backend/s3/s3test"
)

type benchChunk struct {
	name string // .chunks/<4hex>/<64hex>
	data []byte
}

// benchChunks makes about totalMiB of incompressible chunks the way a
// backup produces them: mostly small (64–96 KiB, like compressed dynamic
// index chunks), a few up to 4 MiB (fixed-index chunks), ~128 KiB mean.
func benchChunks(totalMiB int) ([]benchChunk, int64) {
	sizes := rand.New(rand.NewPCG(1, 2))
	fill := rand.NewChaCha8([32]byte{'p', 'b', 's', 'q'})
	var chunks []benchChunk
	var total int64
	for total < int64(totalMiB)<<20 {
		var size int
		if sizes.Float64() < 0.95 {
			size = 64<<10 + sizes.IntN(32<<10)
		} else { // log-uniform 96 KiB – 4 MiB
			size = int(96 << 10 * math.Exp(sizes.Float64()*math.Log(4096.0/96)))
		}
		data := make([]byte, size)
		_, _ = fill.Read(data)
		sum := sha256.Sum256(data)
		digest := hex.EncodeToString(sum[:])
		chunks = append(chunks, benchChunk{name: ".chunks/" + digest[:4] + "/" + digest, data: data})
		total += int64(size)
	}
	return chunks, total
}

func envInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// BenchmarkUploadChunks uploads the same chunk set with the backend
// (CreateFile from a goroutine pool) and with `rclone copy --transfers N`
// to the same versitygw server, and reports both rates and
// ratio_vs_rclone = rclone time / pbsq time (>1: pbsq is faster).
//
//	PBSQ_BENCH_MB (default 256) total size, PBSQ_BENCH_WORKERS (default 64)
//	go test -run '^$' -bench UploadChunks -benchtime 1x ./datastore/backend/s3/
func BenchmarkUploadChunks(b *testing.B) {
	rclone, err := exec.LookPath("rclone")
	if err != nil {
		b.Fatal("rclone not found: install it (apt-get install rclone) or run `make test-deps`")
	}
	totalMiB := envInt(b, "PBSQ_BENCH_MB", 256)
	workers := envInt(b, "PBSQ_BENCH_WORKERS", 64)
	srv := s3test.StartVersity(b)

	chunks, total := benchChunks(totalMiB)
	src := b.TempDir()
	for _, c := range chunks {
		p := filepath.Join(src, filepath.FromSlash(c.name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(p, c.data, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	rcloneEnv := rcloneEnv(b, srv)
	b.Logf("%d chunks, %.1f MiB, %d workers", len(chunks), float64(total)/(1<<20), workers)

	ctx := context.Background()
	var pbsqTime, rcloneTime time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		prefix := srv.UniquePrefix("bench")
		cfg := srv.Config(prefix)
		cfg.MaxInFlight = workers
		be, err := s3.New(ctx, cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()

		start := time.Now()
		var next atomic.Int64
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					j := int(next.Add(1) - 1)
					if j >= len(chunks) {
						return
					}
					created, err := be.CreateFile(ctx, chunks[j].name, chunks[j].data)
					if err != nil || !created {
						b.Errorf("CreateFile(%s) = %v, %v", chunks[j].name, created, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		pbsqTime += time.Since(start)

		start = time.Now()
		cmd := exec.Command(rclone, "copy", src, "X:"+srv.Bucket()+"/"+prefix+"-rclone",
			"--transfers", strconv.Itoa(workers), "--checkers", strconv.Itoa(workers),
			"--s3-no-check-bucket", "--no-traverse", "-q")
		cmd.Env = rcloneEnv
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("rclone copy: %v\n%s", err, out)
		}
		rcloneTime += time.Since(start)

		b.StopTimer()
		_ = be.Close()
		for _, p := range []string{prefix + "/.chunks/", prefix + "-rclone/.chunks/"} {
			if n := len(listKeys(b, srv, p)); n != len(chunks) {
				b.Fatalf("%s holds %d objects, want %d", p, n, len(chunks))
			}
		}
		b.StartTimer()
	}
	b.StopTimer()
	objs, mib := float64(len(chunks)*b.N), float64(total)*float64(b.N)/(1<<20)
	b.ReportMetric(objs/pbsqTime.Seconds(), "objects/s")
	b.ReportMetric(mib/pbsqTime.Seconds(), "MiB/s")
	b.ReportMetric(objs/rcloneTime.Seconds(), "rclone_objects/s")
	b.ReportMetric(mib/rcloneTime.Seconds(), "rclone_MiB/s")
	b.ReportMetric(rcloneTime.Seconds()/pbsqTime.Seconds(), "ratio_vs_rclone")
}

// rcloneEnv configures remote X as the server through environment
// variables only. AWS_CA_BUNDLE is dropped: rclone's S3 client rejects it
// with its own HTTP transport, and the server is plain http anyway.
func rcloneEnv(b *testing.B, srv *s3test.Server) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AWS_CA_BUNDLE=") && !strings.HasPrefix(kv, "RCLONE_") {
			env = append(env, kv)
		}
	}
	conf := filepath.Join(b.TempDir(), "rclone.conf")
	if err := os.WriteFile(conf, nil, 0o600); err != nil {
		b.Fatal(err)
	}
	return append(env,
		"RCLONE_CONFIG="+conf,
		"RCLONE_CONFIG_X_TYPE=s3",
		"RCLONE_CONFIG_X_PROVIDER=Other",
		"RCLONE_CONFIG_X_ENDPOINT="+srv.Endpoint(),
		"RCLONE_CONFIG_X_REGION="+s3test.Region,
		"RCLONE_CONFIG_X_ACCESS_KEY_ID="+s3test.AccessKey,
		"RCLONE_CONFIG_X_SECRET_ACCESS_KEY="+s3test.SecretKey,
		"RCLONE_CONFIG_X_FORCE_PATH_STYLE=true",
	)
}
