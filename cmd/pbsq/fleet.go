package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/redis/go-redis/v9"

	s3backend "github.com/pbsq/pbsq/datastore/backend/s3"

	"github.com/pbsq/pbsq/tasks"
)

// taskKeyFile is the key file in force: security.task-key-file (or
// PBSQ_TASK_KEY_FILE), else the one `pbsq serve` generated for its
// embedded default, found through its state file.
func (a *app) taskKeyFile() (string, error) {
	if f := a.cfg.Security.TaskKeyFile; f != "" {
		return f, nil
	}
	if a.serveKeyFile != "" {
		return a.serveKeyFile, nil
	}
	if a.cfg.Redis.Configured() {
		return "", nil
	}
	st, _, err := a.readServeState()
	if err != nil || st == nil {
		return "", err
	}
	return st.TaskKeyFile, nil
}

// taskKeys loads the keys in force, or nil when there are none. A key file
// that is unusable is bad input (exit 2); its content is never shown.
func (a *app) taskKeys() (*tasks.Keys, error) {
	f, err := a.taskKeyFile()
	if err != nil || f == "" {
		return nil, err
	}
	k, err := tasks.LoadKeys(f)
	if err != nil {
		return nil, usageError{fmt.Errorf("security.task-key-file: %w", err)}
	}
	return k, nil
}

// serveTaskKey makes sure the embedded default (`pbsq serve` with no Redis
// and no key configured) has a key: it generates one (mode 0600) on first
// start next to the config, or in the runtime directory when that is not
// writable, and uses it from then on.
func (a *app) serveTaskKey() error {
	if a.cfg.Security.TaskKeyFile != "" || a.cfg.Redis.Configured() {
		return nil
	}
	abs, err := filepath.Abs(a.configPath)
	if err != nil {
		abs = a.configPath
	}
	run := os.Getenv("XDG_RUNTIME_DIR")
	if run == "" {
		run = os.TempDir()
	}
	sum := sha256.Sum256([]byte(abs))
	var errs []error
	for _, p := range []string{
		filepath.Join(filepath.Dir(abs), "task.key"),
		filepath.Join(run, "pbsq", "task-"+hex.EncodeToString(sum[:6])+".key"),
	} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			errs = append(errs, err)
			continue
		}
		created, err := tasks.GenerateKeyFile(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if created {
			a.log.Info("generated a task-signing key for the embedded default; give it to other hosts' workers as security.task-key-file", "path", p)
		}
		a.serveKeyFile = p
		return nil
	}
	return fmt.Errorf("task key: %w", errors.Join(errs...))
}

// storeCaps are the configured max-jobs per store.
func (a *app) storeCaps() map[string]int {
	caps := map[string]int{}
	for n, ds := range a.cfg.Datastores {
		if ds.MaxJobs > 0 {
			caps[n] = ds.MaxJobs
		}
	}
	return caps
}

// s3Budget is the request budget of an S3 store, or nil when it has none:
// shared through the configured Redis, else per process.
func (a *app) s3Budget(store string, c *S3Config) (*s3backend.Budget, error) {
	if c.RequestsPerSecond <= 0 {
		return nil, nil
	}
	a.budgetOnce.Do(func() {
		if a.cfg.Redis.Configured() {
			// Lives as long as the process, like the budgets using it.
			a.budgetRdb = redis.NewUniversalClient(a.redisOptions())
		}
	})
	b, err := s3backend.NewBudget(s3backend.BudgetConfig{RequestsPerSecond: c.RequestsPerSecond, BytesPerSecond: c.BytesPerSecond},
		a.budgetRdb, store, a.log)
	if err != nil {
		return nil, usageError{fmt.Errorf("datastores.%s.s3: %w", store, err)}
	}
	return b, nil
}
