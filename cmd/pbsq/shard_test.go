package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/pbsq/pbsq/tasks"
	"github.com/pbsq/pbsq/worker"
)

// Sharded jobs (docs/DESIGN.md §13) with real worker processes and a real
// Redis.

const shardBlock = 4 << 20

// shardedStore writes four groups in two namespaces whose images share
// 4 MiB blocks (so shards share chunks), vm/100 twice; it returns the
// blocks' chunk digests.
func (e *env) shardedStore() []string {
	e.t.Helper()
	blocks := make([][]byte, 6)
	var digests []string
	for i := range blocks {
		blocks[i] = make([]byte, shardBlock)
		_, _ = rand.Read(blocks[i])
		d := sha256.Sum256(blocks[i])
		digests = append(digests, hex.EncodeToString(d[:]))
	}
	e.mustRun("ns", "create", "--store", "demo", "--ns", "a/b")
	backup := func(ns, id, at string, from int) {
		img := filepath.Join(e.dir, "disk.img")
		f, err := os.Create(img)
		if err != nil {
			e.t.Fatal(err)
		}
		for _, b := range blocks[from : from+3] {
			if _, err := f.Write(b); err != nil {
				e.t.Fatal(err)
			}
		}
		f.Close()
		e.mustRun("backup", "--store", "demo", "--ns", ns, "--type", "vm", "--id", id, "--time", at, img)
		os.Remove(img)
	}
	backup("a", "100", "2024-03-01T10:00:00Z", 0)
	backup("a", "100", "2024-03-02T10:00:00Z", 0)
	backup("a", "101", "2024-03-01T10:00:00Z", 1)
	backup("a/b", "200", "2024-03-01T10:00:00Z", 2)
	backup("a/b", "201", "2024-03-01T10:00:00Z", 3)
	return digests
}

