package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hibiken/asynq"
	"github.com/spf13/cobra"

	"github.com/pbsq/pbsq/tasks"
	"github.com/pbsq/pbsq/worker"
)

func init() { extraCommands = append(extraCommands, (*app).tasksCmd) }

// outcomeCode maps a task's outcome to the exit codes of docs/DESIGN.md §7.
func outcomeCode(outcome string) int {
	switch outcome {
	case tasks.OutcomeOK:
		return exitOK
	case tasks.OutcomeSkipped:
		return exitSkipped
	case tasks.OutcomeBusy:
		return exitBusy
	case tasks.OutcomeInvalid:
		return exitInvalid
	}
	return exitFailed
}

// waitPoll is how often wait looks at the task; the worker records
// progress at most once a second.
const waitPoll = 250 * time.Millisecond

// waitTask follows a task until it ends, rendering its progress, and
// returns its outcome as the exit code.
func (a *app) waitTask(ctx context.Context, e *worker.Enqueuer, id string, asJSON bool) error {
	ins := e.Inspector()
	var bar *progressPrinter
	var lastNote string
	var redisDown time.Time
	note := func(s string) {
		if s != lastNote {
			lastNote = s
			fmt.Fprintf(os.Stderr, "task %s: %s\n", safeLine(id), safeLine(s))
		}
	}
	for {
		info, err := worker.FindTask(ins, id)
		switch {
		case errors.Is(err, asynq.ErrTaskNotFound), errors.Is(err, asynq.ErrQueueNotFound):
			bar.done()
			return &exitError{code: exitFailed, err: fmt.Errorf("task %s is gone: unknown id, or cancelled while waiting to run", id)}
		case err != nil:
			// Redis restarting or failing over: keep waiting a while.
			if redisDown.IsZero() {
				redisDown = time.Now()
			}
			if time.Since(redisDown) > time.Minute {
				return fmt.Errorf("task %s: redis: %w", id, err)
			}
			note(fmt.Sprintf("redis unavailable (%v); still waiting", err))
		default:
			redisDown = time.Time{}
			if bar == nil {
				// The phase names the operation; the label says which task.
				label := id
				if len(label) > 8 {
					label = label[:8]
				}
				bar = newProgressPrinter(os.Stderr, label, true)
			}
			rec, _ := tasks.ParseRecord(info.Result)
			switch info.State {
			case asynq.TaskStateCompleted, asynq.TaskStateArchived:
				bar.done()
				return finishTask(info, rec, asJSON)
			case asynq.TaskStateActive:
				if rec.State == "running" && rec.Phase != "starting" {
					bar.show(safeLine(rec.Phase), rec.Done, rec.Total, safeLine(rec.Message))
				} else {
					note("running")
				}
			case asynq.TaskStatePending:
				note("pending: waiting for a free worker")
			case asynq.TaskStateScheduled, asynq.TaskStateRetry:
				if rec.State == "running" && rec.Total > 0 {
					// A sharded job between polls: its shards' progress.
					bar.show(safeLine(rec.Phase), rec.Done, rec.Total, safeLine(rec.Message))
					break
				}
				if info.State == asynq.TaskStateRetry {
					why := info.LastErr
					if rec.Message != "" && (rec.State == "waiting" || rec.State == "retrying") {
						why = rec.Message
					}
					note(fmt.Sprintf("%s; next try at %s (retries spent %d/%d)", why, info.NextProcessAt.Local().Format(time.TimeOnly), info.Retried, info.MaxRetry))
					break
				}
				if worker.IsChainHold(info.NextProcessAt) {
					note("waiting for the tasks it runs after (--after)")
				} else {
					note("scheduled for " + info.NextProcessAt.Local().Format(time.TimeOnly))
				}
			}
		}
		select {
		case <-ctx.Done():
			bar.done()
			return &exitError{code: exitFailed, err: fmt.Errorf("stopped waiting; task %s goes on (`pbsq tasks wait %s` to follow it again)", id, id)}
		case <-time.After(waitPoll):
		}
	}
}

// finishTask prints a finished task's result and returns its exit code.
func finishTask(info *asynq.TaskInfo, rec tasks.Record, asJSON bool) error {
	outcome, msg := rec.Outcome, rec.Error
	if rec.State != "done" {
		// Ended without pbsq's record: archived by hand or by asynq after
		// its last retry (e.g. worker crashes).
		outcome, msg = tasks.OutcomeFailed, info.LastErr
		if info.State == asynq.TaskStateCompleted {
			outcome, msg = tasks.OutcomeOK, ""
		}
	}
	if asJSON {
		out := struct {
			ID      string          `json:"id"`
			Type    string          `json:"type"`
			State   string          `json:"state"`
			Outcome string          `json:"outcome"`
			Error   string          `json:"error,omitempty"`
			Seconds float64         `json:"seconds"`
			Result  json.RawMessage `json:"result,omitempty"`
		}{info.ID, info.Type, info.State.String(), outcome, msg, rec.Seconds, rec.Result}
		if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
			return err
		}
	} else {
		if len(rec.Result) > 0 {
			var buf bytes.Buffer
			if json.Indent(&buf, rec.Result, "", "  ") == nil {
				fmt.Println(safeText(buf.String()))
			}
		}
		line := fmt.Sprintf("task %s: %s", info.ID, outcome)
		if rec.State == "done" {
			line += " after " + time.Duration(rec.Seconds*float64(time.Second)).Round(time.Millisecond).String()
		}
		if msg != "" {
			line += ": " + msg
		}
		fmt.Fprintln(os.Stderr, safeLine(line))
	}
	if code := outcomeCode(outcome); code != exitOK {
		return &exitError{code: code}
	}
	return nil
}

