package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pbsq/pbsq/tasks"
	"github.com/pbsq/pbsq/worker"
)

func init() { extraCommands = append(extraCommands, (*app).schedulesCmd) }

// scheduleRow is one line of `pbsq schedules ls`.
type scheduleRow struct {
	Name    string                `json:"name"`
	Cron    string                `json:"cron"`
	Type    string                `json:"type"`
	Payload json.RawMessage       `json:"payload"`
	Next    time.Time             `json:"next"`
	Last    *worker.ScheduleState `json:"last"`
}

func (a *app) schedulesCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "schedules",
		Short: "The config's periodic jobs (run by `pbsq serve` and `pbsq worker`)",
	}
	var asJSON bool
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List the schedules with their next fire and, from Redis, their last one",
		Long: `ls lists the schedules of the config: cron spec, job, next fire time and
what the last fire did (enqueued a task, found the previous run still queued
or running, or failed), as recorded in Redis by whichever scheduler handled
it. Without a reachable queue, the last fire is left out.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			rows, warn := a.scheduleRows(cmd.Context())
			if warn != nil {
				a.log.Warn("last fires unknown", "err", warn)
			}
			if asJSON {
				if rows == nil {
					rows = []scheduleRow{}
				}
				return json.NewEncoder(os.Stdout).Encode(rows)
			}
			if len(rows) == 0 {
				fmt.Fprintf(os.Stderr, "no schedules in %s (see `schedules:` in the README)\n", a.configPath)
				return nil
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tCRON\tTASK\tNEXT\tLAST\tRESULT\tTASK-ID")
			for _, r := range rows {
				last, result, id := "-", "-", "-"
				if r.Last != nil {
					last, result, id = r.Last.LastFire.Local().Format(time.DateTime), r.Last.Result, r.Last.TaskID
				}
				next := "-"
				if !r.Next.IsZero() {
					next = r.Next.Local().Format(time.DateTime)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.Cron, strings.TrimPrefix(r.Type, "datastore:"),
					next, last, result, id)
			}
			return tw.Flush()
		},
	}
	ls.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(ls)
	return cmd
}

// scheduleRows describes every schedule; the error says why last fires
// could not be read (no queue reachable).
func (a *app) scheduleRows(ctx context.Context) ([]scheduleRow, error) {
	scheds := a.cfg.schedules()
	if len(scheds) == 0 {
		return nil, nil
	}
	var rows []scheduleRow
	now := time.Now()
	for _, s := range scheds {
		payload, _ := tasks.Encode(s.Payload)
		rows = append(rows, scheduleRow{Name: s.Name, Cron: s.Spec, Type: s.Payload.TaskType(), Payload: payload, Next: s.Next(now)})
	}
	e, err := a.enqueuer()
	if err != nil {
		return rows, err
	}
	defer e.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for i := range rows {
		if rows[i].Last, err = worker.ReadScheduleState(ctx, e.Redis(), rows[i].Name); err != nil {
			return rows, err
		}
	}
	return rows, nil
}
