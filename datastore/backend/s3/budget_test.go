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
	before := waits[9]
	b.after(ctx, 0, true)
	d, _ := a.reserve(ctx, 1, 0, 0)
	if d < before+slowDownPause {
		t.Errorf("after a SlowDown seen by b, a waits %s, want at least %s", d, before+slowDownPause)
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
