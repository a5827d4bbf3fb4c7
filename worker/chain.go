package worker

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/pbsq/pbsq/datastore/name"
	"github.com/pbsq/pbsq/internal/tick"
	"github.com/pbsq/pbsq/tasks"
)

// Job chains (`pbsq enqueue ... --after ID`). A dependent task is queued
// at once, as a scheduled task held far in the future, so that `tasks
// show/wait/cancel` work on it from the start; a durable record in Redis
// names the tasks it runs after:
//
//	pbsq:chain:deps           set of held dependents
//	pbsq:chain:dep:<id>       hash: after (ids, comma-separated), type, created
//	pbsq:chain:waiters:<id>   set of the dependents waiting for task id
//
// When a task ends, its worker settles its waiters (the fast path). A
// dependent is released (asynq RunTask) once every task it names completed
// with outcome ok, read from their final records; if one ended otherwise,
// or is gone, the dependent gets a final record naming it and is archived,
// never run. The record is deleted only after that, so a worker dying at
// any point in between loses nothing: every worker settles all held
// dependents when it starts and every ChainInterval, from the records
// alone (a parent whose final record is written counts as ended even if
// its worker died before asynq marked it).

const (
	chainDepsKey = "pbsq:chain:deps"
	// chainHold is how far in the future a held dependent is scheduled.
	chainHold = 100 * 365 * 24 * time.Hour
	// chainGrace spares a record whose task is not queued yet: the record
	// is written first, then the task.
	chainGrace = time.Minute
	// chainSettleTTL bounds one settling of a dependent; its claim is
	// short, so that one left by a dead worker soon frees the dependent.
	chainSettleTTL   = 30 * time.Second
	chainSettleClaim = 5 * time.Second
	// DefaultChainInterval is how often a worker settles held dependents.
	DefaultChainInterval = 30 * time.Second
)

func chainDepKey(id string) string     { return "pbsq:chain:dep:" + id }
func chainWaitersKey(id string) string { return "pbsq:chain:waiters:" + id }
func chainSettleKey(id string) string  { return "pbsq:chain:settle:" + id }

// crashAt is a test hook: "chain-handover" kills the worker (SIGKILL) when
// a task that others wait for has ended and before they are settled;
// "shard-publish" when a shard published its first chunk verdicts;
// "shard-stall" makes shards wait for cancellation instead.
var crashAt = os.Getenv("PBSQ_TEST_CRASH_AT")

// IsChainHold reports whether a scheduled task's next run is a chain's
// hold rather than a time.
func IsChainHold(next time.Time) bool { return time.Until(next) > chainHold/2 }

// EnqueueAfter queues p to run only after every task in after completed
// ok. An unknown id is bad input (name.ErrInvalid, naming it) and
// nothing is queued.
func (e *Enqueuer) EnqueueAfter(ctx context.Context, p tasks.Payload, after []string, opts ...asynq.Option) (*asynq.TaskInfo, error) {
	if len(after) == 0 {
		return e.Enqueue(ctx, p, opts...)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	var ids []string
	for _, a := range after {
		if !ValidTaskID(a) {
			return nil, fmt.Errorf("%w --after %q: not a task id", name.ErrInvalid, a)
		}
		if slices.Contains(ids, a) {
			continue
		}
		_, err := FindTask(e.ins, a)
		if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
			return nil, fmt.Errorf("%w --after %q: no such task (finished tasks are kept %s)", name.ErrInvalid, a, tasks.Retention)
		}
		if err != nil {
			return nil, fmt.Errorf("--after %s: %w", a, err)
		}
		ids = append(ids, a)
	}
	id := strings.ToLower(rand.Text())
	_, err := e.rdb.TxPipelined(ctx, func(p2 redis.Pipeliner) error {
		p2.HSet(ctx, chainDepKey(id), "after", strings.Join(ids, ","), "type", p.TaskType(), "created", time.Now().UnixMilli())
		p2.SAdd(ctx, chainDepsKey, id)
		for _, a := range ids {
			p2.SAdd(ctx, chainWaitersKey(a), id)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("enqueue: record chain: %w", err)
	}
	info, err := e.Enqueue(ctx, p, append(opts, asynq.TaskID(id), asynq.ProcessAt(time.Now().Add(chainHold)))...)
	if err != nil {
		dctx, cancel := bookkeeping(ctx)
		defer cancel()
		dropChain(dctx, e.rdb, id, ids)
		return nil, err
	}
	_ = AppendLog(ctx, e.rdb, id, p.TaskType(), false, "queued to run after task(s) "+strings.Join(ids, ", ")+" complete ok")
	// The tasks may have ended already.
	if _, err := settleChain(ctx, e.rdb, e.ins, id); err != nil {
		return info, fmt.Errorf("task %s queued; settling its chain: %w", id, err)
	}
	return info, nil
}

func dropChain(ctx context.Context, rdb redis.UniversalClient, id string, after []string) {
	_, _ = rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, chainDepKey(id))
		p.SRem(ctx, chainDepsKey, id)
		for _, a := range after {
			p.SRem(ctx, chainWaitersKey(a), id)
		}
		return nil
	})
}

