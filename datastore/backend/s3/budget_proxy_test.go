package s3_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/pbsq/pbsq/datastore/backend/s3"
	"github.com/pbsq/pbsq/datastore/backend/s3/faultproxy"
	"github.com/pbsq/pbsq/datastore/backend/s3/s3test"
	"github.com/pbsq/pbsq/datastore/lock/redistest"
)

// TestBudgetBooksSlowDownAnswers: a store behind a proxy that answers
// some requests 503 SlowDown (versitygw behind it). Every request that
// reaches the proxy, the SDK's retries included, was booked on the
// budget shared in Redis, and every SlowDown answer pushed that budget
// back by a second: the bucket's time in Redis is at least its start
// plus all of that. The writes still succeed.
func TestBudgetBooksSlowDownAnswers(t *testing.T) {
	ctx := context.Background()
	srv := s3test.StartVersity(t)
	rs := redistest.Start(t)
	rdb := rs.Client()
	defer rdb.Close()
	proxy, err := faultproxy.New(srv.Endpoint(), faultproxy.Rates{SlowDown: 0.25}, 7)
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	const rps = 1000
	budget, err := s3.NewBudget(s3.BudgetConfig{RequestsPerSecond: rps}, rdb, "slow", nil)
	if err != nil {
		t.Fatal(err)
	}
	start, err := rdb.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	cfg := srv.Config(srv.UniquePrefix("budget"))
	cfg.Endpoint, cfg.Budget = proxy.URL(), budget
	b, err := s3.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for i := range 8 {
		if err := b.WriteFile(ctx, fmt.Sprintf("f%d", i), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	st := proxy.Stats()
	if st.SlowDown == 0 {
		t.Fatalf("the proxy answered no SlowDown in %d requests", st.Requests)
	}
	if got := budget.SlowDowns(); got != st.SlowDown {
		t.Errorf("budget saw %d SlowDown answers, the proxy sent %d", got, st.SlowDown)
	}
	tat, err := rdb.Get(ctx, "pbsq:s3budget:slow:requests").Int64()
	if err != nil {
		t.Fatal(err)
	}
	least := start.UnixMicro() + st.SlowDown*1_000_000 + st.Requests*(1_000_000/rps)
	if tat < least {
		t.Errorf("budget at %d µs, want at least %d: start %d + %d SlowDown s + %d requests", tat, least, start.UnixMicro(), st.SlowDown, st.Requests)
	}
	t.Logf("%d requests, %d SlowDown answers", st.Requests, st.SlowDown)
}
