package worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/pbsq/pbsq/tasks"
)

// ErrDuplicate is wrapped by Enqueue's refusal of a job identical to one
// already queued or running (docs/DESIGN.md §5.3).
var ErrDuplicate = errors.New("identical task already queued")

// DuplicateError names the task that holds an identical job.
type DuplicateError struct {
	ID    string
	Type  string
	State asynq.TaskState
}

func (e *DuplicateError) Error() string {
	return fmt.Sprintf("an identical %s task is already %s: %s (see `pbsq tasks show %s`)", e.Type, e.State, e.ID, e.ID)
}

func (e *DuplicateError) Unwrap() error { return ErrDuplicate }

// Enqueuer puts pbsq tasks on the queue, refusing duplicates. The CLI and
// schedules use it; it shares one Redis connection for all its parts.
type Enqueuer struct {
	rdb    redis.UniversalClient
	client *asynq.Client
	ins    *asynq.Inspector
	keys   *tasks.Keys
	// perStore routes each task to the queue of its stores.
	perStore bool
}

// QueuePerStore routes every task to the queue of its stores
// (tasks.QueueFor), which only workers having those stores listen to.
func (e *Enqueuer) QueuePerStore() { e.perStore = true }

// SignWith makes Enqueue sign every task with k (nil: unsigned).
func (e *Enqueuer) SignWith(k *tasks.Keys) { e.keys = k }

// NewEnqueuer connects to the queue's Redis.
func NewEnqueuer(opt asynq.RedisConnOpt) (*Enqueuer, error) {
	rdb, ok := opt.MakeRedisClient().(redis.UniversalClient)
	if !ok {
		return nil, fmt.Errorf("enqueue: unsupported Redis connection %T", opt)
	}
	return &Enqueuer{rdb: rdb, client: asynq.NewClientFromRedisClient(rdb), ins: asynq.NewInspectorFromRedisClient(rdb)}, nil
}

// Inspector is the queue's inspector (on the same connection).
func (e *Enqueuer) Inspector() *asynq.Inspector { return e.ins }

// Redis is the connection.
func (e *Enqueuer) Redis() redis.UniversalClient { return e.rdb }

// Close closes the connection.
func (e *Enqueuer) Close() error { return e.rdb.Close() }

// enqueueGuard serialises the check-then-enqueue of one job across
// processes, so two CLIs cannot both find no duplicate and both enqueue.
const enqueueGuardTTL = 30 * time.Second

// Enqueue validates p and queues it, unless an identical job (same type,
// same canonical payload) is pending, scheduled, retrying or active: then
// it returns a *DuplicateError naming that task.
func (e *Enqueuer) Enqueue(ctx context.Context, p tasks.Payload, opts ...asynq.Option) (*asynq.TaskInfo, error) {
	var task *asynq.Task
	var err error
	if e.perStore {
		opts = append([]asynq.Option{asynq.Queue(tasks.QueueFor(p))}, opts...)
	}
	if e.keys != nil {
		task, err = tasks.NewSignedTask(p, e.keys, time.Now(), opts...)
	} else {
		task, err = tasks.NewTask(p, opts...)
	}
	if err != nil {
		return nil, err
	}
	guard := "pbsq:enqueue:" + tasks.Fingerprint(p)
	token := fmt.Sprint(time.Now().UnixNano())
	for {
		ok, err := e.rdb.SetNX(ctx, guard, token, enqueueGuardTTL).Result()
		if err != nil {
			return nil, fmt.Errorf("enqueue: %w", err)
		}
		if ok {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	defer func() {
		// Only our own guard: it may have expired and been taken over.
		ctx, cancel := bookkeeping(ctx)
		defer cancel()
		if v, err := e.rdb.Get(ctx, guard).Result(); err == nil && v == token {
			e.rdb.Del(ctx, guard)
		}
	}()
	dup, err := e.FindDuplicate(ctx, p)
	if err != nil {
		return nil, err
	}
	if dup != nil {
		return nil, &DuplicateError{ID: dup.ID, Type: dup.Type, State: dup.State}
	}
	info, err := e.client.EnqueueContext(ctx, task)
	if err != nil {
		return nil, fmt.Errorf("enqueue %s: %w", p.TaskType(), err)
	}
	return info, nil
}

// dupPage is the page size of the duplicate scan.
const dupPage = 500

// FindDuplicate returns a pending, scheduled, retrying or active task with
// the same type and canonical payload as p, or nil.
func (e *Enqueuer) FindDuplicate(ctx context.Context, p tasks.Payload) (*asynq.TaskInfo, error) {
	want, err := tasks.Encode(p)
	if err != nil {
		return nil, err
	}
	for _, q := range []string{tasks.QueueFor(p), tasks.Queue} {
		dup, err := e.findDuplicateIn(ctx, q, p.TaskType(), want)
		if dup != nil || err != nil {
			return dup, err
		}
	}
	return nil, nil
}

// findDuplicateIn is FindDuplicate in one queue.
func (e *Enqueuer) findDuplicateIn(ctx context.Context, queue, typ string, want []byte) (*asynq.TaskInfo, error) {
	lists := []func(string, ...asynq.ListOption) ([]*asynq.TaskInfo, error){
		e.ins.ListActiveTasks, e.ins.ListPendingTasks, e.ins.ListRetryTasks, e.ins.ListScheduledTasks,
	}
	for _, list := range lists {
		for page := 1; ; page++ {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			infos, err := list(queue, asynq.PageSize(dupPage), asynq.Page(page))
			if errors.Is(err, asynq.ErrQueueNotFound) {
				return nil, nil // nothing was ever queued
			}
			if err != nil {
				return nil, fmt.Errorf("look for duplicates: %w", err)
			}
			for _, info := range infos {
				if info.Type == typ && sameJob(info.Type, info.Payload, want) {
					return info, nil
				}
			}
			if len(infos) < dupPage {
				break
			}
		}
	}
	return nil, nil
}

// sameJob compares payloads canonically (decoded and re-encoded), so that
// key order, spacing or key case do not hide a duplicate. Defaults spelled
// out (merge-group=true) still count as different jobs.
func sameJob(typ string, payload, canonical []byte) bool {
	if bytes.Equal(payload, canonical) {
		return true
	}
	q, err := tasks.Decode(typ, payload)
	if err != nil {
		return false
	}
	b, err := tasks.Encode(q)
	return err == nil && bytes.Equal(b, canonical)
}
