package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/hibiken/asynq"
	"github.com/spf13/cobra"

	"github.com/pbsq/pbsq/tasks"
	"github.com/pbsq/pbsq/worker"
)

// handleLogs serves the task logs read-only beside /metrics.
func (rt *workerRuntime) handleLogs(mux *http.ServeMux) {
	mux.Handle("/tasks/{id}/log", worker.LogHandler(rt.w.Redis()))
}

func (a *app) tasksLogCmd() *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:   "log [--follow] ID",
		Short: "Print a task's log; --follow streams it until the task ends and exits with its outcome",
		Long: `log prints a task's log: one line per snapshot checked, removed, moved or
synced, every skip with its reason, errors, lock waits, and the summary.
A sharded job's log has its shards' lines too, in time order, each
tagged "shard N:".

With --follow it keeps printing new lines while the task is queued, waits
for a lock or runs, and exits when the task ends with the task's outcome:
0 ok, 1 failed, 2 invalid, 3 lock busy, 4 completed with skipped items.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if !worker.ValidTaskID(id) {
				return usagef("task id %q: letters, digits, '_', '.', ':', '-'", id)
			}
			e, err := a.enqueuer()
			if err != nil {
				return err
			}
			defer e.Close()
			return followLog(cmd.Context(), e, id, follow)
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "stream the log until the task ends; exit with its outcome")
	return cmd
}

// followLog prints the log of task id (a sharded job's merged with its
// shards'), and with follow the lines to come until the task ends.
func followLog(ctx context.Context, e *worker.Enqueuer, id string, follow bool) error {
	v := worker.NewLogView(e.Redis(), id)
	print := func(all bool) (bool, error) {
		lines, ok, err := v.Next(ctx, all)
		if err != nil {
			return false, err
		}
		for _, l := range lines {
			fmt.Println(l)
		}
		return ok, nil
	}
	hasLog, err := print(!follow)
	if err != nil {
		return err
	}
	info, err := worker.FindTask(e.Inspector(), id)
	gone := errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound)
	switch {
	case gone && !hasLog:
		return usagef("task %q not found (finished tasks and their logs are kept 7 days, failed ones 90)", id)
	case gone:
		if follow {
			if _, err := print(true); err != nil {
				return err
			}
			return &exitError{code: exitFailed, err: fmt.Errorf("task %s is gone (deleted, or cancelled while queued)", id)}
		}
		return nil
	case err != nil:
		return err
	case !follow:
		return nil
	}
	for {
		if info.State == asynq.TaskStateCompleted || info.State == asynq.TaskStateArchived {
			// The run's last lines are written before asynq marks it.
			if _, err := print(true); err != nil {
				return err
			}
			return logOutcome(info)
		}
		select {
		case <-ctx.Done():
			return &exitError{code: exitFailed, err: fmt.Errorf("stopped following; task %s goes on", id)}
		case <-time.After(waitPoll):
		}
		if _, err := print(false); err != nil {
			return err
		}
		info, err = worker.FindTask(e.Inspector(), id)
		if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
			_, _ = print(true)
			return &exitError{code: exitFailed, err: fmt.Errorf("task %s is gone (deleted, or cancelled while queued)", id)}
		}
		if err != nil {
			return err
		}
	}
}

// logOutcome is the exit code of a finished task, without printing its
// result (the log has the summary).
func logOutcome(info *asynq.TaskInfo) error {
	rec, _ := tasks.ParseRecord(info.Result)
	outcome := rec.Outcome
	if rec.State != "done" {
		outcome = tasks.OutcomeFailed
		if info.State == asynq.TaskStateCompleted {
			outcome = tasks.OutcomeOK
		}
	}
	if code := outcomeCode(outcome); code != exitOK {
		return &exitError{code: code, err: fmt.Errorf("task %s: %s", info.ID, outcome)}
	}
	return nil
}

// withTimes fills the started and ended times of task views from their
// logs, falling back to asynq's completion time.
func withTimes(ctx context.Context, e *worker.Enqueuer, views []taskView) {
	ids := make([]string, len(views))
	for i, v := range views {
		ids[i] = v.ID
	}
	times, err := worker.TaskTimes(ctx, e.Redis(), ids...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pbsq: warning:", err)
		return
	}
	for i := range views {
		views[i].Started, views[i].Ended = times[i].Started, times[i].Ended
		if views[i].Ended == nil && views[i].Completed != nil {
			t := views[i].Completed.UTC()
			views[i].Ended = &t
		}
	}
}
