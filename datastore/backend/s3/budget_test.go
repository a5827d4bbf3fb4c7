package s3

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/aws/smithy-go"

	"github.com/pbsq/pbsq/datastore/lock/redistest"
)

// TestBudgetShared: two budgets on one Redis key (two processes) book
// into one bucket: after the burst, each reservation waits one interval
// more than the last, whichever budget makes it; a throttling answer
// pushes the shared bucket back by slowDownPause. Only reservation waits
// are compared, never wall-clock durations.
func TestBudgetShared(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	defer rdb.Close()
	ctx := context.Background()
	cfg := BudgetConfig{RequestsPerSecond: 10, Burst: 2}
	a, err := NewBudget(cfg, rdb, "store", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := NewBudget(cfg, rdb, "store", nil)
	var waits []time.Duration
	start := time.Now()
	for i := range 10 {
		bud := a
		if i%2 == 1 {
			bud = b
		}
		d, err := bud.reserve(ctx, 1, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		waits = append(waits, d)
	}
	// 10/s: the 10th request of a burst of 2 waits 0.8 s less the time
	// the calls themselves took, however slow the machine.
	took := time.Since(start)
	if last := waits[9]; last < 800*time.Millisecond-took-10*time.Millisecond || last > 810*time.Millisecond {
		t.Errorf("shared bucket: waits %v, the last should be ~0.8s", waits)
	}
	// The bucket's time in Redis, which a reads too, moves a pause
	// forward (at least: had it fallen behind, it restarts from now).
	tat := func() int64 { v, _ := rdb.Get(ctx, a.reqKey).Int64(); return v }
	before := tat()
	b.after(ctx, 0, true)
	if moved := time.Duration(tat()-before) * time.Microsecond; moved < slowDownPause {
		t.Errorf("a SlowDown seen by b moved the shared budget by %s, want at least %s", moved, slowDownPause)
	}
	if b.SlowDowns() != 1 {
		t.Errorf("SlowDowns %d", b.SlowDowns())
	}
	// Another store has its own budget.
	other, _ := NewBudget(cfg, rdb, "other", nil)
	if d, _ := other.reserve(ctx, 1, 0, 0); d != 0 {
		t.Errorf("another store's first request waits %s", d)
	}
}

// TestBudgetBytes: with bytes-per-second, a second's worth of bytes goes
// at once and more waits its turn, shared or per process; bytes received
// (booked after the answer) count too.
func TestBudgetBytes(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	defer rdb.Close()
	ctx := context.Background()
	cfg := BudgetConfig{RequestsPerSecond: 1000, Burst: 100, BytesPerSecond: 1000}
	shared, err := NewBudget(cfg, rdb, "store", nil)
	if err != nil {
		t.Fatal(err)
	}
	local, err := NewBudget(cfg, nil, "store", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []*Budget{shared, local} {
		start := time.Now()
		first, _ := b.reserve(ctx, 1, 3000, 0)
		second, _ := b.reserve(ctx, 1, 500, 0)
		took := time.Since(start)
		// 3,000 bytes at 1,000/s with a second's burst: the next request
		// goes 2 s after the first at the earliest (less the time the
		// calls took). The shared bucket sends the first at once and
		// charges the time after it; the local one holds the first
		// until its bytes are in the budget (2 s, then 0.5 s more).
		if second < 2*time.Second-took-10*time.Millisecond || second > 2500*time.Millisecond+10*time.Millisecond || first > second {
			t.Errorf("shared %v: waits %s then %s, want the second at ~2s (shared) or 2.5s (local)", b.Shared(), first, second)
		}
	}
	before, _ := rdb.Get(ctx, shared.byteKey).Int64()
	shared.after(ctx, 2000, false)
	after, _ := rdb.Get(ctx, shared.byteKey).Int64()
	if moved := time.Duration(after-before) * time.Microsecond; moved < 2*time.Second {
		t.Errorf("2,000 bytes received moved the byte budget by %s, want 2s", moved)
	}
	if _, err := NewBudget(BudgetConfig{RequestsPerSecond: 1, BytesPerSecond: -1}, nil, "x", nil); err == nil {
		t.Error("a negative byte budget was accepted")
	}
}

func TestBudgetLocal(t *testing.T) {
	b, err := NewBudget(BudgetConfig{RequestsPerSecond: 10, Burst: 1}, nil, "x", nil)
	if err != nil || b.Shared() {
		t.Fatal(err)
	}
	var last time.Duration
	start := time.Now()
	for range 5 {
		last, _ = b.reserve(context.Background(), 1, 0, 0)
	}
	if took := time.Since(start); last < 400*time.Millisecond-took-10*time.Millisecond || last > 410*time.Millisecond {
		t.Errorf("5th request at 10/s waits %s, want ~0.4s", last)
	}
	if _, err := NewBudget(BudgetConfig{}, nil, "x", nil); err == nil {
		t.Error("a zero budget was accepted")
	}
}

func TestThrottled(t *testing.T) {
	apiErr := func(code string) error { return &smithy.GenericAPIError{Code: code} }
	for _, c := range []struct {
		status int
		err    error
		want   bool
	}{
		{http.StatusServiceUnavailable, nil, true},
		{http.StatusTooManyRequests, nil, true},
		{http.StatusForbidden, apiErr("SlowDown"), true},
		{http.StatusForbidden, apiErr("AccessDenied"), false},
		{http.StatusOK, nil, false},
		{http.StatusInternalServerError, errors.New("x"), false},
	} {
		if got := throttled(c.status, c.err); got != c.want {
			t.Errorf("throttled(%d, %v) = %v", c.status, c.err, got)
		}
	}
}
