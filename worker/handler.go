package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
	"github.com/pbsq/pbsq/tasks"
)

// Outcomes of a run beyond those a finished task records in tasks.
const (
	// OutcomeCancelled: stopped by Cancel; archived, never re-run.
	OutcomeCancelled = "cancelled"
	// OutcomeRetry: failed, and asynq retries it with backoff.
	OutcomeRetry = "retry"
	// OutcomeInterrupted: the worker stopped first (shutdown timeout,
	// lost lease); asynq re-queues it and the operation resumes safely.
	OutcomeInterrupted = "interrupted"
)

// ProcessTask implements asynq.Handler: the mux, but refusing unknown task
// types at once instead of retrying them.
func (w *Worker) ProcessTask(ctx context.Context, t *asynq.Task) error {
	if err := w.verifyTask(ctx, t); err != nil {
		return err
	}
	h, pattern := w.mux.Handler(t)
	if pattern == "" {
		return w.invalid(ctx, "unknown", t, fmt.Errorf("%w task type %q: this worker handles %v", name.ErrInvalid, t.Type(), tasks.Types))
	}
	return h.ProcessTask(ctx, t)
}

// handler is the thin handler of one task type.
func (w *Worker) handler(typ string) asynq.Handler {
	return asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
		if t.Type() != typ { // the mux also routes by prefix
			return w.invalid(ctx, "unknown", t, fmt.Errorf("%w task type %q", name.ErrInvalid, t.Type()))
		}
		return w.run(ctx, typ, t)
	})
}

// run decodes, executes and records one task.
func (w *Worker) run(ctx context.Context, typ string, t *asynq.Task) error {
	w.running.Add(1)
	defer w.running.Done()
	if w.onDone != nil {
		defer w.onDone()
	}
	p, err := tasks.Decode(typ, t.Payload())
	if err != nil {
		return w.invalid(ctx, typ, t, err)
	}
	rec := newRecorder(ctx, w.rdb, t, w.log)
	log := w.log.With("task_id", rec.id, "type", typ)
	start := time.Now()
	shards, sh := tasks.ShardInfo(p)
	// A sharded job's own task plans and waits; its shards take the slots.
	job := sh == nil && shards > 1 && isSharded(p)
	tl := w.jobLog(ctx, p, rec.id)
	if tl == nil && !job && w.capped(p.Stores()) {
		tl = w.startLogUnstarted(ctx, rec.id, typ, t.Payload())
	} else if tl == nil {
		tl = w.startLog(ctx, rec.id, typ, t.Payload())
	}
	ctx = withTaskLog(ctx, tl)
	// Only a re-run can carry a cancel mark (Cancel stops a running task,
	// which asynq re-queues as a failed attempt, and archives it; if that
	// was interrupted, the mark stops the re-run here). First runs skip
	// the round trip.
	if retried, _ := asynq.GetRetryCount(ctx); retried > 0 {
		if done, ret := w.endedBefore(ctx, rec, tl); done {
			if _, sh := tasks.ShardInfo(p); sh != nil {
				w.shardEnded(ctx, sh)
			}
			return ret
		}
		cancelled, err := rec.start()
		if err != nil {
			log.Warn("cannot record the task's start", "err", err)
		}
		if cancelled {
			rec.final(tasks.Result{Outcome: OutcomeCancelled, Error: ErrCancelled.Error()}, nil, start)
			w.endLog(ctx, tl, rec.id, OutcomeCancelled, ErrCancelled)
			w.metrics.finished(typ, OutcomeCancelled, 0)
			return fmt.Errorf("%w: %w", ErrCancelled, asynq.SkipRetry)
		}
	}
	if job {
		return w.runJob(ctx, typ, p, rec, tl, log, start)
	}
	if sh != nil {
		if w.cancelRequested(ctx, sh.Job) {
			// The job was cancelled before this shard started.
			rec.final(tasks.Result{Outcome: OutcomeCancelled, Error: ErrCancelled.Error()}, nil, start)
			w.endLog(ctx, tl, rec.id, OutcomeCancelled, ErrCancelled)
			w.metrics.finished(typ, OutcomeCancelled, 0)
			w.shardEnded(ctx, sh)
			return fmt.Errorf("%w: %w", ErrCancelled, asynq.SkipRetry)
		}
		stop := heartbeat(ctx, w.rdb, sh.Job, rec.id)
		defer stop()
		ctx = context.WithValue(ctx, shareKey{}, datastore.ChunkShare(&ledger{rdb: w.rdb, job: sh.Job, owner: rec.id, cap: w.ledgerCap}))
		defer func() {
			if w.metrics != nil {
				w.metrics.progress.DeleteLabelValues(typ, sh.Job)
			}
		}()
	}
	ectx, lose := context.WithCancelCause(ctx)
	defer lose(nil)
	release, err := w.takeSlots(ctx, p.Stores(), rec.id, log, lose)
	if err != nil {
		outcome, ret := w.conclude(ctx, log, rec, nil, err, start)
		w.endLog(ctx, tl, rec.id, outcome, ret)
		w.metrics.finished(typ, outcome, 0)
		return ret
	}
	defer release()
	tl.markStarted()
	gauge, end := w.metrics.started(typ, rec.id)
	write := rec.write
	if sh != nil {
		write = func(b []byte) error {
			err := rec.write(b)
			w.shardProgress(ctx, sh, typ, b)
			return err
		}
	}
	rep := newReporter(write, gauge, w.every, log)
	res, err := Execute(ectx, w.stores, p, rec.id, rep.update)
	if cause := context.Cause(ectx); ctx.Err() == nil && cause != nil {
		err = cause
	}
	rep.stop()
	outcome, ret := w.conclude(ctx, log, rec, res, err, start)
	if sh == nil {
		// A shard's success is not its job's: the job records its own.
		w.recordOutcome(ctx, p, outcome, res)
	}
	w.endLog(ctx, tl, rec.id, outcome, logReason(ret, res))
	end(outcome, time.Since(start))
	if sh != nil && outcome != OutcomeRetry && outcome != OutcomeInterrupted && !errors.Is(ret, lock.ErrBusy) {
		w.shardEnded(ctx, sh)
	}
	return ret
}