// chunkFiles counts the chunk files of a store directory.
func chunkFiles(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(filepath.Join(dir, ".chunks"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.Contains(d.Name(), ".") {
			n++
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// jobOut is `enqueue --wait --json` of a sharded job.
type jobOut struct {
	ID      string `json:"id"`
	State   string `json:"state"`
	Outcome string `json:"outcome"`
	Error   string `json:"error"`
	Result  struct {
		Snapshots     int   `json:"snapshots"`
		OK            int   `json:"ok"`
		Chunks        int   `json:"chunks"`
		ChunksCorrupt int   `json:"chunks-corrupt"`
		Bytes         int64 `json:"bytes"`
		Failed        []struct {
			NS       string `json:"ns"`
			Snapshot string `json:"snapshot"`
		} `json:"failed"`
		Job struct {
			Shards        int      `json:"shards"`
			ChunksChecked int64    `json:"chunks-checked"`
			ShardErrors   []string `json:"shard-errors"`
		} `json:"job"`
	} `json:"result"`
}

func parseJob(t *testing.T, out string) jobOut {
	t.Helper()
	var j jobOut
	if err := json.Unmarshal([]byte(out), &j); err != nil {
		t.Fatalf("job output %q: %v", out, err)
	}
	return j
}

func failedSet(j jobOut) []string {
	var out []string
	for _, f := range j.Result.Failed {
		out = append(out, f.NS+":"+f.Snapshot)
	}
	slices.Sort(out)
	return out
}

// TestShardedVerifyAndSync: with two workers, a sharded sync copies every
// chunk once, a sharded verify reads every chunk once across both (the
// job's ledger count), its results equal an unsharded run on the same
// store, and a corrupt chunk found by one shard fails the snapshots of
// every shard that reference it.
func TestShardedVerifyAndSync(t *testing.T) {
	e := newEnv(t, true)
	digests := e.shardedStore()
	store := filepath.Join(e.dir, "store")
	distinct := chunkFiles(t, store)
	if distinct != 6 {
		t.Fatalf("%d chunk files, want 6", distinct)
	}
	otherDir := filepath.Join(e.dir, "other")
	if err := os.MkdirAll(filepath.Join(otherDir, ".chunks"), 0o755); err != nil {
		t.Fatal(err)
	}
	e.mustRun("datastore", "add", "other", "--path", otherDir)
	e.start("worker", "--concurrency", "2")
	e.start("worker", "--concurrency", "2")

	out, _ := e.expect(0, "enqueue", "sync", "--source-store", "demo", "--store", "other", "--shards", "2", "--wait", "--json")
	sy := parseJob(t, out)
	if sy.Result.Job.Shards != 2 || sy.Result.Chunks != distinct || sy.Result.Job.ChunksChecked != int64(distinct) {
		t.Errorf("sharded sync: %d shards, %d chunks copied, %d provided; want 2, %d, %d: %s", sy.Result.Job.Shards, sy.Result.Chunks, sy.Result.Job.ChunksChecked, distinct, distinct, out)
	}
	if n := chunkFiles(t, otherDir); n != distinct {
		t.Errorf("target has %d chunk files, want %d", n, distinct)
	}
	e.expect(0, "run", "verify", "--store", "other", "--read-only")

	corrupt := func(block int) (undo func()) {
		t.Helper()
		p := filepath.Join(store, ".chunks", digests[block][:4], digests[block])
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		bad := slices.Clone(raw)
		bad[len(bad)/2] ^= 0xff
		if err := os.WriteFile(p, bad, 0o644); err != nil {
			t.Fatal(err)
		}
		return func() {
			if err := os.WriteFile(p, raw, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Block 0 is in vm/100 only: one shard fails, the other succeeds, and
	// the job's failure is what counts for the verify's last success.
	undo := corrupt(0)
	out, _ = e.expect(1, "enqueue", "verify", "--store", "demo", "--read-only", "--shards", "2", "--wait", "--json")
	half := parseJob(t, out)
	if v, err := e.redis.Client().HGet(context.Background(), "pbsq:job-last-success", "demo "+tasks.TypeVerify).Result(); err == nil {
		t.Errorf("a failed sharded verify recorded a success (%s): a shard's success counted as the job's", v)
	}
	// The shards' logs, the one that succeeded too, are kept as long as
	// the job's (archived: failed).
	for _, id := range []string{half.ID, tasks.ShardID(half.ID, 0), tasks.ShardID(half.ID, 1)} {
		if ttl := e.redis.Client().PTTL(context.Background(), "pbsq:tasklog:"+id).Val(); ttl < 30*24*time.Hour {
			t.Errorf("log of %s expires in %s, before its archived job", id, ttl)
		}
	}
	undo()

	// Block 2 is in vm/100 (twice), vm/101 and vm/200: in both shards.
	corrupt(2)
	out, _ = e.expect(1, "enqueue", "verify", "--store", "demo", "--read-only", "--shards", "2", "--wait", "--json")
	sharded := parseJob(t, out)
	uout, _ := e.expect(1, "run", "verify", "--store", "demo", "--read-only", "--json")
	var plain jobOut
	if err := json.Unmarshal([]byte(uout), &plain.Result); err != nil {
		t.Fatalf("run verify output %q: %v", uout, err)
	}
	s, u := sharded.Result, plain.Result
	if s.Job.Shards != 2 || s.Job.ChunksChecked != int64(distinct) || s.Chunks != distinct {
		t.Errorf("sharded verify: %d shards, %d chunks checked, %d counted; want 2 and each of %d chunks once: %s", s.Job.Shards, s.Job.ChunksChecked, s.Chunks, distinct, out)
	}
	if s.Snapshots != u.Snapshots || s.OK != u.OK || s.Chunks != u.Chunks || s.ChunksCorrupt != u.ChunksCorrupt || s.Bytes != u.Bytes {
		t.Errorf("sharded verify differs from unsharded:\n%s\n%s", out, uout)
	}
	if fs, fu := failedSet(sharded), failedSet(plain); !slices.Equal(fs, fu) || len(fs) != 4 {
		t.Errorf("failed snapshots: sharded %v, unsharded %v; want the 4 with block 2", fs, fu)
	}
	// Job records and ledgers are gone with their jobs.
	if keys := e.redis.Client().Keys(context.Background(), "pbsq:job:*").Val(); len(keys) > 0 {
		t.Errorf("left in Redis after the jobs: %v", keys)
	}
	if rec := e.mustRun("tasks", "show", sharded.ID); !strings.Contains(rec, `"shards": 2`) {
		t.Errorf("tasks show of the job:\n%s", rec)
	}
	if lg := e.mustRun("tasks", "log", sharded.ID); !strings.Contains(lg, "shard 1 (") || !strings.Contains(lg, "TASK ERROR") {
		t.Errorf("tasks log of the job:\n%s", lg)
	}
}

// shardedLog checks a sharded job's log: every snapshot's line from its
// shard, in time order with the job's own lines, then the job's summary
// and end.
func shardedLog(t *testing.T, lg string, snaps []string, end string) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(lg), "\n")
	for i := 1; i < len(lines); i++ {
		if lines[i][:24] < lines[i-1][:24] {
			t.Errorf("line %d out of time order:\n%s\n%s", i, lines[i-1], lines[i])
		}
	}
	shard := regexp.MustCompile(`^\S+ shard \d+: `)
	for _, sn := range snaps {
		found := false
		for _, l := range lines {
			found = found || (shard.MatchString(l) && strings.HasSuffix(l, "verify "+sn+": ok"))
		}
		if !found {
			t.Errorf("job log has no shard's line for %s:\n%s", sn, lg)
		}
	}
	for _, want := range []string{"planned ", "job summary: ", end} {
		if !strings.Contains(lg, want) {
			t.Errorf("job log lacks %q:\n%s", want, lg)
		}
	}
	if !strings.HasSuffix(lines[len(lines)-1], end) {
		t.Errorf("job log ends %q, want %q", lines[len(lines)-1], end)
	}
}

// TestShardedJobOneSlot: one worker running one task at a time runs a
// sharded job to the end (the job holds no slot while its shards run);
// the worker requires signed tasks, so the shards it queued are signed.
func TestShardedJobOneSlot(t *testing.T) {
	e := newEnv(t, true)
	e.shardedStore()
	writeKeyFile(t, e.dir, "k1.key", fleetKey1)
	cfg, _ := os.ReadFile(e.config)
	if err := os.WriteFile(e.config, append(cfg, []byte("security:\n  task-key-file: k1.key\n")...), 0o644); err != nil {
		t.Fatal(err)
	}
	e.start("worker", "--concurrency", "1")
	out, _ := e.expect(0, "enqueue", "verify", "--store", "demo", "--shards", "4", "--wait", "--json")
	j := parseJob(t, out)
	if j.Result.Job.Shards != 4 || j.Result.Snapshots != 5 || j.Result.OK != 5 {
		t.Errorf("sharded verify on one slot: %s", out)
	}
	snaps := []string{"vm/100/2024-03-01T10:00:00Z (ns a)", "vm/100/2024-03-02T10:00:00Z (ns a)", "vm/101/2024-03-01T10:00:00Z (ns a)",
		"vm/200/2024-03-01T10:00:00Z (ns a/b)", "vm/201/2024-03-01T10:00:00Z (ns a/b)"}
	shardedLog(t, e.mustRun("tasks", "log", j.ID), snaps, "TASK OK")
	// Followed from the start while the job runs: the same lines.
	id := strings.TrimSpace(e.mustRun("enqueue", "verify", "--store", "demo", "--ignore-verified=false", "--shards", "4"))
	shardedLog(t, e.mustRun("tasks", "log", "--follow", id), snaps, "TASK OK")
}

// TestShardedJobWorkerKilled: the worker running a shard dies (SIGKILL,
// right after its first chunk verdicts reached the ledger); another
// worker completes the job, and no chunk is read twice.
func TestShardedJobWorkerKilled(t *testing.T) {
	t.Parallel() // mostly waits for asynq's recoverer; its own Redis and store
	e := newEnv(t, true)
	e.shardedStore()
	distinct := chunkFiles(t, filepath.Join(e.dir, "store"))
	a := startWithEnv(t, e, []string{"PBSQ_TEST_CRASH_AT=shard-publish"}, "worker", "--concurrency", "1")
	id := strings.TrimSpace(e.mustRun("enqueue", "verify", "--store", "demo", "--shards", "2"))
	select {
	case <-a.done:
	case <-time.After(60 * time.Second):
		t.Fatal("the worker did not die at its first chunk verdicts")
	}
	e.start("worker", "--concurrency", "2")
	out, _ := e.expect(0, "tasks", "wait", id, "--json")
	j := parseJob(t, out)
	if j.Result.Job.ChunksChecked != int64(distinct) {
		t.Errorf("%d chunk verdicts for %d chunks after a worker died: %s", j.Result.Job.ChunksChecked, distinct, out)
	}
	if j.Result.Snapshots+j.Result.OK == 0 || len(j.Result.Job.ShardErrors) > 0 {
		t.Errorf("job after a worker died: %s", out)
	}
}

// TestShardedJobCancel: cancelling a job cancels every shard, running or
// queued, and the job ends cancelled.
func TestShardedJobCancel(t *testing.T) {
	e := newEnv(t, true)
	e.shardedStore()
	stall := []string{"PBSQ_TEST_CRASH_AT=shard-stall"}
	w1 := startWithEnv(t, e, stall, "worker", "--concurrency", "1")
	w2 := startWithEnv(t, e, stall, "worker", "--concurrency", "1")
	id := strings.TrimSpace(e.mustRun("enqueue", "verify", "--store", "demo", "--shards", "3"))
	ins := e.inspector()
	shard := func(i int) *asynq.TaskInfo {
		info, err := worker.FindTask(ins, tasks.ShardID(id, i))
		if err != nil {
			return nil
		}
		return info
	}
	waitFor(t, 60*time.Second, func() bool {
		active := 0
		for i := range 3 {
			if s := shard(i); s != nil && s.State == asynq.TaskStateActive {
				active++
			}
		}
		return active == 2
	})
	// The job's own record carries its shards' summed progress.
	waitFor(t, 60*time.Second, func() bool {
		info, err := worker.FindTask(ins, id)
		if err != nil {
			return false
		}
		rec, _ := tasks.ParseRecord(info.Result)
		return rec.State == "running" && rec.Total > 0 && strings.Contains(rec.Message, "of 3 shard(s) done")
	})
	// ... and so does pbsq_task_progress_ratio of the job's id, on the
	// workers running its shards.
	metricsURL := regexp.MustCompile(`url=(http://\S+/metrics)`)
	series := `pbsq_task_progress_ratio{task_id="` + id + `"`
	waitFor(t, 60*time.Second, func() bool {
		for _, w := range []*proc{w1, w2} {
			m := metricsURL.FindStringSubmatch(w.out.String())
			if m == nil {
				continue
			}
			resp, err := http.Get(m[1])
			if err != nil {
				continue
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(body), series) {
				return true
			}
		}
		return false
	})
	if out := e.mustRun("tasks", "ls"); !strings.Contains(out, id) {
		t.Errorf("tasks ls does not list the job:\n%s", out)
	}
	e.mustRun("tasks", "cancel", id)
	// Running shards are stopped and archived, queued ones deleted.
	for i := range 3 {
		var info *asynq.TaskInfo
		waitFor(t, 30*time.Second, func() bool {
			info = shard(i)
			return info == nil || info.State == asynq.TaskStateArchived
		})
		if info == nil {
			continue
		}
		if rec, _ := tasks.ParseRecord(info.Result); rec.State == "done" && rec.Outcome != worker.OutcomeCancelled {
			t.Errorf("shard %d after cancel: record %+v", i, rec)
		}
	}
	info, rec := finalRecord(t, ins, id)
	if info.State != asynq.TaskStateArchived || rec.Outcome != worker.OutcomeCancelled {
		t.Errorf("job after cancel: %s, record %+v", info.State, rec)
	}
	e.expect(1, "tasks", "wait", id)
	// The job's log, its shards' included (the deleted one's too), is
	// kept as long as the archived job.
	for i := range 3 {
		key := "pbsq:tasklog:" + tasks.ShardID(id, i)
		waitFor(t, 30*time.Second, func() bool {
			return e.redis.Client().PTTL(context.Background(), key).Val() > 30*24*time.Hour
		})
	}
	if lg := e.mustRun("tasks", "log", id); !strings.Contains(lg, "shard 2: queued as shard 2 of job "+id) || !strings.Contains(lg, "TASK ERROR: cancelled") {
		t.Errorf("cancelled job's log:\n%s", lg)
	}
}

// TestShardsBadInput: --shards outside 1..256, or with remove-vanished,
// exits 2 naming the value, and queues nothing.
func TestShardsBadInput(t *testing.T) {
	e := newEnv(t, true)
	for _, args := range [][]string{
		{"enqueue", "verify", "--store", "demo", "--shards", "0"},
		{"enqueue", "verify", "--store", "demo", "--shards", "257"},
		{"enqueue", "sync", "--source-store", "demo", "--store", "demo", "--ns", "x", "--source-ns", "y", "--shards", "-3"},
		{"enqueue", "sync", "--source-store", "demo", "--store", "demo", "--ns", "x", "--source-ns", "y", "--shards", "2", "--remove-vanished"},
	} {
		_, errs := e.expect(2, args...)
		v := args[len(args)-1]
		if v == "--remove-vanished" {
			v = "remove-vanished"
		}
		if !strings.Contains(errs, v) {
			t.Errorf("pbsq %s: error does not name %q: %s", strings.Join(args, " "), v, errs)
		}
	}
	if n := e.queued(); n != 0 {
		t.Errorf("%d task(s) queued by bad input", n)
	}
}

// TestScheduleShards: `shards:` in a schedule's payload makes a sharded
// job; a bad value is refused naming it.
func TestScheduleShards(t *testing.T) {
	c := &Config{Datastores: map[string]DatastoreConfig{"main": {Path: "/x"}}}
	s, err := c.schedule("nightly", ScheduleConfig{Cron: "0 3 * * *", Task: "verify", Payload: map[string]any{"store": "main", "shards": 4}})
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := s.Payload.(*tasks.Verify); !ok || v.Shards == nil || *v.Shards != 4 {
		t.Errorf("schedule payload %+v", s.Payload)
	}
	_, err = c.schedule("nightly", ScheduleConfig{Cron: "0 3 * * *", Task: "verify", Payload: map[string]any{"store": "main", "shards": 300}})
	if err == nil || !strings.Contains(err.Error(), "shards 300") {
		t.Errorf("shards 300: %v", err)
	}
}
