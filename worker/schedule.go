package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/robfig/cron/v3"

	"github.com/pbsq/pbsq/datastore/name"
	"github.com/pbsq/pbsq/internal/promreg"
	"github.com/pbsq/pbsq/tasks"
)

// Schedule is a job queued periodically (the config's `schedules:`).
type Schedule struct {
	Name string
	Spec string
	// After names the schedule whose job this one's is chained after
	// (instead of a cron spec).
	After   string
	Payload tasks.Payload
	when    cron.Schedule
}

// Next is the first fire time after t (zero for a schedule chained after
// another).
func (s Schedule) Next(t time.Time) time.Time {
	if s.when == nil {
		return time.Time{}
	}
	return s.when.Next(t)
}

var scheduleName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// minEvery is the shortest @every interval: shorter ones only flood Redis
// with claims.
const minEvery = time.Second

var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// ParseSchedule validates a schedule. spec is a five-field cron line or a
// descriptor (@hourly, @daily, ...), optionally after CRON_TZ=<zone>, or
// "@every <duration>", whose fire times are multiples of the duration
// since the Unix epoch — so every host computes the same ones. The payload
// is validated as `pbsq enqueue` does.
func ParseSchedule(schedName, spec string, p tasks.Payload) (Schedule, error) {
	if !scheduleName.MatchString(schedName) {
		return Schedule{}, fmt.Errorf("%w schedule name %q: letters, digits, '_', '.', '-', at most 64", name.ErrInvalid, schedName)
	}
	if p == nil {
		return Schedule{}, fmt.Errorf("%w schedule %s: no task", name.ErrInvalid, schedName)
	}
	if err := p.Validate(); err != nil {
		return Schedule{}, fmt.Errorf("schedule %s: %w", schedName, err)
	}
	s := Schedule{Name: schedName, Spec: spec, Payload: p}
	if every, ok := strings.CutPrefix(strings.TrimSpace(spec), "@every "); ok {
		d, err := time.ParseDuration(strings.TrimSpace(every))
		if err != nil || d < minEvery {
			return Schedule{}, fmt.Errorf("%w schedule %s: %q: @every needs a duration of at least %s", name.ErrInvalid, schedName, spec, minEvery)
		}
		s.when = everySchedule(d)
		return s, nil
	}
	when, err := cronParser.Parse(spec)
	if err != nil {
		return Schedule{}, fmt.Errorf("%w schedule %s: cron spec %q: %v", name.ErrInvalid, schedName, spec, err)
	}
	s.when = when
	return s, nil
}

// everySchedule fires at the multiples of its duration since the epoch.
type everySchedule time.Duration

func (e everySchedule) Next(t time.Time) time.Time {
	d := time.Duration(e)
	return time.Unix(0, (t.UnixNano()/int64(d)+1)*int64(d)).In(t.Location())
}

// Schedule outcomes, the result label of pbsq_schedule_runs_total.
const (
	ScheduleEnqueued  = "enqueued"
	ScheduleDuplicate = "duplicate" // the previous run is still queued or running
	ScheduleError     = "error"
)

// ScheduleState is what Redis remembers of a schedule's last fire.
type ScheduleState struct {
	LastFire time.Time `json:"last-fire"`
	Result   string    `json:"result"`
	TaskID   string    `json:"task-id,omitempty"`
	Message  string    `json:"message,omitempty"`
	Host     string    `json:"host"`
}

func scheduleStateKey(name string) string { return "pbsq:schedule:" + name }

// scheduleClaimKey is claimed by the one scheduler that handles a fire.
func scheduleClaimKey(name string, at time.Time) string {
	return fmt.Sprintf("pbsq:schedule:%s:fire:%d", name, at.Unix())
}

// ReadScheduleState returns the schedule's last fire, or nil if it never
// fired.
func ReadScheduleState(ctx context.Context, rdb redis.UniversalClient, name string) (*ScheduleState, error) {
	m, err := rdb.HGetAll(ctx, scheduleStateKey(name)).Result()
	if err != nil {
		return nil, fmt.Errorf("schedule %s: %w", name, err)
	}
	if len(m) == 0 {
		return nil, nil
	}
	st := &ScheduleState{Result: m["result"], TaskID: m["task-id"], Message: m["message"], Host: m["host"]}
	st.LastFire, _ = time.Parse(time.RFC3339, m["last-fire"])
	return st, nil
}

// SchedulerOptions configure a Scheduler.
type SchedulerOptions struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Host names this scheduler in the claims and states it writes
	// (default host/pid).
	Host string
}

// Scheduler queues each schedule's job at its fire times. Several
// schedulers (one per host) may run the same schedules on one Redis: each
// fire is claimed there by exactly one of them, and a job whose previous
// run is still queued or running is not queued again. Fires missed while
// no scheduler ran are not caught up, as with cron.
type Scheduler struct {
	enq       *Enqueuer
	schedules []Schedule
	log       *slog.Logger
	host      string
	runs      *prometheus.CounterVec
	next      *prometheus.GaugeVec
}

