package worker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/internal/tick"
)

// Per-store job caps (datastores.<name>.max-jobs): at most N tasks of a
// store run at once across every worker on the Redis. Each store has a
// sorted set of slot holders, "<task id>|<token>", scored by lease expiry
// (server TIME, ms), like the Redis lock leases (datastore/lock/redislock):
// a holder refreshes its lease every slotLease/3, and the slot of a worker
// that died frees itself when the lease runs out. A task finding no free
// slot is re-queued like one refused by a busy lock: without spending a
// retry, shown as waiting.

const slotKeyPrefix = "pbsq:slots:"

// slotLease is how long a slot outlives its holder's last refresh.
var slotLease = 30 * time.Second

// slotAcquire takes a slot in every key, or none. ARGV: lease ms, member,
// then the cap of each key. Returns {1} or {0, index of the full key,
// holders separated by spaces}.
var slotAcquire = redis.NewScript(`
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local me = ARGV[2]
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if not redis.call('ZSCORE', key, me) and redis.call('ZCARD', key) >= tonumber(ARGV[2 + i]) then
    return {0, i, table.concat(redis.call('ZRANGE', key, 0, -1), ' ')}
  end
end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + lease, me)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', key, last[2])
end
return {1}
`)

// slotRefresh extends the member's slots if all are still held. Returns 1,
// or 0 when one was lost.
var slotRefresh = redis.NewScript(`
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, key in ipairs(KEYS) do
  local s = redis.call('ZSCORE', key, ARGV[2])
  if not s or tonumber(s) <= now then return 0 end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + tonumber(ARGV[1]), ARGV[2])
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', key, last[2])
end
return 1
`)

// SlotBusyError is a task refused because its store's job slots are all
// taken; it wraps lock.ErrBusy, so the task waits like one refused by a
// lock.
type SlotBusyError struct {
	Store   string
	Cap     int
	Holders []string // task ids
}

func (e *SlotBusyError) Error() string {
	return fmt.Sprintf("datastore %s: all %d job slot(s) taken (max-jobs) by task(s) %s", e.Store, e.Cap, strings.Join(e.Holders, ", "))
}

func (e *SlotBusyError) Unwrap() error { return lock.ErrBusy }

// capped reports whether any of stores has a max-jobs cap.
func (w *Worker) capped(stores []string) bool {
	for _, s := range stores {
		if w.caps[s] > 0 {
			return true
		}
	}
	return false
}

// takeSlots takes a job slot of every capped store among stores for task
// id, keeps it refreshed, and returns the function that gives them back.
// lost is called (once) if a slot cannot be refreshed in time.
func (w *Worker) takeSlots(ctx context.Context, stores []string, id string, log *slog.Logger, lost func(error)) (release func(), err error) {
	var keys []string
	args := []any{slotLease.Milliseconds(), ""}
	var capped []string
	for _, s := range slices.Compact(slices.Sorted(slices.Values(stores))) {
		if n := w.caps[s]; n > 0 {
			keys = append(keys, slotKeyPrefix+s)
			args = append(args, n)
			capped = append(capped, s)
		}
	}
	if len(keys) == 0 {
		return func() {}, nil
	}
	tok := make([]byte, 6)
	_, _ = rand.Read(tok)
	member := id + "|" + hex.EncodeToString(tok)
	args[1] = member
	bctx, cancel := bookkeeping(ctx)
	res, err := slotAcquire.Run(bctx, w.rdb, keys, args...).Slice()
	cancel()
	if err != nil {
		return nil, fmt.Errorf("job slots: %w", err)
	}
	if ok, _ := res[0].(int64); ok != 1 {
		i, _ := res[1].(int64)
		held, _ := res[2].(string)
		e := &SlotBusyError{Store: capped[i-1], Cap: w.caps[capped[i-1]]}
		for _, m := range strings.Fields(held) {
			e.Holders = append(e.Holders, strings.SplitN(m, "|", 2)[0])
		}
		return nil, e
	}
	log.Info("job slot taken", "stores", capped)
	stopKeep := w.keepSlots(ctx, keys, member, log, lost)
	return func() {
		stopKeep()
		rctx, cancel := bookkeeping(ctx)
		defer cancel()
		if _, err := w.rdb.Pipelined(rctx, func(p redis.Pipeliner) error {
			for _, k := range keys {
				p.ZRem(rctx, k, member)
			}
			return nil
		}); err != nil {
			log.Warn("job slot not released; it frees itself when its lease runs out", "err", err, "lease", slotLease)
		}
	}, nil
}

// keepSlots refreshes the slots every third of the lease until stop (it
// outlives a cancelled ctx); when a refresh cannot succeed before the
// lease would run out, the slot is lost.
func (w *Worker) keepSlots(ctx context.Context, keys []string, member string, log *slog.Logger, lost func(error)) (stop func()) {
	lastOK := time.Now()
	return tick.Start(context.WithoutCancel(ctx), slotLease/3, func() bool {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), slotLease/3)
		n, err := slotRefresh.Run(rctx, w.rdb, keys, slotLease.Milliseconds(), member).Int64()
		cancel()
		switch {
		case err == nil && n == 1:
			lastOK = time.Now()
			return true
		case err == nil:
			err = errors.New("slot taken over after its lease ran out")
		}
		log.Warn("job slot refresh failed", "err", err)
		if time.Since(lastOK) > slotLease*2/3 {
			lost(fmt.Errorf("job slot lost: %w", err))
			return false
		}
		return true
	})
}
