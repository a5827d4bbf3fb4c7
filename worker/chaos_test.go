package worker

import (
	"bufio"
	"context"
	cryptorand "crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/backend/local"
	"github.com/pbsq/pbsq/datastore/backend/s3"
	"github.com/pbsq/pbsq/datastore/backend/s3/faultproxy"
	"github.com/pbsq/pbsq/datastore/backend/s3/s3test"
	"github.com/pbsq/pbsq/datastore/invariant"
	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/lock/flock"
	"github.com/pbsq/pbsq/datastore/lock/redislock"
	"github.com/pbsq/pbsq/datastore/lock/redistest"
	"github.com/pbsq/pbsq/datastore/name"
	"github.com/pbsq/pbsq/tasks"
)

// Reliability under crashes and load (see README "Reliability").
//
// TestKill9Storm runs two worker processes (this test binary re-executed,
// see TestChaosWorkerChild) over a workload of every task type and kills
// them with SIGKILL, again and again, mid-task, on a filesystem store and
// on S3 (versitygw), and restarts Redis once in the middle. A supervisor
// restarts every killed worker. Afterwards every task must have completed
// (none lost, counting tasks in all asynq states), and the invariant
// checker must find every snapshot exactly where it belongs, every chunk
// there and Verify clean.
//
// asynq's lease on a task is a fixed 30 s and its recoverer only re-queues
// tasks whose lease ran out more than 30 s ago, once a minute (or when a
// server starts); neither is configurable in v0.26. The supervisor knows
// which tasks a killed worker was running (each worker logs task starts
// and ends) and ages exactly those leases in Redis by a minute, which is
// what waiting a minute would do, before it starts the replacement worker,
// whose recoverer then re-queues them at once. On S3 each worker talks to
// versitygw through its own faultproxy, and the supervisor first waits
// until every request the dead worker had sent has completed on the
// server (fleet.bury): a minute later, in reality, none is left, while a
// re-run a second later could meet e.g. its DeleteObjects. Tasks that
// are retrying after a real failure are likewise brought forward
// (asynq.Inspector RunTask) once the storm is over. With PBSQ_STRESS=1
// the storm lasts longer.

// ---- the worker child process

const envChaosChild = "PBSQ_CHAOS_CHILD"

// chaosChildConfig configures a worker child (JSON in envChaosChild).
type chaosChildConfig struct {
	Redis  string
	Stores map[string]chaosStoreSpec
	// LocksDir: flock locks (one host). RedisLease > 0: Redis leases.
	LocksDir   string
	RedisLease time.Duration
	// Log receives "start|end <unix ns> <task id> <type>" lines.
	Log string
	// SlowFS delays every write on filesystem stores (a slow disk), so
	// that kills land inside operations rather than between them.
	SlowFS      time.Duration
	Concurrency int
}

// chaosStoreSpec is a filesystem directory or an S3 location.
type chaosStoreSpec struct {
	Dir string     `json:",omitempty"`
	S3  *s3.Config `json:",omitempty"`
}

// TestChaosWorkerChild is not a test: it is the worker process the chaos
// tests start (and kill).
func TestChaosWorkerChild(t *testing.T) {
	raw := os.Getenv(envChaosChild)
	if raw == "" {
		t.Skip("helper process of TestKill9Storm, started by it")
	}
	os.Exit(runChaosChild(raw))
}

