package worker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/pbsq/pbsq/datastore/lock"
)

// What happens to a task that does not finish (docs/DESIGN.md §3.3, §5.4):
//
//   - A whole task refused by a lock (lock.ErrBusy) is re-queued after a
//     short jittered delay without spending its retry budget (IsFailure is
//     false for it), until it has been refused for BusyLimit since its first
//     refusal; then it is archived with outcome busy. The first refusal is
//     kept in Redis (pbsq:busy-since:<task id>), so the limit holds across
//     workers and restarts.
//   - A task whose worker died (asynq.ErrLeaseExpired) is resumed after the
//     same short delay: the crash was not the task's fault.
//   - Other errors get asynq's exponential backoff, tasks.MaxRetry times.
//   - `pbsq tasks cancel` marks the task (pbsq:cancel:<task id>) before
//     cancelling it, so a cancelled task never runs again, even if it was
//     re-queued in between.

const (
	// DefaultBusyLimit is how long a busy task keeps being re-queued.
	DefaultBusyLimit = time.Hour
	// busySinceTTL outlives BusyLimit, so that the key cannot expire while
	// it still matters, yet never piles up.
	busySinceTTL = 2 * time.Hour
	// cancelTTL matches the retention of finished tasks.
	cancelTTL = 7 * 24 * time.Hour
	// redisTimeout bounds the worker's own bookkeeping calls.
	redisTimeout = 5 * time.Second
)

// ErrCancelled is the error of a task stopped by Cancel.
var ErrCancelled = errors.New("cancelled by request (pbsq tasks cancel)")

// ErrTaskNotFound is returned by Cancel for an unknown task id.
var ErrTaskNotFound = asynq.ErrTaskNotFound

// ErrFinished is returned by Cancel for a task that already ended.
var ErrFinished = errors.New("task already finished")

func busySinceKey(id string) string { return "pbsq:busy-since:" + id }
func cancelKey(id string) string    { return "pbsq:cancel:" + id }

// defaultBusyDelay spreads busy re-queues over 5–15 s, so that tasks
// waiting for the same lock do not come back in lockstep.
func defaultBusyDelay() time.Duration { return 5*time.Second + rand.N(10*time.Second) }

// busyError is a busy task going back to the queue; it wraps the lock's
// error, so errors.Is(err, lock.ErrBusy) holds.
type busyError struct {
	err   error
	since time.Time
}

func (e *busyError) Error() string {
	return fmt.Sprintf("re-queued, locks busy since %s: %v", e.since.UTC().Format(time.RFC3339), e.err)
}

func (e *busyError) Unwrap() error { return e.err }

// isFailure is asynq's Config.IsFailure: busy re-queues spend no retries.
// A cancellation does count (Cancel archives the task right after), which
// marks a re-run, should there be one, as one to check for the mark.
func isFailure(err error) bool {
	return !errors.Is(err, lock.ErrBusy) && !errors.Is(err, errJobWaiting)
}

// retryDelay is asynq's Config.RetryDelayFunc.
func (w *Worker) retryDelay(n int, err error, t *asynq.Task) time.Duration {
	if errors.Is(err, lock.ErrBusy) || errors.Is(err, asynq.ErrLeaseExpired) {
		return w.busyDelay()
	}
	if errors.Is(err, errJobWaiting) {
		return jobPoll
	}
	return asynq.DefaultRetryDelayFunc(n, err, t)
}

// bookkeeping returns a context for the worker's own Redis calls that
// survives the task's cancellation, so that a cancelled task can still
// record why it ended.
func bookkeeping(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), redisTimeout)
}

// busySince records the first busy refusal of task id (now, if this is
// it) and returns it.
func (w *Worker) busySince(ctx context.Context, id string) (time.Time, error) {
	ctx, cancel := bookkeeping(ctx)
	defer cancel()
	now := time.Now()
	set, err := w.rdb.SetNX(ctx, busySinceKey(id), now.UnixMilli(), busySinceTTL).Result()
	if err != nil || set {
		return now, err
	}
	v, err := w.rdb.Get(ctx, busySinceKey(id)).Result()
	if err != nil {
		return now, err
	}
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return now, fmt.Errorf("busy-since of task %s: %w", id, err)
	}
	return time.UnixMilli(ms), nil
}

