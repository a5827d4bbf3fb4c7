package worker

import (
	"context"
	"fmt"
	"log/slog"
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
