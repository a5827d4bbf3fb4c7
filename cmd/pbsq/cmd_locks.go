package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
)

func init() {
	extraCommands = append(extraCommands, (*app).lockCmd, (*app).locksCmd)
}

// lockRequests builds what `pbsq lock` takes: a namespace in the given
// mode, or a group (exclusive) under its namespace shared.
func lockRequests(store, nsFlag, groupFlag string, exclusive bool) ([]lock.Request, error) {
	ns, err := name.ParseNamespace(nsFlag)
	if err != nil {
		return nil, err
	}
	if groupFlag == "" {
		if ns.IsRoot() {
			return nil, usagef("--ns or --group is required: the root namespace is never locked")
		}
		mode := lock.Shared
		if exclusive {
			mode = lock.Exclusive
		}
		return []lock.Request{lock.NamespaceRequest(store, ns, mode)}, nil
	}
	if exclusive {
		return nil, usagef("--exclusive is for namespaces: a group lock is always exclusive (its namespace is held shared)")
	}
	typ, id, ok := strings.Cut(groupFlag, "/")
	if !ok {
		return nil, usagef("--group %q: must be TYPE/ID, like vm/100", groupFlag)
	}
	g, err := name.NewGroup(ns, typ, id)
	if err != nil {
		return nil, err
	}
	reqs := []lock.Request{lock.GroupRequest(store, g)}
	if !ns.IsRoot() {
		reqs = append([]lock.Request{lock.NamespaceRequest(store, ns, lock.Shared)}, reqs...)
	}
	return reqs, nil
}

func (a *app) lockCmd() *cobra.Command {
	var store, nsFlag, groupFlag string
	var exclusive bool
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "lock --store S [--ns N] [--group T/ID] [--exclusive] [--wait D] -- CMD [ARG...]",
		Short: "Hold a lock while CMD runs (exit 3 if busy, else CMD's exit code)",
		Long: `lock takes a namespace lock (shared, or --exclusive) or a group lock (with
its namespace shared), retrying for --wait, then runs CMD and releases the
lock when CMD ends. It exits 3 when the lock stays busy, else with CMD's
exit code. SIGTERM and Ctrl-C are passed on to CMD.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if cmd.ArgsLenAtDash() > 0 {
				return fmt.Errorf("unexpected %q before --", args[0])
			}
			return cobra.MinimumNArgs(1)(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := a.storeConfig(store); err != nil {
				return err
			}
			reqs, err := lockRequests(store, nsFlag, groupFlag, exclusive)
			if err != nil {
				return err
			}
			var w *time.Duration
			if cmd.Flags().Changed("wait") {
				w = &wait
			}
			l, err := a.locker(cmd.Context(), w)
			if err != nil {
				return err
			}
			l = l.WithTask("pbsq-lock")
			// A lost lease (Redis locks) must stop CMD before another holder
			// can get in: it runs under the context Hold watches.
			lock.SortRequests(reqs)
			ctx, release, err := l.Hold(cmd.Context(), reqs...)
			if err != nil {
				return err
			}
			defer release()
			c := exec.CommandContext(ctx, args[0], args[1:]...)
			c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
			c.Cancel = func() error { return c.Process.Signal(syscall.SIGTERM) }
			c.WaitDelay = 10 * time.Second
			err = c.Run()
			var ee *exec.ExitError
			switch {
			case err == nil:
				return nil
			case errors.As(err, &ee):
				if errors.Is(context.Cause(ctx), lock.ErrLeaseLost) {
					return &exitError{code: exitFailed, err: fmt.Errorf("%s stopped: %w", args[0], context.Cause(ctx))}
				}
				code := ee.ExitCode()
				if st, ok := ee.Sys().(syscall.WaitStatus); ok && st.Signaled() {
					code = 128 + int(st.Signal())
				}
				return &exitError{code: code}
			case errors.Is(err, exec.ErrNotFound), errors.Is(err, fs.ErrNotExist):
				return &exitError{code: 127, err: err} // as a shell would
			default:
				return &exitError{code: 126, err: err}
			}
		},
	}
	// Flags end at CMD, so CMD's own flags are not taken for pbsq's.
	cmd.Flags().SetInterspersed(false)
	cmd.Flags().StringVar(&store, "store", "", "datastore")
	cmd.Flags().StringVar(&nsFlag, "ns", "", "namespace to lock (shared unless --exclusive)")
	cmd.Flags().StringVar(&groupFlag, "group", "", "backup group TYPE/ID in --ns to lock exclusively")
	cmd.Flags().BoolVar(&exclusive, "exclusive", false, "lock the namespace exclusively")
	cmd.Flags().DurationVar(&wait, "wait", 0, "retry a busy lock this long (default locks.wait from the config; 0: one try)")
	return cmd
}

func (a *app) locksCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "locks", Short: "Inspect locks"}
	var asJSON bool
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List current lock holders",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := a.locker(cmd.Context(), nil)
			if err != nil {
				return err
			}
			held, err := l.Holders(cmd.Context())
			if err != nil {
				return fmt.Errorf("locks: %w", err)
			}
			sort.SliceStable(held, func(i, j int) bool { return held[i].Request.ID() < held[j].Request.ID() })
			if asJSON {
				type row struct {
					Store   string     `json:"store"`
					Kind    string     `json:"kind"`
					Lock    string     `json:"lock"`
					Mode    string     `json:"mode"`
					Host    string     `json:"host,omitempty"`
					PID     int        `json:"pid,omitempty"`
					TaskID  string     `json:"task-id,omitempty"`
					Since   *time.Time `json:"since,omitempty"`
					Expires *time.Time `json:"expires,omitempty"`
					Path    string     `json:"path"`
				}
				rows := make([]row, 0, len(held))
				for _, h := range held {
					r := row{Store: h.Request.Store, Kind: h.Request.Kind.String(), Lock: lockPath(h.Request), Mode: h.Request.Mode.String(),
						Host: h.Holder.Host, PID: h.Holder.PID, TaskID: h.Holder.TaskID, Path: h.Path}
					if !h.Since.IsZero() {
						r.Since = &h.Since
					}
					if !h.Expires.IsZero() {
						r.Expires = &h.Expires
					}
					rows = append(rows, r)
				}
				return json.NewEncoder(os.Stdout).Encode(rows)
			}
			if len(held) == 0 {
				fmt.Fprintln(os.Stderr, "no locks held")
				return nil
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "STORE\tKIND\tLOCK\tMODE\tHOLDER\tSINCE\tEXPIRES")
			for _, h := range held {
				since, expires := "-", "-"
				if !h.Since.IsZero() {
					since = h.Since.Local().Format(time.DateTime)
				}
				if !h.Expires.IsZero() {
					expires = time.Until(h.Expires).Round(time.Second).String()
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", h.Request.Store, h.Request.Kind, lockPath(h.Request), h.Request.Mode, h.Holder, since, expires)
			}
			return tw.Flush()
		},
	}
	ls.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(ls)
	return cmd
}

// lockPath is the locked item without the store: "a/b", "a/vm/100", ...
func lockPath(r lock.Request) string {
	_, p, _ := strings.Cut(strings.TrimPrefix(r.ID(), r.Store+":"), ":")
	if p == "" {
		return "(root)"
	}
	return p
}