// clearBusy forgets the busy episode of a task that went on.
func (w *Worker) clearBusy(ctx context.Context, id string) {
	ctx, cancel := bookkeeping(ctx)
	defer cancel()
	if err := w.rdb.Del(ctx, busySinceKey(id)).Err(); err != nil {
		w.log.Debug("busy-since not cleared", "task_id", id, "err", err)
	}
}

// cancelRequested reports whether Cancel marked task id.
func (w *Worker) cancelRequested(ctx context.Context, id string) bool {
	ctx, cancel := bookkeeping(ctx)
	defer cancel()
	n, err := w.rdb.Exists(ctx, cancelKey(id)).Result()
	if err != nil {
		w.log.Warn("cannot check for cancellation", "task_id", id, "err", err)
	}
	return n > 0
}

// Cancel stops a task of the pbsq queue. A pending, scheduled or retrying
// task is deleted. A running one is marked, its handler's context is
// cancelled (the worker stops within about a second), and once asynq has
// put it back in the queue it is archived, keeping its record. It returns
// the state the task was in.
func Cancel(ctx context.Context, rdb redis.UniversalClient, ins *asynq.Inspector, id string) (asynq.TaskState, error) {
	if n, err := rdb.Exists(ctx, jobKey(id)).Result(); err == nil && n > 0 {
		return cancelJob(ctx, rdb, ins, id)
	}
	for attempt := 0; ; attempt++ {
		info, err := liveTask(ins, id)
		if err != nil {
			return taskState(info), err
		}
		switch info.State {
		case asynq.TaskStateActive:
			if err := markCancelled(ctx, rdb, id); err != nil {
				return info.State, err
			}
			if err := ins.CancelProcessing(id); err != nil {
				return info.State, fmt.Errorf("cancel task %s: %w", id, err)
			}
			return info.State, archiveWhenStopped(ctx, ins, info.Queue, id)
		default:
			// Mark first: a worker dequeuing it meanwhile sees the mark.
			if err := markCancelled(ctx, rdb, id); err != nil {
				return info.State, err
			}
			err := ins.DeleteTask(info.Queue, id)
			if err == nil || errors.Is(err, asynq.ErrTaskNotFound) {
				return info.State, nil
			}
			if attempt >= 3 {
				return info.State, fmt.Errorf("cancel task %s: %w", id, err)
			}
			// Most likely a worker took it just now: look again.
		}
	}
}

// liveTask finds task id for Cancel: ErrTaskNotFound when no queue holds
// it, ErrFinished (with the task's info) when it has completed or been
// archived, so that nothing is left to stop.
func liveTask(ins *asynq.Inspector, id string) (*asynq.TaskInfo, error) {
	info, err := FindTask(ins, id)
	if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
		return nil, fmt.Errorf("task %q: %w", id, ErrTaskNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("cancel task %s: %w", id, err)
	}
	switch info.State {
	case asynq.TaskStateCompleted, asynq.TaskStateArchived:
		return info, fmt.Errorf("task %s is %s: %w", id, info.State, ErrFinished)
	}
	return info, nil
}

// taskState is info's state, or 0 when there is no info.
func taskState(info *asynq.TaskInfo) asynq.TaskState {
	if info == nil {
		return 0
	}
	return info.State
}

// markCancelled sets the mark that a handler (or a shard about to start)
// checks to stop task id.
func markCancelled(ctx context.Context, rdb redis.UniversalClient, id string) error {
	if err := rdb.Set(ctx, cancelKey(id), time.Now().Unix(), cancelTTL).Err(); err != nil {
		return fmt.Errorf("cancel task %s: %w", id, err)
	}
	return nil
}

// archiveWhenStopped waits for asynq to move a cancelled task out of the
// active state (it does at once, into retry) and archives it there.
func archiveWhenStopped(ctx context.Context, ins *asynq.Inspector, queue, id string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, err := ins.GetTaskInfo(queue, id)
		if err != nil {
			return fmt.Errorf("cancel task %s: %w", id, err)
		}
		switch info.State {
		case asynq.TaskStateArchived, asynq.TaskStateCompleted:
			return nil
		case asynq.TaskStatePending, asynq.TaskStateScheduled, asynq.TaskStateRetry:
			err := ins.ArchiveTask(queue, id)
			if err == nil || errors.Is(err, asynq.ErrTaskNotFound) {
				return nil
			}
			// It may have been dequeued again; the mark stops it then.
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("task %s: cancellation requested, but it is still %s; it will be archived when its worker stops it", id, info.State)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
