#!/usr/bin/env bash
# make demo: a datastore with sample backups in .demo/, `pbsq serve` (the
# embedded default: in-process Redis, worker, /metrics, dashboard), and a
# few queued jobs followed with --wait. DEMO_KEEP=1 leaves serve running.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
pbsq="$root/bin/pbsq"
demo="${DEMO_DIR:-$root/.demo}"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() {
	printf '$ pbsq %s\n' "$*"
	"$pbsq" "$@"
}

[ -x "$pbsq" ] || { echo "demo: $pbsq missing; run make demo (it builds first)" >&2; exit 1; }

# A previous demo's serve may still run (DEMO_KEEP=1): stop it first.
if [ -f "$demo/serve.pid" ]; then
	old=$(cat "$demo/serve.pid")
	if [ -n "$old" ] && kill -0 "$old" 2>/dev/null; then
		echo "demo: stopping the previous demo's pbsq serve (pid $old)"
		kill -TERM "$old"
		for _ in $(seq 50); do kill -0 "$old" 2>/dev/null || break; sleep 0.2; done
	fi
fi
rm -rf "$demo"
mkdir -p "$demo/files"
export PBSQ_CONFIG="$demo/pbsq.yaml"
unset PBSQ_REDIS_ADDR PBSQ_LOCKS_BACKEND PBSQ_LOCKS_DIR PBSQ_METRICS_LISTEN

step "config: no redis (serve runs one in-process), flock locks in the demo dir"
cat >"$PBSQ_CONFIG" <<EOF
locks:
  backend: flock
  dir: $demo/locks
metrics:
  listen: ${DEMO_LISTEN:-127.0.0.1:0}   # 0: any free port; serve prints the URLs
EOF
cat "$PBSQ_CONFIG"

step "datastore and namespaces"
run datastore create demo --path "$demo/store"
for ns in prod prod/db staging archive; do run ns create --store demo --ns "$ns"; done

step "a schedule: serve's scheduler queues this verify every 10 s"
cat >>"$PBSQ_CONFIG" <<EOF
schedules:
  verify-prod:
    cron: "@every 10s"
    task: verify
    payload: {store: demo, ns: prod, outdated-after: 7}
EOF
sed -n '/^schedules:/,$p' "$PBSQ_CONFIG"

step "sample data: disk image (random + zeros), a tar-like archive, a config"
f="$demo/files"
# Deterministic-looking but incompressible data, a few MiB in all.
head -c $((2 << 20)) /dev/urandom >"$f/disk.img"
head -c $((2 << 20)) /dev/zero >>"$f/disk.img"
head -c $((1 << 20)) /dev/urandom >"$f/root.tar"
printf 'name: web\nmemory: 2048\ncores: 2\n' >"$f/guest.conf"

# backup NS TYPE ID TIME: a snapshot, with a little new data every time.
backup() {
	head -c $((256 << 10)) /dev/urandom >>"$f/root.tar"
	printf 'backup %s\n' "$4" >>"$f/guest.conf"
	run backup --store demo --ns "$1" --type "$2" --id "$3" --time "$4" "$f/disk.img" "$f/root.tar" "$f/guest.conf"
}
step "snapshots, in the past, across groups and namespaces"
for day in 01 02 03 04; do backup prod vm 100 "2024-03-${day}T02:00:00Z"; done
for day in 01 03 05; do backup prod/db ct 200 "2024-03-${day}T03:30:00Z"; done
for day in 02 06; do backup staging host web "2024-03-${day}T04:15:00Z"; done
run ls --store demo -r

