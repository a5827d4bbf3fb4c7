package worker

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/datastore/name"
	"github.com/pbsq/pbsq/tasks"
)

// Sharded jobs (docs/DESIGN.md §13). A verify or sync payload with
// shards N > 1 is a job. Its task (the job's id) plans at most N shards
// balanced by group size, records the plan in Redis, queues the shard
// tasks (fixed ids <job>-s<i>, signed and routed like any task) and goes
// back to the queue held for jobPoll without spending a retry: it holds
// no worker slot while the shards run. A shard that ends records its
// outcome in the job and, if it was the last, releases the job's task at
// once; the job's task, when it runs again, reads every shard's final
// record (from asynq, so a worker dying between steps loses nothing: the
// next poll finds what the dead one did not record), and once all ended
// writes one final record adding up their results.
//
//	pbsq:job:<id>             hash: plan, n, queue, type, created,
//	                          r:<i> shard i's end, p:<i> its progress,
//	                          reads (chunk verdicts published)
//	pbsq:job:<id>:chunks      the chunk ledger (ledger.go)
//	pbsq:job:<id>:hb:<shard>  a running shard's heartbeat

const (
	// jobTTL is the backstop for a job record left behind.
	jobTTL = tasks.Retention
	// jobPoll is the longest a job's task waits before it looks at its
	// shards again; a shard ending releases it at once.
	jobPoll = 30 * time.Second
	// jobRelease bounds how long a shard that ended last waits for the
	// job's task to go back to the queue (it may still be planning).
	jobRelease = time.Minute
)

func jobKey(id string) string { return "pbsq:job:" + id }

// errJobWaiting sends a job's task back to the queue while shards run.
var errJobWaiting = errors.New("waiting for its shards")

type shareKey struct{}

// shareFrom is the chunk ledger of the shard running with ctx, if any.
func shareFrom(ctx context.Context) datastore.ChunkShare {
	s, _ := ctx.Value(shareKey{}).(datastore.ChunkShare)
	return s
}

// shardEnd is a shard's final outcome as the job keeps it.
type shardEnd struct {
	ID      string          `json:"id"`
	Outcome string          `json:"outcome"`
	Error   string          `json:"error,omitempty"`
	Result  json.RawMessage `json:"result,omitempty"`
}

// jobInfo is what a sharded job's result adds to the sum of its shards'.
type jobInfo struct {
	Shards int `json:"shards"`
	// ChunksChecked counts chunk verdicts the shards published: for a
	// verify, chunks read and hashed, each once per job.
	ChunksChecked int64    `json:"chunks-checked"`
	ShardErrors   []string `json:"shard-errors,omitempty"`
}

func (j *jobInfo) outcome(inner func() error) error {
	if len(j.ShardErrors) > 0 {
		return fmt.Errorf("%d shard(s) did not complete (%s): %w", len(j.ShardErrors), j.ShardErrors[0], datastore.ErrFailed)
	}
	return inner()
}

// JobVerifyResult is the result of a sharded verify.
type JobVerifyResult struct {
	*datastore.VerifyResult
	Job jobInfo `json:"job"`
}

// Outcome implements Outcome.
func (r *JobVerifyResult) Outcome() error { return r.Job.outcome(r.VerifyResult.Outcome) }

// JobSyncResult is the result of a sharded sync.
type JobSyncResult struct {
	*datastore.SyncResult
	Job jobInfo `json:"job"`
}

// Outcome implements Outcome.
func (r *JobSyncResult) Outcome() error { return r.Job.outcome(r.SyncResult.Outcome) }

