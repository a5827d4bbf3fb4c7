package main

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/pbsq/pbsq/tasks"
)

func TestScheduleAfter(t *testing.T) {
	e := newEnv(t, true)
	e.backups()
	base, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	job := "    task: gc\n    payload: {store: demo}\n"
	for _, tc := range []struct{ yaml, want string }{
		{"  x:\n    after: nowhere\n" + job, `"nowhere"`},
		{"  x:\n    after: y\n" + job + "  y:\n    after: x\n    task: verify\n    payload: {store: demo}\n", `cycle`},
		{"  x:\n    after: x\n" + job, `"x"`},
		{"  x:\n    after: y\n    cron: \"@daily\"\n" + job + "  y:\n    cron: \"@daily\"\n    task: verify\n    payload: {store: demo}\n", `"y"`},
	} {
		cfg := string(base) + "schedules:\n" + tc.yaml
		if err := os.WriteFile(e.config, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		_, errs := e.expect(2, "worker")
		if !strings.Contains(errs, "schedule") || !strings.Contains(errs, tc.want) {
			t.Errorf("config %q: error %q does not name %s", tc.yaml, errs, tc.want)
		}
	}
	if n := e.queued(); n != 0 {
		t.Fatalf("%d task(s) queued with a bad config", n)
	}

	// gc after verify after... a fire of `check` queues both; gc runs
	// after the verify succeeded.
	cfg := string(base) + `schedules:
  check:
    cron: "@every 1s"
    task: verify
    payload: {store: demo, ignore-verified: false}
  clean:
    after: check
    task: gc
    payload: {store: demo}
`
	if err := os.WriteFile(e.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	out := e.mustRun("schedules", "ls")
	if !strings.Contains(out, "after check") {
		t.Errorf("schedules ls:\n%s", out)
	}
	e.start("worker")
	ins := e.inspector()
	var gc *asynq.TaskInfo
	waitFor(t, 60*time.Second, func() bool {
		done, _ := ins.ListCompletedTasks(demoQueue)
		for _, d := range done {
			if d.Type == tasks.TypeGC {
				gc = d
				return true
			}
		}
		return false
	})
	log := e.mustRun("tasks", "log", gc.ID)
	if !strings.Contains(log, "completed ok: released to run") || !strings.Contains(log, "TASK OK") {
		t.Errorf("gc after check:\n%s", log)
	}
}