// invalid archives a task whose type or payload is unusable, with the
// reason, without retrying it.
func (w *Worker) invalid(ctx context.Context, typ string, t *asynq.Task, err error) error {
	rec := newRecorder(ctx, w.rdb, t, w.log)
	rec.final(tasks.Result{Outcome: tasks.OutcomeInvalid, Error: err.Error()}, nil, time.Now())
	w.endLog(ctx, w.startLog(ctx, rec.id, t.Type(), t.Payload()), rec.id, tasks.OutcomeInvalid, err)
	w.metrics.finished(typ, tasks.OutcomeInvalid, 0)
	w.log.Warn("invalid task archived", "task_id", rec.id, "type", t.Type(), "err", err)
	return fmt.Errorf("%v: %w", err, asynq.SkipRetry)
}

// conclude turns what Execute returned into the task's record, its outcome
// and the error that tells asynq what to do next.
func (w *Worker) conclude(ctx context.Context, log *slog.Logger, rec *recorder, res Outcome, err error, start time.Time) (string, error) {
	final := func(outcome string, e error) {
		r := tasks.Result{Outcome: outcome}
		if e != nil {
			r.Error = e.Error()
		}
		rec.final(r, res, start)
		if e != nil {
			log.Info("task finished", "outcome", outcome, "seconds", time.Since(start).Seconds(), "err", e)
		} else {
			log.Info("task finished", "outcome", outcome, "seconds", time.Since(start).Seconds())
		}
	}
	if err == nil {
		var oc error
		if res != nil {
			oc = res.Outcome()
		}
		switch {
		case oc == nil:
			final(tasks.OutcomeOK, nil)
			return tasks.OutcomeOK, nil
		case errors.Is(oc, datastore.ErrSkipped):
			// Done as far as it can be; the skipped items are in the result.
			final(tasks.OutcomeSkipped, oc)
			return tasks.OutcomeSkipped, nil
		default:
			// Failed items (a corrupt snapshot) do not heal by retrying.
			final(tasks.OutcomeFailed, oc)
			return tasks.OutcomeFailed, fmt.Errorf("%v: %w", oc, asynq.SkipRetry)
		}
	}
	switch {
	case ctx.Err() != nil && w.cancelRequested(ctx, rec.id):
		final(OutcomeCancelled, ErrCancelled)
		return OutcomeCancelled, fmt.Errorf("%w: %w", ErrCancelled, asynq.SkipRetry)
	case ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded):
		// Shutdown timeout or lost lease: asynq re-queues the task and the
		// operation resumes; its record stays the last progress.
		log.Warn("task interrupted; it will be re-run", "err", err)
		return OutcomeInterrupted, err
	case errors.Is(err, lock.ErrBusy):
		return w.busy(ctx, log, rec, err, final)
	case errors.Is(err, name.ErrInvalid), errors.Is(err, datastore.ErrNotFound):
		// A precondition (missing namespace, move into itself) that no
		// retry can meet.
		final(tasks.OutcomeInvalid, err)
		return tasks.OutcomeInvalid, fmt.Errorf("%v: %w", err, asynq.SkipRetry)
	}
	retried, _ := asynq.GetRetryCount(ctx)
	maxRetry, _ := asynq.GetMaxRetry(ctx)
	if retried >= maxRetry {
		final(tasks.OutcomeFailed, err)
		return tasks.OutcomeFailed, err // asynq archives it
	}
	log.Warn("task failed; asynq retries it", "retried", retried, "max_retry", maxRetry, "err", err)
	w.clearBusy(ctx, rec.id)
	rec.progress(tasks.Progress{State: "retrying", Phase: "failed", Message: err.Error()})
	return OutcomeRetry, err
}

