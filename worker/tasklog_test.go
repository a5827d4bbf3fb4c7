package worker

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/lock/redistest"
	"github.com/pbsq/pbsq/tasks"
)

// A log that overflows keeps its bound, says where and how much it
// dropped, and keeps its last lines and the closing line.
func TestTaskLogBounded(t *testing.T) {
	rs := redistest.Start(t)
	rdb := rs.Client()
	ctx := context.Background()
	l := newRunLog(rdb, "t1", tasks.TypeVerify, slog.New(slog.DiscardHandler))
	const n = LogMaxLines + 500
	for i := range n {
		l.Printf("line %d", i)
		if i%500 == 0 {
			time.Sleep(time.Millisecond) // let the writer take batches
		}
	}
	l.Close(true, "TASK OK")
	lines, ok, err := ReadLog(ctx, rdb, "t1", 0)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if len(lines) > LogMaxLines {
		t.Fatalf("%d lines, bound %d", len(lines), LogMaxLines)
	}
	all := strings.Join(lines, "\n")
	if !strings.Contains(lines[LogMaxLines-logReserve], "further lines are dropped") {
		t.Errorf("no drop marker at the bound: %q", lines[LogMaxLines-logReserve])
	}
	kept := LogMaxLines - logReserve
	if want := fmt.Sprintf("... %d line(s) dropped", n-kept); !strings.Contains(all, want) {
		t.Errorf("no %q", want)
	}
	for _, want := range []string{" line 0\n", fmt.Sprintf(" line %d\n", n-1), "TASK OK"} {
		if !strings.Contains(all+"\n", want) {
			t.Errorf("log lacks %q", want)
		}
	}
	if !strings.HasSuffix(lines[len(lines)-1], " TASK OK") {
		t.Errorf("last line %q", lines[len(lines)-1])
	}
	// Kept as long as the task record, from the last line on.
	ttl := rdb.PTTL(ctx, logKey("t1")).Val()
	if ttl < tasks.Retention || ttl > logTTL(tasks.TypeVerify) {
		t.Errorf("log ttl %s", ttl)
	}
	times, err := TaskTimes(ctx, rdb, "t1", "none")
	if err != nil || times[0].Started == nil || times[0].Ended == nil || times[1].Started != nil {
		t.Fatalf("times %+v: %v", times, err)
	}
}