// runJob is a run of a sharded job's own task.
func (w *Worker) runJob(ctx context.Context, typ string, p tasks.Payload, rec *recorder, tl *runLog, log *slog.Logger, start time.Time) error {
	job := rec.id
	if w.cancelRequested(ctx, job) {
		rec.final(tasks.Result{Outcome: OutcomeCancelled, Error: ErrCancelled.Error()}, nil, start)
		w.endLog(ctx, tl, job, OutcomeCancelled, ErrCancelled)
		w.metrics.finished(typ, OutcomeCancelled, 0)
		return fmt.Errorf("%w: %w", ErrCancelled, asynq.SkipRetry)
	}
	m, err := w.rdb.HGetAll(ctx, jobKey(job)).Result()
	planned := false
	if err == nil && m["plan"] == "" {
		m, err = w.planJob(ctx, p, rec, tl)
		planned = true
	}
	if err == nil && m["enqueued"] == "" {
		err = w.enqueueShards(ctx, p, job, m, tl)
	}
	done := false
	if err == nil {
		done, err = w.settleJob(ctx, job)
	}
	if err != nil {
		outcome, ret := w.conclude(ctx, log, rec, nil, err, start)
		w.endLog(ctx, tl, job, outcome, ret)
		w.metrics.finished(typ, outcome, 0)
		return ret
	}
	if !done {
		if planned {
			tl.Printf("waiting for its shards (it holds no worker slot meanwhile)")
		}
		tl.Close(false)
		return errJobWaiting
	}
	res, err := w.aggregate(ctx, job, typ)
	created, _ := strconv.ParseInt(m["created"], 10, 64)
	if created > 0 {
		start = time.UnixMilli(created)
	}
	outcome, ret := w.conclude(ctx, log, rec, res, err, start)
	if outcome == OutcomeRetry || outcome == OutcomeInterrupted {
		return ret
	}
	w.recordOutcome(ctx, p, outcome, res)
	jobSummary(tl, res)
	w.endLog(ctx, tl, job, outcome, logReason(ret, res))
	if n, _ := strconv.Atoi(m["n"]); n > 0 {
		ttl := logTTL(typ)
		if outcome != tasks.OutcomeOK && outcome != tasks.OutcomeSkipped {
			ttl = max(ttl, archiveRetention)
		}
		keepShardLogs(ctx, w.rdb, job, n, ttl)
	}
	w.metrics.finished(typ, outcome, time.Since(start))
	dropJob(ctx, w.rdb, job)
	return ret
}

// jobSummary ends a job's own log lines with the sum of its shards'.
func jobSummary(tl *runLog, res Outcome) {
	switch r := res.(type) {
	case *JobVerifyResult:
		tl.Printf("job summary: %d shard(s); %d snapshot(s) checked, %d ok, %d failed, %d already verified, %d skipped; %d chunk(s), %d bytes",
			r.Job.Shards, r.Snapshots, r.OK, len(r.Failed), r.AlreadyVerified, len(r.Skipped), r.Chunks, r.Bytes)
	case *JobSyncResult:
		tl.Printf("job summary: %d shard(s); %d snapshot(s) synced, %d already present, %d failed, %d skipped, %d chunk(s) copied (%d bytes)",
			r.Job.Shards, r.Snapshots, r.SnapshotsPresent, len(r.Failed), len(r.Skipped), r.Chunks, r.Bytes)
	}
}

func dropJob(ctx context.Context, rdb redis.UniversalClient, job string) {
	ctx, cancel := bookkeeping(ctx)
	defer cancel()
	rdb.Del(ctx, ledgerKey(job), jobKey(job))
}