step "pbsq serve: in-process Redis, worker, /metrics, dashboard"
"$pbsq" serve >"$demo/serve.out" 2>"$demo/serve.log" &
serve_pid=$!
echo "$serve_pid" >"$demo/serve.pid"
stop_serve() {
	if kill -0 "$serve_pid" 2>/dev/null; then
		kill -TERM "$serve_pid"
		wait "$serve_pid" || true
	fi
}
if [ "${DEMO_KEEP:-0}" != 1 ]; then trap stop_serve EXIT; fi
# serve prints its URLs and the state file (in a private runtime dir,
# through which the CLI finds serve's Redis) once it is ready.
for _ in $(seq 100); do
	grep -q '^  state:' "$demo/serve.out" 2>/dev/null && break
	kill -0 "$serve_pid" 2>/dev/null || { cat "$demo/serve.log" >&2; exit 1; }
	sleep 0.1
done
grep -q '^  state:' "$demo/serve.out" || { echo "demo: serve did not start" >&2; cat "$demo/serve.log" >&2; exit 1; }
cat "$demo/serve.out"
url() { sed -n "s/^  $1: *\([^ ]*\).*/\1/p" "$demo/serve.out"; }
dashboard=$(url dashboard)
metrics=$(url metrics)
state=$(url 'state')

step "verify everything (the CLI finds serve's Redis through $state)"
run enqueue verify --store demo --wait >/dev/null

step "prune --dry-run, keep-last 2: what would go"
run enqueue prune --store demo --ns prod --keep-last 2 --dry-run --wait >"$demo/prune.json"
sed -n 's/.*"snapshot": "\(.*\)",/\1/p; s/.*"mark": "\(.*\)",/  \1/p' "$demo/prune.json" | paste - - | sed 's/^/  /'

step "an identical job is refused while the first one is queued or running"
id=$("$pbsq" enqueue verify --store demo --ns prod --ignore-verified=false)
echo "queued $id"
printf '$ pbsq enqueue verify --store demo --ns prod --ignore-verified=false\n'
"$pbsq" enqueue verify --store demo --ns prod --ignore-verified=false && echo "unexpected: queued twice" || echo "(exit $?: refused)"
run tasks wait "$id" >/dev/null

step "its task log: a line per snapshot, PBS style"
run tasks log "$id"

step "a lock held elsewhere: the verify waits for it (lock-wait) with its progress shown"
"$pbsq" lock --store demo --ns prod --exclusive -- sleep 4 &
lock_pid=$!
sleep 0.5
run locks ls
run enqueue verify --store demo --ns prod --ignore-verified=false --lock-wait 20s --wait >/dev/null
wait "$lock_pid"

step "move namespace staging into archive/"
set +e
run enqueue move-namespace --store demo --ns staging --target-ns archive/staging --wait
moved=$?
set -e
if [ "$moved" != 0 ]; then echo "demo: move-namespace ended with exit $moved (see above)"; fi

step "the datastore now"
run ls --store demo -r

step "tasks"
run tasks ls

step "schedules: the config's periodic jobs, queued by serve's scheduler"
for _ in $(seq 60); do
	"$pbsq" schedules ls --json | grep -q '"task-id"' && break
	sleep 0.5
done
run schedules ls

step "metrics (excerpt of $metrics)"
curl -fsS "$metrics" | grep -E '^pbsq_(tasks_total\{.*(ok|failed)|verify_chunks_total|move_snapshots_total|lock_acquire_total)|^asynq_tasks_enqueued_total' | grep -v ' 0$' | head -20 || true

step "dashboard and metrics"
echo "  asynq dashboard: $dashboard"
echo "  metrics:         $metrics"
if [ "${DEMO_KEEP:-0}" = 1 ]; then
	echo
	echo "pbsq serve keeps running (pid $serve_pid; log $demo/serve.log). Try:"
	echo "  export PBSQ_CONFIG=$PBSQ_CONFIG"
	echo "  $pbsq enqueue verify --store demo --ignore-verified=false --wait"
	echo "  $pbsq tasks ls"
	echo "Stop it with: kill $serve_pid"
else
	echo
	echo "stopping pbsq serve (DEMO_KEEP=1 make demo keeps it running)"
fi
