package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/pbsq/pbsq/datastore/lock/redistest"
	"github.com/pbsq/pbsq/tasks"
	"github.com/pbsq/pbsq/worker"
)

// pbsqBin is the binary under test, built once.
var pbsqBin string

func TestMain(m *testing.M) {
	if mode := os.Getenv(recordLockHelperEnv); mode != "" {
		os.Exit(recordLockHelper(mode)) // pbs_cli_test.go
	}
	dir, err := os.MkdirTemp("", "pbsq-cli-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	pbsqBin = filepath.Join(dir, "pbsq")
	out, err := exec.Command("go", "build", "-o", pbsqBin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build pbsq: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// env is a config dir with a datastore "demo", optionally a real Redis.
type env struct {
	t      *testing.T
	dir    string
	config string
	redis  *redistest.Server
}

func newEnv(t *testing.T, withRedis bool) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir()}
	e.config = filepath.Join(e.dir, "pbsq.yaml")
	cfg := fmt.Sprintf("locks:\n  dir: %s\n  wait: 1s\nmetrics:\n  listen: 127.0.0.1:0\n", filepath.Join(e.dir, "locks"))
	if withRedis {
		e.redis = redistest.Start(t)
		cfg += "redis:\n  addr: " + e.redis.Addr() + "\n"
	}
	if err := os.WriteFile(e.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	// An empty chunk store is enough (chunk dirs are made on demand), and
	// much cheaper than `datastore create`'s 65536 directories.
	if err := os.MkdirAll(filepath.Join(e.dir, "store", ".chunks"), 0o755); err != nil {
		t.Fatal(err)
	}
	e.mustRun("datastore", "add", "demo", "--path", filepath.Join(e.dir, "store"))
	return e
}

func (e *env) cmd(args ...string) *exec.Cmd {
	c := exec.Command(pbsqBin, args...)
	// Only the test's config: no PBSQ_* overrides from the caller.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PBSQ_") {
			c.Env = append(c.Env, kv)
		}
	}
	// serve's state goes to the test's own runtime dir.
	c.Env = append(c.Env, "PBSQ_CONFIG="+e.config, "XDG_RUNTIME_DIR="+filepath.Join(e.dir, "run"))
	return c
}

// statePath is where `pbsq serve` of this env writes its state.
func (e *env) statePath() string {
	return filepath.Join(e.dir, "run", "pbsq", (&app{configPath: e.config}).serveStateName())
}

// run runs pbsq and returns stdout, stderr and the exit code.
func (e *env) run(args ...string) (string, string, int) {
	e.t.Helper()
	c := e.cmd(args...)
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	code := runExit(e.t, c.Run())
	return out.String(), errb.String(), code
}

// runExit is the exit code of a pbsq run that ended with err (from Run
// or Wait); an error other than an exit (no binary) fails t.
func runExit(t testing.TB, err error) int {
	t.Helper()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("run pbsq: %v", err)
	}
	if ee != nil {
		return ee.ExitCode()
	}
	return 0
}