func runChaosChild(raw string) int {
	var cfg chaosChildConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "chaos child:", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	stores := &chaosStores{specs: cfg.Stores, slow: cfg.SlowFS, wait: time.Second, log: log}
	if cfg.RedisLease > 0 {
		stores.newLocks = func() (lock.Backend, error) {
			rdb := redis.NewClient(&redis.Options{Addr: cfg.Redis})
			return redislock.New(rdb, redislock.Options{Lease: cfg.RedisLease}), nil
		}
	} else {
		stores.newLocks = func() (lock.Backend, error) { return flock.New(flock.Options{Dir: cfg.LocksDir}) }
		stores.locksDir = cfg.LocksDir
	}
	f, err := os.OpenFile(cfg.Log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos child:", err)
		return 2
	}
	w := New(Options{
		Redis:            asynq.RedisClientOpt{Addr: cfg.Redis},
		Stores:           stores,
		Logger:           log,
		Concurrency:      cfg.Concurrency,
		ShutdownTimeout:  2 * time.Second,
		PollInterval:     50 * time.Millisecond,
		ForwardInterval:  100 * time.Millisecond,
		ProgressInterval: 200 * time.Millisecond,
		BusyDelay:        func() time.Duration { return 200*time.Millisecond + rand.N(400*time.Millisecond) },
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.rdb.Ping(ctx).Err(); err != nil {
		fmt.Fprintln(os.Stderr, "chaos child: redis:", err)
		return 1
	}
	if err := w.srv.Start(taskLog{w: w, f: f}); err != nil {
		fmt.Fprintln(os.Stderr, "chaos child:", err)
		return 1
	}
	fmt.Println("ready")
	select {}
}

// taskLog records each task's start and end around the worker, so that
// the supervisor knows what a killed worker was running.
type taskLog struct {
	w *Worker
	f *os.File
}

func (l taskLog) ProcessTask(ctx context.Context, t *asynq.Task) error {
	id, _ := asynq.GetTaskID(ctx)
	// One write(2) per line: a kill never leaves half a line behind.
	_, _ = fmt.Fprintf(l.f, "start %d %s %s\n", time.Now().UnixNano(), id, t.Type())
	err := l.w.ProcessTask(ctx, t)
	_, _ = fmt.Fprintf(l.f, "end %d %s %s\n", time.Now().UnixNano(), id, t.Type())
	return err
}

// chaosStores opens filesystem and S3 stores by name, each backend and the
// lock backend once per process, with lockers that audit.
type chaosStores struct {
	specs    map[string]chaosStoreSpec
	slow     time.Duration
	wait     time.Duration
	newLocks func() (lock.Backend, error)
	// locksDir is the flock backend's dir: stores get it as the CLI gives
	// it (manifest locks, PBS's move journal); "" with Redis locks.
	locksDir string
	audit    func(lock.AuditEvent)
	log      *slog.Logger

	mu       sync.Mutex
	backends map[string]backend.Backend
	locks    lock.Backend
}

func (s *chaosStores) Open(ctx context.Context, store, taskID string, wait *tasks.Duration) (*datastore.Store, error) {
	spec, ok := s.specs[store]
	if !ok {
		return nil, fmt.Errorf("%w: unknown datastore %q", name.ErrInvalid, store)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.backends == nil {
		s.backends = map[string]backend.Backend{}
	}
	b := s.backends[store]
	if b == nil {
		var err error
		if spec.S3 != nil {
			b, err = s3.New(context.WithoutCancel(ctx), *spec.S3)
		} else {
			var fb *local.FS
			fb, err = local.New(spec.Dir)
			b = fb
			if err == nil && s.slow > 0 {
				b = slowFS{slowBackend{Backend: fb, d: s.slow}, fb.Base()}
			}
		}
		if err != nil {
			return nil, err
		}
		s.backends[store] = b
	}
	if s.locks == nil {
		l, err := s.newLocks()
		if err != nil {
			return nil, err
		}
		s.locks = l
	}
	w := s.wait
	if wait != nil {
		w = wait.Duration
	}
	l := lock.New(s.locks, lock.Options{Holder: lock.Holder{TaskID: taskID}, Audit: s.audit}).WithWait(w)
	log := s.log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return datastore.Open(store, b, datastore.Options{Locker: l, Logger: log, LocksDir: s.locksDir})
}

// locker is a Locker on the process's lock backend, for writers.
func (s *chaosStores) locker(holder string) (*lock.Locker, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.locks == nil {
		l, err := s.newLocks()
		if err != nil {
			return nil, err
		}
		s.locks = l
	}
	return lock.New(s.locks, lock.Options{Holder: lock.Holder{TaskID: holder}, Audit: s.audit}).WithWait(s.wait), nil
}

func (s *chaosStores) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, b := range s.backends {
		_ = b.Close()
	}
	if s.locks != nil {
		_ = s.locks.Close()
	}
}

// slowFS is a slow filesystem store that still tells its directory, so
// that the store takes .lock and writes PBS's move journal as on a plain
// one.
type slowFS struct {
	slowBackend
	base string
}

func (s slowFS) Base() string { return s.base }

// slowBackend delays every change, like a slow disk, and passes the
// optional interfaces through.
type slowBackend struct {
	backend.Backend
	d time.Duration
}

func (s slowBackend) pause(ctx context.Context) error {
	t := time.NewTimer(s.d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s slowBackend) WriteFile(ctx context.Context, name string, data []byte) error {
	if err := s.pause(ctx); err != nil {
		return err
	}
	return s.Backend.WriteFile(ctx, name, data)
}

func (s slowBackend) CreateFile(ctx context.Context, name string, data []byte) (bool, error) {
	if err := s.pause(ctx); err != nil {
		return false, err
	}
	return s.Backend.CreateFile(ctx, name, data)
}

func (s slowBackend) Rename(ctx context.Context, from, to string) error {
	if err := s.pause(ctx); err != nil {
		return err
	}
	return s.Backend.Rename(ctx, from, to)
}

func (s slowBackend) Remove(ctx context.Context, name string) error {
	if err := s.pause(ctx); err != nil {
		return err
	}
	return s.Backend.Remove(ctx, name)
}

func (s slowBackend) RemoveAll(ctx context.Context, dir string) error {
	if err := s.pause(ctx); err != nil {
		return err
	}
	return s.Backend.RemoveAll(ctx, dir)
}

func (s slowBackend) Sync(ctx context.Context) error { return backend.Sync(ctx, s.Backend) }

func (s slowBackend) ReadFileInto(ctx context.Context, name string, buf []byte) ([]byte, error) {
	return backend.ReadFileInto(ctx, s.Backend, name, buf)
}

func (s slowBackend) StatFile(ctx context.Context, name string) (backend.FileInfo, error) {
	return backend.StatFile(ctx, s.Backend, name)
}

// ---- the supervisor

// fleet is the supervisor of the worker children.
type fleet struct {
	t    *testing.T
	dir  string
	base chaosChildConfig
	rdb  redis.UniversalClient
	ins  *asynq.Inspector

	mu   sync.Mutex
	kids []*kid
	// hits counts kills that caught a task of that type running.
	hits  map[string]int
	kills int
	aged  int
	// gone holds the pids of killed children that can no longer touch a
	// store: reaped, and every S3 request they sent completed.
	gone map[int]bool
	// quietMax is the longest bury waited for a dead child's requests.
	quietMax time.Duration
}

type kid struct {
	idx, gen int
	cmd      *exec.Cmd
	log      string
	errLog   string
	done     chan struct{}
	// proxy carries the child's S3 requests (nil without S3 stores):
	// a request that reached it completes on the server even when the
	// child dies, and WaitQuiet tells when all have (see bury).
	proxy *faultproxy.Proxy
}

func newFleet(t *testing.T, base chaosChildConfig, n int, rdb redis.UniversalClient, ins *asynq.Inspector) *fleet {
	f := &fleet{t: t, dir: t.TempDir(), base: base, rdb: rdb, ins: ins, hits: map[string]int{}, gone: map[int]bool{}}
	f.kids = make([]*kid, n)
	t.Cleanup(func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, k := range f.kids {
			if k != nil {
				_ = k.cmd.Process.Kill()
				<-k.done
				if k.proxy != nil {
					k.proxy.Close()
				}
			}
		}
	})
	for i := range f.kids {
		f.start(i)
	}
	return f
}

// bury waits until killed child k can no longer touch a store: its
// process reaped (Wait returned) and, on S3, its connections closed and
// every request it had sent completed on the server, as they would long
// before asynq re-ran its tasks in reality. Closing the proxy then drops
// a request still queued unaccepted. Only then is k's pid gone, and its
// tasks may be brought forward.
func (f *fleet) bury(k *kid) {
	f.t.Helper()
	<-k.done
	if k.proxy != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		t0 := time.Now()
		err := k.proxy.WaitQuiet(ctx)
		cancel()
		f.quietMax = max(f.quietMax, time.Since(t0))
		if err != nil {
			f.t.Fatalf("worker child %d.%d killed: %v", k.idx, k.gen, err)
		}
		k.proxy.Close()
	}
	f.gone[k.cmd.Process.Pid] = true
}

// isGone reports whether pid is a killed child that bury saw through.
func (f *fleet) isGone(pid int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gone[pid]
}

// start runs worker child i (a new generation of it).
func (f *fleet) start(i int) {
	f.t.Helper()
	gen := 1
	if old := f.kids[i]; old != nil {
		gen = old.gen + 1
	}
	k := &kid{idx: i, gen: gen, done: make(chan struct{}),
		log:    filepath.Join(f.dir, fmt.Sprintf("worker%d.%d.log", i, gen)),
		errLog: filepath.Join(f.dir, fmt.Sprintf("worker%d.%d.err", i, gen))}
	cfg := f.base
	cfg.Log = k.log
	cfg.Stores = map[string]chaosStoreSpec{}
	for st, spec := range f.base.Stores {
		if spec.S3 != nil {
			if k.proxy == nil {
				p, err := faultproxy.New(spec.S3.Endpoint, faultproxy.Rates{}, 0)
				if err != nil {
					f.t.Fatal(err)
				}
				k.proxy = p
			}
			c := *spec.S3
			c.Endpoint = k.proxy.URL()
			spec.S3 = &c
		}
		cfg.Stores[st] = spec
	}
	raw, _ := json.Marshal(cfg)
	k.cmd = exec.Command(os.Args[0], "-test.run=^TestChaosWorkerChild$")
	k.cmd.Env = append(os.Environ(), envChaosChild+"="+string(raw))
	k.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	errf, err := os.Create(k.errLog)
	if err != nil {
		f.t.Fatal(err)
	}
	k.cmd.Stderr = errf
	out, err := k.cmd.StdoutPipe()
	if err != nil {
		f.t.Fatal(err)
	}
	if err := k.cmd.Start(); err != nil {
		if k.proxy != nil {
			k.proxy.Close()
		}
		f.t.Fatal(err)
	}
	// From here on the cleanup kills and waits for k.
	f.kids[i] = k
	go func() { _ = k.cmd.Wait(); errf.Close(); close(k.done) }()
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		ready <- strings.TrimSpace(line)
		_, _ = bufio.NewReader(out).WriteTo(io.Discard)
	}()
	select {
	case line := <-ready:
		if line != "ready" {
			<-k.done
			b, _ := os.ReadFile(k.errLog)
			f.t.Fatalf("worker child %d.%d: %q\n%s", i, gen, line, b)
		}
	case <-time.After(60 * time.Second):
		f.t.Fatalf("worker child %d.%d not ready after 60s", i, gen)
	}
}

// inflight reads a child's log: the tasks it started and did not end, by
// id, with their type and start time.
func inflight(path string) map[string]inflightTask {
	out := map[string]inflightTask{}
	data, err := os.ReadFile(path)
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(data), "\n") {
		fs := strings.Fields(line)
		if len(fs) != 4 {
			continue
		}
		ns, _ := strconv.ParseInt(fs[1], 10, 64)
		switch fs[0] {
		case "start":
			out[fs[2]] = inflightTask{typ: fs[3], since: time.Unix(0, ns)}
		case "end":
			delete(out, fs[2])
		}
	}
	return out
}

type inflightTask struct {
	typ   string
	since time.Time
}

// kill kills child i with SIGKILL, waits until it is gone (bury), ages
// the leases of the tasks it was running (see the comment at the top) and
// starts a new one.
func (f *fleet) kill(i int) (hit []string) {
	f.t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	k := f.kids[i]
	_ = k.cmd.Process.Signal(syscall.SIGKILL)
	f.bury(k)
	f.kills++
	var ids []string
	for id, it := range inflight(k.log) {
		f.hits[it.typ]++
		hit = append(hit, strings.TrimPrefix(it.typ, "datastore:"))
		ids = append(ids, id)
	}
	f.age(ids)
	f.start(i)
	return hit
}

// age makes the leases of tasks look a minute old, so the next recoverer
// run re-queues them (only tasks that are still active).
func (f *fleet) age(ids []string) {
	ctx := context.Background()
	for _, id := range ids {
		old := float64(time.Now().Add(-61 * time.Second).Unix())
		if err := f.rdb.ZAddXX(ctx, "asynq:{"+tasks.Queue+"}:lease", redis.Z{Score: old, Member: id}).Err(); err != nil {
			f.t.Logf("age lease of %s: %v", id, err)
		}
		// ZADD XX without CH counts 0 even when it updated: check instead.
		if s, err := f.rdb.ZScore(ctx, "asynq:{"+tasks.Queue+"}:lease", id).Result(); err == nil && s == old {
			f.aged++
		}
	}
}

// running is every task some live child is running now.
func (f *fleet) running() map[string]inflightTask {
	f.mu.Lock()
	defer f.mu.Unlock()
	all := map[string]inflightTask{}
	for _, k := range f.kids {
		for id, it := range inflight(k.log) {
			all[id] = it
		}
	}
	return all
}

