#!/usr/bin/env bash
# make stress: the long variants of the reliability tests (README
# "Reliability"), with the race detector:
#   - TestStress: 2 workers, 4 backup writers and a stream of every task
#     type for $PBSQ_STRESS_DURATION per backend (fs with flock, S3 on
#     versitygw with Redis leases), lock audit checked for overlaps;
#   - TestKill9Storm: kill -9 storms for $PBSQ_STRESS_DURATION per backend;
#   - TestS3FaultsLoseNothing: the S3 fault proxy (12 % failing) over three
#     seeds and twice the data.
# Figures go to stdout and to $STRESS_OUT (default stress.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
export PBSQ_STRESS=1
export PBSQ_STRESS_DURATION=${PBSQ_STRESS_DURATION:-60s}
out=${STRESS_OUT:-stress.txt}
report=$(mktemp)
log=$(mktemp)
trap 'rm -f "$report" "$log"' EXIT
export PBSQ_STRESS_REPORT=$report

echo "make stress: $(nproc) cores, $(go version), $(date -u +%FT%TZ), $PBSQ_STRESS_DURATION per backend" | tee "$out"
status=0
run() { # pkg regex
	echo "== go test -race -run '$2' $1" | tee -a "$out"
	if ! go test -race -count=1 -timeout 60m -v -run "$2" "$1" >"$log" 2>&1; then
		status=1
		cp "$log" "$out.fail.$(basename "$1").log"
		echo "FAILED: full log in $out.fail.$(basename "$1").log" | tee -a "$out"
	fi
	# The figures each test logs.
	grep -E 'chaos_test.go:[0-9]+: (seed |result:|storm:|storm over|redis restarted|settled|store )|^(ok|FAIL|--- )|    --- ' "$log" |
		sed -E 's/^ +//' | cut -c1-400 | tee -a "$out"
}
run ./worker/ '^(TestStress|TestKill9Storm)$'
cat "$report" | tee -a "$out"
run ./datastore/ '^TestS3FaultsLoseNothing$'
echo "results in $out"
exit $status
