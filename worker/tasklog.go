package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/pbsq/pbsq/tasks"
)

// A task log is a Redis list of lines, "<RFC 3339 UTC ms> <text>", beside a
// meta hash (started, ended, dropped). Both expire with the task record:
// every append sets their TTL to the retention of finished tasks plus the
// task type's timeout, so a log never outlives its task by much and never
// expires while the task still runs.
const (
	// LogMaxLines bounds a task log. Lines beyond it are dropped and
	// counted; a marker line says so as soon as it happens, and the last
	// lines before the end plus the closing lines are kept regardless
	// (logReserve of the bound is kept free for them).
	LogMaxLines = 10000
	logReserve  = 16
	// logTail is how many of the latest lines are re-sent at the end of a
	// log that dropped lines, so that the operation's summary survives.
	logTail = 4
	// logMaxLine bounds one line (bytes).
	logMaxLine = 4 << 10
	// logPendingMax bounds the lines buffered while Redis is slow; lines
	// beyond it are dropped (and counted) rather than stall the operation.
	logPendingMax = LogMaxLines
	// logBatch is a batch worth sending without waiting for more.
	logBatch = 256
	// logFlushEvery is the longest a line waits in the buffer.
	logFlushEvery = 200 * time.Millisecond
)

func logKey(id string) string     { return "pbsq:tasklog:" + id }
func logMetaKey(id string) string { return "pbsq:tasklog-meta:" + id }

// logTTL is the lifetime of a task's log from its last line on.
func logTTL(typ string) time.Duration { return tasks.Retention + tasks.Timeout(typ) }

// archiveRetention is how long asynq keeps an archived task (a failed,
// cancelled or invalid one): 90 days, not configurable. Its log is kept
// as long, from its last line on.
const archiveRetention = 90 * 24 * time.Hour

// logAppend appends lines to a log. KEYS: log, meta. ARGV: cap (regular
// lines), ttl ms, final (0/1), started (unix ms; 0: not a run), locally
// dropped, now (unix ms), lines... Regular lines beyond cap are dropped and counted in meta; the
// first drop writes a marker. Final lines always go in, after a marker
// with the dropped count, and set `ended`. It returns the dropped total.
var logAppend = redis.NewScript(`
local cap = tonumber(ARGV[1])
local final = ARGV[3] == '1'
local dropped = tonumber(ARGV[5])
local n = redis.call('LLEN', KEYS[1])
if ARGV[4] ~= '0' then
  redis.call('HSETNX', KEYS[2], 'started', ARGV[4])
end
for i = 7, #ARGV do
  if final or n < cap then
    redis.call('RPUSH', KEYS[1], ARGV[i])
    n = n + 1
  else
    if n == cap then
      redis.call('RPUSH', KEYS[1], string.sub(ARGV[i], 1, 25) .. '... log bounded to ' .. cap .. ' lines: further lines are dropped (counted at the end)')
      n = n + 1
    end
    dropped = dropped + 1
  end
end
local total = tonumber(redis.call('HINCRBY', KEYS[2], 'dropped', dropped))
if final then
  redis.call('HSET', KEYS[2], 'ended', ARGV[6])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return total`)

// runLog writes one task attempt's log lines to Redis from its own
// goroutine, in batches, so that operations never wait on Redis.
type runLog struct {
	rdb redis.UniversalClient
	id  string
	ttl time.Duration
	// started is the run's start (unix ms), recorded as the task's start
	// unless an earlier run's is; 0 while the run waits for a job slot.
	started atomic.Int64
	log     *slog.Logger

	mu      sync.Mutex
	pending []string
	dropped int      // dropped locally (buffer full), not yet sent
	last    []string // the latest lines, for the tail of a bounded log
	closed  bool

	kick chan struct{}
	done chan struct{}
	wg   sync.WaitGroup
}

func newRunLog(rdb redis.UniversalClient, id, typ string, log *slog.Logger) *runLog {
	l := &runLog{rdb: rdb, id: id, ttl: logTTL(typ), log: log,
		kick: make(chan struct{}, 1), done: make(chan struct{})}
	l.started.Store(time.Now().UnixMilli())
	l.wg.Add(1)
	go l.run()
	return l
}

