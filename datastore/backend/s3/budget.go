package s3

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	smithymiddleware "github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"
)

// A request budget paces every request pbsq sends to one S3 store (S3
// providers limit requests per second, not bandwidth). With Redis it is
// one budget for every pbsq process using the store: a GCRA token bucket
// whose theoretical arrival time (TAT) lives in one Redis key per store
// and resource, updated by one Lua call per request, which books the
// request and answers how long to wait before sending it (a reservation:
// no polling, no retry loops). Without Redis the same rule runs per
// process on golang.org/x/time/rate. A throttling answer (503, 429, or a
// SlowDown-type error code) pushes the shared TAT forward by slowDownPause,
// so every process backs off, not only the one that was told.

// BudgetConfig sets a store's budget.
type BudgetConfig struct {
	// RequestsPerSecond is the sustained request rate (required, > 0).
	RequestsPerSecond float64
	// Burst is how many requests may go at once after a quiet spell
	// (default: a quarter second's worth, at least 1).
	Burst int
	// BytesPerSecond optionally bounds the bytes sent and received.
	BytesPerSecond int64
}

// slowDownPause is how far one throttling answer pushes the budget back.
const slowDownPause = time.Second

// Budget paces requests; it is safe for concurrent use.
type Budget struct {
	cfg BudgetConfig
	log *slog.Logger
	// shared: the Redis keys; local: the process's limiters.
	rdb             redis.UniversalClient
	reqKey, byteKey string
	reqs, bytes     *rate.Limiter
	mu              sync.Mutex // guards the local limiters' SetBurst
	slowDowns       int64
}

