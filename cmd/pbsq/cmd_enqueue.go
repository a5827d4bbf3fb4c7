package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pbsq/pbsq/tasks"
	"github.com/pbsq/pbsq/worker"
)

func init() { extraCommands = append(extraCommands, (*app).enqueueCmd) }

func (a *app) enqueueCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "enqueue",
		Short: "Queue an operation for the workers (prints the task id)",
		Long: `enqueue validates the job and queues it for the workers; it prints the task
id. An identical job already pending, scheduled, retrying or running is not
queued twice (exit 2, naming the task that holds it).

With --wait it follows the task (a progress bar on a terminal, plain lines
otherwise) and exits with the task's outcome: 0 ok, 1 failed, 2 invalid,
3 lock busy, 4 completed with skipped items.

With --after ID (repeatable) the task waits until every named task
completed ok; if one fails, is cancelled or archived, it never runs and
ends failed with an error naming that task.`,
	}
	for _, t := range tasks.Types {
		short := strings.TrimPrefix(t, "datastore:")
		var wait, asJSON bool
		var after []string
		sub := &cobra.Command{
			Use:   short + " [flags]",
			Short: "Queue " + short,
			Args:  cobra.NoArgs,
		}
		build := payloadFlags(t, sub)
		sub.Flags().BoolVar(&wait, "wait", false, "follow the task and exit with its outcome")
		sub.Flags().BoolVar(&asJSON, "json", false, "print JSON: the task id, or with --wait the final record")
		sub.Flags().StringArrayVar(&after, "after", nil, "run only after task `ID` completed ok (repeatable); if it fails, this task never runs and ends failed, naming it")
		var shards int
		if t == tasks.TypeVerify || t == tasks.TypeSync {
			sub.Flags().IntVar(&shards, "shards", 1, fmt.Sprintf("split the job into at most `N` shard tasks (1..%d) that any workers run, balanced by group size", tasks.MaxShards))
		}
		sub.RunE = func(cmd *cobra.Command, args []string) error {
			p, err := build()
			if err != nil {
				return err
			}
			if cmd.Flags().Changed("shards") {
				if p, err = withShards(p, shards); err != nil {
					return err
				}
			}
			if err := a.checkStores(p); err != nil {
				return err
			}
			e, err := a.enqueuer()
			if err != nil {
				return err
			}
			defer e.Close()
			info, err := e.EnqueueAfter(cmd.Context(), p, after)
			var dup *worker.DuplicateError
			if errors.As(err, &dup) {
				return usageError{err}
			}
			if err != nil {
				return err
			}
			if !wait {
				if asJSON {
					return json.NewEncoder(os.Stdout).Encode(map[string]string{"id": info.ID, "type": info.Type, "queue": info.Queue})
				}
				fmt.Println(info.ID)
				return nil
			}
			if !asJSON {
				fmt.Fprintf(os.Stderr, "queued %s task %s\n", short, info.ID)
			}
			return a.waitTask(cmd.Context(), e, info.ID, asJSON)
		}
		cmd.AddCommand(sub)
	}
	return cmd
}

// withShards sets a verify or sync payload's shards (1: one task).
func withShards(p tasks.Payload, n int) (tasks.Payload, error) {
	v := &n
	switch p := p.(type) {
	case *tasks.Verify:
		p.Shards = v
	case *tasks.Sync:
		p.Shards = v
	}
	return p, p.Validate()
}
