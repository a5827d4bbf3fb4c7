#!/usr/bin/env bash
# Runs every Go benchmark once (-benchtime 1x): each reports its own figures
# and its ratio against a baseline measured in the same run (raw SHA-256 +
# zstd, rclone, bare asynq). Scale with PBSQ_BENCH_MB / PBSQ_BENCH_OBJECTS /
# PBSQ_BENCH_CHUNKS; BENCH=regex selects benchmarks. Moves on S3 run in four
# shapes against `rclone move`, on versitygw over tmpfs and over the disk
# (BenchmarkMoveNamespaceS3/{mem,disk}/150x1, /40x7, /100x50 sized by
# PBSQ_BENCH_OBJECTS, and the move-group /group-500), moves on a filesystem
# in two (BenchmarkMoveNamespaceFS/200x50, /1000x1).
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH:-.}
out=${BENCH_OUT:-bench.txt}
echo "make bench: $(nproc) cores, $(go version), $(date -u +%FT%TZ)" | tee "$out"
go test -run '^$' -bench "$BENCH" -skip 'BenchmarkWorkerOverhead' -benchtime 1x -timeout 60m ./... 2>&1 | grep -Ev '^(goos|goarch|pkg|cpu|PASS)' | tee -a "$out"
# Per-task overhead needs many tasks per run to mean anything, and a few
# runs to show the spread.
if [[ BenchmarkWorkerOverhead =~ $BENCH ]]; then
	echo "== worker overhead vs bare asynq, 800 tasks per side in 16 rounds, 3 runs" | tee -a "$out"
	go test -run '^$' -bench "BenchmarkWorkerOverhead" -benchtime 800x -count 3 ./worker/ 2>&1 | grep Benchmark | tee -a "$out"
fi
# Ingest once more with the store in tmpfs: the pipeline's efficiency
# against the raw SHA-256 + zstd limit, apart from the disk.
echo "== backup ingest, store in memory (PBSQ_BENCH_STORE=mem)" | tee -a "$out"
PBSQ_BENCH_STORE=mem go test -run '^$' -bench 'BackupIngest' -benchtime 1x ./datastore/ 2>&1 | grep Benchmark | tee -a "$out"
echo "results in $out"
