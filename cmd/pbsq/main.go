// Command pbsq runs the maintenance jobs of Proxmox-Backup-Server-format
// datastores as tasks on Redis, and offers the same operations in-process.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
)

// Exit codes of docs/DESIGN.md §7.
const (
	exitOK      = 0
	exitFailed  = 1
	exitInvalid = 2
	exitBusy    = 3
	exitSkipped = 4
)

// exitError carries an explicit exit code (e.g. a task's outcome).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageError marks bad flags or arguments.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// exitCode maps an error to the documented exit codes.
func exitCode(err error) int {
	var ee *exitError
	var ue usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ee):
		return ee.code
	case errors.As(err, &ue), errors.Is(err, name.ErrInvalid), errors.Is(err, datastore.ErrNotFound):
		return exitInvalid
	case errors.Is(err, lock.ErrBusy):
		return exitBusy
	case errors.Is(err, datastore.ErrSkipped):
		return exitSkipped
	default:
		return exitFailed
	}
}

// app holds what every command shares.
type app struct {
	configPath string
	logLevel   string
	cfg        *Config
	log        *slog.Logger
	// serveKeyFile is the key `pbsq serve` generated for its embedded
	// default (see serveTaskKey).
	serveKeyFile string
	// budgetRdb carries the shared S3 request budgets (see s3Budget).
	budgetOnce sync.Once
	budgetRdb  redis.UniversalClient
}

func (a *app) init() error {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(a.logLevel)); err != nil {
		return usagef("--log-level %q: must be debug, info, warn or error", a.logLevel)
	}
	a.log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	if a.configPath == "" {
		a.configPath = os.Getenv("PBSQ_CONFIG")
	}
	if a.configPath == "" {
		a.configPath = defaultConfigPath()
	}
	cfg, err := loadConfig(a.configPath)
	if err != nil {
		return usageError{err}
	}
	a.cfg = cfg
	return nil
}

func newRootCmd() *cobra.Command {
	a := &app{}
	root := &cobra.Command{
		Use:           "pbsq",
		Short:         "Maintenance jobs for Proxmox Backup Server datastores, as a job queue",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			return a.init()
		},
	}
	root.PersistentFlags().StringVar(&a.configPath, "config", "", "config file (default $PBSQ_CONFIG, /etc/pbsq/pbsq.yaml for root, else ~/.config/pbsq/pbsq.yaml)")
	root.PersistentFlags().StringVar(&a.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(
		a.datastoreCmd(),
		a.nsCmd(),
		a.lsCmd(),
		a.backupCmd(),
	)
	for _, c := range extraCommands {
		root.AddCommand(c(a))
	}
	strictArgs(root)
	return root
}

// extraCommands lets command files register themselves.
var extraCommands []func(*app) *cobra.Command

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	code := exitCode(err)
	if err != nil {
		var ee *exitError
		if !errors.As(err, &ee) || ee.err != nil {
			fmt.Fprintln(os.Stderr, "pbsq:", strings.TrimSpace(err.Error()))
		}
	}
	os.Exit(code)
}