// parentState tells whether task id ended ok ("ok"), ended otherwise
// (a reason naming it) or has not ended ("").
func parentState(ins *asynq.Inspector, id string) (ok bool, failed string, err error) {
	info, err := FindTask(ins, id)
	if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
		return false, fmt.Sprintf("task %s is gone (deleted, or cancelled while queued)", id), nil
	}
	if err != nil {
		return false, "", err
	}
	rec, _ := tasks.ParseRecord(info.Result)
	if rec.State == "done" {
		if rec.Outcome == tasks.OutcomeOK {
			return true, "", nil
		}
		r := fmt.Sprintf("task %s (%s) ended %s", id, info.Type, rec.Outcome)
		if rec.Error != "" {
			r += ": " + rec.Error
		}
		return false, r, nil
	}
	switch info.State {
	case asynq.TaskStateCompleted:
		return true, "", nil
	case asynq.TaskStateArchived:
		return false, fmt.Sprintf("task %s (%s) was archived: %s", id, info.Type, info.LastErr), nil
	}
	return false, "", nil
}

// settleChain releases or fails held dependent id if the tasks it waits for
// allow; it reports whether the dependent's record is gone afterwards.
func settleChain(ctx context.Context, rdb redis.UniversalClient, ins *asynq.Inspector, id string) (bool, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), chainSettleTTL)
	defer cancel()
	token := strconv.FormatInt(time.Now().UnixNano(), 10)
	got, err := rdb.SetNX(ctx, chainSettleKey(id), token, chainSettleClaim).Result()
	if err != nil || !got {
		return false, err // another worker settles it now
	}
	defer rdb.Del(ctx, chainSettleKey(id))
	m, err := rdb.HGetAll(ctx, chainDepKey(id)).Result()
	if err != nil {
		return false, err
	}
	if len(m) == 0 {
		return true, rdb.SRem(ctx, chainDepsKey, id).Err()
	}
	after := strings.Split(m["after"], ",")
	info, err := FindTask(ins, id)
	switch {
	case errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound):
		created, _ := strconv.ParseInt(m["created"], 10, 64)
		if time.Since(time.UnixMilli(created)) < chainGrace {
			return false, nil // being queued
		}
		dropChain(ctx, rdb, id, after) // cancelled (deleted)
		return true, nil
	case err != nil:
		return false, err
	case info.State != asynq.TaskStateScheduled:
		dropChain(ctx, rdb, id, after) // released before
		return true, nil
	}
	var failed []string
	ready := true
	for _, a := range after {
		ok, why, err := parentState(ins, a)
		if err != nil {
			return false, err
		}
		if why != "" {
			failed = append(failed, why)
		}
		ready = ready && ok
	}
	switch {
	case len(failed) > 0:
		msg := "not run: " + strings.Join(failed, "; ")
		if err := failChained(ctx, rdb, ins, info, msg); err != nil {
			return false, err
		}
	case ready:
		_ = AppendLog(ctx, rdb, id, info.Type, false, "task(s) "+strings.Join(after, ", ")+" completed ok: released to run")
		if err := ins.RunTask(info.Queue, id); err != nil {
			if now, err2 := ins.GetTaskInfo(info.Queue, id); err2 != nil || now.State == asynq.TaskStateScheduled {
				return false, fmt.Errorf("release task %s: %w", id, err)
			}
		}
	default:
		return false, nil
	}
	dropChain(ctx, rdb, id, after)
	return true, nil
}

