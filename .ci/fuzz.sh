#!/usr/bin/env bash
# Runs every Fuzz target in the module for $FUZZTIME each.
set -euo pipefail
FUZZTIME=${FUZZTIME:-3s}
cd "$(dirname "$0")/.."
grep -rl --include='*_test.go' '^func Fuzz' . | while read -r f; do
	dir=$(dirname "$f")
	grep -o '^func Fuzz[A-Za-z0-9_]*' "$f" | sed 's/^func //' | while read -r fz; do
		echo "fuzz $dir $fz ($FUZZTIME)"
		go test -run='^$' -fuzz="^${fz}\$" -fuzztime="$FUZZTIME" "$dir" >/tmp/pbsq-fuzz.log 2>&1 || { cat /tmp/pbsq-fuzz.log; exit 1; }
	done
done
echo "fuzz: all targets ok"
