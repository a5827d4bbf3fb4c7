package main

import (
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/pbsq/pbsq/tasks"
)

// enqueueRaw queues a task as anyone with Redis access could, past the
// CLI's validation.
func (e *env) enqueueRaw(typ, payload string, opts ...asynq.Option) string {
	e.t.Helper()
	c := asynq.NewClient(asynq.RedisClientOpt{Addr: e.redis.Addr()})
	defer c.Close()
	info, err := c.Enqueue(asynq.NewTask(typ, []byte(payload)), append([]asynq.Option{asynq.Queue(tasks.Queue)}, opts...)...)
	if err != nil {
		e.t.Fatal(err)
	}
	return info.ID
}

// TestTasksLsEscapesControls: escape sequences, C1 controls, bidi
// overrides and invalid bytes in a task's type or payload are printed
// escaped by `tasks ls` and `tasks show`, never raw to the terminal.
func TestTasksLsEscapesControls(t *testing.T) {
	e := newEnv(t, true)
	ids := []string{
		e.enqueueRaw(tasks.TypeVerify, `{"store":"demo\u001b]0;pwned\u0007","ns":"a\u001b[2J\u009b31m\u202eevil"}`),
		e.enqueueRaw(tasks.TypeVerify, "{\"store\":\"x\x1b[2J\xff\"}"), // not JSON: invalid byte
		e.enqueueRaw("datastore:\x1b[31mevil", `{"store":"demo"}`),
	}
	outs := []string{e.mustRun("tasks", "ls")}
	for _, id := range ids {
		outs = append(outs, e.mustRun("tasks", "show", id))
	}
	for i, out := range outs {
		for _, bad := range []string{"\x1b", "\x07", "\u009b", "\u202e", "\xff"} {
			if strings.Contains(out, bad) {
				t.Errorf("output %d prints %q raw:\n%q", i, bad, out)
			}
		}
	}
	if !strings.Contains(outs[0], `\x1b[2J`) || !strings.Contains(outs[0], `\u009b31m`) {
		t.Errorf("tasks ls does not show the escaped payload:\n%s", outs[0])
	}
}

// TestWorkerUnknownStoreArchived: a payload naming a datastore this worker
// does not know is archived at once (invalid), not retried.
func TestWorkerUnknownStoreArchived(t *testing.T) {
	e := newEnv(t, true)
	e.start("worker")
	id := e.enqueueRaw(tasks.TypeVerify, `{"store":"gone"}`, asynq.MaxRetry(5))
	ins := e.inspector()
	var info *asynq.TaskInfo
	waitFor(t, 30*time.Second, func() bool {
		var err error
		info, err = ins.GetTaskInfo(tasks.Queue, id)
		return err == nil && (info.State == asynq.TaskStateArchived || info.State == asynq.TaskStateRetry)
	})
	if info.State != asynq.TaskStateArchived || info.Retried != 0 {
		t.Fatalf("task %s, retried %d: want archived without a retry (%s)", info.State, info.Retried, info.LastErr)
	}
	if !strings.Contains(info.LastErr, `unknown datastore "gone"`) {
		t.Errorf("last error %q does not name the store", info.LastErr)
	}
	if out := e.mustRun("tasks", "show", id, "--json"); !strings.Contains(out, `"outcome":"invalid"`) {
		t.Errorf("record is not invalid: %s", out)
	}
}

// TestS3PrefixValidation: s3.prefix components that are empty, '.' or
// '..', and prefixes equal to or nested in another store's in the same
// bucket of the same endpoint, are exit 2 naming the value; the same
// prefix in another bucket is fine. `datastore create` refuses an
// overlapping prefix before touching the bucket.
func TestS3PrefixValidation(t *testing.T) {
	e := newEnv(t, false)
	s3 := func(name, bucket, prefix string) string {
		y := "  " + name + ":\n    s3:\n      endpoint: http://127.0.0.1:1\n      bucket: " + bucket + "\n"
		if prefix != "" {
			y += "      prefix: " + prefix + "\n"
		}
		return y
	}
	for _, c := range []struct{ stores, want string }{
		{s3("one", "b", "a/../b"), `"a/../b"`},
		{s3("one", "b", "a//b"), `"a//b"`},
		{s3("one", "b", "./a"), `"./a"`},
		{s3("one", "b", "x") + s3("two", "b", "x/y"), `prefix "x/y" overlaps datastores.one.s3.prefix "x"`},
		{s3("one", "b", "") + s3("two", "b", "one"), `datastores.two.s3.prefix "one" overlaps`},
		{s3("one", "b", "shared") + s3("two", "b", "shared"), `overlaps`},
	} {
		e.writeConfig(c.stores)
		_, errs := e.expect(2, "datastore", "ls")
		if !strings.Contains(errs, c.want) {
			t.Errorf("%s: stderr lacks %q:\n%s", c.stores, c.want, errs)
		}
	}
	e.writeConfig(s3("one", "b", "x") + s3("two", "other", "x") + s3("three", "b", "xy"))
	e.mustRun("datastore", "ls")
	_, errs := e.expect(2, "datastore", "create", "four", "--s3-endpoint", "http://127.0.0.1:1", "--s3-bucket", "b", "--s3-prefix", "x/sub")
	if !strings.Contains(errs, `"x/sub"`) || !strings.Contains(errs, "overlaps") {
		t.Errorf("create with a nested prefix: %s", errs)
	}
	_, errs = e.expect(2, "datastore", "create", "five", "--s3-endpoint", "http://127.0.0.1:1", "--s3-bucket", "b", "--s3-prefix", "x/../y")
	if !strings.Contains(errs, `"x/../y"`) {
		t.Errorf("create with '..': %s", errs)
	}
}