// NewScheduler makes a scheduler queuing through enq.
func NewScheduler(enq *Enqueuer, schedules []Schedule, opts SchedulerOptions) *Scheduler {
	s := &Scheduler{
		enq: enq, schedules: schedules, log: opts.Logger, host: opts.Host,
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pbsq_schedule_runs_total",
			Help: "Schedule fires handled by this scheduler, by outcome (enqueued, duplicate, error).",
		}, []string{"schedule", "result"}),
		next: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pbsq_schedule_next_run_timestamp_seconds",
			Help: "Unix time of the schedule's next fire.",
		}, []string{"schedule"}),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.host == "" {
		h, _ := os.Hostname()
		s.host = fmt.Sprintf("%s/%d", h, os.Getpid())
	}
	if opts.Registerer != nil {
		s.runs = promreg.Register(opts.Registerer, s.runs)
		s.next = promreg.Register(opts.Registerer, s.next)
	}
	for _, sc := range schedules {
		for _, r := range []string{ScheduleEnqueued, ScheduleDuplicate, ScheduleError} {
			s.runs.WithLabelValues(sc.Name, r)
		}
	}
	return s
}

// Run fires the schedules until ctx ends.
func (s *Scheduler) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, sc := range s.schedules {
		if sc.After != "" {
			continue // queued by the schedule it is chained after
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.loop(ctx, sc)
		}()
	}
	wg.Wait()
}

func (s *Scheduler) loop(ctx context.Context, sc Schedule) {
	next := sc.Next(time.Now())
	for {
		s.next.WithLabelValues(sc.Name).Set(float64(next.Unix()))
		t := time.NewTimer(time.Until(next))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if ctx.Err() != nil {
			return
		}
		s.fire(ctx, sc, next)
		// Late (a suspended host, a slow Redis): skip to the next future
		// fire rather than queue a burst.
		next = sc.Next(latest(next, time.Now()))
	}
}

func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// fireGrace is how long a fire that has begun may go on once the
// scheduler is stopping.
const fireGrace = 10 * time.Second

// fire claims the fire at `at` and queues the job if the claim is ours. A
// fire that has begun finishes (within fireGrace) even if the scheduler is
// stopped meanwhile: once it is claimed no other scheduler handles it, so
// giving up half way would drop it.
func (s *Scheduler) fire(ctx context.Context, sc Schedule, at time.Time) {
	parent := ctx
	ctx, cancel := context.WithCancel(context.WithoutCancel(parent))
	defer cancel()
	stop := context.AfterFunc(parent, func() { time.AfterFunc(fireGrace, cancel) })
	defer stop()
	rdb := s.enq.Redis()
	// The claim outlives every other scheduler's chance to handle the same
	// fire, however late its timer is.
	ttl := min(max(2*sc.Next(at).Sub(at), time.Minute), 24*time.Hour)
	won, err := rdb.SetNX(ctx, scheduleClaimKey(sc.Name, at), s.host, ttl).Result()
	if err != nil {
		s.record(ctx, sc, at, ScheduleError, "", fmt.Sprintf("claim: %v", err))
		return
	}
	if !won {
		return // another scheduler handles this fire
	}
	info, err := s.enq.Enqueue(ctx, sc.Payload)
	s.queued(ctx, sc, at, info, err)
}

// queued records what queueing sc's job for the fire at at did, and on
// success queues the schedules chained after it.
func (s *Scheduler) queued(ctx context.Context, sc Schedule, at time.Time, info *asynq.TaskInfo, err error) {
	var dup *DuplicateError
	switch {
	case errors.As(err, &dup):
		s.record(ctx, sc, at, ScheduleDuplicate, dup.ID, dup.Error())
	case err != nil:
		s.record(ctx, sc, at, ScheduleError, "", err.Error())
	default:
		s.record(ctx, sc, at, ScheduleEnqueued, info.ID, "")
		s.fireAfter(ctx, sc, info.ID, at)
	}
}

func (s *Scheduler) record(ctx context.Context, sc Schedule, at time.Time, result, taskID, msg string) {
	s.runs.WithLabelValues(sc.Name, result).Inc()
	log := s.log.With("schedule", sc.Name, "type", sc.Payload.TaskType(), "fire", at.Format(time.RFC3339))
	switch result {
	case ScheduleEnqueued:
		log.Info("schedule queued its job", "task", taskID)
	case ScheduleDuplicate:
		log.Warn("schedule fired while its previous run is still queued or running; not queued again", "task", taskID)
	default:
		log.Error("schedule could not queue its job", "err", msg)
	}
	ctx, cancel := bookkeeping(ctx)
	defer cancel()
	err := s.enq.Redis().HSet(ctx, scheduleStateKey(sc.Name),
		"last-fire", at.UTC().Format(time.RFC3339), "result", result,
		"task-id", taskID, "message", msg, "host", s.host).Err()
	if err != nil {
		log.Warn("could not record the schedule's state", "err", err)
	}
}
