package worker

import (
	"context"
	"slices"
	"time"

	"github.com/hibiken/asynq"

	"github.com/pbsq/pbsq/tasks"
)

// verifyTask checks a task's signature when the worker has keys; a task
// that fails is archived as invalid before anything decodes or runs it.
func (w *Worker) verifyTask(ctx context.Context, t *asynq.Task) error {
	if w.keys == nil {
		return nil
	}
	id, _ := asynq.GetTaskID(ctx)
	err := w.keys.Verify(t.Type(), id, t.Payload(), t.Headers(), time.Now())
	if err == nil {
		return nil
	}
	// A forged task's type is anybody's string: keep it out of labels.
	typ := "unknown"
	if slices.Contains(tasks.Types, t.Type()) {
		typ = t.Type()
	}
	return w.invalid(ctx, typ, t, err)
}

// warnTrust tells an operator starting a worker without keys what it
// trusts.
func (w *Worker) warnTrust() {
	if w.keys == nil {
		w.log.Warn("no task key (security.task-key-file): this worker runs any task found in Redis; whoever can write to Redis can prune or move any configured datastore — Redis is the trust boundary")
	}
}
