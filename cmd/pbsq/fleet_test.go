package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/pbsq/pbsq/datastore/backend/s3/faultproxy"
	"github.com/pbsq/pbsq/datastore/backend/s3/s3test"
	"github.com/pbsq/pbsq/tasks"
	"github.com/pbsq/pbsq/worker"
)

// Fleet acceptance tests: several worker processes on one real Redis.

// writeKeyFile writes a key file (mode 0600) with the given keys.
func writeKeyFile(t *testing.T, dir, name string, keys ...string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(strings.Join(keys, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// runWithEnv is env.run with extra environment variables.
func (e *env) runWithEnv(extra []string, args ...string) (string, string, int) {
	e.t.Helper()
	c := e.cmd(args...)
	c.Env = append(c.Env, extra...)
	var out, errb syncBuf
	c.Stdout, c.Stderr = &out, &errb
	err := c.Run()
	code := 0
	if ee, ok := err.(interface{ ExitCode() int }); ok && err != nil {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("pbsq %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// snapshotCount counts the snapshot directories of the demo store.
func (e *env) snapshotCount() int {
	e.t.Helper()
	n := 0
	err := filepath.WalkDir(filepath.Join(e.dir, "store", "ns"), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if _, terr := time.Parse(time.RFC3339, d.Name()); terr == nil && d.IsDir() {
			n++
		}
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

// finalRecord waits for task id to be archived or completed and returns
// its info and record.
func finalRecord(t *testing.T, ins *asynq.Inspector, id string) (*asynq.TaskInfo, tasks.Record) {
	t.Helper()
	var info *asynq.TaskInfo
	waitFor(t, 30*time.Second, func() bool {
		var err error
		info, err = worker.FindTask(ins, id)
		return err == nil && (info.State == asynq.TaskStateArchived || info.State == asynq.TaskStateCompleted)
	})
	var rec tasks.Record
	if err := json.Unmarshal(info.Result, &rec); err != nil {
		t.Fatalf("task %s record %q: %v", id, info.Result, err)
	}
	return info, rec
}

const (
	fleetKey1 = "f1eet-key-one-0123456789abcdef0123456789abcdef"
	fleetKey2 = "f1eet-key-two-0123456789abcdef0123456789abcdef"
	fleetKey3 = "f1eet-key-three-0123456789abcdef0123456789abcd"
)

// TestSignedTasks: two workers with a key archive unsigned, wrongly
// signed, tampered and expired prunes as invalid at once (no retry) and
// the store keeps every snapshot; `enqueue --wait` with a wrong key exits
// 2 saying why; a ring of two keys accepts both (rotation); no key shows
// up in output, in Redis or on /metrics; a worker without a key warns.
func TestSignedTasks(t *testing.T) {
	e := newEnv(t, true)
	e.backups()
	k1 := writeKeyFile(t, e.dir, "k1.key", fleetKey1)
	ring := writeKeyFile(t, e.dir, "ring.key", fleetKey2, fleetKey1)
	k3 := writeKeyFile(t, e.dir, "k3.key", fleetKey3)
	cfg, _ := os.ReadFile(e.config)
	if err := os.WriteFile(e.config, append(cfg, []byte("security:\n  task-key-file: k1.key\n")...), 0o644); err != nil {
		t.Fatal(err)
	}
	before := e.snapshotCount()
	if before != 3 {
		t.Fatalf("%d snapshots to start with, want 3", before)
	}
	w1 := e.start("worker", "--concurrency", "2")
	w2 := e.start("worker", "--concurrency", "2")

	// Signed by the CLI: runs.
	e.expect(0, "enqueue", "verify", "--store", "demo", "--wait")

	// Forgeries of a real prune, queued straight into Redis.
	ins := e.inspector()
	client := asynq.NewClient(asynq.RedisClientOpt{Addr: e.redis.Addr()})
	defer client.Close()
	keys1, err := tasks.LoadKeys(k1)
	if err != nil {
		t.Fatal(err)
	}
	keys3, err := tasks.LoadKeys(k3)
	if err != nil {
		t.Fatal(err)
	}
	one := 1
	prune := &tasks.Prune{Store: "demo", NS: "a", Keep: tasks.Keep{KeepLast: &one}}
	dry := &tasks.Prune{Store: "demo", NS: "a", Keep: tasks.Keep{KeepLast: &one}, DryRun: true}
	real, _ := tasks.Encode(prune)
	dryB, _ := tasks.Encode(dry)
	now := time.Now()
	forge := map[string]*asynq.Task{}
	unsigned, err := tasks.NewTask(prune)
	if err != nil {
		t.Fatal(err)
	}
	forge["unsigned"] = unsigned
	if forge["wrong key"], err = tasks.NewSignedTask(prune, keys3, now); err != nil {
		t.Fatal(err)
	}
	// Tampered: a signed dry run turned into a real prune.
	forge["tampered"] = asynq.NewTaskWithHeaders(tasks.TypePrune, real,
		keys1.Sign(tasks.TypePrune, "tampered-1", dryB, now.Add(time.Hour)), asynq.Queue(tasks.Queue), asynq.TaskID("tampered-1"))
	forge["expired"] = asynq.NewTaskWithHeaders(tasks.TypePrune, real,
		keys1.Sign(tasks.TypePrune, "expired-1", real, now.Add(-time.Minute)), asynq.Queue(tasks.Queue), asynq.TaskID("expired-1"))
	// Replayed: a valid signature moved onto another task id.
	forge["replayed"] = asynq.NewTaskWithHeaders(tasks.TypePrune, real,
		keys1.Sign(tasks.TypePrune, "original-1", real, now.Add(time.Hour)), asynq.Queue(tasks.Queue), asynq.TaskID("replay-1"))
	want := map[string]string{"unsigned": "not signed", "wrong key": "does not match", "tampered": "does not match",
		"expired": "expired", "replayed": "does not match"}
	ids := map[string]string{}
	for what, task := range forge {
		info, err := client.Enqueue(task, asynq.MaxRetry(5))
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		ids[what] = info.ID
	}
	for what, id := range ids {
		info, rec := finalRecord(t, ins, id)
		if info.State != asynq.TaskStateArchived || rec.Outcome != tasks.OutcomeInvalid || info.Retried != 0 ||
			!strings.Contains(rec.Error, want[what]) {
			t.Errorf("%s task: state %s, outcome %q, retried %d, error %q; want archived invalid, 0 retries, %q",
				what, info.State, rec.Outcome, info.Retried, rec.Error, want[what])
		}
	}
	if n := e.snapshotCount(); n != before {
		t.Errorf("%d snapshots after the forged prunes, want %d", n, before)
	}

	// The CLI with another key: the workers refuse, --wait exits 2 and says why.
	_, errs, code := e.runWithEnv([]string{"PBSQ_TASK_KEY_FILE=" + k3}, "enqueue", "prune", "--store", "demo", "--ns", "a", "--keep-last", "1", "--wait")
	if code != 2 || !strings.Contains(errs, "signature") {
		t.Errorf("enqueue --wait signed with a foreign key: exit %d, %q; want 2 naming the signature", code, errs)
	}
	if n := e.snapshotCount(); n != before {
		t.Errorf("%d snapshots after a foreign-key prune, want %d", n, before)
	}

	// Rotation: workers with the ring (new key first) run tasks signed
	// with either key; the CLI signs with the ring's first.
	for _, w := range []*proc{w1, w2} {
		if err := w.stop(t, 10*time.Second); err != nil {
			t.Errorf("worker stop: %v", err)
		}
	}
	wr := startWithEnv(t, e, []string{"PBSQ_TASK_KEY_FILE=" + ring}, "worker", "--concurrency", "2")
	startWithEnv(t, e, []string{"PBSQ_TASK_KEY_FILE=" + ring}, "worker", "--concurrency", "2")
	for _, kf := range []string{k1, ring} {
		if _, errs, code := e.runWithEnv([]string{"PBSQ_TASK_KEY_FILE=" + kf}, "enqueue", "verify", "--store", "demo", "--ns", "a", "--ignore-verified=false", "--wait"); code != 0 {
			t.Errorf("rotation: task signed with %s: exit %d %s", filepath.Base(kf), code, errs)
		}
	}
	if _, _, code := e.runWithEnv([]string{"PBSQ_TASK_KEY_FILE=" + k3}, "enqueue", "verify", "--store", "demo", "--wait"); code != 2 {
		t.Errorf("rotation: task signed with a key outside the ring: exit %d, want 2", code)
	}

	// No key anywhere it should not be.
	rdb := redis.NewClient(&redis.Options{Addr: e.redis.Addr()})
	defer rdb.Close()
	var all strings.Builder
	keys, _ := rdb.Keys(context.Background(), "*").Result()
	for _, k := range keys {
		if typ, _ := rdb.Type(context.Background(), k).Result(); typ == "hash" {
			all.WriteString(strings.Join(rdb.HVals(context.Background(), k).Val(), " "))
		}
	}
	all.WriteString(w1.out.String() + w2.out.String() + wr.out.String())
	all.WriteString(httpGet(t, metricsURL(t, wr)+"/metrics"))
	for _, key := range []string{fleetKey1, fleetKey2, fleetKey3} {
		if strings.Contains(all.String(), key) {
			t.Errorf("key %s… found in Redis, the logs or /metrics", key[:12])
		}
	}
	if !strings.Contains(w1.out.String(), "signed_tasks_only=true") {
		t.Errorf("worker with a key did not say so:\n%s", w1.out.String())
	}

	// A worker without a key warns at start.
	e2 := newEnv(t, true)
	nokey := e2.start("worker")
	waitFor(t, 10*time.Second, func() bool { return strings.Contains(nokey.out.String(), "Redis is the trust boundary") })
}

// TestServeGeneratesTaskKey: the embedded default generates a key (0600)
// on first start, signs the CLI's tasks with it and refuses unsigned ones.
func TestServeGeneratesTaskKey(t *testing.T) {
	e := newEnv(t, false)
	e.start("serve", "--listen", "127.0.0.1:0")
	st := waitServeState(t, e)
	fi, err := os.Stat(st.TaskKeyFile)
	if err != nil || fi.Mode().Perm() != 0o600 || filepath.Dir(st.TaskKeyFile) != e.dir {
		t.Fatalf("generated key %q: %v %v", st.TaskKeyFile, fi, err)
	}
	e.expect(0, "enqueue", "verify", "--store", "demo", "--wait")
	client := asynq.NewClient(asynq.RedisClientOpt{Addr: st.Redis})
	defer client.Close()
	task, _ := tasks.NewTask(&tasks.Verify{Store: "demo"})
	info, err := client.Enqueue(task)
	if err != nil {
		t.Fatal(err)
	}
	ins := asynq.NewInspector(asynq.RedisClientOpt{Addr: st.Redis})
	defer ins.Close()
	if _, rec := finalRecord(t, ins, info.ID); rec.Outcome != tasks.OutcomeInvalid {
		t.Errorf("unsigned task under serve: outcome %q (%s)", rec.Outcome, rec.Error)
	}
}

// storeConfig writes a config like e's with only the given datastores
// (name → path) and returns its path.
func (e *env) storeConfig(name string, stores map[string]string) string {
	e.t.Helper()
	cfg := fmt.Sprintf("locks:\n  dir: %s\n  wait: 1s\nmetrics:\n  listen: 127.0.0.1:0\nredis:\n  addr: %s\ndatastores:\n",
		filepath.Join(e.dir, "locks"), e.redis.Addr())
	for n, p := range stores {
		cfg += fmt.Sprintf("  %s:\n    path: %s\n", n, p)
	}
	p := filepath.Join(e.dir, name)
	if err := os.WriteFile(p, []byte(cfg), 0o644); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// TestWorkersServeTheirStores: a worker with only store demo never runs a
// task of store other; such a task waits, pending and listed, until a
// worker with other starts, which then runs every task of other.
func TestWorkersServeTheirStores(t *testing.T) {
	e := newEnv(t, true)
	otherDir := filepath.Join(e.dir, "other")
	if err := os.MkdirAll(filepath.Join(otherDir, ".chunks"), 0o755); err != nil {
		t.Fatal(err)
	}
	e.mustRun("datastore", "add", "other", "--path", otherDir)
	cfgA := e.storeConfig("a.yaml", map[string]string{"demo": filepath.Join(e.dir, "store")})
	cfgB := e.storeConfig("b.yaml", map[string]string{"other": otherDir})
	wa := startWithEnv(t, e, []string{"PBSQ_CONFIG=" + cfgA}, "worker", "--concurrency", "2")

	waiting := strings.TrimSpace(e.mustRun("enqueue", "verify", "--store", "other"))
	// Worker A takes tasks meanwhile (each one a round over its queues);
	// the task of other is still there, pending, for all to see.
	for i := 1; i <= 3; i++ {
		e.expect(0, "enqueue", "verify", "--store", "demo", "--outdated-after", fmt.Sprint(100+i), "--wait")
	}
	out := e.mustRun("tasks", "show", waiting)
	if !strings.Contains(out, "pending") {
		t.Errorf("task of a store no worker has:\n%s", out)
	}
	if out := e.mustRun("tasks", "ls", "--state", "pending"); !strings.Contains(out, waiting) {
		t.Errorf("tasks ls does not list the waiting task %s:\n%s", waiting, out)
	}
	// The queue metrics show it waiting in a queue no worker listens to
	// (alert PbsqQueueWithoutWorker, tested with promtool).
	metrics := httpGet(t, metricsURL(t, wa)+"/metrics")
	for _, want := range []string{`asynq_tasks_enqueued_total{queue="pbsq:other",state="pending"} 1`, `pbsq_queue_consumers{queue="pbsq:other"} 0`,
		`pbsq_queue_consumers{queue="pbsq:demo"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("worker A's /metrics lacks %s", want)
		}
	}

	wb := startWithEnv(t, e, []string{"PBSQ_CONFIG=" + cfgB}, "worker", "--concurrency", "2")
	e.expect(0, "tasks", "wait", waiting)
	ids := map[string][]string{"demo": nil, "other": {waiting}}
	for i := 1; i <= 3; i++ {
		for _, st := range []string{"demo", "other"} {
			id := strings.TrimSpace(e.mustRun("enqueue", "verify", "--store", st, "--outdated-after", fmt.Sprint(i)))
			ids[st] = append(ids[st], id)
		}
	}
	for _, st := range []string{"demo", "other"} {
		for _, id := range ids[st] {
			e.expect(0, "tasks", "wait", id)
		}
	}
	for st, runs := range map[string]*proc{"demo": wa, "other": wb} {
		for _, id := range ids[st] {
			if !strings.Contains(runs.out.String(), "task_id="+id) {
				t.Errorf("task %s of %s did not run on the worker that has %s", id, st, st)
			}
		}
	}
	for st, not := range map[string]*proc{"demo": wb, "other": wa} {
		for _, id := range ids[st] {
			if strings.Contains(not.out.String(), id) {
				t.Errorf("task %s of %s reached a worker without %s", id, st, st)
			}
		}
	}
}

// TestMaxJobsAcrossWorkers: with max-jobs 1 on demo and two workers of
// concurrency 2, four slow verifies of demo never overlap (`tasks show
// --json` started/ended: a run starts once it holds its job slot, and ends
// before giving it back), the ones that waited were shown waiting in their
// record and their task log, and none spent a retry.
func TestMaxJobsAcrossWorkers(t *testing.T) {
	t.Parallel() // mostly lock waits; its own Redis, store and workers
	e := newEnv(t, true)
	e.backups()
	cfg, _ := os.ReadFile(e.config)
	capped := regexp.MustCompile(`(?m)^(\s+)path: (.*)$`).ReplaceAllString(string(cfg), "${1}path: $2\n${1}max-jobs: 1")
	if err := os.WriteFile(e.config, []byte(capped), 0o644); err != nil {
		t.Fatal(err)
	}
	w1 := e.start("worker", "--concurrency", "2")
	w2 := e.start("worker", "--concurrency", "2")
	// An exclusive lock on ns a makes each verify wait a second per
	// snapshot: slow tasks that would overlap without the cap.
	holder := e.start("lock", "--store", "demo", "--ns", "a", "--exclusive", "--", "sleep", "300")
	// SIGTERM reaches sleep through lock; a kill would leave sleep holding
	// the output pipe.
	defer func() { _ = holder.stop(t, 10*time.Second) }()
	waitFor(t, 30*time.Second, func() bool {
		out, _, _ := e.run("locks", "ls")
		return strings.Contains(out, "exclusive")
	})
	var ids []string
	for i := 1; i <= 4; i++ {
		ids = append(ids, strings.TrimSpace(e.mustRun("enqueue", "verify", "--store", "demo", "--ns", "a",
			"--ignore-verified=false", "--lock-wait", "1s", "--max-depth", fmt.Sprint(i%2), "--outdated-after", fmt.Sprint(i))))
	}
	ins := e.inspector()
	waited := map[string]bool{}
	waitFor(t, 4*time.Minute, func() bool {
		done := 0
		for _, id := range ids {
			info, err := worker.FindTask(ins, id)
			if err != nil {
				t.Fatal(err)
			}
			var rec tasks.Record
			_ = json.Unmarshal(info.Result, &rec)
			if rec.State == "waiting" && strings.Contains(rec.Message, "max-jobs") {
				waited[id] = true
			}
			if info.State == asynq.TaskStateCompleted || info.State == asynq.TaskStateArchived {
				done++
			}
		}
		return done == len(ids)
	})
	type span struct {
		id         string
		start, end time.Time
	}
	var spans []span
	for _, id := range ids {
		var v struct{ Started, Ended *time.Time }
		if err := json.Unmarshal([]byte(e.mustRun("tasks", "show", "--json", id)), &v); err != nil {
			t.Fatalf("tasks show --json %s: %v", id, err)
		}
		if v.Started == nil || v.Ended == nil || !v.Started.Before(*v.Ended) {
			t.Fatalf("task %s: started %v, ended %v", id, v.Started, v.Ended)
		}
		spans = append(spans, span{id, *v.Started, *v.Ended})
	}
	for i, a := range spans {
		for _, b := range spans[i+1:] {
			if a.start.Before(b.end) && b.start.Before(a.end) {
				t.Errorf("tasks %s (%s – %s) and %s (%s – %s) overlap", a.id, a.start.Format("15:04:05.000"), a.end.Format("15:04:05.000"),
					b.id, b.start.Format("15:04:05.000"), b.end.Format("15:04:05.000"))
			}
		}
	}
	for _, id := range ids {
		info, err := worker.FindTask(ins, id)
		if err != nil {
			t.Fatal(err)
		}
		var rec tasks.Record
		_ = json.Unmarshal(info.Result, &rec)
		if info.Retried != 0 || rec.Outcome != tasks.OutcomeSkipped {
			t.Errorf("task %s: retried %d, outcome %q (%s); want 0 retries, skipped (per-snapshot locks busy)", id, info.Retried, rec.Outcome, rec.Error)
		}
	}
	if len(waited) == 0 {
		t.Error("no task was ever shown waiting for a job slot")
	}
	for id := range waited {
		if out := e.mustRun("tasks", "log", id); !strings.Contains(out, "waiting: ") || !strings.Contains(out, "job slot(s) taken (max-jobs)") {
			t.Errorf("task %s waited for a job slot; its log does not say so:\n%s", id, out)
		}
	}
	if !strings.Contains(w1.out.String()+w2.out.String(), "job slot(s) taken (max-jobs)") {
		t.Error("no worker logged a task waiting for a job slot")
	}
}

// TestS3BudgetSharedAcrossWorkers: with requests-per-second 40 on an S3
// store (versitygw behind a counting proxy), two syncs into it running at
// once on two workers stay within the one shared budget: on average at
// most 44 requests/s, and no 2-second window above 120.
func TestS3BudgetSharedAcrossWorkers(t *testing.T) {
	// Paced by the budget: load beside it can only lower the rates.
	t.Parallel()
	e, proxy := budgetScene(t, true, 40, "a", "b")
	w1 := e.start("worker", "--concurrency", "1")
	w2 := e.start("worker", "--concurrency", "1")
	proxy.ResetLog()
	var ids []string
	for _, ns := range []string{"a", "b"} {
		ids = append(ids, strings.TrimSpace(e.mustRun("enqueue", "sync", "--source-store", "demo", "--source-ns", ns, "--store", "offsite", "--ns", ns)))
	}
	for _, id := range ids {
		e.expect(0, "tasks", "wait", id)
	}
	for i, w := range []*proc{w1, w2} {
		if n := strings.Count(w.out.String(), "type=datastore:sync outcome=ok"); n != 1 {
			t.Errorf("worker %d ran %d syncs, want 1 each (at once)", i+1, n)
		}
	}
	var runs [2]struct{ Started, Ended *time.Time }
	for i, id := range ids {
		if err := json.Unmarshal([]byte(e.mustRun("tasks", "show", "--json", id)), &runs[i]); err != nil || runs[i].Started == nil || runs[i].Ended == nil {
			t.Fatalf("tasks show --json %s: %+v %v", id, runs[i], err)
		}
	}
	if !runs[0].Started.Before(*runs[1].Ended) || !runs[1].Started.Before(*runs[0].Ended) {
		t.Errorf("the syncs did not run at once: %s – %s and %s – %s", runs[0].Started, runs[0].Ended, runs[1].Started, runs[1].Ended)
	}
	avg, worst := requestRate(t, proxy, 200)
	if avg > 44 || worst > 120 {
		t.Errorf("budget 40/s exceeded: %.1f/s on average, %d in a 2-second window", avg, worst)
	}
}

// TestScheduledTasksSigned: a worker with a key signs the tasks its
// scheduler queues, chained ones included, with the first key of its
// file, and runs them (a keyed worker archives unsigned tasks); a task
// the CLI chains with --after runs too (its chain id is the signed id).
func TestScheduledTasksSigned(t *testing.T) {
	e := newEnv(t, true)
	e.backups()
	kf := writeKeyFile(t, e.dir, "k1.key", fleetKey1)
	keys, err := tasks.LoadKeys(kf)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := os.ReadFile(e.config)
	cfg = append(cfg, []byte(`security:
  task-key-file: k1.key
schedules:
  check:
    cron: "@every 1s"
    task: verify
    payload: {store: demo, ns: a}
  clean:
    after: check
    task: gc
    payload: {store: demo}
`)...)
	if err := os.WriteFile(e.config, cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	e.start("worker")
	ins := e.inspector()
	var verify, gc *asynq.TaskInfo
	waitFor(t, 60*time.Second, func() bool {
		done, _ := ins.ListCompletedTasks(demoQueue)
		for _, d := range done {
			switch d.Type {
			case tasks.TypeVerify:
				verify = d
			case tasks.TypeGC:
				gc = d
			}
		}
		return verify != nil && gc != nil
	})
	for _, info := range []*asynq.TaskInfo{verify, gc} {
		if err := keys.Verify(info.Type, info.ID, info.Payload, info.Headers, time.Now()); err != nil {
			t.Errorf("scheduled %s task %s: %v", info.Type, info.ID, err)
		}
	}
	// The CLI's chained tasks too.
	e.expect(0, "enqueue", "verify", "--store", "demo", "--ns", "a/b", "--after", verify.ID, "--wait")
	if archived, _ := ins.ListArchivedTasks(demoQueue); len(archived) != 0 {
		t.Errorf("%d scheduled task(s) archived, e.g. %s: %s", len(archived), archived[0].Type, archived[0].Result)
	}
}

// budgetScene is a demo store with 12 groups × 2 snapshots of random data
// in each namespace nss, and an S3 store offsite (versitygw behind a
// counting proxy) with the namespaces and requests-per-second rps.
func budgetScene(t *testing.T, withRedis bool, rps int, nss ...string) (*env, *faultproxy.Proxy) {
	t.Helper()
	srv := s3test.StartVersity(t)
	proxy, err := faultproxy.New(srv.Endpoint(), faultproxy.Rates{}, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Close)
	e := newEnv(t, withRedis)
	e.mustRun("datastore", "create", "offsite", "--s3-endpoint", proxy.URL(), "--s3-bucket", srv.Bucket(), "--s3-path-style")
	cfg, _ := os.ReadFile(e.config)
	budgeted := regexp.MustCompile(`(?m)^(\s+)path-style: true$`).ReplaceAllString(string(cfg), fmt.Sprintf("${1}path-style: true\n${1}requests-per-second: %d", rps))
	if err := os.WriteFile(e.config, []byte(budgeted), 0o644); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 32<<10)
	for _, ns := range nss {
		e.mustRun("ns", "create", "--store", "demo", "--ns", ns)
		e.mustRun("ns", "create", "--store", "offsite", "--ns", ns)
		for g := range 12 {
			for s := range 2 {
				_, _ = rand.Read(data)
				f := filepath.Join(e.dir, "data.img")
				if err := os.WriteFile(f, data, 0o644); err != nil {
					t.Fatal(err)
				}
				e.mustRun("backup", "--store", "demo", "--ns", ns, "--type", "vm", "--id", fmt.Sprint(100+g),
					"--time", fmt.Sprintf("2024-03-0%dT10:00:00Z", s+1), f)
			}
		}
	}
	return e, proxy
}

// requestRate is the average rate of the requests the proxy logged and
// the most of them in a 2-second window; fewer than least is too few to
// measure.
func requestRate(t *testing.T, proxy *faultproxy.Proxy, least int) (float64, int) {
	t.Helper()
	log := proxy.Log()
	if len(log) < least {
		t.Fatalf("only %d requests: too few to measure a rate", len(log))
	}
	span := log[len(log)-1].Time.Sub(log[0].Time).Seconds()
	avg := float64(len(log)) / span
	worst := 0
	for i, j := 0, 0; i < len(log); i++ {
		for log[i].Time.Sub(log[j].Time) >= 2*time.Second {
			j++
		}
		worst = max(worst, i-j+1)
	}
	t.Logf("%d requests in %.1fs: %.1f/s on average, at most %d in a 2-second window", len(log), span, avg, worst)
	return avg, worst
}

// TestS3BudgetPerProcessWithoutRedis: with no Redis configured, `pbsq run`
// keeps to the store's budget on its own (20 requests/s here, counted at
// the proxy: at most 22/s on average, 60 in a 2-second window).
func TestS3BudgetPerProcessWithoutRedis(t *testing.T) {
	t.Parallel() // paced, like TestS3BudgetSharedAcrossWorkers
	e, proxy := budgetScene(t, false, 20, "a")
	proxy.ResetLog()
	e.mustRun("run", "sync", "--source-store", "demo", "--source-ns", "a", "--store", "offsite", "--ns", "a")
	avg, worst := requestRate(t, proxy, 100)
	if avg > 22 || worst > 60 {
		t.Errorf("budget 20/s exceeded: %.1f/s on average, %d in a 2-second window", avg, worst)
	}
}