// planJob splits the job's groups into shards and records the plan.
func (w *Worker) planJob(ctx context.Context, p tasks.Payload, rec *recorder, tl *runLog) (map[string]string, error) {
	n, _ := tasks.ShardInfo(p)
	var sizes []datastore.GroupSize
	switch p := p.(type) {
	case *tasks.Verify:
		s, err := w.stores.Open(ctx, p.Store, rec.id, p.Wait())
		if err != nil {
			return nil, err
		}
		req, err := verifyRequest(p, rec.id)
		if err != nil {
			return nil, err
		}
		if sizes, err = s.ScopeGroupSizes(ctx, req.Scope); err != nil {
			return nil, err
		}
	case *tasks.Sync:
		s, err := w.stores.Open(ctx, p.SourceStore, rec.id, p.Wait())
		if err != nil {
			return nil, err
		}
		req, err := syncRequest(p)
		if err != nil {
			return nil, err
		}
		nss, err := s.ListNamespaces(ctx, req.SourceNS, req.MaxDepth)
		if err != nil {
			return nil, err
		}
		var groups []name.Group
		for _, ns := range nss {
			gs, err := s.ListGroups(ctx, ns)
			if err != nil {
				return nil, err
			}
			for _, g := range gs {
				if name.ApplyFilters(g, req.Filters) {
					groups = append(groups, g)
				}
			}
		}
		if sizes, err = s.GroupSizes(ctx, groups); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("%w task type %s cannot be sharded", name.ErrInvalid, p.TaskType())
	}
	plan := splitShards(sizes, n)
	for i, gs := range plan {
		if len(gs) > tasks.MaxShardGroups {
			return nil, fmt.Errorf("%w shards %d: shard %d would hold %d groups, at most %d (use more shards or a narrower scope)",
				name.ErrInvalid, n, i, len(gs), tasks.MaxShardGroups)
		}
	}
	b, err := json.Marshal(plan)
	if err != nil {
		return nil, err
	}
	bctx, cancel := bookkeeping(ctx)
	defer cancel()
	_, err = w.rdb.TxPipelined(bctx, func(pp redis.Pipeliner) error {
		pp.HSetNX(bctx, jobKey(rec.id), "plan", b)
		pp.HSetNX(bctx, jobKey(rec.id), "created", time.Now().UnixMilli())
		pp.HSet(bctx, jobKey(rec.id), "n", len(plan), "queue", rec.queue, "type", p.TaskType())
		pp.Expire(bctx, jobKey(rec.id), jobTTL)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("record the job's plan: %w", err)
	}
	var total int64
	for _, s := range sizes {
		total += s.Size
	}
	tl.Printf("planned %d shard(s) over %d group(s) (estimated %.1f MiB)", len(plan), len(sizes), float64(total)/(1<<20))
	return w.rdb.HGetAll(bctx, jobKey(rec.id)).Result()
}

// splitShards deals groups into at most n shards, largest first, each to
// the lightest shard so far; empty shards are left out.
func splitShards(sizes []datastore.GroupSize, n int) [][]string {
	sizes = slices.Clone(sizes)
	slices.SortFunc(sizes, func(a, b datastore.GroupSize) int {
		if c := cmp.Compare(b.Size, a.Size); c != 0 {
			return c
		}
		return strings.Compare(tasks.ShardGroup(a.Group), tasks.ShardGroup(b.Group))
	})
	n = min(n, len(sizes))
	load := make([]int64, n)
	plan := make([][]string, n)
	for _, s := range sizes {
		i := 0
		for j := range load {
			if load[j] < load[i] {
				i = j
			}
		}
		load[i] += s.Size
		plan[i] = append(plan[i], tasks.ShardGroup(s.Group))
	}
	for _, gs := range plan {
		slices.Sort(gs)
	}
	return plan
}

// shardPayload is shard i of job p.
func shardPayload(p tasks.Payload, job string, i int, groups []string) (tasks.Payload, error) {
	sh := &tasks.ShardOf{Job: job, Index: i, Groups: groups}
	switch p := p.(type) {
	case *tasks.Verify:
		c := *p
		c.Shards, c.Shard = nil, sh
		c.BackupType, c.BackupID, c.Snapshot = "", "", ""
		return &c, nil
	case *tasks.Sync:
		c := *p
		c.Shards, c.Shard = nil, sh
		return &c, nil
	}
	return nil, fmt.Errorf("%w task type %s cannot be sharded", name.ErrInvalid, p.TaskType())
}

// enqueueShards queues the planned shards; one queued before (the job's
// task ran this far and died) is not queued again.
func (w *Worker) enqueueShards(ctx context.Context, p tasks.Payload, job string, m map[string]string, tl *runLog) error {
	var plan [][]string
	if err := json.Unmarshal([]byte(m["plan"]), &plan); err != nil {
		return fmt.Errorf("job %s: plan: %w", job, err)
	}
	// Before any shard: the job's log view reads their logs too.
	if err := noteShards(ctx, w.rdb, job, p.TaskType(), len(plan)); err != nil {
		return fmt.Errorf("job %s: log: %w", job, err)
	}
	for i, groups := range plan {
		sp, err := shardPayload(p, job, i, groups)
		if err != nil {
			return err
		}
		id := tasks.ShardID(job, i)
		t, err := tasks.NewShardTask(sp, w.keys, id, time.Now(), asynq.Queue(m["queue"]))
		if err != nil {
			return err
		}
		_, err = w.client.EnqueueContext(ctx, t)
		switch {
		case errors.Is(err, asynq.ErrTaskIDConflict):
		case err != nil:
			return fmt.Errorf("queue shard %s: %w", id, err)
		default:
			_ = AppendLog(ctx, w.rdb, id, sp.TaskType(), false, fmt.Sprintf("queued as shard %d of job %s: %d group(s)", i, job, len(groups)))
		}
		tl.Printf("shard %d: task %s, %d group(s)", i, id, len(groups))
	}
	bctx, cancel := bookkeeping(ctx)
	defer cancel()
	return w.rdb.HSet(bctx, jobKey(job), "enqueued", 1).Err()
}

// settleJob records the end of every shard that ended and reports
// whether all did. It reads the shards' own final records, so whatever a
// worker that died did not record is found here.
func (w *Worker) settleJob(ctx context.Context, job string) (bool, error) {
	ctx, cancel := bookkeeping(ctx)
	defer cancel()
	m, err := w.rdb.HGetAll(ctx, jobKey(job)).Result()
	if err != nil {
		return false, err
	}
	if m["plan"] == "" {
		return false, nil
	}
	n, _ := strconv.Atoi(m["n"])
	pending := 0
	for i := range n {
		if m["r:"+strconv.Itoa(i)] != "" {
			continue
		}
		id := tasks.ShardID(job, i)
		end := shardEnd{ID: id}
		info, err := w.ins.GetTaskInfo(m["queue"], id)
		switch {
		case errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound):
			if m["enqueued"] == "" {
				pending++
				continue
			}
			end.Outcome, end.Error = tasks.OutcomeFailed, "shard task is gone (deleted)"
		case err != nil:
			return false, err
		default:
			rec, _ := tasks.ParseRecord(info.Result)
			switch {
			case rec.State == "done":
				end.Outcome, end.Error, end.Result = rec.Outcome, rec.Error, rec.Result
			case info.State == asynq.TaskStateArchived:
				end.Outcome, end.Error = tasks.OutcomeFailed, info.LastErr
			case info.State == asynq.TaskStateCompleted:
				end.Outcome = tasks.OutcomeOK
			default:
				pending++
				continue
			}
		}
		b, _ := json.Marshal(end)
		// With its TTL: should the job have ended meanwhile, this field
		// does not outlive it for long.
		_, err = w.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.HSet(ctx, jobKey(job), "r:"+strconv.Itoa(i), b)
			p.Expire(ctx, jobKey(job), jobTTL)
			return nil
		})
		if err != nil {
			return false, err
		}
		_ = AppendLog(ctx, w.rdb, job, m["type"], false, fmt.Sprintf("shard %d (%s) ended %s %s", i, id, end.Outcome, end.Error))
	}
	return pending == 0, nil
}

