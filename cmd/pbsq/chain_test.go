package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// taskTimes reads started/ended/state of a task from `tasks show --json`.
func (e *env) taskTimes(id string) (state string, started, ended time.Time) {
	e.t.Helper()
	var v struct{ State, Started, Ended string }
	if err := json.Unmarshal([]byte(e.mustRun("tasks", "show", "--json", id)), &v); err != nil {
		e.t.Fatal(err)
	}
	started, _ = time.Parse(time.RFC3339, v.Started)
	ended, _ = time.Parse(time.RFC3339, v.Ended)
	return v.State, started, ended
}

func (e *env) enqueueID(args ...string) string {
	e.t.Helper()
	return strings.TrimSpace(e.mustRun(append([]string{"enqueue"}, args...)...))
}

func TestChainAfter(t *testing.T) {
	e := newEnv(t, true)
	e.backups()

	// Bad input: exit 2 naming the id, nothing queued.
	_, errs := e.expect(2, "enqueue", "verify", "--store", "demo", "--after", "no-such-task")
	if !strings.Contains(errs, `"no-such-task"`) {
		t.Errorf("unknown --after: %q", errs)
	}
	if n := e.queued(); n != 0 {
		t.Fatalf("%d task(s) queued by a refused --after", n)
	}

	// Queued before any worker runs, so the dependents are held.
	p := e.enqueueID("verify", "--store", "demo", "--ns", "a")
	q := e.enqueueID("verify", "--store", "demo", "--ns", "a/b")
	d := e.enqueueID("prune", "--store", "demo", "--ns", "a", "--keep-last", "1", "--after", p, "--after", q)
	bad := e.enqueueID("verify", "--store", "demo", "--ns", "zz") // invalid: fails
	d2 := e.enqueueID("gc", "--store", "demo", "--after", p, "--after", bad)
	_, errs = e.expect(2, "enqueue", "verify", "--store", "demo", "--after", p, "--after", "nope")
	if !strings.Contains(errs, `"nope"`) {
		t.Errorf("unknown --after among known ones: %q", errs)
	}
	// A task cancelled while queued (deleted): its dependent never runs.
	gone := e.enqueueID("verify", "--store", "demo", "--ns", "a", "--ignore-verified=false")
	d3 := e.enqueueID("gc", "--store", "demo", "--dry-run", "--after", gone)
	e.mustRun("tasks", "cancel", gone)
	if st, _, _ := e.taskTimes(d); st != "scheduled" {
		t.Fatalf("dependent is %s before its tasks ran", st)
	}
	e.start("worker", "--concurrency", "2")

	e.expect(0, "tasks", "wait", d)
	_, _, pEnd := e.taskTimes(p)
	_, _, qEnd := e.taskTimes(q)
	_, dStart, _ := e.taskTimes(d)
	if dStart.Before(pEnd) || dStart.Before(qEnd) {
		t.Errorf("dependent started %s, before its tasks ended (%s, %s)", dStart, pEnd, qEnd)
	}
	log := e.mustRun("tasks", "log", d)
	if !strings.Contains(log, "completed ok: released to run") || !strings.Contains(log, "removed vm/100/2024-03-01T10:00:00Z (ns a)") {
		t.Errorf("dependent's log:\n%s", log)
	}

	// One task failed: the dependent never runs, and says which.
	_, errs = e.expect(1, "tasks", "wait", d2)
	if !strings.Contains(errs, "not run: task "+bad) {
		t.Errorf("wait on a failed chain: %q", errs)
	}
	log = e.mustRun("tasks", "log", d2)
	if strings.Contains(log, "started on") || !strings.Contains(log, "TASK ERROR: failed: not run: task "+bad) {
		t.Errorf("failed chain's log:\n%s", log)
	}
	if st, _, _ := e.taskTimes(d2); st != "archived" {
		t.Errorf("failed dependent is %s", st)
	}

	_, errs = e.expect(1, "tasks", "wait", d3)
	if !strings.Contains(errs, "not run: task "+gone+" is gone") {
		t.Errorf("wait on a chain after a cancelled task: %q", errs)
	}
	if lg := e.mustRun("tasks", "log", d3); strings.Contains(lg, "started on") {
		t.Errorf("dependent of a cancelled task ran:\n%s", lg)
	}

	// After a task that already ended ok: runs at once.
	e.expect(0, "enqueue", "verify", "--store", "demo", "--ns", "a/b", "--ignore-verified=false", "--after", d, "--wait")
}

// A worker killed right after a task ended, before it settled the tasks
// chained after it: another worker settles them from the records.
func TestChainAfterWorkerCrashAtHandOver(t *testing.T) {
	for _, c := range []struct {
		name   string
		parent []string
		code   int
	}{
		{"ok", []string{"verify", "--store", "demo", "--ns", "a"}, 0},
		{"failed", []string{"verify", "--store", "demo", "--ns", "zz"}, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, true)
			e.backups()
			p := e.enqueueID(c.parent...)
			d := e.enqueueID("verify", "--store", "demo", "--ns", "a/b", "--after", p)
			crash := startWithEnv(t, e, []string{"PBSQ_TEST_CRASH_AT=chain-handover"}, "worker", "--concurrency", "1")
			select {
			case <-crash.done:
			case <-time.After(60 * time.Second):
				t.Fatal("worker did not reach the hand-over")
			}
			if crash.err == nil || !strings.Contains(crash.err.Error(), "killed") {
				t.Fatalf("worker exit %v, want killed at the hand-over", crash.err)
			}
			if st, _, _ := e.taskTimes(d); st != "scheduled" {
				t.Fatalf("dependent is %s after the crash at the hand-over", st)
			}
			e.start("worker", "--concurrency", "1")
			_, errs := e.expect(c.code, "tasks", "wait", d)
			if c.code != 0 && !strings.Contains(errs, "not run: task "+p) {
				t.Errorf("failed chain: %q", errs)
			}
			log := e.mustRun("tasks", "log", d)
			ran := strings.Contains(log, "started on") && strings.Contains(log, "ct/200/2024-03-01T11:00:00Z (ns a/b)")
			if ran != (c.code == 0) {
				t.Errorf("dependent ran=%v:\n%s", ran, log)
			}
		})
	}
}
