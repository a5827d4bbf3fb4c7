package worker

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pbsq/pbsq/datastore/lock/redistest"
	"github.com/pbsq/pbsq/datastore/name"
	"github.com/pbsq/pbsq/tasks"
)

func TestParseSchedule(t *testing.T) {
	verify := &tasks.Verify{Store: testStoreName}
	for _, spec := range []string{"30 2 * * *", "*/5 * * * 1-5", "@daily", "@hourly", "CRON_TZ=Europe/Berlin 0 3 * * 0", "@every 90s", "@every 6h"} {
		if _, err := ParseSchedule("ok", spec, verify); err != nil {
			t.Errorf("ParseSchedule(%q): %v", spec, err)
		}
	}
	for _, tc := range []struct {
		name, spec string
		p          tasks.Payload
		want       string
	}{
		{"bad", "61 * * * *", verify, `"61 * * * *"`},
		{"bad", "* * * *", verify, `"* * * *"`},
		{"bad", "0 0 * * * *", verify, `"0 0 * * * *"`}, // seconds are not a cron field here
		{"bad", "@every 10ms", verify, `"@every 10ms"`},
		{"bad", "@every soon", verify, `"@every soon"`},
		{"bad", "CRON_TZ=Mars/Base 0 3 * * *", verify, `Mars/Base`},
		{"no spaces", "@daily", verify, `"no spaces"`},
		{"", "@daily", verify, `""`},
		{"ok", "@daily", nil, "no task"},
		{"ok", "@daily", &tasks.Verify{Store: "../x"}, `"../x"`},
	} {
		_, err := ParseSchedule(tc.name, tc.spec, tc.p)
		if !errors.Is(err, name.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseSchedule(%q, %q) = %v; want ErrInvalid naming %s", tc.name, tc.spec, err, tc.want)
		}
	}
}

// TestScheduleFireTimes: fire times are a function of the spec alone, so
// schedulers started at different moments (on different hosts) agree.
func TestScheduleFireTimes(t *testing.T) {
	verify := &tasks.Verify{Store: testStoreName}
	every, _ := ParseSchedule("e", "@every 6h", verify)
	at := time.Date(2026, 3, 29, 1, 17, 3, 0, time.UTC)
	for _, from := range []time.Time{at, at.Add(time.Hour), at.Add(4*time.Hour + 42*time.Minute)} {
		if got, want := every.Next(from), time.Date(2026, 3, 29, 6, 0, 0, 0, time.UTC); !got.Equal(want) {
			t.Errorf("@every 6h after %s = %s, want %s", from, got, want)
		}
	}
	if got := every.Next(time.Date(2026, 3, 29, 6, 0, 0, 0, time.UTC)); !got.Equal(time.Date(2026, 3, 29, 12, 0, 0, 0, time.UTC)) {
		t.Errorf("@every 6h after a fire time = %s, want the next one", got)
	}
	// CRON_TZ across the spring DST switch in Berlin: 03:00 local each day.
	berlin, _ := ParseSchedule("b", "CRON_TZ=Europe/Berlin 0 3 * * *", verify)
	first := berlin.Next(time.Date(2026, 3, 27, 12, 0, 0, 0, time.UTC))
	second := berlin.Next(first)
	if first.UTC().Hour() != 2 || second.UTC().Hour() != 1 || second.Sub(first) != 23*time.Hour {
		t.Errorf("Berlin 03:00 across DST: %s then %s", first.UTC(), second.UTC())
	}
}