// NewBudget returns a budget shared through rdb under name (the store's
// name), or local to the process when rdb is nil.
func NewBudget(cfg BudgetConfig, rdb redis.UniversalClient, name string, log *slog.Logger) (*Budget, error) {
	if cfg.RequestsPerSecond <= 0 {
		return nil, fmt.Errorf("s3 requests-per-second %g: must be more than 0", cfg.RequestsPerSecond)
	}
	if cfg.BytesPerSecond < 0 {
		return nil, fmt.Errorf("s3 bytes-per-second %d: must not be negative", cfg.BytesPerSecond)
	}
	if cfg.Burst <= 0 {
		cfg.Burst = max(1, int(cfg.RequestsPerSecond/4))
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Budget{cfg: cfg, log: log, rdb: rdb}
	if rdb != nil {
		b.reqKey = "pbsq:s3budget:" + name + ":requests"
		b.byteKey = "pbsq:s3budget:" + name + ":bytes"
		return b, nil
	}
	b.reqs = rate.NewLimiter(rate.Limit(cfg.RequestsPerSecond), cfg.Burst)
	if cfg.BytesPerSecond > 0 {
		b.bytes = rate.NewLimiter(rate.Limit(cfg.BytesPerSecond), int(min(cfg.BytesPerSecond, 1<<30)))
	}
	return b, nil
}

// Shared reports whether the budget is shared through Redis.
func (b *Budget) Shared() bool { return b.rdb != nil }

// gcraScript books cost units on each key (KEYS[i] with ARGV triples:
// µs per unit, cost, tolerance µs) plus ARGV[1] µs of penalty on every
// key, and returns the µs to wait before sending (0: now). Times are the
// server's (TIME), so hosts' clocks do not matter.
var gcraScript = redis.NewScript(`
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local penalty = tonumber(ARGV[1])
local wait = 0
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[3 * i - 1])
  local cost = tonumber(ARGV[3 * i])
  local tolerance = tonumber(ARGV[3 * i + 1])
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local w = tat - tolerance - now
  if w > wait then wait = w end
  local newtat = tat + interval * cost + penalty
  redis.call('SET', key, string.format('%d', newtat), 'PX', math.floor((newtat - now) / 1000) + 60000)
end
return string.format('%d', wait)
`)

// reserve books a request of sendBytes (and, for charge, received bytes:
// requests 0) and returns how long to wait.
func (b *Budget) reserve(ctx context.Context, requests int, nbytes int64, penalty time.Duration) (time.Duration, error) {
	if b.rdb == nil {
		return b.reserveLocal(requests, nbytes, penalty), nil
	}
	reqInterval := 1e6 / b.cfg.RequestsPerSecond
	keys := []string{b.reqKey}
	args := []any{penalty.Microseconds(), reqInterval, requests, reqInterval * float64(b.cfg.Burst-1)}
	if b.cfg.BytesPerSecond > 0 {
		byteInterval := 1e6 / float64(b.cfg.BytesPerSecond)
		keys = append(keys, b.byteKey)
		// A second's worth of bytes may go at once.
		args = append(args, byteInterval, nbytes, 1e6)
	}
	us, err := gcraScript.Run(ctx, b.rdb, keys, args...).Int64()
	if err != nil {
		return 0, fmt.Errorf("s3 request budget: %w", err)
	}
	return time.Duration(us) * time.Microsecond, nil
}

func (b *Budget) reserveLocal(requests int, nbytes int64, penalty time.Duration) time.Duration {
	now := time.Now()
	var wait time.Duration
	take := func(l *rate.Limiter, n int64) {
		for n > 0 {
			k := min(n, int64(l.Burst()))
			if d := l.ReserveN(now, int(k)).DelayFrom(now); d > wait {
				wait = d
			}
			n -= k
		}
	}
	take(b.reqs, int64(requests))
	if penalty > 0 {
		take(b.reqs, int64(penalty.Seconds()*b.cfg.RequestsPerSecond))
	}
	if b.bytes != nil {
		take(b.bytes, nbytes)
	}
	return wait
}

// wait blocks until a request sending nbytes may go.
func (b *Budget) wait(ctx context.Context, nbytes int64) error {
	d, err := b.reserve(ctx, 1, max(nbytes, 0), 0)
	if err != nil {
		// Redis down must not stop the data path: fall back to no pacing
		// for this request, loudly.
		b.log.Warn("s3 request budget unavailable; request sent unpaced", "err", err)
		return nil
	}
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// after books what a sent request told: received bytes, and throttling.
func (b *Budget) after(ctx context.Context, received int64, throttled bool) {
	var penalty time.Duration
	if throttled {
		penalty = slowDownPause
		b.mu.Lock()
		b.slowDowns++
		b.mu.Unlock()
	}
	if penalty == 0 && (b.cfg.BytesPerSecond == 0 || received <= 0) {
		return
	}
	if _, err := b.reserve(context.WithoutCancel(ctx), 0, max(received, 0), penalty); err != nil {
		b.log.Warn("s3 request budget not updated", "err", err)
	}
}

// SlowDowns is how many throttling answers this process saw.
func (b *Budget) SlowDowns() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.slowDowns
}

// throttled tells a provider's "too many requests" from other errors: 503
// and 429 always, 403 only with a throttling code (a 403 AccessDenied is
// not a rate limit).
func throttled(status int, err error) bool {
	switch status {
	case http.StatusServiceUnavailable, http.StatusTooManyRequests:
		return true
	}
	switch apiCode(err) {
	case "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests", "RequestThrottled":
		return true
	}
	return false
}

// perAttemptWith runs once per HTTP attempt (right after the SDK's retry
// loop, so retries count and are paced too): it books the request on the
// context's counters and, with a budget, waits for its turn and books
// what the answer said.
func perAttemptWith(b *Budget) func(*smithymiddleware.Stack) error {
	return func(st *smithymiddleware.Stack) error {
		return st.Finalize.Insert(smithymiddleware.FinalizeMiddlewareFunc("pbsqPerAttempt",
			func(ctx context.Context, in smithymiddleware.FinalizeInput, next smithymiddleware.FinalizeHandler) (smithymiddleware.FinalizeOutput, smithymiddleware.Metadata, error) {
				if b != nil {
					var sent int64
					if req, ok := in.Request.(*smithyhttp.Request); ok && req.ContentLength > 0 {
						sent = req.ContentLength
					}
					if err := b.wait(ctx, sent); err != nil {
						return smithymiddleware.FinalizeOutput{}, smithymiddleware.Metadata{}, err
					}
				}
				countRequest(ctx)
				out, md, err := next.HandleFinalize(ctx, in)
				if b != nil {
					status, received := 0, int64(0)
					if resp, ok := awsmiddleware.GetRawResponse(md).(*smithyhttp.Response); ok {
						status, received = resp.StatusCode, resp.ContentLength
					}
					var re *smithyhttp.ResponseError
					if errors.As(err, &re) {
						status = re.HTTPStatusCode()
					}
					b.after(ctx, received, throttled(status, err))
				}
				return out, md, err
			}), "Retry", smithymiddleware.After)
	}
}