func (e *env) mustRun(args ...string) string {
	e.t.Helper()
	out, errs, code := e.run(args...)
	if code != 0 {
		e.t.Fatalf("pbsq %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

func (e *env) expect(code int, args ...string) (string, string) {
	e.t.Helper()
	out, errs, got := e.run(args...)
	if got != code {
		e.t.Fatalf("pbsq %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), got, code, out, errs)
	}
	return out, errs
}

// proc is pbsq running in the background.
type proc struct {
	cmd  *exec.Cmd
	out  *syncBuf
	done chan struct{}
	err  error // valid once done is closed
}

// start runs pbsq in the background; it is killed when the test ends.
func (e *env) start(args ...string) *proc {
	e.t.Helper()
	p := &proc{cmd: e.cmd(args...), out: &syncBuf{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	e.t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if e.t.Failed() {
			e.t.Logf("pbsq %s output:\n%s", strings.Join(args, " "), p.out.String())
		}
	})
	return p
}

// stop sends SIGTERM and returns the exit error, failing after d.
func (p *proc) stop(t *testing.T, d time.Duration) error {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		t.Fatalf("pbsq did not stop within %s of SIGTERM", d)
		return nil
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// backups writes ns "a" vm/100 ×2 and ns "a/b" ct/200 ×1.
func (e *env) backups() {
	e.t.Helper()
	img := filepath.Join(e.dir, "disk.img")
	data := bytes.Repeat([]byte("pbsq test data "), 20000)
	if err := os.WriteFile(img, data, 0o644); err != nil {
		e.t.Fatal(err)
	}
	e.mustRun("ns", "create", "--store", "demo", "--ns", "a/b")
	e.mustRun("backup", "--store", "demo", "--ns", "a", "--type", "vm", "--id", "100", "--time", "2024-03-01T10:00:00Z", img)
	e.mustRun("backup", "--store", "demo", "--ns", "a", "--type", "vm", "--id", "100", "--time", "2024-03-02T10:00:00Z", img)
	e.mustRun("backup", "--store", "demo", "--ns", "a/b", "--type", "ct", "--id", "200", "--time", "2024-03-01T11:00:00Z", img)
}

func (e *env) inspector() *asynq.Inspector {
	ins := asynq.NewInspector(asynq.RedisClientOpt{Addr: e.redis.Addr()})
	e.t.Cleanup(func() { _ = ins.Close() })
	return ins
}

// queued counts the tasks in any state.
func (e *env) queued() int {
	ins := e.inspector()
	queues, err := worker.Queues(ins)
	if err != nil {
		e.t.Fatal(err)
	}
	n := 0
	for _, q := range queues {
		info, err := ins.GetQueueInfo(q)
		if err != nil {
			e.t.Fatal(err)
		}
		n += info.Size + info.Completed
	}
	return n
}

func TestEnqueueBadInputExit2NothingQueued(t *testing.T) {
	e := newEnv(t, true)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"enqueue", "move-namespace", "--store", "demo", "--ns", "a", "--target-ns", "a/b"}, "inside the source"},
		{[]string{"enqueue", "move-namespace", "--store", "demo", "--ns", "a", "--target-ns", "a"}, "both"},
		{[]string{"enqueue", "verify", "--store", "nope"}, `unknown datastore "nope"`},
		{[]string{"enqueue", "sync", "--source-store", "demo", "--store", "other"}, `unknown datastore "other"`},
		{[]string{"enqueue", "verify", "--store", "demo", "--max-depth", "9"}, "max-depth"},
		{[]string{"enqueue", "prune", "--store", "demo", "--keep-last", "0"}, "keep-last"},
		{[]string{"enqueue", "verify", "--store", "demo", "--ns", "a/../b"}, "a/../b"},
		{[]string{"enqueue", "verify", "--store", "demo", "--bogus"}, "bogus"},
	} {
		_, errs := e.expect(2, c.args...)
		if !strings.Contains(errs, c.want) {
			t.Errorf("%v: stderr %q does not name %q", c.args, errs, c.want)
		}
	}
	if n := e.queued(); n != 0 {
		t.Fatalf("%d tasks queued by refused enqueues", n)
	}
}

func TestNoRedisConfigured(t *testing.T) {
	e := newEnv(t, false)
	for _, args := range [][]string{{"worker"}, {"enqueue", "verify", "--store", "demo"}, {"tasks", "ls"}} {
		_, errs := e.expect(2, args...)
		if !strings.Contains(errs, "no Redis configured") {
			t.Errorf("%v: %q", args, errs)
		}
	}
}

func TestEnqueueWorkerExitCodes(t *testing.T) {
	e := newEnv(t, true)
	e.backups()
	worker := e.start("worker", "--concurrency", "2")

	// ok, with the result on stdout.
	out, _ := e.expect(0, "enqueue", "verify", "--store", "demo", "--wait")
	var res struct{ OK, Snapshots int }
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.OK != 3 {
		t.Fatalf("verify result %q: %v", out, err)
	}
	// --json: the final record.
	out, _ = e.expect(0, "enqueue", "prune", "--store", "demo", "--ns", "a", "--keep-last", "1", "--dry-run", "--wait", "--json")
	var rec struct {
		ID, Outcome string
		Result      struct {
			DryRun    bool `json:"dry-run"`
			Decisions []struct{ Mark string }
		}
	}
	if err := json.Unmarshal([]byte(out), &rec); err != nil || rec.Outcome != "ok" || !rec.Result.DryRun || len(rec.Result.Decisions) != 3 {
		t.Fatalf("prune --json %q: %v", out, err)
	}
	// The task id alone on stdout without --wait; `tasks wait` follows it.
	id := strings.TrimSpace(e.mustRun("enqueue", "verify", "--store", "demo", "--ns", "a", "--ignore-verified=false"))
	e.expect(0, "tasks", "wait", id)
	out = e.mustRun("tasks", "show", id)
	for _, want := range []string{"state:    completed", `"outcome": "ok"`, `"ns": "a"`} {
		if !strings.Contains(out, want) {
			t.Errorf("tasks show lacks %q:\n%s", want, out)
		}
	}
	// A missing namespace: bad input, archived without retries.
	_, errs := e.expect(2, "enqueue", "verify", "--store", "demo", "--ns", "zz", "--wait")
	if !strings.Contains(errs, "invalid") {
		t.Errorf("missing ns: %q", errs)
	}

	// Someone holds a exclusively: per-snapshot locks stay busy, so the
	// verify completes with skipped items (exit 4)...
	holder := e.start("lock", "--store", "demo", "--ns", "a", "--exclusive", "--", "sleep", "60")
	waitFor(t, 5*time.Second, func() bool {
		out, _, _ := e.run("locks", "ls")
		return strings.Contains(out, "exclusive")
	})
	e.expect(4, "enqueue", "verify", "--store", "demo", "--ns", "a", "--ignore-verified=false", "--lock-wait", "0s", "--wait")

	// ...and a verify with a long lock-wait stays active: an identical job
	// is refused, naming it.
	id = strings.TrimSpace(e.mustRun("enqueue", "verify", "--store", "demo", "--ns", "a", "--ignore-verified=false", "--lock-wait", "50s"))
	_, errs = e.expect(2, "enqueue", "verify", "--store", "demo", "--ns", "a", "--ignore-verified=false", "--lock-wait", "50s")
	if !strings.Contains(errs, id) || !strings.Contains(errs, "identical") {
		t.Errorf("duplicate refusal %q does not name %s", errs, id)
	}
	waitFor(t, 10*time.Second, func() bool {
		out, _, _ := e.run("tasks", "ls", "--state", "active")
		return strings.Contains(out, id)
	})
	out, _ = e.expect(0, "tasks", "cancel", id)
	if !strings.Contains(out, "stopped and archived") {
		t.Errorf("cancel: %q", out)
	}
	_, errs = e.expect(1, "tasks", "wait", id)
	if !strings.Contains(errs, "cancelled") {
		t.Errorf("wait on a cancelled task: %q", errs)
	}
	e.expect(2, "tasks", "cancel", id)
	e.expect(2, "tasks", "show", "no-such-task")
	// SIGTERM is passed on to CMD; lock exits with CMD's status.
	if err := holder.stop(t, 5*time.Second); err == nil {
		t.Error("lock -- sleep: exit 0 after SIGTERM killed sleep")
	}

	// SIGTERM stops the worker cleanly.
	if err := worker.stop(t, 10*time.Second); err != nil {
		t.Errorf("worker exit after SIGTERM: %v", err)
	}
	if out := worker.out.String(); strings.Contains(out, "level=ERROR") {
		t.Errorf("worker logged errors:\n%s", out)
	}
}

func waitFor(t *testing.T, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// flockShared holds shared flocks on the given lock files with util-linux
// flock, as an outside process (PBS, another tool) would.
func flockShared(t *testing.T, files ...string) (release func()) {
	t.Helper()
	args := []string{}
	for _, f := range files {
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			t.Fatal(err)
		}
		args = append(args, "flock", "-s", f)
	}
	args = append(args, "sleep", "120")
	c := exec.Command(args[0], args[1:]...)
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = c.Wait(); close(done) }()
	release = func() {
		_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
		<-done
	}
	t.Cleanup(release)
	// Held once the innermost flock runs sleep.
	waitFor(t, 5*time.Second, func() bool {
		out, _ := exec.Command("pgrep", "-g", fmt.Sprint(c.Process.Pid), "-x", "sleep").Output()
		return len(bytes.TrimSpace(out)) > 0
	})
	return release
}

func TestLockCommand(t *testing.T) {
	e := newEnv(t, false)
	locks := filepath.Join(e.dir, "locks", "demo")
	// PBS's layout: <locks>/<store>/<ns components joined by ':'>/.ns-lock;
	// a holder of a/b/c holds its ancestors shared too.
	release := flockShared(t, filepath.Join(locks, "a", ".ns-lock"), filepath.Join(locks, "a:b", ".ns-lock"),
		filepath.Join(locks, "a:b:c", ".ns-lock"))

	_, errs := e.expect(3, "lock", "--store", "demo", "--ns", "a/b", "--exclusive", "--wait", "0", "--", "true")
	if !strings.Contains(errs, `namespace "a/b"`) || !strings.Contains(errs, "busy") {
		t.Errorf("busy message %q", errs)
	}
	e.expect(3, "lock", "--store", "demo", "--ns", "a", "--exclusive", "--wait", "0", "--", "true")
	// Siblings and shared locks are free; CMD's exit code comes through.
	e.expect(0, "lock", "--store", "demo", "--ns", "a/x", "--exclusive", "--wait", "0", "--", "true")
	e.expect(0, "lock", "--store", "demo", "--ns", "a/b", "--wait", "0", "--", "true")
	e.expect(7, "lock", "--store", "demo", "--ns", "a/x", "--", "sh", "-c", "exit 7")
	e.expect(0, "lock", "--store", "demo", "--group", "vm/100", "--ns", "a/b", "--wait", "0", "--", "true")
	out, _ := e.expect(0, "locks", "ls")
	if !strings.Contains(out, "a/b/c") || !strings.Contains(out, "shared") {
		t.Errorf("locks ls:\n%s", out)
	}

	// With a window, the lock is taken once the outside holder lets go.
	go func() { time.Sleep(time.Second); release() }()
	start := time.Now()
	e.expect(0, "lock", "--store", "demo", "--ns", "a/b", "--exclusive", "--wait", "4s", "--", "true")
	// Exit 0 shows it got the lock within its window; it cannot have got
	// it before the holder left.
	if d := time.Since(start); d < 800*time.Millisecond {
		t.Errorf("lock with --wait 4s took %s; the holder left after 1s", d)
	}

	// Bad input.
	e.expect(2, "lock", "--store", "nope", "--ns", "a", "--", "true")
	e.expect(2, "lock", "--store", "demo", "--", "true")
	e.expect(2, "lock", "--store", "demo", "--group", "vm/100", "--exclusive", "--", "true")
	e.expect(127, "lock", "--store", "demo", "--ns", "a", "--", "/no/such/cmd")
}

func TestServeEmbedded(t *testing.T) {
	e := newEnv(t, false)
	e.backups()
	// A second store: its tasks go to a queue of their own, and the
	// dashboard and tasks ls show both.
	if err := os.MkdirAll(filepath.Join(e.dir, "store2", ".chunks"), 0o755); err != nil {
		t.Fatal(err)
	}
	e.mustRun("datastore", "add", "other", "--path", filepath.Join(e.dir, "store2"))
	serve := e.start("serve")
	statePath := e.statePath()
	var st serveState
	waitFor(t, 10*time.Second, func() bool {
		b, err := os.ReadFile(statePath)
		return err == nil && json.Unmarshal(b, &st) == nil
	})
	if !st.Embedded || st.PID != serve.cmd.Process.Pid || !strings.Contains(serve.out.String(), "not durable") {
		t.Errorf("state %+v; output:\n%s", st, serve.out.String())
	}

	// The CLI finds the embedded Redis through the state file.
	e.expect(0, "enqueue", "verify", "--store", "demo", "--wait")
	e.expect(0, "enqueue", "gc", "--store", "other", "--dry-run", "--wait")
	out := e.mustRun("tasks", "ls")
	seen := map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) >= 4 && f[1] == "completed" {
			seen[f[2]+" "+f[3]] = true
		}
	}
	if !seen["verify demo"] || !seen["gc other"] {
		t.Errorf("tasks ls does not show both stores' tasks:\n%s", out)
	}
	// A second serve for the same config is refused.
	e.expect(2, "serve")

	get := func(url string) string {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %s\n%s", url, resp.Status, b)
		}
		return string(b)
	}
	metrics := get(st.Metrics)
	for _, want := range []string{`pbsq_tasks_total{outcome="ok",type="datastore:verify"} 1`, "pbsq_verify_chunks_total", "pbsq_lock_acquire_total",
		`asynq_queue_size{queue="pbsq:demo"}`, `pbsq_queue_consumers{queue="pbsq:demo"} 1`, `pbsq_queue_consumers{queue="pbsq:other"} 1`, "pbsq_task_duration_seconds_bucket", "go_goroutines"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(metrics, "pbsq_task_progress_ratio{") {
		t.Error("/metrics still has a progress series of a finished task")
	}
	if promtool, err := exec.LookPath("promtool"); err == nil {
		c := exec.Command(promtool, "check", "metrics")
		c.Stdin = strings.NewReader(metrics)
		if out, err := c.CombinedOutput(); err != nil {
			t.Errorf("promtool check metrics: %v\n%s", err, out)
		}
	}
	if page := get(st.Dashboard); !strings.Contains(page, "/monitoring/") {
		t.Errorf("dashboard page does not use its root path:\n%.300s", page)
	}
	if api := get(strings.TrimSuffix(st.Dashboard, "/") + "/api/queues"); !strings.Contains(api, `"queue":"pbsq:demo"`) || !strings.Contains(api, `"queue":"pbsq:other"`) {
		t.Errorf("dashboard API does not list both stores' queues: %s", api)
	}

	// SIGTERM: clean exit, state file gone.
	if err := serve.stop(t, 15*time.Second); err != nil {
		t.Errorf("serve exit after SIGTERM: %v", err)
	}
	if _, err := os.Stat(statePath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file left behind: %v", err)
	}
	e.expect(2, "tasks", "ls")
}