// TestSchedulersShareFires: three schedulers (three hosts) on one real
// Redis with an @every 1s schedule and no worker: each fire is handled by
// exactly one of them, the first queues the job, later fires find it still
// pending and queue nothing, and the state in Redis names the last fire.
func TestSchedulersShareFires(t *testing.T) {
	rs := redistest.Start(t)
	verify := &tasks.Verify{Store: testStoreName}
	sched, err := ParseSchedule("often", "@every 1s", verify)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var regs []*prometheus.Registry
	start := time.Now()
	for i := 0; i < 3; i++ {
		reg := prometheus.NewRegistry()
		regs = append(regs, reg)
		s := NewScheduler(newEnqueuer(t, rs.Addr()), []Schedule{sched}, SchedulerOptions{
			Logger: testLogger(t), Registerer: reg, Host: "host" + string(rune('a'+i)),
		})
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.Run(ctx)
		}()
	}
	// Run until two fires were claimed; a fire under way when the
	// schedulers stop still finishes with one outcome.
	rdb := rs.Client()
	claimed := func() []string {
		keys, err := rdb.Keys(context.Background(), "pbsq:schedule:often:fire:*").Result()
		if err != nil {
			t.Fatal(err)
		}
		return keys
	}
	waitUntil(t, "two fires claimed", func() bool { return len(claimed()) >= 2 })
	cancel()
	wg.Wait()
	end := time.Now()

	// Every fire time that passed was claimed by one scheduler (a timer
	// late by a whole period under load may let one pass unhandled, as
	// cron would), and each claim has exactly one outcome.
	var fires int
	for at := sched.Next(start); !at.After(end); at = sched.Next(at) {
		fires++
	}
	claims := claimed()
	if len(claims) < 2 || len(claims) > fires {
		t.Fatalf("%d fires claimed of %d fire times in %s", len(claims), fires, end.Sub(start))
	}
	var enqueued, duplicate, failed float64
	for _, reg := range regs {
		runs := testutilCounters(t, reg, "pbsq_schedule_runs_total")
		enqueued += runs[ScheduleEnqueued]
		duplicate += runs[ScheduleDuplicate]
		failed += runs[ScheduleError]
	}
	if failed != 0 || enqueued != 1 || int(enqueued+duplicate) != len(claims) {
		t.Errorf("%d claimed fires: %v enqueued, %v duplicate, %v errors; want 1 enqueued and one outcome per claim", len(claims), enqueued, duplicate, failed)
	}
	ins := asynq.NewInspector(asynq.RedisClientOpt{Addr: rs.Addr()})
	defer ins.Close()
	pending, err := ins.ListPendingTasks(tasks.Queue)
	if err != nil || len(pending) != 1 || pending[0].Type != tasks.TypeVerify {
		t.Fatalf("pending: %v, %v; want the one verify", pending, err)
	}
	st, err := ReadScheduleState(context.Background(), rdb, "often")
	if err != nil || st == nil {
		t.Fatalf("state: %v, %v", st, err)
	}
	if st.Result != ScheduleDuplicate || st.TaskID != pending[0].ID || !strings.HasPrefix(st.Host, "host") || time.Since(st.LastFire) > time.Minute {
		t.Errorf("state after the last fire: %+v; want duplicate of %s", st, pending[0].ID)
	}
}

// testutilCounters returns a counter vector's values by its result label.
// TestFireFinishesWhenStopped: a fire that has begun (its timer fired)
// claims its time and queues its job even if the scheduler is stopped
// meanwhile; dropping it half way would lose it, since no other
// scheduler handles a claimed fire.
func TestFireFinishesWhenStopped(t *testing.T) {
	rs := redistest.Start(t)
	sched, err := ParseSchedule("stopping", "@every 1h", &tasks.Verify{Store: testStoreName})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	e := newEnqueuer(t, rs.Addr())
	s := NewScheduler(e, []Schedule{sched}, SchedulerOptions{Logger: testLogger(t), Registerer: reg, Host: "h"})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s.fire(ctx, sched, time.Now().Truncate(time.Hour))
	if runs := testutilCounters(t, reg, "pbsq_schedule_runs_total"); runs[ScheduleEnqueued] != 1 || runs[ScheduleError] != 0 {
		t.Errorf("runs %v, want the job enqueued", runs)
	}
	if dup, err := e.FindDuplicate(context.Background(), sched.Payload); err != nil || dup == nil {
		t.Errorf("job not queued: %v, %v", dup, err)
	}
}