// busiest returns a child running a task of one of the wanted types for
// at least minAge, or -1.
func (f *fleet) busiest(want func(typ string) bool, minAge time.Duration) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, k := range f.kids {
		for _, it := range inflight(k.log) {
			if want(it.typ) && time.Since(it.since) >= minAge {
				return i
			}
		}
	}
	return -1
}

// ---- the workload

// chaosTask is one enqueued task.
type chaosTask struct {
	id  string
	typ string
	p   tasks.Payload
}

// queue enqueues and remembers tasks; it retries through a Redis restart.
type queue struct {
	t   *testing.T
	e   *Enqueuer
	mu  sync.Mutex
	all []chaosTask
}

func (q *queue) add(p tasks.Payload) string {
	q.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		info, err := q.e.Enqueue(context.Background(), p)
		var dup *DuplicateError
		switch {
		case err == nil:
			q.mu.Lock()
			q.all = append(q.all, chaosTask{id: info.ID, typ: p.TaskType(), p: p})
			q.mu.Unlock()
			return info.ID
		case errors.As(err, &dup):
			return ""
		case time.Now().After(deadline):
			q.t.Fatalf("enqueue %s: %v", p.TaskType(), err)
		}
		time.Sleep(100 * time.Millisecond) // Redis restarting
	}
}

func (q *queue) tasks() []chaosTask {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]chaosTask(nil), q.all...)
}

// states returns every task's state (a task not found is "lost").
func (q *queue) states(ins *asynq.Inspector) map[string]*asynq.TaskInfo {
	out := map[string]*asynq.TaskInfo{}
	for _, ct := range q.tasks() {
		info, err := ins.GetTaskInfo(tasks.Queue, ct.id)
		if err != nil {
			continue
		}
		out[ct.id] = info
	}
	return out
}

// uniqueWait makes otherwise identical payloads distinct jobs (the
// duplicate check compares payloads): a lock-wait of n milliseconds more.
func uniqueWait(n int) *tasks.Duration {
	return &tasks.Duration{Duration: time.Second + time.Duration(n)*time.Millisecond}
}

func lockBackendName(cfg chaosChildConfig) string {
	if cfg.RedisLease > 0 {
		return "redis leases " + cfg.RedisLease.String()
	}
	return "flock"
}

// ---- TestKill9Storm

// stormWorkload is the data and the tasks of a kill storm, and what must
// hold afterwards.
type stormWorkload struct {
	t      *testing.T
	stores map[string]*datastore.Store // without locks: setup and checks
	specs  map[string]chaosStoreSpec
	dirs   map[string]string // filesystem stores, for pbsfmt.py
	expect map[string]*invariant.Expect
	// garbage: unreferenced chunks made to look two days old, which a
	// GC must remove (filesystem only: S3 cannot backdate objects).
	garbage map[string][]datastore.Digest

	src  *testSource
	when time.Time

	// Where moved things are, and the task that last moved them: a move
	// back is only queued once that task completed, so the final place
	// is known.
	mgGroups []*movable
	mnTree   *movable
	// pSnaps are prune's group, oldest first; sSnaps sync's source.
	pSnaps, sSnaps []name.Snapshot
	n              int
	// locker takes locks as the workers do, for backups during the storm.
	locker func(holder string) (*lock.Locker, error)
}

// movable is a group (or namespace subtree) moved back and forth.
type movable struct {
	group    name.Group // for move-group
	from, to name.Namespace
	snaps    []name.Snapshot
	lastTask string
	moves    int
}

type testSource struct {
	dir string
	n   int
}

func (s *testSource) files(t testing.TB, withChunks bool) []datastore.BackupSource {
	t.Helper()
	s.n++
	conf := filepath.Join(s.dir, fmt.Sprintf("guest%d.conf", s.n))
	if err := os.WriteFile(conf, fmt.Appendf(nil, "guest %d\n%s\n", s.n, strings.Repeat("x", s.n%50)), 0o644); err != nil {
		t.Fatal(err)
	}
	out := []datastore.BackupSource{{Path: conf, Archive: "guest.conf"}}
	if withChunks {
		img := datastore.TestFile(t, "disk.img", 64<<10, 64<<10)
		out = append(out, datastore.BackupSource{Path: img, Archive: "disk.img"})
	}
	return out
}