// busy re-queues a task refused by a lock, or gives up after the limit.
func (w *Worker) busy(ctx context.Context, log *slog.Logger, rec *recorder, err error, final func(string, error)) (string, error) {
	since, serr := w.busySince(ctx, rec.id)
	if serr != nil {
		// Without the record the limit cannot be enforced; a normal retry
		// keeps the task from looping forever.
		log.Warn("cannot record busy-since; retrying as a failure", "err", serr)
		return OutcomeRetry, fmt.Errorf("%v (busy-since not recorded: %v)", err, serr)
	}
	if waited := time.Since(since); waited >= w.busyLimit {
		e := fmt.Errorf("gave up: locks stayed busy for %s (since %s, limit %s): %w",
			waited.Round(time.Second), since.UTC().Format(time.RFC3339), w.busyLimit, err)
		final(tasks.OutcomeBusy, e)
		return tasks.OutcomeBusy, fmt.Errorf("%v: %w", e, asynq.SkipRetry)
	}
	be := &busyError{err: err, since: since}
	log.Info("task busy; re-queued", "busy_since", since, "err", err)
	rec.progress(tasks.Progress{State: "waiting", Phase: "lock busy", Message: be.Error()})
	return tasks.OutcomeBusy, be
}

// finalRecord is the JSON of a task's final record.
func finalRecord(res tasks.Result, out Outcome, start time.Time) ([]byte, error) {
	res.State = "done"
	res.Seconds = time.Since(start).Seconds()
	if out != nil {
		if b, err := json.Marshal(out); err == nil {
			res.Result = b
		}
	}
	return json.Marshal(res)
}

// recorder writes a task's record into its result field.
//
// Progress goes through asynq's ResultWriter. The start and the final
// record are written directly into the task's hash (asynq's key layout,
// base.TaskKey; what ResultWriter writes too), because each is batched with
// a key of pbsq's into one round trip (the final record is the only round
// trip of pbsq's own in a first run), and because a cancelled or timed-out
// task must still record why it ended, after asynq's ResultWriter stopped
// accepting writes.
type recorder struct {
	ctx   context.Context
	rdb   redis.UniversalClient
	rw    *asynq.ResultWriter
	log   *slog.Logger
	queue string
	id    string
}

func newRecorder(ctx context.Context, rdb redis.UniversalClient, t *asynq.Task, log *slog.Logger) *recorder {
	r := &recorder{ctx: ctx, rdb: rdb, rw: t.ResultWriter(), log: log, queue: tasks.Queue}
	if q, ok := asynq.GetQueueName(ctx); ok {
		r.queue = q
	}
	r.id, _ = asynq.GetTaskID(ctx)
	return r
}

func (r *recorder) taskKey() string { return "asynq:{" + r.queue + "}:t:" + r.id }

// writeIfExists sets a task's result field unless the task is gone
// (deleted meanwhile), which must not leave a stray hash behind.
var writeIfExists = redis.NewScript(`
if redis.call("EXISTS", KEYS[1]) == 0 then return 0 end
redis.call("HSET", KEYS[1], "result", ARGV[1])
return 1`)

// start records that a re-run runs, replacing the record of the earlier
// attempt, and reports whether Cancel marked the task.
func (r *recorder) start() (cancelled bool, err error) {
	b, _ := json.Marshal(tasks.Progress{State: "running", Phase: "starting", Updated: time.Now().Unix()})
	ctx, cancel := bookkeeping(r.ctx)
	defer cancel()
	var marked *redis.IntCmd
	_, err = r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		marked = p.Exists(ctx, cancelKey(r.id))
		// A running task's hash exists (asynq deletes only idle ones).
		p.HSet(ctx, r.taskKey(), "result", b)
		return nil
	})
	return marked.Val() > 0, err
}

// write stores a progress record.
func (r *recorder) write(b []byte) error {
	if r.ctx.Err() == nil && r.rw != nil {
		if _, err := r.rw.Write(b); err == nil || r.ctx.Err() == nil {
			return err
		}
	}
	ctx, cancel := bookkeeping(r.ctx)
	defer cancel()
	return writeIfExists.Run(ctx, r.rdb, []string{r.taskKey()}, b).Err()
}

func (r *recorder) progress(p tasks.Progress) {
	p.Updated = time.Now().Unix()
	if b, err := json.Marshal(p); err == nil {
		if err := r.write(b); err != nil {
			r.log.Warn("task record not written", "task_id", r.id, "err", err)
		}
	}
}

// final replaces the progress with the result record, and ends the task's
// busy episode, if any, in the same round trip.
func (r *recorder) final(res tasks.Result, out Outcome, start time.Time) {
	b, err := finalRecord(res, out, start)
	if err == nil {
		ctx, cancel := bookkeeping(r.ctx)
		defer cancel()
		_, err = r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			p.Del(ctx, busySinceKey(r.id))
			if r.ctx.Err() == nil {
				// Still active, so the hash exists: a plain write.
				p.HSet(ctx, r.taskKey(), "result", b)
			} else {
				// Eval, not Run: a pipeline cannot fall back from EVALSHA.
				writeIfExists.Eval(ctx, p, []string{r.taskKey()}, b)
			}
			return nil
		})
	}
	if err != nil {
		r.log.Warn("task record not written", "task_id", r.id, "err", err)
	}
}