func stamp(t time.Time, text string) string {
	if len(text) > logMaxLine {
		text = text[:logMaxLine] + "…"
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z07:00") + " " + text
}

// Line appends one line; it never blocks on Redis. Safe for concurrent use.
func (l *runLog) Line(text string) {
	if l == nil {
		return
	}
	s := stamp(time.Now(), text)
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	if len(l.pending) >= logPendingMax {
		l.dropped++
	} else {
		l.pending = append(l.pending, s)
	}
	l.last = append(l.last, s)
	if len(l.last) > logTail {
		l.last = l.last[1:]
	}
	l.mu.Unlock()
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// Printf appends a formatted line.
func (l *runLog) Printf(format string, args ...any) { l.Line(fmt.Sprintf(format, args...)) }

func (l *runLog) run() {
	defer l.wg.Done()
	for {
		select {
		case <-l.kick:
		case <-l.done:
			return
		}
		l.flush(false, nil)
		l.mu.Lock()
		more := len(l.pending) >= logBatch
		l.mu.Unlock()
		if more {
			continue
		}
		select {
		case <-time.After(logFlushEvery):
		case <-l.done:
			return
		}
	}
}

// flush sends the pending lines (and, when final, the closing ones).
func (l *runLog) flush(final bool, closing []string) {
	l.mu.Lock()
	lines, dropped := l.pending, l.dropped
	l.pending, l.dropped = nil, 0
	var tail []string
	if final {
		tail = append(tail, l.last...)
	} else {
		// A run that is not the task's end (waiting, retried, re-run)
		// says why in lines like any other.
		lines = append(lines, closing...)
	}
	l.mu.Unlock()
	if len(lines) == 0 && dropped == 0 && !final {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), redisTimeout)
	defer cancel()
	total, err := l.send(ctx, false, lines, dropped)
	if err == nil && final {
		var fin []string
		if total > 0 {
			fin = append(fin, stamp(time.Now(), fmt.Sprintf("... %d line(s) dropped (log bounded to %d lines); the last %d before the end:", total, LogMaxLines, len(tail))))
			fin = append(fin, tail...)
		}
		_, err = l.send(ctx, true, append(fin, closing...), 0)
	}
	if err != nil {
		l.log.Debug("task log not written", "task_id", l.id, "err", err)
	}
}

func (l *runLog) send(ctx context.Context, final bool, lines []string, dropped int) (int64, error) {
	fin := "0"
	if final {
		fin = "1"
	}
	args := make([]any, 0, 6+len(lines))
	args = append(args, LogMaxLines-logReserve, l.ttl.Milliseconds(), fin, l.started.Load(), dropped, time.Now().UnixMilli())
	for _, s := range lines {
		args = append(args, s)
	}
	return logAppend.Run(ctx, l.rdb, []string{logKey(l.id), logMetaKey(l.id)}, args...).Int64()
}

// Close writes what is pending, then, if final, the closing lines and
// the task's end. After Close, Line does nothing.
func (l *runLog) Close(final bool, closing ...string) { l.close(final, false, closing...) }

// close is Close; archived keeps the log as long as asynq keeps the
// archived task.
func (l *runLog) close(final, archived bool, closing ...string) {
	if l == nil {
		return
	}
	close(l.done)
	l.wg.Wait()
	if archived {
		l.ttl = max(l.ttl, archiveRetention)
	}
	now := time.Now()
	stamped := make([]string, len(closing))
	for i, c := range closing {
		stamped[i] = stamp(now, c)
	}
	l.flush(final, stamped)
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
}

// taskLogCtxKey carries a running task's log to the stores it opens.
type taskLogCtxKey struct{}

func withTaskLog(ctx context.Context, l *runLog) context.Context {
	return context.WithValue(ctx, taskLogCtxKey{}, l)
}

func taskLogFrom(ctx context.Context) *runLog {
	l, _ := ctx.Value(taskLogCtxKey{}).(*runLog)
	return l
}

// AppendLog adds lines to a task's log from outside its run (the chain
// bookkeeping of a dependent task); final also marks the task's end, as
// archived (not run, or cancelled): its log is kept as long as the task.
func AppendLog(ctx context.Context, rdb redis.UniversalClient, id, typ string, final bool, lines ...string) error {
	now := time.Now()
	ttl := logTTL(typ)
	if final {
		ttl = max(ttl, archiveRetention)
	}
	args := []any{LogMaxLines - logReserve, ttl.Milliseconds(), map[bool]string{true: "1", false: "0"}[final], 0, 0, now.UnixMilli()}
	for _, s := range lines {
		args = append(args, stamp(now, s))
	}
	return logAppend.Run(ctx, rdb, []string{logKey(id), logMetaKey(id)}, args...).Err()
}

// ReadLog returns a task's log lines from index from on, and whether the
// task has a log at all.
func ReadLog(ctx context.Context, rdb redis.UniversalClient, id string, from int64) ([]string, bool, error) {
	var lines *redis.StringSliceCmd
	var exists *redis.IntCmd
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		lines = p.LRange(ctx, logKey(id), from, -1)
		exists = p.Exists(ctx, logMetaKey(id), logKey(id))
		return nil
	})
	if err != nil {
		return nil, false, fmt.Errorf("task %s log: %w", id, err)
	}
	return lines.Val(), exists.Val() > 0, nil
}

// Times are a task's first start and its end, from its log.
type Times struct {
	Started, Ended *time.Time
}

