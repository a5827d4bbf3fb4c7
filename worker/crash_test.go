package worker

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/pbsq/pbsq/datastore/lock/redistest"
	"github.com/pbsq/pbsq/tasks"
)

// Environment of a worker child process (the test binary re-executed).
const (
	envChild    = "PBSQ_TEST_WORKER_CHILD"
	envRedis    = "PBSQ_TEST_REDIS"
	envStoreDir = "PBSQ_TEST_STORE_DIR"
	envLocksDir = "PBSQ_TEST_LOCKS_DIR"
)

func TestMain(m *testing.M) {
	if os.Getenv(envChild) != "" {
		os.Exit(childWorker())
	}
	os.Exit(m.Run())
}

// childWorker runs a worker until killed; it says "ready" on stdout.
func childWorker() int {
	stores := &testStores{dirs: map[string]string{testStoreName: os.Getenv(envStoreDir)}, locksDir: os.Getenv(envLocksDir)}
	w := New(Options{
		Redis:            asynq.RedisClientOpt{Addr: os.Getenv(envRedis)},
		Stores:           stores,
		Logger:           slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Concurrency:      1,
		PollInterval:     50 * time.Millisecond,
		ProgressInterval: 100 * time.Millisecond,
	})
	if err := w.Start(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	select {}
}

// TestKill9MidTask kills a worker process (SIGKILL: no shutdown, no
// re-queue) while it runs a task. asynq's lease on the task lapses (30 s)
// and a second worker's recoverer (every minute, for leases lapsed over
// 30 s ago) puts it back; the second worker then finishes it. That takes
// about 65 s, by asynq's fixed timings.
func TestKill9MidTask(t *testing.T) {
	if testing.Short() {
		t.Skip("takes ~65 s (asynq's lease and recoverer timings)")
	}
	// Mostly waiting for asynq's recoverer: it waits beside the kill
	// storm (its own Redis, store and worker processes).
	t.Parallel()
	rs := redistest.Start(t)
	f := newFixture(t)
	e := newEnqueuer(t, rs.Addr())

	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), envChild+"=1", envRedis+"="+rs.Addr(),
		envStoreDir+"="+f.dir, envLocksDir+"="+f.locksDir)
	child.Stderr = os.Stderr
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		t.Fatalf("child worker: %q, %v", line, err)
	}

	// A slow task: verify waits for locks the test holds.
	id, release := blockedVerify(t, f, e)
	waitRunning(t, e.Inspector(), id)
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()
	killed := time.Now()
	release()
	if info, _ := e.Inspector().GetTaskInfo(tasks.Queue, id); info == nil || info.State != asynq.TaskStateActive {
		t.Fatalf("after kill -9 the task should still look active: %+v", info)
	}

	// Start the second worker a little later, so that its recoverer's
	// first round (a minute after start) finds the lease lapsed >30 s ago.
	time.Sleep(2 * time.Second)
	startWorker(t, fastOptions(t, rs.Addr(), f.stores, nil))
	info := waitTask(t, e.Inspector(), id, 150*time.Second, asynq.TaskStateCompleted, asynq.TaskStateArchived)
	t.Logf("task finished by the second worker %s after the kill", time.Since(killed).Round(time.Second))
	rec := record(t, info)
	if info.State != asynq.TaskStateCompleted || rec.Outcome != tasks.OutcomeOK {
		t.Fatalf("state %s record %+v", info.State, rec)
	}
	// Nothing lost: every snapshot in "a" was verified by that task.
	for _, sn := range f.snaps {
		if sn.NS.String() != "a" && !strings.HasPrefix(sn.NS.String(), "a/") {
			continue
		}
		m, err := f.store.ReadManifest(context.Background(), sn)
		if err != nil {
			t.Fatal(err)
		}
		if vs := m.VerifyState(); vs == nil || vs.State != "ok" {
			t.Errorf("%s: verify state %+v after the rerun", sn, vs)
		}
	}
}
