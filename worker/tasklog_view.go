package worker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pbsq/pbsq/tasks"
)

// A sharded job's log is read as one: the job task's own lines and its
// shards' (each shard keeps its own bounded log, so shards never crowd
// each other out), merged in time order, each shard's line tagged
// "shard <i>:" after its time stamp. The job's log meta names its shard
// count (`shards`), written before any shard is queued.

// logHoldBack is how long a followed sharded job's latest lines are held
// back, so that a shard whose writer sends a batch later (it flushes every
// logFlushEvery) still fits in time order. A line that reaches Redis later
// than this is printed late; `tasks log` read afterwards is in order.
const logHoldBack = 2 * time.Second

// stampLen is the length of a line's time stamp ("2006-01-02T15:04:05.000Z").
const stampLen = 24

type logSource struct {
	id, tag string
	next    int64
}

// LogView reads a task's log incrementally; see above for sharded jobs.
type LogView struct {
	rdb    redis.UniversalClient
	srcs   []logSource // [0]: the task itself
	shards int         // known shard count
	held   []string
}

// NewLogView returns a view of task id's log from its first line.
func NewLogView(rdb redis.UniversalClient, id string) *LogView {
	return &LogView{rdb: rdb, srcs: []logSource{{id: id}}}
}

// Next returns the lines not returned before, in time order, and whether
// the task has a log. Unless all, a sharded job's lines from the last
// logHoldBack are kept for a later call.
func (v *LogView) Next(ctx context.Context, all bool) ([]string, bool, error) {
	id := v.srcs[0].id
	var shards *redis.StringCmd
	var exists *redis.IntCmd
	ranges := make([]*redis.StringSliceCmd, len(v.srcs))
	_, err := v.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		exists = p.Exists(ctx, logMetaKey(id), logKey(id))
		shards = p.HGet(ctx, logMetaKey(id), "shards")
		for i, s := range v.srcs {
			ranges[i] = p.LRange(ctx, logKey(s.id), s.next, -1)
		}
		return nil
	})
	// A missing `shards` is redis.Nil: only the other commands' errors count.
	if err != nil && !errors.Is(err, redis.Nil) || exists.Err() != nil {
		return nil, false, fmt.Errorf("task %s log: %w", id, cmp.Or(exists.Err(), err))
	}
	for _, r := range ranges {
		if r.Err() != nil {
			return nil, false, fmt.Errorf("task %s log: %w", id, r.Err())
		}
	}
	if n, _ := strconv.Atoi(shards.Val()); n > v.shards && n <= tasks.MaxShards {
		// Shards first seen: read them in a second round trip.
		first := len(v.srcs)
		for i := v.shards; i < n; i++ {
			v.srcs = append(v.srcs, logSource{id: tasks.ShardID(id, i), tag: fmt.Sprintf("shard %d:", i)})
		}
		v.shards = n
		more := make([]*redis.StringSliceCmd, len(v.srcs)-first)
		_, err := v.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, s := range v.srcs[first:] {
				more[i] = p.LRange(ctx, logKey(s.id), 0, -1)
			}
			return nil
		})
		if err != nil {
			return nil, false, fmt.Errorf("task %s log: %w", id, err)
		}
		ranges = append(ranges, more...)
	}
	for i, r := range ranges {
		lines := r.Val()
		v.srcs[i].next += int64(len(lines))
		for _, l := range lines {
			if t := v.srcs[i].tag; t != "" && len(l) > stampLen {
				l = l[:stampLen] + " " + t + l[stampLen:]
			}
			v.held = append(v.held, l)
		}
	}
	ok := exists.Val() > 0
	if v.shards == 0 {
		out := v.held
		v.held = nil
		return out, ok, nil
	}
	// Each source is in order already: a stable sort by time stamp
	// interleaves them.
	slices.SortStableFunc(v.held, func(a, b string) int { return compareStamp(a, b) })
	cut := len(v.held)
	if !all {
		before := stamp(time.Now().Add(-logHoldBack), "")[:stampLen]
		cut, _ = slices.BinarySearchFunc(v.held, before, func(l, t string) int {
			if compareStamp(l, t) <= 0 {
				return -1
			}
			return 1
		})
	}
	out := slices.Clone(v.held[:cut])
	v.held = slices.Delete(v.held, 0, cut)
	return out, ok, nil
}

// compareStamp orders lines by their time stamps (fixed width, so the
// text order is the time order).
func compareStamp(a, b string) int {
	return cmp.Compare(a[:min(len(a), stampLen)], b[:min(len(b), stampLen)])
}

// ReadLogView returns all of a task's log (a sharded job's merged with its
// shards') from line from on, and whether the task has a log.
func ReadLogView(ctx context.Context, rdb redis.UniversalClient, id string, from int64) ([]string, bool, error) {
	lines, ok, err := NewLogView(rdb, id).Next(ctx, true)
	if err != nil {
		return nil, false, err
	}
	return lines[min(from, int64(len(lines))):], ok, nil
}

// noteShards records in a job's log how many shards it has, so that its
// log view finds their logs.
func noteShards(ctx context.Context, rdb redis.UniversalClient, job, typ string, n int) error {
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, logMetaKey(job), "shards", n)
		p.PExpire(ctx, logMetaKey(job), logTTL(typ))
		return nil
	})
	return err
}

// keepShardLogs gives a job's shards' logs the lifetime of the job's own,
// which just ended: they are part of it.
func keepShardLogs(ctx context.Context, rdb redis.UniversalClient, job string, n int, ttl time.Duration) {
	ctx, cancel := bookkeeping(ctx)
	defer cancel()
	_, _ = rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range n {
			p.PExpire(ctx, logKey(tasks.ShardID(job, i)), ttl)
			p.PExpire(ctx, logMetaKey(tasks.ShardID(job, i)), ttl)
		}
		return nil
	})
}