// TaskTimes returns the start and end of each task id (zero Times for
// tasks without a log), in one round trip.
func TaskTimes(ctx context.Context, rdb redis.UniversalClient, ids ...string) ([]Times, error) {
	cmds := make([]*redis.SliceCmd, len(ids))
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = p.HMGet(ctx, logMetaKey(id), "started", "ended")
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("task times: %w", err)
	}
	out := make([]Times, len(ids))
	for i, c := range cmds {
		v := c.Val()
		parse := func(x any) *time.Time {
			s, ok := x.(string)
			if !ok {
				return nil
			}
			ms, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				return nil
			}
			t := time.UnixMilli(ms).UTC()
			return &t
		}
		if len(v) == 2 {
			out[i] = Times{Started: parse(v[0]), Ended: parse(v[1])}
		}
	}
	return out, nil
}

// taskIDPattern is what the log endpoint accepts as a task id (asynq's
// UUIDs, and ids given with asynq.TaskID).
var taskIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$`)

// ValidTaskID reports whether id can name a task.
func ValidTaskID(id string) bool { return taskIDPattern.MatchString(id) }

// LogHandler serves GET /tasks/{id}/log: the task's log as plain text
// (a sharded job's merged with its shards'), read-only; ?from=N skips the
// first N lines.
func LogHandler(rdb redis.UniversalClient) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		id := r.PathValue("id")
		if !ValidTaskID(id) {
			http.Error(w, fmt.Sprintf("invalid task id %q", id), http.StatusBadRequest)
			return
		}
		var from int64
		if f := r.URL.Query().Get("from"); f != "" {
			n, err := strconv.ParseInt(f, 10, 64)
			if err != nil || n < 0 {
				http.Error(w, fmt.Sprintf("invalid from %q: a line number >= 0", f), http.StatusBadRequest)
				return
			}
			from = n
		}
		lines, ok, err := ReadLogView(r.Context(), rdb, id, from)
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		if !ok {
			http.Error(w, fmt.Sprintf("no log for task %s (unknown, or expired)", id), http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		var b strings.Builder
		for _, s := range lines {
			b.WriteString(s)
			b.WriteByte('\n')
		}
		_, _ = w.Write([]byte(b.String()))
	})
}

// startLog opens the log of a task run with its first line.
func (w *Worker) startLog(ctx context.Context, id, typ string, payload []byte) *runLog {
	return w.openLog(ctx, id, typ, payload, true)
}

// startLogUnstarted is startLog for a run that may yet wait for a job
// slot (max-jobs): the task's start is recorded by markStarted once it
// has one, so that the start `tasks show` reports is that of a run.
func (w *Worker) startLogUnstarted(ctx context.Context, id, typ string, payload []byte) *runLog {
	return w.openLog(ctx, id, typ, payload, false)
}

// markStarted records now as the run's start (the task's, if it is its
// first run that started).
func (l *runLog) markStarted() {
	if l != nil {
		l.started.CompareAndSwap(0, time.Now().UnixMilli())
	}
}

func (w *Worker) openLog(ctx context.Context, id, typ string, payload []byte, started bool) *runLog {
	l := newRunLog(w.rdb, id, typ, w.log)
	if !started {
		// Before any line, so no batch carries the creation time.
		l.started.Store(0)
	}
	attempt := ""
	if n, _ := asynq.GetRetryCount(ctx); n > 0 {
		attempt = fmt.Sprintf(" (re-run %d)", n)
	}
	host, _ := os.Hostname()
	l.Printf("task %s started on %s/%d%s: %s %s", id, host, os.Getpid(), attempt, typ, payload)
	return l
}

// endLog closes a run's log, PBS style: TASK OK, TASK WARNINGS or TASK
// ERROR when the task ended, a note when it goes back to the queue. Then,
// for a task that ended, it hands over to the tasks chained after it.
func (w *Worker) endLog(ctx context.Context, l *runLog, id, outcome string, why error) {
	msg := ""
	if why != nil {
		msg = strings.TrimSuffix(why.Error(), ": "+asynq.SkipRetry.Error())
	}
	switch outcome {
	case tasks.OutcomeOK:
		l.Close(true, "TASK OK")
	case tasks.OutcomeSkipped:
		l.Close(true, "TASK WARNINGS: "+msg)
	case OutcomeRetry:
		l.Close(false, "attempt failed; it is retried later: "+msg)
		return
	case OutcomeInterrupted:
		l.Close(false, "interrupted (worker stopping or lease lost); it is re-run: "+msg)
		return
	default:
		var be *busyError
		if errors.As(why, &be) {
			l.Close(false, "waiting: "+msg)
			return
		}
		// Failed, cancelled, invalid or busy past the limit: asynq
		// archives the task.
		l.close(true, true, "TASK ERROR: "+outcome+": "+msg)
	}
	w.handOver(ctx, id)
}

// logReason is what a run's log names as the reason of its outcome.
func logReason(ret error, res Outcome) error {
	if ret != nil {
		return ret
	}
	if res != nil {
		return res.Outcome()
	}
	return nil
}

// Redis is the worker's Redis connection (for read-only views beside it,
// such as LogHandler).
func (w *Worker) Redis() redis.UniversalClient { return w.rdb }