// A sharded job's log view interleaves the job's lines and its shards'
// in time order, each shard's tagged; while following, the latest lines
// wait until no shard can still send older ones.
func TestTaskLogViewMergesShards(t *testing.T) {
	rs := redistest.Start(t)
	rdb := rs.Client()
	ctx := context.Background()
	old := time.Now().Add(-time.Hour)
	at := func(sec int) time.Time { return old.Add(time.Duration(sec) * time.Second) }
	put := func(id string, lines ...string) {
		t.Helper()
		if err := rdb.RPush(ctx, logKey(id), lines).Err(); err != nil {
			t.Fatal(err)
		}
	}
	job := "j1"
	put(job, stamp(at(0), "planned 2 shard(s)"), stamp(at(1), "shard 0: task j1-s0"), stamp(at(9), "shard 1 (j1-s1) ended ok"))
	if err := noteShards(ctx, rdb, job, tasks.TypeVerify, 2); err != nil {
		t.Fatal(err)
	}
	put(tasks.ShardID(job, 0), stamp(at(2), "verify vm/100/x (ns a): ok"), stamp(at(5), "verify vm/101/x (ns a): ok"))
	put(tasks.ShardID(job, 1), stamp(at(3), "verify ct/200/x (ns a/b): ok"), stamp(at(4), "verify ct/201/x (ns a/b): ok"))

	v := NewLogView(rdb, job)
	got, ok, err := v.Next(ctx, false)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	want := []string{
		stamp(at(0), "planned 2 shard(s)"),
		stamp(at(1), "shard 0: task j1-s0"),
		stamp(at(2), "shard 0: verify vm/100/x (ns a): ok"),
		stamp(at(3), "shard 1: verify ct/200/x (ns a/b): ok"),
		stamp(at(4), "shard 1: verify ct/201/x (ns a/b): ok"),
		stamp(at(5), "shard 0: verify vm/101/x (ns a): ok"),
		stamp(at(9), "shard 1 (j1-s1) ended ok"),
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("merged log:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// Lines newer than the hold-back (stamped an hour ahead) wait while
	// following, older ones that arrive later still come in order.
	later := time.Now().Add(time.Hour)
	put(tasks.ShardID(job, 1), stamp(later, "verify summary: 2 snapshot(s) checked"))
	put(job, stamp(later.Add(time.Second), "TASK OK"))
	put(tasks.ShardID(job, 0), stamp(at(10), "verify summary: 2 snapshot(s) checked"))
	got, _, _ = v.Next(ctx, false)
	if len(got) != 1 || got[0] != stamp(at(10), "shard 0: verify summary: 2 snapshot(s) checked") {
		t.Fatalf("held back wrongly: %q", got)
	}
	got, _, _ = v.Next(ctx, true)
	if len(got) != 2 || got[0] != stamp(later, "shard 1: verify summary: 2 snapshot(s) checked") || got[1] != stamp(later.Add(time.Second), "TASK OK") {
		t.Fatalf("end of the log: %q", got)
	}
	if got, _, _ = v.Next(ctx, true); len(got) != 0 {
		t.Fatalf("lines returned twice: %q", got)
	}

	// The same merged log over HTTP.
	mux := http.NewServeMux()
	mux.Handle("/tasks/{id}/log", LogHandler(rdb))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/tasks/" + job + "/log?from=2")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	all := append(want, stamp(at(10), "shard 0: verify summary: 2 snapshot(s) checked"),
		stamp(later, "shard 1: verify summary: 2 snapshot(s) checked"), stamp(later.Add(time.Second), "TASK OK"))
	if resp.StatusCode != 200 || string(body) != strings.Join(all[2:], "\n")+"\n" {
		t.Errorf("GET merged log: %d\n%s", resp.StatusCode, body)
	}

	// A task without shards reads as it is.
	put("plain", stamp(later, "b"), stamp(at(0), "a"))
	if got, _, _ := NewLogView(rdb, "plain").Next(ctx, false); len(got) != 2 || !strings.HasSuffix(got[0], " b") {
		t.Errorf("plain log: %q", got)
	}
}

// The log of a task asynq archives (failed, cancelled) is kept as long as
// asynq keeps it, 90 days; a completed one's as long as its retention.
func TestTaskLogKeptWithArchivedTask(t *testing.T) {
	rs := redistest.Start(t)
	rdb := rs.Client()
	ctx := context.Background()
	w := &Worker{rdb: rdb, log: slog.New(slog.DiscardHandler)}
	for id, c := range map[string]struct {
		outcome  string
		min, max time.Duration
	}{
		"ok":     {tasks.OutcomeOK, tasks.Retention, logTTL(tasks.TypeVerify)},
		"failed": {tasks.OutcomeFailed, archiveRetention - time.Minute, archiveRetention},
	} {
		l := newRunLog(rdb, id, tasks.TypeVerify, w.log)
		l.Printf("line")
		w.endLog(ctx, l, id, c.outcome, nil)
		for _, k := range []string{logKey(id), logMetaKey(id)} {
			if ttl := rdb.PTTL(ctx, k).Val(); ttl < c.min || ttl > c.max {
				t.Errorf("%s: %s ttl %s, want %s..%s", id, k, ttl, c.min, c.max)
			}
		}
	}
	if err := AppendLog(ctx, rdb, "chained", tasks.TypeGC, true, "TASK ERROR: failed: not run"); err != nil {
		t.Fatal(err)
	}
	if ttl := rdb.PTTL(ctx, logKey("chained")).Val(); ttl < archiveRetention-time.Minute {
		t.Errorf("archived chained task's log ttl %s", ttl)
	}
}

// A run that waited for a job slot says so in the task's log and leaves
// the task unstarted; the run that gets its slot records the start, and
// ends the log.
func TestTaskLogWaitingRunUnstarted(t *testing.T) {
	rs := redistest.Start(t)
	rdb := rs.Client()
	ctx := context.Background()
	w := &Worker{rdb: rdb, log: slog.New(slog.DiscardHandler)}
	l := w.startLogUnstarted(ctx, "t2", tasks.TypeVerify, []byte(`{}`))
	l.Close(false, "waiting: all 1 job slot(s) taken (max-jobs)")
	lines, _, err := ReadLog(ctx, rdb, "t2", 0)
	if err != nil || len(lines) != 2 || !strings.HasSuffix(lines[1], " waiting: all 1 job slot(s) taken (max-jobs)") {
		t.Fatalf("log of a waiting run: %q, %v", lines, err)
	}
	times, err := TaskTimes(ctx, rdb, "t2")
	if err != nil || times[0].Started != nil || times[0].Ended != nil {
		t.Fatalf("a run that only waited: times %+v, %v", times[0], err)
	}
	before := time.Now().Add(-time.Millisecond)
	l = w.startLogUnstarted(ctx, "t2", tasks.TypeVerify, []byte(`{}`))
	l.markStarted()
	l.Close(true, "TASK OK")
	times, err = TaskTimes(ctx, rdb, "t2")
	if err != nil || times[0].Started == nil || times[0].Started.Before(before) || times[0].Ended == nil {
		t.Fatalf("the run that started: times %+v (after %s), %v", times[0], before, err)
	}
}