// TestSchedules: schedules in the config are validated as `enqueue`
// validates a job (exit 2 naming the schedule and the value, nothing
// changed), and `pbsq worker` runs them: an @every 1s verify completes
// through the queue and `schedules ls` shows its last fire.
func TestSchedules(t *testing.T) {
	e := newEnv(t, true)
	e.backups()
	base, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"  bad:\n    cron: \"61 * * * *\"\n    task: verify\n    payload: {store: demo}\n", `"61 * * * *"`},
		{"  bad:\n    cron: \"@daily\"\n    task: scrub\n    payload: {store: demo}\n", `"scrub"`},
		{"  bad:\n    cron: \"@daily\"\n    task: verify\n    payload: {store: nowhere}\n", `"nowhere"`},
		{"  bad:\n    cron: \"@daily\"\n    task: verify\n    payload: {store: demo, keep-daily: 3}\n", `keep-daily`},
		{"  bad:\n    cron: \"@daily\"\n    task: move-namespace\n    payload: {store: demo, ns: a, target-ns: a/b/c}\n", `"a/b/c"`},
		{"  \"bad name\":\n    cron: \"@daily\"\n    task: gc\n    payload: {store: demo}\n", `"bad name"`},
	} {
		cfg := string(base) + "schedules:\n" + tc.yaml
		if err := os.WriteFile(e.config, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		_, errs := e.expect(2, "schedules", "ls")
		if !strings.Contains(errs, "schedules.") || !strings.Contains(errs, tc.want) {
			t.Errorf("schedule %q: error %q does not name the schedule and %s", tc.yaml, errs, tc.want)
		}
		if after, _ := os.ReadFile(e.config); string(after) != cfg {
			t.Errorf("config changed by a refused command")
		}
	}

	cfg := string(base) + `schedules:
  often:
    cron: "@every 1s"
    task: verify
    payload: {store: demo, ignore-verified: false}
  nightly-prune:
    cron: "CRON_TZ=UTC 30 2 * * *"
    task: prune
    payload:
      store: demo
      ns: a
      keep-last: 1
`
	if err := os.WriteFile(e.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	e.start("worker")
	var rows []scheduleRow
	waitFor(t, 30*time.Second, func() bool {
		out, _ := e.expect(0, "schedules", "ls", "--json")
		rows = nil
		if err := json.Unmarshal([]byte(out), &rows); err != nil {
			t.Fatalf("schedules ls --json: %v\n%s", err, out)
		}
		ins := e.inspector()
		done, _ := ins.ListCompletedTasks(tasks.QueueFor(&tasks.Verify{Store: "demo"}))
		return len(rows) == 2 && rows[1].Last != nil && rows[1].Last.TaskID != "" && len(done) >= 2
	})
	if rows[0].Name != "nightly-prune" || rows[0].Last != nil || rows[0].Next.UTC().Format("15:04") != "02:30" {
		t.Errorf("nightly-prune: %+v", rows[0])
	}
	if rows[1].Name != "often" || rows[1].Type != tasks.TypeVerify || time.Until(rows[1].Next) > 2*time.Second {
		t.Errorf("often: %+v", rows[1])
	}
	out := e.mustRun("schedules", "ls")
	for _, want := range []string{"NAME", "often", "@every 1s", "verify", "nightly-prune", "CRON_TZ=UTC 30 2 * * *"} {
		if !strings.Contains(out, want) {
			t.Errorf("schedules ls lacks %q:\n%s", want, out)
		}
	}
}