// lockedBackup writes a snapshot while the workers run, under the locks
// they use, retrying while they are busy.
func (w *stormWorkload) lockedBackup(ns, typ, id string) (name.Snapshot, bool) {
	w.t.Helper()
	l, err := w.locker(fmt.Sprintf("storm-writer-%d", w.n))
	if err != nil {
		w.t.Fatal(err)
	}
	g, _ := name.NewGroup(name.MustNamespace(ns), typ, id)
	deadline := time.Now().Add(10 * time.Second)
	for {
		w.n++
		at := w.when.Add(time.Duration(w.n) * time.Hour)
		res, err := w.stores["main"].WithLocker(l).Backup(context.Background(),
			datastore.BackupRequest{Group: g, Time: at, Owner: "root@pam", Sources: w.src.files(w.t, true)}, nil)
		switch {
		case err == nil:
			return res.SnapshotName(), true
		case !errors.Is(err, lock.ErrBusy):
			w.t.Fatalf("backup into %s during the storm: %v", g, err)
		case time.Now().After(deadline):
			return name.Snapshot{}, false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (w *stormWorkload) backup(store, ns, typ, id string, withChunks bool) name.Snapshot {
	w.t.Helper()
	w.n++
	return datastore.TestBackupRequest(w.t, w.stores[store], ns, typ+"/"+id, datastore.BackupRequest{
		Time: w.when.Add(time.Duration(w.n) * time.Hour), Sources: w.src.files(w.t, withChunks)}).SnapshotName()
}

// newStormWorkload writes the data: store "main" with a namespace per
// operation, and an empty store "copy" that syncs go to.
func newStormWorkload(t *testing.T, open func(store string) (*datastore.Store, chaosStoreSpec, string)) *stormWorkload {
	w := &stormWorkload{
		t: t, stores: map[string]*datastore.Store{}, specs: map[string]chaosStoreSpec{}, dirs: map[string]string{},
		expect: map[string]*invariant.Expect{}, garbage: map[string][]datastore.Digest{},
		src: &testSource{dir: t.TempDir()}, when: time.Date(2024, 3, 1, 0, 0, 0, 0, time.UTC),
	}
	for _, st := range []string{"main", "copy"} {
		s, spec, dir := open(st)
		w.stores[st], w.specs[st] = s, spec
		if dir != "" {
			w.dirs[st] = dir
		}
		e := invariant.NewExpect()
		e.Strict = true
		w.expect[st] = e
	}
	main, cp := w.expect["main"], w.expect["copy"]
	ctx := context.Background()
	for _, ns := range []string{"mg/dst", "mn2"} {
		if err := w.stores["main"].CreateNamespace(ctx, name.MustNamespace(ns)); err != nil {
			t.Fatal(err)
		}
	}
	// verify
	for _, g := range []struct{ typ, id string }{{"vm", "100"}, {"vm", "100"}, {"ct", "101"}} {
		sn := w.backup("main", "v", g.typ, g.id, true)
		main.Want(sn)
		cp.Want(sn.InNS(name.MustNamespace("v2")))
	}
	// prune: twelve snapshots, the oldest with chunks; keep-last 4 and 3.
	for i := 0; i < 12; i++ {
		w.pSnaps = append(w.pSnaps, w.backup("main", "p", "vm", "300", i == 0))
	}
	// move-group: four groups of three snapshots
	for i := 0; i < 4; i++ {
		m := &movable{from: name.MustNamespace("mg/src"), to: name.MustNamespace("mg/dst")}
		for j := 0; j < 3; j++ {
			sn := w.backup("main", "mg/src", "vm", strconv.Itoa(401+i), j == 0)
			m.group = sn.Group
			m.snaps = append(m.snaps, sn)
		}
		w.mgGroups = append(w.mgGroups, m)
	}
	// move-namespace: mn/a with two child namespaces, moved back and forth
	// between mn/a and mn2/a; mn/b moved once.
	w.mnTree = &movable{from: name.MustNamespace("mn/a"), to: name.MustNamespace("mn2/a")}
	for _, g := range []struct{ ns, typ, id string }{{"mn/a", "vm", "500"}, {"mn/a/x", "ct", "501"}, {"mn/a/y", "host", "h5"}} {
		for j := 0; j < 2; j++ {
			w.mnTree.snaps = append(w.mnTree.snaps, w.backup("main", g.ns, g.typ, g.id, j == 0))
		}
	}
	for j := 0; j < 3; j++ {
		sn := w.backup("main", "mn/b", "vm", "510", j == 0)
		main.Want(sn, name.MustNamespace("mn2/b"))
	}
	// sync: s → copy root
	for _, g := range []struct{ typ, id string }{{"vm", "600"}, {"vm", "600"}, {"ct", "601"}, {"ct", "601"}} {
		w.sSnaps = append(w.sSnaps, w.backup("main", "s", g.typ, g.id, true))
	}
	// gc: on a filesystem every chunk is made to look two days old, and
	// unreferenced ones are added; GC must sweep those and keep the rest.
	for st, dir := range w.dirs {
		for i := 0; i < 3; i++ {
			data := make([]byte, 4096)
			_, _ = cryptorand.Read(data)
			w.garbage[st] = append(w.garbage[st], datastore.TestChunk(t, w.stores[st], data))
		}
		datastore.TestAgeChunks(t, dir, time.Now().Add(-48*time.Hour))
	}
	return w
}

// initial is the first wave of tasks: one or more of every type.
func (w *stormWorkload) initial(q *queue) {
	f := false
	q.add(&tasks.Verify{Store: "main", NS: "v", IgnoreVerified: &f})
	q.add(&tasks.Verify{Store: "main", NS: "v", IgnoreVerified: &f, MaxDepth: ptr(0)})
	q.add(&tasks.Prune{Store: "main", NS: "p", Keep: tasks.Keep{KeepLast: ptr(4)}})
	q.add(&tasks.Prune{Store: "main", NS: "p", Keep: tasks.Keep{KeepLast: ptr(3)}})
	for _, m := range w.mgGroups {
		w.moveGroup(q, m)
	}
	w.moveNamespace(q)
	q.add(&tasks.MoveNamespace{Store: "main", NS: "mn/b", TargetNS: "mn2/b"})
	q.add(&tasks.Sync{SourceStore: "main", SourceNS: "s", Store: "copy", NS: ""})
	q.add(&tasks.Sync{SourceStore: "main", SourceNS: "v", Store: "copy", NS: "v2"})
	q.add(&tasks.GC{Store: "main"})
	q.add(&tasks.GC{Store: "copy"})
}

func (w *stormWorkload) moveGroup(q *queue, m *movable) {
	g := m.group.InNS(m.from)
	m.lastTask = q.add(&tasks.MoveGroup{Store: "main", NS: m.from.String(), BackupType: string(g.Type), BackupID: g.ID, TargetNS: m.to.String()})
	m.from, m.to = m.to, m.from
	m.moves++
}

func (w *stormWorkload) moveNamespace(q *queue) {
	m := w.mnTree
	m.lastTask = q.add(&tasks.MoveNamespace{Store: "main", NS: m.from.String(), TargetNS: m.to.String()})
	m.from, m.to = m.to, m.from
	m.moves++
}

// more queues another task of type typ, if one can be queued now.
func (w *stormWorkload) more(q *queue, ins *asynq.Inspector, typ string, n int) bool {
	f := false
	switch typ {
	case tasks.TypeVerify:
		q.add(&tasks.Verify{Store: "main", NS: "v", IgnoreVerified: &f, LockWait: uniqueWait(n)})
	case tasks.TypePrune:
		// New snapshots first, so that the prune has work.
		for i := 0; i < 3; i++ {
			if sn, ok := w.lockedBackup("p", "vm", "300"); ok {
				w.pSnaps = append(w.pSnaps, sn)
			}
		}
		q.add(&tasks.Prune{Store: "main", NS: "p", Keep: tasks.Keep{KeepLast: ptr(3)}, LockWait: uniqueWait(n)})
	case tasks.TypeSync:
		if sn, ok := w.lockedBackup("s", "vm", "600"); ok {
			w.sSnaps = append(w.sSnaps, sn)
		}
		q.add(&tasks.Sync{SourceStore: "main", SourceNS: "s", Store: "copy", NS: "", LockWait: uniqueWait(n)})
	case tasks.TypeGC:
		q.add(&tasks.GC{Store: "main", LockWait: uniqueWait(n)})
	case tasks.TypeMoveGroup:
		for _, m := range w.mgGroups {
			if completed(ins, m.lastTask) {
				w.moveGroup(q, m)
				return true
			}
		}
		return false
	case tasks.TypeMoveNamespace:
		if !completed(ins, w.mnTree.lastTask) {
			return false
		}
		w.moveNamespace(q)
	}
	return true
}

func completed(ins *asynq.Inspector, id string) bool {
	info, err := ins.GetTaskInfo(tasks.Queue, id)
	return err == nil && info.State == asynq.TaskStateCompleted
}

// finalExpect adds where the moved snapshots must be now.
func (w *stormWorkload) finalExpect() {
	main, cp := w.expect["main"], w.expect["copy"]
	// Every prune keeps the newest three (or four) and the last one was
	// queued after the last snapshot was written.
	for i, sn := range w.pSnaps {
		if i < len(w.pSnaps)-3 {
			main.Gone(sn)
		} else {
			main.Want(sn)
		}
	}
	for _, sn := range w.sSnaps {
		main.Want(sn)
		cp.Want(sn.InNS(name.Root))
	}
	for _, m := range w.mgGroups {
		for _, sn := range m.snaps {
			main.Want(sn, m.from) // from: where the last move put it
		}
	}
	for _, sn := range w.mnTree.snaps {
		// The original tree was at mn/a; after an even number of moves
		// it is there again.
		at := sn.NS
		if w.mnTree.moves%2 == 1 {
			at, _ = name.Rebase(sn.NS, name.MustNamespace("mn/a"), name.MustNamespace("mn2/a"))
		}
		main.Want(sn, at)
	}
}

type stormOptions struct {
	storm       time.Duration
	settle      time.Duration
	lockBackend chaosChildConfig // LocksDir or RedisLease
	slowFS      time.Duration
}

func TestKill9Storm(t *testing.T) {
	// Beside TestKill9MidTask, which mostly waits (own Redis, stores and
	// worker processes).
	t.Parallel()
	storm := 20 * time.Second
	if stressMode() {
		storm = stressDuration(t, 60*time.Second)
	}
	t.Run("fs", func(t *testing.T) {
		runStorm(t, stormOptions{storm: storm, settle: 60 * time.Second, slowFS: 10 * time.Millisecond,
			lockBackend: chaosChildConfig{LocksDir: filepath.Join(t.TempDir(), "locks")}},
			func(store string) (*datastore.Store, chaosStoreSpec, string) {
				dir := t.TempDir()
				s := datastore.TestStore(t, datastore.TestName(store), datastore.TestAt(dir))
				return s, chaosStoreSpec{Dir: dir}, dir
			})
	})
	t.Run("s3", func(t *testing.T) {
		srv := s3test.StartVersity(t)
		runStorm(t, stormOptions{storm: storm, settle: 90 * time.Second, lockBackend: chaosChildConfig{RedisLease: 3 * time.Second}},
			func(store string) (*datastore.Store, chaosStoreSpec, string) {
				cfg := srv.Config(srv.UniquePrefix("storm-" + store))
				s := datastore.TestStore(t, datastore.TestName(store), datastore.TestOn("versitygw", srv.New(t, cfg.Prefix)))
				return s, chaosStoreSpec{S3: &cfg}, ""
			})
	})
}

func runStorm(t *testing.T, opts stormOptions, open func(store string) (*datastore.Store, chaosStoreSpec, string)) {
	ctx := context.Background()
	rs := redistest.Start(t, redistest.WithAppendOnly(true))
	w := newStormWorkload(t, open)
	e := newEnqueuer(t, rs.Addr())
	q := &queue{t: t, e: e}
	w.initial(q)

	cfg := opts.lockBackend
	cfg.Redis, cfg.Stores, cfg.SlowFS, cfg.Concurrency = rs.Addr(), w.specs, opts.slowFS, 2
	parent := &chaosStores{specs: w.specs, wait: time.Second}
	if cfg.RedisLease > 0 {
		parent.newLocks = func() (lock.Backend, error) {
			return redislock.New(rs.Client(), redislock.Options{Lease: cfg.RedisLease}), nil
		}
	} else {
		parent.newLocks = func() (lock.Backend, error) { return flock.New(flock.Options{Dir: cfg.LocksDir}) }
		parent.locksDir = cfg.LocksDir
	}
	t.Cleanup(parent.close)
	w.locker = parent.locker
	ins := e.Inspector()
	f := newFleet(t, cfg, 2, rs.Client(), ins)
	start := time.Now()
	t.Logf("storm: %d tasks queued, 2 workers (%s), %s of kill -9, Redis restarted halfway", len(q.tasks()), lockBackendName(cfg), opts.storm)

	// The storm: kill a worker running a type not hit yet as soon as it is
	// seen running, else a random one every 1.5–3 s; queue more of the
	// types not hit yet. It lasts opts.storm and then until every type
	// was hit (a loaded machine runs fewer tasks in the same time), up to
	// stormLimit, a guard against a hang; the check after it names the
	// types never hit.
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	nextRandom := time.Now().Add(time.Second)
	lastKill := time.Time{}
	lastFeed := time.Now()
	restarted := false
	extra := 0
	clearedLeases := map[string]bool{}
	maxTasks := int(opts.storm.Seconds() * 6)
	stormLimit := 4 * opts.storm
	leasesCleared := 0
	feeds := 0
	var killLog []string
	allHit := func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, typ := range tasks.Types {
			if f.hits[typ] == 0 {
				return false
			}
		}
		return true
	}
	for d := time.Since(start); d < stormLimit && (d < opts.storm || !allHit()); d = time.Since(start) {
		time.Sleep(5 * time.Millisecond)
		if !restarted && time.Since(start) > opts.storm/2 {
			t0 := time.Now()
			rs.Restart()
			restarted = true
			t.Logf("redis restarted at %.1fs (down %s)", time.Since(start).Seconds(), time.Since(t0).Round(time.Millisecond))
		}
		if time.Since(lastFeed) > 500*time.Millisecond {
			lastFeed = time.Now()
			feeds++
			// A killed GC's lease blocks every later GC (ten minutes): clear it
			// as an administrator would, so that GCs keep running.
			for _, ct := range q.tasks() {
				if ct.typ != tasks.TypeGC {
					continue
				}
				if info, err := ins.GetTaskInfo(tasks.Queue, ct.id); err == nil && info.State != asynq.TaskStateCompleted {
					if gcLeaseWorkaround(t, f, w, ct, info, clearedLeases) {
						leasesCleared++
					}
				}
			}
			// Past maxTasks only the types not hit yet are fed, every 2 s.
			full := len(q.tasks()) >= maxTasks
			for _, typ := range tasks.Types {
				f.mu.Lock()
				hit := f.hits[typ]
				f.mu.Unlock()
				if full && (hit > 0 || feeds%4 != 0) {
					continue
				}
				if hit == 0 || rng.IntN(3) == 0 {
					extra++
					w.more(q, ins, typ, extra)
				}
			}
		}
		if time.Since(lastKill) < 400*time.Millisecond {
			continue
		}
		minAge := time.Duration(rng.IntN(20)) * time.Millisecond
		victim := f.busiest(func(typ string) bool { return f.hits[typ] == 0 }, minAge)
		if victim < 0 && time.Now().After(nextRandom) {
			// Only a worker that runs something: killing idle ones
			// tests nothing.
			if victim = f.busiest(func(string) bool { return true }, minAge); victim >= 0 {
				nextRandom = time.Now().Add(1500*time.Millisecond + rand.N(1500*time.Millisecond))
			}
		}
		if victim >= 0 {
			hit := f.kill(victim)
			lastKill = time.Now()
			killLog = append(killLog, fmt.Sprintf("%.1fs worker%d %v", time.Since(start).Seconds(), victim, hit))
		}
	}
	t.Logf("storm over after %.1fs: %d kills, %d stale GC lease(s) of killed GCs cleared: %s", time.Since(start).Seconds(), f.kills, leasesCleared, strings.Join(killLog, "; "))

	// Settle: no more kills; everything queued must complete.
	settled := settle(t, f, q, w, opts.settle)
	if rerunSkipped(t, f, q, w) {
		settled += settle(t, f, q, w, opts.settle)
	}
	states := q.states(ins)
	byState := map[string]int{}
	retried, knownRerun := 0, 0
	for _, ct := range q.tasks() {
		info := states[ct.id]
		if info == nil {
			byState["lost"]++
			t.Errorf("task %s (%s) lost: not found in any asynq state", ct.id, ct.typ)
			continue
		}
		byState[info.State.String()]++
		retried += info.Retried
		if info.State == asynq.TaskStateCompleted {
			continue
		}
		if rerunOfFinishedMove(ct, info) {
			// The worker died after the move was done and before asynq
			// recorded it. A re-run that finds the target counts as done
			// (TestMoveRerunAfterDeath); this one found neither source nor
			// target, because a later task of the storm moved the group
			// on. The data checks below still hold.
			knownRerun++
			t.Logf("task %s (%s) re-run after its worker died at the end of the move, its target moved on since: archived as %q", ct.id, ct.typ, info.LastErr)
			continue
		}
		t.Errorf("task %s (%s) %s, not completed; retried %d, last error %q, record %s", ct.id, ct.typ, info.State, info.Retried, info.LastErr, info.Result)
	}
	qi, err := ins.GetQueueInfo(tasks.Queue)
	if err != nil {
		t.Fatal(err)
	}
	if sum := qi.Pending + qi.Active + qi.Scheduled + qi.Retry + qi.Archived + qi.Completed + qi.Aggregating; sum != len(q.tasks()) {
		t.Errorf("queue holds %d tasks in all states, %d were queued", sum, len(q.tasks()))
	}
	var hits []string
	for _, typ := range tasks.Types {
		hits = append(hits, fmt.Sprintf("%s %d", strings.TrimPrefix(typ, "datastore:"), f.hits[typ]))
		if f.hits[typ] == 0 {
			t.Errorf("no kill caught a %s task running", typ)
		}
	}
	t.Logf("result: %d tasks %v (retried %d times in all; %d finished moves re-run and refused), %d kills mid-task by type [%s], %d leases aged, settled in %s; a dead worker's S3 requests took up to %s to complete",
		len(q.tasks()), byState, retried, knownRerun, f.kills, strings.Join(hits, ", "), f.aged, settled.Round(time.Millisecond), f.quietMax.Round(time.Millisecond))

	if cfg.LocksDir != "" {
		// The storm ran with PBS's files in place: moves appended to PBS's
		// move journal, writers and GC locked the chunk store's .lock.
		for _, p := range []string{filepath.Join(cfg.LocksDir, "main", "move-journal"), filepath.Join(w.specs["main"].Dir, ".lock")} {
			if _, err := os.Stat(p); err != nil {
				t.Errorf("the storm ran without PBS's files: %v", err)
			}
		}
	}

	// What must hold of the data.
	w.finalExpect()
	for _, st := range []string{"main", "copy"} {
		s := w.stores[st]
		rep, err := invariant.Check(ctx, s, w.expect[st], invariant.Options{Deep: true, Verify: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := rep.Err(); err != nil {
			t.Errorf("store %s: %v", st, err)
		}
		files, err := invariant.CheckFiles(ctx, s.Backend())
		if err != nil {
			t.Fatal(err)
		}
		if err := files.Err(); err != nil {
			t.Errorf("store %s: %v", st, err)
		}
		t.Logf("store %s: %d finished snapshots, %d chunks checked, %d files whole, %d temp files left by killed workers (ignored by every listing)",
			st, rep.Finished, rep.Chunks, files.Files, len(files.Temps))
		for _, d := range w.garbage[st] {
			if ok, err := s.ChunkExists(ctx, d); err != nil || ok {
				t.Errorf("store %s: GC did not remove unreferenced old chunk %s (%v)", st, d, err)
			}
		}
		if dir := w.dirs[st]; dir != "" {
			if _, err := invariant.PBSFmtCheck(ctx, dir); err != nil {
				t.Errorf("store %s: %v", st, err)
			}
		}
	}
}

// settle lets the workers finish everything queued: tasks retrying after
// a failure are brought forward, tasks orphaned by a worker killed between
// dequeuing and logging them are recovered, and a GC lease left by a killed
// GC is removed as an administrator would (see gcLeaseWorkaround).
// rerunSkipped re-queues the last prune of p, each group's last move and
// each sync's last run if they completed as skipped, and reports whether
// it queued any. (The sync of v into copy:v2 runs once: a snapshot it
// skipped under a killed sync's lease was missing at the end.) Skipping is
// by design (exit 4): a group stayed busy past the lock wait, e.g. under the
// lease of a killed worker's lock. The final expectations assume those jobs
// took effect, so they run once more now that nothing else runs, with a lock
// wait beyond the lease.
func rerunSkipped(t *testing.T, f *fleet, q *queue, w *stormWorkload) bool {
	t.Helper()
	last := map[string]chaosTask{} // the newest task of each job kind
	for _, ct := range q.tasks() {
		switch p := ct.p.(type) {
		case *tasks.Prune:
			if p.NS == "p" {
				last["prune"] = ct
			}
		case *tasks.MoveGroup:
			last["move "+p.BackupType+"/"+p.BackupID] = ct
		case *tasks.Sync:
			last["sync "+p.SourceNS+" to "+p.NS] = ct
		}
	}
	wait := &tasks.Duration{Duration: 10 * time.Second}
	queued := false
	for _, ct := range last {
		info, err := f.ins.GetTaskInfo(tasks.Queue, ct.id)
		if err != nil {
			continue // reported as lost by the caller
		}
		rec, _ := tasks.ParseRecord(info.Result)
		if rec.Outcome != tasks.OutcomeSkipped {
			continue
		}
		var again tasks.Payload
		switch p := ct.p.(type) {
		case *tasks.Prune:
			c := *p
			c.LockWait = wait
			again = &c
		case *tasks.MoveGroup:
			c := *p
			c.LockWait = wait
			again = &c
		case *tasks.Sync:
			c := *p
			c.LockWait = wait
			again = &c
		}
		t.Logf("task %s (%s) skipped a busy group or snapshot (%s); running it once more", ct.id, ct.typ, rec.Error)
		q.add(again)
		queued = true
	}
	return queued
}

func settle(t *testing.T, f *fleet, q *queue, w *stormWorkload, limit time.Duration) time.Duration {
	start := time.Now()
	ins := f.ins
	suspects := map[string]time.Time{}
	forwarded, leases := 0, 0
	cleared := map[string]bool{} // GC lease holders already dealt with
	for {
		states := q.states(ins)
		done := true
		running := f.running()
		for _, ct := range q.tasks() {
			info := states[ct.id]
			if info == nil || info.State == asynq.TaskStateCompleted || info.State == asynq.TaskStateArchived {
				continue
			}
			done = false
			switch info.State {
			case asynq.TaskStateRetry, asynq.TaskStateScheduled:
				if ct.typ == tasks.TypeGC && gcLeaseWorkaround(t, f, w, ct, info, cleared) {
					leases++
				}
				if time.Until(info.NextProcessAt) > time.Second {
					if err := ins.RunTask(tasks.Queue, ct.id); err == nil {
						forwarded++
					}
				}
			case asynq.TaskStateActive:
				if _, ok := running[ct.id]; ok {
					delete(suspects, ct.id)
					continue
				}
				// Active but no live worker runs it: a worker was killed
				// after dequeuing it and before logging it. Confirm a
				// second later, then recover it.
				first, seen := suspects[ct.id]
				if !seen {
					suspects[ct.id] = time.Now()
				} else if time.Since(first) > time.Second {
					t.Logf("settle: task %s (%s) orphaned by a killed worker; recovering it", ct.id, ct.typ)
					f.mu.Lock()
					f.age([]string{ct.id})
					f.mu.Unlock()
					delete(suspects, ct.id)
					f.restartIdle()
				}
			}
		}
		if done {
			t.Logf("settled: %d retrying task(s) brought forward, %d stale GC lease(s) of killed workers removed", forwarded, leases)
			return time.Since(start)
		}
		if time.Since(start) > limit {
			t.Logf("settle: gave up after %s", limit)
			return time.Since(start)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// rerunOfFinishedMove: a move archived because, re-run after its worker
// was killed, it found its source gone (it had moved everything already).
func rerunOfFinishedMove(ct chaosTask, info *asynq.TaskInfo) bool {
	if ct.typ != tasks.TypeMoveGroup && ct.typ != tasks.TypeMoveNamespace {
		return false
	}
	return info.State == asynq.TaskStateArchived && info.Retried > 0 && strings.Contains(info.LastErr, "not found")
}

// restartIdle restarts (kill -9, start) a worker that runs nothing, so
// that its recoverer runs at once.
func (f *fleet) restartIdle() {
	for i := range f.kids {
		f.mu.Lock()
		idle := len(inflight(f.kids[i].log)) == 0
		f.mu.Unlock()
		if idle {
			f.kill(i)
			return
		}
	}
}

// gcLeaseWorkaround removes the GC lease of a GC killed on this host,
// which otherwise blocks every GC of the store until it goes stale (ten
// minutes, longer than a storm): an administrator does the same,
// following the busy message. cleared is keyed by pid and store: one
// killed worker may have run GCs of both stores.
//
// The holder must be gone (fleet.bury), not merely fail kill(pid, 0): a
// killed GC's last heartbeat (an S3 PUT of the lease) can still be on its
// way to the server after the process died, and landing after the
// removal it brought the dead holder's lease back, for good (cleared), so
// that every later GC of the store was refused until the settle gave up.
// And the file removed must still name that pid: a live GC may hold the
// lease by now.
func gcLeaseWorkaround(t *testing.T, f *fleet, w *stormWorkload, ct chaosTask, info *asynq.TaskInfo, cleared map[string]bool) bool {
	const marker = "is already running on "
	i := strings.Index(info.LastErr, marker)
	if i < 0 {
		return false
	}
	rest := info.LastErr[i+len(marker):]
	j := strings.Index(rest, "(pid ")
	if j < 0 {
		return false
	}
	fields := strings.Fields(rest[j+5:])
	if len(fields) == 0 {
		return false
	}
	pid, err := strconv.Atoi(strings.TrimRight(fields[0], ")"))
	store := ct.p.Stores()[0]
	key := fmt.Sprintf("%d %s", pid, store)
	if err != nil || cleared[key] || !f.isGone(pid) {
		return false // a live GC: wait for it
	}
	ctx := context.Background()
	b := w.stores[store].Backend()
	var lease struct{ PID int }
	data, err := b.ReadFile(ctx, ".pbsq/gc-running")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Logf("read gc lease of %s: %v", store, err)
		return false // try again at the next round
	}
	if err != nil || json.Unmarshal(data, &lease) != nil || lease.PID != pid {
		cleared[key] = true // released, or taken since by a live GC
		return false
	}
	cleared[key] = true
	if err := b.Remove(ctx, ".pbsq/gc-running"); err != nil {
		t.Logf("remove stale gc lease of %s: %v", store, err)
		return false
	}
	t.Logf("WORKAROUND: GC lease of killed worker pid %d on store %s removed by hand (GC refuses it for 10 min otherwise)", pid, store)
	return true
}

func stressMode() bool { return os.Getenv("PBSQ_STRESS") == "1" }

func stressDuration(t *testing.T, def time.Duration) time.Duration {
	if v := os.Getenv("PBSQ_STRESS_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("PBSQ_STRESS_DURATION=%q: %v", v, err)
		}
		return d
	}
	return def
}

// ---- TestStress

// TestStress is the load test: two workers, four backup writers and a
// stream of every task type for a bounded time, on a filesystem store
// (flock) and, under PBSQ_STRESS=1, on S3 (Redis leases). Every lock grant,
// release and refusal of both workers and all writers is audited, and the
// audit is checked for overlaps the lock semantics forbid. It reports
// tasks/s, backups/s, the lock busy rate and lock wait percentiles (logged,
// and written to $PBSQ_STRESS_REPORT). The short default run (fs, 12 s)
// is part of the normal suite; `make stress` runs the long one.
func TestStress(t *testing.T) {
	d := 12 * time.Second
	kinds := []string{"fs"}
	if stressMode() {
		d = stressDuration(t, 60*time.Second)
		kinds = append(kinds, "s3")
	}
	var report strings.Builder
	fmt.Fprintf(&report, "pbsq stress: %s per backend, 2 workers (concurrency 2), 4 backup writers, GOMAXPROCS %d, race detector %v, %s\n",
		d, runtime.GOMAXPROCS(0), raceBuild(), time.Now().UTC().Format(time.RFC3339))
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			line := runStress(t, kind, d)
			report.WriteString(line + "\n")
		})
	}
	t.Log("\n" + report.String())
	out := os.Getenv("PBSQ_STRESS_REPORT")
	if out == "" {
		out = filepath.Join(t.TempDir(), "stress.txt")
	}
	if err := os.WriteFile(out, []byte(report.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("report written to %s", out)
}

// raceBuild reports whether the test binary has the race detector.
func raceBuild() bool {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "-race" {
				return s.Value == "true"
			}
		}
	}
	return false
}

// stressRun is one backend's load run.
type stressRun struct {
	t      *testing.T
	kind   string
	stores map[string]*datastore.Store
	specs  map[string]chaosStoreSpec
	audit  *invariant.Audit
	q      *queue
	ins    *asynq.Inspector
	clock  atomic.Int64 // backup times: strictly increasing across writers

	mu      sync.Mutex
	backups map[invariant.Key][]name.Namespace // successful, with allowed places
	wstats  map[string]int                     // writer outcomes
	// group moves: a group moves again only once its last move completed
	lastMove map[string]string
	mnsAt    name.Namespace // where the mns subtree is
	mnsTask  string
}

func runStress(t *testing.T, kind string, d time.Duration) string {
	ctx := context.Background()
	rs := redistest.Start(t)
	r := &stressRun{t: t, kind: kind, stores: map[string]*datastore.Store{}, specs: map[string]chaosStoreSpec{},
		audit: &invariant.Audit{}, backups: map[invariant.Key][]name.Namespace{}, wstats: map[string]int{},
		lastMove: map[string]string{}, mnsAt: name.MustNamespace("mns/a")}
	r.clock.Store(time.Date(2024, 3, 1, 0, 0, 0, 0, time.UTC).Unix())
	var newLocks func() (lock.Backend, error)
	var locksDir string
	switch kind {
	case "fs":
		locks := filepath.Join(t.TempDir(), "locks")
		newLocks = func() (lock.Backend, error) { return flock.New(flock.Options{Dir: locks}) }
		locksDir = locks
		for _, st := range []string{"main", "copy"} {
			dir := t.TempDir()
			s := datastore.TestStore(t, datastore.TestName(st), datastore.TestAt(dir))
			r.stores[st], r.specs[st] = s, chaosStoreSpec{Dir: dir}
		}
	case "s3":
		srv := s3test.StartVersity(t)
		newLocks = func() (lock.Backend, error) {
			rdb := redis.NewClient(&redis.Options{Addr: rs.Addr()})
			t.Cleanup(func() { _ = rdb.Close() })
			return redislock.New(rdb, redislock.Options{Lease: 10 * time.Second}), nil
		}
		for _, st := range []string{"main", "copy"} {
			cfg := srv.Config(srv.UniquePrefix("stress-" + st))
			s := datastore.TestStore(t, datastore.TestName(st), datastore.TestOn("versitygw", srv.New(t, cfg.Prefix)))
			r.stores[st], r.specs[st] = s, chaosStoreSpec{S3: &cfg}
		}
	}
	main := r.stores["main"]
	for _, ns := range []string{"w/0", "w/1", "w/2", "w/3", "arch/0", "arch/1", "arch/2", "arch/3", "mns/a/x", "mns2"} {
		if err := main.CreateNamespace(ctx, name.MustNamespace(ns)); err != nil {
			t.Fatal(err)
		}
	}
	e := newEnqueuer(t, rs.Addr())
	r.q, r.ins = &queue{t: t, e: e}, e.Inspector()

	// Two workers, each with its own lock backend, as two processes have.
	for i := 0; i < 2; i++ {
		stores := &chaosStores{specs: r.specs, newLocks: newLocks, locksDir: locksDir, audit: r.audit.Add, wait: 2 * time.Second}
		t.Cleanup(stores.close)
		opts := fastOptions(t, rs.Addr(), stores, nil)
		opts.Logger = slog.New(slog.DiscardHandler)
		opts.BusyDelay = func() time.Duration { return 100*time.Millisecond + rand.N(200*time.Millisecond) }
		startWorker(t, opts)
	}
	writers := &chaosStores{specs: r.specs, newLocks: newLocks, locksDir: locksDir, audit: r.audit.Add, wait: 2 * time.Second}
	t.Cleanup(writers.close)

	start := time.Now()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	src := &testSource{dir: t.TempDir()}
	var srcMu sync.Mutex
	files := func() []datastore.BackupSource {
		srcMu.Lock()
		defer srcMu.Unlock()
		return src.files(t, true)
	}
	for k := 0; k < 4; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.writer(k, writers, files, stop)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.feeder(stop)
	}()
	time.Sleep(d)
	close(stop)
	wg.Wait()
	loadEnd := time.Since(start)

	// Drain: everything queued completes (busy re-queues brought forward).
	deadline := time.Now().Add(90 * time.Second)
	for {
		pending := 0
		for _, info := range r.q.states(r.ins) {
			switch info.State {
			case asynq.TaskStateCompleted, asynq.TaskStateArchived:
			default:
				pending++
				if info.State != asynq.TaskStateActive && time.Until(info.NextProcessAt) > 200*time.Millisecond {
					_ = r.ins.RunTask(tasks.Queue, info.ID)
				}
			}
		}
		if pending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("%d task(s) still queued 90s after the load stopped", pending)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	total := time.Since(start)

	// Outcomes, and what prune removed (those snapshots may be gone).
	outcomes := map[string]int{}
	pruned := map[invariant.Key]bool{}
	finished := 0
	for _, ct := range r.q.tasks() {
		info, err := r.ins.GetTaskInfo(tasks.Queue, ct.id)
		if err != nil {
			t.Errorf("task %s (%s) lost: %v", ct.id, ct.typ, err)
			continue
		}
		rec, _ := tasks.ParseRecord(info.Result)
		outcomes[strings.TrimPrefix(ct.typ, "datastore:")+":"+rec.Outcome]++
		if info.State == asynq.TaskStateCompleted {
			finished++
		}
		if rec.Outcome != tasks.OutcomeOK && rec.Outcome != tasks.OutcomeSkipped {
			t.Errorf("task %s (%s) %s: outcome %q: %s", ct.id, ct.typ, info.State, rec.Outcome, rec.Error)
		}
		if ct.typ == tasks.TypePrune {
			var res datastore.PruneResult
			if json.Unmarshal(rec.Result, &res) == nil {
				for _, dc := range res.Decisions {
					if dc.Removed {
						if sn, err := name.ParseSnapshot(name.Root, dc.Snapshot); err == nil {
							pruned[invariant.KeyOf(sn)] = true
						}
					}
				}
			}
		}
	}

	// The audit: no two holders ever held conflicting locks at once.
	if ov := r.audit.Overlaps(); len(ov) > 0 {
		t.Errorf("%d forbidden lock overlap(s), e.g.:\n  %s", len(ov), strings.Join(ov[:min(len(ov), 10)], "\n  "))
	}
	st := r.audit.Stats()
	if st.Unreleased > 0 {
		t.Errorf("%d lock(s) granted and never released", st.Unreleased)
	}

	// The data: every backup that succeeded is where it belongs exactly
	// once, unless a prune removed it; everything is valid.
	exp := invariant.NewExpect()
	exp.Strict = true
	r.mu.Lock()
	for k, nss := range r.backups {
		if pruned[k] {
			continue
		}
		exp.Present[k] = nss
	}
	backups := len(r.backups)
	wstats := fmt.Sprint(r.wstats)
	r.mu.Unlock()
	for k := range pruned {
		if _, ok := exp.Present[k]; !ok {
			exp.Absent[k] = true
		}
	}
	for st, e := range map[string]*invariant.Expect{"main": exp, "copy": invariant.NewExpect()} {
		rep, err := invariant.Check(ctx, r.stores[st], e, invariant.Options{Deep: true, Verify: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := rep.Err(); err != nil {
			t.Errorf("store %s: %v", st, err)
		}
	}
	line := fmt.Sprintf("%-3s %s load (%s until drained): %d tasks finished, %.2f tasks/s; %d backups, %.2f backups/s; locks: %s; 0 forbidden overlaps in %d audit events; writers %s; outcomes %v",
		kind, loadEnd.Round(time.Second), total.Round(time.Second), finished, float64(finished)/total.Seconds(),
		backups, float64(backups)/loadEnd.Seconds(), st, r.audit.Len(), wstats, outcomes)
	t.Log(line)
	return line
}

// writer k backs up into its own groups in w/k (and writer 3 also into
// the mns subtree, which move-namespace carries back and forth) until
// stop.
func (r *stressRun) writer(k int, stores *chaosStores, files func() []datastore.BackupSource, stop chan struct{}) {
	ctx := context.Background()
	for n := 0; ; n++ {
		select {
		case <-stop:
			return
		default:
		}
		ns := name.MustNamespace("w/" + strconv.Itoa(k))
		allowed := []name.Namespace{ns, name.MustNamespace("arch/" + strconv.Itoa(k))}
		id := strconv.Itoa(1000 + 10*k + n%3)
		if k == 3 && n%4 == 3 {
			r.mu.Lock()
			ns = r.mnsAt
			r.mu.Unlock()
			allowed = []name.Namespace{name.MustNamespace("mns/a"), name.MustNamespace("mns2/a")}
			id = "1099"
		}
		holder := fmt.Sprintf("writer-%d-%d", k, n)
		l, err := stores.locker(holder)
		if err != nil {
			r.t.Error(err)
			return
		}
		s := r.stores["main"].WithLocker(l)
		g, _ := name.NewGroup(ns, "vm", id)
		at := time.Unix(r.clock.Add(1), 0).UTC()
		res, err := s.Backup(ctx, datastore.BackupRequest{Group: g, Time: at, Owner: "root@pam", Sources: files()}, nil)
		r.mu.Lock()
		switch {
		case err == nil:
			r.wstats["ok"]++
			r.backups[invariant.KeyOf(res.SnapshotName())] = allowed
		case errors.Is(err, lock.ErrBusy):
			r.wstats["busy"]++
		case errors.Is(err, datastore.ErrNotFound):
			r.wstats["moved-away"]++ // the mns subtree moved meanwhile
		default:
			r.wstats["error"]++
			r.t.Errorf("writer %d: backup %s at %s: %v", k, g, at, err)
		}
		r.mu.Unlock()
	}
}

// feeder queues a random task every 25 ms while fewer than 8 wait, so
// the workers never run dry and tasks/s measures what they manage.
func (r *stressRun) feeder(stop chan struct{}) {
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	f := false
	for n := 0; ; n++ {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		if qi, err := r.ins.GetQueueInfo(tasks.Queue); err == nil && qi.Pending+qi.Scheduled+qi.Retry >= 8 {
			continue
		}
		var p tasks.Payload
		switch rng.IntN(8) {
		case 0:
			p = &tasks.Verify{Store: "main", NS: "w", IgnoreVerified: &f, LockWait: uniqueWait(n)}
		case 1:
			p = &tasks.Verify{Store: "main", NS: "arch", LockWait: uniqueWait(n)}
		case 2:
			p = &tasks.Prune{Store: "main", NS: "w", Keep: tasks.Keep{KeepLast: ptr(4)}, LockWait: uniqueWait(n)}
		case 3:
			p = &tasks.Prune{Store: "main", NS: "arch", Keep: tasks.Keep{KeepLast: ptr(6)}, LockWait: uniqueWait(n)}
		case 4:
			// Writer k's groups are vm/10k0..10k2 in w/k.
			id := strconv.Itoa(1000 + 10*rng.IntN(4) + rng.IntN(3))
			k := string(id[2])
			g, _ := name.NewGroup(name.MustNamespace("w/"+k), "vm", id)
			if ok, _ := r.stores["main"].GroupExists(context.Background(), g); !ok {
				continue
			}
			r.mu.Lock()
			last := r.lastMove[id]
			r.mu.Unlock()
			if last != "" && !completed(r.ins, last) {
				continue
			}
			id2 := r.q.add(&tasks.MoveGroup{Store: "main", NS: "w/" + k, BackupType: "vm", BackupID: id, TargetNS: "arch/" + k})
			r.mu.Lock()
			r.lastMove[id] = id2
			r.mu.Unlock()
			continue
		case 5:
			r.mu.Lock()
			last, at := r.mnsTask, r.mnsAt
			r.mu.Unlock()
			if last != "" && !completed(r.ins, last) {
				continue
			}
			to := name.MustNamespace("mns2/a")
			if at == to {
				to = name.MustNamespace("mns/a")
			}
			id := r.q.add(&tasks.MoveNamespace{Store: "main", NS: at.String(), TargetNS: to.String()})
			r.mu.Lock()
			// Writers aim at the new place from now on; until the move
			// is done they get "not found" or a busy lock, both counted.
			r.mnsTask, r.mnsAt = id, to
			r.mu.Unlock()
			continue
		case 6:
			p = &tasks.Sync{SourceStore: "main", SourceNS: "w", Store: "copy", NS: "", LockWait: uniqueWait(n)}
		case 7:
			store := "main"
			if rng.IntN(2) == 0 {
				store = "copy"
			}
			p = &tasks.GC{Store: store, LockWait: uniqueWait(n)}
		}
		r.q.add(p)
	}
}

// ---- bad input at the worker

// TestHostilePayloadsArchived: payloads that bypass the CLI (any Redis
// client can queue them) with path traversal in any name field, absurd
// sizes or values, unknown or duplicate fields, are archived at once with
// the reason, never retried, and touch nothing.
func TestHostilePayloadsArchived(t *testing.T) {
	rs := redistest.Start(t)
	f := newFixture(t)
	before := treeOf(t, f.dir)
	startWorker(t, fastOptions(t, rs.Addr(), f.stores, nil))
	client := asynq.NewClient(asynq.RedisClientOpt{Addr: rs.Addr()})
	defer client.Close()
	ins := asynq.NewInspector(asynq.RedisClientOpt{Addr: rs.Addr()})
	defer ins.Close()

	huge := `{"store":"test","ns":"a","pad":"` + strings.Repeat("x", tasks.MaxPayloadSize) + `"}`
	manyFilters := `{"source-store":"test","source-ns":"a","store":"test","ns":"z","group-filter":[` +
		strings.TrimSuffix(strings.Repeat(`"regex:`+strings.Repeat("a", 1000)+`",`, 70), ",") + `]}`
	for _, c := range []struct {
		typ, payload, reason string
	}{
		{tasks.TypeVerify, huge, "more than 65536"},
		{tasks.TypeSync, manyFilters, "more than 65536"},
		{tasks.TypeMoveGroup, `{"store":"test","ns":"a","backup-type":"vm","backup-id":"100","target-ns":"../../etc"}`, "target-ns"},
		{tasks.TypeMoveGroup, `{"store":"test","ns":"a","backup-type":"vm","backup-id":"../../100","target-ns":"b"}`, "../../100"},
		{tasks.TypeMoveNamespace, `{"store":"test","ns":"a","target-ns":"/abs/path"}`, "/abs/path"},
		{tasks.TypeSync, `{"source-store":"test","source-ns":"a/..","store":"test","ns":"b"}`, "a/.."},
		{tasks.TypePrune, `{"store":"../test","ns":"a","keep-last":1}`, "../test"},
		{tasks.TypePrune, `{"store":"test","ns":"a","backup-type":"vm/../ct","backup-id":"1","keep-last":1}`, "vm/../ct"},
		{tasks.TypeVerify, `{"store":"test","ns":"a\u0000b"}`, "ns"},
		{tasks.TypeVerify, `{"store":"test","ns":"a","backup-type":"vm","backup-id":"100","snapshot":"2024-03-01T10:00:00Z/../x"}`, "snapshot"},
		{tasks.TypeVerify, `{"store":"test","max-depth":99999999999}`, "max-depth"},
		{tasks.TypeGC, `{"store":"test","lock-wait":"9999h"}`, "lock-wait"},
		{tasks.TypeGC, `{"store":"test"}{"store":"other"}`, "trailing"},
		{tasks.TypeGC, `{"store":"test","dry-run":true,"cutoff":"1m"}`, `unknown field "cutoff"`},
		{tasks.TypeSync, `{"source-store":"test","source-ns":"a","store":"test","ns":"b","group-filter":["regex:(a+)+$"],"owner":"root@pam\nx"}`, "owner"},
		{tasks.TypeVerify, strings.Repeat("[", 20000) + strings.Repeat("]", 20000), "invalid"},
	} {
		info, err := client.Enqueue(asynq.NewTask(c.typ, []byte(c.payload)), asynq.Queue(tasks.Queue),
			asynq.MaxRetry(tasks.MaxRetry), asynq.Retention(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		got := waitTask(t, ins, info.ID, 10*time.Second, asynq.TaskStateArchived, asynq.TaskStateCompleted)
		rec := record(t, got)
		short := c.payload[:min(len(c.payload), 80)]
		if got.State != asynq.TaskStateArchived || got.Retried != 0 || rec.Outcome != tasks.OutcomeInvalid {
			t.Errorf("%s %s: state %s retried %d outcome %q; want archived at once as invalid", c.typ, short, got.State, got.Retried, rec.Outcome)
		}
		if !strings.Contains(rec.Error, c.reason) {
			t.Errorf("%s %s: reason %q does not mention %q", c.typ, short, rec.Error, c.reason)
		}
		// The record names the problem but does not echo a huge payload.
		if len(got.Result) > 8<<10 {
			t.Errorf("%s: record of %d bytes for a refused payload", c.typ, len(got.Result))
		}
	}
	if after := treeOf(t, f.dir); after != before {
		t.Error("refused payloads changed the datastore")
	}
}

// treeOf lists every path under dir with its size, as one string.
func treeOf(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %d\n", p, fi.Size())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}