var taskStates = map[string]asynq.TaskState{
	"pending": asynq.TaskStatePending, "active": asynq.TaskStateActive, "scheduled": asynq.TaskStateScheduled,
	"retry": asynq.TaskStateRetry, "archived": asynq.TaskStateArchived, "completed": asynq.TaskStateCompleted,
}

var stateOrder = []string{"active", "pending", "scheduled", "retry", "archived", "completed"}

// taskView is a task as `tasks ls/show --json` print it.
type taskView struct {
	ID        string          `json:"id"`
	Type      string          `json:"type"`
	State     string          `json:"state"`
	Payload   json.RawMessage `json:"payload"`
	Retried   int             `json:"retried"`
	MaxRetry  int             `json:"max-retry"`
	LastError string          `json:"last-error,omitempty"`
	NextRun   *time.Time      `json:"next-run,omitempty"`
	Completed *time.Time      `json:"completed,omitempty"`
	// Started is the first run's start, Ended the end (RFC 3339).
	Started *time.Time      `json:"started,omitempty"`
	Ended   *time.Time      `json:"ended,omitempty"`
	Record  json.RawMessage `json:"record,omitempty"`
}

func newTaskView(info *asynq.TaskInfo) taskView {
	v := taskView{ID: info.ID, Type: info.Type, State: info.State.String(), Retried: info.Retried,
		MaxRetry: info.MaxRetry, LastError: info.LastErr}
	v.Payload = rawOrString(info.Payload)
	if len(info.Result) > 0 {
		v.Record = rawOrString(info.Result)
	}
	if !info.NextProcessAt.IsZero() && (info.State == asynq.TaskStateScheduled || info.State == asynq.TaskStateRetry) {
		v.NextRun = &info.NextProcessAt
	}
	if !info.CompletedAt.IsZero() {
		v.Completed = &info.CompletedAt
	}
	return v
}

// rawOrString keeps JSON as it is and quotes anything else (an invalid
// payload someone queued by hand).
func rawOrString(b []byte) json.RawMessage {
	if json.Valid(b) {
		return b
	}
	q, _ := json.Marshal(string(b))
	return q
}

// target summarises a payload: store, namespace, group, target.
func target(payload []byte) string {
	var p map[string]any
	if json.Unmarshal(payload, &p) != nil {
		return "(invalid payload)"
	}
	s := func(k string) string { v, _ := p[k].(string); return v }
	// store:ns as PBS writes it; the root namespace is the bare store.
	at := func(store, ns string) string {
		if ns == "" {
			return store
		}
		return store + ":" + ns
	}
	out := at(s("store"), s("ns"))
	if src := s("source-store"); src != "" {
		out = at(src, s("source-ns")) + " → " + out
	}
	if s("backup-type") != "" {
		out += " " + s("backup-type") + "/" + s("backup-id")
	}
	if t, ok := p["target-ns"].(string); ok {
		out += " → " + t
	}
	return out
}

// status is the progress or outcome column of `tasks ls`.
func status(info *asynq.TaskInfo) string {
	rec, err := tasks.ParseRecord(info.Result)
	switch {
	case err != nil:
		return ""
	case rec.State == "done":
		return rec.Outcome
	case rec.State == "running" && rec.Total > 0:
		return fmt.Sprintf("%s %d/%d (%.0f%%)", rec.Phase, rec.Done, rec.Total, rec.Percent)
	case rec.State == "running":
		return fmt.Sprintf("%s %d", rec.Phase, rec.Done)
	}
	return rec.State
}

