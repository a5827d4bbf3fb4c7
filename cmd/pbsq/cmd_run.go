package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/tasks"
	"github.com/pbsq/pbsq/worker"
)

func init() { extraCommands = append(extraCommands, (*app).runCmd) }

// cliStores opens configured datastores for in-process runs.
type cliStores struct{ a *app }

func (c cliStores) Open(ctx context.Context, store, taskID string, wait *tasks.Duration) (*datastore.Store, error) {
	var w *time.Duration
	if wait != nil {
		w = &wait.Duration
	}
	s, err := c.a.openStore(ctx, store, w)
	if err != nil {
		return nil, err
	}
	if l := s.Locker(); l != nil && taskID != "" {
		s = s.WithLocker(l.WithTask(taskID))
	}
	return s, nil
}

// checkStores refuses payloads naming unconfigured datastores (exit 2).
func (a *app) checkStores(p tasks.Payload) error {
	for _, s := range p.Stores() {
		if _, err := a.storeConfig(s); err != nil {
			return err
		}
	}
	return nil
}

func (a *app) runCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "run", Short: "Run an operation in-process, without the queue"}
	for _, t := range tasks.Types {
		short := strings.TrimPrefix(t, "datastore:")
		var asJSON bool
		sub := &cobra.Command{
			Use:   short + " [flags]",
			Short: "Run " + short + " now, in this process",
			Args:  cobra.NoArgs,
		}
		build := payloadFlags(t, sub)
		sub.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
		sub.RunE = func(cmd *cobra.Command, args []string) error {
			p, err := build()
			if err != nil {
				return err
			}
			if err := a.checkStores(p); err != nil {
				return err
			}
			taskID := fmt.Sprintf("run-%d-%d", os.Getpid(), time.Now().Unix())
			bar := newProgressPrinter(os.Stderr, short, true)
			res, err := worker.Execute(cmd.Context(), cliStores{a}, p, taskID, bar.update)
			bar.done()
			if res != nil {
				if perr := printResult(res, asJSON); perr != nil {
					return perr
				}
			}
			if err != nil {
				return err
			}
			return outcomeExit(res.Outcome())
		}
		cmd.AddCommand(sub)
	}
	return cmd
}

// outcomeExit turns a result's outcome into the exit code (1 failed, 4
// skipped) without printing the error twice.
func outcomeExit(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, datastore.ErrFailed):
		return &exitError{code: exitFailed, err: err}
	case errors.Is(err, datastore.ErrSkipped):
		return &exitError{code: exitSkipped, err: err}
	}
	return err
}

func printResult(res any, asJSON bool) error {
	enc := json.NewEncoder(os.Stdout)
	if !asJSON {
		enc.SetIndent("", "  ")
	}
	return enc.Encode(res)
}