// TestWorkerRunsSchedules: a worker given schedules runs them from Start
// to Shutdown, and the queued job is run.
func TestWorkerRunsSchedules(t *testing.T) {
	rs := redistest.Start(t)
	f := newFixture(t)
	sched, err := ParseSchedule("every-second", "@every 1s", &tasks.Verify{Store: testStoreName, NS: "a"})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	opts := fastOptions(t, rs.Addr(), f.stores, reg)
	opts.Schedules = []Schedule{sched}
	w := New(opts)
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "a scheduled verify completed", func() bool {
		return testutil.ToFloat64(w.Metrics().tasks.WithLabelValues(tasks.TypeVerify, tasks.OutcomeOK)) >= 1
	})
	w.Shutdown()
	// Stopped with the worker, each claimed fire handled once.
	runs := func(result string) int {
		return int(testutil.ToFloat64(w.scheduler.runs.WithLabelValues("every-second", result)))
	}
	if runs(ScheduleEnqueued) < 1 || runs(ScheduleError) != 0 {
		t.Errorf("schedule runs: %d enqueued, %d errors; want enqueued and no errors", runs(ScheduleEnqueued), runs(ScheduleError))
	}
	fires, err := rs.Client().Keys(context.Background(), "pbsq:schedule:every-second:fire:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if n, handled := len(fires), runs(ScheduleEnqueued)+runs(ScheduleDuplicate); n != handled {
		t.Errorf("%d fires claimed, %d handled", n, handled)
	}
}

func testutilCounters(t *testing.T, reg *prometheus.Registry, metric string) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != metric {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" {
					out[l.GetValue()] += m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}

// TestScheduleRunsJobs: with a worker, an @every 1s verify schedule runs
// real verifies one after the other, each completing before the next is
// queued, and the next-fire gauge points into the future.
func TestScheduleRunsJobs(t *testing.T) {
	rs := redistest.Start(t)
	f := newFixture(t)
	reg := prometheus.NewRegistry()
	startWorker(t, fastOptions(t, rs.Addr(), f.stores, reg))
	no := false
	sched, err := ParseSchedule("verify-often", "@every 1s", &tasks.Verify{Store: testStoreName, IgnoreVerified: &no})
	if err != nil {
		t.Fatal(err)
	}
	sreg := prometheus.NewRegistry()
	s := NewScheduler(newEnqueuer(t, rs.Addr()), []Schedule{sched}, SchedulerOptions{Logger: testLogger(t), Registerer: sreg})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(ctx)
	}()
	ins := asynq.NewInspector(asynq.RedisClientOpt{Addr: rs.Addr()})
	defer ins.Close()
	deadline := time.Now().Add(30 * time.Second)
	var completed []*asynq.TaskInfo
	for len(completed) < 2 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		completed, _ = ins.ListCompletedTasks(tasks.Queue)
	}
	if next := testutil.ToFloat64(s.next.WithLabelValues("verify-often")); next < float64(time.Now().Unix()) {
		t.Errorf("next fire gauge %v is in the past", next)
	}
	cancel()
	<-done
	if len(completed) < 2 {
		t.Fatalf("%d scheduled verifies completed in 30s, want 2", len(completed))
	}
	for _, info := range completed {
		if rec := record(t, info); rec.Outcome != tasks.OutcomeOK || info.Type != tasks.TypeVerify {
			t.Errorf("scheduled task %s (%s): outcome %q %s", info.ID, info.Type, rec.Outcome, rec.Error)
		}
	}
	if got := testutil.ToFloat64(s.runs.WithLabelValues("verify-often", ScheduleEnqueued)); got < 2 {
		t.Errorf("pbsq_schedule_runs_total{result=enqueued} = %v, want ≥ 2", got)
	}
}