func (a *app) tasksCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "tasks", Short: "List, show, follow and cancel queued tasks"}
	var stateFlag string
	var limit int
	var lsJSON bool
	ls := &cobra.Command{
		Use:   "ls [--state pending|active|scheduled|retry|archived|completed]",
		Short: "List tasks",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			states := stateOrder
			if stateFlag != "" {
				if _, ok := taskStates[stateFlag]; !ok {
					return usagef("--state %q: must be one of %s", stateFlag, strings.Join(stateOrder, ", "))
				}
				states = []string{stateFlag}
			}
			e, err := a.enqueuer()
			if err != nil {
				return err
			}
			defer e.Close()
			ins := e.Inspector()
			list := map[string]func(string, ...asynq.ListOption) ([]*asynq.TaskInfo, error){
				"pending": ins.ListPendingTasks, "active": ins.ListActiveTasks, "scheduled": ins.ListScheduledTasks,
				"retry": ins.ListRetryTasks, "archived": ins.ListArchivedTasks, "completed": ins.ListCompletedTasks,
			}
			queues, err := worker.Queues(ins)
			if err != nil {
				return err
			}
			var all []*asynq.TaskInfo
			for _, s := range states {
				for _, q := range queues {
					infos, err := list[s](q, asynq.PageSize(limit))
					if errors.Is(err, asynq.ErrQueueNotFound) {
						continue
					}
					if err != nil {
						return fmt.Errorf("list %s tasks: %w", s, err)
					}
					all = append(all, infos...)
				}
			}
			if lsJSON {
				views := make([]taskView, 0, len(all))
				for _, info := range all {
					views = append(views, newTaskView(info))
				}
				withTimes(cmd.Context(), e, views)
				return json.NewEncoder(os.Stdout).Encode(views)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSTATE\tTYPE\tTARGET\tSTATUS\tRETRIED")
			for _, info := range all {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d/%d\n", safeLine(info.ID), info.State, safeLine(strings.TrimPrefix(info.Type, "datastore:")),
					safeLine(target(info.Payload)), safeLine(status(info)), info.Retried, info.MaxRetry)
			}
			return tw.Flush()
		},
	}
	ls.Flags().StringVar(&stateFlag, "state", "", "only tasks in this state")
	ls.Flags().IntVar(&limit, "limit", 100, "at most this many tasks per state")
	ls.Flags().BoolVar(&lsJSON, "json", false, "print a JSON array")

	var showJSON bool
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show a task: payload, state, progress or result",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := a.enqueuer()
			if err != nil {
				return err
			}
			defer e.Close()
			info, err := worker.FindTask(e.Inspector(), args[0])
			if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
				return usagef("task %q not found (finished tasks are kept 7 days)", args[0])
			}
			if err != nil {
				return err
			}
			v := newTaskView(info)
			views := []taskView{v}
			withTimes(cmd.Context(), e, views)
			v = views[0]
			if showJSON {
				return json.NewEncoder(os.Stdout).Encode(v)
			}
			indent := func(b []byte) string {
				var buf bytes.Buffer
				if json.Indent(&buf, b, "  ", "  ") != nil {
					return string(b)
				}
				return buf.String()
			}
			fmt.Printf("id:       %s\ntype:     %s\nstate:    %s\nretried:  %d/%d\n", safeLine(v.ID), safeLine(v.Type), v.State, v.Retried, v.MaxRetry)
			if v.LastError != "" {
				fmt.Printf("error:    %s\n", safeLine(v.LastError))
			}
			if v.NextRun != nil {
				fmt.Printf("next run: %s\n", v.NextRun.Local().Format(time.RFC3339))
			}
			if v.Started != nil {
				fmt.Printf("started:  %s\n", v.Started.Local().Format(time.RFC3339))
			}
			if v.Completed != nil {
				fmt.Printf("finished: %s\n", v.Completed.Local().Format(time.RFC3339))
			}
			fmt.Printf("payload:  %s\n", safeText(indent(v.Payload)))
			if v.Record != nil {
				fmt.Printf("record:   %s\n", safeText(indent(v.Record)))
			}
			return nil
		},
	}
	show.Flags().BoolVar(&showJSON, "json", false, "print JSON")

	var waitJSON bool
	wait := &cobra.Command{
		Use:   "wait ID",
		Short: "Follow a task until it ends; exit with its outcome (0 ok, 1 failed, 2 invalid, 3 busy, 4 skipped)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := a.enqueuer()
			if err != nil {
				return err
			}
			defer e.Close()
			return a.waitTask(cmd.Context(), e, args[0], waitJSON)
		},
	}
	wait.Flags().BoolVar(&waitJSON, "json", false, "print the final record as JSON")

	cancel := &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a task: a queued one is deleted, a running one stopped and archived",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := a.enqueuer()
			if err != nil {
				return err
			}
			defer e.Close()
			was, err := worker.Cancel(cmd.Context(), e.Redis(), e.Inspector(), args[0])
			if errors.Is(err, worker.ErrTaskNotFound) || errors.Is(err, worker.ErrFinished) {
				return usageError{err}
			}
			if err != nil {
				return err
			}
			if _, ferr := worker.FindTask(e.Inspector(), args[0]); was == asynq.TaskStateActive || ferr == nil {
				fmt.Printf("cancelled task %s: stopped and archived (`pbsq tasks show %s`)\n", args[0], args[0])
			} else {
				fmt.Printf("cancelled task %s: it was %s and is deleted\n", args[0], was)
			}
			return nil
		},
	}
	cmd.AddCommand(ls, show, wait, cancel, a.tasksLogCmd())
	return cmd
}