// shardEnded settles a shard's job after the shard ended and, if it was
// the last, releases the job's task, waiting for it to leave the worker
// that is still planning it, if one is.
func (w *Worker) shardEnded(ctx context.Context, sh *tasks.ShardOf) {
	done, err := w.settleJob(ctx, sh.Job)
	if err != nil {
		w.log.Warn("sharded job not settled; its next poll will", "job", sh.Job, "err", err)
		return
	}
	if !done {
		return
	}
	// Most often the job's task is held: release it now, before this
	// worker looks for its next task, which is then likely the job's.
	if w.releaseJob(ctx, sh.Job, false) {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), jobRelease)
	w.running.Go(func() {
		defer cancel()
		w.releaseJob(ctx, sh.Job, true)
	})
}

// releaseJob runs the job's held task; it reports whether nothing is
// left to do. With wait it waits while the task is still running
// (planning), until ctx ends.
func (w *Worker) releaseJob(ctx context.Context, job string, wait bool) bool {
	for {
		if w.cancelRequested(ctx, job) {
			return true
		}
		info, err := FindTask(w.ins, job)
		if err != nil {
			return true
		}
		switch info.State {
		case asynq.TaskStateRetry, asynq.TaskStateScheduled:
			if err := w.ins.RunTask(info.Queue, job); err == nil {
				return true
			}
		case asynq.TaskStateActive:
		default:
			return true // pending already, or ended
		}
		if !wait {
			return false
		}
		select {
		case <-ctx.Done():
			return true
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// jobProgress adds up the shards' progress.
func (w *Worker) jobProgress(ctx context.Context, job string) (tasks.Progress, error) {
	ctx, cancel := bookkeeping(ctx)
	defer cancel()
	m, err := w.rdb.HGetAll(ctx, jobKey(job)).Result()
	if err != nil {
		return tasks.Progress{}, err
	}
	n, _ := strconv.Atoi(m["n"])
	var done, total int64
	ended := 0
	for i := range n {
		var d, t int64
		fmt.Sscan(m["p:"+strconv.Itoa(i)], &d, &t)
		if m["r:"+strconv.Itoa(i)] != "" {
			ended++
			d = t
		}
		done += d
		total += t
	}
	phase := strings.TrimPrefix(m["type"], "datastore:")
	p := tasks.Progress{State: "running", Phase: phase, Done: done, Total: total, Updated: time.Now().Unix(),
		Message: fmt.Sprintf("%d of %d shard(s) done", ended, n)}
	if total > 0 {
		p.Percent = float64(done) * 100 / float64(total)
	}
	return p, nil
}

// shardProgress records a shard's progress in its job and writes the sum
// into the job task's record and progress gauge.
func (w *Worker) shardProgress(ctx context.Context, sh *tasks.ShardOf, typ string, b []byte) {
	var p tasks.Progress
	if json.Unmarshal(b, &p) != nil {
		return
	}
	bctx, cancel := bookkeeping(ctx)
	defer cancel()
	// Only into a job that exists (it may have been cancelled).
	if n, err := w.rdb.Exists(bctx, jobKey(sh.Job)).Result(); err != nil || n == 0 {
		return
	}
	_, err := w.rdb.TxPipelined(bctx, func(pp redis.Pipeliner) error {
		pp.HSet(bctx, jobKey(sh.Job), "p:"+strconv.Itoa(sh.Index), fmt.Sprintf("%d %d", p.Done, p.Total))
		pp.Expire(bctx, jobKey(sh.Job), jobTTL)
		return nil
	})
	if err != nil {
		return
	}
	w.writeJobProgress(bctx, sh.Job, typ)
}

func (w *Worker) writeJobProgress(ctx context.Context, job, typ string) {
	jp, err := w.jobProgress(ctx, job)
	if err != nil {
		return
	}
	if w.metrics != nil && jp.Total > 0 {
		w.metrics.progress.WithLabelValues(typ, job).Set(min(float64(jp.Done)/float64(jp.Total), 1))
	}
	queue, err := w.rdb.HGet(ctx, jobKey(job), "queue").Result()
	if err != nil {
		return
	}
	b, _ := json.Marshal(jp)
	rec := &recorder{queue: queue, id: job}
	_ = writeIfExists.Run(ctx, w.rdb, []string{rec.taskKey()}, b).Err()
}

// aggregate adds up the shards' results.
func (w *Worker) aggregate(ctx context.Context, job, typ string) (Outcome, error) {
	bctx, cancel := bookkeeping(ctx)
	defer cancel()
	m, err := w.rdb.HGetAll(bctx, jobKey(job)).Result()
	if err != nil {
		return nil, err
	}
	n, _ := strconv.Atoi(m["n"])
	info := jobInfo{Shards: n}
	info.ChunksChecked, _ = strconv.ParseInt(m["reads"], 10, 64)
	vr := &datastore.VerifyResult{Failed: []datastore.FailedSnapshot{}, Skipped: []datastore.Skipped{}, Unfinished: []string{}}
	sr := &datastore.SyncResult{Failed: []datastore.FailedSnapshot{}, Skipped: []datastore.Skipped{}}
	for i := range n {
		var e shardEnd
		if err := json.Unmarshal([]byte(m["r:"+strconv.Itoa(i)]), &e); err != nil {
			return nil, fmt.Errorf("job %s: shard %d: %w", job, i, err)
		}
		known := e.Outcome == tasks.OutcomeOK || e.Outcome == tasks.OutcomeSkipped || e.Outcome == tasks.OutcomeFailed
		if !known || len(e.Result) == 0 {
			info.ShardErrors = append(info.ShardErrors, fmt.Sprintf("shard %s ended %s: %s", e.ID, e.Outcome, e.Error))
			continue
		}
		var err error
		if typ == tasks.TypeVerify {
			err = addResult(vr, e.Result)
		} else {
			err = addResult(sr, e.Result)
		}
		if err != nil {
			info.ShardErrors = append(info.ShardErrors, fmt.Sprintf("shard %s: result: %v", e.ID, err))
		}
	}
	secs := 0.0
	if created, _ := strconv.ParseInt(m["created"], 10, 64); created > 0 {
		secs = time.Since(time.UnixMilli(created)).Seconds()
	}
	if typ == tasks.TypeVerify {
		vr.Seconds = secs
		if secs > 0 {
			vr.MiBPerSecond = float64(vr.Bytes) / (1 << 20) / secs
		}
		return &JobVerifyResult{VerifyResult: vr, Job: info}, nil
	}
	sr.Seconds = secs
	if secs > 0 {
		sr.MiBPerSecond = float64(sr.Bytes) / (1 << 20) / secs
	}
	return &JobSyncResult{SyncResult: sr, Job: info}, nil
}

// addResult adds a shard's JSON result to t.
func addResult[R any, P interface {
	*R
	Add(*R)
}](t P, b []byte) error {
	var r R
	if err := json.Unmarshal(b, &r); err != nil {
		return err
	}
	t.Add(&r)
	return nil
}

// cancelJob cancels a sharded job: every shard, then the job's task,
// which keeps its record (archived, outcome cancelled).
func cancelJob(ctx context.Context, rdb redis.UniversalClient, ins *asynq.Inspector, id string) (asynq.TaskState, error) {
	info, err := liveTask(ins, id)
	if err != nil {
		return taskState(info), err
	}
	// The mark first: a shard starting meanwhile sees it and stops.
	if err := markCancelled(ctx, rdb, id); err != nil {
		return info.State, err
	}
	m, err := rdb.HGetAll(ctx, jobKey(id)).Result()
	if err != nil {
		return info.State, fmt.Errorf("cancel task %s: %w", id, err)
	}
	n, _ := strconv.Atoi(m["n"])
	for i := range n {
		_, err := Cancel(ctx, rdb, ins, tasks.ShardID(id, i))
		if err != nil && !errors.Is(err, ErrTaskNotFound) && !errors.Is(err, ErrFinished) {
			return info.State, err
		}
	}
	if info.State == asynq.TaskStateActive {
		if err := ins.CancelProcessing(id); err != nil {
			return info.State, fmt.Errorf("cancel task %s: %w", id, err)
		}
		err = archiveWhenStopped(ctx, ins, info.Queue, id)
	} else {
		b, _ := finalRecord(tasks.Result{Outcome: OutcomeCancelled, Error: ErrCancelled.Error()}, nil, time.Now())
		rec := &recorder{queue: info.Queue, id: id}
		if err := writeIfExists.Run(ctx, rdb, []string{rec.taskKey()}, b).Err(); err != nil {
			return info.State, fmt.Errorf("cancel task %s: %w", id, err)
		}
		_ = AppendLog(ctx, rdb, id, info.Type, true, "TASK ERROR: "+OutcomeCancelled+": "+ErrCancelled.Error())
		err = archiveWhenStopped(ctx, ins, info.Queue, id)
	}
	keepShardLogs(ctx, rdb, id, n, max(logTTL(info.Type), archiveRetention))
	rdb.Del(ctx, ledgerKey(id), jobKey(id))
	return info.State, err
}

// isSharded tells a job to split from a payload that only names shards
// (a one-snapshot verify runs as one task).
func isSharded(p tasks.Payload) bool {
	switch p := p.(type) {
	case *tasks.Verify:
		return p.Sharded() && p.Snapshot == ""
	case *tasks.Sync:
		return p.Sharded()
	}
	return false
}

// jobLog is the log of a run of a planned job's task: its polls while
// the shards run add no lines (the shards' ends are logged as they are
// settled). Nil for any other run.
func (w *Worker) jobLog(ctx context.Context, p tasks.Payload, id string) *runLog {
	if !isSharded(p) {
		return nil
	}
	bctx, cancel := bookkeeping(ctx)
	defer cancel()
	if n, err := w.rdb.Exists(bctx, jobKey(id)).Result(); err != nil || n == 0 {
		return nil
	}
	return newRunLog(w.rdb, id, p.TaskType(), w.log)
}