// failChained ends a held dependent without running it: its final record
// and log name the task that failed, and it is archived.
func failChained(ctx context.Context, rdb redis.UniversalClient, ins *asynq.Inspector, info *asynq.TaskInfo, msg string) error {
	rec := &recorder{ctx: ctx, rdb: rdb, log: nil, queue: info.Queue, id: info.ID}
	b, err := finalRecord(tasks.Result{Outcome: tasks.OutcomeFailed, Error: msg}, nil, time.Now())
	if err != nil {
		return err
	}
	if err := writeIfExists.Run(ctx, rdb, []string{rec.taskKey()}, b).Err(); err != nil {
		return fmt.Errorf("record of task %s: %w", info.ID, err)
	}
	_ = AppendLog(ctx, rdb, info.ID, info.Type, true, "TASK ERROR: "+tasks.OutcomeFailed+": "+msg)
	if err := ins.ArchiveTask(info.Queue, info.ID); err != nil {
		if now, err2 := ins.GetTaskInfo(info.Queue, info.ID); err2 != nil || now.State == asynq.TaskStateScheduled {
			return fmt.Errorf("archive task %s: %w", info.ID, err)
		}
	}
	return nil
}

// handOver settles the tasks chained after task id, which just ended.
func (w *Worker) handOver(ctx context.Context, id string) {
	ctx, cancel := bookkeeping(ctx)
	defer cancel()
	deps, err := w.rdb.SMembers(ctx, chainWaitersKey(id)).Result()
	if err != nil {
		w.log.Warn("chained tasks not settled; the periodic check will", "task_id", id, "err", err)
		return
	}
	if len(deps) == 0 {
		return
	}
	if crashAt == "chain-handover" {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
	for _, d := range deps {
		if _, err := settleChain(ctx, w.rdb, w.ins, d); err != nil {
			w.log.Warn("chained task not settled; the periodic check will", "task_id", d, "after", id, "err", err)
		}
	}
	w.rdb.Del(ctx, chainWaitersKey(id))
}

// settleAll settles every held dependent (on start and periodically).
func (w *Worker) settleAll(ctx context.Context) {
	deps, err := w.rdb.SMembers(ctx, chainDepsKey).Result()
	if err != nil {
		w.log.Debug("chains not checked", "err", err)
		return
	}
	for _, d := range deps {
		if ctx.Err() != nil {
			return
		}
		if _, err := settleChain(ctx, w.rdb, w.ins, d); err != nil {
			w.log.Warn("chained task not settled", "task_id", d, "err", err)
		}
	}
}

// chainLoop settles held dependents every interval.
func (w *Worker) chainLoop(ctx context.Context, every time.Duration) {
	tick.Loop(ctx, every, func() bool {
		w.settleAll(ctx)
		return true
	})
}

// endedBefore finishes a re-run of a task whose earlier run already wrote
// its final record (its worker died before asynq marked it done): the
// operation is not run again, and its chained tasks are settled.
func (w *Worker) endedBefore(ctx context.Context, rec *recorder, l *runLog) (bool, error) {
	bctx, cancel := bookkeeping(ctx)
	defer cancel()
	b, err := w.rdb.HGet(bctx, rec.taskKey(), "result").Bytes()
	if err != nil {
		return false, nil
	}
	prev, err := tasks.ParseRecord(b)
	if err != nil || prev.State != "done" {
		return false, nil
	}
	l.Close(false, "ended before its worker stopped ("+prev.Outcome+"); not run again")
	w.handOver(ctx, rec.id)
	switch prev.Outcome {
	case tasks.OutcomeOK, tasks.OutcomeSkipped:
		return true, nil
	}
	return true, fmt.Errorf("%s: %s: %w", prev.Outcome, prev.Error, asynq.SkipRetry)
}
